"""``mail-backup restore``: an account, a mailbox, a date range or single messages, from any backup generation."""

from __future__ import annotations

import signal
from types import FrameType

import click

from backup.actions.restore import RestoreOptions, RestoreReport, run_restore
from backup.actions.restore_plan import Selection, format_mailbox_path, parse_mailbox_path, parse_objects, parse_time
from backup.cli import Ctx, pass_ctx
from backup.errors import EXIT_MISMATCH, BackupError, PartialFailure, UsageError
from backup.output import Output, text_table
from mailsrv.client.errors import AuthError, ConnectError, InsecureUrlError, MailClientError, UnknownAccount

EPILOG = """\b
Examples:
  mail-backup restore --account alice                                   # whole account from [export] dir
  mail-backup restore --account alice --target b2 --snapshot 2026-11-20 --mailbox 'Projects/2026'
  mail-backup restore --account alice --since 2026-11-01 --until 2026-11-15 --dry-run
  mail-backup restore --account alice --message-id '<abc@example.org>' --into-mailbox 'Restored 2026-11-20'
  mail-backup restore --account alice --into bob --objects mail

\b
Exit codes: 0 done and verified · 1 usage/config · 2 cannot connect · 3 unknown account, snapshot, mailbox
or Message-ID · 4 some messages/mailboxes/objects failed (rerun resumes) · 5 a blob in the backup is damaged or
the verification found a mismatch · 7 local I/O error.
"""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # run the cleanup (temporary snapshot files, journal) as for Ctrl-C


@click.command("restore", epilog=EPILOG)
@click.option("--account", required=True, metavar="NAME", help="Account in the backup")
@click.option("--snapshot", metavar="ID|latest|YYYY-MM-DD", help="Snapshot of --target (a date = newest at or before it)")
@click.option("--target", metavar="NAME", help="Restore from this [[targets]] entry")
@click.option("--from-dir", metavar="DIR", help="Restore from an export directory [default: [export] dir]")
@click.option("--into", metavar="NAME", help="Restore into another account [default: the same account]")
@click.option("--into-mailbox", metavar="PATH", help="Restore beneath this mailbox (created if missing; roles are not assigned)")
@click.option("--mailbox", "mailboxes", multiple=True, metavar="PATH",
              help="Only this mailbox and its children; Parent/Child, a / inside a name as \\/ (repeatable)")
@click.option("--since", metavar="DATE", help="Only mail received at or after YYYY-MM-DD (UTC) or an RFC 3339 time")
@click.option("--until", metavar="DATE", help="Only mail received at or before YYYY-MM-DD (the whole day, UTC) or an RFC 3339 time")
@click.option("--message-id", "message_ids", multiple=True, metavar="ID", help="Only the message with this Message-ID, <> optional")
@click.option("--objects", metavar="LIST",
              help="Comma-separated: mail,identities,sieve,vacation [default: all; only mail when the mail is narrowed]")
@click.option("--tmp-dir", metavar="DIR", help="Where a snapshot's files are fetched to [default: $TMPDIR or /tmp]")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing")
@click.option("--json", "as_json", is_flag=True, help="JSON events and a final summary on stdout")
@pass_ctx
def command(ctx: Ctx, account: str, snapshot: str | None, target: str | None, from_dir: str | None, into: str | None,
            into_mailbox: str | None, mailboxes: tuple[str, ...], since: str | None, until: str | None, message_ids: tuple[str, ...],
            objects: str | None, tmp_dir: str | None, dry_run: bool, as_json: bool) -> None:
    """Restore mail, identities, Sieve scripts and the vacation response of one account.

    Additive and idempotent: messages already on the server are recognised by content and only get missing
    mailboxes and keywords; running the same restore again changes nothing, and a restore that was killed
    completes when run again. Every restored message is verified at the end.
    """
    out = Output(as_json=as_json)
    selection = Selection(
        mailboxes=[parse_mailbox_path(m) for m in mailboxes],
        since=parse_time(since, end_of_day=False, option="--since") if since else None,
        until=parse_time(until, end_of_day=True, option="--until") if until else None,
        message_ids=[m for m in message_ids if m.strip()],
    )
    if selection.since and selection.until and selection.since > selection.until:
        raise UsageError(f"--since {since} is after --until {until}")
    if into_mailbox is not None:
        parse_mailbox_path(into_mailbox)
    wanted, explicit = parse_objects(objects)
    if not explicit and selection.narrowed:
        wanted = {"mail"}
    opts = RestoreOptions(account=account, from_dir=from_dir, target=target, snapshot=snapshot, into=into, into_mailbox=into_mailbox,
                          selection=selection, objects=wanted, objects_explicit=explicit, dry_run=dry_run, tmp_dir=tmp_dir)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        report = run_restore(ctx.cfg, opts, out)
    except KeyboardInterrupt:
        raise PartialFailure(f"restore of account {account!r} interrupted; run the same command again to complete it") from None
    except (AuthError, ConnectError, UnknownAccount, InsecureUrlError):
        raise  # mapped to their exit codes by the command group
    except MailClientError as exc:
        raise PartialFailure(f"restore of account {account!r} stopped: {exc}; run the same command again to resume") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    out.result(report.to_json(), render(report))
    code = report.exit_code
    if code:
        raise BackupError(_reason(report), code)


