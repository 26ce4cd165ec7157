"""``mail-backup run``: the whole nightly job — export → ship to every target → prune by policy.

The export step is :func:`backup.actions.export.run_export`. Whatever the export managed, the complete
accounts of the export directory are shipped (an account whose export failed tonight still has last
night's complete export, and that is still worth a snapshot); only a configuration error stops the run.
Targets are pruned only after a successful ship to them, and only when they have a ``keep`` policy.
The run's own result goes to the state directory as job ``run`` (subject ``all``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from backup import stopping
from backup.errors import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, BackupError
from backup.output import Output
from backup.state import StateDir, Status, result
from backup.targets.registry import open_targets
from backup.targets.retention import is_empty
from mailsrv.config import Config

from .prune import PruneReport, keep_of, prune
from .ship import ShipReport, ship


@dataclass
class RunReport:
    export: dict[str, Any] = field(default_factory=dict)
    export_exit: int = 0
    ship: ShipReport | None = None
    prune: PruneReport | None = None
    dry_run: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        codes = [c for c in (self.export_exit, self.ship.exit_code if self.ship else EXIT_PARTIAL,
                             self.prune.exit_code if self.prune else 0) if c]
        if not codes:
            return EXIT_OK
        return codes[0] if len(set(codes)) == 1 else EXIT_PARTIAL

    def to_json(self) -> dict[str, Any]:
        return {"event": "run.summary", "exit_code": self.exit_code, "dry_run": self.dry_run, "export": self.export,
                "ship": self.ship.to_json() if self.ship else None, "prune": self.prune.to_json() if self.prune else None,
                "errors": self.errors}

    def human(self) -> str:
        lines = [f"export: {'ok' if not self.export_exit else 'exit ' + str(self.export_exit)}"
                 f" ({len(self.export.get('accounts', []))} account(s))"]
        if self.ship:
            lines += ["ship:", *("  " + ln for ln in self.ship.human().splitlines())]
        if self.prune:
            lines += ["prune:", *("  " + ln for ln in self.prune.human().splitlines())]
        lines += [f"error: {e}" for e in self.errors]
        return "\n".join(lines)


def run_export_step(cfg: Config, out: Output, dry_run: bool) -> Any:
    from .export import run_export

    return run_export(cfg, None, out, dry_run=dry_run)


def nightly(cfg: Config, out: Output, *, dry_run: bool = False) -> RunReport:
    """The nightly job under the lock shared with ``mail-backup schedule``, with the ``run`` hooks (backup/schedule.py)."""
    if dry_run:
        return _nightly(cfg, out, dry_run=True)
    from backup.schedule import run_job, run_summary

    reports: list[RunReport] = []

    def body() -> tuple[int, str]:
        reports.append(_nightly(cfg, out))
        return reports[0].exit_code, run_summary(reports[0])

    run_job(cfg, "run", out, body, reraise=True)
    return reports[0]


def _nightly(cfg: Config, out: Output, *, dry_run: bool = False) -> RunReport:
    started = time.time()
    targets = open_targets(cfg)  # a config mistake in any target stops the run before the export starts
    if not targets:
        raise BackupError(f"{cfg.path or 'config'}: no [[targets]] configured; `run` ships every export", EXIT_USAGE)
    report = RunReport(dry_run=dry_run)
    account_dirs = None
    try:
        exported = run_export_step(cfg, out, dry_run)
        report.export_exit = int(exported.exit_code)
        report.export = exported.to_json() if hasattr(exported, "to_json") else {"exit_code": exported.exit_code}
        if getattr(exported, "account_dirs", None) is not None and not dry_run:
            account_dirs = list(exported.account_dirs)
    except stopping.Stopped:
        raise
    except BackupError as exc:
        if exc.exit_code == EXIT_USAGE:
            raise
        report.export_exit = exc.exit_code
        report.export = {"exit_code": exc.exit_code, "error": str(exc)}
        report.errors.append(f"export: {exc}")
        out.warn(f"export failed: {exc}; shipping the complete accounts already in the export directory")
    try:
        report.ship = ship(cfg, out, dry_run=dry_run, targets=targets,
                           account_dirs=account_dirs if account_dirs else None)
    except stopping.Stopped:
        raise
    except BackupError as exc:
        report.errors.append(f"ship: {exc}")
        out.warn(f"ship: {exc}")
    if report.ship is not None:
        shipped = {t.target for t in report.ship.targets if t.status != "failed"}
        to_prune = [t for t in targets if t.name in shipped and not is_empty(keep_of(cfg, t.name))]
        if to_prune:
            stopping.check()
            report.prune = prune(cfg, out, dry_run=dry_run, targets=to_prune)
    if not dry_run:
        status: Status = "success" if report.exit_code == EXIT_OK else ("failed" if report.ship is None or not any(
            t.status != "failed" for t in report.ship.targets) else "partial")
        detail = "; ".join(report.errors + ([report.ship.failure_message()] if report.ship and report.ship.exit_code else []))
        try:
            StateDir(cfg.state.dir).write(result("run", "all", status, started, errors=len(report.errors) + (
                len(report.ship.failed) if report.ship else 0), detail=detail[:500],
                bytes=sum(t.bytes_added for t in report.ship.targets) if report.ship else None,
                messages=None, export_exit=report.export_exit, exit_code=report.exit_code))
        except OSError as exc:
            out.warn(f"cannot write the run result to the state directory: {exc.strerror or exc}")
    return report
