"""Helpers for the mail-exporter tests: a real ``mail-exporter serve`` process, scrape parsing, certificates,
a temp-failing smarthost, and tiny loopback HTTP servers that serve canned metrics or hang."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import USER_PASSWORD, MailsrvProc, free_port, write_toml

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def val(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def wait_for(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


# -- mail-exporter as a process ----------------------------------------------------------------------
@dataclass
class ExporterProc:
    config: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    scheme: str = "http"
    auth: tuple[str, str] | None = None
    verify: str | bool = True

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def get(self, path: str = "/metrics", **kw: Any) -> requests.Response:
        kw.setdefault("auth", self.auth)
        kw.setdefault("verify", self.verify)
        return requests.get(self.url + path, timeout=10, **kw)

    def scrape(self) -> Samples:
        r = self.get()
        assert r.status_code == 200, r.text
        return parse_samples(r.text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def exporter_config(base: Path, sections: dict[str, dict[str, Any]]) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    path = base / "exporter.toml"
    write_toml(path, sections)
    return path


def start_exporter(base: Path, sections: dict[str, dict[str, Any]], *, env: dict[str, str] | None = None,
                   scheme: str = "http", auth: tuple[str, str] | None = None, verify: str | bool = True) -> ExporterProc:
    """``mail-exporter serve`` with ``sections`` (``[exporter] listen`` is filled in) on a run-time port."""
    port = free_port()
    sections = {k: dict(v) for k, v in sections.items()}
    sections.setdefault("exporter", {})["listen"] = f"127.0.0.1:{port}"
    config = exporter_config(base, sections)
    log = base / "exporter.log"
    proc = subprocess.Popen([sys.executable, "-m", "exporters", "--config", str(config), "serve", "--log-level", "debug"],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    exp = ExporterProc(config, port, proc, log, scheme, auth, verify)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mail-exporter exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if exp.get("/healthz").status_code == 200:
                return exp
        except requests.RequestException:
            pass
        time.sleep(0.05)
    exp.stop()
    raise RuntimeError(f"mail-exporter not ready:\n{log.read_text()[-3000:]}")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporters", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def server_sections(srv: MailsrvProc, state_dir: Path, **exporter: Any) -> dict[str, dict[str, Any]]:
    """Config of an exporter watching ``srv`` (embedded profile) with short poll intervals."""
    return {
        "server": {"profile": "embedded", "url": srv.url, "admin_user": "admin", "admin_password_file": str(srv.dir / "admin.pw")},
        "state": {"dir": str(state_dir)},
        "exporter": {"mailserver_interval": 0.3, "queue_interval": 0.3, "backups_interval": 0.3, "tls_interval": 0.5, **exporter},
    }


# -- mail traffic --------------------------------------------------------------------------------
@dataclass
class DeferringSink:
    """A smarthost that answers 451 to every recipient, so submitted mail piles up in the queue."""

    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        with self.lock:
            self.attempts += 1
        return "451 4.3.0 Try again later"


@contextmanager
def deferring_smarthost() -> Iterator[tuple[DeferringSink, int]]:
    handler = DeferringSink()
    port = free_port()  # aiosmtpd's Controller cannot take port 0
    ctl = Controller(handler, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield handler, port
    finally:
        ctl.stop()


def submission(srv: MailsrvProc, user: str = "alice", password: str = USER_PASSWORD) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=15)
    client.ehlo("client.example")
    ctx = ssl.create_default_context(cafile=str(srv.cert))
    client.starttls(context=ctx)
    client.ehlo("client.example")
    client.login(user, password)
    return client


# -- certificates ----------------------------------------------------------------------------------
@dataclass
class Cert:
    cert: Path
    key: Path
    not_after: dt.datetime


def make_cert(directory: Path, name: str, *, days: float, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
              ca: bool = False) -> tuple[Cert, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for 127.0.0.1 / localhost valid for ``days`` (self-signed unless ``issuer`` is given)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_after = now + dt.timedelta(days=days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False), critical=True)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    cpath, kpath = directory / f"{name}.crt", directory / f"{name}.key"
    cpath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kpath.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return Cert(cpath, kpath, not_after), cert, key


# -- tiny loopback HTTP servers ----------------------------------------------------------------------
class CannedServer:
    """A real HTTP server on 127.0.0.1 answering every GET with ``self.body`` (settable) or hanging."""

    def __init__(self) -> None:
        self.body = ""
        self.status = 200
        self.delay = 0.0
        self.hang = threading.Event()
        self.released = threading.Event()
        self.requests = 0
        self.handler: Callable[[str], tuple[int, str]] | None = None
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests += 1
                if outer.hang.is_set():
                    outer.released.wait(60)
                    return
                if outer.delay:
                    time.sleep(outer.delay)
                status, body = outer.handler(self.path) if outer.handler else (outer.status, outer.body)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4" if self.path.startswith("/metrics") else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
