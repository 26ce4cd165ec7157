"""``mail-backup check``: verify each target's integrity (restic ``check``; for b2/s3 every referenced object
exists with the right size), optionally reading a share of the data back. Results go to the state directory
(job ``check``); a damaged repository is exit 5, an unreachable one 2 (4 when other targets were fine).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backup.errors import EXIT_MISMATCH
from backup.output import Output
from backup.state import StateDir
from backup.targets.base import Target, TargetError
from backup.targets.registry import open_targets
from mailsrv.config import Config

from .ship import TargetOutcome, _message, _write_state, combined_exit, exit_code_for


@dataclass
class CheckOutcome(TargetOutcome):
    ok: bool = False
    detail: str = ""
    read_data_percent: float | None = None


@dataclass
class CheckReport:
    targets: list[CheckOutcome]

    @property
    def exit_code(self) -> int:
        if any(t.exit_code == EXIT_MISMATCH for t in self.targets):
            return EXIT_MISMATCH  # damage outranks an unreachable target: it needs the operator first
        return combined_exit([t.exit_code for t in self.targets], len(self.targets))

    def to_json(self) -> dict[str, Any]:
        return {"event": "check.summary", "exit_code": self.exit_code, "targets": [t.to_json() for t in self.targets]}

    def human(self) -> str:
        out = []
        for t in self.targets:
            if t.status == "failed" and t.error:
                out.append(f"{t.target}: FAILED — {t.error}")
            else:
                out.append(f"{t.target}: {'ok' if t.ok else 'DAMAGED'} — {t.detail} ({t.duration:.1f} s)")
        return "\n".join(out)

    def failure_message(self) -> str:
        parts = [f"target {t.target}: {t.error or t.detail}" for t in self.targets if t.status != "success"]
        return "check found problems — " + "; ".join(parts)


def check(cfg: Config, out: Output, *, names: Sequence[str] | None = None, read_data_percent: float | None = None,
          targets: Sequence[Target] | None = None) -> CheckReport:
    chosen = list(targets) if targets is not None else open_targets(cfg, names)
    state = StateDir(cfg.state.dir)
    report = CheckReport([])
    for t in chosen:
        o = check_one(t, out, read_data_percent)
        report.targets.append(o)
        _write_state(state, "check", o, out, ok=o.ok, read_data_percent=read_data_percent, detail=(o.error or o.detail)[:500])
    return report


def check_one(t: Target, out: Output, read_data_percent: float | None) -> CheckOutcome:
    started = time.time()
    out.info(f"checking {t.name}" + (f" (reading {read_data_percent:g}% of the data)" if read_data_percent else ""))
    try:
        res = t.check(read_data_percent=read_data_percent)
    except (TargetError, OSError) as exc:
        o = CheckOutcome(t.name, "failed", time.time() - started, error=_message(exc), exit_code=exit_code_for(exc), started=started,
                         read_data_percent=read_data_percent)
        out.warn(f"check of {t.name} failed: {o.error}")
        out.event("check.target", **o.to_json())
        return o
    o = CheckOutcome(t.name, "success" if res.ok else "failed", time.time() - started, started=started, ok=res.ok, detail=res.detail,
                     read_data_percent=read_data_percent, exit_code=0 if res.ok else EXIT_MISMATCH)
    out.event("check.target", **o.to_json())
    return o
