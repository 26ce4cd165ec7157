"""A live monitoring stack for the dashboard and alert tests: mailsrv with real traffic, mail-exporter, Prometheus.

* mailsrv relays through a loopback smarthost that accepts ``ok.example``, answers 451 for ``slow.example`` (the
  queue grows) and 550 for ``bad.example`` (bounces); its TLS certificate expires in 10 days.
* ``Traffic`` sends mail (submission, inbound, local), relay attempts, unknown recipients, oversized messages,
  failed logins from other loopback addresses (127.0.0.2 to .9, which get banned), JMAP requests over a limit.
* Backup job results: a real ``mail-backup export`` of alice and bob, plus ship/prune/check/drill results for two
  targets and an account whose backups stopped 30 hours ago, written with ``backup.state.StateDir``.
* Prometheus (Debian's /usr/bin/prometheus) scrapes mail-exporter every second and evaluates the alert rules.

``python -m tests.dashboards_stack --minutes 8 --out docs/img`` runs the stack with traffic and renders every
dashboard into ``docs/img/dashboard-<name>.png``.
"""

from __future__ import annotations

import argparse
import os
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from aiosmtpd.controller import Controller

from backup.state import JobResult, StateDir
from tests.conftest import USER_PASSWORD, MailsrvProc, free_port, start_mailsrv, write_toml
from tests.test_exporter_support import ExporterProc, make_cert, start_exporter, wait_for

EXPORTER_JOB = "mail-exporter"
SCRAPE = "1s"
HOUR = 3600.0


# -- the smarthost -----------------------------------------------------------------------------------------
@dataclass
class Smarthost:
    """Accepts ok.example, defers slow.example (451), refuses bad.example (550); ``accept_all`` drains the queue."""

    accept_all: bool = False
    delivered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        domain = address.rpartition("@")[2].lower()
        if not self.accept_all and domain == "slow.example":
            return "451 4.3.0 Try again later"
        if not self.accept_all and domain == "bad.example":
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.delivered += len(envelope.rcpt_tos)
        return "250 Message accepted"


