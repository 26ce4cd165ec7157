"""``mail-backup prune``: apply each target's ``keep`` policy and reclaim space.

restic targets run ``restic forget --prune`` (grouped by host, only mail-backup's snapshots); native b2/s3
targets delete the snapshot manifests the policy drops and then the content no remaining snapshot uses
(never while a ship is running; locked objects stay until their lock expires). A target without a
``keep`` policy keeps everything. Results go to the state directory (job ``prune``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from backup.output import Output, human_bytes
from backup.state import StateDir
from backup.targets.base import Target, TargetError
from backup.targets.registry import open_targets
from backup.targets.retention import is_empty
from mailsrv.config import Config, KeepPolicy

from .ship import TargetOutcome, _message, _write_state, combined_exit, exit_code_for


@dataclass
class PruneOutcome(TargetOutcome):
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bytes_freed: int | None = None
    policy: dict[str, Any] = field(default_factory=dict)


@dataclass
class PruneReport:
    targets: list[PruneOutcome]
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        return combined_exit([t.exit_code for t in self.targets], len(self.targets))

    def to_json(self) -> dict[str, Any]:
        return {"event": "prune.summary", "exit_code": self.exit_code, "dry_run": self.dry_run,
                "targets": [t.to_json() for t in self.targets]}

    def human(self) -> str:
        lines = []
        for t in self.targets:
            if t.status == "failed":
                lines.append(f"{t.target}: FAILED — {t.error}")
            elif not t.policy:
                lines.append(f"{t.target}: no keep policy — all {len(t.kept)} snapshot(s) kept")
            else:
                verb = "would remove" if self.dry_run else "removed"
                freed = f", {human_bytes(t.bytes_freed)} freed" if t.bytes_freed else ""
                lines.append(f"{t.target}: {verb} {len(t.removed)} snapshot(s), kept {len(t.kept)}{freed}")
        return "\n".join(lines)

    def failure_message(self) -> str:
        return "prune failed — " + "; ".join(f"target {t.target}: {t.error}" for t in self.targets if t.status == "failed")


def keep_of(cfg: Config, name: str) -> KeepPolicy:
    return next((t.keep for t in cfg.targets if t.name == name), KeepPolicy())


def prune(cfg: Config, out: Output, *, names: Sequence[str] | None = None, dry_run: bool = False,
          targets: Sequence[Target] | None = None) -> PruneReport:
    chosen = list(targets) if targets is not None else open_targets(cfg, names)
    state = StateDir(cfg.state.dir)
    report = PruneReport([], dry_run)
    for t in chosen:
        keep = keep_of(cfg, t.name)
        o = prune_one(t, keep, out, dry_run=dry_run)
        report.targets.append(o)
        if not dry_run:
            _write_state(state, "prune", o, out, removed=len(o.removed), bytes_freed=o.bytes_freed)
    return report


def prune_one(t: Target, keep: KeepPolicy, out: Output, *, dry_run: bool = False) -> PruneOutcome:
    started = time.time()
    policy = {k: v for k, v in keep.model_dump().items() if v}
    try:
        if is_empty(keep):
            out.warn(f"target {t.name} has no keep policy: nothing is removed")
        res = t.forget(keep, dry_run=dry_run)
        count = len(res.kept) if not dry_run else None
    except (TargetError, OSError) as exc:
        o = PruneOutcome(t.name, "failed", time.time() - started, error=_message(exc), exit_code=exit_code_for(exc), started=started,
                         policy=policy)
        out.warn(f"prune of {t.name} failed: {o.error}")
        out.event("prune.target", **o.to_json())
        return o
    o = PruneOutcome(t.name, "success", time.time() - started, snapshots=count, started=started, kept=res.kept, removed=res.removed,
                     bytes_freed=res.bytes_freed, bytes_added=0, policy=policy)
    out.event("prune.target", **o.to_json())
    return o
