"""Delivery status notifications (RFC 3464): the bounce a sender gets when the queue gives up on a recipient."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate, make_msgid

_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_REPLY = re.compile(r"^[2-5]\d\d[ -]")
MAX_HEADER_BYTES = 64 * 1024


@dataclass
class Failure:
    """One recipient the queue gave up on; ``reason`` is the remote reply or what went wrong."""

    recipient: str
    reason: str
    expired: bool = False

    @property
    def status(self) -> str:
        """The RFC 3463 status code: from the remote reply, else 4.4.7 (expired) or 5.0.0."""
        found = _ENHANCED.search(self.reason) if _REPLY.match(self.reason) else None
        if found and not self.expired:
            return found.group(1)
        return "4.4.7" if self.expired else "5.0.0"


def original_headers(raw: bytes) -> str:
    """The header section of a message as 7-bit text (8-bit bytes become ``?``)."""
    head = re.split(rb"\r?\n\r?\n", raw[:MAX_HEADER_BYTES], maxsplit=1)[0]
    return head.decode("ascii", "replace").replace("\ufffd", "?") + "\r\n"


def _human(failures: list[Failure], hostname: str) -> str:
    lines = [
        f"This is the mail system at {hostname}.",
        "",
        "Your message could not be delivered to the following recipients:",
        "",
    ]
    for f in failures:
        why = "delivery time expired; last error: " if f.expired else ""
        lines.append(f"  <{f.recipient}>: {why}{f.reason or 'unknown error'}")
    return "\n".join(lines) + "\n"


def build_dsn(hostname: str, return_path: str, original: bytes, failures: list[Failure], arrival: float) -> bytes:
    """A multipart/report DSN from MAILER-DAEMON@hostname to ``return_path`` (send it with a null sender)."""
    msg = MIMEMultipart("report", report_type="delivery-status")
    msg["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    msg["To"] = return_path
    msg["Subject"] = "Undelivered Mail Returned to Sender"
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=hostname)
    msg["Auto-Submitted"] = "auto-replied"
    msg.attach(MIMEText(_human(failures, hostname), "plain", "utf-8"))
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_message["Arrival-Date"] = formatdate(arrival, usegmt=True)
    blocks: list[Message | str] = [per_message]
    for f in failures:
        block = Message()
        block["Final-Recipient"] = f"rfc822; {f.recipient}"
        block["Action"] = "failed"
        block["Status"] = f.status
        if _REPLY.match(f.reason):
            block["Diagnostic-Code"] = f"smtp; {' '.join(f.reason.split())}"
        block["Last-Attempt-Date"] = formatdate(usegmt=True)
        blocks.append(block)
    status = Message()
    status.set_type("message/delivery-status")
    status.set_payload(blocks)
    msg.attach(status)
    headers = Message()
    headers.set_type("text/rfc822-headers")
    headers.set_payload(original_headers(original))
    msg.attach(headers)
    return msg.as_bytes(policy=policy.SMTP)