@contextmanager
def smarthost() -> Iterator[tuple[Smarthost, int]]:
    handler = Smarthost()
    port = free_port()
    ctl = Controller(handler, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield handler, port
    finally:
        ctl.stop()


# -- Prometheus ------------------------------------------------------------------------------------------
@dataclass
class PrometheusProc:
    url: str
    proc: subprocess.Popen[bytes]
    dir: Path
    log: Path

    def api(self, path: str, **params: Any) -> Any:
        """``/api/v1/<path>``'s data; AssertionError with Prometheus's message on an error."""
        r = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = r.json()
        assert body.get("status") == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        data = self.api("query", query=expr, **({"time": at} if at else {}))
        return [{"metric": {}, "value": data["result"]}] if data["resultType"] == "scalar" else list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_prometheus(base: Path, targets: list[str], rule_files: list[Path], alertmanager: str | None = None,
                     scrape: str = SCRAPE) -> PrometheusProc:
    """/usr/bin/prometheus on a run-time port, TSDB in ``base``, scraping ``targets`` as job mail-exporter."""
    base.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape, "evaluation_interval": scrape, "scrape_timeout": scrape},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": EXPORTER_JOB, "static_configs": [{"targets": targets}]}],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    (base / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = base / "prometheus.log"
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={base / 'prometheus.yml'}", f"--storage.tsdb.path={base / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--rules.alert.resend-delay=2s", "--log.level=warn"],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT,
    )
    prom = PrometheusProc(f"http://127.0.0.1:{port}", proc, base, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with suppress(requests.RequestException):
            return requests.get(f"{prom.url}/-/ready", timeout=2).status_code == 200
        return False

    wait_for(ready, timeout=30)
    wait_for(lambda: all(t["health"] == "up" for t in prom.api("targets")["activeTargets"]) and prom.query("up"), timeout=40,
             interval=0.25)
    return prom


# -- traffic ---------------------------------------------------------------------------------------------------
def _message(sender: str, to: str, subject: str, size: int = 0) -> bytes:
    body = ("a line of ordinary mail text\r\n" * (size // 30 + 1))[:size] if size else "hello\r\n"
    return f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{body}".encode()


class Traffic(threading.Thread):
    """Mail and abuse against ``srv``, one round every ``pause`` seconds until stopped (or ``rounds`` done).

    ``burst`` (round numbers) adds a wave of failed logins and relay attempts, so pictures show a spike.
    """

    def __init__(self, srv: MailsrvProc, pause: float = 0.5, burst: Callable[[int], bool] | None = None) -> None:
        super().__init__(daemon=True)
        self.srv, self.pause, self.burst = srv, pause, burst or (lambda n: False)
        self.stopped = threading.Event()
        self.rounds = 0
        self.errors: list[str] = []

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.round(self.rounds)
            except (OSError, smtplib.SMTPException, requests.RequestException) as exc:
                self.errors.append(f"round {self.rounds}: {exc!r}")
            self.rounds += 1
            self.stopped.wait(self.pause)

    def round(self, n: int) -> None:
        every = lambda k, r=0: n % k == r  # noqa: E731
        with self._submission() as c:
            c.sendmail("alice@example.org", [f"user{n % 7}@ok.example"], _message("alice@example.org", "x@ok.example", f"ok {n}"))
            if every(3):
                c.sendmail("alice@example.org", [f"user{n % 5}@slow.example"], _message("alice@example.org", "x@slow.example", f"slow {n}"))
            if every(5, 1):
                c.sendmail("alice@example.org", ["nobody@bad.example"], _message("alice@example.org", "nobody@bad.example", f"bad {n}"))
            if every(2, 1):
                c.sendmail("alice@example.org", ["bob@example.org"], _message("alice@example.org", "bob@example.org", f"local {n}"))
        with smtplib.SMTP("127.0.0.1", self.srv.smtp_port, timeout=15) as c:
            c.ehlo("sender.example.net")
            if every(2):
                news = "news@sender.example.net"
                c.sendmail(news, ["bob@example.org"], _message(news, "bob@example.org", f"in {n}"))
            repeats = 6 if self.burst(n) else 1 if every(4, 1) else 0
            for _ in range(repeats):
                c.mail("spam@spammer.test")
                c.rcpt("victim@elsewhere.test")  # 554 relay not allowed
                c.rset()
            if every(6, 2):
                c.mail("someone@sender.example.net")
                c.rcpt("ghost@example.org")  # 550 mailbox does not exist
                c.rset()
            if every(9, 3):
                c.mail("big@sender.example.net")
                if c.rcpt("bob@example.org")[0] == 250:
                    c.data(_message("big@sender.example.net", "bob@example.org", "too big", 30_000))
        for _ in range(12 if self.burst(n) else 1 if every(3, 1) else 0):
            self._failed_login(f"127.0.0.{2 + (n % 8)}")
        if every(7, 4):
            self._too_many_calls()
        requests.get(f"{self.srv.url}/jmap/session", auth=("alice", USER_PASSWORD), timeout=10)

    @contextmanager
    def _submission(self) -> Iterator[smtplib.SMTP]:
        c = smtplib.SMTP("127.0.0.1", self.srv.submission_port, timeout=15)
        try:
            c.ehlo("client.example")
            c.starttls(context=ssl.create_default_context(cafile=str(self.srv.settings["tls_cert_file"])))
            c.ehlo("client.example")
            c.login("alice", USER_PASSWORD)
            yield c
        finally:
            with suppress(OSError, smtplib.SMTPException):
                c.quit()

    def _failed_login(self, source: str) -> None:
        """SMTP AUTH with a wrong password from another loopback address (which mailsrv may ban)."""
        with suppress(OSError, smtplib.SMTPException):
            with smtplib.SMTP("127.0.0.1", self.srv.submission_port, timeout=10, source_address=(source, 0)) as c:
                c.ehlo("guesser.test")
                c.starttls(context=ssl.create_default_context(cafile=str(self.srv.settings["tls_cert_file"])))
                c.ehlo("guesser.test")
                c.login("alice", "guessed-wrong")

    def _too_many_calls(self) -> None:
        """A JMAP request over maxCallsInRequest (a limit), from 127.0.0.1 with the right password."""
        calls = [["Core/echo", {}, f"c{i}"] for i in range(20)]
        requests.post(f"{self.srv.url}/jmap/", json={"using": ["urn:ietf:params:jmap:core"], "methodCalls": calls},
                      auth=("alice", USER_PASSWORD), timeout=10)


# -- backups ---------------------------------------------------------------------------------------------------
def mail_backup(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from backup.cli import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIDECAR_")}
    return subprocess.run([sys.executable, "-c", code, "--config", str(config), *args], capture_output=True, text=True, env=env,
                          timeout=300)


def backup_config(base: Path, srv: MailsrvProc, state: Path) -> Path:
    path = base / "backup.toml"
    write_toml(path, {
        "server": {"profile": "embedded", "url": srv.url, "admin_user": "admin", "admin_password_file": str(srv.dir / "admin.pw"),
                   "master_user": "master", "master_password_file": str(srv.dir / "master.pw")},
        "export": {"dir": str(base / "export")},
        "state": {"dir": str(state)},
    })
    return path


def write_target_results(state: Path, now: float) -> None:
    """Results of the jobs that need a backup repository, for two targets, and an account that stopped backing up."""
    s = StateDir(state)

    def job(job: str, subject: str, status: str, ago: float, took: float, **extra: Any) -> None:
        s.write(JobResult.model_validate({"job": job, "subject": subject, "status": status, "started": now - ago - took,
                                          "finished": now - ago, **extra}))

    job("export", "carol", "success", 30 * HOUR, 40, messages=800, bytes=40_000_000)
    job("export", "carol", "failed", 6 * HOUR, 5, errors=1, detail="cannot log in as carol")
    job("ship", "local", "success", 2 * HOUR, 95, bytes=180_000_000, snapshots=14)
    job("ship", "offsite", "success", 22 * HOUR, 400, bytes=150_000_000, snapshots=9)
    job("ship", "offsite", "partial", 2 * HOUR - 30, 600, bytes=60_000_000, errors=1, detail="upload interrupted", snapshots=9)
    job("prune", "local", "success", 2 * HOUR - 80, 20)
    job("check", "local", "success", 26 * HOUR - 240, 240, snapshots=14)
    job("check", "offsite", "success", 3 * 24 * HOUR - 900, 900)
    job("drill", "local", "success", 2 * 24 * HOUR - 300, 300, messages=120)
    job("drill", "offsite", "failed", 3 * HOUR - 420, 420, errors=3, detail="3 messages differ after restore")
    job("run", "all", "partial", 2 * HOUR - 90, 790)


# -- the whole stack -------------------------------------------------------------------------------------------
@dataclass
class Stack:
    srv: MailsrvProc
    sink: Smarthost
    exporter: ExporterProc
    prometheus: PrometheusProc
    traffic: Traffic
    backup_config: Path
    state: Path
    rules: Path


@contextmanager
def live_stack(base: Path, *, rules_text: str | None = None, alertmanager: str | None = None, pause: float = 0.5,
               burst: Callable[[int], bool] | None = None) -> Iterator[Stack]:
    """Everything above, started in ``base``; ``rules_text`` replaces the generated alert rules."""
    from dashboards.rules import render

    with ExitStack() as stack:
        sink, sink_port = stack.enter_context(smarthost())
        cert, _, _ = make_cert(base / "certs", "mail", days=10)
        srv = start_mailsrv(base / "mailsrv", smarthost=f"127.0.0.1:{sink_port}", tls_cert_file=str(cert.cert),
                            tls_key_file=str(cert.key), https_listen=f"127.0.0.1:{free_port()}", max_message_size=20_000,
                            auth_ban_failures=3, auth_ban_window=60, auth_ban_duration=8, queue_retry_initial=1.0,
                            queue_retry_max=10.0)
        stack.callback(srv.stop)
        srv.add_account("alice")
        srv.add_account("bob")
        state = base / "state"
        bconf = backup_config(base, srv, state)
        done = mail_backup(bconf, "export")
        if done.returncode != 0:
            raise RuntimeError(f"mail-backup export failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        write_target_results(state, time.time())
        (base / "probe.pw").write_text(USER_PASSWORD + "\n")
        https = srv.settings["https_listen"].rpartition(":")[2]
        exporter = start_exporter(base / "exporter", {
            "server": {"profile": "embedded", "url": srv.url, "admin_user": "admin", "admin_password_file": str(srv.dir / "admin.pw"),
                       "ca_file": str(cert.cert)},
            "state": {"dir": str(state)},
            "exporter": {
                "sources": ["mailserver", "queue", "backups", "tls"],
                "mailserver_interval": 1, "queue_interval": 1, "backups_interval": 1, "tls_interval": 2, "queue_top_domains": 3,
                "tls_endpoints": [f"smtp://127.0.0.1:{srv.smtp_port}", f"submission://127.0.0.1:{srv.submission_port}",
                                  f"https://127.0.0.1:{https}"],
                "probe": {"enabled": True, "submission": f"127.0.0.1:{srv.submission_port}", "user": "alice",
                          "password_file": str(base / "probe.pw"), "mail_from": "alice@example.org", "interval": 3, "timeout": 20},
            },
        })
        stack.callback(exporter.stop)
        rules = base / "mail-alerts.yml"
        rules.write_text(rules_text if rules_text is not None else render())
        prom = start_prometheus(base / "prometheus", [f"127.0.0.1:{exporter.port}"], [rules], alertmanager)
        stack.callback(prom.stop)
        traffic = Traffic(srv, pause, burst)
        traffic.start()
        stack.callback(traffic.stop)
        yield Stack(srv, sink, exporter, prom, traffic, bconf, state, rules)


def render_dashboards(prom_url: str, out_dir: Path, range_: str, scrape: str = SCRAPE) -> list[subprocess.CompletedProcess[str]]:
    """``mail-exporter dashboards render`` for every shipped dashboard into ``out_dir/dashboard-<name>.png``."""
    from dashboards import DASHBOARDS

    return [subprocess.run([sys.executable, "-m", "exporters", "dashboards", "render", "--prometheus", prom_url, "--dashboard", name,
                            "--out", str(out_dir / f"dashboard-{name}.png"), "--range", range_, "--scrape-interval", scrape],
                           capture_output=True, text=True, timeout=300) for name in DASHBOARDS]


def main() -> int:
    p = argparse.ArgumentParser(description="Run the live stack with traffic and render every dashboard.")
    p.add_argument("--minutes", type=float, default=8, help="how long traffic runs before the pictures are taken")
    p.add_argument("--out", type=Path, default=Path("docs/img"))
    p.add_argument("--workdir", type=Path, default=None, help="keep the stack's files here (default: a temp dir)")
    args = p.parse_args()
    import tempfile

    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="mailsidecar-stack-") as tmp:
        base = args.workdir or Path(tmp)
        started = time.monotonic()

        def burst(n: int) -> bool:  # a wave of abuse in the middle third of the run
            return seconds / 3 < time.monotonic() - started < seconds / 2

        with live_stack(base, burst=burst, pause=1.0) as st:
            print(f"stack up: Prometheus {st.prometheus.url}, mail-exporter {st.exporter.url}; traffic for {args.minutes:g} min")
            deadline = started + seconds
            while time.monotonic() < deadline:
                time.sleep(min(60.0, max(0.0, deadline - time.monotonic())))
                if time.monotonic() - started > seconds / 4:
                    mail_backup(st.backup_config, "export")  # fresh export results now and then
                print(f"  {int(time.monotonic() - started)}s: {st.traffic.rounds} traffic rounds, {len(st.traffic.errors)} errors")
            args.out.mkdir(parents=True, exist_ok=True)
            rc = 0
            for done in render_dashboards(st.prometheus.url, args.out, f"{max(1, round(args.minutes))}m"):
                print(done.stdout.strip() or done.stderr.strip())
                rc = rc or done.returncode
            return rc


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    sys.exit(main())