# -- human output ----------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return text_table([header, *rows], right=range(2, len(header)), indent="  ")


def render(r: RestoreReport) -> str:
    src = r.source
    where = f"{src.get('target')} snapshot {str(src.get('snapshot', ''))[:12]} ({src.get('time', '')})" if src.get("kind") == "snapshot" \
        else str(src.get("path") or src.get("dir"))
    into = r.into if r.into == r.account else f"{r.into} (from {r.account})"
    lines = [f"{'plan for' if r.dry_run else 'restored'} account {into} from {where}"]
    if r.rows:
        action = {"role": "matched by role", "path": "exists", "create": "to create", "created": "created", "failed": "FAILED",
                  "fallback": ""}
        rows = [[row.path, f"{row.dest} [{action.get(row.action, row.action)}]".replace(" []", ""), str(row.to_import),
                 str(row.present), str(row.to_add)] for row in r.rows]
        lines += _table(["mailbox", "on the server", "import", "present", "add"], rows)
    if r.dry_run:
        lines.append(f"messages: {r.selected} selected · {r.to_import} to import · {r.to_merge} to update · {r.present} already there")
    else:
        lines.append(f"messages: {r.selected} selected · {r.imported} imported · {r.merged} updated · {r.present} already there"
                     f" · {len(r.problems)} failed ({r.seconds:.1f}s)")
    if r.mailboxes:
        for t in r.mailboxes.substituted:
            lines.append(f"  mailbox {t.substitute_for!r} was refused by the server; restored as {t.name!r}")
        for t in r.mailboxes.failed:
            lines.append(f"  mailbox {format_mailbox_path(t.source_path)!r} FAILED: {t.error}")
    for p in r.problems:
        lines.append(f"  FAILED {p.describe(r.account)}")
    for kind, o in sorted(r.objects.items()):
        lines.append(f"{kind}: {o.summary()}")
    v = r.verification
    if v is not None:
        lines.append(f"verification: {'OK' if v.ok else 'MISMATCH'} — {v.checked} messages checked"
                     + (f", {v.downloads} downloaded to hash" if v.downloads else ""))
        if v.mailboxes:
            lines += _table(["mailbox", "", "expected", "found", "total"],
                            [[c.path, "", str(c.expected), str(c.found), "" if c.total is None else str(c.total)] for c in v.mailboxes])
        for item, detail in v.mismatches:
            mid = f"<{item.message_id[0]}>" if item.message_id else "(no Message-ID)"
            lines.append(f"  MISMATCH Message-ID {mid}, receivedAt {item.received_at}: {detail}")
    return "\n".join(lines)


def _reason(r: RestoreReport) -> str:
    corrupt = [p for p in r.problems if p.kind in ("corrupt", "missing-blob")]
    if corrupt:
        return f"{len(corrupt)} message(s) damaged in the backup; first: {corrupt[0].describe(r.account)}"
    if r.exit_code == EXIT_MISMATCH and r.verification is not None:
        item, detail = r.verification.mismatches[0] if r.verification.mismatches else (None, "")
        if item is not None:
            mid = f"<{item.message_id[0]}>" if item.message_id else "(no Message-ID)"
            return f"verification failed for {len(r.verification.mismatches)} message(s); first: account {r.account!r}, " \
                   f"Message-ID {mid}, receivedAt {item.received_at}: {detail}"
        short = [c for c in r.verification.mailboxes if c.found < c.expected]
        return f"verification failed: mailbox {short[0].path!r} has {short[0].found} of {short[0].expected} restored messages"
    if r.mailboxes and r.mailboxes.failed:
        t = r.mailboxes.failed[0]
        more = f" (and {len(r.mailboxes.failed) - 1} more)" if len(r.mailboxes.failed) > 1 else ""
        lost = f"; {len(r.problems)} message(s) not restored" if r.problems else ""
        return f"mailbox {format_mailbox_path(t.source_path)!r}{more} could not be created: {t.error}{lost}"
    if r.problems:
        return f"{len(r.problems)} message(s) not restored; first: {r.problems[0].describe(r.account)}; rerun to retry"
    bad = [f"{k}: {o.status}" + (f" ({o.detail or '; '.join(o.failed)})" if o.detail or o.failed else "")
           for k, o in sorted(r.objects.items()) if o.bad]
    return f"not everything asked for was restored: {'; '.join(bad)}"


__all__ = ["command", "render"]
