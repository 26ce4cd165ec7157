"""mail-exporter against a live mailsrv with real traffic: failed logins over HTTP and SMTP AUTH, a refused
relay, an oversized message, a queue built by a smarthost that answers 451, STARTTLS certificates, counter
resets across a server restart, and ``promtool check metrics`` on a real scrape."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509

from backup.state import JobResult, StateDir
from tests.conftest import MailsrvProc, start_mailsrv
from tests.test_exporter_support import (
    DeferringSink,
    ExporterProc,
    Samples,
    deferring_smarthost,
    start_exporter,
    submission,
    val,
    wait_for,
)

QUEUED = {"a.example": 3, "b.example": 2}


@pytest.fixture(scope="module")
def sink() -> Iterator[tuple[DeferringSink, int]]:
    with deferring_smarthost() as s:
        yield s


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, sink: tuple[DeferringSink, int]) -> Iterator[MailsrvProc]:
    server = start_mailsrv(tmp_path_factory.mktemp("exp-live"), smarthost=f"127.0.0.1:{sink[1]}", max_message_size=10_000,
                           auth_ban_failures=50, queue_retry_initial=0.3, queue_retry_max=1.0,
                           jmap={"max_objects_in_get": 2})  # the v0.16 queue listing then needs several /get batches
    server.add_account("alice")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exp-live-state")
    StateDir(root).write(JobResult(job="export", subject="alice", status="success", started=1000.0, finished=1010.0, messages=3))
    return root


@pytest.fixture(scope="module")
def exporter(srv: MailsrvProc, state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProc]:
    exp = start_exporter(tmp_path_factory.mktemp("exp-live-exporter"), {
        "server": {"profile": "embedded", "url": srv.url, "admin_user": "admin", "admin_password_file": str(srv.dir / "admin.pw")},
        "state": {"dir": str(state_dir)},
        "exporter": {
            "mailserver_interval": 0.3, "queue_interval": 0.3, "backups_interval": 0.3, "tls_interval": 0.5, "queue_top_domains": 1,
            "tls_endpoints": [f"smtp://127.0.0.1:{srv.smtp_port}", f"submission://127.0.0.1:{srv.submission_port}"],
        },
    })
    wait_for(lambda: all(val(exp.scrape(), "mail_exporter_source_up", source=s) == 1 for s in ("mailserver", "queue", "backups", "tls")))
    yield exp
    exp.stop()


def counter(s: Samples, name: str, **labels: str) -> float:
    v = val(s, name, **labels)
    assert v is not None, (name, labels)
    return v


def test_logins_relays_and_oversized_messages(srv: MailsrvProc, exporter: ExporterProc) -> None:
    before = exporter.scrape()
    for _ in range(3):
        assert requests.get(f"{srv.url}/jmap/session", auth=("alice", "wrong"), timeout=10).status_code == 401
    with smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=15) as c:  # one AUTH PLAIN attempt
        c.starttls(context=ssl.create_default_context(cafile=str(srv.cert)))
        c.ehlo("client.example")
        c.user, c.password = "alice", "wrong-password"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.auth("PLAIN", c.auth_plain)
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=15) as c:
        c.ehlo("client.example")
        c.mail("sender@outside.test")
        assert c.rcpt("someone@far-away.test")[0] == 554
        c.rset()
        c.mail("sender@outside.test")
        assert c.rcpt("alice@example.org")[0] == 250
        assert c.data(b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * 200)[0] == 552

    def deltas() -> dict[str, float] | None:
        now = exporter.scrape()

        def delta(name: str, **labels: str) -> float:
            return counter(now, name, **labels) - counter(before, name, **labels)

        d = {
            "failed": delta("mail_auth_attempts_total", result="failed"),
            "relay": delta("mail_smtp_rejections_total", reason="relay_not_allowed"),
            "too_large": delta("mail_smtp_rejections_total", reason="message_too_large"),
        }
        return d if d["failed"] >= 4 and d["relay"] >= 1 and d["too_large"] >= 1 else None

    d = wait_for(deltas)
    assert d == {"failed": 4, "relay": 1, "too_large": 1}  # 3 over HTTP Basic + 1 SMTP AUTH
    now = exporter.scrape()
    assert counter(now, "mail_connections_total", protocol="smtp") >= 2
    assert counter(now, "mail_auth_attempts_total", result="success") >= 1  # the exporter's own admin login
    assert counter(now, "mail_smtp_rejections_total", reason="loop_detected") == 0  # never seen, still exported


def test_queue_depth_from_a_temp_failing_smarthost(srv: MailsrvProc, sink: tuple[DeferringSink, int], exporter: ExporterProc,
                                                   tmp_path: Path) -> None:
    with submission(srv) as c:
        for domain, n in QUEUED.items():
            for i in range(n):
                c.sendmail("alice@example.org", [f"user{i}@{domain}"],
                           f"From: alice@example.org\r\nTo: user{i}@{domain}\r\nSubject: q{i}\r\n\r\nhello\r\n".encode())
    total = sum(QUEUED.values())
    s = wait_for(lambda: (lambda s: s if val(s, "mail_queue_messages", status="temp_fail") == total else None)(exporter.scrape()))
    assert sink[0].attempts >= total
    assert val(s, "mail_queue_messages", status="scheduled") == 0
    assert val(s, "mail_queue_recipients", status="temp_fail") == total
    # bounded cardinality: top 1 domain, the rest folded into "other"
    assert val(s, "mail_queue_domain_recipients", domain="a.example", status="temp_fail") == 3
    assert val(s, "mail_queue_domain_recipients", domain="other", status="temp_fail") == 2
    assert val(s, "mail_queue_domain_recipients", domain="b.example", status="temp_fail") is None
    assert counter(s, "mail_queue_size_bytes") > 50 * total
    assert 0 < counter(s, "mail_queue_oldest_message_age_seconds") < 120
    assert val(s, "mail_queue_running") == 1
    # the server's own counters come from the mailserver source, polled on its own schedule
    s = wait_for(lambda: (lambda s: s if counter(s, "mail_deliveries_total", result="deferred") >= total else None)(exporter.scrape()))
    assert counter(s, "mail_messages_received_total", kind="submission") >= total
    assert counter(s, "mail_queue_messages_queued_total") >= total
    assert counter(s, "mail_delivery_attempts_total") >= total
    assert counter(s, "mail_delivery_errors_total", reason="rcpt_to_failed") >= total
    assert counter(s, "mail_delivery_duration_seconds_count") == 0  # nothing completed yet
    assert val(s, "mail_server_queued_messages") == total  # mailsrv's queue_count gauge

    # the same queue through the v0.16 JMAP dialect (x:QueuedMessage), which mailsrv also speaks
    exp16 = start_exporter(tmp_path / "v016", {
        "server": {"profile": "stalwart-0.16", "url": srv.url, "admin_user": "admin", "admin_password_file": str(srv.dir / "admin.pw")},
        "exporter": {"sources": ["queue"], "queue_interval": 0.3},
    })
    try:
        s16 = wait_for(lambda: (lambda s: s if val(s, "mail_queue_messages", status="temp_fail") == total else None)(exp16.scrape()))
        assert val(s16, "mail_exporter_source_up", source="queue") == 1
        assert val(s16, "mail_queue_recipients", status="temp_fail") == total
        assert val(s16, "mail_queue_domain_recipients", domain="b.example", status="temp_fail") == 2
        assert val(s16, "mail_queue_running") is None  # 0.16 has no running flag in the listing
    finally:
        exp16.stop()


def test_starttls_certificate_expiry_of_the_live_listeners(srv: MailsrvProc, exporter: ExporterProc) -> None:
    cert = x509.load_pem_x509_certificate(srv.cert.read_bytes())
    s = exporter.scrape()
    for port in (srv.smtp_port, srv.submission_port):
        ep = f"smtp://127.0.0.1:{srv.smtp_port}" if port == srv.smtp_port else f"submission://127.0.0.1:{srv.submission_port}"
        assert val(s, "mail_tls_endpoint_up", endpoint=ep) == 1
        assert val(s, "mail_tls_certificate_expiry_timestamp_seconds", endpoint=ep) == cert.not_valid_after_utc.timestamp()
        assert val(s, "mail_tls_certificate_verified", endpoint=ep) == 0  # self-signed, no ca_file configured


def test_backups_source_is_served_beside_the_server(exporter: ExporterProc) -> None:
    s = exporter.scrape()
    assert val(s, "mail_backup_last_success_timestamp_seconds", job="export", subject="alice") == 1010.0
    assert val(s, "mail_backup_last_messages", job="export", subject="alice") == 3


def test_promtool_check_metrics_on_a_live_scrape(exporter: ExporterProc) -> None:
    text = exporter.get().text
    assert "mail_queue_messages" in text and "mail_auth_attempts_total" in text
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr


def test_server_restart_keeps_counters_monotonic(tmp_path: Path) -> None:
    server = start_mailsrv(tmp_path / "srv", auth_ban_failures=50)
    exp = start_exporter(tmp_path / "exp", {
        "server": {"profile": "embedded", "url": server.url, "admin_password_file": str(server.dir / "admin.pw")},
        "exporter": {"sources": ["mailserver"], "mailserver_interval": 0.2},
    })
    try:
        for _ in range(3):
            requests.get(f"{server.url}/jmap/session", auth=("nobody", "wrong"), timeout=10)
        wait_for(lambda: val(exp.scrape(), "mail_auth_attempts_total", result="failed") == 3)
        server.stop(9)  # counters live in memory: they restart from 0 and vanish until the next event
        server.start()
        wait_for(lambda: val(exp.scrape(), "mail_exporter_source_up", source="mailserver") == 1)
        assert val(exp.scrape(), "mail_auth_attempts_total", result="failed") == 3
        requests.get(f"{server.url}/jmap/session", auth=("nobody", "wrong"), timeout=10)
        wait_for(lambda: val(exp.scrape(), "mail_auth_attempts_total", result="failed") == 4)
    finally:
        exp.stop()
        server.stop()
