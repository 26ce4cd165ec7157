"""``mail-backup ship``: one new snapshot of the export's complete accounts in every (or each named) target.

Targets are independent: one that is down or full does not stop the others; the run ends with exit 4
naming it (or that target's own code when it was the only one). Each target's result — status, duration,
bytes added, snapshot id, snapshot count — goes to the state directory (job ``ship``, subject = target).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from backup import stopping
from backup.errors import EXIT_CONNECT, EXIT_IO, EXIT_OK, EXIT_PARTIAL, EXIT_UNKNOWN, UsageError
from backup.exportdir import ExportDir, LayoutError, ManifestError, load_manifest
from backup.output import Output, ProgressBoard, human_bytes
from backup.state import StateDir, result
from backup.targets.base import SnapshotNotFound, Target, TargetError, TargetIOError, TargetUnavailable
from backup.targets.registry import host_of, open_targets
from mailsrv.config import Config

Status = Literal["success", "partial", "failed"]


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code a target failure maps to."""
    if isinstance(exc, TargetUnavailable):
        return EXIT_CONNECT
    if isinstance(exc, SnapshotNotFound):
        return EXIT_UNKNOWN
    if isinstance(exc, TargetIOError) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS)):
        return EXIT_IO
    return EXIT_PARTIAL


def combined_exit(codes: Sequence[int], total: int) -> int:
    """0 if nothing failed; the shared code when every item failed the same way; else 4."""
    bad = [c for c in codes if c]
    if not bad:
        return EXIT_OK
    if len(bad) == total and len(set(bad)) == 1:
        return bad[0]
    return EXIT_PARTIAL


@dataclass
class TargetOutcome:
    target: str
    status: Status
    duration: float = 0.0
    snapshot_id: str = ""
    accounts: list[str] = field(default_factory=list)
    bytes_added: int = 0
    files_new: int = 0
    snapshots: int | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    error: str = ""
    exit_code: int = 0
    started: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration"] = round(self.duration, 3)
        return data


@dataclass
class ShipReport:
    export_root: str
    accounts: list[str]
    problems: dict[str, str]  # account directories that could not be shipped (no valid manifest)
    targets: list[TargetOutcome]
    dry_run: bool = False
    bytes_total: int = 0

    @property
    def exit_code(self) -> int:
        code = combined_exit([t.exit_code for t in self.targets], len(self.targets))
        if code == EXIT_OK and self.problems:
            return EXIT_PARTIAL
        return code

    @property
    def failed(self) -> list[TargetOutcome]:
        return [t for t in self.targets if t.status != "success"]

    def to_json(self) -> dict[str, Any]:
        return {"event": "ship.summary", "exit_code": self.exit_code, "dry_run": self.dry_run, "export_dir": self.export_root,
                "accounts": self.accounts, "bytes": self.bytes_total, "problems": self.problems,
                "targets": [t.to_json() for t in self.targets]}

    def human(self) -> str:
        lines = []
        for t in self.targets:
            if self.dry_run:
                lines.append(f"{t.target}: would ship {len(self.accounts)} account(s), {human_bytes(self.bytes_total)} in the export")
            elif t.status == "failed":
                lines.append(f"{t.target}: FAILED — {t.error}")
            else:
                line = (f"{t.target}: snapshot {t.snapshot_id[:8]} — {len(t.accounts)} account(s), {human_bytes(t.bytes_added)} added, "
                        f"{t.files_new} new file(s), {t.duration:.1f} s, {t.snapshots} snapshot(s) in the target")
                lines.append(line)
                lines += [f"  not shipped: {a}: {why}" for a, why in t.skipped.items()]
        lines += [f"skipped account directory {d}: {why}" for d, why in self.problems.items()]
        return "\n".join(lines)

    def failure_message(self) -> str:
        parts = [f"target {t.target}: {t.error or 'accounts not shipped: ' + ', '.join(t.skipped)}" for t in self.failed]
        if self.problems:
            parts.append(f"{len(self.problems)} account directory(ies) not shipped")
        return "ship incomplete — " + "; ".join(parts)


def complete_accounts(export_root: Path) -> tuple[list[Path], dict[str, str]]:
    """The account directories holding a complete, readable export, and the ones that do not."""
    export = ExportDir(export_root)
    if not export.root.is_dir():
        raise UsageError(f"export.dir {export.root}: no such directory (run `mail-backup export` first)")
    try:
        export.check_marker()
    except LayoutError as exc:
        raise UsageError(f"export.dir: {exc}") from None
    good, problems = [], {}
    for d in export.account_dirs():
        try:
            load_manifest(d)
        except ManifestError as exc:
            problems[d.name] = str(exc)
            continue
        good.append(d)
    return good, problems


