"""The mailserver source against Stalwart-shaped scrapes served by a real loopback HTTP server: v0.15 names,
v0.16.12+ names, the shifted counter names of v0.16.0-v0.16.11, counter resets, absent series, and sources
that hang or never finish while scrapes stay fast."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from backup.state import JobResult, StateDir
from exporters.app import Exporter
from exporters.collectors import stalwart_names
from mailsrv.config import parse_config
from tests.test_exporter_support import CannedServer, parse_samples, start_exporter, val, wait_for

LONG_MS = [1_000, 30_000, 300_000, 600_000, 1_800_000, 3_600_000, 18_000_000, 28_800_000, 43_200_000, 86_400_000, 604_800_000]
SIZE = [500, 1_000, 10_000, 100_000, 1_000_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000, 100_000_000, 500_000_000]


def stalwart_text(counters: dict[str, int], gauges: dict[str, float] | None = None,
                  histograms: dict[str, tuple[list[int], list[int], int]] | None = None) -> str:
    """A scrape in Stalwart's shape: unlabelled, counters without _total, per-bucket histograms ending in le="inf"."""
    out: list[str] = []
    for name, v in counters.items():
        out += [f"# HELP {name} {name.replace('_', ' ')}", f"# TYPE {name} counter", f"{name} {v}"]
    for name, g in (gauges or {}).items():
        out += [f"# HELP {name} {name}", f"# TYPE {name} gauge", f"{name} {int(g) if float(g).is_integer() else g}"]
    for name, (bounds, buckets, total) in (histograms or {}).items():
        out += [f"# HELP {name} {name}", f"# TYPE {name} histogram"]
        out += [f'{name}_bucket{{le="{b}"}} {v}' for b, v in zip([*map(str, bounds), "inf"], buckets, strict=True)]
        out += [f"{name}_sum {total}", f"{name}_count {sum(buckets)}"]
    return "\n".join(out) + "\n"


@pytest.fixture
def canned() -> Iterator[CannedServer]:
    server = CannedServer()
    yield server
    server.close()


def exporter_for(server: CannedServer, profile: str = "stalwart-0.15", names: str = "auto", **exporter: Any) -> Exporter:
    return Exporter(parse_config({
        "server": {"profile": profile, "url": server.url},
        "exporter": {"sources": ["mailserver"], "stalwart_metric_names": names, **exporter},
    }))


def scrape(exp: Exporter) -> tuple[str, dict[Any, float]]:
    exp.poll_all_once()
    text = generate_latest(exp.registry).decode()
    return text, parse_samples(text)


