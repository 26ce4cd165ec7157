"""/metrics/prometheus after real traffic: Stalwart's names, types and quirks, optional Basic auth, health probes.

One server for the module: metrics behind Basic auth, a ban after 3 failed logins, an SMTP rate limit of
5 messages per minute and client IP, 10 kB messages at most, and a smarthost (an in-test SMTP sink that
defers the first attempt for ``retry@…``). Traffic comes from distinct loopback addresses (127.0.0.x) so
bans and rate limits hit only the client meant to trigger them.
"""

from __future__ import annotations

import base64
import http.client
import smtplib
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families

from mailsrv.server import metrics as metrics_module
from tests.conftest import USER_PASSWORD, MailsrvProc, free_port, start_mailsrv

METRICS_AUTH = ("prom", "scrape-secret")

# Every name the sidecar relies on, with its Prometheus type (Stalwart v0.15 semantics).
REQUIRED_COUNTERS = [
    "auth_success", "auth_failed", "security_authentication_ban", "smtp_relay_not_allowed",
    "smtp_mailbox_does_not_exist", "smtp_message_too_large", "smtp_rate_limit_exceeded", "queue_queue_message",
    "queue_rescheduled", "delivery_delivered", "delivery_completed", "message_ingest_ham",
]
REQUIRED_HISTOGRAMS = ["delivery_total_time", "message_size"]
REQUIRED_GAUGES = ["queue_count", "user_count", "domain_count", "smtp_active_connections", "http_active_connections",
                   "delivery_active_connections", "imap_active_connections", "pop3_active_connections",
                   "sieve_active_connections", "server_memory"]


@dataclass
class Sink:
    """aiosmtpd handler of the smarthost: defers ``retry@…`` once, accepts everything else."""

    port: int = 0
    deferred: set[str] = field(default_factory=set)
    received: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address.startswith("retry@") and address not in self.deferred:
            self.deferred.add(address)
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 2.0.0 Queued"


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    handler = Sink()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    handler.port = controller.port
    yield handler
    controller.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[MailsrvProc]:
    base = tmp_path_factory.mktemp("metrics")
    (base / "metrics.pw").write_text(METRICS_AUTH[1] + "\n")
    server = start_mailsrv(
        base, metrics_user=METRICS_AUTH[0], metrics_password_file=str(base / "metrics.pw"), auth_ban_failures=3,
        smtp_rate_limit=5, max_message_size=10_000, smarthost=f"127.0.0.1:{sink.port}",
    )
    for name in ("alice", "bob"):  # created through the management API (quicker than the CLI)
        r = requests.post(f"{server.url}/api/principal", auth=server.admin, timeout=10,
                          json={"name": name, "secrets": [USER_PASSWORD], "emails": [f"{name}@example.org"]})
        assert isinstance(r.json()["data"], int)
        server.accounts[name] = USER_PASSWORD
    yield server
    server.stop()


