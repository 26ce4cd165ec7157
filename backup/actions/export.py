"""``mail-backup export``: every selected account of the server into the export directory.

:func:`run_export` is what ``export`` and ``run`` call. It lists the accounts (all configured ones, or those
named), exports them one after the other (blob downloads within an account are concurrent), records each
account's result in the state directory (job ``export``) and returns an :class:`ExportRunResult`.

Problems before any account is touched raise a :class:`~backup.errors.BackupError` with the exit code:
the accounts cannot be listed (2), a named account is unknown (3), ``[export] dir`` is not an export
directory (1) or cannot be created (7). Per-account problems end up in the result: an account that cannot
be reached or authenticated (2 when every account failed so), a server answer that is not JMAP, messages that
could not be fetched (4, recorded in the manifest's ``errors``), a full disk or missing permissions (7; the run
stops, every previous export stays intact).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup import stopping
from backup.errors import EXIT_IO, EXIT_OK, EXIT_PARTIAL, ConnectFailure, LocalIOError, UnknownObject, UsageError
from backup.exportdir import ExportDir, LayoutError
from backup.exportdir.layout import MANIFEST
from backup.output import Output, human_bytes, text_table
from backup.state import JobResult, StateDir
from mailsrv.client import AuthError, ConnectError, UnknownAccount, open_profile
from mailsrv.client.management import ManagedAccount
from mailsrv.client.profiles import Profile
from mailsrv.config import Config

from .export_account import AccountExporter, AccountOutcome
from .export_progress import export_progress


@dataclass
class ExportRunResult:
    """The outcome of one export run.

    ``accounts`` maps account names to their job results (as written to the state directory); ``account_dirs``
    are the directories of the selected accounts that hold a complete export (committed by this run or an
    earlier one), i.e. what a target may ship; ``committed`` names the accounts this run committed.
    """

    exit_code: int
    accounts: dict[str, JobResult]
    export_root: Path
    account_dirs: list[Path] = field(default_factory=list)
    committed: list[str] = field(default_factory=list)
    dry_run: bool = False
    outcomes: dict[str, AccountOutcome] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        items = []
        for name, o in self.outcomes.items():
            item: dict[str, Any] = {"account": name, "status": o.status, "mode": o.mode, "messages": o.messages,
                                    "bytes": o.bytes, "fetched_messages": o.fetched_messages, "fetched_bytes": o.fetched_bytes,
                                    "errors": len(o.errors), "duration": round(o.duration, 3), "detail": o.detail}
            if o.plan is not None:
                item["plan"] = o.plan
            if o.account_dir is not None:
                item["dir"] = str(o.account_dir)
            items.append(item)
        return {"event": "export.summary", "exit_code": self.exit_code, "dry_run": self.dry_run,
                "export_dir": str(self.export_root), "accounts": items}


def select_accounts(profile: Profile, names: list[str] | None) -> list[ManagedAccount]:
    """The configured accounts, or the named ones (by name or address; all unknown ones named at once)."""
    try:
        listed = profile.list_accounts()
    except (ConnectError, AuthError) as exc:
        raise ConnectFailure(f"cannot list the accounts: {exc}") from None
    if not names:
        return listed
    chosen: dict[str, ManagedAccount] = {}
    unknown: list[str] = []
    for name in dict.fromkeys(names):
        try:
            acct = profile.account(name)
        except UnknownAccount:
            unknown.append(name)
            continue
        chosen.setdefault(acct.name, acct)
    if unknown:
        raise UnknownObject(f"unknown account: {', '.join(repr(n) for n in unknown)} "
                            "(not on the server, or not selected by [accounts] include/exclude)")
    return list(chosen.values())


def prepare_export_dir(cfg: Config) -> ExportDir:
    export_dir = ExportDir(cfg.export.dir)
    try:
        export_dir.ensure()
    except LayoutError as exc:
        raise UsageError(f"export.dir: {exc}") from None
    except OSError as exc:
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise LocalIOError(f"export.dir {cfg.export.dir}: {reason}") from None
    return export_dir


def run_export(cfg: Config, accounts: list[str] | None, out: Output, *, dry_run: bool = False) -> ExportRunResult:
    """Export ``accounts`` (``None``: every configured account) into ``[export] dir``; see the module docstring."""
    export_dir = ExportDir(cfg.export.dir) if dry_run else prepare_export_dir(cfg)  # local problems first
    profile = open_profile(cfg)
    try:
        selected = select_accounts(profile, accounts)
        return _run(cfg, profile, export_dir, selected, out, dry_run)
    finally:
        profile.close()


def _run(cfg: Config, profile: Profile, export_dir: ExportDir, selected: list[ManagedAccount], out: Output,
         dry_run: bool) -> ExportRunResult:
    state = StateDir(cfg.state.dir)
    result = ExportRunResult(EXIT_OK, {}, export_dir.root, dry_run=dry_run)
    if not selected:
        out.warn("no accounts selected: the server lists none, or [accounts] include/exclude leaves none")
    with export_progress(out) as board:
        exporter = AccountExporter(cfg, profile, export_dir, out, board, dry_run=dry_run)
        for account in selected:
            stopping.check()  # a stop request ends the run between accounts; every committed export stays
            outcome = exporter.run(account)
            result.outcomes[account.name] = outcome
            _report(out, outcome, dry_run)
            job = _job_result(outcome)
            result.accounts[account.name] = job
            if not dry_run:
                try:
                    state.write(job)
                except OSError as exc:
                    out.warn(f"{account.name}: cannot write the result to the state directory {cfg.state.dir}: "
                             f"{exc.strerror or exc}")
                    if exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS):
                        outcome.fatal, outcome.exit_code = True, EXIT_IO
            if outcome.status != "failed" and not dry_run:
                result.committed.append(account.name)
            if outcome.stopped:
                raise stopping.Stopped(f"export stopped during account {account.name!r} ({stopping.reason() or 'stop requested'}); "
                                       "a rerun resumes")
            if outcome.fatal:
                skipped = [a.name for a in selected[len(result.outcomes):]]
                if skipped:
                    out.warn(f"stopping: {len(skipped)} account(s) not exported ({', '.join(skipped[:5])}"
                             f"{' …' if len(skipped) > 5 else ''})")
                break
    result.account_dirs = [d for a in selected if (d := export_dir.account(a.name)) and (d / MANIFEST).is_file()]
    result.exit_code = exit_code(list(result.outcomes.values()))
    return result


def exit_code(outcomes: list[AccountOutcome]) -> int:
    """0 when every account succeeded; 7 after a local I/O error; the shared code when every account failed
    the same way (e.g. 2: nothing reachable); otherwise 4 (partial: a rerun resumes)."""
    if any(o.fatal for o in outcomes):
        return EXIT_IO
    bad = [o for o in outcomes if o.status != "success"]
    if not bad:
        return EXIT_OK
    codes = {o.exit_code for o in bad}
    if len(bad) == len(outcomes) and all(o.status == "failed" for o in bad) and len(codes) == 1:
        return codes.pop()
    return EXIT_PARTIAL


def _job_result(o: AccountOutcome) -> JobResult:
    """The account's result for the state directory (extra fields: mode, run_id, fetched_messages/bytes)."""
    extra: dict[str, Any] = {"mode": o.mode, "run_id": o.run_id, "fetched_messages": o.fetched_messages,
                             "fetched_bytes": o.fetched_bytes}
    failed = o.status == "failed"
    return JobResult(job="export", subject=o.name, status=o.status, started=o.started, finished=o.finished,
                     messages=None if failed else o.messages, bytes=None if failed else o.bytes,
                     errors=len(o.errors) + (1 if failed else 0), detail=o.detail, **extra)


