"""The exporter's HTTP listener: ``/metrics`` (optionally behind Basic auth), ``/healthz``, over HTTP or HTTPS.

A threading stdlib server: every connection gets its own thread and the TLS handshake happens there, so a
slow client never holds up others. ``/metrics`` renders the registry's last snapshots only.
"""

from __future__ import annotations

import base64
import gzip
import hmac
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

log = logging.getLogger("mail_exporter")

LANDING = b"""<html><head><title>mail-exporter</title></head><body><h1>mail-exporter</h1>
<p><a href="/metrics">/metrics</a> &middot; <a href="/healthz">/healthz</a></p></body></html>
"""
CLIENT_TIMEOUT = 30.0


class ExporterHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, *, tls: ssl.SSLContext | None = None,
                 credentials: tuple[str, str] | None = None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.registry = registry
        self.tls = tls
        self.expected = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode() if credentials else None
        super().__init__(address, Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's thread: the TLS handshake happens here, not in the accept loop."""
        request.settimeout(CLIENT_TIMEOUT)
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # headers and body go out without Nagle's delay
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                return
        super().finish_request(request, client_address)

    def authorized(self, header: str | None) -> bool:
        if self.expected is None:
            return True
        scheme, _, value = (header or "").partition(" ")
        return scheme.lower() == "basic" and hmac.compare_digest(value.strip().encode(), self.expected.encode())

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        thread.start()
        return thread


class Handler(BaseHTTPRequestHandler):
    server: ExporterHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "mail-exporter"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8", head=head)
            return
        if not self.server.authorized(self.headers.get("Authorization")):
            self._send(401, b"authentication required\n", "text/plain; charset=utf-8",
                       {"WWW-Authenticate": 'Basic realm="mail-exporter", charset="UTF-8"'}, head)
            return
        if path == "/metrics":
            body = generate_latest(self.server.registry)
            headers = {}
            if "gzip" in (self.headers.get("Accept-Encoding") or ""):
                body = gzip.compress(body, compresslevel=5)
                headers["Content-Encoding"] = "gzip"
            self._send(200, body, CONTENT_TYPE_PLAIN_0_0_4, headers, head)
        elif path == "/":
            self._send(200, LANDING, "text/html; charset=utf-8", head=head)
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8", head=head)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for the listener; raises ``OSError``/``ssl.SSLError`` when the files are unusable."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx
