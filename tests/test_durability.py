"""Every message that got "250" survives kill -9: many concurrent SMTP clients, the server is SIGKILLed
mid-stream, restarted on the same data, and each acknowledged message must be there byte for byte."""

from __future__ import annotations

import signal
import smtplib
import threading
import time
from collections.abc import Callable

import pytest

from mailsrv.server.store import Store
from tests.conftest import USER_PASSWORD, MailsrvProc
from tests.test_smtp import inbox, split_received, tls_context, wait_for, wait_port

CLIENTS = 6
KILL_AFTER = 60  # acknowledged messages before the kill


def _raw(client: int, n: int) -> bytes:
    body = "".join(f"line {i} of message {client}-{n} \u00e9\u20ac\r\n" for i in range(40)).encode()
    return (
        f"From: sender{client}@remote.test\r\nTo: bob@example.org\r\nSubject: durable {client}-{n}\r\n"
        f"Message-ID: <durable-{client}-{n}@remote.test>\r\n\r\n"
    ).encode() + body


def _sender(srv: MailsrvProc, client: int, submission: bool, acked: list[bytes], lock: threading.Lock, stop: threading.Event) -> None:
    """Send messages until the server dies; record exactly those answered 250."""
    n = 0
    try:
        if submission:
            c = smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=30)
            c.starttls(context=tls_context(srv))
            c.login("alice", USER_PASSWORD)
            sender, rcpts = "alice@example.org", ["bob@example.org", "far@remote.test"]
        else:
            c = smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30)
            c.ehlo()
            sender, rcpts = f"sender{client}@remote.test", ["bob@example.org"]
        while not stop.is_set():
            raw = _raw(client, n)
            n += 1
            if c.mail(sender)[0] != 250:
                return
            for r in rcpts:
                c.rcpt(r)
            code, _ = c.data(raw)
            if code == 250:
                with lock:
                    acked.append(raw)
    except (OSError, smtplib.SMTPException):
        return  # the server was killed


def _queued_blobs(srv: MailsrvProc) -> list[bytes]:
    store = Store(srv.data_dir)
    try:
        rows = store.db.q("SELECT blob_hash FROM queue_messages ORDER BY id")
        return [store.blobs.read(r[0]) for r in rows]
    finally:
        store.close()


@pytest.mark.slow
def test_acknowledged_messages_survive_kill_9(mailsrv_factory: Callable[..., MailsrvProc]) -> None:
    srv = mailsrv_factory("durable")  # no smarthost: submitted remote copies stay in the queue
    srv.add_account("alice")
    srv.add_account("bob")
    wait_port(srv.smtp_port)
    wait_port(srv.submission_port)
    acked: list[bytes] = []
    lock = threading.Lock()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_sender, args=(srv, i, i % 3 == 0, acked, lock, stop), daemon=True) for i in range(CLIENTS)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= KILL_AFTER, timeout=60, what=f"{KILL_AFTER} acknowledged messages")
    srv.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    with lock:
        acknowledged = list(acked)
    rate = len(acknowledged) / (killed_at - started)
    srv.start()

    stored = {split_received(m)[1] for m in inbox(srv, "bob")}
    missing = [raw.split(b"\r\n")[2] for raw in acknowledged if raw not in stored]
    assert not missing, f"{len(missing)} acknowledged messages lost: {missing[:5]}"
    # submitted messages also have their remote copy in the persistent queue, byte for byte
    queued = {split_received(m)[1] for m in _queued_blobs(srv)}
    submitted = [raw for raw in acknowledged if b"From: sender0@" in raw or b"From: sender3@" in raw]
    assert submitted, "no submission was acknowledged before the kill"
    assert all(raw in queued for raw in submitted)
    # and the restarted server takes mail again
    wait_port(srv.smtp_port)
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30) as c:
        c.sendmail("a@remote.test", ["bob@example.org"], b"Subject: after restart\r\n\r\nhi\r\n")
    print(f"\nacknowledged before kill -9: {len(acknowledged)} ({rate:.0f} msg/s over {CLIENTS} clients); all present after restart")

