"""Job results in the state directory: one small JSON file per (job, subject), written atomically.

mail-exporter reads these files to expose backup freshness and results; it never scans a repository.
```
STATE_DIR/
  export/<account-dir>.json     one per account   (subject = account name)
  ship/<target>.json            one per target    (subject = target name)
  prune/<target>.json  check/<target>.json  drill/<target>.json
  run.json                      the last whole nightly run
```
A result keeps ``last_success`` from the previous result when the new run failed, so "time since the
last good backup" survives failures and restarts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mailsrv.fsio import atomic_write_json

from .exportdir.layout import account_dir_name

Job = Literal["export", "ship", "prune", "check", "drill", "run"]
Status = Literal["success", "partial", "failed"]
JOBS: tuple[Job, ...] = ("export", "ship", "prune", "check", "drill", "run")


class JobResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    job: Job
    subject: str = Field(description="Account name for export, target name for ship/prune/check/drill, 'all' for run")
    status: Status
    started: float = Field(description="Unix time")
    finished: float = Field(description="Unix time")
    last_success: float | None = Field(default=None, description="Unix time of the newest successful run")
    messages: int | None = None
    bytes: int | None = None
    errors: int = 0
    detail: str = ""

    @property
    def duration(self) -> float:
        return max(0.0, self.finished - self.started)


class StateDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, job: Job, subject: str) -> Path:
        if job == "run":
            return self.root / "run.json"
        return self.root / job / f"{account_dir_name(subject)}.json"

    def read(self, job: Job, subject: str) -> JobResult | None:
        return self._load(self.path(job, subject))

    def write(self, result: JobResult) -> JobResult:
        """Store ``result``; carries ``last_success`` forward from the previous result when it failed."""
        if result.status == "success":
            result.last_success = result.finished
        elif result.last_success is None:
            previous = self.read(result.job, result.subject)
            result.last_success = previous.last_success if previous else None
        atomic_write_json(self.path(result.job, result.subject), result.model_dump(mode="json"))
        return result

    def all(self) -> list[JobResult]:
        """Every readable result; unreadable files are skipped (the exporter counts them as errors)."""
        out = []
        for path in sorted(self.root.glob("*/*.json")) + ([self.root / "run.json"] if (self.root / "run.json").exists() else []):
            r = self._load(path)
            if r is not None:
                out.append(r)
        return out

    @staticmethod
    def _load(path: Path) -> JobResult | None:
        try:
            return JobResult.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, ValidationError):
            return None


def now() -> float:
    return time.time()


def result(job: Job, subject: str, status: Status, started: float, **extra: Any) -> JobResult:
    return JobResult(job=job, subject=subject, status=status, started=started, finished=now(), **extra)
