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

Listing pages in SQL (``LIMIT``/``OFFSET``, ``total`` from one ``COUNT``) and loads only the messages of the
page, so a request costs the same whatever the queue size. Orders, stable for paging:

* 0.15 ``/api/queue/messages``: by queue id, as Stalwart iterates its queue. New messages get higher ids, so a
  listing paged while mail arrives repeats nothing; a message that leaves the queue meanwhile shifts later
  pages by one.
* 0.16 ``x:QueuedMessage/query``: by next delivery attempt (Stalwart's only sort), ties by queue id (the order
  of Stalwart's event index); messages with nothing pending come last. A retry moves a message, so clients
  that walk the whole queue should page with ``anchor`` (the last id seen, ``anchorOffset`` 1) rather than
  ``position``, and drop ids they already have.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import itertools
import re
import time
from collections.abc import Generator
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
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ts)))  # twice as fast as datetime


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


# -- listing, paged in SQL -------------------------------------------------------------------------
# Pending recipients as the queue worker sees them; both indexes are in the schema (store/db.py).
_PENDING = "status IN ('scheduled', 'temp_fail')"
# The next delivery attempt of message m; NULL when nothing is pending.
DUE_SQL = ("(SELECT MIN(r.next_retry) FROM queue_recipients r INDEXED BY queue_recipients_pending "
           f"WHERE r.queue_id = m.id AND r.{_PENDING})")
_HAS_RCPT_SQL = "EXISTS (SELECT 1 FROM queue_recipients r WHERE r.queue_id = m.id AND instr(r.address, ?) > 0)"
_EPOCH = f"{time.time_ns():x}"


@dataclass
class Filter:
    """Queue filters evaluated in SQL; every condition set must hold.

    Substring matches (case-sensitive, empty = no condition): ``text`` on the return path or any recipient,
    ``from_`` on the return path, ``to`` on any recipient. ``due`` compares the next delivery attempt
    (messages with nothing pending never match a ``due`` condition) as ``(operator, timestamp)`` pairs with
    operators ``<``, ``<=``, ``=``, ``>=``, ``>``; ``whole_seconds`` truncates both sides to seconds (0.16).
    ``nothing`` matches no message (e.g. another queue name).
    """

    text: str | None = None
    from_: str | None = None
    to: str | None = None
    due: list[tuple[str, float]] = field(default_factory=list)
    whole_seconds: bool = False
    nothing: bool = False

    @property
    def empty(self) -> bool:
        return not (self.text or self.from_ or self.to or self.due or self.nothing)

    def where(self) -> tuple[str, list[Any]]:
        """The WHERE clause over ``queue_messages m`` (``"1"`` when unfiltered) and its parameters."""
        if self.nothing:
            return "0", []
        parts: list[str] = []
        params: list[Any] = []
        if self.text:
            parts.append(f"(instr(m.return_path, ?) > 0 OR {_HAS_RCPT_SQL})")
            params += [self.text, self.text]
        if self.from_:
            parts.append("instr(m.return_path, ?) > 0")
            params.append(self.from_)
        if self.to:
            parts.append(_HAS_RCPT_SQL)
            params.append(self.to)
        for op, ts in self.due:
            if op not in ("<", "<=", "=", ">=", ">"):
                raise ValueError(f"unknown operator {op!r}")
            if self.whole_seconds:
                parts.append(f"CAST({DUE_SQL} AS INTEGER) {op} ?")
                params.append(int(ts))
            else:
                parts.append(f"{DUE_SQL} {op} ?")
                params.append(ts)
        return " AND ".join(parts) or "1", params


def count(db: Database, flt: Filter) -> int:
    """How many queued messages match (one COUNT; cheap without filters)."""
    where, params = flt.where()
    row = db.one(f"SELECT COUNT(*) FROM queue_messages m WHERE {where}", params)
    return int(row[0]) if row else 0


def page_ids(db: Database, flt: Filter, offset: int, limit: int | None) -> list[int]:
    """One page of matching queue ids in queue-id order (``limit`` ``None``: to the end)."""
    where, params = flt.where()
    rows = db.q(f"SELECT m.id FROM queue_messages m WHERE {where} ORDER BY m.id LIMIT ? OFFSET ?",
                [*params, -1 if limit is None else limit, max(offset, 0)])
    return [r[0] for r in rows]


