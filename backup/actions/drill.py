"""``mail-backup drill``: prove that the newest snapshot of every target can really be restored.

For each target: take the newest snapshot, pick ``drill_accounts`` of its accounts at random and, for each,
fetch into a private scratch directory only ``manifest.json`` with the metadata directory, then
``drill_messages`` randomly chosen message blobs (two ``Target.fetch`` calls with paths). Then compare every metadata
file with the manifest's sha256 and size, and every sampled message's bytes with the sha256 and size of its
email record. Anything that cannot be fetched, parsed or does not match is a *mismatch* naming target,
account and message. The scratch directory is removed afterwards, also on failure.

Each target's result goes to the state directory (job ``drill``, subject = target; ``messages`` = sampled
messages, ``errors`` = mismatches) for mail-exporter and its alert. Exit codes: 0 all good · 1 no target
configured · 2 a target cannot be reached · 3 a target has no snapshot · 4 stopped, or targets failed in
different ways · 5 a mismatch · 7 the scratch directory is not writable or full.
"""

from __future__ import annotations

import errno
import random
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup import stopping
from backup.errors import EXIT_CONNECT, EXIT_IO, EXIT_MISMATCH, EXIT_OK, EXIT_PARTIAL, EXIT_UNKNOWN, UsageError
from backup.exportdir import EmailRecord, LayoutError, ManifestError, blob_relpath
from backup.exportdir.account import AccountReader, sha256_file
from backup.exportdir.layout import MANIFEST, META
from backup.output import Output
from backup.state import JobResult, StateDir, Status
from backup.targets.base import Snapshot, SnapshotNotFound, Target, TargetError, TargetUnavailable, resolve_snapshot
from backup.targets.registry import open_targets
from mailsrv.config import Config

MAX_LISTED = 20  # mismatches kept in the state file


@dataclass
class Mismatch:
    target: str
    account: str
    item: str  # "message <id> (Message-ID <…>)", "metadata emails: meta/…", "manifest.json"
    problem: str

    def line(self) -> str:
        return f"target {self.target}: account {self.account!r}: {self.item}: {self.problem}"

    def to_json(self) -> dict[str, str]:
        return {"target": self.target, "account": self.account, "item": self.item, "problem": self.problem}


@dataclass
class TargetDrill:
    target: str
    started: float
    status: Status = "failed"
    exit_code: int = EXIT_OK
    finished: float = 0.0
    snapshot: str | None = None
    snapshot_time: str | None = None
    accounts: list[str] = field(default_factory=list)
    messages: int = 0  # sampled messages compared
    files: int = 0  # metadata files compared
    mismatches: list[Mismatch] = field(default_factory=list)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "status": self.status, "exit_code": self.exit_code, "snapshot": self.snapshot,
                "snapshot_time": self.snapshot_time, "accounts": self.accounts, "messages": self.messages, "files": self.files,
                "mismatches": [m.to_json() for m in self.mismatches], "detail": self.detail,
                "duration": round(max(0.0, self.finished - self.started), 3)}

    def job_result(self) -> JobResult:
        failed_other = 1 if self.status == "failed" and not self.mismatches else 0
        extra: dict[str, Any] = {"snapshot": self.snapshot, "snapshot_time": self.snapshot_time, "accounts": self.accounts,
                                 "files": self.files, "mismatches": [m.to_json() for m in self.mismatches[:MAX_LISTED]]}
        return JobResult(job="drill", subject=self.target, status=self.status, started=self.started, finished=self.finished,
                         messages=self.messages, errors=len(self.mismatches) + failed_other, detail=self.detail, **extra)


