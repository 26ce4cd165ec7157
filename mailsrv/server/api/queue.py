"""The outbound queue as the management APIs show it: Stalwart 0.15's ``Message`` and 0.16's ``QueuedMessage``.

Reads ``queue_messages``/``queue_recipients`` (filled by the queue) and writes only what an operator asks:
reschedule, cancel, delete, and the pause flag (table ``meta``, key ``queue_paused`` = ``"1"``/``"0"``,
honoured by the queue worker). Recipient ``status`` values in the table are ``scheduled``, ``temp_fail``,
``perm_fail`` and ``completed``, with the remote answer or error text in ``last_error``.

Shapes:

* 0.15 (``/api/queue/messages``): snake_case ``id, return_path, recipients[{address, queue, status,
  retry_num, next_retry, expires}], created, size, priority (omitted when 0), env_id (omitted when unset),
  blob_hash`` (base64url of the sha256 digest, as Stalwart encodes its blob hashes); ``status`` externally
  tagged: ``"scheduled"`` | ``{"temp_fail": text}`` | ``{"perm_fail": text}`` | ``{"completed": text}``.
* 0.16 (``x:QueuedMessage``): camelCase ``id, createdAt, nextRetry, nextNotify, blobId (mailsrv's blob id,
  the hex sha256), returnPath, recipients{address: {retryCount, retryDue, expires {"@type":"Ttl",
  expiresAt}, queueName, status {"@type": Scheduled|TemporaryFailure|PermanentFailure|Completed, …},
  flags, orcpt}}, flags, envId, priority, size``. Not stored by mailsrv and therefore not returned:
  ``receivedFromIp``, ``receivedViaPort``, ``notifyCount``, ``notifyDue``.

All recipients are in the single queue ``default`` (Stalwart's default queue name).
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..store.db import Database

QUEUE_NAME = "default"
PAUSED_KEY = "queue_paused"
SCHEDULED, TEMP_FAIL, PERM_FAIL, COMPLETED = "scheduled", "temp_fail", "perm_fail", "completed"
PENDING = (SCHEDULED, TEMP_FAIL)
_STATUS_ALIASES = {
    "scheduled": SCHEDULED, "queued": SCHEDULED, "pending": SCHEDULED,
    "temp_fail": TEMP_FAIL, "temporary_failure": TEMP_FAIL, "tempfail": TEMP_FAIL, "deferred": TEMP_FAIL,
    "perm_fail": PERM_FAIL, "permanent_failure": PERM_FAIL, "permfail": PERM_FAIL, "failed": PERM_FAIL,
    "bounced": PERM_FAIL,
    "completed": COMPLETED, "delivered": COMPLETED, "done": COMPLETED,
}
_SMTP_REPLY = re.compile(r"^\s*([2-5]\d\d)[ -](?:([245]\.\d{1,3}\.\d{1,3}) )?(.*)$", re.S)


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> float | None:
    """A timestamp from RFC 3339 text (``None`` when it is not one)."""
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def status_kind(value: str) -> str:
    return _STATUS_ALIASES.get((value or "").strip().lower(), SCHEDULED)


@dataclass
class Recipient:
    address: str
    status: str
    retry_num: int
    next_retry: float
    expires: float
    last_error: str

    @property
    def pending(self) -> bool:
        return self.status in PENDING


@dataclass
class QueuedMessage:
    id: int
    return_path: str
    blob_hash: str
    size: int
    created: float
    env_id: str | None
    priority: int
    account_id: int | None
    recipients: list[Recipient] = field(default_factory=list)

    def next_event(self) -> float | None:
        """When the next delivery attempt is due (``None`` when nothing is pending)."""
        due = [r.next_retry for r in self.recipients if r.pending]
        return min(due) if due else None

    def matches(self, text: str | None = None, from_: str | None = None, to: str | None = None) -> bool:
        """Stalwart's substring filters: ``text`` on return path or any recipient, else ``from``/``to``."""
        if text:
            return text in self.return_path or any(text in r.address for r in self.recipients)
        return (not from_ or from_ in self.return_path) and (not to or any(to in r.address for r in self.recipients))


def load(db: Database, ids: list[int] | None = None) -> list[QueuedMessage]:
    """Queued messages (all, or those of ``ids``), ordered by id."""
    if ids is not None and not ids:
        return []
    where = f" WHERE id IN ({','.join('?' * len(ids))})" if ids is not None else ""
    rows = db.q(f"SELECT * FROM queue_messages{where} ORDER BY id", ids or [])
    msgs = {
        r["id"]: QueuedMessage(r["id"], r["return_path"], r["blob_hash"], r["size"], r["created"], r["env_id"],
                               r["priority"], r["account_id"])
        for r in rows
    }
    if msgs:
        marks = ",".join("?" * len(msgs))
        for r in db.q(f"SELECT * FROM queue_recipients WHERE queue_id IN ({marks}) ORDER BY rowid", list(msgs)):
            msgs[r["queue_id"]].recipients.append(
                Recipient(r["address"], status_kind(r["status"]), r["retry_num"], r["next_retry"], r["expires"],
                          r["last_error"] or "")
            )
    return list(msgs.values())


def get(db: Database, queue_id: int) -> QueuedMessage | None:
    found = load(db, [queue_id])
    return found[0] if found else None


# -- the pause flag --------------------------------------------------------------------------------
def is_running(db: Database) -> bool:
    row = db.one("SELECT value FROM meta WHERE key=?", (PAUSED_KEY,))
    return not (row and row[0] == "1")