def _export_size(dirs: Sequence[Path]) -> int:
    total = 0
    for d in dirs:
        for p in d.rglob("*"):
            if p.is_file() and ".tmp" not in p.parts:
                total += p.stat().st_size
    return total


def ship(cfg: Config, out: Output, *, names: Sequence[str] | None = None, dry_run: bool = False,
         account_dirs: Sequence[Path] | None = None, targets: Sequence[Target] | None = None) -> ShipReport:
    """Ship the export to the targets; see the module docstring. ``account_dirs`` overrides the discovery."""
    root = Path(cfg.export.dir)
    if account_dirs is None:
        dirs, problems = complete_accounts(root)
    else:
        dirs, problems = list(account_dirs), {}
    chosen = list(targets) if targets is not None else open_targets(cfg, names)  # config errors: before anything ships
    if not chosen:
        raise UsageError(f"{cfg.path or 'config'}: no [[targets]] configured")
    accounts = [load_manifest(d).account.name for d in dirs]
    report = ShipReport(str(root), accounts, problems, [], dry_run=dry_run)
    if dry_run:
        report.bytes_total = _export_size(dirs)
        report.targets = [TargetOutcome(t.name, "success") for t in chosen]
        return report
    if not dirs:
        raise UsageError(f"nothing to ship: {root} holds no complete account export (run `mail-backup export` first)")
    state = StateDir(cfg.state.dir)
    with out.progress() as board:
        for t in chosen:
            stopping.check()  # a stop request ends the run between targets (each snapshot is all or nothing)
            outcome = ship_one(t, root, dirs, out, board)
            report.targets.append(outcome)
            _write_state(state, "ship", outcome, out)
    return report


def ship_one(t: Target, root: Path, dirs: Sequence[Path], out: Output, board: ProgressBoard) -> TargetOutcome:
    started = time.time()
    out.event("ship.start", target=t.name, accounts=len(dirs))
    task = board.add(f"ship → {t.name}", None)
    try:
        res = t.ship(root, dirs, host=host_of(t), progress=_progress(board, task))
        count = len(t.snapshots())
    except (TargetError, OSError) as exc:
        msg = _message(exc)
        outcome = TargetOutcome(t.name, "failed", time.time() - started, error=msg, exit_code=exit_code_for(exc), started=started)
        out.event("ship.target", **outcome.to_json())
        out.warn(f"ship to {t.name} failed: {msg}")
        return outcome
    status: Status = "partial" if res.skipped else "success"
    outcome = TargetOutcome(t.name, status, time.time() - started, res.snapshot_id, res.accounts, res.bytes_added, res.files_new,
                            count, dict(res.skipped), exit_code=EXIT_PARTIAL if res.skipped else EXIT_OK, started=started)
    out.event("ship.target", **outcome.to_json())
    out.info(f"{t.name}: snapshot {res.snapshot_id[:8]} stored ({len(res.accounts)} accounts, {human_bytes(res.bytes_added)} added)")
    return outcome


def _progress(board: ProgressBoard, task: Any) -> Callable[[int, int], None]:
    last = [0]

    def update(done: int, total: int) -> None:
        board.update(task, advance=max(0, done - last[0]), total=total or None, nbytes=done)
        last[0] = max(last[0], done)

    return update


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{'disk full' if exc.errno == errno.ENOSPC else exc.strerror or exc}"
    return str(exc)


def _write_state(state: StateDir, job: Literal["ship", "prune", "check"], o: TargetOutcome, out: Output, **extra: Any) -> None:
    started = o.started or time.time() - o.duration
    fields: dict[str, Any] = {"bytes": o.bytes_added, "errors": (1 if o.status == "failed" else len(o.skipped)),
                              "detail": o.error or "; ".join(f"{a}: {w}" for a, w in o.skipped.items())[:500]}
    if job == "ship":
        fields.update(snapshot_id=o.snapshot_id, accounts=len(o.accounts), files_new=o.files_new)
    if o.snapshots is not None:
        fields["snapshots"] = o.snapshots
    fields.update(extra)
    try:
        state.write(result(job, o.target, o.status, started, **fields))
    except OSError as exc:
        out.warn(f"cannot write the {job} result of {o.target} to the state directory: {exc.strerror or exc}")



__all__ = ["EXIT_IO", "ShipReport", "TargetOutcome", "combined_exit", "complete_accounts", "exit_code_for", "ship", "ship_one"]