@dataclass
class DrillResult:
    targets: list[TargetDrill]
    exit_code: int = EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {"event": "drill.summary", "exit_code": self.exit_code, "targets": [t.to_json() for t in self.targets]}

    def failure_line(self) -> str:
        """One line for stderr when the drill did not succeed: the first mismatch, or the first failed target."""
        mismatches = [m for t in self.targets for m in t.mismatches]
        if mismatches:
            more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
            return f"drill found {len(mismatches)} mismatch(es): {mismatches[0].line()}{more}"
        failed = [t for t in self.targets if t.status != "success"]
        return "drill failed: " + "; ".join(f"target {t.target}: {t.detail}" for t in failed) if failed else "drill failed"

    def human(self) -> str:
        lines = []
        for t in self.targets:
            snap = f"snapshot {t.snapshot[:8]} ({t.snapshot_time})" if t.snapshot and t.snapshot_time else "no snapshot"
            head = (f"{t.target}: {t.status} — {snap}, {len(t.accounts)} account(s), {t.messages} message(s) and "
                    f"{t.files} metadata file(s) compared, {len(t.mismatches)} mismatch(es)")
            lines.append(head if not t.detail or t.status == "success" else f"{head}: {t.detail}")
            lines += [f"  mismatch: {m.line()}" for m in t.mismatches[:MAX_LISTED]]
            if len(t.mismatches) > MAX_LISTED:
                lines.append(f"  … and {len(t.mismatches) - MAX_LISTED} more")
        return "\n".join(lines)


class _TargetDown(Exception):
    """The target stopped answering in the middle of the drill."""


def run_drill(cfg: Config, out: Output, *, targets: Sequence[str] | None = None, accounts: Sequence[str] | None = None,
              sample_accounts: int | None = None, sample_messages: int | None = None, seed: int | None = None,
              b2_api: Any = None) -> DrillResult:
    """Drill every configured target (or the named ones); see the module docstring."""
    if not cfg.targets:
        raise UsageError(f"no [[targets]] configured in {cfg.path or 'the config'}: the drill restores from a target "
                         "(add one, see docs/configuration.md)")
    opened = open_targets(cfg, list(targets) if targets else None, b2_api=b2_api)
    rng = random.Random(seed) if seed is not None else random.SystemRandom()
    n_accounts = sample_accounts or cfg.schedule.drill_accounts
    n_messages = cfg.schedule.drill_messages if sample_messages is None else sample_messages
    state = StateDir(cfg.state.dir)
    results: list[TargetDrill] = []
    for target in opened:
        stopping.check()
        drill = TargetDrill(target.name, time.time())
        try:
            _drill_target(cfg, target, drill, out, rng, list(accounts or []), n_accounts, n_messages)
        except stopping.Stopped:
            drill.status, drill.exit_code, drill.detail = "failed", EXIT_PARTIAL, f"stopped ({stopping.reason()})"
            _finish(state, drill, out)
            raise
        _finish(state, drill, out)
        results.append(drill)
    return DrillResult(results, overall_exit(results))


def overall_exit(results: list[TargetDrill]) -> int:
    """5 on any mismatch; else the failing targets' shared code (4 when they differ); 0 when all succeeded."""
    if any(t.mismatches for t in results):
        return EXIT_MISMATCH
    codes = {t.exit_code for t in results if t.exit_code}
    if not codes:
        return EXIT_OK
    return codes.pop() if len(codes) == 1 else EXIT_PARTIAL


def _finish(state: StateDir, drill: TargetDrill, out: Output) -> None:
    drill.finished = time.time()
    if drill.mismatches:
        drill.status, drill.exit_code = "failed", EXIT_MISMATCH
        first = drill.mismatches[0]
        drill.detail = (f"{len(drill.mismatches)} mismatch(es), e.g. account {first.account!r}: {first.item}: {first.problem}")[:500]
    elif drill.exit_code == EXIT_OK:
        drill.status = "success"
        drill.detail = drill.detail or (f"snapshot {drill.snapshot[:8] if drill.snapshot else '?'}: {drill.messages} message(s) "
                                        f"and {drill.files} metadata file(s) of {len(drill.accounts)} account(s) restored and verified")
    out.event("drill.target.finished", **drill.to_json())
    if drill.status != "success":
        out.warn(f"drill of target {drill.target} failed: {drill.detail}")
    try:
        state.write(drill.job_result())
    except OSError as exc:
        out.warn(f"{drill.target}: cannot write the drill result to the state directory {state.root}: {exc.strerror or exc}")


