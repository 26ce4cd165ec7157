"""Prometheus alert rules for mail-exporter's metrics, with the thresholds as settings.

``python -m dashboards.rules [--set NAME=VALUE ...] [--runbook-base URL] [--out FILE]`` prints (or writes) the
rule file; without options it is the committed ``prometheus/mail-alerts.yml``. ``--list`` shows the settings.

Conventions: counters only through ``rate``/``increase`` (mail-exporter keeps them monotonic across server
restarts, and Prometheus handles its own resets); every mail-exporter series exists from the first poll, so
only "never reported at all" needs ``absent``/``unless``. mail-exporter's backup series carry a ``job`` label
(export, ship …) which Prometheus stores as ``exported_job`` next to the scrape job (``honor_labels: false``,
the default), hence ``exported_job`` below.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from mailsrv.fsio import atomic_write_bytes

from . import RULES_FILE

BACKUP_JOB = "exported_job"  # mail-exporter's ``job`` label after the scrape (see the module docstring)


@dataclass(frozen=True)
class Settings:
    """Thresholds and durations of the alert rules (``--set NAME=VALUE``)."""

    exporter_job: str = "mail-exporter"          # Prometheus scrape job of mail-exporter
    runbook_base: str = "docs/operations.md"     # runbook_url = <runbook_base>#<anchor>
    exporter_down_for: str = "5m"
    server_down_for: str = "5m"
    source_down_for: str = "10m"
    endpoint_down_for: str = "10m"
    queue_backlog_messages: int = 500            # scheduled + retrying messages
    queue_backlog_for: str = "15m"
    queue_oldest_seconds: int = 3600
    queue_oldest_for: str = "15m"
    queue_paused_for: str = "30m"
    delivery_failure_ratio: float = 0.25         # deferred + bounced / all outcomes
    delivery_failure_min_outcomes: int = 10      # in the 15 min window; below this the ratio means little
    delivery_failure_for: str = "15m"
    auth_failures_per_minute: float = 10
    auth_failures_for: str = "5m"
    rejection_spike_factor: float = 3            # current rate vs the last 6 hours
    rejection_spike_min_per_minute: float = 5
    rejection_spike_for: str = "10m"
    backup_max_age_hours: float = 26
    backup_verify_max_age_days: float = 8        # restore drill and repository check
    certificate_warning_days: float = 14
    certificate_critical_days: float = 3
    probe_failing_for: str = "15m"
    probe_slow_seconds: float = 60
    probe_slow_for: str = "30m"

    def with_overrides(self, pairs: list[str]) -> Settings:
        """``["queue_backlog_messages=100", …]`` → a copy with those values (ValueError names the bad one)."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for pair in pairs:
            name, sep, raw = pair.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in known:
                raise ValueError(f"unknown setting {name!r} (see --list)" if sep else f"expected NAME=VALUE, got {pair!r}")
            kind = type(getattr(self, name))
            try:
                changes[name] = kind(raw.strip())
            except ValueError:
                raise ValueError(f"{name}: {raw!r} is not a valid {kind.__name__}") from None
        return dataclasses.replace(self, **changes)


def _rule(s: Settings, name: str, expr: str, severity: str, anchor: str, summary: str, description: str,
          duration: str = "") -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr.strip()}
    if duration and duration != "0s":
        rule["for"] = duration
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description, "runbook_url": f"{s.runbook_base}#{anchor}"}
    return rule


def _fmt(value: float) -> str:
    return f"{value:g}"


def availability(s: Settings) -> list[dict[str, Any]]:
    up = f'up{{job="{s.exporter_job}"}}'
    return [
        _rule(s, "MailExporterDown", f"{up} == 0 or absent({up})", "critical", "exporter-down",
              "mail-exporter{{ with $labels.instance }} {{ . }}{{ end }} is down",
              f"Prometheus cannot scrape mail-exporter (job {s.exporter_job}), or no such target is configured: nothing "
              "about the mail server, its queue or the backups is being watched.", s.exporter_down_for),
        _rule(s, "MailServerDown", 'mail_exporter_source_up{source="mailserver"} == 0', "critical", "mail-server-down",
              "Mail server behind {{ $labels.instance }} does not answer",
              "mail-exporter cannot read the mail server's metrics endpoint: the server is down, hangs, or refuses the "
              "exporter's credentials.", s.server_down_for),
        _rule(s, "MailExporterSourceDown", 'mail_exporter_source_up{source!="mailserver"} == 0', "warning", "exporter-source-down",
              "mail-exporter source {{ $labels.source }} on {{ $labels.instance }} is failing",
              "The {{ $labels.source }} source has not polled successfully; its series keep their last good values. "
              "`mail-exporter check` shows the error.", s.source_down_for),
        _rule(s, "MailEndpointUnreachable", "mail_tls_endpoint_up == 0", "critical", "endpoint-unreachable",
              "{{ $labels.endpoint }} does not complete a TLS handshake",
              "mail-exporter cannot connect to {{ $labels.endpoint }} or the TLS handshake fails: clients cannot use "
              "this service.", s.endpoint_down_for),
    ]


