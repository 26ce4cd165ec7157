"""SMTP listeners: inbound for hosted domains (``smtp_listen``) and submission (``submission_listen``).

Both are aiosmtpd ``SMTP`` protocols served from the server's own loop. Inbound accepts mail for hosted
domains only (never an open relay); submission requires STARTTLS then AUTH PLAIN/LOGIN and lets an account
send from its own addresses. A message gets ``250`` only once :func:`delivery.route_sync` has stored it
durably (Inbox or outbound queue).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, TLSSetupException

from ..config import split_listen
from .delivery import domain_of, route_sync

if TYPE_CHECKING:
    from .app import Identity, MailServer

log = logging.getLogger("mailsrv.smtp")

NULL_SENDER = "<>"
MAX_RECIPIENTS = 100
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
# aiosmtpd's own replies that deserve a better text and/or a metric (Stalwart's event names).
STOCK_REPLIES: dict[str, tuple[str, str]] = {
    "552 Error: Too much mail data": (TOO_BIG, "smtp_message_too_large"),
    "552 Error: message size exceeds fixed maximum message size": (TOO_BIG, "smtp_message_too_large"),
    "530 5.7.0 Authentication required": ("530 5.7.0 Authentication required", "smtp_mail_from_unauthenticated"),
    "504 5.5.4 Unrecognized authentication type": ("504 5.5.4 Unrecognized authentication type", "smtp_auth_mechanism_not_supported"),
}


def _hide_deprecation_chatter(record: logging.LogRecord) -> bool:
    return "login_data is deprecated" not in record.getMessage()


class RateLimiter:
    """At most ``limit`` messages per ``window`` seconds per client IP (``limit`` 0 = unlimited)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = collections.defaultdict(deque)
        self._calls = 0

    def allow(self, ip: str) -> bool:
        if not self.limit:
            return True
        now = time.monotonic()
        self._calls += 1
        if self._calls % 1000 == 0:  # forget idle clients
            for key in [k for k, q in self._hits.items() if not q or q[-1] <= now - self.window]:
                del self._hits[key]
        hits = self._hits[ip]
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return False
        hits.append(now)
        return True


def peer_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


def _printable(text: str, limit: int = 200) -> str:
    return "".join(c for c in text if 32 < ord(c) < 127)[:limit] or "unknown"


@dataclass
class _Pending:
    """Credentials parsed by aiosmtpd, still to be checked off the event loop."""

    creds: LoginPassword


