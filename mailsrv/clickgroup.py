"""The click pieces every mailsidecar program is built on: usage mistakes exit 1, and user mistakes become one
clear line with the documented exit code, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click

from .config import ConfigError

EXIT_USAGE, EXIT_IO = 1, 7
F = TypeVar("F", bound=Callable[..., Any])


class UsageExit1Group(click.Group):
    """A click group whose usage mistakes (unknown command or option, missing argument) exit 1; click's default
    is 2, which mailsidecar reserves for "cannot connect"."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            exc.exit_code = EXIT_USAGE  # type: ignore[misc]  # a ClassVar since click 8.5; per instance is intended
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.exit_code = EXIT_USAGE  # type: ignore[misc]  # a ClassVar since click 8.5; per instance is intended
            raise


def failer(program: str) -> Callable[[str, int], NoReturn]:
    """``fail(message, code)`` for ``program``: print ``program: message`` on stderr and exit with ``code``."""

    def fail(message: str, code: int) -> NoReturn:
        click.echo(f"{program}: {message}", err=True)
        sys.exit(code)

    return fail


def error_handler(fail: Callable[[str, int], NoReturn]) -> Callable[[F], F]:
    """A decorator for commands: config mistakes exit 1, local I/O errors (port in use, unreadable file) exit 7."""

    def handle_errors(fn: F) -> F:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ConfigError as exc:
                fail(str(exc), EXIT_USAGE)
            except OSError as exc:
                fail(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc), EXIT_IO)

        return wrapper  # type: ignore[return-value]

    return handle_errors