def queue(s: Settings) -> list[dict[str, Any]]:
    outcomes = "sum by (instance, job) (rate(mail_deliveries_total{{result=~\"{}\"}}[15m]))"
    return [
        _rule(s, "MailQueueBacklog",
              f'sum by (instance, job) (mail_queue_messages{{status=~"scheduled|temp_fail"}}) > {s.queue_backlog_messages}',
              "critical", "queue-backlog", "{{ $value }} messages waiting in the outbound queue of {{ $labels.instance }}",
              f"More than {s.queue_backlog_messages} messages are waiting for delivery or retrying. Look at the retry "
              "reasons and the top destination domains on the Mail overview dashboard.", s.queue_backlog_for),
        _rule(s, "MailQueueOldestMessage",
              f"max by (instance, job) (mail_queue_oldest_message_age_seconds) > {s.queue_oldest_seconds}",
              "warning", "queue-oldest-message", "Oldest queued message on {{ $labels.instance }} is {{ $value | humanizeDuration }} old",
              "A message has been in the outbound queue for {{ $value | humanizeDuration }}: a destination keeps "
              "deferring it, or delivery is stuck.", s.queue_oldest_for),
        _rule(s, "MailQueuePaused", "mail_queue_running == 0", "warning", "queue-paused",
              "Outbound queue of {{ $labels.instance }} is paused",
              "The mail server's outbound queue is paused: nothing is being delivered until an operator resumes it.",
              s.queue_paused_for),
        _rule(s, "MailDeliveryFailureRatio",
              f"""
(
  {outcomes.format("deferred|bounced")}
/
  {outcomes.format("delivered|deferred|bounced")}
) > {_fmt(s.delivery_failure_ratio)}
and
sum by (instance, job) (increase(mail_deliveries_total{{result=~"delivered|deferred|bounced"}}[15m])) >= {s.delivery_failure_min_outcomes}
""",
              "warning", "delivery-failures", "{{ $value | humanizePercentage }} of outbound deliveries on {{ $labels.instance }} fail",
              "Over the last 15 minutes {{ $value | humanizePercentage }} of delivery outcomes were deferrals or "
              f"bounces (threshold {_fmt(s.delivery_failure_ratio * 100)}%). The delivery errors panel shows why.",
              s.delivery_failure_for),
    ]


def security(s: Settings) -> list[dict[str, Any]]:

    def rejections(window: str, offset: str = "") -> str:
        return f"sum by (instance, job) (rate(mail_smtp_rejections_total[{window}]{' offset ' + offset if offset else ''}))"

    return [
        _rule(s, "MailAuthFailureBurst",
              'sum by (instance, job) (rate(mail_auth_attempts_total{result=~"failed|too_many_attempts"}[5m])) * 60'
              f" > {_fmt(s.auth_failures_per_minute)}",
              "warning", "auth-failures", "{{ $value | humanize }} failed logins per minute on {{ $labels.instance }}",
              f"More than {_fmt(s.auth_failures_per_minute)} failed logins per minute: password guessing, or a client with a "
              "stale password. The Security dashboard shows bans and blocked connections.", s.auth_failures_for),
        _rule(s, "MailClientsBanned", "sum by (instance, job, kind) (increase(mail_security_bans_total[1h])) > 0",
              "info", "bans",
              'Client IPs banned on {{ $labels.instance }} in the last hour ({{ $labels.kind }}): {{ printf "%.0f" $value }}',
              "The mail server banned client addresses for {{ $labels.kind }}. Expected for scanners; check it when "
              "your own users report that they cannot connect."),
        _rule(s, "MailRejectionSpike",
              f"""
{rejections("10m")} * 60 > {_fmt(s.rejection_spike_min_per_minute)}
and
{rejections("10m")}
  > {_fmt(s.rejection_spike_factor)} * {rejections("6h", "10m")}
and
count by (instance, job) (mail_smtp_rejections_total offset 6h10m)
""",
              "warning", "rejection-spike", "SMTP rejections on {{ $labels.instance }} spiked to {{ $value | humanize }}/min",
              f"SMTP rejections are more than {_fmt(s.rejection_spike_factor)} times their rate over the previous 6 hours "
              f"(and above {_fmt(s.rejection_spike_min_per_minute)}/min, with 6 hours of history): a spam run, a misconfigured client, "
              f"or a rejecting "
              "rule that is too strict. The Mail overview dashboard breaks them down by reason.", s.rejection_spike_for),
    ]


