"""The foundation: mailsrv starts, serves a JMAP session, and answers Core/echo."""

from __future__ import annotations

import requests

from tests.conftest import MailsrvProc


def test_session_and_echo(mailsrv: MailsrvProc) -> None:
    s = mailsrv.session("alice")
    assert s["username"] == "alice"
    (aid,) = s["accounts"]
    assert s["primaryAccounts"]["urn:ietf:params:jmap:mail"] == aid
    assert s["capabilities"]["urn:ietf:params:jmap:core"]["maxObjectsInGet"] == 500
    out = mailsrv.jmap("alice", [["Core/echo", {"hello": True}, "c0"]])
    assert out == [["Core/echo", {"hello": True}, "c0"]]


def test_wrong_password_is_401(mailsrv: MailsrvProc) -> None:
    r = requests.get(f"{mailsrv.url}/jmap/session", auth=("alice", "nope"), timeout=5)
    assert r.status_code == 401
    assert "Basic" in r.headers["WWW-Authenticate"]
