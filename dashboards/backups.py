"""Mail backups: freshness per account and target, last results, durations, sizes, snapshots, drills and checks.

mail-backup's job results carry a ``job`` label (export, ship …) that Prometheus stores as ``exported_job``.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from .common import (
    GREEN,
    ORANGE,
    RED,
    YELLOW,
    bargauge,
    dashboard,
    never,
    row,
    sel,
    stat,
    timeseries,
    value_text,
)
from .rules import BACKUP_JOB, Settings

J = BACKUP_JOB
JOB_SUBJECT = f"{{{{{J}}}}} {{{{subject}}}}"  # legend "export alice"
NOT_OK = 'status=~"failed|partial"'
RESULT = value_text({2: ("OK", GREEN), 1: ("PARTIAL", ORANGE), 0: ("FAILED", RED)})


def _jobs(jobs: str) -> str:
    return f'{J}=~"{jobs}"'


def _since_success(jobs: str) -> str:
    return f"time() - {sel('mail_backup_last_success_timestamp_seconds', _jobs(jobs))}"


def _status(status: str, jobs: str = ".+") -> str:
    return sel("mail_backup_last_status", f'{_jobs(jobs)},status="{status}"')


def build() -> Dashboard:
    s = Settings()
    max_age = s.backup_max_age_hours * 3600
    verify_age = s.backup_verify_max_age_days * 86400
    fresh = [(None, GREEN), (max_age - 2 * 3600, YELLOW), (max_age, RED)]
    by = f"by (instance, {J}, subject)"
    result = f"sum {by} ({_status('success')}) * 2 + sum {by} ({_status('partial')})"
    return (
        dashboard("Mail backups", "mailsidecar-backups",
                  "Freshness of the mail backups per account and target, results of the last runs, durations, sizes, "
                  "snapshots, restore drills and repository checks (mail-backup job results via mail-exporter).",
                  ["backups"], time_from="now-7d")
        .with_row(row("Now"))
        .with_panel(stat("Oldest account backup", "Time since the last successful export of the account that has waited "
                         "longest (alert: MailBackupStale).", f"max({_since_success('export')})", "dtdurations", fresh,
                         mappings=never()))
        .with_panel(stat("Oldest target upload", "Time since the last successful ship to the target that has waited longest "
                         "(alert: MailBackupStale).", f"max({_since_success('ship')})", "dtdurations", fresh,
                         mappings=never()))
        .with_panel(stat("Failed or partial jobs", "Jobs whose last run failed or was partial (alerts: MailBackupFailed, "
                         "MailBackupRestoreDrillFailed, MailBackupRepositoryCheckFailed).",
                         f"count({sel('mail_backup_last_status', NOT_OK)} == 1) or vector(0)",
                         "short", [(None, GREEN), (1, RED)]))
        .with_panel(stat("Restore drill", "Result of the last restore drill (worst target).",
                         f"min({_result_of('drill')})", "none", [(None, RED), (1, ORANGE), (2, GREEN)],
                         mappings=RESULT, no_value="never run"))
        .with_panel(stat("Repository check", "Result of the last repository check (worst target).",
                         f"min({_result_of('check')})", "none", [(None, RED), (1, ORANGE), (2, GREEN)], mappings=RESULT,
                         no_value="never run"))
        .with_panel(stat("Unreadable job results", "Job result files in the state directory mail-exporter cannot read "
                         "(alert: MailBackupStateUnreadable).", f"sum({sel('mail_backup_state_unreadable_files')})", "short",
                         [(None, GREEN), (1, RED)]))
        .with_row(row("Freshness"))
        .with_panel(bargauge("Since the last successful export, per account", "Red above the MailBackupStale limit; a "
                             "full bar for an account that never succeeded.", _since_success("export"), "{{subject}}",
                             "dtdurations", fresh, maximum=2 * max_age, mappings=never()))
        .with_panel(bargauge("Since the last successful upload, per target", "Time since the last successful ship to each "
                             "target; red above the MailBackupStale limit.", _since_success("ship"), "{{subject}}",
                             "dtdurations", fresh, maximum=2 * max_age, mappings=never()))
        .with_row(row("Last results"))
        .with_panel(stat("Last run of every job", "OK, PARTIAL or FAILED for the last run of each job and account or target.",
                         result, "none", [(None, RED), (1, ORANGE), (2, GREEN)], legend=JOB_SUBJECT, w=24, h=5,
                         mappings=RESULT))
        .with_row(row("Runs"))
        .with_panel(timeseries("Duration of the last run", "How long the last run of each job took.",
                               [(sel("mail_backup_last_duration_seconds"), JOB_SUBJECT)], "s", w=8))
        .with_panel(timeseries("Data handled by the last run", "Bytes the last run of each job handled (when it reports it).",
                               [(sel("mail_backup_last_bytes"), JOB_SUBJECT)], "bytes", w=8))
        .with_panel(timeseries("Messages handled by the last run", "Messages the last run of each job handled (when it "
                               "reports it).", [(sel("mail_backup_last_messages"), JOB_SUBJECT)], "short", w=8))
        .with_row(row("Repository"))
        .with_panel(timeseries("Snapshots per target", "Snapshots in each target after the newest ship, prune or check.",
                               [(sel("mail_backup_snapshots"), "{{target}}")], "short", w=8))
        .with_panel(timeseries("Errors in the last run", "Failed accounts, messages or targets in the last run of each job.",
                               [(sel("mail_backup_last_errors"), JOB_SUBJECT)], "short", w=8))
        .with_panel(bargauge("Since the last successful check and drill", "Time since each target was last verified; red "
                             "above the MailBackupVerificationOverdue limit.", _since_success("check|drill"),
                             JOB_SUBJECT, "dtdurations", [(None, GREEN), (verify_age - 86400, YELLOW), (verify_age, RED)],
                             w=8, maximum=2 * verify_age, mappings=never()))
    )


def _result_of(job: str) -> str:
    """2 = success, 1 = partial, 0 = failed for the last run of ``job`` per target."""
    by = f"by (instance, {J}, subject)"
    return f"sum {by} ({_status('success', job)}) * 2 + sum {by} ({_status('partial', job)})"