def _drill_target(cfg: Config, target: Target, drill: TargetDrill, out: Output, rng: random.Random, wanted: list[str],
                  n_accounts: int, n_messages: int) -> None:
    try:
        snaps = target.snapshots()
        snap = resolve_snapshot(snaps, "latest")
    except SnapshotNotFound:
        drill.exit_code, drill.detail = EXIT_UNKNOWN, "the target has no snapshot to restore (has the nightly run shipped yet?)"
        return
    except TargetUnavailable as exc:
        drill.exit_code, drill.detail = EXIT_CONNECT, str(exc)
        return
    except TargetError as exc:
        drill.exit_code, drill.detail = EXIT_PARTIAL, str(exc)
        return
    drill.snapshot, drill.snapshot_time = snap.id, snap.time.isoformat(timespec="seconds")
    chosen = _choose_accounts(snap, wanted, n_accounts, rng, drill)
    if chosen is None:
        return
    drill.accounts = chosen
    out.info(f"{target.name}: drilling snapshot {snap.short_id or snap.id[:8]} of {drill.snapshot_time}: "
             f"{len(chosen)} of {len(snap.accounts)} account(s), up to {n_messages} message(s) each")
    try:
        scratch = Path(tempfile.mkdtemp(prefix="mail-drill-", dir=cfg.schedule.drill_dir or None))
    except OSError as exc:
        drill.exit_code = EXIT_IO
        drill.detail = f"schedule.drill_dir: cannot create a scratch directory: {exc.strerror or exc}"
        return
    try:
        for i, account in enumerate(chosen):
            stopping.check()
            dest = scratch / str(i)
            try:
                _drill_account(target, snap, account, dest, drill, out, rng, n_messages)
            finally:
                shutil.rmtree(dest, ignore_errors=True)
    except _TargetDown as exc:
        drill.exit_code, drill.detail = EXIT_CONNECT, str(exc)
    except OSError as exc:
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        drill.exit_code, drill.detail = EXIT_IO, f"scratch directory {scratch}: {reason}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _choose_accounts(snap: Snapshot, wanted: list[str], n: int, rng: random.Random, drill: TargetDrill) -> list[str] | None:
    if wanted:
        missing = [a for a in wanted if a not in snap.accounts]
        if missing:
            drill.exit_code = EXIT_UNKNOWN
            drill.detail = f"account {missing[0]!r} is not in snapshot {snap.short_id or snap.id[:8]}"
            return None
        return list(dict.fromkeys(wanted))
    if not snap.accounts:
        drill.exit_code, drill.detail = EXIT_UNKNOWN, f"snapshot {snap.short_id or snap.id[:8]} holds no account"
        return None
    return sorted(rng.sample(sorted(snap.accounts), min(n, len(snap.accounts))))


def _fetch(target: Target, snap: Snapshot, account: str, dest: Path, paths: list[str]) -> Path:
    try:
        return target.fetch(snap.id, account, dest, paths=paths)
    except TargetUnavailable as exc:
        raise _TargetDown(str(exc)) from None