def _stream(db: Database, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> Generator[int, None, None]:
    """The first column of each row, fetched lazily (call with ``db.lock`` held)."""
    cur = db.conn.cursor()
    cur.row_factory = None
    try:
        cur.execute(sql, params)
        while rows := cur.fetchmany(1000):
            for row in rows:
                yield row[0]
    finally:
        cur.close()


def due_order(db: Database, flt: Filter, ascending: bool = True) -> Generator[int, None, None]:
    """Matching queue ids by next delivery attempt, ties by queue id; messages with nothing pending come last
    (first when descending). Lazy: call with ``db.lock`` held and stop early when the page is full.

    Unfiltered and ascending (what clients walking the queue ask for), it reads the index of pending
    recipients by time (``queue_pending_due``) and keeps each message's first appearance, which is its
    earliest attempt: no per-message work and no sort, so an early page costs little whatever the queue size.
    """
    if not flt.empty or not ascending:
        where, params = flt.where()
        order = "due NULLS LAST, m.id" if ascending else "due DESC NULLS FIRST, m.id DESC"
        yield from _stream(db, f"SELECT m.id, {DUE_SQL} AS due FROM queue_messages m WHERE {where} ORDER BY {order}", params)
        return
    seen: set[int] = set()
    for qid in _stream(db, f"SELECT queue_id FROM queue_recipients INDEXED BY queue_pending_due WHERE {_PENDING} "
                           "ORDER BY next_retry, queue_id"):
        if qid not in seen:
            seen.add(qid)
            yield qid
    yield from _stream(db, "SELECT m.id FROM queue_messages m WHERE NOT EXISTS (SELECT 1 FROM queue_recipients r "
                           f"INDEXED BY queue_recipients_pending WHERE r.queue_id = m.id AND r.{_PENDING}) ORDER BY m.id")


def due_page(db: Database, flt: Filter, position: int, limit: int, ascending: bool = True,
             anchor: int | None = None, anchor_offset: int = 0) -> tuple[int, list[int]] | None:
    """``(position, ids)`` of one page of :func:`due_order` (RFC 8620 §5.5 paging, ``position`` >= 0);
    ``None`` when ``anchor`` is given and does not match. Call with ``db.lock`` held."""
    if anchor is not None:
        with contextlib.closing(due_order(db, flt, ascending)) as ordered:
            found = next((i for i, qid in enumerate(ordered) if qid == anchor), None)
        if found is None:
            return None
        position = max(found + anchor_offset, 0)
    with contextlib.closing(due_order(db, flt, ascending)) as ordered:
        return position, list(itertools.islice(ordered, position, position + limit))


def first_ids(db: Database, limit: int) -> list[int]:
    """The ``limit`` lowest queue ids."""
    return [r[0] for r in db.q("SELECT id FROM queue_messages ORDER BY id LIMIT ?", (limit,))]


def state(db: Database) -> str:
    """A state string that changes whenever the store may have changed; O(1).

    It combines this process's start, its count of changed rows (every write of mailsrv goes through the
    one connection) and SQLite's ``data_version`` (commits by other processes, e.g. the ``mailsrv`` CLI).
    It can change without the queue changing; it never stays the same across a queue change.
    """
    with db.lock:
        version = db.conn.execute("PRAGMA data_version").fetchone()[0]
        return f"{_EPOCH}-{db.conn.total_changes:x}-{version:x}"


def list_v015(db: Database, flt: Filter, page: int, limit: int, max_total: int, values: bool) -> dict[str, Any]:
    """``GET /api/queue/messages``: one page (1-based; ``limit`` 0 = everything) in queue-id order.

    ``total`` counts the matches, capped at ``max_total`` (0 = no cap) like the listing itself; the page holds
    ids, or the messages themselves with ``values``.
    """
    with db.lock:  # every writer of this process goes through db: count, page and objects are one snapshot
        total = count(db, flt)
        if max_total:
            total = min(total, max_total)
        start = (max(page, 1) - 1) * limit if limit else 0
        size = min(limit, total - start) if limit else total - start
        ids = page_ids(db, flt, start, size) if size > 0 else []
        items: list[Any] = [v015(m) for m in load(db, ids)] if values else ids
        return {"items": items, "total": total, "status": is_running(db)}


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
