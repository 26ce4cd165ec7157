"""mailsrv's /metrics/prometheus, with Stalwart's names and semantics.

As on Stalwart (v0.15, ``crates/common/src/telemetry/metrics/prometheus.rs``):

* names are Stalwart's event ids with every non-alphanumeric character replaced by ``_``; no labels, no
  ``_total`` suffix, no ``stalwart_`` prefix; ``# HELP`` is Stalwart's event description;
* counters live in memory as u32, reset on restart and appear only once non-zero;
* gauges are always present (``server_memory``, ``user_count``, ``domain_count``, ``queue_count`` — which
  Stalwart exports only in its Enterprise edition — and the ``*_active_connections`` gauges);
* histograms appear after their first observation, in milliseconds or bytes, with Stalwart's bucket bounds;
  each observation is counted in the first bucket whose bound exceeds it (buckets are *not* cumulative)
  and the last bound is rendered ``le="inf"`` — exactly the shape Stalwart's exporter emits.

The renderer reproduces Stalwart's text so mail-exporter is tested against the real shapes. Counters a
module increments must be listed in :data:`COUNTERS` (Stalwart's v0.15 event descriptions).
"""

from __future__ import annotations

import logging
import os
import resource
import threading
from collections.abc import Callable

log = logging.getLogger("mailsrv.metrics")

SIZE_BUCKETS = [500, 1_000, 10_000, 100_000, 1_000_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000, 100_000_000, 500_000_000]
SHORT_MS_BUCKETS = [5, 10, 50, 100, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000]
MEDIUM_MS_BUCKETS = [250, 500, 1_000, 5_000, 10_000, 60_000, 300_000, 600_000, 1_800_000, 3_600_000, 18_000_000]
LONG_MS_BUCKETS = [1_000, 30_000, 300_000, 600_000, 1_800_000, 3_600_000, 18_000_000, 28_800_000, 43_200_000, 86_400_000, 604_800_000]

# Stalwart's community-edition histograms: bucket bounds and description.
HISTOGRAMS: dict[str, tuple[list[int], str]] = {
    "delivery_total_time": (LONG_MS_BUCKETS, "Total message delivery time from submission to delivery"),
    "delivery_attempt_time": (MEDIUM_MS_BUCKETS, "Message delivery time"),
    "message_size": (SIZE_BUCKETS, "Received message size"),
    "message_authenticated_size": (SIZE_BUCKETS, "Received message size from authenticated users"),
    "smtp_request_time": (MEDIUM_MS_BUCKETS, "SMTP request duration"),
    "http_request_time": (MEDIUM_MS_BUCKETS, "HTTP request duration"),
}

# Stalwart's gauge descriptions (they win over the text given at registration).
GAUGES: dict[str, str] = {
    "server_memory": "Server memory usage",
    "queue_count": "Total number of messages in the queue",
    "user_count": "Total number of users",
    "domain_count": "Total number of domains",
    "smtp_active_connections": "Active SMTP connections",
    "imap_active_connections": "Active IMAP connections",
    "pop3_active_connections": "Active POP3 connections",
    "http_active_connections": "Active HTTP connections",
    "sieve_active_connections": "Active ManageSieve connections",
    "delivery_active_connections": "Active delivery connections",
}

