"""The one lock every mail-backup job shares: ``[state] dir``/mail-backup.lock (``flock``).

The nightly run (scheduled or typed by hand), the weekly check and the restore drill take it, so two of them
never overlap on the same export directory and repositories. A job that finds the lock held **waits** for it
— up to ``[schedule] lock_wait`` seconds (default 4 h; 0 = give up at once) — saying once who holds it, then
runs; if the holder is still busy at the deadline it exits 4 naming the holder. A stop request (SIGTERM)
ends the wait at once.

``flock`` locks belong to the open file, not to the path: the kernel releases them when the holder exits, even
after ``kill -9``, so a lock is never stale. The file's content (pid, job, start time) is only a description
for messages; it is rewritten by each holder and never trusted for locking.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import stopping
from .errors import EXIT_PARTIAL, BackupError, LocalIOError

LOCK_FILE = "mail-backup.lock"
POLL = 0.2


class LockBusy(BackupError):
    """Another job held the lock for longer than we were allowed to wait."""

    exit_code = EXIT_PARTIAL


@dataclass
class Holder:
    pid: int | None
    job: str
    since: float | None
    host: str = ""

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)) if self.since else "an unknown time"
        who = f"pid {self.pid}" if self.pid else "another process"
        return f"mail-backup {self.job or 'job'} ({who}, since {when})"


def lock_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / LOCK_FILE


def read_holder(path: Path) -> Holder:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    pid = data.get("pid")
    since = data.get("since")
    return Holder(pid if isinstance(pid, int) else None, str(data.get("job") or ""),
                  float(since) if isinstance(since, int | float) else None, str(data.get("host") or ""))


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LocalIOError(f"state.dir: cannot open the job lock {path}: {exc.strerror or exc}") from None


@contextmanager
def job_lock(state_dir: str | Path, job: str, *, wait: float, on_wait: Callable[[Holder], None] | None = None) -> Iterator[float]:
    """Hold the shared job lock for ``job``; yields the seconds spent waiting for it.

    Waits up to ``wait`` seconds (0: not at all) while another job holds it; ``on_wait`` is told once who
    that is. Raises :class:`LockBusy` after the deadline and :class:`~backup.stopping.Stopped` when a stop is
    requested while waiting.
    """
    path = lock_path(state_dir)
    fd = _open(path)
    started = time.monotonic()
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(path)
                waited = time.monotonic() - started
                if waited >= wait:
                    raise LockBusy(f"another job is running: {holder.describe()}; "
                                   + (f"gave up after waiting {waited:.0f} s ([schedule] lock_wait)" if wait
                                      else "not waiting ([schedule] lock_wait = 0)")) from None
                if not told and on_wait is not None:
                    on_wait(holder)
                told = True
                stopping.check()
                stopping.sleep(min(POLL, wait - waited))
                stopping.check()
        waited = time.monotonic() - started
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "job": job, "since": time.time(), "host": socket.gethostname()}).encode(), 0)
        try:
            yield waited
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


__all__ = ["LOCK_FILE", "Holder", "LockBusy", "job_lock", "lock_path", "read_holder"]
