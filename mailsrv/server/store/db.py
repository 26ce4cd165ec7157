"""The SQLite database: one file in WAL mode, synchronous=FULL, with the schema of every store module.

A single connection is shared by the server's event loop and worker threads behind a re-entrant lock;
:meth:`Database.tx` opens ``BEGIN IMMEDIATE`` so a committed write is durable before we answer a client.
Other processes (the ``mailsrv account`` CLI) open their own connection to the same file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);

-- principals: JMAP accountId = ids.jmap_id(id); Stalwart's /api/principal id is the same number
CREATE TABLE IF NOT EXISTS principals(
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE COLLATE NOCASE,
  type TEXT NOT NULL DEFAULT 'individual',
  description TEXT NOT NULL DEFAULT '',
  secret TEXT NOT NULL DEFAULT '',
  quota INTEGER NOT NULL DEFAULT 0,
  roles TEXT NOT NULL DEFAULT '["user"]',
  created REAL NOT NULL,
  modseq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS addresses(
  address TEXT PRIMARY KEY COLLATE NOCASE,
  principal_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
  kind TEXT NOT NULL DEFAULT 'primary'
);
CREATE INDEX IF NOT EXISTS addresses_principal ON addresses(principal_id);
CREATE TABLE IF NOT EXISTS domains(
  name TEXT PRIMARY KEY COLLATE NOCASE,
  catch_all INTEGER REFERENCES principals(id) ON DELETE SET NULL,
  created REAL NOT NULL
);

-- blobs: bytes live in files named by sha256; links say which account may read which blob
CREATE TABLE IF NOT EXISTS blobs(hash TEXT PRIMARY KEY, size INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS uploads(
  account_id INTEGER NOT NULL,
  hash TEXT NOT NULL,
  type TEXT NOT NULL DEFAULT 'application/octet-stream',
  expires REAL NOT NULL,
  PRIMARY KEY(account_id, hash)
);

-- mail
CREATE TABLE IF NOT EXISTS mailboxes(
  id INTEGER PRIMARY KEY,
  account_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  parent_id INTEGER,
  role TEXT,
  sort_order INTEGER NOT NULL DEFAULT 0,
  is_subscribed INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS mailboxes_account ON mailboxes(account_id);
CREATE TABLE IF NOT EXISTS emails(
  id INTEGER PRIMARY KEY,
  account_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
  blob_hash TEXT NOT NULL,
  thread_id INTEGER NOT NULL,
  size INTEGER NOT NULL,
  received_at REAL NOT NULL,
  keywords TEXT NOT NULL DEFAULT '{}',
  message_id TEXT,
  summary TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS emails_account ON emails(account_id, received_at);
CREATE INDEX IF NOT EXISTS emails_thread ON emails(account_id, thread_id);
CREATE INDEX IF NOT EXISTS emails_blob ON emails(account_id, blob_hash);
CREATE INDEX IF NOT EXISTS emails_msgid ON emails(account_id, message_id);
CREATE TABLE IF NOT EXISTS email_mailboxes(
  email_id INTEGER NOT NULL REFERENCES emails(id) ON DELETE CASCADE,
  mailbox_id INTEGER NOT NULL,
  PRIMARY KEY(email_id, mailbox_id)
);
CREATE INDEX IF NOT EXISTS email_mailboxes_mailbox ON email_mailboxes(mailbox_id);
CREATE TABLE IF NOT EXISTS threads(id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS thread_msgids(
  account_id INTEGER NOT NULL,
  msgid TEXT NOT NULL,
  thread_id INTEGER NOT NULL,
  PRIMARY KEY(account_id, msgid)
);

-- change history for /changes: one modseq per write transaction per account
CREATE TABLE IF NOT EXISTS changelog(
  account_id INTEGER NOT NULL,
  type TEXT NOT NULL,
  modseq INTEGER NOT NULL,
  object_id INTEGER NOT NULL,
  op TEXT NOT NULL,
  counts_only INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS changelog_lookup ON changelog(account_id, type, modseq);
CREATE TABLE IF NOT EXISTS states(
  account_id INTEGER NOT NULL,
  type TEXT NOT NULL,
  modseq INTEGER NOT NULL DEFAULT 0,
  floor INTEGER NOT NULL DEFAULT 0,
  entries INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY(account_id, type)
);

-- other JMAP objects
CREATE TABLE IF NOT EXISTS identities(
  id INTEGER PRIMARY KEY,
  account_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
  data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vacation(
  account_id INTEGER PRIMARY KEY REFERENCES principals(id) ON DELETE CASCADE,
  data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vacation_replies(
  account_id INTEGER NOT NULL,
  sender TEXT NOT NULL COLLATE NOCASE,
  sent_at REAL NOT NULL,
  PRIMARY KEY(account_id, sender)
);
CREATE TABLE IF NOT EXISTS sieve_scripts(
  id INTEGER PRIMARY KEY,
  account_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  blob_hash TEXT NOT NULL,
  is_active INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS submissions(
  id INTEGER PRIMARY KEY,
  account_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
  data TEXT NOT NULL
);

-- outbound queue
CREATE TABLE IF NOT EXISTS queue_messages(
  id INTEGER PRIMARY KEY,
  return_path TEXT NOT NULL,
  blob_hash TEXT NOT NULL,
  size INTEGER NOT NULL,
  created REAL NOT NULL,
  env_id TEXT,
  priority INTEGER NOT NULL DEFAULT 0,
  account_id INTEGER
);
CREATE TABLE IF NOT EXISTS queue_recipients(
  queue_id INTEGER NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
  address TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'scheduled',
  retry_num INTEGER NOT NULL DEFAULT 0,
  next_retry REAL NOT NULL,
  expires REAL NOT NULL,
  last_error TEXT NOT NULL DEFAULT '',
  PRIMARY KEY(queue_id, address)
);
CREATE INDEX IF NOT EXISTS queue_due ON queue_recipients(status, next_retry);
-- queue listing: a message's next attempt (covering), and pending recipients by time (0.16 order by due)
CREATE INDEX IF NOT EXISTS queue_recipients_pending ON queue_recipients(queue_id, status, next_retry);
CREATE INDEX IF NOT EXISTS queue_pending_due ON queue_recipients(next_retry, queue_id)
  WHERE status IN ('scheduled', 'temp_fail');

-- security: IPs banned after repeated authentication failures
CREATE TABLE IF NOT EXISTS bans(ip TEXT PRIMARY KEY, until REAL NOT NULL, kind TEXT NOT NULL);
"""


class Database:
    """A locked SQLite connection; use :meth:`tx` for writes and :meth:`q`/:meth:`one` for reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA busy_timeout=30000")
        with self.lock:
            self.conn.executescript(SCHEMA)
        with self.tx():
            self.conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (nested calls join the outer one)."""
        with self.lock:
            if self.conn.in_transaction:
                yield self.conn
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            else:
                if self.conn.in_transaction:
                    self.conn.execute("COMMIT")

    def q(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Row | None:
        with self.lock:
            row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
            return row

    def close(self) -> None:
        with self.lock:
            self.conn.close()