# Event counters mailsrv can emit, with Stalwart's descriptions (v0.15.5 ``crates/trc/src/event/description.rs``).
COUNTERS: dict[str, str] = {
    # Authentication
    "auth_error": "Authentication error",
    "auth_failed": "Authentication failed",
    "auth_success": "Authentication successful",
    "auth_too_many_attempts": "Too many authentication attempts",
    # Security
    "security_abuse_ban": "Banned due to abuse",
    "security_authentication_ban": "Banned due to authentication errors",
    "security_ip_blocked": "Blocked IP address",
    "security_loiter_ban": "Banned due to loitering",
    "security_scan_ban": "Banned due to scan",
    "security_unauthorized": "Unauthorized access",
    # Inbound SMTP: sessions, rejections (one counter per reason), authentication results
    "smtp_arc_fail": "ARC verification failed",
    "smtp_arc_pass": "ARC verification passed",
    "smtp_auth_exchange_too_long": "Auth exchange too long",
    "smtp_auth_mechanism_not_supported": "Auth mechanism not supported",
    "smtp_command_not_implemented": "Command not implemented",
    "smtp_concurrency_limit_exceeded": "Concurrency limit exceeded",
    "smtp_connection_end": "SMTP connection ended",
    "smtp_connection_start": "SMTP connection started",
    "smtp_did_not_say_ehlo": "Client did not say EHLO",
    "smtp_dkim_fail": "DKIM verification failed",
    "smtp_dkim_pass": "DKIM verification passed",
    "smtp_dmarc_fail": "DMARC check failed",
    "smtp_dmarc_pass": "DMARC check passed",
    "smtp_error": "SMTP error occurred",
    "smtp_invalid_command": "Invalid command",
    "smtp_invalid_ehlo": "Invalid EHLO command",
    "smtp_iprev_fail": "IPREV check failed",
    "smtp_iprev_pass": "IPREV check passed",
    "smtp_loop_detected": "Mail loop detected",
    "smtp_mail_from_missing": "MAIL FROM address missing",
    "smtp_mail_from_unauthenticated": "MAIL FROM without authentication",
    "smtp_mail_from_unauthorized": "MAIL FROM unauthorized",
    "smtp_mailbox_does_not_exist": "Mailbox does not exist",
    "smtp_message_parse_failed": "Message parsing failed",
    "smtp_message_too_large": "Message too large",
    "smtp_multiple_mail_from": "Multiple MAIL FROM commands",
    "smtp_rate_limit_exceeded": "Rate limit exceeded",
    "smtp_rcpt_to_duplicate": "Duplicate RCPT TO",
    "smtp_rcpt_to_missing": "RCPT TO address missing",
    "smtp_relay_not_allowed": "Relay not allowed",
    "smtp_request_too_large": "Request too large",
    "smtp_spf_ehlo_fail": "SPF EHLO check failed",
    "smtp_spf_ehlo_pass": "SPF EHLO check passed",
    "smtp_spf_from_fail": "SPF From check failed",
    "smtp_spf_from_pass": "SPF From check passed",
    "smtp_syntax_error": "Syntax error",
    "smtp_time_limit_exceeded": "Time limit exceeded",
    "smtp_too_many_invalid_rcpt": "Too many invalid recipients",
    "smtp_too_many_messages": "Too many messages",
    "smtp_too_many_recipients": "Too many recipients",
    "smtp_transfer_limit_exceeded": "Transfer limit exceeded",
    # Outbound queue
    "queue_blob_not_found": "Message blob not found",
    "queue_concurrency_limit_exceeded": "Concurrency limit exceeded",
    "queue_queue_autogenerated": "Queued autogenerated message for delivery",
    "queue_queue_dsn": "Queued DSN for delivery",
    "queue_queue_message": "Queued message for delivery",
    "queue_queue_message_authenticated": "Queued message submission for delivery",
    "queue_queue_report": "Queued report for delivery",
    "queue_quota_exceeded": "Quota exceeded",
    "queue_rate_limit_exceeded": "Rate limit exceeded",
    "queue_rescheduled": "Message rescheduled for delivery",
    # Outbound delivery
    "delivery_attempt_end": "Delivery attempt ended",
    "delivery_attempt_start": "Delivery attempt started",
    "delivery_auth_failed": "SMTP authentication failed",
    "delivery_completed": "Delivery completed",
    "delivery_concurrency_limit_exceeded": "Concurrency limit exceeded",
    "delivery_delivered": "Message delivered",
    "delivery_double_bounce": "Discarding message after double bounce",
    "delivery_dsn_perm_fail": "DSN permanent failure notification",
    "delivery_dsn_success": "DSN success notification",
    "delivery_dsn_temp_fail": "DSN temporary failure notification",
    "delivery_ehlo_rejected": "SMTP EHLO rejected",
    "delivery_greeting_failed": "SMTP greeting failed",
    "delivery_implicit_tls_error": "Implicit TLS error",
    "delivery_ip_lookup_failed": "IP address lookup failed",
    "delivery_mail_from_rejected": "SMTP MAIL FROM rejected",
    "delivery_message_rejected": "Message rejected by remote server",
    "delivery_mx_lookup_failed": "MX record lookup failed",
    "delivery_null_mx": "Null MX record found",
    "delivery_rate_limit_exceeded": "Rate limit exceeded",
    "delivery_rcpt_to_failed": "SMTP RCPT TO failed",
    "delivery_rcpt_to_rejected": "SMTP RCPT TO rejected",
    "delivery_start_tls_disabled": "STARTTLS disabled",
    "delivery_start_tls_error": "STARTTLS error",
    "delivery_start_tls_unavailable": "STARTTLS unavailable",
    # Local delivery into mailboxes
    "message_ingest_duplicate": "Skipping duplicate message",
    "message_ingest_error": "Message ingestion error",
    "message_ingest_fts_index": "Full-text search index updated",
    "message_ingest_ham": "Message ingested",
    "message_ingest_imap_append": "Message appended via IMAP",
    "message_ingest_jmap_append": "Message appended via JMAP",
    "message_ingest_spam": "Possible spam message ingested",
    # JMAP
    "jmap_forbidden": "JMAP operation forbidden",
    "jmap_invalid_arguments": "Invalid JMAP arguments",
    "jmap_method_call": "JMAP method call",
    "jmap_not_json": "JMAP request is not JSON",
    "jmap_not_request": "JMAP input is not a request",
    "jmap_request_too_large": "JMAP request too large",
    "jmap_unknown_method": "Unknown JMAP method",
    "jmap_unsupported_filter": "Unsupported JMAP filter",
    "jmap_unsupported_sort": "Unsupported JMAP sort",
    "jmap_websocket_error": "JMAP WebSocket error",
    "jmap_websocket_start": "JMAP WebSocket connection started",
    # Limits
    "limit_blob_quota": "Blob quota limit reached",
    "limit_calls_in": "Incoming calls limit reached",
    "limit_concurrent_connection": "Concurrent connection limit reached",
    "limit_concurrent_request": "Concurrent request limit reached",
    "limit_concurrent_upload": "Concurrent upload limit reached",
    "limit_quota": "Quota limit reached",
    "limit_size_request": "Request size limit reached",
    "limit_size_upload": "Upload size limit reached",
    "limit_tenant_quota": "Tenant quota limit reached",
    "limit_too_many_requests": "Too many requests",
    # HTTP
    "http_error": "HTTP error occurred",
    "http_request_body": "HTTP request body",
    "http_response_body": "HTTP response body",
    "http_x_forwarded_missing": "X-Forwarded-For header is missing",
    # Management API resources
    "resource_bad_parameters": "Bad resource parameters",
    "resource_error": "Resource error",
    "resource_not_found": "Resource not found",
    # Network
    "network_timeout": "Network timeout",
    # TLS
    "tls_handshake_error": "TLS handshake error",
    # Sieve
    "sieve_action_accept": "Sieve action: Accept",
    "sieve_action_accept_replace": "Sieve action: Accept and replace",
    "sieve_action_discard": "Sieve action: Discard",
    "sieve_action_reject": "Sieve action: Reject",
    "sieve_message_too_large": "Sieve message too large",
    "sieve_not_supported": "Sieve action not supported",
    "sieve_quota_exceeded": "Sieve quota exceeded",
    "sieve_runtime_error": "Sieve runtime error",
    "sieve_send_message": "Sieve sending message",
    "sieve_unexpected_error": "Unexpected Sieve error",
    # Other protocols (not served by mailsrv, listed so names stay Stalwart's)
    "imap_connection_end": "IMAP connection ended",
    "imap_connection_start": "IMAP connection started",
    "pop3_connection_end": "POP3 connection ended",
    "pop3_connection_start": "POP3 connection started",
    "manage_sieve_connection_end": "ManageSieve connection ended",
    "manage_sieve_connection_start": "ManageSieve connection started",
}


