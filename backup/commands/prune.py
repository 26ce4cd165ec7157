"""``mail-backup prune``: apply each target's keep policy and reclaim space."""

from __future__ import annotations

import sys

import click

from backup.actions.prune import prune
from backup.cli import Ctx, pass_ctx
from backup.output import Output


@click.command("prune")
@click.option("--target", "targets", multiple=True, metavar="NAME", help="Prune only this target (repeatable)")
@click.option("--dry-run", is_flag=True, help="Show which snapshots the policy would remove; remove nothing")
@click.option("--json", "as_json", is_flag=True, help="JSON output")
@pass_ctx
def command(ctx: Ctx, targets: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Remove snapshots the target's ``keep`` policy no longer wants, then the data nothing uses any more.

    Locked objects (S3 Object Lock / B2 file lock) stay until their lock expires. Exit codes: 0 ok, 1 config
    error, 2 a target cannot be reached, 4 some targets failed.
    """
    out = Output(as_json)
    report = prune(ctx.cfg, out, names=list(targets) or None, dry_run=dry_run)
    out.result(report.to_json(), human=report.human())
    if report.exit_code:
        click.echo(f"mail-backup: {report.failure_message()}", err=True)
        sys.exit(report.exit_code)