class Handler:
    """aiosmtpd hooks shared by both listeners; ``submission`` selects the submission rules."""

    def __init__(self, server: MailServer, *, submission: bool, limiter: RateLimiter) -> None:
        self.server = server
        self.submission = submission
        self.limiter = limiter

    async def handle_EHLO(self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if not self.submission:  # inbound offers no AUTH (as Stalwart's port 25)
            responses = [r for r in responses if not r[4:].startswith("AUTH")]
        return responses

    async def handle_MAIL(self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        m = self.server.metrics
        local, at, domain = address.rpartition("@")
        if address != NULL_SENDER and not (local and at and domain):
            return "553 5.1.7 Error: malformed sender address"
        if self.submission and not await asyncio.to_thread(self._may_send_as, session.auth_data, address):
            m.inc("smtp_mail_from_unauthorized")
            return "550 5.7.1 You are not allowed to send from this address"
        if not self.limiter.allow(peer_ip(session)):
            m.inc("smtp_rate_limit_exceeded")
            return "452 4.7.1 Rate limit exceeded, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender OK"

    def _may_send_as(self, ident: Identity | None, address: str) -> bool:
        if ident is None:
            return False
        if ident.principal_id is None:  # the configured admin may send as anyone
            return True
        if address == NULL_SENDER:
            return False
        principal = self.server.store.principals.get(ident.principal_id)
        own = {a.lower() for a in principal.emails} if principal else set()
        local, _, domain = address.lower().rpartition("@")
        return f"{local}@{domain}" in own or f"{local.split('+')[0]}@{domain}" in own

    async def handle_RCPT(self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        m = self.server.metrics
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            m.inc("smtp_too_many_recipients")
            return "452 4.5.3 Too many recipients"
        local, at, domain = address.rpartition("@")
        if not local or not at or not domain:
            return "553 5.1.3 Error: malformed address"
        refusal = await asyncio.to_thread(self._rcpt_refusal, address, bool(session.authenticated))
        if refusal is not None:
            reply, metric = refusal
            m.inc(metric)
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient OK"

    def _rcpt_refusal(self, address: str, authenticated: bool) -> tuple[str, str] | None:
        principals = self.server.store.principals
        if principals.is_local_domain(domain_of(address)):
            if principals.resolve_recipient(address) is None:
                return "550 5.1.1 Mailbox does not exist", "smtp_mailbox_does_not_exist"
            return None
        if not authenticated:
            return "554 5.7.1 Relay not allowed", "smtp_relay_not_allowed"
        return None

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        ident: Identity | None = session.auth_data if session.authenticated else None
        sender = "" if envelope.mail_from == NULL_SENDER else str(envelope.mail_from)
        data = self._received(session, envelope) + raw
        try:
            result = await asyncio.to_thread(
                route_sync,
                self.server,
                sender,
                list(envelope.rcpt_tos),
                data,
                account_id=ident.principal_id if ident else None,
                authenticated=self.submission,
            )
        except Exception:
            log.exception("message from %s not stored", peer_ip(session))
            return "451 4.3.0 Message not stored, try again later"
        if not result.delivered and result.queue_id is None:
            return "550 5.1.1 No valid recipients"
        if result.failed:
            log.warning("accepted message but could not deliver to %s", ", ".join(result.failed))
        return "250 2.0.0 Message accepted for delivery"

    def _received(self, session: Session, envelope: Envelope) -> bytes:
        """The one trace header mailsrv adds (RFC 5321 §4.4, protocol names from RFC 3848)."""
        proto = "ESMTP" if session.extended_smtp else "SMTP"
        if session.ssl is not None:
            proto += "S"
        if session.authenticated:
            proto += "A"
        rcpt = f"\r\n\tfor <{_printable(envelope.rcpt_tos[0])}>" if len(envelope.rcpt_tos) == 1 else ""
        helo = _printable(session.host_name or "")
        return (
            f"Received: from {helo} ([{_printable(peer_ip(session))}])\r\n"
            f"\tby {self.server.cfg.hostname} (mailsrv) with {proto} id {secrets.token_hex(8)}{rcpt};\r\n"
            f"\t{formatdate(usegmt=True)}\r\n"
        ).encode("ascii")

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            self.server.metrics.inc("tls_handshake_error")
            log.info("TLS handshake failed: %s", error.__cause__ or error)
            return "454 4.7.0 TLS not available due to temporary reason"
        log.warning("SMTP session error: %s: %s", type(error).__name__, error)
        return "451 4.3.0 Internal error, try again later"


class MailSMTP(SMTP):
    """aiosmtpd's protocol plus bans at connect, metrics, connection gauge and off-loop password checks."""

    def __init__(self, server: MailServer, handler: Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        # aiosmtpd keeps these limits on the class; give each connection its own.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.mailsrv = server
        self._opened: float | None = None
        self._ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._opened is None
        super().connection_made(transport)
        if first:
            self._opened = time.monotonic()
            self.mailsrv.metrics.inc("smtp_connection_start")
            self.mailsrv.active["smtp"] = self.mailsrv.active.get("smtp", 0) + 1

    def connection_lost(self, error: Exception | None) -> None:
        if self._opened is not None and not self._ended:
            self._ended = True
            m = self.mailsrv.metrics
            m.inc("smtp_connection_end")
            m.observe("smtp_request_time", (time.monotonic() - self._opened) * 1000)
            self.mailsrv.active["smtp"] -= 1
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        assert self.session is not None
        try:
            banned = await asyncio.to_thread(self.mailsrv.guard.is_banned, peer_ip(self.session))
        except asyncio.CancelledError:  # the client left before the greeting
            if self.transport is not None:
                self.transport.close()
            raise
        if banned:
            await self.push("421 4.7.0 Too many authentication failures from your address, try later")
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            known = STOCK_REPLIES.get(status)
            if known is not None:
                status = known[0]
                self.mailsrv.metrics.inc(known[1])
            elif status.startswith(("500 Error: command", "502")):
                self.mailsrv.metrics.inc("smtp_invalid_command")
            elif status.startswith(("500", "501", "553 5.1.", "555")):
                self.mailsrv.metrics.inc("smtp_syntax_error")
        await super().push(status)

    # AUTH: aiosmtpd parses PLAIN/LOGIN; the password check (scrypt, ban bookkeeping) runs in a thread.
    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=False, handled=False, auth_data=_Pending(auth_data))

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_LOGIN(_, args))

    async def _verify(self, result: AuthResult) -> AuthResult:
        pending = result.auth_data
        if not isinstance(pending, _Pending):
            return result
        assert self.session is not None
        ip = peer_ip(self.session)
        login = pending.creds.login.decode("utf-8", "replace")
        password = pending.creds.password.decode("utf-8", "replace")
        server = self.mailsrv

        def check() -> tuple[Identity | None, bool]:
            if server.guard.is_banned(ip):
                return None, True
            ident = server.authenticate(login, password)
            if ident is None:
                return None, server.guard.failure(ip)
            server.guard.success(ip)
            return ident, False

        ident, banned = await asyncio.to_thread(check)
        if ident is not None:
            return AuthResult(success=True, auth_data=ident)
        if banned:
            if self.transport is not None:
                self.loop.call_soon(self.transport.close)
            return AuthResult(success=False, handled=False, message="421 4.7.0 Too many authentication failures, closing connection")
        return AuthResult(success=False, handled=False)


async def start_smtp(server: MailServer) -> list[asyncio.base_events.Server]:
    """Listen on ``smtp_listen`` (inbound) and ``submission_listen`` (STARTTLS + AUTH)."""
    chatter = logging.getLogger("mail.log")
    chatter.addFilter(_hide_deprecation_chatter)
    if chatter.getEffectiveLevel() < logging.WARNING:  # aiosmtpd logs every command line, AUTH included
        chatter.setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    cfg = server.cfg
    limiter = RateLimiter(cfg.smtp_rate_limit, cfg.smtp_rate_window)
    servers: list[asyncio.base_events.Server] = []
    for listen, submission in ((cfg.smtp_listen, False), (cfg.submission_listen, True)):
        handler = Handler(server, submission=submission, limiter=limiter)

        def factory(handler: Handler = handler, submission: bool = submission) -> MailSMTP:
            return MailSMTP(
                server,
                handler,
                data_size_limit=cfg.max_message_size,
                enable_SMTPUTF8=True,
                decode_data=False,
                hostname=cfg.hostname,
                ident="ESMTP mailsrv",
                tls_context=server.tls,
                auth_required=submission,
                auth_require_tls=True,
                auth_exclude_mechanism=None if submission else ["PLAIN", "LOGIN"],
                loop=loop,
            )

        host, port = split_listen(listen)
        servers.append(await loop.create_server(factory, host, port))
    return servers