def _number(value: float) -> str:
    """Integral values without exponent or fraction (as Stalwart prints them), others in full precision."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def resident_memory() -> int:
    """This process's resident set size in bytes (peak RSS where /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Metrics:
    """Counters, gauges and histograms rendered in Stalwart's Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self._gauge_help: dict[str, str] = {}
        self._hist: dict[str, list[int]] = {}
        self._hist_sum: dict[str, int] = {}
        self._hist_count: dict[str, int] = {}
        self.gauge("server_memory", resident_memory, GAUGES["server_memory"])

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = (self._counters.get(name, 0) + n) & 0xFFFFFFFF  # Stalwart keeps u32

    def counter(self, name: str) -> int:
        return self._counters.get(name, 0)

    def gauge(self, name: str, read: Callable[[], float], help_: str) -> None:
        """Register a gauge whose value is read at render time."""
        self._gauges[name] = read
        self._gauge_help[name] = help_

    def observe(self, name: str, value: float) -> None:
        """Record one observation (milliseconds or bytes; Stalwart stores whole units)."""
        bounds = HISTOGRAMS[name][0]
        whole = max(int(value), 0)
        with self._lock:
            buckets = self._hist.setdefault(name, [0] * (len(bounds) + 1))
            idx = next((i for i, b in enumerate(bounds) if whole < b), len(bounds))
            buckets[idx] += 1  # Stalwart counts only the first matching bucket (not cumulative)
            self._hist_sum[name] = self._hist_sum.get(name, 0) + whole
            self._hist_count[name] = self._hist_count.get(name, 0) + 1

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            counters = dict(self._counters)
            hist = {k: list(v) for k, v in self._hist.items()}
            sums = dict(self._hist_sum)
            counts = dict(self._hist_count)
        for name in sorted(counters):
            if counters[name] > 0:
                out += [f"# HELP {name} {_help(COUNTERS.get(name, name))}", f"# TYPE {name} counter", f"{name} {counters[name]}"]
        for name in sorted(self._gauges):
            try:
                value = float(self._gauges[name]())
            except Exception:  # a broken gauge must not break the scrape
                log.debug("gauge %s could not be read", name, exc_info=True)
                continue
            help_ = GAUGES.get(name) or self._gauge_help[name]
            out += [f"# HELP {name} {_help(help_)}", f"# TYPE {name} gauge", f"{name} {_number(value)}"]
        for name in sorted(hist):
            bounds = HISTOGRAMS[name][0]
            out += [f"# HELP {name} {_help(HISTOGRAMS[name][1])}", f"# TYPE {name} histogram"]
            for b, v in zip([*map(str, bounds), "inf"], hist[name], strict=True):
                out.append(f'{name}_bucket{{le="{b}"}} {v}')
            out += [f"{name}_sum {sums[name]}", f"{name}_count {counts[name]}"]
        return "\n".join(out) + "\n"