def backups(s: Settings) -> list[dict[str, Any]]:
    j = BACKUP_JOB
    job = f"{{{{ $labels.{j} }}}}"
    max_age = f"{_fmt(s.backup_max_age_hours)} * 3600"
    verify_age = f"{_fmt(s.backup_verify_max_age_days)} * 86400"
    return [
        _rule(s, "MailBackupStale",
              f'time() - mail_backup_last_success_timestamp_seconds{{{j}=~"export|ship"}} > {max_age}',
              "critical", "backup-stale", f"No successful {job} of {{{{ $labels.subject }}}} for {{{{ $value | humanizeDuration }}}}",
              f"The last successful {job} of {{{{ $labels.subject }}}} finished {{{{ $value | humanizeDuration }}}} ago "
              f"(limit {_fmt(s.backup_max_age_hours)}h; decades mean it never succeeded). Mail changed since then is not backed up.",
              "10m"),
        _rule(s, "MailBackupNeverRecorded",
              f'mail_exporter_source_up{{source="backups"}} == 1 unless on (instance, job) '
              f'mail_backup_last_run_timestamp_seconds{{{j}="export"}}',
              "warning", "backup-never-ran", "No backup result on {{ $labels.instance }}",
              "mail-exporter reads the state directory but finds no export result: the nightly backup is not "
              "scheduled, or writes its results to another state directory.", f"{_fmt(s.backup_max_age_hours)}h"),
        _rule(s, "MailBackupFailed",
              f'mail_backup_last_status{{{j}=~"export|ship|prune|run",status=~"failed|partial"}} == 1',
              "warning", "backup-failed", f"Backup {job} of {{{{ $labels.subject }}}}: {{{{ $labels.status }}}}",
              f"The last {job} of {{{{ $labels.subject }}}} ended {{{{ $labels.status }}}}. A rerun resumes; "
              "`mail-backup` logs and the job result in the state directory name the errors."),
        _rule(s, "MailBackupRestoreDrillFailed",
              f'mail_backup_last_status{{{j}="drill",status=~"failed|partial"}} == 1',
              "critical", "restore-drill-failed", "Restore drill from {{ $labels.subject }} failed",
              "The last restore drill from target {{ $labels.subject }} ended {{ $labels.status }}: restoring from this "
              "target may not work."),
        _rule(s, "MailBackupRepositoryCheckFailed",
              f'mail_backup_last_status{{{j}="check",status=~"failed|partial"}} == 1',
              "critical", "repository-check-failed", "Repository check of {{ $labels.subject }} failed",
              "The last repository check of target {{ $labels.subject }} ended {{ $labels.status }}: the repository may "
              "be damaged or incomplete."),
        _rule(s, "MailBackupVerificationOverdue",
              f'time() - mail_backup_last_success_timestamp_seconds{{{j}=~"check|drill"}} > {verify_age}',
              "warning", "backup-verification-overdue",
              f"No successful {job} of {{{{ $labels.subject }}}} for {{{{ $value | humanizeDuration }}}}",
              f"Restore drills and repository checks are expected at least every {_fmt(s.backup_verify_max_age_days)} days."),
        _rule(s, "MailBackupStateUnreadable", "mail_backup_state_unreadable_files > 0", "warning", "backup-state-unreadable",
              "{{ $value }} unreadable job result files on {{ $labels.instance }}",
              "mail-exporter cannot read or validate some job results in the state directory; their jobs are invisible "
              "to the other backup alerts.", "10m"),
    ]


