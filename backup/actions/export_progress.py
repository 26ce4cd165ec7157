"""Progress of an export run: one rich bar per account on a TTY (messages, bytes, rate, ETA), JSON-lines
``export.account.progress`` events with ``--json`` (at most one every few seconds per account)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import Progress, TaskID

from backup.output import Output, message_progress

EVENT_INTERVAL = 5.0




class AccountProgress:
    """Progress of one account; totals are the blobs and bytes that must be downloaded."""

    def __init__(self, board: ExportProgress, name: str, task: TaskID | None) -> None:
        self.board = board
        self.name = name
        self.task = task
        self.messages = 0
        self.bytes = 0
        self.total_messages = 0
        self.total_bytes = 0
        self._last_event = 0.0

    def start(self, messages: int, nbytes: int) -> None:
        self.total_messages, self.total_bytes = messages, nbytes
        if self.task is not None and self.board.rich is not None:
            self.board.rich.update(self.task, total=max(nbytes, 1), msgs_total=messages, visible=True)

    def advance(self, messages: int, nbytes: int) -> None:
        self.messages += messages
        self.bytes += nbytes
        if self.task is not None and self.board.rich is not None:
            self.board.rich.update(self.task, completed=self.bytes, msgs=self.messages)
        now = time.monotonic()
        if self.board.out.as_json and now - self._last_event >= EVENT_INTERVAL:
            self._last_event = now
            self.board.out.event(self.board.event, account=self.name, messages=self.messages, bytes=self.bytes,
                                 messages_total=self.total_messages, bytes_total=self.total_bytes)

    def finish(self) -> None:
        if self.task is not None and self.board.rich is not None:
            self.board.rich.update(self.task, completed=max(self.total_bytes, 1), msgs=self.messages)


class ExportProgress:
    """The run's progress board; a no-op (except JSON events) when stderr is not a terminal."""

    def __init__(self, out: Output, rich: Progress | None, event: str = "export.account.progress") -> None:
        self.out = out
        self.rich = rich
        self.event = event

    def account(self, name: str) -> AccountProgress:
        task = self.rich.add_task(name, total=None, msgs=0, msgs_total=None, visible=False) if self.rich is not None else None
        return AccountProgress(self, name, task)


@contextmanager
def export_progress(out: Output, event: str = "export.account.progress") -> Iterator[ExportProgress]:
    """Progress bars (messages, bytes, rate, ETA); ``event`` names the JSON progress events."""
    if not out.interactive:
        yield ExportProgress(out, None, event)
        return
    with message_progress(out.err) as rich:
        yield ExportProgress(out, rich, event)
