"""Source ``tls``: certificate expiry of the mail server's TLS endpoints, trusted or not.

Endpoints are URLs: ``smtp://host[:25]`` and ``submission://host[:587]`` (SMTP STARTTLS), ``imap://host[:143]``
(IMAP STARTTLS), ``smtps://host[:465]``, ``imaps://host[:993]``, ``pop3s://host[:995]``, ``https://host[:443]``
and ``tls://host:port`` (implicit TLS). Each is first checked with verification (system CAs plus
``[server] ca_file``, host name included); if that fails the certificate is read again without trust, so a
self-signed or expired certificate still reports its expiry, with ``mail_tls_certificate_verified`` 0.
"""

from __future__ import annotations

import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client.core import GaugeMetricFamily

from mailsrv.config import ConfigError

from ..poller import PollResult

DEFAULT_PORTS = {"smtp": 25, "submission": 587, "imap": 143, "smtps": 465, "imaps": 993, "pop3s": 995, "https": 443}
STARTTLS = {"smtp": "smtp", "submission": "smtp", "imap": "imap"}
IMPLICIT = {"smtps", "imaps", "pop3s", "https", "tls"}


@dataclass(frozen=True)
class Endpoint:
    url: str
    scheme: str
    host: str
    port: int


def parse_endpoint(url: str, where: str) -> Endpoint:
    """Validate one ``tls_endpoints`` entry; :class:`ConfigError` names the key and the problem."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in STARTTLS and scheme not in IMPLICIT:
        raise ConfigError(f"{where}: {url!r}: unknown scheme (use smtp, submission, imap, smtps, imaps, pop3s, https or tls)")
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        raise ConfigError(f"{where}: {url!r}: invalid port") from None
    if not parts.hostname or port is None:
        raise ConfigError(f"{where}: {url!r}: expected SCHEME://HOST[:PORT]" + (" (tls:// needs a port)" if scheme == "tls" else ""))
    return Endpoint(url, scheme, parts.hostname, port)


@dataclass
class CertInfo:
    not_after: float
    not_before: float
    verified: bool
    subject: str
    issuer: str
    serial: str


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()[:200]


class _Lines:
    """Reads CRLF lines from a plain socket for the STARTTLS preamble."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self) -> str:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed during the STARTTLS exchange")
            self.buf += chunk
            if len(self.buf) > 65536:
                raise ConnectionError("over-long line during the STARTTLS exchange")
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")

    def smtp_reply(self) -> tuple[int, list[str]]:
        lines = []
        while True:
            line = self.line()
            lines.append(line[4:])
            if len(line) < 4 or line[3] != "-":
                try:
                    return int(line[:3]), lines
                except ValueError:
                    raise ConnectionError(f"not an SMTP reply: {line[:80]!r}") from None


def _starttls(sock: socket.socket, protocol: str, host: str) -> None:
    io = _Lines(sock)
    if protocol == "smtp":
        code, _ = io.smtp_reply()
        if code != 220:
            raise ConnectionError(f"SMTP greeting {code}")
        sock.sendall(b"EHLO mail-exporter\r\n")
        code, exts = io.smtp_reply()
        if code != 250 or not any(e.upper().startswith("STARTTLS") for e in exts):
            raise ConnectionError("the server does not offer STARTTLS")
        sock.sendall(b"STARTTLS\r\n")
        code, _ = io.smtp_reply()
        if code != 220:
            raise ConnectionError(f"STARTTLS refused with {code}")
    else:
        greeting = io.line()
        if not greeting.startswith("* OK"):
            raise ConnectionError(f"IMAP greeting {greeting[:60]!r}")
        sock.sendall(b"a1 STARTTLS\r\n")
        while True:
            line = io.line()
            if line.startswith("a1 "):
                if not line.startswith("a1 OK"):
                    raise ConnectionError(f"STARTTLS refused: {line[:80]!r}")
                return


