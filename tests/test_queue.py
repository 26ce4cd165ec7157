"""The outbound queue against a real smarthost (an aiosmtpd sink on a run-time port): delivery, retries
with backoff, permanent failures and expiry with DSNs, the pause flag, and vacation auto-replies."""

from __future__ import annotations

import json
import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from mailsrv.server.store import Store
from tests.conftest import ADMIN_PASSWORD, USER_PASSWORD, MailsrvProc, free_port, start_mailsrv
from tests.test_smtp import inbox, message, metric, split_received, submit, wait_for, wait_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


@dataclass
class Sink:
    """A smarthost: ``temp*`` recipients get 451 while ``defer`` is set, ``perm*`` always get 550."""

    defer: bool = False
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        local = address.split("@")[0]
        if local.startswith("perm"):
            return "550 5.1.1 No such user here"
        if local.startswith("temp") and self.defer:
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        with self.lock:
            self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 Queued on the smarthost"

    def to(self, rcpt: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if rcpt in m.rcpt_tos]


@pytest.fixture(scope="module")
def sink() -> Iterator[tuple[Sink, int]]:
    handler = Sink()
    port = free_port()
    ctl = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False, enable_SMTPUTF8=True)
    ctl.start()
    try:
        yield handler, port
    finally:
        ctl.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, sink: tuple[Sink, int]) -> Iterator[MailsrvProc]:
    s = start_mailsrv(
        tmp_path_factory.mktemp("queue"),
        smarthost=f"127.0.0.1:{sink[1]}",
        queue_retry_initial=0.3,
        queue_retry_max=0.6,
        queue_poll_interval=0.1,
        vacation_interval=3600,
    )
    try:
        s.add_account("alice")
        s.add_account("bob")
        wait_port(s.smtp_port)
        wait_port(s.submission_port)
        yield s
    finally:
        s.stop()


def queue_rows(srv: MailsrvProc) -> list[dict[str, Any]]:
    store = Store(srv.data_dir)
    try:
        rows = store.db.q(
            "SELECT m.id, m.return_path, r.address, r.status, r.retry_num, r.next_retry, r.expires, r.last_error "
            "FROM queue_messages m JOIN queue_recipients r ON r.queue_id=m.id ORDER BY m.id, r.address"
        )
        return [dict(r) for r in rows]
    finally:
        store.close()


def queue_empty(srv: MailsrvProc) -> bool:
    store = Store(srv.data_dir)
    try:
        row = store.db.one("SELECT COUNT(*) FROM queue_messages")
        return row is not None and row[0] == 0
    finally:
        store.close()


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def dsn_parts(raw: bytes) -> tuple[EmailMessage, str, str]:
    """(the DSN, its delivery-status text, its returned headers)."""
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = parts[1].as_string()
    headers = parts[2].get_payload()
    assert isinstance(headers, str)
    return msg, status, headers


def test_delivered_through_smarthost_byte_exact_and_queue_empties(srv: MailsrvProc, sink: tuple[Sink, int]) -> None:
    handler, _ = sink
    delivered = metric(srv, "delivery_delivered")
    raw = message("outbound", "caf\xe9 \u2603\r\n.dot line\r\n")
    with submit(srv, "alice", USER_PASSWORD) as c:
        c.sendmail("alice@example.org", ["ok1@remote.test", "ok2@remote.test"], raw)
    (got,) = wait_for(lambda: handler.to("ok1@remote.test"), what="smarthost delivery")
    assert got.mail_from == "alice@example.org"
    assert sorted(got.rcpt_tos) == ["ok1@remote.test", "ok2@remote.test"]  # one transaction for both
    received, body = split_received(got.content)
    assert body == raw and b"with ESMTPSA" in received
    wait_for(lambda: queue_empty(srv), what="empty queue")
    assert metric(srv, "delivery_delivered") == delivered + 2
    for name in ("delivery_completed", "delivery_attempt_start", "delivery_attempt_end", "delivery_total_time", "delivery_attempt_time"):
        assert metric(srv, name) >= 1, name
    assert metric(srv, "queue_count") == 0


def test_temp_failure_retries_with_backoff_then_delivers(srv: MailsrvProc, sink: tuple[Sink, int]) -> None:
    handler, _ = sink
    rescheduled = metric(srv, "queue_rescheduled")
    handler.defer = True
    try:
        with submit(srv, "alice", USER_PASSWORD) as c:
            c.sendmail("alice@example.org", ["temp1@remote.test"], message("deferred"))
        rows = wait_for(
            lambda: [r for r in queue_rows(srv) if r["address"] == "temp1@remote.test" and r["retry_num"] >= 3],
            what="three failed attempts",
        )
        (row,) = rows
        assert row["status"] == "temp_fail"
        assert row["last_error"] == "451 4.3.0 Try again later"
        assert row["next_retry"] > time.time() - 1
        assert handler.to("temp1@remote.test") == []
        assert metric(srv, "queue_rescheduled") >= rescheduled + 3
    finally:
        handler.defer = False
    (got,) = wait_for(lambda: handler.to("temp1@remote.test"), what="delivery after the smarthost recovers")
    assert split_received(got.content)[1] == message("deferred")
    wait_for(lambda: queue_empty(srv), what="empty queue")


