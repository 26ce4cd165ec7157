"""Parse RFC 5322 messages into the summary fields the store keeps for every email.

The summary (subject, addresses, Message-ID, references, sentAt, preview, hasAttachment) is computed once
at ingest and cached as JSON, so Email/get and Email/query do not re-parse the blob for common properties.
Malformed input never raises: missing or broken headers become ``None``.
"""

from __future__ import annotations

import email.utils
import re
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

_MSGID = re.compile(r"<([^<>\s]+)>")
PREVIEW_LEN = 256


def parse_message(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


def header_str(msg: Message, name: str) -> str | None:
    """A header's decoded value, ``None`` when absent or undecodable."""
    try:
        value = msg.get(name)
    except Exception:  # noqa: BLE001 - malformed headers must not break ingest
        return None
    if value is None:
        return None
    try:
        return str(value)
    except Exception:  # noqa: BLE001
        return None


def message_ids(value: str | None) -> list[str] | None:
    """RFC 8621 ``asMessageIds``: the ids inside angle brackets, without the brackets."""
    if not value:
        return None
    ids = _MSGID.findall(value)
    return ids or None


def addresses(msg: Message, name: str) -> list[dict[str, str | None]] | None:
    """RFC 8621 ``asAddresses`` for one header (all instances)."""
    try:
        values = msg.get_all(name)
    except Exception:  # noqa: BLE001
        return None
    if not values:
        return None
    out: list[dict[str, str | None]] = []
    for display, addr in email.utils.getaddresses([str(v) for v in values]):
        if not addr and not display:
            continue
        out.append({"name": display or None, "email": addr})
    return out


def sent_at(msg: Message) -> str | None:
    raw = header_str(msg, "Date")
    if not raw:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.isoformat().replace("+00:00", "Z")


def _text_preview(msg: EmailMessage) -> str:
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
        if part is None:
            return ""
        text = part.get_content()
    except Exception:  # noqa: BLE001
        return ""
    if not isinstance(text, str):
        return ""
    if part.get_content_subtype() == "html":
        text = re.sub(r"<[^>]*>", " ", text)
    return " ".join(text.split())[:PREVIEW_LEN]


def has_attachment(msg: EmailMessage) -> bool:
    try:
        return any(True for _ in msg.iter_attachments()) if msg.is_multipart() else False
    except Exception:  # noqa: BLE001
        return False


def summarize(raw: bytes) -> dict[str, Any]:
    """The cached summary of a message (JSON-serialisable)."""
    msg = parse_message(raw)
    return {
        "messageId": message_ids(header_str(msg, "Message-ID")),
        "inReplyTo": message_ids(header_str(msg, "In-Reply-To")),
        "references": message_ids(header_str(msg, "References")),
        "subject": header_str(msg, "Subject"),
        "sentAt": sent_at(msg),
        "from": addresses(msg, "From"),
        "sender": addresses(msg, "Sender"),
        "to": addresses(msg, "To"),
        "cc": addresses(msg, "Cc"),
        "bcc": addresses(msg, "Bcc"),
        "replyTo": addresses(msg, "Reply-To"),
        "hasAttachment": has_attachment(msg),
        "preview": _text_preview(msg),
        "autoSubmitted": (header_str(msg, "Auto-Submitted") or "no").strip().lower(),
        "listId": header_str(msg, "List-Id"),
        "precedence": (header_str(msg, "Precedence") or "").strip().lower(),
    }


def utc_iso(ts: float) -> str:
    """A UTC timestamp as RFC 3339 ``YYYY-MM-DDTHH:MM:SSZ`` (JMAP UTCDate)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(value: object) -> float | None:
    """Parse a JMAP UTCDate/Date string; ``None`` if it is not one."""
    if not isinstance(value, str) or len(value) < 20:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return dt.timestamp()