def _drill_account(target: Target, snap: Snapshot, account: str, dest: Path, drill: TargetDrill, out: Output,
                   rng: random.Random, n_messages: int) -> None:
    def bad(item: str, problem: str) -> None:
        drill.mismatches.append(Mismatch(target.name, account, item, " ".join(problem.split())[:300]))

    before = len(drill.mismatches)
    try:  # the manifest and the metadata directory in one fetch; if that fails, step by step to say what is wrong
        root = _fetch(target, snap, account, dest, [MANIFEST, META])
        together = True
    except TargetError:
        together = False
    try:
        if not together:
            root = _fetch(target, snap, account, dest, [MANIFEST])
        reader = AccountReader(root)
    except (TargetError, ManifestError, LayoutError) as exc:
        bad(MANIFEST, f"cannot be restored or read: {exc}")
        return
    if reader.manifest.account.name != account:
        bad(MANIFEST, f"belongs to account {reader.manifest.account.name!r}")
        return
    entries = reader.manifest.files
    try:
        if entries and not together:
            _fetch(target, snap, account, dest, sorted(e.path for e in entries.values()))
    except (TargetError, LayoutError) as exc:
        bad("metadata files", f"cannot be restored: {exc}")
        return
    for problem in reader.check_files():
        bad(f"metadata {problem.split(':', 1)[0]}", problem.split(": ", 1)[1] if ": " in problem else problem)
    drill.files += len(entries)
    if len(drill.mismatches) > before:
        return
    try:
        sample = _sample(reader.emails(), n_messages, rng)
    except (ManifestError, LayoutError, OSError) as exc:
        bad("metadata emails", f"unreadable: {exc}")
        return
    by_path: dict[str, list[EmailRecord]] = {}
    for rec in sample:
        by_path.setdefault(blob_relpath(rec.sha256), []).append(rec)
    unrestorable = _fetch_blobs(target, snap, account, dest, root, sorted(by_path))
    for path, recs in by_path.items():
        for rec in recs:
            drill.messages += 1
            item = _message(rec)
            if path in unrestorable:
                bad(item, f"cannot be restored: {unrestorable[path]}")
                continue
            try:
                digest, size = sha256_file(root / path)
            except OSError as exc:
                bad(item, f"restored blob unreadable: {exc.strerror or exc}")
                continue
            if digest != rec.sha256:
                bad(item, f"sha256 of the restored message is {digest[:16]}…, the manifest records {rec.sha256[:16]}…")
            elif size != rec.size:
                bad(item, f"size of the restored message is {size}, the manifest records {rec.size}")
    found = len(drill.mismatches) - before
    out.event("drill.account.finished", target=target.name, account=account, messages=len(sample), files=len(entries), mismatches=found)
    (out.warn if found else out.info)(f"{target.name}: {account}: {len(sample)} message(s) and {len(entries)} metadata file(s) "
                                      + (f"— {found} mismatch(es)" if found else "match the manifest"))


def _fetch_blobs(target: Target, snap: Snapshot, account: str, dest: Path, root: Path, paths: list[str]) -> dict[str, str]:
    """Fetch the sampled blobs; when the batch fails, fetch them one by one to name each one that cannot be restored."""
    if not paths:
        return {}
    try:
        _fetch(target, snap, account, dest, paths)
        return {}
    except TargetError:
        pass
    failed: dict[str, str] = {}
    for p in paths:
        if (root / p).is_file():
            continue
        try:
            _fetch(target, snap, account, dest, [p])
        except TargetError as exc:
            failed[p] = str(exc)
    return failed


def _sample(records: Iterable[EmailRecord], n: int, rng: random.Random) -> list[EmailRecord]:
    """``n`` records chosen uniformly at random in one pass (reservoir sampling: memory stays O(n))."""
    chosen: list[EmailRecord] = []
    if n <= 0:
        return chosen
    for i, rec in enumerate(records):
        if i < n:
            chosen.append(rec)
        else:
            j = rng.randint(0, i)
            if j < n:
                chosen[j] = rec
    return chosen


def _message(rec: EmailRecord) -> str:
    mid = f" (Message-ID <{rec.message_id[0]}>)" if rec.message_id else ""
    return f"message {rec.id}{mid}"


__all__ = ["DrillResult", "Mismatch", "TargetDrill", "overall_exit", "run_drill"]