def test_permanent_failure_bounces_to_sender_inbox(srv: MailsrvProc, sink: tuple[Sink, int]) -> None:
    handler, _ = sink
    before = len(inbox(srv, "alice"))
    dsns, rejected = metric(srv, "queue_queue_dsn"), metric(srv, "delivery_rcpt_to_rejected")
    with submit(srv, "alice", USER_PASSWORD) as c:
        raw = message("partly bounced", extra="Message-ID: <orig-1@example.org>\r\n")
        c.sendmail("alice@example.org", ["perm1@remote.test", "ok3@remote.test"], raw)
    wait_for(lambda: handler.to("ok3@remote.test"), what="the good recipient's delivery")
    wait_for(lambda: queue_empty(srv), what="empty queue")
    (bounce,) = wait_for(lambda: inbox(srv, "alice")[before:], what="DSN in alice's Inbox")
    msg, status, headers = dsn_parts(bounce)
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@mail.example.org"
    assert msg["To"].addresses[0].addr_spec == "alice@example.org"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert "Final-Recipient: rfc822; perm1@remote.test" in status
    assert "Action: failed" in status and "Status: 5.1.1" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1 No such user here" in status
    assert "Reporting-MTA: dns; mail.example.org" in status
    assert "ok3@remote.test" not in status
    assert "Subject: partly bounced" in headers and "Message-ID: <orig-1@example.org>" in headers
    assert handler.to("alice@example.org") == []  # the DSN stayed local
    assert metric(srv, "queue_queue_dsn") == dsns + 1
    assert metric(srv, "delivery_rcpt_to_rejected") == rejected + 1
    assert metric(srv, "delivery_dsn_perm_fail") >= 1


def test_null_sender_message_is_never_bounced(srv: MailsrvProc, sink: tuple[Sink, int]) -> None:
    dsns = metric(srv, "queue_queue_dsn")
    counts = {a: len(inbox(srv, a)) for a in ("alice", "bob")}
    with submit(srv, "admin", ADMIN_PASSWORD) as c:  # the admin may send with a null return path
        assert c.mail("<>")[0] == 250
        assert c.rcpt("perm2@remote.test")[0] == 250
        assert c.data(message("bounce of a bounce"))[0] == 250
    wait_for(lambda: queue_empty(srv), what="perm_fail recipient leaving the queue")
    time.sleep(0.5)
    assert metric(srv, "queue_queue_dsn") == dsns
    assert {a: len(inbox(srv, a)) for a in ("alice", "bob")} == counts


def test_pause_flag_holds_deliveries(srv: MailsrvProc, sink: tuple[Sink, int]) -> None:
    handler, _ = sink
    store = Store(srv.data_dir)
    try:
        with store.db.tx() as c:
            c.execute("INSERT INTO meta(key, value) VALUES('queue_paused','1') ON CONFLICT(key) DO UPDATE SET value='1'")
        with submit(srv, "alice", USER_PASSWORD) as c:
            c.sendmail("alice@example.org", ["ok4@remote.test"], message("held"))
        time.sleep(1.5)
        assert handler.to("ok4@remote.test") == []
        assert [(r["address"], r["status"], r["retry_num"]) for r in queue_rows(srv)] == [("ok4@remote.test", "scheduled", 0)]
        with store.db.tx() as c:
            c.execute("UPDATE meta SET value='0' WHERE key='queue_paused'")
    finally:
        store.close()
    wait_for(lambda: handler.to("ok4@remote.test"), what="delivery after resuming")
    wait_for(lambda: queue_empty(srv), what="empty queue")


def _set_vacation(srv: MailsrvProc, account: str, data: dict[str, Any]) -> None:
    store = Store(srv.data_dir)
    try:
        p = store.principals.by_name(account)
        assert p is not None
        with store.db.tx() as c:
            c.execute(
                "INSERT INTO vacation(account_id, data) VALUES(?,?) ON CONFLICT(account_id) DO UPDATE SET data=excluded.data",
                (p.id, json.dumps(data)),
            )
    finally:
        store.close()


def _inbound(srv: MailsrvProc, sender: str, rcpt: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30) as c:
        c.sendmail(sender, [rcpt], raw)