def scrape(srv: MailsrvProc) -> tuple[str, dict[str, Any]]:
    r = requests.get(f"{srv.url}/metrics/prometheus", auth=METRICS_AUTH, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    return r.text, {f.name: f for f in text_string_to_metric_families(r.text)}


def value(families: dict[str, Any], name: str) -> float:
    """A counter's or gauge's value (0 when the series is absent, as Stalwart emits counters lazily)."""
    fam = families.get(name)
    return float(fam.samples[0].value) if fam is not None else 0.0


def basic_get(srv: MailsrvProc, source_ip: str, path: str, user: str, password: str) -> int:
    """GET ``path`` from a chosen loopback source address; returns the status."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10, source_address=(source_ip, 0))
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        conn.request("GET", path, headers={"Authorization": f"Basic {token}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def smtp_from(srv: MailsrvProc, source_ip: str, port: int | None = None) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port or srv.smtp_port, timeout=15, source_address=(source_ip, 0))
    client.ehlo("client.example")
    return client


def test_every_required_name_is_a_stalwart_metric() -> None:
    for name in REQUIRED_COUNTERS:
        assert name in metrics_module.COUNTERS, name
    for name in REQUIRED_HISTOGRAMS:
        assert name in metrics_module.HISTOGRAMS, name
    for name in REQUIRED_GAUGES:
        assert name in metrics_module.GAUGES, name
    assert metrics_module.COUNTERS["auth_failed"] == "Authentication failed"
    assert metrics_module.HISTOGRAMS["delivery_total_time"][0][-1] == 604_800_000  # one week, in ms


def test_metrics_basic_auth_and_health(srv: MailsrvProc) -> None:
    anonymous = requests.get(f"{srv.url}/metrics/prometheus", timeout=10)
    assert anonymous.status_code == 401 and "Basic" in anonymous.headers["WWW-Authenticate"]
    assert requests.get(f"{srv.url}/metrics/prometheus", auth=("prom", "wrong"), timeout=10).status_code == 401
    assert requests.get(f"{srv.url}/metrics/prometheus", auth=("admin", "scrape-secret"), timeout=10).status_code == 401
    text, families = scrape(srv)
    assert "# TYPE user_count gauge" in text and families["user_count"].type == "gauge"
    assert requests.get(f"{srv.url}/healthz/live", timeout=10).status_code == 200
    assert requests.get(f"{srv.url}/healthz/ready", timeout=10).status_code == 200


def test_scrape_after_real_traffic(srv: MailsrvProc, sink: Sink) -> None:
    _, before = scrape(srv)
    assert "security_authentication_ban" not in before  # counters appear only once non-zero

    # HTTP: two failed Basic logins from one client (below the ban threshold), one success, one 403
    assert basic_get(srv, "127.0.0.3", "/jmap/session", "alice", "wrong") == 401
    assert basic_get(srv, "127.0.0.3", "/jmap/session", "nobody", "wrong") == 401
    assert basic_get(srv, "127.0.0.3", "/jmap/session", "alice", USER_PASSWORD) == 200
    assert basic_get(srv, "127.0.0.3", "/api/principal", "alice", USER_PASSWORD) == 403

    # inbound SMTP: unknown mailbox, relay attempt, one good message, one too large
    with smtp_from(srv, "127.0.0.5") as client:
        client.mail("sender@outside.test")
        assert client.rcpt("nobody@example.org")[0] == 550
        assert client.rcpt("someone@far-away.test")[0] == 554
        assert client.rcpt("bob@example.org")[0] == 250
        assert client.data(b"From: sender@outside.test\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello bob\r\n")[0] == 250
        client.mail("sender@outside.test")
        client.rcpt("bob@example.org")
        assert client.data(b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * 200)[0] == 552

    # rate limit: the sixth MAIL FROM within a minute from one client is refused
    with smtp_from(srv, "127.0.0.4") as client:
        codes = []
        for _ in range(6):
            codes.append(client.mail("sender@outside.test")[0])
            client.rset()
        assert codes == [250] * 5 + [452]

    # submission to a foreign address: deferred once by the smarthost, then delivered
    with smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=15) as client:
        client.ehlo("client.example")
        ctx = ssl.create_default_context(cafile=str(srv.cert))
        ctx.check_hostname = False
        client.starttls(context=ctx)
        client.ehlo("client.example")
        client.login("alice", USER_PASSWORD)
        client.sendmail("alice@example.org", ["retry@far-away.test"],
                        b"From: alice@example.org\r\nTo: retry@far-away.test\r\nSubject: out\r\n\r\nhello\r\n")
    deadline = time.monotonic() + 20
    while not sink.received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sink.received == [("alice@example.org", ["retry@far-away.test"])]
    deadline = time.monotonic() + 10
    while value(scrape(srv)[1], "delivery_completed") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)

    text, after = scrape(srv)
    delta = {name: value(after, name) - value(before, name) for name in after}
    assert delta["auth_failed"] == 2
    assert delta["auth_success"] >= 2  # the JMAP login and the API call (plus submission AUTH)
    assert delta["security_unauthorized"] == 1
    for name, at_least in [("smtp_mailbox_does_not_exist", 1), ("smtp_relay_not_allowed", 1),
                           ("smtp_message_too_large", 1), ("smtp_rate_limit_exceeded", 1), ("queue_queue_message", 1),
                           ("queue_queue_message_authenticated", 1), ("queue_rescheduled", 1),
                           ("delivery_delivered", 1), ("delivery_completed", 1), ("message_ingest_ham", 1)]:
        assert delta.get(name, 0) >= at_least, (name, delta.get(name))

    # types and Stalwart's shapes: no labels, counters without _total in the text, ms/bytes histograms
    for name in [n for n in REQUIRED_COUNTERS if n != "security_authentication_ban"]:  # the ban comes later
        assert after[name].type == "counter" and f"\n{name} " in text and f"{name}_total" not in text
        assert all(not s.labels for s in after[name].samples)
    for name in REQUIRED_GAUGES:
        assert after[name].type == "gauge", name
    assert value(after, "user_count") == 2 and value(after, "domain_count") == 1
    assert value(after, "queue_count") == 0 and value(after, "server_memory") > 1_000_000
    for name in REQUIRED_HISTOGRAMS:
        fam = after[name]
        assert fam.type == "histogram"
        buckets = [s for s in fam.samples if s.name == f"{name}_bucket"]
        count = next(s.value for s in fam.samples if s.name == f"{name}_count")
        assert count >= 1 and buckets[-1].labels["le"] == "inf"
        assert sum(b.value for b in buckets) == count  # per-bucket counts, not cumulative (as Stalwart)
    sizes = next(s.value for s in after["message_size"].samples if s.name == "message_size_sum")
    assert sizes >= 60  # bytes, whole units

    findings = promtool_findings(text)
    counters = {n for n, f in after.items() if f.type == "counter"}
    expected = {f'{n} counter metrics should have "_total" suffix' for n in counters}
    expected |= {f"{n} non-histogram and non-summary metrics should not have \"_count\" suffix"
                 for n in ("user_count", "domain_count", "queue_count")}
    assert findings, "promtool should flag Stalwart's counter names"
    assert set(findings) <= expected, set(findings) - expected
    assert 'auth_failed counter metrics should have "_total" suffix' in findings


def promtool_findings(text: str) -> list[str]:
    """``promtool check metrics`` lint findings; fails the test on a parse error."""
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode in (0, 3), (proc.returncode, lines)  # 3 = lint findings only; 1 = parse error
    assert not any("error while linting" in line or "parse" in line.lower() for line in lines), lines
    return lines


def test_authentication_ban(srv: MailsrvProc) -> None:
    _, before = scrape(srv)
    statuses = [basic_get(srv, "127.0.0.2", "/jmap/session", "bob", f"wrong-{i}") for i in range(3)]
    assert statuses == [401, 401, 401]
    # the third failure banned 127.0.0.2: even the right password is refused now
    assert basic_get(srv, "127.0.0.2", "/jmap/session", "bob", USER_PASSWORD) == 403
    assert basic_get(srv, "127.0.0.6", "/jmap/session", "bob", USER_PASSWORD) == 200
    _, after = scrape(srv)
    assert value(after, "security_authentication_ban") - value(before, "security_authentication_ban") == 1
    assert value(after, "auth_failed") - value(before, "auth_failed") == 3
    assert after["security_authentication_ban"].type == "counter"
