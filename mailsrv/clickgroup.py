"""The click group every mailsidecar program is built on: usage mistakes exit 1, as documented for all three."""

from __future__ import annotations

from typing import Any

import click

EXIT_USAGE = 1


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