def test_vacation_reply_once_per_sender(srv: MailsrvProc, sink: tuple[Sink, int]) -> None:
    handler, _ = sink
    autogen = metric(srv, "queue_queue_autogenerated")
    _set_vacation(
        srv,
        "bob",
        {"isEnabled": True, "fromDate": "2000-01-01T00:00:00Z", "toDate": None, "subject": "Away until Monday",
         "textBody": "I am out of the office.", "htmlBody": None},
    )
    no_reply = [
        ("list1@remote.test", message("list", extra="List-Id: <news.remote.test>\r\n")),
        ("bulk1@remote.test", message("bulk", extra="Precedence: bulk\r\n")),
        ("auto1@remote.test", message("auto", extra="Auto-Submitted: auto-generated\r\n")),
        ("MAILER-DAEMON@remote.test", message("bounce")),
        ("", message("null sender")),
    ]
    for sender, raw in no_reply:
        _inbound(srv, sender, "bob@example.org", raw)
    for i in range(3):
        _inbound(srv, "carol@remote.test", "bob@example.org", message(f"hello {i}", extra=f"Message-ID: <carol-{i}@remote.test>\r\n"))
    _inbound(srv, "dave@remote.test", "bob@example.org", message("from dave", extra="Auto-Submitted: no\r\n"))
    wait_for(lambda: handler.to("dave@remote.test"), what="dave's auto-reply")
    wait_for(lambda: queue_empty(srv), what="empty queue")
    (reply,) = handler.to("carol@remote.test")
    assert reply.mail_from == "<>"  # null return path
    msg = parse(reply.content)
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Subject"] == "Away until Monday"
    assert msg["In-Reply-To"] == "<carol-0@remote.test>"
    assert msg["References"] == "<carol-0@remote.test>"
    assert msg["From"].addresses[0].addr_spec == "bob@example.org"
    assert msg.get_content().strip() == "I am out of the office."
    assert len(handler.to("dave@remote.test")) == 1
    for sender, _ in no_reply:
        if sender:
            assert handler.to(sender) == [], sender
    assert metric(srv, "queue_queue_autogenerated") == autogen + 2
    assert len(inbox(srv, "bob")) >= 9  # every message was delivered regardless


def test_vacation_outside_its_dates_is_silent(srv: MailsrvProc, sink: tuple[Sink, int]) -> None:
    handler, _ = sink
    _set_vacation(srv, "alice", {"isEnabled": True, "fromDate": "2000-01-01T00:00:00Z", "toDate": "2001-01-01T00:00:00Z",
                                 "subject": None, "textBody": "old", "htmlBody": None})
    _inbound(srv, "erin@remote.test", "alice@example.org", message("too late"))
    _inbound(srv, "frank@remote.test", "bob@example.org", message("marker"))  # bob's vacation is still on
    wait_for(lambda: handler.to("frank@remote.test"), what="frank's auto-reply")
    wait_for(lambda: queue_empty(srv), what="empty queue")
    assert handler.to("erin@remote.test") == []


def test_unreachable_smarthost_expires_with_dsn(mailsrv_factory: Any) -> None:
    dead = free_port()  # nothing listens here
    s = mailsrv_factory("expiry", smarthost=f"127.0.0.1:{dead}", queue_retry_initial=0.2, queue_retry_max=0.4,
                        queue_poll_interval=0.1, queue_expire=2.0)
    s.add_account("alice")
    wait_port(s.submission_port)
    with submit(s, "alice", USER_PASSWORD) as c:
        c.sendmail("alice@example.org", ["someone@remote.test"], message("never arrives"))
    row = wait_for(lambda: [r for r in queue_rows(s) if r["retry_num"] >= 1], what="a failed attempt")[0]
    assert row["status"] == "temp_fail" and "cannot deliver to smarthost" in row["last_error"]
    (bounce,) = wait_for(lambda: inbox(s, "alice"), timeout=20, what="expiry DSN")
    _, status, headers = dsn_parts(bounce)
    assert "Final-Recipient: rfc822; someone@remote.test" in status
    assert "Status: 4.4.7" in status and "Action: failed" in status
    assert "Subject: never arrives" in headers
    text = parse(bounce).get_body(("plain",))
    assert text is not None and "delivery time expired" in text.get_content()
    assert queue_empty(s)
    assert metric(s, "queue_queue_dsn") == 1


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smarthost_auth_uses_the_password_file(mailsrv_factory: Any, tmp_path: Any) -> None:
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.login == b"relay" and auth_data.password == b"relay-secret")

    handler = Sink()
    port = free_port()
    ctl = Controller(handler, hostname="127.0.0.1", port=port, authenticator=authenticator, auth_required=True,
                     auth_require_tls=False, decode_data=False)
    ctl.start()
    try:
        secret = tmp_path / "smarthost.pw"
        secret.write_text("relay-secret\n")
        s = mailsrv_factory("relay", smarthost=f"127.0.0.1:{port}", smarthost_user="relay", smarthost_password_file=str(secret),
                            queue_poll_interval=0.1)
        s.add_account("alice")
        wait_port(s.submission_port)
        with submit(s, "alice", USER_PASSWORD) as c:
            c.sendmail("alice@example.org", ["friend@remote.test"], message("relayed with auth"))
        (got,) = wait_for(lambda: handler.to("friend@remote.test"), what="authenticated relay")
        assert split_received(got.content)[1] == message("relayed with auth")
        assert logins[-1] == (b"relay", b"relay-secret")
        assert b"relay-secret" not in s.log.read_bytes() and b"relay-secret" not in s.config.read_bytes()
    finally:
        ctl.stop()