def fetch_certificate(ep: Endpoint, ctx: ssl.SSLContext, timeout: float) -> bytes:
    """The DER certificate ``ep`` presents, after a handshake with ``ctx`` (raises on failure)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((ep.host, ep.port), timeout=timeout) as raw:
        if ep.scheme in STARTTLS:
            _starttls(raw, STARTTLS[ep.scheme], ep.host)
        raw.settimeout(max(0.1, deadline - time.monotonic()))
        server_name = ep.host if ctx.check_hostname else (None if _is_ip(ep.host) else ep.host)
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
            if not der:
                raise ssl.SSLError("the server sent no certificate")
            return der


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return True
    except OSError:
        return False


def inspect(ep: Endpoint, verify_ctx: ssl.SSLContext, timeout: float) -> tuple[CertInfo, str]:
    """Certificate facts of one endpoint and why verification failed ("" when it passed)."""
    why = ""
    try:
        der = fetch_certificate(ep, verify_ctx, timeout)
        verified = True
    except ssl.SSLCertVerificationError as exc:
        why = exc.verify_message or str(exc)
        insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        der = fetch_certificate(ep, insecure, timeout)
        verified = False
    cert = x509.load_der_x509_certificate(der)
    return CertInfo(
        not_after=cert.not_valid_after_utc.timestamp(), not_before=cert.not_valid_before_utc.timestamp(), verified=verified,
        subject=_cn(cert.subject), issuer=_cn(cert.issuer), serial=format(cert.serial_number, "x"),
    ), why


class TlsSource:
    """Checks every configured endpoint (in parallel) each poll."""

    name = "tls"

    def __init__(self, endpoints: list[Endpoint], *, ca_file: str, interval: float, timeout: float) -> None:
        self.endpoints = endpoints
        self.interval = interval
        self.per_endpoint = timeout
        self.timeout = timeout * 2 + 1  # a failed verification costs a second handshake
        self.ctx = ssl.create_default_context()
        if ca_file:
            try:
                self.ctx.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"server.ca_file: cannot load {ca_file}: {exc}") from None
        self.known: dict[str, CertInfo] = {}

    def _check(self, ep: Endpoint) -> tuple[Endpoint, CertInfo | None, str]:
        try:
            info, why = inspect(ep, self.ctx, self.per_endpoint)
            return ep, info, f"{ep.url}: certificate not trusted: {why}" if why else ""
        except (OSError, ssl.SSLError, ValueError) as exc:
            return ep, None, f"{ep.url}: {type(exc).__name__}: {exc}"

    def poll(self) -> PollResult:
        with ThreadPoolExecutor(max_workers=min(64, max(1, len(self.endpoints)))) as pool:
            results = list(pool.map(self._check, self.endpoints))
        labels = ["endpoint"]
        up = GaugeMetricFamily("mail_tls_endpoint_up", "1 if the endpoint completed a TLS handshake in the last poll.", labels=labels)
        expiry = GaugeMetricFamily("mail_tls_certificate_expiry_timestamp_seconds",
                                   "Unix time the endpoint's certificate expires (last known value while unreachable).", labels=labels)
        start = GaugeMetricFamily("mail_tls_certificate_not_before_timestamp_seconds",
                                  "Unix time the endpoint's certificate became valid.", labels=labels)
        verified = GaugeMetricFamily("mail_tls_certificate_verified",
                                     "1 if the certificate chains to a trusted CA and matches the host name.", labels=labels)
        info = GaugeMetricFamily("mail_tls_certificate_info", "The endpoint's certificate (always 1).",
                                 labels=["endpoint", "subject", "issuer", "serial"])
        problems = []
        for ep, cert, problem in results:
            if problem:
                problems.append(problem)
            up.add_metric([ep.url], 1.0 if cert is not None else 0.0)
            if cert is not None:
                self.known[ep.url] = cert
            cert = self.known.get(ep.url)
            if cert is None:
                continue
            expiry.add_metric([ep.url], cert.not_after)
            start.add_metric([ep.url], cert.not_before)
            verified.add_metric([ep.url], 1.0 if cert.verified else 0.0)
            info.add_metric([ep.url, cert.subject, cert.issuer, cert.serial], 1.0)
        return PollResult([up, expiry, start, verified, info], problems, degraded=any(c is None for _, c, _ in results))

    def close(self) -> None:
        pass
