"""How mail-backup reports: human lines (and rich progress bars on a TTY) or JSON lines with ``--json``.

With ``--json`` every event is one JSON object per line on stdout (``{"event": "...", ...}``) and the
final summary is the last line; human messages and progress go to stderr so scripts can parse stdout.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text


class Output:
    def __init__(self, as_json: bool = False, quiet: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)  # one message = one line in logs
        self.interactive = self.err.is_terminal and not as_json and not quiet

    def event(self, event: str, **fields: Any) -> None:
        """A machine-readable event (printed only with --json)."""
        if self.as_json:
            sys.stdout.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=str) + "\n")
            sys.stdout.flush()

    def info(self, message: str) -> None:
        if not self.quiet and not self.as_json:
            self.err.print(message, markup=False)

    def warn(self, message: str) -> None:
        if not self.as_json:
            self.err.print(f"warning: {message}", markup=False, style="yellow")
        self.event("warning", message=message)

    def result(self, data: Any, human: str | None = None) -> None:
        """The command's final result: JSON on stdout with --json, else the human text on stdout."""
        if self.as_json:
            sys.stdout.write(json.dumps(data, default=str, indent=None) + "\n")
        elif human is not None:
            sys.stdout.write(human.rstrip("\n") + "\n")
        sys.stdout.flush()

    @contextmanager
    def progress(self) -> Iterator[ProgressBoard]:
        if not self.interactive:
            yield ProgressBoard(None)
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[bytes]}"),
                   TransferSpeedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.err, transient=False) as progress:
            yield ProgressBoard(progress)


class ProgressBoard:
    """Progress bars per task (an account, a target); a no-op when not on a TTY."""

    def __init__(self, progress: Progress | None) -> None:
        self._p = progress

    def add(self, description: str, total: int | None) -> TaskID | None:
        return self._p.add_task(description, total=total, bytes="") if self._p else None

    def update(self, task: TaskID | None, *, advance: int = 0, total: int | None = None, nbytes: int | None = None) -> None:
        if self._p is None or task is None:
            return
        fields: dict[str, Any] = {}
        if nbytes is not None:
            fields["bytes"] = human_bytes(nbytes)
        self._p.update(task, advance=advance, total=total, **fields)


def human_bytes(n: int) -> str:
    """``1234567`` → ``1.2 MB`` (decimal units, as restic and the progress bars print them)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def text_table(rows: Sequence[Sequence[str]], *, right: Sequence[int] = (), indent: str = "") -> list[str]:
    """Align ``rows`` (the first is the header) in columns measured in terminal cells, so CJK and emoji line up;
    column numbers in ``right`` are right-aligned."""
    widths = [max(cell_len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def pad(n: int, cell: str) -> str:
        gap = " " * (widths[n] - cell_len(cell))
        return gap + cell if n in right else cell + gap

    return [(indent + "  ".join(pad(n, c) for n, c in enumerate(row))).rstrip() for row in rows]


class MessagesColumn(ProgressColumn):
    """``done/total msgs`` from a task's ``msgs`` and ``msgs_total`` fields."""

    def render(self, task: Task) -> Text:
        total = task.fields.get("msgs_total")
        done = task.fields.get("msgs", 0)
        return Text(f"{done}/{total} msgs" if total is not None else f"{done} msgs", style="progress.download")


def message_progress(console: Console) -> Progress:
    """Bars of messages and bytes with rate and ETA (export and restore); tasks carry ``msgs``/``msgs_total``."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MessagesColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)
