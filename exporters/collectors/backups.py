"""Source ``backups``: job results mail-backup left in the state directory (``backup.state.StateDir``).

Only the small per-job JSON files are read — never a backup repository — so a poll costs a few file reads
whatever the repository size. Labels are ``job`` (export, ship, prune, check, drill, run) and ``subject``
(account for export, target for ship/prune/check/drill, ``all`` for run).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from backup.state import StateDir

from ..poller import PollResult, SourceError

STATUSES = ("success", "partial", "failed")
SNAPSHOT_JOBS = ("ship", "prune", "check")  # results that may carry the target's snapshot count


class BackupsSource:
    """Reads every job result in ``[state] dir``."""

    name = "backups"

    def __init__(self, root: str | Path, *, interval: float, timeout: float) -> None:
        self.root = Path(root)
        self.state = StateDir(self.root)
        self.interval = interval
        self.timeout = timeout

    def _files(self) -> int:
        return len(list(self.root.glob("*/*.json"))) + (1 if (self.root / "run.json").exists() else 0)

    def poll(self) -> PollResult:
        if not self.root.is_dir():
            raise SourceError(f"state dir {self.root} does not exist (no backup job has run yet, or [state] dir is wrong)", "local")
        try:
            files = self._files()
            results = self.state.all()
        except OSError as exc:
            raise SourceError(f"state dir {self.root}: {exc.strerror or exc}", "local") from None
        labels = ["job", "subject"]
        last_success = GaugeMetricFamily("mail_backup_last_success_timestamp_seconds",
                                         "Unix time the job last succeeded for the subject (0: never).", labels=labels)
        last_run = GaugeMetricFamily("mail_backup_last_run_timestamp_seconds", "Unix time the job's last run finished.", labels=labels)
        status = GaugeMetricFamily("mail_backup_last_status", "1 for the status of the job's last run (success, partial, failed).",
                                   labels=[*labels, "status"])
        duration = GaugeMetricFamily("mail_backup_last_duration_seconds", "Duration of the job's last run.", labels=labels)
        messages = GaugeMetricFamily("mail_backup_last_messages", "Messages the job's last run handled.", labels=labels)
        size = GaugeMetricFamily("mail_backup_last_bytes", "Bytes the job's last run handled.", labels=labels)
        errors = GaugeMetricFamily("mail_backup_last_errors", "Errors in the job's last run (failed accounts, messages or targets).",
                                   labels=labels)
        snapshots = GaugeMetricFamily("mail_backup_snapshots", "Snapshots in the target after the newest ship, prune or check.",
                                      labels=["target"])
        newest_snapshots: dict[str, tuple[float, int]] = {}
        for r in results:
            key = [r.job, r.subject]
            last_success.add_metric(key, r.last_success or 0.0)
            last_run.add_metric(key, r.finished)
            for s in STATUSES:
                status.add_metric([*key, s], 1.0 if r.status == s else 0.0)
            duration.add_metric(key, r.duration)
            if r.messages is not None:
                messages.add_metric(key, r.messages)
            if r.bytes is not None:
                size.add_metric(key, r.bytes)
            errors.add_metric(key, r.errors)
            count = (r.model_extra or {}).get("snapshots")
            if r.job in SNAPSHOT_JOBS and isinstance(count, int) and not isinstance(count, bool):
                if r.subject not in newest_snapshots or newest_snapshots[r.subject][0] < r.finished:
                    newest_snapshots[r.subject] = (r.finished, count)
        for target, (_, count) in sorted(newest_snapshots.items()):
            snapshots.add_metric([target], count)
        unreadable = GaugeMetricFamily("mail_backup_state_unreadable_files",
                                       "Job result files in the state dir that could not be read or validated.",
                                       value=max(0, files - len(results)))
        problems = [f"{files - len(results)} unreadable job result file(s) in {self.root}"] if files > len(results) else []
        return PollResult([last_success, last_run, status, duration, messages, size, errors, snapshots, unreadable], problems)

    def close(self) -> None:
        pass
