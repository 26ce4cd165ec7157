"""Progress of a restore: a rich bar on a terminal (messages, bytes, speed, ETA) and ``restore.progress`` events.

With ``--json`` an event is written at most every :data:`EVENT_INTERVAL` seconds and once at the end; a
resumed restore only counts what it still has to do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import Progress, TaskID

from backup.output import Output, message_progress

EVENT_INTERVAL = 1.0




class RestoreProgress:
    """Counts messages and bytes written to the server for one account."""

    def __init__(self, out: Output, account: str, rich: Progress | None, messages: int, nbytes: int) -> None:
        self.out = out
        self.account = account
        self.rich = rich
        self.total = messages
        self.total_bytes = nbytes
        self.done = 0
        self.bytes = 0
        self._last = 0.0
        self.task: TaskID | None = None
        if rich is not None:
            self.task = rich.add_task(f"restore {account}", total=max(nbytes, 1), msgs=0, msgs_total=messages)

    def advance(self, messages: int, nbytes: int = 0) -> None:
        self.done += messages
        self.bytes += nbytes
        if self.rich is not None and self.task is not None:
            self.rich.update(self.task, completed=self.bytes, msgs=self.done)
        now = time.monotonic()
        if self.out.as_json and (now - self._last >= EVENT_INTERVAL or self.done >= self.total):
            self._last = now
            self.out.event("restore.progress", account=self.account, done=self.done, total=self.total, bytes=self.bytes,
                           total_bytes=self.total_bytes)

    def finish(self) -> None:
        if self.rich is not None and self.task is not None:
            self.rich.update(self.task, completed=max(self.total_bytes, 1), msgs=self.done)


@contextmanager
def restore_progress(out: Output, account: str, messages: int, nbytes: int) -> Iterator[RestoreProgress]:
    if not out.interactive or messages == 0:
        yield RestoreProgress(out, account, None, messages, nbytes)
        return
    with message_progress(out.err) as rich:
        progress = RestoreProgress(out, account, rich, messages, nbytes)
        yield progress
        progress.finish()
