"""``mail-backup schedule``: the daemon that runs the nightly job, the weekly check and the restore drill."""

from __future__ import annotations

import sys

import click

from backup.cli import Ctx, pass_ctx
from backup.output import Output


@click.command("schedule")
@click.option("--dry-run", is_flag=True, help="Check [schedule] and print the next starts of each job; run nothing")
@click.option("--json", "as_json", is_flag=True, help="JSON-lines events on stdout")
@pass_ctx
def command(ctx: Ctx, dry_run: bool, as_json: bool) -> None:
    """Run the nightly job (`run`), the repository check (`check`) and the restore drill (`drill`) on the
    cron schedule of [schedule], until SIGTERM.

    Starts are remembered in the state dir: a start missed while the machine was off runs once when the
    daemon starts again. Jobs never overlap, also not with a `mail-backup run` typed by hand (they wait for
    each other, up to [schedule] lock_wait). SIGTERM stops the running job at a safe point and exits 0.
    Exit codes: 0 stopped cleanly · 1 config error (e.g. an invalid cron expression, named) or another
    scheduler already running · 7 the state dir is not writable.
    """
    from backup.schedule import serve

    out = Output(as_json)
    out.err.soft_wrap = True  # one journal line per message
    code = serve(ctx.cfg, out, dry_run=dry_run)
    if code:
        sys.exit(code)
