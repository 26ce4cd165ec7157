"""Alerting end to end: a real queue backlog on a live mailsrv (a smarthost that answers 451) makes the shipped
MailQueueBacklog rule (threshold lowered to 2 messages, ``for: 5s``) fire in a real Prometheus, which sends it
to a real Alertmanager routed by dashboards/alertmanager.example.yml (receivers pointed at a loopback webhook),
which delivers it to the webhook; when the smarthost accepts again the queue drains and the resolution follows
the same way."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from dashboards import HERE
from dashboards.rules import Settings, render
from tests.conftest import free_port
from tests.dashboards_stack import EXPORTER_JOB, live_stack
from tests.test_exporter_support import wait_for

pytestmark = pytest.mark.slow


@dataclass
class Webhook:
    """A loopback HTTP server that records every Alertmanager notification (path = receiver)."""

    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.posts.append((self.path.strip("/"), body))
                self.send_response(200)
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def alerts(self, alertname: str, status: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(receiver, notification, alert) for every notified alert with that name and status."""
        with self.lock:
            return [(path, body, a) for path, body in self.posts for a in body["alerts"]
                    if a["labels"]["alertname"] == alertname and a["status"] == status]


def alertmanager_config(hook: str) -> dict[str, Any]:
    """The example configuration with every receiver sent to ``hook``/<receiver> and test-sized timings."""
    config = yaml.safe_load((HERE / "alertmanager.example.yml").read_text())
    config["global"] = {"resolve_timeout": "5m"}
    config["receivers"] = [{"name": r["name"], "webhook_configs": [{"url": f"{hook}/{r['name']}", "send_resolved": True}]}
                           for r in config["receivers"]]
    for route in [config["route"], *config["route"]["routes"]]:
        route.update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    return config


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, Webhook]]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "Alertmanager is not installed (Debian: apt-get install prometheus-alertmanager)"
    hook = Webhook()
    hook.start()
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(hook.url)))
    port = free_port()
    log = tmp_path / "alertmanager.log"
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'am'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(ready, timeout=30)
        yield url, hook
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        hook.httpd.shutdown()


def test_queue_backlog_travels_prometheus_alertmanager_webhook_and_resolves(tmp_path: Path,
                                                                            alertmanager: tuple[str, Webhook]) -> None:
    am_url, hook = alertmanager
    rules = render(Settings(queue_backlog_messages=2, queue_backlog_for="5s"))
    with live_stack(tmp_path / "stack", rules_text=rules, alertmanager=am_url.removeprefix("http://")) as st:
        instance = f"127.0.0.1:{st.exporter.port}"
        # slow.example answers 451: the deferred messages pile up until the threshold is crossed
        notified = wait_for(lambda: hook.alerts("MailQueueBacklog", "firing"), timeout=120, interval=0.5)
        receiver, body, alert = notified[0]
        assert receiver == "mail-pager" and body["receiver"] == "mail-pager"  # severity=critical → the pager route
        assert alert["labels"] == {"alertname": "MailQueueBacklog", "severity": "critical", "instance": instance, "job": EXPORTER_JOB}
        assert re.fullmatch(rf"\d+ messages waiting in the outbound queue of {re.escape(instance)}", alert["annotations"]["summary"])
        assert int(alert["annotations"]["summary"].split()[0]) > 2
        assert alert["annotations"]["runbook_url"] == "docs/operations.md#queue-backlog"
        assert body["groupLabels"] == {"alertname": "MailQueueBacklog", "instance": instance}
        queued = st.prometheus.query('sum(mail_queue_messages{status=~"scheduled|temp_fail"})')
        assert float(queued[0]["value"][1]) > 2
        in_am = requests.get(f"{am_url}/api/v2/alerts", params={"filter": 'alertname="MailQueueBacklog"'}, timeout=10).json()
        assert [a["status"]["state"] for a in in_am] == ["active"]
        # a warning from the same rule file takes the default route
        failed = wait_for(lambda: hook.alerts("MailBackupFailed", "firing"), timeout=60, interval=0.5)
        assert {r for r, _, _ in failed} == {"mail-team"}

        # the smarthost accepts again: the queue drains and the resolution is delivered too
        st.traffic.stop()
        st.sink.accept_all = True
        resolved = wait_for(lambda: hook.alerts("MailQueueBacklog", "resolved"), timeout=120, interval=0.5)
        assert resolved[0][0] == "mail-pager" and resolved[0][2]["labels"]["instance"] == instance
        assert st.prometheus.query('sum(mail_queue_messages{status=~"scheduled|temp_fail"}) > 2') == []
