"""mailsrv's SMTP listeners, driven with smtplib against a live server: inbound rules, submission with
STARTTLS + AUTH, bans, rate limits, byte-exact storage and malformed input."""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from mailsrv.server.store import Store
from tests.conftest import ADMIN_PASSWORD, MASTER_PASSWORD, USER_PASSWORD, MailsrvProc, start_mailsrv

MAX_SIZE = 20_000


# -- helpers shared with test_queue.py and test_durability.py -------------------------------------------
def wait_for(predicate: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_port(port: int, timeout: float = 15) -> None:
    def is_open() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_for(is_open, timeout, f"port {port}")


def inbox(srv: MailsrvProc, account: str) -> list[bytes]:
    """The raw messages in an account's Inbox, oldest first, read straight from the store."""
    store = Store(srv.data_dir)
    try:
        p = store.principals.by_name(account)
        assert p is not None, account
        rows = store.db.q(
            "SELECT e.blob_hash FROM emails e JOIN email_mailboxes em ON em.email_id=e.id "
            "JOIN mailboxes m ON m.id=em.mailbox_id WHERE e.account_id=? AND m.role='inbox' ORDER BY e.id",
            (p.id,),
        )
        return [store.blobs.read(r[0]) for r in rows]
    finally:
        store.close()


def metric(srv: MailsrvProc, name: str) -> float:
    """A counter or gauge value (histograms: their _count) from /metrics/prometheus; 0 if absent."""
    text = requests.get(f"{srv.url}/metrics/prometheus", timeout=10).text
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in (name, f"{name}_count"):
            return float(value)
    return 0.0


def split_received(stored: bytes) -> tuple[bytes, bytes]:
    """(mailsrv's Received: trace header, the message as the client sent it)."""
    assert stored.startswith(b"Received: from "), stored[:80]
    lines = stored.split(b"\r\n")
    n = 1
    while lines[n].startswith(b"\t"):
        n += 1
    head = b"\r\n".join(lines[:n]) + b"\r\n"
    return head, stored[len(head) :]


def tls_context(srv: MailsrvProc) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(srv.cert))


def submit(srv: MailsrvProc, user: str, password: str, **kw: Any) -> smtplib.SMTP:
    """A submission session after STARTTLS and AUTH."""
    c = smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=30, **kw)
    c.starttls(context=tls_context(srv))
    c.login(user, password)
    return c


def message(subject: str, body: str = "Hello.\r\n", extra: str = "") -> bytes:
    return (f"From: someone@remote.test\r\nTo: someone@example.org\r\nSubject: {subject}\r\n{extra}\r\n{body}").encode()


# -- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailsrvProc]:
    """One server for the module: alice, bob, carol (+ alias sales@), example.net with catch-all carol."""
    s = start_mailsrv(tmp_path_factory.mktemp("smtp"), max_message_size=MAX_SIZE)
    try:
        s.add_account("alice")
        s.add_account("bob")
        s.add_account("carol", USER_PASSWORD, "--email", "carol@example.org", "--email", "sales@example.org")
        s.cli("domain", "add", "example.net", "--catch-all", "carol")
        wait_port(s.smtp_port)
        wait_port(s.submission_port)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailsrvProc]:
    """A server with a tiny ban threshold and rate limit (tests use their own 127.0.0.x source address)."""
    s = start_mailsrv(tmp_path_factory.mktemp("limits"), auth_ban_failures=3, smtp_rate_limit=3, smtp_rate_window=600)
    try:
        s.add_account("alice")
        wait_port(s.smtp_port)
        wait_port(s.submission_port)
        yield s
    finally:
        s.stop()


