"""``mail-backup snapshots``: the snapshots of every (or one) target, optionally of one account."""

from __future__ import annotations

import sys

import click

from backup.actions.ship import combined_exit, exit_code_for
from backup.cli import Ctx, pass_ctx
from backup.output import Output, text_table
from backup.targets.base import Snapshot, TargetError
from backup.targets.registry import open_targets


@click.command("snapshots")
@click.option("--target", "target", metavar="NAME", help="Only this target")
@click.option("--account", metavar="NAME", help="Only snapshots holding this account")
@click.option("--json", "as_json", is_flag=True, help="A JSON array: id, short_id, time (RFC 3339), target, accounts, host")
@pass_ctx
def command(ctx: Ctx, target: str | None, account: str | None, as_json: bool) -> None:
    """List snapshots, oldest first. Exit codes: 0 ok, 1 config error, 2 a target cannot be reached,
    3 no snapshot holds the account, 4 some targets could not be listed."""
    out = Output(as_json)
    targets = open_targets(ctx.cfg, [target] if target else None)
    snaps: list[Snapshot] = []
    codes, errors = [], []
    for t in targets:
        try:
            listed = t.snapshots()
        except (TargetError, OSError) as exc:
            codes.append(exit_code_for(exc))
            errors.append(f"target {t.name}: {exc}")
            out.warn(f"target {t.name}: {exc}")
            continue
        codes.append(0)
        snaps += [s for s in listed if account is None or account in s.accounts]
    snaps.sort(key=lambda s: (s.time, s.target))
    out.result([s.to_json() for s in snaps], human=_table(snaps, account))
    code = combined_exit(codes, len(codes))
    if code:
        click.echo(f"mail-backup: {'; '.join(errors)}", err=True)
        sys.exit(code)
    if account is not None and not snaps:
        click.echo(f"mail-backup: no snapshot holds account {account!r}", err=True)
        sys.exit(3)


def _table(snaps: list[Snapshot], account: str | None) -> str:
    if not snaps:
        return "no snapshots"
    rows = [("TARGET", "ID", "TIME", "HOST", "ACCOUNTS")]
    for s in snaps:
        names = ", ".join(s.accounts) if len(s.accounts) <= 4 else f"{len(s.accounts)} accounts"
        rows.append((s.target, s.short_id or s.id[:8], s.time.astimezone().strftime("%Y-%m-%d %H:%M:%S %z"), s.host, names))
    return "\n".join(text_table(rows))
