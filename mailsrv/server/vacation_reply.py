"""Vacation auto-replies, decided while a message is delivered locally (RFC 3834, RFC 5230, RFC 8621 §8).

The account's VacationResponse lives as JSON in table ``vacation``; table ``vacation_replies`` remembers
when each sender last got a reply, so a sender hears from the account at most once per
``vacation_interval`` seconds.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any

from .mime import header_str, message_ids

if TYPE_CHECKING:
    from .app import MailServer

NO_REPLY_LOCALPARTS = {"mailer-daemon", "listserv", "majordomo"}
BULK_PRECEDENCE = {"bulk", "list", "junk"}
MAX_REFERENCES = 20


def _instant(value: Any) -> float | None:
    """An RFC 3339 date as a Unix time; None when absent or unparsable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def active_vacation(data: dict[str, Any], now: float) -> bool:
    """True if the VacationResponse is enabled and ``now`` lies in [fromDate, toDate)."""
    if data.get("isEnabled") is not True:
        return False
    start, end = _instant(data.get("fromDate")), _instant(data.get("toDate"))
    return (start is None or now >= start) and (end is None or now < end)


def sender_may_get_reply(mail_from: str) -> bool:
    """No replies to the null sender, mailer daemons or list software (RFC 3834 §2)."""
    local, at, _ = mail_from.rpartition("@")
    if not mail_from or mail_from == "<>" or not at:
        return False
    local = local.lower()
    return local not in NO_REPLY_LOCALPARTS and not local.startswith("owner-") and not local.endswith("-request")


def message_may_get_reply(msg: Message) -> bool:
    """No replies to automatic messages, mailing lists or bulk mail."""
    auto = (header_str(msg, "Auto-Submitted") or "no").split(";")[0].strip().lower()
    precedence = (header_str(msg, "Precedence") or "").strip().lower()
    return auto == "no" and msg.get("List-Id") is None and precedence not in BULK_PRECEDENCE


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_reply(hostname: str, from_addr: str, to_addr: str, vacation: dict[str, Any], original: Message) -> bytes:
    """The auto-reply message: null-sender material with Auto-Submitted and threading headers."""
    msg = EmailMessage()
    msg["From"] = from_addr
    msg["To"] = to_addr
    subject = vacation.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        orig = header_str(original, "Subject")
        subject = f"Auto: {orig}" if orig else "Automatic reply"
    msg["Subject"] = _one_line(subject)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=hostname)
    parent = message_ids(header_str(original, "Message-ID"))
    if parent:
        refs = message_ids(header_str(original, "References")) or message_ids(header_str(original, "In-Reply-To")) or []
        msg["In-Reply-To"] = f"<{parent[0]}>"
        msg["References"] = " ".join(f"<{i}>" for i in [*refs, parent[0]][-MAX_REFERENCES:])
    msg["Auto-Submitted"] = "auto-replied"
    text, html = vacation.get("textBody"), vacation.get("htmlBody")
    text = text if isinstance(text, str) else None
    html = html if isinstance(html, str) and html else None
    if text is not None or html is None:
        msg.set_content(text or "")
        if html is not None:
            msg.add_alternative(html, subtype="html")
    else:
        msg.set_content(html, subtype="html")
    return msg.as_bytes(policy=policy.SMTP)


def reply_if_due(server: MailServer, account_id: int, mail_from: str, raw: bytes, rcpts: list[str]) -> bytes | None:
    """The auto-reply to send for a message just delivered to ``account_id``, or None.

    Records the reply in ``vacation_replies`` in the same step, so concurrent deliveries from one sender
    produce at most one reply per interval.
    """
    if not sender_may_get_reply(mail_from):
        return None
    db = server.store.db
    row = db.one("SELECT data FROM vacation WHERE account_id=?", (account_id,))
    if row is None:
        return None
    try:
        vacation = json.loads(row[0])
    except ValueError:
        return None
    now = time.time()
    if not isinstance(vacation, dict) or not active_vacation(vacation, now):
        return None
    original = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    if not message_may_get_reply(original):
        return None
    sender = mail_from.lower()
    with db.tx() as c:
        last = c.execute("SELECT sent_at FROM vacation_replies WHERE account_id=? AND sender=?", (account_id, sender)).fetchone()
        if last is not None and now - last[0] < server.cfg.vacation_interval:
            return None
        c.execute(
            "INSERT INTO vacation_replies(account_id, sender, sent_at) VALUES(?,?,?) "
            "ON CONFLICT(account_id, sender) DO UPDATE SET sent_at=excluded.sent_at",
            (account_id, sender, now),
        )
    principal = server.store.principals.get(account_id)
    own = [a.lower() for a in principal.emails] if principal else []
    from_addr = next((r for r in rcpts if r.lower() in own), own[0] if own else rcpts[0])
    return build_reply(server.cfg.hostname, from_addr, mail_from, vacation, original)
