"""``auth_success`` counts verified logins, not requests: like Stalwart, which caches credentials, mailsrv counts a
success only when it actually checks a password (once per login and cache period), and every failure."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_PASSWORD, MASTER_PASSWORD, USER_PASSWORD, MailsrvProc


def counters(srv: MailsrvProc) -> dict[str, float]:
    text = requests.get(f"{srv.url}/metrics/prometheus", timeout=10).text
    return {f.name: f.samples[0].value for f in text_string_to_metric_families(text) if f.name in ("auth_success", "auth_failed")}


def delta(srv: MailsrvProc, before: dict[str, float]) -> tuple[float, float]:
    now = counters(srv)
    return (now.get("auth_success", 0) - before.get("auth_success", 0), now.get("auth_failed", 0) - before.get("auth_failed", 0))


def get(srv: MailsrvProc, path: str, user: str, password: str) -> int:
    return requests.get(f"{srv.url}{path}", auth=(user, password), timeout=10).status_code


def test_a_login_sending_credentials_with_every_request_counts_once(mailsrv: MailsrvProc) -> None:
    before = counters(mailsrv)
    for _ in range(5):  # an exporter polling the management API with the configured admin
        assert get(mailsrv, "/api/queue/status", "admin", ADMIN_PASSWORD) == 200
    assert delta(mailsrv, before) == (1, 0)

    for _ in range(3):  # an account's own login, then its JMAP requests
        assert get(mailsrv, "/jmap/session", "alice", USER_PASSWORD) == 200
    assert delta(mailsrv, before) == (2, 0)

    for _ in range(2):  # failures are never answered from the cache
        assert get(mailsrv, "/jmap/session", "alice", "wrong") == 401
        assert get(mailsrv, "/api/queue/status", "admin", "wrong") == 401
    assert delta(mailsrv, before) == (2, 4)
    assert get(mailsrv, "/jmap/session", "alice", USER_PASSWORD) == 200  # still verified
    assert get(mailsrv, "/jmap/session", "bob", USER_PASSWORD) == 200  # another login is checked
    assert delta(mailsrv, before) == (3, 4)

    for _ in range(3):  # master-user logins: the master password is checked once
        assert get(mailsrv, "/jmap/session", "alice%master", MASTER_PASSWORD) == 200
        assert get(mailsrv, "/jmap/session", "bob%master", MASTER_PASSWORD) == 200
    assert delta(mailsrv, before) == (4, 4)

    mailsrv.stop()  # the cache lives in the process: after a restart the first request is checked again
    mailsrv.start()
    before = counters(mailsrv)
    for _ in range(3):
        assert get(mailsrv, "/api/queue/status", "admin", ADMIN_PASSWORD) == 200
    assert delta(mailsrv, before) == (1, 0)