# -- inbound ----------------------------------------------------------------------------------------------
def test_inbound_ehlo_offers_size_8bitmime_smtputf8_but_never_auth(srv: MailsrvProc) -> None:
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30) as c:
        assert c.ehlo()[0] == 250
        assert c.esmtp_features["size"] == str(MAX_SIZE)
        for ext in ("8bitmime", "smtputf8", "starttls"):
            assert ext in c.esmtp_features
        assert "auth" not in c.esmtp_features
        c.starttls(context=tls_context(srv))
        c.ehlo()
        assert "auth" not in c.esmtp_features
        assert c.docmd("AUTH", "PLAIN")[0] == 504


def test_inbound_refuses_relay_and_unknown_mailboxes(srv: MailsrvProc) -> None:
    before = metric(srv, "smtp_relay_not_allowed"), metric(srv, "smtp_mailbox_does_not_exist")
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30) as c:
        c.ehlo("client.remote.test")
        assert c.mail("spammer@remote.test")[0] == 250
        code, text = c.rcpt("victim@elsewhere.test")
        assert (code, text) == (554, b"5.7.1 Relay not allowed")
        code, text = c.rcpt("nobody@example.org")
        assert code == 550 and text.startswith(b"5.1.1")
        assert c.rcpt("x@mail.example.org.evil.test")[0] == 554  # suffix tricks are foreign too
        assert c.docmd("DATA")[0] == 503  # nothing was accepted
    assert metric(srv, "smtp_relay_not_allowed") == before[0] + 2
    assert metric(srv, "smtp_mailbox_does_not_exist") == before[1] + 1
    # the submission port does not relay without AUTH either
    with smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=30) as c:
        c.starttls(context=tls_context(srv))
        c.ehlo()
        assert c.mail("bob@example.org")[0] == 530
        assert c.docmd("RCPT TO:<victim@elsewhere.test>")[0] == 530


def test_inbound_delivers_to_aliases_detail_and_catch_all(srv: MailsrvProc) -> None:
    carol_before, bob_before = len(inbox(srv, "carol")), len(inbox(srv, "bob"))
    queued = metric(srv, "queue_queue_message")
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30) as c:
        for rcpt in ("sales@example.org", "SALES@Example.ORG", "anything@example.net", "bob+lists@example.org"):
            c.sendmail("sender@remote.test", [rcpt], message(f"to {rcpt}"))
        # one copy per account even when two recipients resolve to it
        c.sendmail("sender@remote.test", ["carol@example.org", "sales@example.org"], message("twice"))
    carol = inbox(srv, "carol")[carol_before:]
    assert [split_received(m)[1] for m in carol] == [
        message("to sales@example.org"),
        message("to SALES@Example.ORG"),
        message("to anything@example.net"),
        message("twice"),
    ]
    assert [split_received(m)[1] for m in inbox(srv, "bob")[bob_before:]] == [message("to bob+lists@example.org")]
    assert metric(srv, "queue_queue_message") == queued + 5
    assert metric(srv, "message_size") >= 5


def test_null_sender_and_missing_message_id_and_8bit_headers_stored_byte_exact(srv: MailsrvProc) -> None:
    raw = (
        b"From: =?utf-8?q?J=C3=B6rg?= <jorg@remote.test>\r\n"
        b"To: bob@example.org\r\n"
        b"Subject: Gr\xc3\xbc\xc3\x9fe aus M\xfcnchen\r\n"  # raw UTF-8 and a stray Latin-1 byte
        b"X-Weird:    spaced\t tabs  \r\n"
        b"\r\n"
        b".leading dot line\r\n"
        b"..two dots\r\n"
        b"8-bit body \xe2\x82\xac\r\n"
        b"no final newline"
    )
    before = len(inbox(srv, "bob"))
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30) as c:
        c.ehlo("client.remote.test")
        assert c.mail("<>", ["BODY=8BITMIME"])[0] == 250
        assert c.rcpt("bob@example.org")[0] == 250
        code, text = c.data(raw)
        assert code == 250, text
    (stored,) = inbox(srv, "bob")[before:]
    received, body = split_received(stored)
    assert body == raw + b"\r\n"  # SMTP ends DATA on a line boundary; nothing else changes
    assert b"by mail.example.org (mailsrv) with ESMTP id" in received
    assert b"from client.remote.test ([127.0.0.1])" in received
    assert b"for <bob@example.org>" in received


