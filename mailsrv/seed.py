"""``mailsrv seed`` (placeholder until its owner fills it)."""

from __future__ import annotations

import click


@click.command("seed")
def seed_command() -> None:
    """Fill accounts with realistic mail (not yet)."""
    raise click.ClickException("not yet")