def set_running(db: Database, running: bool) -> bool:
    """Start or stop the queue; returns whether it was running before."""
    with db.tx() as c:
        row = c.execute("SELECT value FROM meta WHERE key=?", (PAUSED_KEY,)).fetchone()
        c.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (PAUSED_KEY, "0" if running else "1"),
        )
    return not (row and row[0] == "1")


# -- operator actions ------------------------------------------------------------------------------
def reschedule(db: Database, queue_id: int, at: float | None = None, rcpt_filter: str | None = None) -> bool | None:
    """Make pending recipients due at ``at`` (now by default); ``None`` when the message does not exist."""
    with db.tx() as c:
        if c.execute("SELECT 1 FROM queue_messages WHERE id=?", (queue_id,)).fetchone() is None:
            return None
        found = False
        for r in c.execute("SELECT address, status FROM queue_recipients WHERE queue_id=?", (queue_id,)).fetchall():
            if status_kind(r[1]) in PENDING and (not rcpt_filter or rcpt_filter in r[0]):
                c.execute("UPDATE queue_recipients SET next_retry=? WHERE queue_id=? AND address=?",
                          (at if at is not None else time.time(), queue_id, r[0]))
                found = True
        return found


def cancel(db: Database, queue_id: int, rcpt_filter: str | None = None) -> bool | None:
    """Delete a message, or with ``rcpt_filter`` fail the matching recipients ("Delivery canceled.").

    The message goes away once no recipient is pending. ``None`` when the message does not exist.
    """
    with db.tx() as c:
        if c.execute("SELECT 1 FROM queue_messages WHERE id=?", (queue_id,)).fetchone() is None:
            return None
        if rcpt_filter:
            rows = c.execute("SELECT address, status FROM queue_recipients WHERE queue_id=?", (queue_id,)).fetchall()
            hit = [r[0] for r in rows if rcpt_filter in r[0]]
            for address in hit:
                c.execute("UPDATE queue_recipients SET status=?, last_error=? WHERE queue_id=? AND address=?",
                          (PERM_FAIL, "Delivery canceled.", queue_id, address))
            if not hit:
                return False
            if any(status_kind(r[1]) in PENDING for r in rows if r[0] not in hit):
                return True
        c.execute("DELETE FROM queue_recipients WHERE queue_id=?", (queue_id,))
        c.execute("DELETE FROM queue_messages WHERE id=?", (queue_id,))
        return True


# -- wire shapes -----------------------------------------------------------------------------------
def _blob_hash_b64(hex_digest: str) -> str:
    try:
        raw = bytes.fromhex(hex_digest)
    except ValueError:
        raw = hex_digest.encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _v015_status(r: Recipient) -> Any:
    if r.status == SCHEDULED:
        return "scheduled"
    return {r.status: r.last_error}


def v015(msg: QueuedMessage) -> dict[str, Any]:
    """Stalwart 0.15's ``Message`` (snake_case, optional keys omitted)."""
    out: dict[str, Any] = {
        "id": msg.id,
        "return_path": msg.return_path,
        "recipients": [
            {"address": r.address, "queue": QUEUE_NAME, "status": _v015_status(r), "retry_num": r.retry_num,
             "next_retry": rfc3339(r.next_retry), "expires": rfc3339(r.expires)}
            for r in msg.recipients
        ],
        "created": rfc3339(msg.created),
        "size": msg.size,
    }
    if msg.priority:
        out["priority"] = msg.priority
    if msg.env_id:
        out["env_id"] = msg.env_id
    out["blob_hash"] = _blob_hash_b64(msg.blob_hash)
    return out


def _response(last_error: str) -> dict[str, Any]:
    m = _SMTP_REPLY.match(last_error)
    if m is None:
        return {"responseHostname": None, "responseCode": None, "responseEnhanced": None,
                "responseMessage": last_error or None}
    return {"responseHostname": None, "responseCode": int(m.group(1)), "responseEnhanced": m.group(2),
            "responseMessage": m.group(3).strip()}


def _v016_status(r: Recipient) -> dict[str, Any]:
    if r.status == SCHEDULED:
        return {"@type": "Scheduled"}
    if r.status == COMPLETED:
        return {"@type": "Completed", **_response(r.last_error)}
    kind = "TemporaryFailure" if r.status == TEMP_FAIL else "PermanentFailure"
    resp = _response(r.last_error)
    if resp["responseCode"] is not None:
        return {"@type": kind, "errorType": "unexpectedResponse", "errorMessage": None, "errorCommand": None, **resp}
    return {"@type": kind, "errorType": "connectionError", "errorMessage": r.last_error or None, "errorCommand": None,
            "responseHostname": None, "responseCode": None, "responseEnhanced": None, "responseMessage": None}


def v016(msg: QueuedMessage, id_text: str) -> dict[str, Any]:
    """Stalwart 0.16's ``QueuedMessage`` registry object (camelCase; see the module docstring)."""
    nxt = msg.next_event()
    return {
        "id": id_text,
        "createdAt": rfc3339(msg.created),
        "nextRetry": rfc3339(nxt) if nxt is not None else None,
        "nextNotify": None,
        "blobId": msg.blob_hash,
        "returnPath": msg.return_path or "<>",
        "recipients": {
            r.address: {
                "retryCount": r.retry_num,
                "retryDue": rfc3339(r.next_retry),
                "expires": {"@type": "Ttl", "expiresAt": rfc3339(r.expires)},
                "queueName": QUEUE_NAME,
                "status": _v016_status(r),
                "flags": {},
                "orcpt": None,
            }
            for r in msg.recipients
        },
        "flags": {"authenticated" if msg.account_id is not None else "unauthenticated": True},
        "envId": msg.env_id,
        "priority": msg.priority,
        "size": msg.size,
    }