def certificates(s: Settings) -> list[dict[str, Any]]:
    left = "mail_tls_certificate_expiry_timestamp_seconds - time()"
    warn, crit = f"{_fmt(s.certificate_warning_days)} * 86400", f"{_fmt(s.certificate_critical_days)} * 86400"
    return [
        _rule(s, "MailCertificateExpiringSoon", f"{left} < {warn} and {left} >= {crit}", "warning", "certificate-expiry",
              "Certificate of {{ $labels.endpoint }} expires in {{ $value | humanizeDuration }}",
              f"The certificate served on {{{{ $labels.endpoint }}}} expires in less than {_fmt(s.certificate_warning_days)} "
              "days: automatic renewal is not working, or the server still serves the old certificate.", "10m"),
        _rule(s, "MailCertificateExpiringVerySoon", f"{left} < {crit}", "critical", "certificate-expiry",
              "Certificate of {{ $labels.endpoint }} expires in {{ $value | humanizeDuration }}",
              f"The certificate served on {{{{ $labels.endpoint }}}} expires in less than {_fmt(s.certificate_critical_days)} "
              "days (negative: it has expired). Clients will refuse to connect.", "10m"),
        _rule(s, "MailCertificateUntrusted", "mail_tls_certificate_verified == 0", "warning", "certificate-untrusted",
              "Certificate of {{ $labels.endpoint }} is not trusted",
              "The certificate served on {{ $labels.endpoint }} does not chain to a trusted CA or does not match the "
              "host name.", "1h"),
    ]


def probe(s: Settings) -> list[dict[str, Any]]:
    return [
        _rule(s, "MailDeliveryProbeFailing", "mail_probe_success == 0", "critical", "delivery-probe",
              "Delivery probe of {{ $labels.instance }} is failing",
              "The end-to-end probe (submit over SMTP, find the message over JMAP) has failed for "
              f"{s.probe_failing_for}: users probably cannot send or receive mail.", s.probe_failing_for),
        _rule(s, "MailDeliveryProbeSlow",
              f"mail_probe_duration_seconds > {_fmt(s.probe_slow_seconds)} and mail_probe_success == 1",
              "warning", "delivery-probe", "Delivery probe of {{ $labels.instance }} takes {{ $value | humanizeDuration }}",
              f"Probe messages need more than {_fmt(s.probe_slow_seconds)}s from submission to the mailbox.", s.probe_slow_for),
    ]


def rule_groups(s: Settings | None = None) -> dict[str, Any]:
    """The rule file as a dict (``groups: [...]``)."""
    s = s or Settings()
    groups = [("mailsidecar-availability", availability), ("mailsidecar-queue", queue), ("mailsidecar-security", security),
              ("mailsidecar-backups", backups), ("mailsidecar-certificates", certificates), ("mailsidecar-probe", probe)]
    return {"groups": [{"name": name, "rules": make(s)} for name, make in groups]}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)

HEADER = """\
# Prometheus alert rules for mail-exporter (mailsidecar).
# Generated by `python -m dashboards.generate` from dashboards/rules.py: do not edit by hand.
# Other thresholds: `python -m dashboards.rules --set queue_backlog_messages=1000 --out /etc/prometheus/rules/mail-alerts.yml`
# Tests: `cd dashboards/prometheus && promtool test rules mail-alerts.test.yml mail-alerts.days.test.yml`.
"""


def render(s: Settings | None = None) -> str:
    return HEADER + yaml.dump(rule_groups(s), Dumper=_Dumper, sort_keys=False, width=130, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dashboards.rules", description="Print mail-exporter's Prometheus alert rules.")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE", help="change a threshold (repeatable)")
    p.add_argument("--runbook-base", help="URL of docs/operations.md for the runbook_url annotations")
    p.add_argument("--out", type=Path, help=f"write here instead of stdout (the committed file is {RULES_FILE.name})")
    p.add_argument("--list", action="store_true", help="show the settings and their defaults")
    args = p.parse_args(argv)
    if args.list:
        for f in fields(Settings):
            print(f"{f.name} = {f.default}")
        return 0
    try:
        settings = Settings().with_overrides(args.overrides + ([f"runbook_base={args.runbook_base}"] if args.runbook_base else []))
    except ValueError as exc:
        print(f"dashboards.rules: {exc}", file=sys.stderr)
        return 1
    text = render(settings)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        if not args.out.parent.is_dir():  # a mistyped path is an error, not a new directory
            code = errno.ENOTDIR if args.out.parent.exists() else errno.ENOENT
            raise OSError(code, f"{os.strerror(code)}: {args.out.parent}")
        atomic_write_bytes(args.out, text.encode("utf-8"))  # Prometheus reloading meanwhile reads the old or the new file
    except OSError as exc:
        print(f"dashboards.rules: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 7
    return 0


if __name__ == "__main__":
    sys.exit(main())