def test_smtputf8_addresses(srv: MailsrvProc) -> None:
    before = len(inbox(srv, "bob"))
    raw = "From: jöran@bücher.test\r\nSubject: ünïcödé\r\n\r\nhi\r\n".encode()
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30) as c:
        c.ehlo()
        assert c.mail("jöran@bücher.test", ["SMTPUTF8"])[0] == 250
        assert c.rcpt("bob@example.org")[0] == 250
        assert c.data(raw)[0] == 250
    (stored,) = inbox(srv, "bob")[before:]
    assert split_received(stored)[1] == raw


def test_size_limit(srv: MailsrvProc) -> None:
    before = metric(srv, "smtp_message_too_large")
    big = message("big", ("x" * 70 + "\r\n") * (MAX_SIZE // 72 + 10))
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30) as c:
        c.ehlo()
        code, text = c.mail("a@remote.test", [f"SIZE={MAX_SIZE + 1}"])
        assert code == 552 and text.startswith(b"5.3.4")
        c.mail("a@remote.test")
        c.rcpt("bob@example.org")
        code, text = c.data(big)
        assert (code, text) == (552, b"5.3.4 Message size exceeds fixed maximum message size")
        # the session goes on: a message within the limit is accepted
        c.sendmail("a@remote.test", ["bob@example.org"], message("small after big"))
    assert not any(b"Subject: big" in m for m in inbox(srv, "bob"))
    assert split_received(inbox(srv, "bob")[-1])[1] == message("small after big")
    assert metric(srv, "smtp_message_too_large") == before + 2


def _raw_session(port: int, lines: list[bytes]) -> list[bytes]:
    """Send each line and collect the reply to it (multi-line replies joined)."""
    out: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        for line in lines:
            s.sendall(line)
            reply = b""
            while True:
                part = f.readline()
                assert part, f"connection closed after {line!r}"
                reply += part
                if part[3:4] != b"-":
                    break
            out.append(reply)
    return out


def test_malformed_commands_get_smtp_errors_not_crashes(srv: MailsrvProc) -> None:
    syntax, invalid = metric(srv, "smtp_syntax_error"), metric(srv, "smtp_invalid_command")
    replies = _raw_session(
        srv.smtp_port,
        [
            b"MAIL FROM:<a@remote.test>\r\n",  # before EHLO
            b"EHLO\r\n",  # missing argument
            b"EHLO client.test\r\n",
            b"\r\n",  # empty line
            b"FOO bar\r\n",  # unknown command
            b"MAIL FROM:<broken\r\n",  # malformed address
            b"MAIL FROM:<no-domain>\r\n",
            b"MAIL TO:<a@remote.test>\r\n",  # wrong keyword
            b"RCPT TO:<bob@example.org>\r\n",  # before MAIL
            b"DATA\r\n",  # before RCPT
            b"MAIL FROM:<a@remote.test> FOO=BAR\r\n",  # unknown parameter
            b"MAIL FROM:<a@remote.test> SIZE=abc\r\n",
            b"M\xc3\x84IL FROM:<a@remote.test>\r\n",  # non-ASCII verb
            b"NOOP " + b"x" * 2000 + b"\r\n",  # too long
            b"MAIL FROM:<a@remote.test>\r\n",
            b"RCPT TO:<bob>\r\n",  # no domain
            b"RCPT TO:<bob@example.org> NOTIFY=NEVER\r\n",  # unsupported parameter
            b"RCPT TO:<bob@example.org>\r\n",
            b"DATA extra\r\n",
            b"RSET\r\n",
            b"QUIT\r\n",
        ],
    )
    codes = [int(r[:3]) for r in replies]
    assert codes == [503, 501, 250, 500, 500, 553, 553, 501, 503, 503, 555, 501, 500, 500, 250, 553, 555, 250, 501, 250, 221]
    assert metric(srv, "smtp_syntax_error") > syntax
    assert metric(srv, "smtp_invalid_command") > invalid
    # and the server still takes mail
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30) as c:
        c.sendmail("a@remote.test", ["bob@example.org"], message("after garbage"))


