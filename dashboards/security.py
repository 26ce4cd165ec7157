"""Mail security: failed logins, bans, blocked connections, sender checks, limits and TLS certificate expiry."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from .common import (
    GREEN,
    ORANGE,
    RED,
    UP_DOWN,
    YELLOW,
    bargauge,
    dashboard,
    per_minute,
    row,
    sel,
    stat,
    timeseries,
)
from .rules import Settings

FAILED = 'result=~"failed|too_many_attempts"'
BLOCKED = 'kind="ip_blocked"'


def build() -> Dashboard:
    s = Settings()
    days_left = f"({sel('mail_tls_certificate_expiry_timestamp_seconds')} - time())"
    warn, crit = s.certificate_warning_days, s.certificate_critical_days
    return (
        dashboard("Mail security", "mailsidecar-security",
                  "Failed logins, bans, blocked connections, sender authentication, limits and certificate expiry of the "
                  "mail server (mail-exporter).", ["security"])
        .with_row(row("Now"))
        .with_panel(stat("Failed logins per minute", "Failed logins per minute over the last 5 minutes (alert: "
                         "MailAuthFailureBurst above the red threshold).",
                         f"sum(rate({sel('mail_auth_attempts_total', FAILED)}[5m])) * 60", "short",
                         [(None, GREEN), (s.auth_failures_per_minute / 2, YELLOW), (s.auth_failures_per_minute, RED)], decimals=1))
        .with_panel(stat("IPs banned in range", "Client addresses the server banned in the dashboard's time range.",
                         f"sum(increase({sel('mail_security_bans_total')}[$__range]))", "short", [(None, GREEN), (1, YELLOW)],
                         decimals=0))
        .with_panel(stat("Blocked connections in range", "Connections refused because the client address is banned or "
                         "blocked.", f"sum(increase({sel('mail_security_events_total', BLOCKED)}[$__range]))", "short",
                         [(None, GREEN), (1, YELLOW)], decimals=0))
        .with_panel(stat("Soonest certificate expiry", "Time left on the certificate that expires first (alerts: "
                         "MailCertificateExpiringSoon, MailCertificateExpiringVerySoon).", f"min({days_left})", "dtdurations",
                         [(None, RED), (crit * 86400, ORANGE), (warn * 86400, GREEN)]))
        .with_panel(stat("Untrusted certificates", "Endpoints whose certificate does not chain to a trusted CA or does not "
                         "match the host name.", f"count({sel('mail_tls_certificate_verified')} == 0) or vector(0)", "short",
                         [(None, GREEN), (1, RED)]))
        .with_panel(stat("Endpoints without TLS", "Endpoints where the last TLS handshake failed (alert: "
                         "MailEndpointUnreachable).", f"count({sel('mail_tls_endpoint_up')} == 0) or vector(0)", "short",
                         [(None, GREEN), (1, RED)]))
        .with_row(row("Logins"))
        .with_panel(timeseries("Failed logins per minute", "Failed logins on any protocol; the dashed line is the "
                               "MailAuthFailureBurst threshold.",
                               [(per_minute("mail_auth_attempts_total", FAILED, by="result"), "{{result}}")], "short", w=12,
                               steps=[(None, GREEN), (s.auth_failures_per_minute, RED)]))
        .with_panel(timeseries("Logins per minute by result", "Every login attempt on any protocol by result.",
                               [(per_minute("mail_auth_attempts_total", by="result"), "{{result}}")], "short", w=12))
        .with_row(row("Bans and blocks"))
        .with_panel(timeseries("Bans per hour by kind", "Client addresses banned, by why (authentication failures, abuse, "
                               "scanning, loitering).",
                               [(f"sum by (kind) (rate({sel('mail_security_bans_total')}[$__rate_interval])) * 3600", "{{kind}}")],
                               "short", w=8))
        .with_panel(timeseries("Blocked and unauthorized per minute", "Connections from blocked addresses and unauthorized "
                               "management requests.",
                               [(per_minute("mail_security_events_total", by="kind"), "{{kind}}")], "short", w=8))
        .with_panel(timeseries("Refused by limits per minute", "Requests refused by a size, rate, concurrency or quota limit "
                               "(only limits that were hit).",
                               [(per_minute("mail_limits_exceeded_total", by="limit") + " > 0", "{{limit}}")], "short", w=8))
        .with_row(row("Sender authentication and TLS"))
        .with_panel(timeseries("Inbound sender checks failing per minute", "SPF, DKIM, ARC, DMARC and reverse-IP checks of "
                               "inbound SMTP that failed.",
                               [(per_minute("mail_sender_auth_checks_total", 'result="fail"', by="check"), "{{check}}")], "short", w=12))
        .with_panel(timeseries("TLS handshake errors per minute", "Failed TLS handshakes on the server's listeners.",
                               [(per_minute("mail_tls_handshake_errors_total"), "handshake errors")], "short", w=12))
        .with_row(row("Certificates"))
        .with_panel(bargauge("Certificate days left", "Days until each endpoint's certificate expires (orange: below "
                             f"{warn:g} days, red: below {crit:g} days).", f"{days_left} / 86400", "{{endpoint}}", "d",
                             [(None, RED), (crit, ORANGE), (warn, GREEN)], maximum=90))
        .with_panel(stat("TLS endpoints", "Whether the last TLS handshake with each endpoint succeeded.",
                         sel("mail_tls_endpoint_up"), "none", [(None, RED), (1, GREEN)], legend="{{endpoint}}", w=12, h=8,
                         mappings=UP_DOWN))
    )
