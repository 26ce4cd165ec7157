"""``mail-backup verify``: re-hash the local export; optionally compare a sample with the server."""

from __future__ import annotations

import sys

import click

from backup.actions.verify import run_verify, summary
from backup.cli import Ctx, pass_ctx
from backup.errors import UsageError
from backup.output import Output


@click.command("verify")
@click.option("--account", "accounts", multiple=True, metavar="NAME", help="Verify only this account (repeatable)")
@click.option("--against-server", is_flag=True, help="Also compare a sample of messages and the mailbox counts with the server")
@click.option("--sample", "sample", type=click.FloatRange(0, 100), default=None, metavar="PERCENT",
              help="Share of messages compared with the server [default: 1, at least one message]")
@click.option("--json", "as_json", is_flag=True, help="JSON-lines events; the summary is the last line")
@pass_ctx
def command(ctx: Ctx, accounts: tuple[str, ...], against_server: bool, sample: float | None, as_json: bool) -> None:
    """Check that every exported message and metadata file still has the sha256 its manifest records.

    With --against-server, a random sample of messages is compared with the server (Blob/get digest:sha-256
    where the server offers it, else by downloading) and so are the per-mailbox email counts. Exit codes:
    0 ok, 2 server unreachable, 3 no export of that account, 5 mismatch (the account and message are named).
    """
    if sample is not None and not against_server:
        raise UsageError("--sample needs --against-server")
    out = Output(as_json)
    result = run_verify(ctx.cfg, list(accounts) or None, out, against_server=against_server,
                        sample=1.0 if sample is None else sample)
    out.result(result.to_json(), human=summary(result))
    if result.exit_code:
        sys.exit(result.exit_code)
