"""The restore journal: which destination blobs are already known to hold which content.

A restore decides what is already on the server by content (sha256). Servers with ``Blob/get``
``digest:sha-256`` answer that cheaply; on others (Cyrus) a candidate message has to be downloaded and
hashed. JMAP blobs are immutable, so a blob id once hashed stays valid: the journal keeps
``blobId → sha256`` for every blob confirmed on one destination account, so a restore resumed after a
``kill -9`` (or run again) does not download those messages again.

The journal is a cache, never the source of truth: what is on the server is always re-detected, so a lost
or stale journal costs time, not correctness. It lives in ``STATE_DIR/restore/<key>.journal`` (directory
0700, file 0600; not ``*.json``, which the state directory reserves for job results) and is rewritten
atomically at most every few seconds and at the end of a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path

from mailsrv.fsio import atomic_write_bytes

log = logging.getLogger(__name__)
FLUSH_INTERVAL = 3.0
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Journal:
    """``blobId → sha256`` of one destination account; thread-safe; a no-op when ``path`` is None."""

    def __init__(self, path: Path | None, *, server: str = "", account: str = "", writable: bool = True) -> None:
        self.path = path
        self.writable = writable
        self.server = server
        self.account = account
        self._blobs: dict[str, str] = {}
        self._lock = threading.Lock()
        self._dirty = False
        self._last = time.monotonic()
        self._broken = False
        if path is not None:
            self._load(path)

    @classmethod
    def for_account(cls, state_dir: str | Path, server: str, account: str, account_id: str, *, writable: bool = True) -> Journal:
        """The journal of one destination account (``writable=False``: read it, never write, e.g. a dry run)."""
        key = hashlib.sha256(f"{server}\0{account}\0{account_id}".encode()).hexdigest()[:32]
        return cls(Path(state_dir) / "restore" / f"{key}.journal", server=server, account=account, writable=writable)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("restore journal %s unreadable (%s); starting a new one", path, exc)
            return
        blobs = data.get("blobs") if isinstance(data, dict) else None
        if isinstance(blobs, dict):
            self._blobs = {str(k): v for k, v in blobs.items() if isinstance(v, str) and _HEX64.fullmatch(v)}

    def __len__(self) -> int:
        return len(self._blobs)

    def get(self, blob_id: str) -> str | None:
        return self._blobs.get(blob_id)

    def put(self, blob_id: str, sha256: str) -> None:
        with self._lock:
            if self._blobs.get(blob_id) != sha256:
                self._blobs[blob_id] = sha256
                self._dirty = True
        if time.monotonic() - self._last > FLUSH_INTERVAL:
            self.flush()

    def flush(self) -> None:
        """Write the journal atomically if it changed (errors only disable it: it is a cache)."""
        if self.path is None or self._broken or not self.writable:
            return
        with self._lock:
            if not self._dirty:
                return
            body = json.dumps({"format": "mailsidecar-restore-journal", "version": 1, "server": self.server,
                               "account": self.account, "blobs": self._blobs}, sort_keys=True).encode()
            self._dirty = False
            self._last = time.monotonic()
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.path.parent, 0o700)
            atomic_write_bytes(self.path, body, perm=0o600)
        except OSError as exc:
            self._broken = True
            log.warning("cannot write the restore journal %s (%s); a resumed restore re-detects instead", self.path, exc)
