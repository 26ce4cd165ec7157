"""The outbound queue: persistent, delivers to the smarthost with exponential retries, bounces on failure.

Messages live in ``queue_messages`` (blob + return path) and ``queue_recipients`` (one row per recipient
with ``status`` scheduled / temp_fail / perm_fail / completed, ``retry_num``, ``next_retry``, ``expires``,
``last_error``). A message leaves the queue once every recipient is completed or perm_fail; permanently
failed or expired recipients produce one DSN to the sender (never for a null sender). The meta key
``queue_paused`` = "1" stops deliveries until it is cleared.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import split_listen
from .dsn import Failure, build_dsn

if TYPE_CHECKING:
    from .app import MailServer

log = logging.getLogger("mailsrv.queue")

SCHEDULED, TEMP_FAIL, PERM_FAIL, COMPLETED = "scheduled", "temp_fail", "perm_fail", "completed"
PENDING = (SCHEDULED, TEMP_FAIL)
SMTP_TIMEOUT = 30.0
BATCH = 100
PARALLEL = 4


def enqueue_sync(
    server: MailServer, return_path: str, rcpts: Iterable[str], raw: bytes, *, account_id: int | None = None
) -> int:
    """Queue ``raw`` for ``rcpts`` durably (blocking) and wake the queue; returns the queue id."""
    digest = server.store.blobs.put(raw)
    now = time.time()
    with server.store.db.tx() as c:
        c.execute("INSERT OR IGNORE INTO blobs(hash, size, created) VALUES(?,?,?)", (digest, len(raw), now))
        cur = c.execute(
            "INSERT INTO queue_messages(return_path, blob_hash, size, created, account_id) VALUES(?,?,?,?,?)",
            (return_path, digest, len(raw), now, account_id),
        )
        queue_id = int(cur.lastrowid or 0)
        c.executemany(
            "INSERT OR IGNORE INTO queue_recipients(queue_id, address, status, next_retry, expires) VALUES(?,?,?,?,?)",
            [(queue_id, r, SCHEDULED, now, now + server.cfg.queue_expire) for r in dict.fromkeys(rcpts)],
        )
    if server.queue is not None:
        server.queue.wake()
    return queue_id


def is_paused(server: MailServer) -> bool:
    row = server.store.db.one("SELECT value FROM meta WHERE key='queue_paused'")
    return bool(row and row[0] == "1")


@dataclass
class Reply:
    """What the smarthost said about one recipient; ``code`` 0 = no SMTP answer (network, TLS, auth)."""

    code: int
    text: str

    @property
    def status(self) -> str:
        if 200 <= self.code < 300:
            return COMPLETED
        return PERM_FAIL if 500 <= self.code < 600 else TEMP_FAIL

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code else self.text


def _reply(code: int, resp: bytes | str) -> Reply:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    return Reply(code, " ".join(text.split()))


def _fail_rest(known: dict[str, Reply], rcpts: list[str], reply: Reply) -> dict[str, Reply]:
    """``reply`` for every recipient except those the smarthost already refused."""
    return {r: known[r] if r in known and known[r].status != COMPLETED else reply for r in rcpts}


def send_via_smarthost(server: MailServer, mail_from: str, rcpts: list[str], raw: bytes, events: list[str]) -> dict[str, Reply]:
    """One SMTP transaction with the smarthost (blocking): the reply for each recipient.

    Appends Stalwart's delivery event names for what went wrong to ``events``.
    """
    cfg = server.cfg
    host, port = split_listen(cfg.smarthost)
    ctx = ssl.create_default_context()
    out: dict[str, Reply] = {}

    def all_(reply: Reply, event: str) -> dict[str, Reply]:
        events.append(event)
        return {r: reply for r in rcpts}

    client: smtplib.SMTP | None = None
    try:
        if cfg.smarthost_tls == "tls":
            client = smtplib.SMTP_SSL(host, port, local_hostname=cfg.hostname, timeout=SMTP_TIMEOUT, context=ctx)
        else:
            client = smtplib.SMTP(host, port, local_hostname=cfg.hostname, timeout=SMTP_TIMEOUT)
        client.ehlo_or_helo_if_needed()
        if cfg.smarthost_tls == "starttls":
            if not client.has_extn("starttls"):
                return all_(Reply(0, "smarthost does not offer STARTTLS"), "delivery_start_tls_unavailable")
            try:
                client.starttls(context=ctx)
            except (ssl.SSLError, ssl.CertificateError) as exc:
                return all_(Reply(0, f"STARTTLS with the smarthost failed: {exc}"), "delivery_start_tls_error")
            client.ehlo()
        if cfg.smarthost_user:
            try:
                client.login(cfg.smarthost_user, server.smarthost_password or "")
            except smtplib.SMTPException as exc:  # our configuration problem: keep the mail and retry
                return all_(Reply(0, f"smarthost authentication failed: {exc}"), "delivery_auth_failed")
        options: list[str] = []
        if client.has_extn("size"):
            options.append(f"SIZE={len(raw)}")
        if client.has_extn("8bitmime") and any(b > 127 for b in raw):
            options.append("BODY=8BITMIME")
        if not (mail_from + "".join(rcpts)).isascii():
            if not client.has_extn("smtputf8"):
                return all_(Reply(553, "5.6.7 smarthost does not support internationalized addresses"), "delivery_mail_from_rejected")
            options.append("SMTPUTF8")
        code, resp = client.mail(mail_from, options)
        if code != 250:
            return all_(_reply(code, resp), "delivery_mail_from_rejected")
        for r in rcpts:
            out[r] = _reply(*client.rcpt(r))
            if out[r].status != COMPLETED:
                events.append("delivery_rcpt_to_rejected" if out[r].status == PERM_FAIL else "delivery_rcpt_to_failed")
        accepted = [r for r in rcpts if out[r].status == COMPLETED]
        if not accepted:
            client.rset()
            return out
        code, resp = client.data(raw)
        for r in accepted:
            out[r] = _reply(code, resp)
        if 500 <= code < 600:
            events.append("delivery_message_rejected")
        return out
    except smtplib.SMTPConnectError as exc:
        events.append("delivery_greeting_failed")
        return _fail_rest(out, rcpts, Reply(0, f"smarthost refused the connection: {_reply(exc.smtp_code, exc.smtp_error)}"))
    except smtplib.SMTPResponseException as exc:
        return _fail_rest(out, rcpts, _reply(exc.smtp_code, exc.smtp_error))
    except (OSError, smtplib.SMTPException) as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return _fail_rest(out, rcpts, Reply(0, f"cannot deliver to smarthost {cfg.smarthost}: {reason}"))
    finally:
        if client is not None:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()


class OutboundQueue:
    """The background task that delivers due recipients; :meth:`wake` may be called from any thread."""

    def __init__(self, server: MailServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._gauge_lock = threading.Lock()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="outbound-queue")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=SMTP_TIMEOUT + 5)
            except (TimeoutError, asyncio.CancelledError):
                pass

    def wake(self) -> None:
        """Look for due messages now instead of at the next poll."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.run_once()
            except Exception:
                log.exception("queue run failed")
            if self._stopping:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.server.cfg.queue_poll_interval)
            except TimeoutError:
                pass

    async def run_once(self) -> None:
        """Deliver (or expire) every recipient that is due now."""
        if await asyncio.to_thread(is_paused, self.server):
            return
        due = await asyncio.to_thread(self._due, time.time())
        if not due:
            return
        limit = asyncio.Semaphore(PARALLEL)

        async def one(queue_id: int, rcpts: list[str]) -> None:
            async with limit:
                if self._stopping:
                    return
                await asyncio.to_thread(self.process_sync, queue_id, rcpts)

        await asyncio.gather(*(one(q, r) for q, r in due.items()))

    def _due(self, now: float) -> dict[int, list[str]]:
        rows = self.server.store.db.q(
            "SELECT queue_id, address FROM queue_recipients WHERE status IN (?,?) AND next_retry<=? "
            "ORDER BY next_retry, queue_id LIMIT ?",
            (*PENDING, now, BATCH * 10),
        )
        due: dict[int, list[str]] = {}
        for row in rows:
            if row[0] in due or len(due) < BATCH:
                due.setdefault(row[0], []).append(row[1])
        return due

    # -- one message ---------------------------------------------------------------------------------
    def process_sync(self, queue_id: int, rcpts: list[str]) -> None:
        """One delivery attempt for the due recipients of a message, then bookkeeping, DSN and cleanup."""
        server = self.server
        msg = server.store.db.one("SELECT return_path, blob_hash, created FROM queue_messages WHERE id=?", (queue_id,))
        if msg is None:
            return
        now = time.time()
        rows = {
            r["address"]: r
            for r in server.store.db.q(
                f"SELECT address, retry_num, expires, last_error FROM queue_recipients WHERE queue_id=? "
                f"AND status IN (?,?) AND address IN ({','.join('?' * len(rcpts))})",
                (queue_id, *PENDING, *rcpts),
            )
        }
        failures = [
            Failure(a, r["last_error"] or "no delivery attempt succeeded", expired=True) for a, r in rows.items() if r["expires"] <= now
        ]
        attempt = [a for a, r in rows.items() if r["expires"] > now]
        replies: dict[str, Reply] = {}
        if attempt:
            replies = self._attempt(msg["return_path"], attempt, msg["blob_hash"])
        with server.store.db.tx() as c:
            for f in failures:
                c.execute(
                    "UPDATE queue_recipients SET status=?, last_error=? WHERE queue_id=? AND address=? AND status IN (?,?)",
                    (PERM_FAIL, f"expired: {f.reason}", queue_id, f.recipient, *PENDING),
                )
            for addr, reply in replies.items():
                self._record(c, queue_id, addr, reply, rows[addr]["retry_num"], rows[addr]["expires"])
        failures += [Failure(a, str(r)) for a, r in replies.items() if r.status == PERM_FAIL]
        if failures:
            self._bounce(msg["return_path"], msg["blob_hash"], msg["created"], failures)
        self._finish(queue_id, msg["created"])

    def _attempt(self, return_path: str, rcpts: list[str], blob_hash: str) -> dict[str, Reply]:
        server, m = self.server, self.server.metrics
        if not server.cfg.smarthost:
            return {r: Reply(0, "no smarthost configured for outbound mail") for r in rcpts}
        try:
            raw = server.store.blobs.read(blob_hash)
        except OSError as exc:
            return {r: Reply(0, f"message content unreadable: {exc.strerror}") for r in rcpts}
        m.inc("delivery_attempt_start")
        self._connections(+1)
        started = time.monotonic()
        events: list[str] = []
        try:
            replies = send_via_smarthost(server, return_path, rcpts, raw, events)
        finally:
            self._connections(-1)
            m.observe("delivery_attempt_time", (time.monotonic() - started) * 1000)
            m.inc("delivery_attempt_end")
        for event in events:
            m.inc(event)
        return replies

    def _connections(self, delta: int) -> None:
        """The ``delivery_active_connections`` gauge (attempts run in several threads)."""
        with self._gauge_lock:
            self.server.active["delivery"] = self.server.active.get("delivery", 0) + delta

    def _record(self, c: sqlite3.Connection, queue_id: int, addr: str, reply: Reply, retry_num: int, expires: float) -> None:
        """Store one recipient's outcome; temporary failures are rescheduled with exponential backoff."""
        cfg, m = self.server.cfg, self.server.metrics
        status = reply.status
        if status == COMPLETED:
            m.inc("delivery_delivered")
            c.execute(
                "UPDATE queue_recipients SET status=?, last_error=? WHERE queue_id=? AND address=? AND status IN (?,?)",
                (COMPLETED, str(reply), queue_id, addr, *PENDING),
            )
            log.info("queue %s: delivered to %s (%s)", queue_id, addr, reply)
        elif status == PERM_FAIL:
            c.execute(
                "UPDATE queue_recipients SET status=?, last_error=? WHERE queue_id=? AND address=? AND status IN (?,?)",
                (PERM_FAIL, str(reply), queue_id, addr, *PENDING),
            )
            log.info("queue %s: %s failed permanently: %s", queue_id, addr, reply)
        else:
            delay = min(cfg.queue_retry_initial * 2 ** min(retry_num, 40), cfg.queue_retry_max)
            m.inc("queue_rescheduled")
            c.execute(
                "UPDATE queue_recipients SET status=?, retry_num=retry_num+1, next_retry=?, last_error=? "
                "WHERE queue_id=? AND address=? AND status IN (?,?)",
                (TEMP_FAIL, min(time.time() + delay, expires), str(reply), queue_id, addr, *PENDING),
            )
            log.info("queue %s: %s deferred (retry %d in %gs): %s", queue_id, addr, retry_num + 1, delay, reply)

    def _bounce(self, return_path: str, blob_hash: str, created: float, failures: list[Failure]) -> None:
        """Send the sender one DSN for ``failures`` (never to the null sender)."""
        from .delivery import route_sync

        server = self.server
        if not return_path or return_path == "<>":
            log.info("no DSN for a null-sender message (%d failed recipients)", len(failures))
            return
        try:
            try:
                original = server.store.blobs.read(blob_hash)
            except OSError:
                original = b""
            dsn = build_dsn(server.cfg.hostname, return_path, original, failures, created)
            result = route_sync(server, "", [return_path], dsn, autogenerated=True)
        except Exception:
            log.exception("DSN to %s could not be generated", return_path)
            return
        if result.delivered or result.queue_id is not None:
            server.metrics.inc("delivery_dsn_perm_fail")
            server.metrics.inc("queue_queue_dsn")
        else:
            log.info("DSN to %s not deliverable: %s", return_path, result.failed)

    def _finish(self, queue_id: int, created: float) -> None:
        """Remove the message once no recipient is pending."""
        with self.server.store.db.tx() as c:
            pending = c.execute(
                "SELECT 1 FROM queue_recipients WHERE queue_id=? AND status IN (?,?) LIMIT 1", (queue_id, *PENDING)
            ).fetchone()
            if pending is not None:
                return
            gone = c.execute("DELETE FROM queue_messages WHERE id=?", (queue_id,)).rowcount
        if gone:
            self.server.metrics.inc("delivery_completed")
            self.server.metrics.observe("delivery_total_time", (time.time() - created) * 1000)
