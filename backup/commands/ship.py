"""``mail-backup ship``: a new snapshot of the export's complete accounts in every (or each named) target."""

from __future__ import annotations

import sys

import click

from backup.actions.ship import ship
from backup.cli import Ctx, pass_ctx
from backup.output import Output


@click.command("ship")
@click.option("--target", "targets", multiple=True, metavar="NAME", help="Ship only to this target (repeatable)")
@click.option("--dry-run", is_flag=True, help="Show what would be shipped where; contact no target")
@click.option("--json", "as_json", is_flag=True, help="JSON-lines events on stdout; the summary is the last line")
@pass_ctx
def command(ctx: Ctx, targets: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Store one new snapshot of every complete account export in each target.

    Targets are independent: one that is down does not stop the others. Exit codes: 0 ok, 1 config error,
    2 a target cannot be reached or rejected the credentials/password, 4 some targets or accounts failed
    (named on stderr), 7 a local repository's disk is full.
    """
    out = Output(as_json)
    report = ship(ctx.cfg, out, names=list(targets) or None, dry_run=dry_run)
    out.result(report.to_json(), human=report.human())
    if report.exit_code:
        click.echo(f"mail-backup: {report.failure_message()}", err=True)
        sys.exit(report.exit_code)
