"""Mailboxes, emails and threads of one account, with every write recorded in the change log.

Writes that belong together (one JMAP ``/set`` call, one delivery) run in a :class:`MailTx`: a single
SQLite transaction whose changes share one modseq, so ``oldState``/``newState`` and ``/changes`` agree.
Object ids are never reused, even after the newest object of a table is destroyed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .changes import CREATED, DESTROYED, UPDATED, ChangeLog, ChangeSet
from .db import Database

MAILBOX, EMAIL, THREAD = "Mailbox", "Email", "Thread"
COUNT_PROPERTIES = ["totalEmails", "unreadEmails", "totalThreads", "unreadThreads"]

# Stalwart's default folders and their JMAP roles.
DEFAULT_MAILBOXES = [
    ("Inbox", "inbox", 0),
    ("Drafts", "drafts", 1),
    ("Sent Items", "sent", 2),
    ("Junk Mail", "junk", 3),
    ("Deleted Items", "trash", 4),
]

# An email counts as unread when it has neither $seen nor $draft (RFC 8621 §2).
_UNREAD = (
    "(json_extract(e.keywords, '$.\"$seen\"') IS NULL AND json_extract(e.keywords, '$.\"$draft\"') IS NULL)"
)


@dataclass
class Mailbox:
    id: int
    account_id: int
    name: str
    parent_id: int | None
    role: str | None
    sort_order: int
    is_subscribed: bool


@dataclass
class Email:
    id: int
    account_id: int
    blob_hash: str
    thread_id: int
    size: int
    received_at: float
    keywords: dict[str, bool]
    mailbox_ids: list[int]
    summary: dict[str, Any]


def _mailbox(row: sqlite3.Row) -> Mailbox:
    return Mailbox(
        id=row["id"],
        account_id=row["account_id"],
        name=row["name"],
        parent_id=row["parent_id"],
        role=row["role"],
        sort_order=row["sort_order"],
        is_subscribed=bool(row["is_subscribed"]),
    )


def _email(row: sqlite3.Row, mailbox_ids: list[int]) -> Email:
    return Email(
        id=row["id"],
        account_id=row["account_id"],
        blob_hash=row["blob_hash"],
        thread_id=row["thread_id"],
        size=row["size"],
        received_at=row["received_at"],
        keywords=json.loads(row["keywords"]),
        mailbox_ids=mailbox_ids,
        summary=json.loads(row["summary"]),
    )


def _is_unread(keywords: dict[str, bool]) -> bool:
    return "$seen" not in keywords and "$draft" not in keywords


def _norm_keywords(keywords: dict[str, bool] | None) -> dict[str, bool]:
    return {k.lower(): True for k, v in (keywords or {}).items() if v}


def _next_id(c: sqlite3.Connection, table: str) -> int:
    """A fresh row id for ``table`` that was never handed out before (ids are not reused)."""
    key = f"seq:{table}"
    row = c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    top = c.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
    n = max(int(row[0]) if row else 0, int(top)) + 1
    c.execute(
        "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, str(n))
    )
    return n


class MailTx:
    """One write transaction of an account: reads see its own writes; all changes share one modseq."""

    def __init__(self, changes: ChangeLog, conn: sqlite3.Connection, account_id: int) -> None:
        self.changes = changes
        self.c = conn
        self.account_id = account_id
        self._ops: dict[str, dict[int, str]] = {MAILBOX: {}, EMAIL: {}, THREAD: {}}
        self._counts: set[int] = set()
        self._gone: set[int] = set()
        self._savepoints = 0

    # -- change bookkeeping --------------------------------------------------------------------------
    def note(self, type_: str, object_id: int, op: str) -> None:
        """Remember a change; several changes of one object within the transaction collapse into one."""
        ops = self._ops.setdefault(type_, {})
        prev = ops.get(object_id)
        if prev is None:
            ops[object_id] = op
        elif prev == CREATED and op == DESTROYED:
            del ops[object_id]
            if type_ == MAILBOX:
                self._gone.add(object_id)
        elif prev == UPDATED and op == DESTROYED:
            ops[object_id] = DESTROYED

    def counts_changed(self, mailbox_ids: Iterable[int]) -> None:
        self._counts.update(mailbox_ids)

    def state(self, type_: str) -> str:
        return self.changes.state(self.c, self.account_id, type_)

    def finish(self) -> int | None:
        """Record the collected changes under one new modseq (``None`` if nothing changed); idempotent."""
        mailbox_ops = self._ops.get(MAILBOX, {})
        counts = sorted(self._counts - set(mailbox_ops) - self._gone)
        if not counts and not any(self._ops.values()):
            return None
        modseq = self.changes.next_modseq(self.c, self.account_id)
        for type_, ops in self._ops.items():
            self.changes.record(self.c, self.account_id, modseq, type_, list(ops.items()))
        self.changes.record(self.c, self.account_id, modseq, MAILBOX, [(m, UPDATED) for m in counts], counts_only=True)
        self._ops = {MAILBOX: {}, EMAIL: {}, THREAD: {}}
        self._counts.clear()
        return modseq

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Make one object's writes all-or-nothing inside the larger transaction."""
        self._savepoints += 1
        name = f"mailtx_{self._savepoints}"
        snapshot = ({t: dict(d) for t, d in self._ops.items()}, set(self._counts), set(self._gone))
        self.c.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.c.execute(f"ROLLBACK TO {name}")
            self.c.execute(f"RELEASE {name}")
            self._ops, self._counts, self._gone = snapshot
            raise
        self.c.execute(f"RELEASE {name}")

    # -- reads ---------------------------------------------------------------------------------------
    def mailboxes(self) -> list[Mailbox]:
        rows = self.c.execute("SELECT * FROM mailboxes WHERE account_id=? ORDER BY id", (self.account_id,)).fetchall()
        return [_mailbox(r) for r in rows]

    def mailbox(self, mailbox_id: int) -> Mailbox | None:
        row = self.c.execute("SELECT * FROM mailboxes WHERE account_id=? AND id=?", (self.account_id, mailbox_id)).fetchone()
        return _mailbox(row) if row else None

    def mailbox_has_email(self, mailbox_id: int) -> bool:
        return self.c.execute("SELECT 1 FROM email_mailboxes WHERE mailbox_id=? LIMIT 1", (mailbox_id,)).fetchone() is not None

    def email(self, email_id: int) -> Email | None:
        row = self.c.execute("SELECT * FROM emails WHERE account_id=? AND id=?", (self.account_id, email_id)).fetchone()
        if row is None:
            return None
        boxes = [r[0] for r in self.c.execute(
            "SELECT mailbox_id FROM email_mailboxes WHERE email_id=? ORDER BY mailbox_id", (email_id,)
        )]
        return _email(row, boxes)

    def quota_allows(self, extra: int) -> bool:
        """Whether ``extra`` more bytes fit the account's quota (0 = unlimited)."""
        row = self.c.execute("SELECT quota FROM principals WHERE id=?", (self.account_id,)).fetchone()
        quota = int(row[0]) if row else 0
        if quota <= 0:
            return True
        used = self.c.execute("SELECT COALESCE(SUM(size), 0) FROM emails WHERE account_id=?", (self.account_id,)).fetchone()[0]
        return int(used) + extra <= quota

    # -- mailbox writes ------------------------------------------------------------------------------
    def create_mailbox(
        self, name: str, parent_id: int | None = None, role: str | None = None, sort_order: int = 0,
        is_subscribed: bool = True,
    ) -> int:
        mailbox_id = _next_id(self.c, "mailboxes")
        self.c.execute(
            "INSERT INTO mailboxes(id, account_id, name, parent_id, role, sort_order, is_subscribed) VALUES(?,?,?,?,?,?,?)",
            (mailbox_id, self.account_id, name, parent_id, role, sort_order, int(is_subscribed)),
        )
        self.note(MAILBOX, mailbox_id, CREATED)
        return mailbox_id

    def update_mailbox(self, mailbox_id: int, **fields: Any) -> None:
        """Set columns: name, parent_id, role, sort_order, is_subscribed."""
        allowed = {"name", "parent_id", "role", "sort_order", "is_subscribed"}
        cols = {k: (int(v) if k == "is_subscribed" else v) for k, v in fields.items() if k in allowed}
        if set(fields) - allowed:
            raise KeyError(sorted(set(fields) - allowed)[0])
        if not cols:
            return
        self.c.execute(
            f"UPDATE mailboxes SET {', '.join(f'{k}=?' for k in cols)} WHERE account_id=? AND id=?",
            (*cols.values(), self.account_id, mailbox_id),
        )
        self.note(MAILBOX, mailbox_id, UPDATED)

    def destroy_mailbox(self, mailbox_id: int, *, remove_emails: bool = False) -> None:
        """Delete a mailbox; with ``remove_emails`` its emails go too, unless they are in another mailbox."""
        for (email_id,) in self.c.execute("SELECT email_id FROM email_mailboxes WHERE mailbox_id=?", (mailbox_id,)).fetchall():
            if not remove_emails:
                raise ValueError("mailbox has emails")
            others = self.c.execute(
                "SELECT 1 FROM email_mailboxes WHERE email_id=? AND mailbox_id<>? LIMIT 1", (email_id, mailbox_id)
            ).fetchone()
            if others:
                self.c.execute("DELETE FROM email_mailboxes WHERE email_id=? AND mailbox_id=?", (email_id, mailbox_id))
                self.note(EMAIL, email_id, UPDATED)
            else:
                self.destroy_email(email_id)
        self.c.execute("DELETE FROM mailboxes WHERE account_id=? AND id=?", (self.account_id, mailbox_id))
        self.note(MAILBOX, mailbox_id, DESTROYED)
        self._gone.add(mailbox_id)

    # -- email writes --------------------------------------------------------------------------------
    def _thread_for(self, summary: dict[str, Any]) -> tuple[int, bool]:
        own = summary.get("messageId") or []
        related = list(own) + list(summary.get("inReplyTo") or []) + list(summary.get("references") or [])
        thread_id = None
        for mid in related:
            row = self.c.execute(
                "SELECT thread_id FROM thread_msgids WHERE account_id=? AND msgid=?", (self.account_id, mid)
            ).fetchone()
            if row:
                thread_id = int(row[0])
                break
        created = thread_id is None
        if thread_id is None:
            thread_id = _next_id(self.c, "threads")
            self.c.execute("INSERT INTO threads(id, account_id) VALUES(?,?)", (thread_id, self.account_id))
        self.c.executemany(
            "INSERT OR IGNORE INTO thread_msgids(account_id, msgid, thread_id) VALUES(?,?,?)",
            [(self.account_id, mid, thread_id) for mid in related],
        )
        return thread_id, created

    def ingest(
        self,
        blob_hash: str,
        size: int,
        summary: dict[str, Any],
        mailbox_ids: list[int],
        keywords: dict[str, bool] | None = None,
        received_at: float | None = None,
    ) -> tuple[int, int]:
        """Add an email whose blob is already stored; returns (email id, thread id)."""
        kw = _norm_keywords(keywords)
        received = time.time() if received_at is None else received_at
        msgid = (summary.get("messageId") or [None])[0]
        thread_id, new_thread = self._thread_for(summary)
        email_id = _next_id(self.c, "emails")
        self.c.execute(
            "INSERT INTO emails(id, account_id, blob_hash, thread_id, size, received_at, keywords, message_id, summary) "
            "VALUES(?,?,?,?,?,?,?,?,?)",
            (email_id, self.account_id, blob_hash, thread_id, size, received, json.dumps(kw), msgid, json.dumps(summary)),
        )
        boxes = set(mailbox_ids)
        self.c.executemany("INSERT INTO email_mailboxes(email_id, mailbox_id) VALUES(?,?)", [(email_id, m) for m in boxes])
        self.c.execute("INSERT OR IGNORE INTO blobs(hash, size, created) VALUES(?,?,?)", (blob_hash, size, time.time()))
        self.note(EMAIL, email_id, CREATED)
        self.note(THREAD, thread_id, CREATED if new_thread else UPDATED)
        self.counts_changed(boxes)
        return email_id, thread_id

    def update_email(
        self, email_id: int, *, keywords: dict[str, bool] | None = None, mailbox_ids: Iterable[int] | None = None
    ) -> bool:
        """Replace keywords and/or mailbox membership; False if the email does not exist."""
        current = self.email(email_id)
        if current is None:
            return False
        old_boxes, new_boxes = set(current.mailbox_ids), set(current.mailbox_ids)
        old_kw, new_kw = current.keywords, current.keywords
        if keywords is not None:
            new_kw = _norm_keywords(keywords)
            if new_kw != old_kw:
                self.c.execute("UPDATE emails SET keywords=? WHERE id=?", (json.dumps(new_kw), email_id))
        if mailbox_ids is not None:
            new_boxes = set(mailbox_ids)
            if new_boxes != old_boxes:
                self.c.execute("DELETE FROM email_mailboxes WHERE email_id=?", (email_id,))
                self.c.executemany(
                    "INSERT INTO email_mailboxes(email_id, mailbox_id) VALUES(?,?)", [(email_id, m) for m in new_boxes]
                )
        if new_kw == old_kw and new_boxes == old_boxes:
            return True
        self.note(EMAIL, email_id, UPDATED)
        if _is_unread(new_kw) != _is_unread(old_kw):
            self.counts_changed(old_boxes | new_boxes)
        else:
            self.counts_changed(old_boxes ^ new_boxes)
        return True

    def destroy_email(self, email_id: int) -> bool:
        row = self.c.execute("SELECT thread_id FROM emails WHERE account_id=? AND id=?", (self.account_id, email_id)).fetchone()
        if row is None:
            return False
        thread_id = int(row[0])
        boxes = [r[0] for r in self.c.execute("SELECT mailbox_id FROM email_mailboxes WHERE email_id=?", (email_id,))]
        self.c.execute("DELETE FROM email_mailboxes WHERE email_id=?", (email_id,))
        self.c.execute("DELETE FROM emails WHERE id=?", (email_id,))
        left = self.c.execute(
            "SELECT 1 FROM emails WHERE account_id=? AND thread_id=? LIMIT 1", (self.account_id, thread_id)
        ).fetchone()
        if not left:
            self.c.execute("DELETE FROM threads WHERE id=?", (thread_id,))
            self.c.execute("DELETE FROM thread_msgids WHERE account_id=? AND thread_id=?", (self.account_id, thread_id))
        self.note(EMAIL, email_id, DESTROYED)
        self.note(THREAD, thread_id, UPDATED if left else DESTROYED)
        self.counts_changed(boxes)
        return True