def test_failed_tls_handshake_is_harmless(srv: MailsrvProc) -> None:
    errors = metric(srv, "tls_handshake_error")
    with socket.create_connection(("127.0.0.1", srv.submission_port), timeout=30) as s, s.makefile("rb") as f:
        f.readline()
        s.sendall(b"EHLO client.test\r\nSTARTTLS\r\n")
        while not f.readline().startswith(b"220 "):
            pass
        s.sendall(b"this is not a TLS ClientHello\r\n" * 10)
        assert f.read() is not None  # the server hangs up
    wait_for(lambda: metric(srv, "tls_handshake_error") == errors + 1, what="TLS error metric")
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30) as c:
        c.sendmail("a@remote.test", ["bob@example.org"], message("after a bad handshake"))


# -- submission -------------------------------------------------------------------------------------------
def test_submission_auth_only_after_starttls(srv: MailsrvProc) -> None:
    with smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=30) as c:
        c.ehlo()
        assert "auth" not in c.esmtp_features
        with pytest.raises(smtplib.SMTPNotSupportedError):
            c.login("alice", USER_PASSWORD)
        assert c.docmd("AUTH", "PLAIN AGFsaWNlAHg=")[0] == 538
        assert c.mail("alice@example.org")[0] == 530
        c.starttls(context=tls_context(srv))
        c.ehlo()
        assert c.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        assert c.mail("alice@example.org")[0] == 530  # still needs AUTH
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.login("alice", "wrong")
        c.user, c.password = "alice", USER_PASSWORD
        assert c.auth("PLAIN", c.auth_plain)[0] == 235


def test_submission_auth_login_and_local_plus_remote_delivery(srv: MailsrvProc) -> None:
    before_bob = len(inbox(srv, "bob"))
    authed = metric(srv, "queue_queue_message_authenticated")
    with smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=30) as c:
        c.starttls(context=tls_context(srv))
        c.ehlo()
        c.user, c.password = "alice", USER_PASSWORD
        assert c.auth("LOGIN", c.auth_login, initial_response_ok=False)[0] == 235
        raw = message("mixed recipients")
        assert c.sendmail("alice@example.org", ["bob@example.org", "friend@remote.test"], raw) == {}
    (got,) = inbox(srv, "bob")[before_bob:]
    received, body = split_received(got)
    assert body == raw and b"with ESMTPSA" in received
    store = Store(srv.data_dir)
    try:
        rows = store.db.q(
            "SELECT m.return_path, r.address, m.blob_hash FROM queue_messages m JOIN queue_recipients r ON r.queue_id=m.id "
            "WHERE r.address='friend@remote.test'"
        )
        assert [(r[0], r[1]) for r in rows] == [("alice@example.org", "friend@remote.test")]
        assert store.blobs.read(rows[0][2]) == got  # the queued copy is the same bytes
    finally:
        store.close()
    assert metric(srv, "queue_queue_message_authenticated") == authed + 1
    assert metric(srv, "message_authenticated_size") >= 1


def test_submission_mail_from_must_be_own_address(srv: MailsrvProc) -> None:
    before = metric(srv, "smtp_mail_from_unauthorized")
    with submit(srv, "carol", USER_PASSWORD) as c:
        for sender in ("bob@example.org", "ceo@remote.test", "<>"):
            code, text = c.docmd(f"MAIL FROM:<{sender.strip('<>')}>")
            assert (code, text) == (550, b"5.7.1 You are not allowed to send from this address"), sender
        for sender in ("carol@example.org", "Sales@example.org", "carol+news@example.org"):
            assert c.mail(sender)[0] == 250, sender
            c.rset()
    assert metric(srv, "smtp_mail_from_unauthorized") == before + 3


