"""mailsrv's store: SQLite metadata (WAL) beside content-addressed blob files."""

from __future__ import annotations

import time
from pathlib import Path

from .blobs import BlobStore
from .changes import ChangeLog
from .db import Database
from .mail import MailStore
from .principals import Principals

__all__ = ["Store"]


class Store:
    """Everything mailsrv keeps on disk under ``data_dir``."""

    def __init__(self, data_dir: str | Path, *, changes_max_history: int = 10_000) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(self.data_dir / "mailsrv.sqlite3")
        self.blobs = BlobStore(self.data_dir / "blobs")
        self.changes = ChangeLog(changes_max_history)
        self.principals = Principals(self.db)
        self.mail = MailStore(self.db, self.changes)

    def add_upload(self, account_id: int, blob_hash: str, size: int, type_: str, ttl: float) -> None:
        """Let ``account_id`` read an uploaded blob until it expires (or an object references it)."""
        now = time.time()
        with self.db.tx() as c:
            c.execute("INSERT OR IGNORE INTO blobs(hash, size, created) VALUES(?,?,?)", (blob_hash, size, now))
            c.execute(
                "INSERT INTO uploads(account_id, hash, type, expires) VALUES(?,?,?,?) "
                "ON CONFLICT(account_id, hash) DO UPDATE SET expires=excluded.expires, type=excluded.type",
                (account_id, blob_hash, type_, now + ttl),
            )

    def close(self) -> None:
        self.db.close()
