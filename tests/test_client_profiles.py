"""Server profiles and management dialects of mailsrv.client against real servers.

mailsrv serves as ``embedded`` / ``stalwart-0.15`` (REST ``/api``, master user or admin impersonation) and as
``stalwart-0.16`` (JMAP ``x:`` objects, ``<target>%<admin>`` logins); the Cyrus testbed as ``generic`` with
per-account passwords and Bearer JWTs.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mailsrv.client import AuthError, BearerAuth, EmailImport, UnknownAccount, UnsupportedCapability, open_profile
from mailsrv.client.management import ManagedAccount, QueuedMessage, jmap_account_id
from mailsrv.client.profiles import account_env, select_accounts
from mailsrv.config import ConfigError, parse_config
from tests.conftest import ADMIN_PASSWORD, MASTER_PASSWORD, USER_PASSWORD, MailsrvProc, free_port

if TYPE_CHECKING:
    from tests.cyrus import CyrusTestbed

pytest_plugins = ("tests.cyrus",)  # the module-scoped ``cyrus`` fixture


def config(tmp_path: Path, server: dict[str, Any], accounts: dict[str, Any] | None = None) -> Any:
    return parse_config({"server": server, "accounts": accounts or {}}, str(tmp_path / "config.toml"))


def mailsrv_server(srv: MailsrvProc, profile: str, *, master: bool) -> dict[str, Any]:
    server: dict[str, Any] = {"profile": profile, "url": srv.url, "admin_user": "admin",
                              "admin_password_file": str(srv.dir / "admin.pw")}
    if master:
        server.update(master_user="master", master_password_file=str(srv.dir / "master.pw"))
    return server


# -- no server needed ------------------------------------------------------------------------------
def test_jmap_account_id_uses_stalwart_alphabet() -> None:
    assert [jmap_account_id(n) for n in (0, 1, 25, 26, 31, 32, 33, 1024)] == ["a", "b", "z", "7", "3", "ba", "bb", "baa"]
    with pytest.raises(ValueError):
        jmap_account_id(-1)


def test_select_accounts_by_globs() -> None:
    accounts = [ManagedAccount(n) for n in ("alice", "bob", "carol", "Anna", "admin@example.org")]
    names = lambda sel: [a.name for a in sel]  # noqa: E731
    assert names(select_accounts(accounts, ["*"], [])) == ["alice", "bob", "carol", "Anna", "admin@example.org"]
    assert names(select_accounts(accounts, ["a*"], ["*@example.org"])) == ["alice"]  # case-sensitive: not Anna
    assert names(select_accounts(accounts, ["*"], ["bob", "c?rol"])) == ["alice", "Anna", "admin@example.org"]
    assert names(select_accounts(accounts, ["bob", "nobody"], [])) == ["bob"]


def test_generic_profile_config_mistakes(tmp_path: Path) -> None:
    server = {"profile": "generic", "url": "https://mail.example.org"}
    with pytest.raises(ConfigError, match=r"accounts\.credentials"):
        open_profile(config(tmp_path, server))
    both = {"credentials": {"alice": {"user": "alice", "password_file": "/a", "token_file": "/b"}}}
    with pytest.raises(ConfigError, match="not both"):
        open_profile(config(tmp_path, server, both))
    none = open_profile(config(tmp_path, server, {"credentials": {"alice": {"user": "alice"}}}))
    with pytest.raises(ConfigError) as exc:
        none.login_for(none.account("alice"))
    assert "accounts.credentials.alice" in str(exc.value) and account_env("PASSWORD", "alice") in str(exc.value)
    missing = open_profile(config(tmp_path, server, {"credentials": {"alice": {"user": "alice", "password_file": str(tmp_path / "nope")}}}))
    with pytest.raises(ConfigError, match=r"accounts\.credentials\.alice\.password_file: cannot read"):
        missing.login_for(missing.account("alice"))
    with pytest.raises(UnknownAccount):
        missing.account("bob")

    secret = tmp_path / "alice.pw"
    secret.write_text("from-the-file\n")
    prof = open_profile(config(tmp_path, server, {"credentials": {"alice": {"user": "alice", "password_file": str(secret)}}}))
    login = prof.login_for(prof.account("alice"))
    assert login.method == "own-credentials" and login.auth.describe() == "user 'alice'"
    assert "from-the-file" not in repr(login.auth)
    assert account_env("TOKEN", "alice@example.org") == "MAILSIDECAR_TOKEN_ALICE_EXAMPLE_ORG"


def test_admin_secret_missing_is_a_config_error(tmp_path: Path) -> None:
    prof = open_profile(config(tmp_path, {"profile": "stalwart-0.15", "url": "https://mail.example.org"}))
    with pytest.raises(ConfigError, match=r"server\.admin_password_file.*MAILSIDECAR_ADMIN_PASSWORD"):
        prof.list_accounts()


# -- mailsrv as embedded / stalwart-0.15 -----------------------------------------------------------
@pytest.mark.parametrize("profile", ["embedded", "stalwart-0.15"])
def test_rest_profile_with_master_user(mailsrv: MailsrvProc, tmp_path: Path, profile: str) -> None:
    prof = open_profile(config(tmp_path, mailsrv_server(mailsrv, profile, master=True)))
    accounts = prof.list_accounts()
    assert [a.name for a in accounts] == ["alice", "bob"]
    alice = prof.account("alice")
    assert alice.emails == ["alice@example.org"] and prof.account("alice@example.org") == alice
    login = prof.login_for(alice)
    assert login.method == "master-user" and login.auth.describe() == "user 'alice%master'" and login.account_id is None
    with prof.open(alice) as client:
        assert client.session.username == "alice"
        assert client.account_id == alice.account_id  # base32 of the principal id = the JMAP accountId
        assert any(m.role == "inbox" for m in client.mailboxes())
    prof.close()


@pytest.mark.parametrize("profile", ["embedded", "stalwart-0.15"])
def test_rest_profile_admin_impersonation_without_master(mailsrv: MailsrvProc, tmp_path: Path, profile: str) -> None:
    prof = open_profile(config(tmp_path, mailsrv_server(mailsrv, profile, master=False)))
    bob = prof.account("bob")
    login = prof.login_for(bob)
    assert login.method == "admin-impersonation" and login.auth.describe() == "user 'admin'"
    with prof.open(bob) as client:
        assert bob.account_id not in client.session.accounts  # the admin's session does not list bob …
        assert client.account_id == bob.account_id  # … so the id from the principal list is used
        inbox = next(m for m in client.mailboxes() if m.role == "inbox")
        up = client.upload(b"Subject: via admin\r\n\r\nhi\r\n", content_type="message/rfc822")
        created = client.email_import({"m": EmailImport(up.blob_id, {inbox.id: True})})
        assert created.email_id("m")


def test_rest_profile_selection_and_wrong_admin_password(mailsrv: MailsrvProc, tmp_path: Path) -> None:
    prof = open_profile(config(tmp_path, mailsrv_server(mailsrv, "embedded", master=True), {"exclude": ["bob"]}))
    assert [a.name for a in prof.list_accounts()] == ["alice"]
    with pytest.raises(UnknownAccount):
        prof.account("bob")
    bad = tmp_path / "bad.pw"
    bad.write_text("not-the-admin-password\n")
    server = {**mailsrv_server(mailsrv, "embedded", master=False), "admin_password_file": str(bad)}
    with pytest.raises(AuthError) as exc:
        open_profile(config(tmp_path, server)).list_accounts()
    assert "'admin'" in str(exc.value) and "not-the-admin-password" not in str(exc.value)


def _queue_one(srv: MailsrvProc) -> None:
    """Submit one message to a foreign address; the smarthost port is closed, so it stays queued."""
    ctx = ssl.create_default_context(cafile=str(srv.cert))
    ctx.check_hostname = False
    with smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=30) as smtp:
        smtp.starttls(context=ctx)
        smtp.login("alice", USER_PASSWORD)
        smtp.sendmail("alice@example.org", ["friend@far-away.test", "other@far-away.test"],
                      b"From: alice@example.org\r\nTo: friend@far-away.test\r\nSubject: queued\r\n\r\nhello\r\n")


def _wait_queue(fetch: Callable[[], list[QueuedMessage]], status: str) -> QueuedMessage:
    deadline = time.monotonic() + 20
    while True:
        queued = fetch()
        if queued and all(r.status == status for r in queued[0].recipients):
            return queued[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"queue never reached {status}: {queued}")
        time.sleep(0.2)


@pytest.fixture
def queued_srv(mailsrv_factory: Callable[..., MailsrvProc]) -> MailsrvProc:
    srv = mailsrv_factory(smarthost=f"127.0.0.1:{free_port()}", queue_retry_initial=600, queue_retry_max=600)
    srv.add_account("alice")
    srv.add_account("bob")
    _queue_one(srv)
    return srv


@pytest.mark.parametrize("profile", ["embedded", "stalwart-0.16"])
def test_queue_listing_typed(queued_srv: MailsrvProc, tmp_path: Path, profile: str) -> None:
    prof = open_profile(config(tmp_path, mailsrv_server(queued_srv, profile, master=False)))
    assert prof.management.supports_queue
    msg = _wait_queue(prof.management.list_queue, "temp_fail")
    assert msg.return_path == "alice@example.org" and msg.size > 0 and msg.created
    assert sorted(r.address for r in msg.recipients) == ["friend@far-away.test", "other@far-away.test"]
    assert all(r.detail for r in msg.recipients)  # the connection error text
    assert msg.next_retry
    if profile == "embedded":
        assert prof.management.queue_size() == 1  # type: ignore[attr-defined]
    prof.close()


# -- mailsrv as stalwart-0.16 ----------------------------------------------------------------------
def test_stalwart016_profile_impersonation(mailsrv: MailsrvProc, tmp_path: Path) -> None:
    prof = open_profile(config(tmp_path, mailsrv_server(mailsrv, "stalwart-0.16", master=False)))
    accounts = prof.list_accounts()
    assert [a.name for a in accounts] == ["alice@example.org", "bob@example.org"]  # 0.16 logins are addresses
    alice = prof.account("alice@example.org")
    login = prof.login_for(alice)
    assert login.method == "impersonation" and login.auth.describe() == "user 'alice@example.org%admin'"
    with prof.open(alice) as client:
        assert client.session.username == "alice"
        assert client.account_id == alice.account_id
        assert client.mailboxes()
    wrong = open_profile(config(tmp_path, {**mailsrv_server(mailsrv, "stalwart-0.16", master=False), "admin_user": "alice"}))
    with pytest.raises((AuthError, UnsupportedCapability)):
        wrong.list_accounts()  # a non-admin login has no management access


# -- Cyrus as generic ------------------------------------------------------------------------------
@pytest.mark.cyrus
def test_generic_profile_on_cyrus(cyrus: CyrusTestbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "alice.pw").write_text(cyrus.password + "\n")
    (tmp_path / "bob.jwt").write_text(cyrus.token("bob") + "\n")
    creds = {
        "alice": {"user": "alice", "password_file": str(tmp_path / "alice.pw")},
        "bob": {"user": "bob", "token_file": str(tmp_path / "bob.jwt")},
        "carol": {"user": "carol"},
    }
    prof = open_profile(config(tmp_path, {"profile": "generic", "url": cyrus.url}, {"credentials": creds, "exclude": ["c*"]}))
    assert [a.name for a in prof.list_accounts()] == ["alice", "bob"]
    assert not prof.management.supports_queue
    with pytest.raises(UnsupportedCapability):
        prof.management.list_queue()
    with prof.open("alice") as alice:
        assert prof.login_for(prof.account("alice")).method == "own-credentials"
        assert alice.session.username == "alice" and alice.account_id == "alice"
    with prof.open("bob") as bob:
        assert isinstance(bob.transport.auth, BearerAuth)
        assert bob.session.username == "bob" and bob.mailboxes()
    # a secret from the environment (systemd credentials, containers) needs no file
    monkeypatch.setenv(account_env("PASSWORD", "carol"), cyrus.password)
    everyone = open_profile(config(tmp_path, {"profile": "generic", "url": cyrus.url}, {"credentials": creds}))
    with everyone.open("carol") as carol:
        assert carol.session.username == "carol"
    bad = tmp_path / "bad.jwt"
    bad.write_text("not.a.jwt\n")
    broken = open_profile(config(tmp_path, {"profile": "generic", "url": cyrus.url},
                                 {"credentials": {"bob": {"user": "bob", "token_file": str(bad)}}}))
    with broken.open("bob") as client, pytest.raises(AuthError) as exc:
        client.session  # noqa: B018
    assert "not.a.jwt" not in str(exc.value)


@pytest.mark.cyrus
def test_generic_profile_https_with_ca_file(cyrus: CyrusTestbed, tmp_path: Path) -> None:
    (tmp_path / "alice.pw").write_text(cyrus.password)
    creds = {"alice": {"user": "alice", "password_file": str(tmp_path / "alice.pw")}}
    server = {"profile": "generic", "url": cyrus.https_url, "ca_file": str(cyrus.ca_file)}
    with open_profile(config(tmp_path, server, {"credentials": creds})).open("alice") as client:
        assert client.session.api_url.startswith(cyrus.https_url) and client.mailboxes()


def test_profiles_never_need_admin_password_on_argv(mailsrv: MailsrvProc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin password may come from the environment instead of a file."""
    monkeypatch.setenv("MAILSIDECAR_ADMIN_PASSWORD", ADMIN_PASSWORD)
    server = {"profile": "embedded", "url": mailsrv.url}
    assert [a.name for a in open_profile(config(tmp_path, server)).list_accounts()] == ["alice", "bob"]
    monkeypatch.setenv("MAILSIDECAR_MASTER_PASSWORD", MASTER_PASSWORD)
    prof = open_profile(config(tmp_path, {**server, "master_user": "master"}))
    with prof.open("alice") as client:
        assert client.session.username == "alice"
