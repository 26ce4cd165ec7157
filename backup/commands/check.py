"""``mail-backup check``: verify the integrity of each target."""

from __future__ import annotations

import sys

import click

from backup.actions.check import check
from backup.cli import Ctx, pass_ctx
from backup.output import Output
from backup.schedule import check_summary, guarded


@click.command("check")
@click.option("--target", "targets", multiple=True, metavar="NAME", help="Check only this target (repeatable)")
@click.option("--read-data-subset", "percent", type=click.FloatRange(0, 100, min_open=True), metavar="PERCENT",
              help="Also read back and verify this share of the stored data (e.g. 5)")
@click.option("--json", "as_json", is_flag=True, help="JSON output")
@pass_ctx
def command(ctx: Ctx, targets: tuple[str, ...], percent: float | None, as_json: bool) -> None:
    """Check every snapshot's structure and that all the data it needs is there (optionally reading some of it).

    Exit codes: 0 ok, 1 config error, 2 a target cannot be reached, 4 some targets could not be checked,
    5 a target is damaged (details on stderr).
    """
    out = Output(as_json)
    report = guarded(ctx.cfg, "check", out, lambda: check(ctx.cfg, out, names=list(targets) or None, read_data_percent=percent),
                     check_summary)  # the job lock shared with the scheduler, and the check hooks
    out.result(report.to_json(), human=report.human())
    if report.exit_code:
        click.echo(f"mail-backup: {report.failure_message()}", err=True)
        sys.exit(report.exit_code)
