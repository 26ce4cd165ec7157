"""The running mail server: one asyncio loop serving SMTP, submission, HTTP (JMAP, /api, metrics) and the queue."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import MailsrvConfig, read_secret, split_listen
from .metrics import Metrics
from .mime import summarize
from .security import AuthGuard
from .store import Store

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("mailsrv")


@dataclass
class Identity:
    """Who an authenticated request or session acts for.

    ``principal_id`` is ``None`` for the configured (fallback) admin, which has no mailbox of its own.
    """

    principal_id: int | None
    name: str
    is_admin: bool


def ensure_tls_files(data_dir: Path, hostname: str, cert_file: str, key_file: str) -> tuple[Path, Path]:
    """The configured certificate, or a self-signed one generated on first start (kept in ``data_dir/tls``)."""
    if cert_file and key_file:
        return Path(cert_file), Path(key_file)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    tls_dir = data_dir / "tls"
    cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
    if cert.exists() and key.exists():
        return cert, key
    tls_dir.mkdir(parents=True, exist_ok=True)
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName(hostname), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(pkey, hashes.SHA256())
    )
    tmp_key = key.with_suffix(".tmp")
    tmp_key.write_bytes(
        pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    tmp_key.chmod(0o600)
    tmp_key.replace(key)
    tmp_cert = cert.with_suffix(".tmp")
    tmp_cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    tmp_cert.replace(cert)
    return cert, key


class MailServer:
    """Shared state of one mailsrv process; protocol modules receive this object."""

    def __init__(self, cfg: MailsrvConfig) -> None:
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir)
        self.store = Store(self.data_dir, changes_max_history=cfg.jmap.changes_max_history)
        self.metrics = Metrics()
        self.guard = AuthGuard(self.store.db, self.metrics, cfg.auth_ban_failures, cfg.auth_ban_window, cfg.auth_ban_duration)
        self.admin_password = read_secret(cfg.admin_password_file, "MAILSRV_ADMIN_PASSWORD", "mailsrv.admin_password_file")
        self.master_password = (
            read_secret(cfg.master_password_file, "MAILSRV_MASTER_PASSWORD", "mailsrv.master_password_file")
            if cfg.master_user
            else None
        )
        self.metrics_password = (
            read_secret(cfg.metrics_password_file, "MAILSRV_METRICS_PASSWORD", "mailsrv.metrics_password_file")
            if cfg.metrics_user
            else None
        )
        self.smarthost_password = (
            read_secret(cfg.smarthost_password_file, "MAILSRV_SMARTHOST_PASSWORD", "mailsrv.smarthost_password_file")
            if cfg.smarthost_user
            else None
        )
        self.cert_file, self.key_file = ensure_tls_files(self.data_dir, cfg.hostname, cfg.tls_cert_file, cfg.tls_key_file)
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(self.cert_file, self.key_file)
        for domain in cfg.domains:
            self.store.principals.add_domain(domain)
        self._verified: dict[str, float] = {}  # configured logins checked in the last 5 minutes → until
        self._servers: list[asyncio.base_events.Server] = []
        self._runner: web.AppRunner | None = None
        self.queue: Any = None  # OutboundQueue, set in start()
        self.active: dict[str, int] = {"smtp": 0, "http": 0, "delivery": 0}
        self._register_gauges()

    def _register_gauges(self) -> None:
        db = self.store.db
        m = self.metrics
        m.gauge("user_count", lambda: db.one("SELECT COUNT(*) FROM principals WHERE type='individual'")[0], "Total number of users")  # type: ignore[index]
        m.gauge("domain_count", lambda: db.one("SELECT COUNT(*) FROM domains")[0], "Total number of domains")  # type: ignore[index]
        m.gauge("queue_count", lambda: db.one("SELECT COUNT(*) FROM queue_messages")[0], "Total number of messages in the queue")  # type: ignore[index]
        for proto in ("smtp", "http", "delivery", "imap", "pop3", "sieve"):
            m.gauge(f"{proto}_active_connections", lambda p=proto: self.active.get(p, 0), f"Active {proto.upper()} connections")  # type: ignore[misc]

    # -- authentication ----------------------------------------------------------------------------
    def check_admin(self, user: str, password: str) -> bool:
        return self._configured_login(user, password, self.cfg.admin_user, self.admin_password)[0]

    def _configured_login(self, user: str, password: str, name: str, secret: str | None) -> tuple[bool, bool]:
        """``(matches, verified now)`` for a login from the config (admin, master user). Matches are cached for
        5 minutes like account passwords; ``verified now`` is ``False`` only for such a cache hit."""
        if not secret or not name or user != name:
            return False, True
        key = hashlib.sha256("\0".join([user, password, secret]).encode()).hexdigest()
        now = time.monotonic()
        if self._verified.get(key, 0) > now:
            return True, False
        if not hmac.compare_digest(password.encode(), secret.encode()):
            return False, True
        if len(self._verified) > 1000:
            self._verified = {k: v for k, v in self._verified.items() if v > now}
        self._verified[key] = now + 300
        return True, True

    def authenticate(self, user: str, password: str) -> Identity | None:
        """Resolve a login (plain, ``<account>%<master>`` or ``<target>%<admin>``) without side effects."""
        return self.login(user, password)[0]

    def login(self, user: str, password: str) -> tuple[Identity | None, bool]:
        """:meth:`authenticate`, and whether the login was verified now: ``False`` when a successful login was
        answered from the cache of logins verified in the last 5 minutes (failures are never cached). Callers
        count ``auth_success`` only for verified logins, as Stalwart does with its credential cache."""
        ok, fresh = self._configured_login(user, password, self.cfg.admin_user, self.admin_password)
        if ok:
            return Identity(None, user, True), fresh
        p, fresh = self.store.principals.login(user, password)
        if p is not None:
            return Identity(p.id, p.name, p.is_admin), fresh
        if "%" not in user:
            return None, True
        target_name, _, login = user.rpartition("%")
        target = self.store.principals.by_name(target_name)
        if target is None:
            return None, True
        ok, fresh = self._configured_login(login, password, self.cfg.master_user or "", self.master_password)
        if ok:
            return Identity(target.id, target.name, False), fresh  # v0.15: the session is fully the target
        actor, fresh = self.login(login, password) if "%" not in login else (None, True)
        if actor is not None and actor.is_admin:
            return Identity(target.id, target.name, False), fresh  # v0.16: impersonation by an admin
        return None, True

    # -- delivery ----------------------------------------------------------------------------------
    def deliver_local_sync(
        self, account_id: int, raw: bytes, *, role: str = "inbox", keywords: dict[str, bool] | None = None
    ) -> int:
        """Store a message durably in an account's mailbox with ``role``; returns the email id."""
        digest = self.store.blobs.put(raw)
        summary = summarize(raw)
        self.store.mail.ensure_default_mailboxes(account_id)
        mbox = self.store.mail.mailbox_by_role(account_id, role) or self.store.mail.mailbox_by_role(account_id, "inbox")
        assert mbox is not None
        email_id, _ = self.store.mail.ingest(account_id, digest, len(raw), summary, [mbox.id], keywords)
        self.metrics.inc("message_ingest_ham")
        return email_id

    async def deliver_local(self, account_id: int, raw: bytes, **kw: Any) -> int:
        return await asyncio.to_thread(self.deliver_local_sync, account_id, raw, **kw)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        from aiohttp import web

        from .http import build_app
        from .queue import OutboundQueue
        from .smtp import start_smtp

        self.queue = OutboundQueue(self)
        self._servers += await start_smtp(self)  # SMTP first: /healthz/ready must mean every listener is up
        app = build_app(self)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = split_listen(self.cfg.http_listen)
        await web.TCPSite(self._runner, host, port).start()
        if self.cfg.https_listen:
            h, p = split_listen(self.cfg.https_listen)
            await web.TCPSite(self._runner, h, p, ssl_context=self.tls).start()
        self.queue.start()
        log.info("mailsrv ready: http %s, smtp %s, submission %s", self.cfg.http_listen, self.cfg.smtp_listen, self.cfg.submission_listen)

    async def stop(self) -> None:
        if self.queue is not None:
            await self.queue.stop()
        for s in self._servers:
            s.close()
        for s in self._servers:
            await s.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()
        self.store.close()
