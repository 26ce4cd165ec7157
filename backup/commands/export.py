"""``mail-backup export``: every configured account (or the ones named) into the export directory."""

from __future__ import annotations

import sys

import click

from backup import stopping
from backup.actions.export import run_export, summary_table
from backup.cli import Ctx, pass_ctx
from backup.output import Output


@click.command("export")
@click.option("--account", "accounts", multiple=True, metavar="NAME", help="Export only this account (repeatable; name or address)")
@click.option("--dry-run", is_flag=True, help="Show what would be fetched per account; write nothing")
@click.option("--json", "as_json", is_flag=True, help="JSON-lines events on stdout; the summary is the last line")
@pass_ctx
def command(ctx: Ctx, accounts: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Export mail, mailboxes, identities, Sieve scripts, vacation and quota of every account.

    The first run is a full export; later runs fetch only what changed (JMAP /changes) and mirror the server
    now. Exit codes: 0 ok, 2 cannot connect/authenticate, 3 unknown account, 4 some accounts or messages
    failed (a rerun resumes), 7 disk full or permissions (the previous export stays intact).
    """
    out = Output(as_json)
    with stopping.handling(interactive_hint=out.info if out.interactive else None):  # SIGTERM: stop at a safe point
        result = run_export(ctx.cfg, list(accounts) or None, out, dry_run=dry_run)
    out.result(result.to_json(), human=summary_table(result))
    if result.exit_code:
        sys.exit(result.exit_code)