def _report(out: Output, o: AccountOutcome, dry_run: bool) -> None:
    fields: dict[str, Any] = {"account": o.name, "status": o.status, "mode": o.mode, "messages": o.messages, "bytes": o.bytes,
              "fetched_messages": o.fetched_messages, "fetched_bytes": o.fetched_bytes, "errors": len(o.errors),
              "duration": round(o.duration, 3), "detail": o.detail}
    if o.plan is not None:
        fields["plan"] = o.plan
    out.event("export.account.finished", **fields)
    if o.status == "failed":
        out.warn(f"{o.name}: export failed: {o.detail}")
        return
    if dry_run and o.plan is not None:
        p = o.plan
        out.info(f"{o.name}: {p['mode']} export would fetch {p['blobs_to_fetch']} message(s), {human_bytes(p['bytes_to_fetch'])}"
                 f" ({p['emails']} emails on the server, {p['emails_gone']} gone since the last export)")
        return
    line = (f"{o.name}: {o.mode}, {o.messages} emails ({human_bytes(o.bytes)}); fetched {o.fetched_messages} "
            f"({human_bytes(o.fetched_bytes)}) in {o.duration:.1f} s")
    if o.errors:
        out.warn(f"{line}; {o.detail}")
    else:
        out.info(line)




def summary_table(result: ExportRunResult) -> str:
    """The human per-run summary printed at the end of ``mail-backup export``."""
    head = ("account", "status", "mode", "emails", "size", "fetched", "errors", "time")
    rows = [head]
    for name, o in result.outcomes.items():
        fetched = (f"{o.plan['blobs_to_fetch']} ({human_bytes(o.plan['bytes_to_fetch'])})" if o.plan is not None
                   else f"{o.fetched_messages} ({human_bytes(o.fetched_bytes)})")
        rows.append((name, "dry-run" if result.dry_run and o.status == "success" else o.status, o.mode or "-",
                     str(o.messages), human_bytes(o.bytes), fetched, str(len(o.errors) + (o.status == "failed")), f"{o.duration:.1f}s"))
    lines = text_table(rows)
    total = len(result.outcomes)
    ok = sum(1 for o in result.outcomes.values() if o.status == "success")
    lines.append(f"{ok}/{total} account(s) exported completely" + (" (dry run, nothing written)" if result.dry_run else ""))
    return "\n".join(lines)