def test_stalwart_015_names_become_the_labelled_contract(canned: CannedServer) -> None:
    canned.body = stalwart_text(
        {"auth_failed": 7, "auth_success": 2, "smtp_relay_not_allowed": 2, "smtp_message_too_large": 1, "queue_queue_message": 5,
         "queue_queue_message_authenticated": 4, "queue_queue_dsn": 1, "delivery_delivered": 3, "queue_rescheduled": 6,
         "security_authentication_ban": 1, "smtp_dmarc_fail": 2, "smtp_connection_start": 9, "message_ingest_spam": 2},
        {"smtp_active_connections": 3, "delivery_active_connections": 1, "user_count": 10, "domain_count": 2, "server_memory": 123456789},
        {"delivery_total_time": (LONG_MS, [2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 90_000),
         "message_size": (SIZE, [0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0], 20_000)},
    )
    text, s = scrape(exporter_for(canned))
    assert val(s, "mail_exporter_source_up", source="mailserver") == 1
    assert val(s, "mail_auth_attempts_total", result="failed") == 7
    assert val(s, "mail_auth_attempts_total", result="success") == 2
    assert val(s, "mail_smtp_rejections_total", reason="relay_not_allowed") == 2
    assert val(s, "mail_smtp_rejections_total", reason="message_too_large") == 1
    assert val(s, "mail_messages_received_total", kind="inbound") == 5
    assert val(s, "mail_messages_received_total", kind="submission") == 4
    assert val(s, "mail_messages_generated_total", kind="dsn") == 1
    assert val(s, "mail_queue_messages_queued_total") == 10
    assert val(s, "mail_deliveries_total", result="delivered") == 3
    assert val(s, "mail_deliveries_total", result="deferred") == 6
    assert val(s, "mail_security_bans_total", kind="authentication") == 1
    assert val(s, "mail_sender_auth_checks_total", check="dmarc", result="fail") == 2
    assert val(s, "mail_connections_total", protocol="smtp") == 9
    assert val(s, "mail_messages_ingested_total", result="spam") == 2
    assert val(s, "mail_active_connections", protocol="smtp") == 3
    assert val(s, "mail_active_connections", protocol="delivery") == 1
    assert val(s, "mail_users") == 10 and val(s, "mail_server_memory_bytes") == 123456789
    assert val(s, "mail_server_queued_messages") is None  # Community Edition: no queue_count gauge, none invented
    # per-bucket milliseconds -> cumulative seconds with +Inf
    assert val(s, "mail_delivery_duration_seconds_bucket", le="1.0") == 2
    assert val(s, "mail_delivery_duration_seconds_bucket", le="30.0") == 3
    assert val(s, "mail_delivery_duration_seconds_bucket", le="604800.0") == 3
    assert val(s, "mail_delivery_duration_seconds_bucket", le="+Inf") == 4
    assert val(s, "mail_delivery_duration_seconds_sum") == 90.0
    assert val(s, "mail_delivery_duration_seconds_count") == 4
    assert val(s, "mail_message_size_bytes_bucket", kind="inbound", le="1000.0") == 1
    assert val(s, "mail_message_size_bytes_bucket", kind="inbound", le="10000.0") == 4
    assert val(s, "mail_message_size_bytes_sum", kind="inbound") == 20_000
    assert val(s, "mail_exporter_server_metric_names_info", scheme="stalwart-0.15", how="configured") == 1
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_stalwart_016_names_are_detected(canned: CannedServer) -> None:
    canned.body = stalwart_text({"queue_message_queued": 5, "queue_authenticated_message_queued": 4, "queue_dsn_queued": 1,
                                 "http_connection_start": 6, "smtp_relay_not_allowed": 2, "auth_failed": 3})
    _, s = scrape(exporter_for(canned, "stalwart-0.16"))
    assert val(s, "mail_exporter_server_metric_names_info", scheme="stalwart-0.16.12", how="detected") == 1
    assert val(s, "mail_messages_received_total", kind="inbound") == 5
    assert val(s, "mail_messages_received_total", kind="submission") == 4
    assert val(s, "mail_messages_generated_total", kind="dsn") == 1
    assert val(s, "mail_connections_total", protocol="http") == 6
    assert val(s, "mail_smtp_rejections_total", reason="relay_not_allowed") == 2
    assert val(s, "mail_auth_attempts_total", result="failed") == 3


def test_shifted_counter_names_of_016_0_to_016_11(canned: CannedServer) -> None:
    # Derived from Stalwart's enums_impl.rs (v0.16.0 ... v0.16.11): the counter of event E was named after
    # EventType::variants()[E.to_id()].
    shifted = stalwart_names.SHIFTED_016
    assert shifted["smtp_relay_not_allowed"] == "smtp_message_too_large"
    assert shifted["auth_warning"] == "auth_failed"
    assert shifted["resource_bad_parameters"] == "queue_message_queued"
    assert shifted["security_authentication_ban"] == "queue_rescheduled"
    assert len(shifted) == 312 and len(set(shifted.values())) == 312

    # What a v0.16.5 server exports after 3 oversized messages, 4 failed logins, 5 inbound messages, 2 retries
    canned.body = stalwart_text({"smtp_relay_not_allowed": 3, "auth_warning": 4, "resource_bad_parameters": 5,
                                 "security_authentication_ban": 2})
    for names, how in (("auto", "detected"), ("0.16.0", "configured")):
        _, s = scrape(exporter_for(canned, "stalwart-0.16", names))
        assert val(s, "mail_exporter_server_metric_names_info", scheme="stalwart-0.16.0", how=how) == 1
        assert val(s, "mail_smtp_rejections_total", reason="message_too_large") == 3
        assert val(s, "mail_smtp_rejections_total", reason="relay_not_allowed") == 0
        assert val(s, "mail_auth_attempts_total", result="failed") == 4
        assert val(s, "mail_messages_received_total", kind="inbound") == 5
        assert val(s, "mail_deliveries_total", result="deferred") == 2
        assert val(s, "mail_security_bans_total", kind="authentication") == 0

    # Names that fit both schemes: auto assumes the fixed names until evidence arrives
    canned.body = stalwart_text({"smtp_relay_not_allowed": 3})
    _, s = scrape(exporter_for(canned, "stalwart-0.16"))
    assert val(s, "mail_exporter_server_metric_names_info", scheme="stalwart-0.16.12", how="assumed") == 1
    assert val(s, "mail_smtp_rejections_total", reason="relay_not_allowed") == 3
    _, s = scrape(exporter_for(canned, "stalwart-0.16", "0.16.0"))
    assert val(s, "mail_smtp_rejections_total", reason="message_too_large") == 3


def test_counter_resets_and_absent_series(canned: CannedServer) -> None:
    exp = exporter_for(canned)
    canned.body = stalwart_text({})  # a fresh server: no counter has happened yet, no histogram observed
    _, s = scrape(exp)
    assert val(s, "mail_auth_attempts_total", result="failed") == 0
    assert val(s, "mail_smtp_rejections_total", reason="relay_not_allowed") == 0
    assert val(s, "mail_delivery_duration_seconds_count") == 0
    assert val(s, "mail_delivery_duration_seconds_bucket", le="604800.0") == 0
    assert val(s, "mail_active_connections", protocol="smtp") == 0

    hist = {"delivery_total_time": (LONG_MS, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3], 4_000_000_000)}
    steps = [  # (auth_failed reported by the server, histogram present?, expected total, expected histogram count)
        (10, True, 10, 4),
        (3, False, 13, 4),  # restart: counter fell, histogram vanished
        (None, False, 13, 4),  # counter absent after the restart
        (2, True, 15, 8),  # new events after the restart
    ]
    for raw, with_hist, total, count in steps:
        canned.body = stalwart_text({"auth_failed": raw} if raw is not None else {}, None, hist if with_hist else None)
        _, s = scrape(exp)
        assert val(s, "mail_auth_attempts_total", result="failed") == total, (raw, total)
        assert val(s, "mail_delivery_duration_seconds_count") == count
        assert val(s, "mail_delivery_duration_seconds_bucket", le="+Inf") == count
    assert val(s, "mail_delivery_duration_seconds_bucket", le="1.0") == 2
    assert math.isclose(val(s, "mail_delivery_duration_seconds_sum") or 0, 8_000_000.0)


