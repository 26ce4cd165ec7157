"""``mail-backup maildir``: a Maildir++ copy of one account from the export (or a snapshot); no server needed."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from backup.actions.maildir import write_maildir
from backup.actions.restore_source import open_dir_source, open_snapshot_source
from backup.cli import Ctx, pass_ctx
from backup.errors import EXIT_PARTIAL, UsageError
from backup.output import Output


@click.command("maildir")
@click.option("--account", required=True, metavar="NAME", help="The account (name or address)")
@click.argument("dest", type=click.Path(path_type=Path), metavar="DEST")
@click.option("--snapshot", metavar="ID|latest|YYYY-MM-DD", help="Read a snapshot of a target instead of the local export")
@click.option("--target", metavar="NAME", help="The target holding --snapshot [default: the only configured target]")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON")
@pass_ctx
def command(ctx: Ctx, account: str, dest: Path, snapshot: str | None, target: str | None, as_json: bool) -> None:
    """Write ACCOUNT's mail as a Maildir++ tree in DEST (empty or new): one Maildir per mailbox, flags from
    keywords, file times = receivedAt. Any mail client or Dovecot can open it.

    Exit codes: 0 ok, 1 DEST not empty, 3 unknown account or snapshot, 4 messages missing from the export,
    7 cannot write DEST.
    """
    cfg = ctx.cfg
    out = Output(as_json)
    if snapshot is None and target is not None:
        snapshot = "latest"
    if snapshot is not None:
        if target is None:
            names = [t.name for t in cfg.targets]
            if len(names) != 1:
                raise UsageError("--snapshot needs a target: none is configured" if not names
                                 else f"--snapshot needs --target (configured: {', '.join(names)})")
            target = names[0]
        source = open_snapshot_source(cfg, target, snapshot, account)
    else:
        source = open_dir_source(cfg.export.dir, account)
    with source:
        result = write_maildir(source, dest, out)
    for note in result.notes:
        out.warn(note)
    for problem in result.missing:
        out.warn(f"{result.account}: {problem}")
    human = (f"{result.account}: {result.messages} messages ({result.files} files, {result.bytes / 1e6:.1f} MB) in "
             f"{result.folders} folders → {dest}")
    out.result(result.to_json(), human=human)
    if result.missing:
        sys.exit(EXIT_PARTIAL)
