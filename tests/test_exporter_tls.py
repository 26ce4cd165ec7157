"""The tls source against real TLS listeners on loopback with certificates generated per test: implicit TLS,
IMAP STARTTLS, a CA-signed certificate (verified) and self-signed ones (expiry still read), an endpoint that is
down, and TLS + Basic auth on the exporter's own listener."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from prometheus_client import generate_latest

from exporters.app import Exporter
from mailsrv.config import parse_config
from tests.conftest import free_port
from tests.test_exporter_support import Cert, make_cert, parse_samples, start_exporter, val


class TlsListener:
    """Accepts connections, optionally runs an IMAP STARTTLS preamble, completes a TLS handshake, closes."""

    def __init__(self, cert: Cert, imap_starttls: bool = False) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert.cert, cert.key)
        self.imap = imap_starttls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.imap:
                conn.sendall(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
                line = conn.recv(1024)
                tag = line.split(b" ", 1)[0]
                conn.sendall(tag + b" OK Begin TLS negotiation now\r\n")
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.sock.close()


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[dict[str, tuple[TlsListener | None, Cert]]]:
    ca_cert, ca, ca_key = make_cert(tmp_path, "test-ca", days=365, ca=True)
    signed, _, _ = make_cert(tmp_path, "signed", days=40, issuer=(ca, ca_key))
    self_signed, _, _ = make_cert(tmp_path, "self", days=10)
    imap_cert, _, _ = make_cert(tmp_path, "imap", days=3)
    out: dict[str, tuple[TlsListener | None, Cert]] = {
        "signed": (TlsListener(signed), signed),
        "self": (TlsListener(self_signed), self_signed),
        "imap": (TlsListener(imap_cert, imap_starttls=True), imap_cert),
        "ca": (None, ca_cert),
    }
    yield out
    for listener, _ in out.values():
        if listener is not None:
            listener.close()


def test_certificate_expiry_trusted_or_not(listeners: dict[str, tuple[TlsListener, Cert]]) -> None:
    down = free_port()  # nothing listens here
    endpoints = {
        "signed": f"https://127.0.0.1:{listeners['signed'][0].port}",
        "self": f"smtps://127.0.0.1:{listeners['self'][0].port}",
        "imap": f"imap://127.0.0.1:{listeners['imap'][0].port}",
        "down": f"imaps://127.0.0.1:{down}",
    }
    exp = Exporter(parse_config({
        "server": {"ca_file": str(listeners["ca"][1].cert)},
        "exporter": {"sources": ["tls"], "tls_endpoints": list(endpoints.values()), "tls_timeout": 3},
    }))
    exp.poll_all_once()
    s = parse_samples(generate_latest(exp.registry).decode())
    assert val(s, "mail_exporter_source_up", source="tls") == 1
    for name in ("signed", "self", "imap"):
        ep, cert = endpoints[name], listeners[name][1]
        assert val(s, "mail_tls_endpoint_up", endpoint=ep) == 1, name
        assert val(s, "mail_tls_certificate_expiry_timestamp_seconds", endpoint=ep) == cert.not_after.timestamp(), name
    assert val(s, "mail_tls_certificate_verified", endpoint=endpoints["signed"]) == 1
    assert val(s, "mail_tls_certificate_verified", endpoint=endpoints["self"]) == 0
    assert val(s, "mail_tls_certificate_verified", endpoint=endpoints["imap"]) == 0
    serial = format(x509.load_pem_x509_certificate(listeners["signed"][1].cert.read_bytes()).serial_number, "x")
    assert val(s, "mail_tls_certificate_info", endpoint=endpoints["signed"], subject="signed", issuer="test-ca", serial=serial) == 1
    assert val(s, "mail_tls_endpoint_up", endpoint=endpoints["down"]) == 0
    assert val(s, "mail_tls_certificate_expiry_timestamp_seconds", endpoint=endpoints["down"]) is None
    health = exp.polled[0].health
    assert health.degraded and any(endpoints["down"] in p for p in health.problems)
    assert any("self-signed" in p or "not trusted" in p for p in health.problems)

    # the self-signed endpoint goes away: its last known expiry stays, marked unreachable
    listeners["self"][0].close()
    exp.poll_all_once()
    s = parse_samples(generate_latest(exp.registry).decode())
    assert val(s, "mail_tls_endpoint_up", endpoint=endpoints["self"]) == 0
    assert val(s, "mail_tls_certificate_expiry_timestamp_seconds", endpoint=endpoints["self"]) == listeners["self"][1].not_after.timestamp()


def test_exporter_listener_with_tls_and_basic_auth(tmp_path: Path) -> None:
    cert, _, _ = make_cert(tmp_path, "exporter", days=30)
    (tmp_path / "scrape.pw").write_text("scrape-secret\n")
    exp = start_exporter(tmp_path / "exp", {
        "state": {"dir": str(tmp_path)},
        "exporter": {"sources": ["backups"], "tls_cert_file": str(cert.cert), "tls_key_file": str(cert.key),
                     "auth_user": "prom", "auth_password_file": str(tmp_path / "scrape.pw")},
    }, scheme="https", auth=("prom", "scrape-secret"), verify=str(cert.cert))
    try:
        assert exp.get("/metrics").status_code == 200
        assert "mail_exporter_source_up" in exp.get("/metrics").text
        anonymous = exp.get("/metrics", auth=None)
        assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Basic")
        assert exp.get("/metrics", auth=("prom", "wrong")).status_code == 401
        assert exp.get("/healthz", auth=None).status_code == 200  # liveness needs no credentials
        gz = exp.get("/metrics", headers={"Accept-Encoding": "gzip"})
        assert gz.headers.get("Content-Encoding") == "gzip" and "mail_exporter_build_info" in gz.text
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{exp.port}/metrics", timeout=5)  # plain HTTP is not served
        assert "scrape-secret" not in exp.log.read_text()
    finally:
        exp.stop()
