"""``mail-backup run``: export → ship to every target → prune by policy (the nightly job)."""

from __future__ import annotations

import sys

import click

from backup.actions.run import nightly
from backup.cli import Ctx, pass_ctx
from backup.output import Output


@click.command("run")
@click.option("--dry-run", is_flag=True, help="Plan the export, the ship and the prune; change nothing")
@click.option("--json", "as_json", is_flag=True, help="JSON-lines events on stdout; the summary is the last line")
@pass_ctx
def command(ctx: Ctx, dry_run: bool, as_json: bool) -> None:
    """The whole nightly job: export every account, ship to every target, prune targets with a keep policy.

    A target that is down does not stop the others; an export that fails for some accounts still ships
    the complete accounts. Exit codes: 0 ok, 1 config error, 2 nothing reachable, 4 something failed
    (named on stderr; a rerun resumes), 7 local disk full.
    """
    out = Output(as_json)
    report = nightly(ctx.cfg, out, dry_run=dry_run)
    out.result(report.to_json(), human=report.human())
    if report.exit_code:
        problems = report.errors + ([report.ship.failure_message()] if report.ship and report.ship.exit_code else [])
        if report.export_exit:
            problems.insert(0, f"export ended with exit {report.export_exit}")
        click.echo(f"mail-backup: run incomplete — {'; '.join(problems) or 'see above'}", err=True)
        sys.exit(report.exit_code)