def test_master_user_and_admin_logins(srv: MailsrvProc) -> None:
    before = len(inbox(srv, "bob"))
    with submit(srv, "alice%master", MASTER_PASSWORD) as c:
        assert c.mail("bob@example.org")[0] == 550  # the session is alice
        c.rset()
        c.sendmail("alice@example.org", ["bob@example.org"], message("via master"))
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submit(srv, "alice%master", "not-the-master-password")
    with submit(srv, "admin", ADMIN_PASSWORD) as c:  # the configured admin may send as anyone
        c.sendmail("postmaster@elsewhere.test", ["bob@example.org"], message("from admin"))
    assert [split_received(m)[1] for m in inbox(srv, "bob")[before:]] == [message("via master"), message("from admin")]


def test_connection_metrics_and_gauge(srv: MailsrvProc) -> None:
    start, end = metric(srv, "smtp_connection_start"), metric(srv, "smtp_connection_end")
    c = smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30)
    c.ehlo()
    assert metric(srv, "smtp_active_connections") >= 1
    assert metric(srv, "smtp_connection_start") == start + 1
    c.quit()
    wait_for(lambda: metric(srv, "smtp_connection_end") == end + 1, what="connection end")
    assert metric(srv, "smtp_request_time") >= 1


# -- bans and rate limits (own server, own source addresses) ---------------------------------------------
def _auth_plain(c: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """Exactly one AUTH PLAIN attempt (smtplib's login() tries every mechanism)."""
    return c.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode())


def test_ban_after_failures_gives_421_at_connect_on_both_listeners(limited: MailsrvProc) -> None:
    src = ("127.0.0.2", 0)
    banned = metric(limited, "security_authentication_ban")
    replies = []
    for _ in range(3):  # auth_ban_failures = 3
        with smtplib.SMTP("127.0.0.1", limited.submission_port, timeout=30, source_address=src) as c:
            c.starttls(context=tls_context(limited))
            c.ehlo()
            replies.append(_auth_plain(c, "alice", "wrong"))
    assert [code for code, _ in replies] == [535, 535, 421]  # the third failure bans and closes
    for port in (limited.submission_port, limited.smtp_port):
        with pytest.raises(smtplib.SMTPConnectError) as err:
            smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=src)
        assert err.value.smtp_code == 421
    # other addresses are unaffected
    with smtplib.SMTP("127.0.0.1", limited.submission_port, timeout=30, source_address=("127.0.0.3", 0)) as c:
        c.starttls(context=tls_context(limited))
        c.ehlo()
        assert _auth_plain(c, "alice", USER_PASSWORD)[0] == 235
    assert metric(limited, "security_authentication_ban") == banned + 1


def test_rate_limit_per_ip(limited: MailsrvProc) -> None:
    src = ("127.0.0.4", 0)
    with smtplib.SMTP("127.0.0.1", limited.smtp_port, timeout=30, source_address=src) as c:
        for i in range(3):
            c.sendmail("a@remote.test", ["alice@example.org"], message(f"rate {i}"))
        code, text = c.mail("a@remote.test")
        assert (code, text) == (452, b"4.7.1 Rate limit exceeded, try again later")
    with smtplib.SMTP("127.0.0.1", limited.smtp_port, timeout=30, source_address=("127.0.0.5", 0)) as c:
        c.sendmail("a@remote.test", ["alice@example.org"], message("other ip"))
    assert metric(limited, "smtp_rate_limit_exceeded") == 1
    assert [split_received(m)[1] for m in inbox(limited, "alice")] == [
        message("rate 0"),
        message("rate 1"),
        message("rate 2"),
        message("other ip"),
    ]
