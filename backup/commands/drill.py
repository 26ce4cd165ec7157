"""``mail-backup drill``: restore a random sample of the newest snapshot of each target and verify it."""

from __future__ import annotations

import sys

import click

from backup.cli import Ctx, pass_ctx
from backup.output import Output


@click.command("drill")
@click.option("--target", "targets", multiple=True, metavar="NAME", help="Drill only this target (repeatable)")
@click.option("--account", "accounts", multiple=True, metavar="NAME", help="Drill this account instead of a random sample (repeatable)")
@click.option("--accounts", "n_accounts", type=click.IntRange(min=1), metavar="M",
              help="Accounts sampled per target [default: [schedule] drill_accounts]")
@click.option("--messages", "n_messages", type=click.IntRange(min=0), metavar="N",
              help="Messages sampled per account [default: [schedule] drill_messages]")
@click.option("--seed", type=int, metavar="S", help="Seed of the random sample (repeat a drill exactly)")
@click.option("--json", "as_json", is_flag=True, help="JSON-lines events on stdout; the summary is the last line")
@pass_ctx
def command(ctx: Ctx, targets: tuple[str, ...], accounts: tuple[str, ...], n_accounts: int | None, n_messages: int | None,
            seed: int | None, as_json: bool) -> None:
    """Prove the backups restore: from the newest snapshot of each target, fetch the manifest, the metadata
    and a random sample of messages of a few accounts into a scratch directory and compare every sha256 with
    the manifest. The result is recorded for mail-exporter (job "drill").

    Exit codes: 0 every sample matches · 1 no target configured · 2 a target cannot be reached · 3 a target
    has no snapshot · 4 stopped or waited too long for another job · 5 a mismatch (target, account and
    message are named) · 7 the scratch directory is not writable.
    """
    from backup import stopping
    from backup.actions.drill import DrillResult, run_drill
    from backup.schedule import run_job

    cfg = ctx.cfg
    out = Output(as_json)
    out.err.soft_wrap = True  # one log line per message, also in the journal
    holder: list[DrillResult] = []

    def body() -> tuple[int, str]:
        result = run_drill(cfg, out, targets=targets or None, accounts=accounts or None, sample_accounts=n_accounts,
                           sample_messages=n_messages, seed=seed)
        holder.append(result)
        return result.exit_code, "; ".join(f"{t.target}: {t.status}" + (f": {t.detail}" if t.status != "success" else "")
                                           for t in result.targets)

    with stopping.handling(interactive_hint=out.info if out.interactive else None):
        outcome = run_job(cfg, "drill", out, body, reraise=True)
    if holder:
        out.result(holder[0].to_json(), human=holder[0].human())
    if outcome.exit_code:
        click.echo(f"mail-backup: {holder[0].failure_line() if holder else outcome.summary}", err=True)
        sys.exit(outcome.exit_code)
