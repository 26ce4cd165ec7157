"""Mailboxes, emails and threads of one account, with every write recorded in the change log."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from .changes import CREATED, DESTROYED, UPDATED, ChangeLog
from .db import Database

MAILBOX, EMAIL, THREAD = "Mailbox", "Email", "Thread"

# Stalwart's default folders and their JMAP roles.
DEFAULT_MAILBOXES = [
    ("Inbox", "inbox", 0),
    ("Drafts", "drafts", 1),
    ("Sent Items", "sent", 2),
    ("Junk Mail", "junk", 3),
    ("Deleted Items", "trash", 4),
]


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


class MailStore:
    """Reads and writes of mailboxes and emails; all writes go through :class:`ChangeLog`."""

    def __init__(self, db: Database, changes: ChangeLog) -> None:
        self.db = db
        self.changes = changes

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
        with self.db.tx() as c:
            if c.execute("SELECT 1 FROM mailboxes WHERE account_id=? LIMIT 1", (account_id,)).fetchone():
                return
            modseq = self.changes.next_modseq(c, account_id)
            created = []
            for name, role, order in DEFAULT_MAILBOXES:
                cur = c.execute(
                    "INSERT INTO mailboxes(account_id, name, parent_id, role, sort_order, is_subscribed) "
                    "VALUES(?,?,NULL,?,?,1)",
                    (account_id, name, role, order),
                )
                created.append((int(cur.lastrowid or 0), CREATED))
            self.changes.record(c, account_id, modseq, MAILBOX, created)

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
        with self.db.tx() as c:
            modseq = self.changes.next_modseq(c, account_id)
            cur = c.execute(
                "INSERT INTO mailboxes(account_id, name, parent_id, role, sort_order, is_subscribed) VALUES(?,?,?,?,?,?)",
                (account_id, name, parent_id, role, sort_order, int(is_subscribed)),
            )
            mailbox_id = int(cur.lastrowid or 0)
            self.changes.record(c, account_id, modseq, MAILBOX, [(mailbox_id, CREATED)])
        return mailbox_id

    def mailbox_counts(self, account_id: int, mailbox_id: int) -> dict[str, int]:
        """totalEmails, unreadEmails, totalThreads, unreadThreads (RFC 8621 §2)."""
        row = self.db.one(
            "SELECT COUNT(*) AS total, "
            "SUM(CASE WHEN json_extract(e.keywords, '$.\"$seen\"') IS NULL THEN 1 ELSE 0 END) AS unread, "
            "COUNT(DISTINCT e.thread_id) AS threads, "
            "COUNT(DISTINCT CASE WHEN json_extract(e.keywords, '$.\"$seen\"') IS NULL THEN e.thread_id END) AS uthreads "
            "FROM email_mailboxes m JOIN emails e ON e.id = m.email_id WHERE m.mailbox_id=? AND e.account_id=?",
            (mailbox_id, account_id),
        )
        assert row is not None
        return {
            "totalEmails": row["total"] or 0,
            "unreadEmails": row["unread"] or 0,
            "totalThreads": row["threads"] or 0,
            "unreadThreads": row["uthreads"] or 0,
        }

    # -- emails ------------------------------------------------------------------------------------
    def _email(self, row: sqlite3.Row) -> Email:
        mboxes = [r[0] for r in self.db.q("SELECT mailbox_id FROM email_mailboxes WHERE email_id=? ORDER BY mailbox_id", (row["id"],))]
        return Email(
            id=row["id"],
            account_id=row["account_id"],
            blob_hash=row["blob_hash"],
            thread_id=row["thread_id"],
            size=row["size"],
            received_at=row["received_at"],
            keywords=json.loads(row["keywords"]),
            mailbox_ids=mboxes,
            summary=json.loads(row["summary"]),
        )

    def email(self, account_id: int, email_id: int) -> Email | None:
        row = self.db.one("SELECT * FROM emails WHERE account_id=? AND id=?", (account_id, email_id))
        return self._email(row) if row else None

    def emails(self, account_id: int, ids: list[int]) -> dict[int, Email]:
        """Load many emails at once (one query for rows, one for memberships)."""
        out: dict[int, Email] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.q(f"SELECT * FROM emails WHERE account_id=? AND id IN ({marks})", (account_id, *chunk))  # noqa: S608
            boxes: dict[int, list[int]] = {}
            for r in self.db.q(
                f"SELECT email_id, mailbox_id FROM email_mailboxes WHERE email_id IN ({marks}) ORDER BY mailbox_id",  # noqa: S608
                chunk,
            ):
                boxes.setdefault(r[0], []).append(r[1])
            for row in rows:
                out[row["id"]] = Email(
                    id=row["id"],
                    account_id=row["account_id"],
                    blob_hash=row["blob_hash"],
                    thread_id=row["thread_id"],
                    size=row["size"],
                    received_at=row["received_at"],
                    keywords=json.loads(row["keywords"]),
                    mailbox_ids=boxes.get(row["id"], []),
                    summary=json.loads(row["summary"]),
                )
        return out

    def _thread_for(self, c: sqlite3.Connection, account_id: int, summary: dict[str, Any]) -> tuple[int, bool]:
        own = summary.get("messageId") or []
        related = list(own) + list(summary.get("inReplyTo") or []) + list(summary.get("references") or [])
        thread_id = None
        for mid in related:
            row = c.execute("SELECT thread_id FROM thread_msgids WHERE account_id=? AND msgid=?", (account_id, mid)).fetchone()
            if row:
                thread_id = int(row[0])
                break
        created = thread_id is None
        if thread_id is None:
            thread_id = int(c.execute("INSERT INTO threads(account_id) VALUES(?)", (account_id,)).lastrowid or 0)
        c.executemany(
            "INSERT OR IGNORE INTO thread_msgids(account_id, msgid, thread_id) VALUES(?,?,?)",
            [(account_id, mid, thread_id) for mid in related],
        )
        return thread_id, created

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
        keywords = {k.lower(): True for k, v in (keywords or {}).items() if v}
        received = time.time() if received_at is None else received_at
        msgid = (summary.get("messageId") or [None])[0]
        with self.db.tx() as c:
            modseq = self.changes.next_modseq(c, account_id)
            thread_id, new_thread = self._thread_for(c, account_id, summary)
            cur = c.execute(
                "INSERT INTO emails(account_id, blob_hash, thread_id, size, received_at, keywords, message_id, summary) "
                "VALUES(?,?,?,?,?,?,?,?)",
                (account_id, blob_hash, thread_id, size, received, json.dumps(keywords), msgid, json.dumps(summary)),
            )
            email_id = int(cur.lastrowid or 0)
            c.executemany("INSERT INTO email_mailboxes(email_id, mailbox_id) VALUES(?,?)", [(email_id, m) for m in set(mailbox_ids)])
            c.execute("INSERT OR IGNORE INTO blobs(hash, size, created) VALUES(?,?,?)", (blob_hash, size, time.time()))
            self.changes.record(c, account_id, modseq, EMAIL, [(email_id, CREATED)])
            self.changes.record(c, account_id, modseq, THREAD, [(thread_id, CREATED if new_thread else UPDATED)])
            self.changes.record(c, account_id, modseq, MAILBOX, [(m, UPDATED) for m in set(mailbox_ids)], counts_only=True)
        return email_id, thread_id

    def update_email(
        self,
        account_id: int,
        email_id: int,
        *,
        keywords: dict[str, bool] | None = None,
        mailbox_ids: list[int] | None = None,
    ) -> bool:
        """Replace keywords and/or mailbox membership; False if the email does not exist."""
        with self.db.tx() as c:
            row = c.execute("SELECT thread_id FROM emails WHERE account_id=? AND id=?", (account_id, email_id)).fetchone()
            if row is None:
                return False
            old_boxes = {r[0] for r in c.execute("SELECT mailbox_id FROM email_mailboxes WHERE email_id=?", (email_id,))}
            modseq = self.changes.next_modseq(c, account_id)
            touched = set(old_boxes)
            if keywords is not None:
                c.execute(
                    "UPDATE emails SET keywords=? WHERE id=?",
                    (json.dumps({k.lower(): True for k, v in keywords.items() if v}), email_id),
                )
            if mailbox_ids is not None:
                new_boxes = set(mailbox_ids)
                c.execute("DELETE FROM email_mailboxes WHERE email_id=?", (email_id,))
                c.executemany("INSERT INTO email_mailboxes(email_id, mailbox_id) VALUES(?,?)", [(email_id, m) for m in new_boxes])
                touched |= new_boxes
            self.changes.record(c, account_id, modseq, EMAIL, [(email_id, UPDATED)])
            self.changes.record(c, account_id, modseq, THREAD, [(int(row[0]), UPDATED)])
            self.changes.record(c, account_id, modseq, MAILBOX, [(m, UPDATED) for m in touched], counts_only=True)
        return True

    def destroy_email(self, account_id: int, email_id: int) -> bool:
        with self.db.tx() as c:
            row = c.execute("SELECT thread_id FROM emails WHERE account_id=? AND id=?", (account_id, email_id)).fetchone()
            if row is None:
                return False
            boxes = [r[0] for r in c.execute("SELECT mailbox_id FROM email_mailboxes WHERE email_id=?", (email_id,))]
            thread_id = int(row[0])
            modseq = self.changes.next_modseq(c, account_id)
            c.execute("DELETE FROM email_mailboxes WHERE email_id=?", (email_id,))
            c.execute("DELETE FROM emails WHERE id=?", (email_id,))
            left = c.execute("SELECT 1 FROM emails WHERE account_id=? AND thread_id=? LIMIT 1", (account_id, thread_id)).fetchone()
            if not left:
                c.execute("DELETE FROM threads WHERE id=?", (thread_id,))
                c.execute("DELETE FROM thread_msgids WHERE account_id=? AND thread_id=?", (account_id, thread_id))
            self.changes.record(c, account_id, modseq, EMAIL, [(email_id, DESTROYED)])
            self.changes.record(c, account_id, modseq, THREAD, [(thread_id, UPDATED if left else DESTROYED)])
            self.changes.record(c, account_id, modseq, MAILBOX, [(m, UPDATED) for m in boxes], counts_only=True)
        return True

    def thread_email_ids(self, account_id: int, thread_id: int) -> list[int]:
        """Email ids of a thread, oldest first (RFC 8621 §3)."""
        return [r[0] for r in self.db.q(
            "SELECT id FROM emails WHERE account_id=? AND thread_id=? ORDER BY received_at, id", (account_id, thread_id)
        )]

    def account_can_read_blob(self, account_id: int, blob_hash: str) -> bool:
        """Blob isolation: an account reads only blobs of its emails, sieve scripts or live uploads."""
        return bool(
            self.db.one("SELECT 1 FROM emails WHERE account_id=? AND blob_hash=? LIMIT 1", (account_id, blob_hash))
            or self.db.one("SELECT 1 FROM uploads WHERE account_id=? AND hash=? AND expires > ?", (account_id, blob_hash, time.time()))
            or self.db.one("SELECT 1 FROM sieve_scripts WHERE account_id=? AND blob_hash=? LIMIT 1", (account_id, blob_hash))
        )