class MailStore:
    """Reads and writes of mailboxes and emails; all writes go through :class:`ChangeLog`."""

    def __init__(self, db: Database, changes: ChangeLog) -> None:
        self.db = db
        self.changes = changes

    @contextmanager
    def write(self, account_id: int) -> Iterator[MailTx]:
        """A write transaction for ``account_id``; its changes are recorded under one modseq on success."""
        with self.db.tx() as c:
            t = MailTx(self.changes, c, account_id)
            yield t
            t.finish()

    def state(self, account_id: int, type_: str) -> str:
        """The current state string of a JMAP type (``Mailbox``, ``Email``, ``Thread``)."""
        with self.db.lock:
            return self.changes.state(self.db.conn, account_id, type_)

    def changes_since(self, account_id: int, type_: str, since: str, max_changes: int) -> ChangeSet:
        """Changes of ``type_`` after state ``since`` (raises ``CannotCalculateChanges``)."""
        with self.db.lock:
            return self.changes.changes(self.db.conn, account_id, type_, since, max_changes)

    # -- mailboxes ---------------------------------------------------------------------------------
    def mailboxes(self, account_id: int) -> list[Mailbox]:
        return [_mailbox(r) for r in self.db.q("SELECT * FROM mailboxes WHERE account_id=? ORDER BY id", (account_id,))]

    def mailbox(self, account_id: int, mailbox_id: int) -> Mailbox | None:
        row = self.db.one("SELECT * FROM mailboxes WHERE account_id=? AND id=?", (account_id, mailbox_id))
        return _mailbox(row) if row else None

    def mailbox_by_role(self, account_id: int, role: str) -> Mailbox | None:
        row = self.db.one("SELECT * FROM mailboxes WHERE account_id=? AND role=? ORDER BY id LIMIT 1", (account_id, role))
        return _mailbox(row) if row else None

    def ensure_default_mailboxes(self, account_id: int) -> None:
        with self.write(account_id) as t:
            if t.c.execute("SELECT 1 FROM mailboxes WHERE account_id=? LIMIT 1", (account_id,)).fetchone():
                return
            for name, role, order in DEFAULT_MAILBOXES:
                t.create_mailbox(name, None, role, order, True)

    def create_mailbox(
        self,
        account_id: int,
        name: str,
        parent_id: int | None = None,
        role: str | None = None,
        sort_order: int = 0,
        is_subscribed: bool = True,
    ) -> int:
        """Create a mailbox (no validation here: the JMAP layer checks names, parents and roles)."""
        with self.write(account_id) as t:
            return t.create_mailbox(name, parent_id, role, sort_order, is_subscribed)

    def mailbox_counts(self, account_id: int, mailbox_id: int) -> dict[str, int]:
        """totalEmails, unreadEmails, totalThreads, unreadThreads (RFC 8621 §2)."""
        return self.mailbox_counts_all(account_id, [mailbox_id]).get(mailbox_id, dict.fromkeys(COUNT_PROPERTIES, 0))

    def mailbox_counts_all(self, account_id: int, mailbox_ids: list[int] | None = None) -> dict[int, dict[str, int]]:
        """The four counts of each mailbox that holds any email (all mailboxes, or only ``mailbox_ids``)."""
        where, params = "", [account_id]
        if mailbox_ids is not None:
            if not mailbox_ids:
                return {}
            where = f" AND m.mailbox_id IN ({','.join('?' * len(mailbox_ids))})"
            params += mailbox_ids
        rows = self.db.q(
            "SELECT mailbox_id, COUNT(*), SUM(unread), COUNT(DISTINCT thread_id), "
            "COUNT(DISTINCT CASE WHEN unread THEN thread_id END) FROM ("
            f"SELECT m.mailbox_id, e.thread_id, {_UNREAD} AS unread "
            f"FROM email_mailboxes m JOIN emails e ON e.id = m.email_id WHERE e.account_id=?{where}"
            ") GROUP BY mailbox_id",
            params,
        )
        return {r[0]: dict(zip(COUNT_PROPERTIES, (int(v or 0) for v in r[1:]), strict=True)) for r in rows}

    # -- emails ------------------------------------------------------------------------------------
    def email(self, account_id: int, email_id: int) -> Email | None:
        return self.emails(account_id, [email_id]).get(email_id)

    def emails(self, account_id: int, ids: list[int]) -> dict[int, Email]:
        """Load many emails at once (one query for rows, one for memberships)."""
        out: dict[int, Email] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            # "+account_id": look rows up by primary key, not by scanning the account's index entries
            rows = self.db.q(f"SELECT * FROM emails WHERE +account_id=? AND id IN ({marks})", (account_id, *chunk))
            boxes: dict[int, list[int]] = {}
            for r in self.db.q(
                f"SELECT email_id, mailbox_id FROM email_mailboxes WHERE email_id IN ({marks}) ORDER BY mailbox_id",
                chunk,
            ):
                boxes.setdefault(r[0], []).append(r[1])
            for row in rows:
                out[row["id"]] = _email(row, boxes.get(row["id"], []))
        return out

    def ingest(
        self,
        account_id: int,
        blob_hash: str,
        size: int,
        summary: dict[str, Any],
        mailbox_ids: list[int],
        keywords: dict[str, bool] | None = None,
        received_at: float | None = None,
    ) -> tuple[int, int]:
        """Add an email whose blob is already stored; returns (email id, thread id)."""
        with self.write(account_id) as t:
            return t.ingest(blob_hash, size, summary, mailbox_ids, keywords, received_at)

    def update_email(
        self,
        account_id: int,
        email_id: int,
        *,
        keywords: dict[str, bool] | None = None,
        mailbox_ids: list[int] | None = None,
    ) -> bool:
        """Replace keywords and/or mailbox membership; False if the email does not exist."""
        with self.write(account_id) as t:
            return t.update_email(email_id, keywords=keywords, mailbox_ids=mailbox_ids)

    def destroy_email(self, account_id: int, email_id: int) -> bool:
        with self.write(account_id) as t:
            return t.destroy_email(email_id)

    def thread_email_ids(self, account_id: int, thread_id: int) -> list[int]:
        """Email ids of a thread, oldest first (RFC 8621 §3)."""
        return self.threads_email_ids(account_id, [thread_id]).get(thread_id, [])

    def threads_email_ids(self, account_id: int, thread_ids: list[int] | None) -> dict[int, list[int]]:
        """Email ids of each thread (all threads if ``thread_ids`` is None), oldest first."""
        out: dict[int, list[int]] = {}
        chunks = [None] if thread_ids is None else [thread_ids[i : i + 500] for i in range(0, len(thread_ids), 500)]
        for chunk in chunks:
            where, params = "", [account_id]
            if chunk is not None:
                where = f" AND thread_id IN ({','.join('?' * len(chunk))})"
                params += chunk
            for tid, eid in self.db.q(
                f"SELECT thread_id, id FROM emails WHERE account_id=?{where} ORDER BY received_at, id", params
            ):
                out.setdefault(tid, []).append(eid)
        return out

    def account_can_read_blob(self, account_id: int, blob_hash: str) -> bool:
        """Blob isolation: an account reads only blobs of its emails, sieve scripts or live uploads."""
        return bool(
            self.db.one("SELECT 1 FROM emails WHERE account_id=? AND blob_hash=? LIMIT 1", (account_id, blob_hash))
            or self.db.one("SELECT 1 FROM uploads WHERE account_id=? AND hash=? AND expires > ?", (account_id, blob_hash, time.time()))
            or self.db.one("SELECT 1 FROM sieve_scripts WHERE account_id=? AND blob_hash=? LIMIT 1", (account_id, blob_hash))
        )
