"""A process-wide stop flag: SIGTERM (and a first Ctrl-C) ask long actions to stop at their next safe point.

Long actions call :func:`check` where stopping leaves everything consistent — before the next account of an
export, inside an account's download loop (the unfinished run is abandoned; blobs already downloaded stay for
the rerun), before the next target of a ship or a drill. :func:`check` raises :class:`Stopped`, which unwinds
through the action's own cleanup; whoever runs the job records a ``failed`` result with the detail "stopped".

Without :func:`install` nothing changes: :func:`check` is a no-op and signals keep their default meaning.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from .errors import EXIT_PARTIAL, BackupError

log = logging.getLogger(__name__)

_flag = threading.Event()
_reason = ""
_listeners: list[Callable[[], None]] = []
_installed = False


class Stopped(BackupError):
    """The job stopped at a safe point because a stop was requested; a rerun resumes (exit 4)."""

    exit_code = EXIT_PARTIAL


def request(reason: str = "stop requested") -> None:
    """Ask every long action of this process to stop at its next safe point."""
    global _reason
    if not _flag.is_set():
        _reason = reason
        _flag.set()
        for listener in list(_listeners):
            listener()


def requested() -> bool:
    return _flag.is_set()


def reason() -> str:
    return _reason if _flag.is_set() else ""


def check() -> None:
    """Raise :class:`Stopped` if a stop was requested (call only where stopping is safe)."""
    if _flag.is_set():
        raise Stopped(f"stopped at a safe point ({_reason})")


def sleep(seconds: float) -> bool:
    """Sleep up to ``seconds``; return True at once when a stop is requested."""
    return _flag.wait(max(0.0, seconds))


def on_request(listener: Callable[[], None]) -> None:
    """Call ``listener`` (from the signal handler's thread) when a stop is requested."""
    _listeners.append(listener)


def reset() -> None:
    """Clear the flag and listeners (a fresh start, e.g. between tests in one process)."""
    global _reason
    _flag.clear()
    _reason = ""
    _listeners.clear()


@contextmanager
def handling(*, interactive_hint: Callable[[str], None] | None = None) -> Iterator[None]:
    """Within the block, SIGTERM/SIGINT request a stop (when called from the main thread and not yet installed);
    the previous handlers come back afterwards."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    install(interactive_hint=interactive_hint)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        _installed = False


def install(*, interactive_hint: Callable[[str], None] | None = None) -> None:
    """SIGTERM and SIGHUP request a stop; the first SIGINT too, a second one interrupts at once.

    Call from the main thread. ``interactive_hint`` is told what happens (e.g. printed on a terminal).
    """

    def on_term(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not _flag.is_set():
            log.warning("%s received: stopping at the next safe point", name)
            if interactive_hint:
                interactive_hint(f"{name}: stopping at the next safe point")
        request(f"{name}")

    def on_int(signum: int, frame: FrameType | None) -> None:
        if _flag.is_set():
            signal.default_int_handler(signum, frame)
        if interactive_hint:
            interactive_hint("stopping at the next safe point (Ctrl-C again to abort at once)")
        request("SIGINT")

    global _installed
    _installed = True
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    signal.signal(signal.SIGINT, on_int)


__all__ = ["Stopped", "check", "handling", "install", "on_request", "request", "requested", "reset", "sleep"]