def test_unreachable_and_unauthorized_metrics_endpoint(canned: CannedServer, tmp_path: Path) -> None:
    canned.status, canned.body = 401, "no"
    exp = exporter_for(canned)
    _, s = scrape(exp)
    assert val(s, "mail_exporter_source_up", source="mailserver") == 0
    assert val(s, "mail_exporter_source_poll_errors_total", source="mailserver") == 1
    assert "rejected the credentials" in exp.polled[0].health.last_error
    assert exp.polled[0].health.last_error_kind == "auth"
    assert val(s, "mail_auth_attempts_total", result="failed") is None  # nothing served before a first success


def test_a_hanging_source_keeps_scrapes_fast(canned: CannedServer, tmp_path: Path) -> None:
    StateDir(tmp_path / "state").write(JobResult(job="run", subject="all", status="success", started=1.0, finished=2.0))
    canned.body = stalwart_text({"auth_failed": 1})
    exp = start_exporter(tmp_path / "exp", {
        "server": {"profile": "stalwart-0.15", "url": canned.url},
        "state": {"dir": str(tmp_path / "state")},
        "exporter": {"sources": ["mailserver", "backups"], "mailserver_interval": 0.3, "mailserver_timeout": 2.0,
                     "backups_interval": 0.3},
    })
    try:
        wait_for(lambda: val(exp.scrape(), "mail_exporter_source_up", source="mailserver") == 1)
        canned.hang.set()  # the server now accepts connections and never answers
        slowest = 0.0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            s = exp.scrape()
            slowest = max(slowest, time.monotonic() - t0)
            time.sleep(0.1)
        assert slowest < 1.0, slowest  # a scrape that waited for the source would take its 2 s timeout
        assert val(s, "mail_exporter_source_up", source="mailserver") == 0
        assert (val(s, "mail_exporter_source_poll_errors_total", source="mailserver") or 0) >= 1
        assert val(s, "mail_exporter_source_up", source="backups") == 1
        assert val(s, "mail_auth_attempts_total", result="failed") == 1  # last good values stay served
        canned.hang.clear()
        wait_for(lambda: val(exp.scrape(), "mail_exporter_source_up", source="mailserver") == 1)
    finally:
        exp.stop()


def test_a_poll_that_never_finishes_marks_the_source_down(canned: CannedServer, tmp_path: Path) -> None:
    """Every page answers in time, but the listing never ends: the overdue poll alone makes the source down."""
    (tmp_path / "admin.pw").write_text("pw\n")
    state = {"endless": False}

    def queue_api(path: str) -> tuple[int, str]:
        if not path.startswith("/api/queue/messages"):
            return 404, "{}"
        if state["endless"]:
            time.sleep(0.3)
            item = {"id": time.monotonic_ns(), "return_path": "a@x", "created": "2026-01-01T00:00:00Z", "size": 10,
                    "recipients": [{"address": "b@y.example", "queue": "default", "status": "scheduled"}]}
            return 200, json.dumps({"data": {"items": [item], "total": 10**9, "status": True}})
        return 200, json.dumps({"data": {"items": [], "total": 0, "status": True}})

    canned.handler = queue_api
    exp = start_exporter(tmp_path / "exp", {
        "server": {"profile": "stalwart-0.15", "url": canned.url, "admin_password_file": str(tmp_path / "admin.pw")},
        "exporter": {"sources": ["queue"], "queue_interval": 0.3, "queue_timeout": 1.5, "queue_page_size": 1},
    })
    try:
        wait_for(lambda: val(exp.scrape(), "mail_exporter_source_up", source="queue") == 1)
        state["endless"] = True
        s = wait_for(lambda: (lambda s: s if val(s, "mail_exporter_source_up", source="queue") == 0 else None)(exp.scrape()), timeout=6)
        polls = val(s, "mail_exporter_source_polls_total", source="queue")
        assert val(s, "mail_exporter_source_poll_errors_total", source="queue") == 1  # counted once, while still running
        time.sleep(1.0)
        s2 = exp.scrape()
        assert val(s2, "mail_exporter_source_polls_total", source="queue") == polls  # the poll is indeed still running
        assert val(s2, "mail_exporter_source_poll_errors_total", source="queue") == 1
        assert val(s2, "mail_queue_messages", status="scheduled") == 0  # the last complete listing
    finally:
        exp.stop()
