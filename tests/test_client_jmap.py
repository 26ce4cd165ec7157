"""mailsrv.client.JmapClient against real servers: the Cyrus testbed (relative URLs, 301, Bearer JWT) and mailsrv.

Faults (429, 503, dropped connections, rewritten session limits and URLs) come from :class:`Proxy`, a real
HTTP server on 127.0.0.1 that forwards to the real server and records what the client sent.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from mailsrv.client import (
    AuthError,
    BasicAuth,
    BearerAuth,
    BlobMismatch,
    CannotCalculateChanges,
    ConnectError,
    EmailImport,
    InsecureUrlError,
    Invocation,
    JmapClient,
    JmapRequestError,
    RetryPolicy,
    UnsupportedCapability,
    ref,
)
from mailsrv.client.errors import AccountNotFound, BlobNotFound, JmapMethodError
from mailsrv.client.models import BLOB, CYRUS_SIEVE, QUOTA, SIEVE, VacationResponse
from tests.conftest import USER_PASSWORD, MailsrvProc, free_port

if TYPE_CHECKING:
    from tests.cyrus import CyrusTestbed

pytest_plugins = ("tests.cyrus",)  # the module-scoped ``cyrus`` fixture

FAST = RetryPolicy(attempts=4, backoff_base=0.05, backoff_max=0.2)


def message(n: int | str, to: str = "alice@example.test", body: str = "hello", extra: str = "") -> bytes:
    return (
        f"From: Sender <sender@example.test>\r\nTo: {to}\r\nSubject: message {n}\r\n"
        f"Date: Tue, 02 Jan 2024 03:04:05 +0000\r\nMessage-ID: <client-{n}-{time.time_ns()}@example.test>\r\n{extra}"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


# -- a real forwarding HTTP server for fault injection -----------------------------------------------
@dataclass
class Record:
    method: str
    path: str
    body: bytes
    status: int

    def calls(self) -> list[list[Any]]:
        return list(json.loads(self.body)["methodCalls"])


@dataclass
class Proxy:
    """Forwards to ``upstream``; faults are consumed one per matching API request (POST to the API path)."""

    upstream: str
    api_path: str = "/jmap/"
    throttle: list[tuple[int, str | None]] = field(default_factory=list)  # (status, Retry-After) answers
    drop: int = 0  # API requests answered by closing the connection
    patch_session: Callable[[dict[str, Any]], None] | None = None
    patch_api: Callable[[dict[str, Any]], None] | None = None
    rewrite_location: bool = True
    records: list[Record] = field(default_factory=list)
    port: int = 0
    _server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api_records(self) -> list[Record]:
        return [r for r in self.records if r.method == "POST" and r.path == self.api_path]

    def start(self) -> Proxy:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                is_api = self.command == "POST" and self.path == proxy.api_path
                if is_api and proxy.drop:
                    proxy.drop -= 1
                    proxy.records.append(Record(self.command, self.path, body, 0))
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if is_api and proxy.throttle:
                    status, after = proxy.throttle.pop(0)
                    proxy.records.append(Record(self.command, self.path, body, status))
                    payload = json.dumps({"type": "urn:ietf:params:jmap:error:limit", "status": status,
                                          "detail": "slow down", "limit": "maxConcurrentRequests"}).encode()
                    self.send_response(status)
                    if after is not None:
                        self.send_header("Retry-After", after)
                    self.send_header("Content-Type", "application/problem+json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                resp = requests.request(self.command, proxy.upstream + self.path, data=body or None, headers=headers,
                                        allow_redirects=False, timeout=60)
                content = resp.content
                if proxy.patch_session and resp.status_code == 200 and b'"apiUrl"' in content:
                    session = resp.json()
                    proxy.patch_session(session)
                    content = json.dumps(session).encode()
                if proxy.patch_api and is_api and resp.status_code == 200:
                    answer = resp.json()
                    proxy.patch_api(answer)
                    content = json.dumps(answer).encode()
                proxy.records.append(Record(self.command, self.path, body, resp.status_code))
                self.send_response(resp.status_code)
                for key, value in resp.headers.items():
                    if key.lower() in ("transfer-encoding", "content-length", "connection", "content-encoding"):
                        continue
                    if key.lower() == "location" and proxy.rewrite_location:
                        value = value.replace(proxy.upstream, proxy.url)
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def make(upstream: str, **kw: Any) -> Proxy:
        p = Proxy(upstream, **kw).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


# == Cyrus (generic JMAP server) ======================================================================
def cyrus_client(bed: CyrusTestbed, user: str = "alice", **kw: Any) -> JmapClient:
    kw.setdefault("auth", BasicAuth(user, bed.password))
    return JmapClient(kw.pop("url", bed.url), **kw)


def inbox_id(client: JmapClient) -> str:
    return next(m.id for m in client.mailboxes() if m.role == "inbox")


@pytest.mark.cyrus
def test_cyrus_session_follows_301_and_resolves_relative_urls(cyrus: CyrusTestbed) -> None:
    raw = requests.get(cyrus.url + "/jmap", auth=("alice", cyrus.password), timeout=10).json()
    assert raw["apiUrl"] == "/jmap/"  # the server really sends relative URLs
    with cyrus_client(cyrus) as client:
        session = client.session
        assert session.url == cyrus.url + "/jmap"  # 301 from /.well-known/jmap was followed with credentials
        assert session.api_url == cyrus.url + "/jmap/"
        assert session.upload_url == cyrus.url + "/jmap/upload/{accountId}/"
        assert session.download_url.startswith(cyrus.url + "/jmap/download/")
        assert client.account_id == "alice"
        assert client.limits.max_calls_in_request == 50 and client.limits.max_objects_in_get == 4096
        # jmapc's own typed methods run on the resolved URLs (plain jmapc fails with MissingSchema here)
        from jmapc.methods import MailboxGet, MailboxGetResponse

        result = client.jmapc.request(MailboxGet(ids=None))
        assert isinstance(result, MailboxGetResponse)
        assert any(m.role == "inbox" for m in result.data)


@pytest.mark.cyrus
def test_cyrus_bearer_token(cyrus: CyrusTestbed) -> None:
    token = cyrus.token("bob")
    with JmapClient(cyrus.url, auth=BearerAuth(token)) as client:
        assert client.session.username == "bob"
        assert client.account_id == "bob"
        assert client.mailboxes()
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with JmapClient(cyrus.url, auth=BearerAuth(forged)) as bad, pytest.raises(AuthError) as exc:
        bad.session  # noqa: B018
    assert forged not in str(exc.value) and "bearer token" in str(exc.value)


@pytest.mark.cyrus
def test_cyrus_wrong_password_names_user_not_secret(cyrus: CyrusTestbed) -> None:
    with JmapClient(cyrus.url, auth=BasicAuth("alice", "wrong-pass-123")) as client, pytest.raises(AuthError) as exc:
        client.session  # noqa: B018
    assert "'alice'" in str(exc.value) and "wrong-pass-123" not in str(exc.value)


@pytest.mark.cyrus
def test_cyrus_upload_import_download_sha256(cyrus: CyrusTestbed, tmp_path: Path) -> None:
    raw = message("import", body="Grüße ✓ " * 2000)
    src = tmp_path / "msg.eml"
    src.write_bytes(raw)
    with cyrus_client(cyrus) as client:
        up = client.upload(src, content_type="message/rfc822")  # streamed from the file
        assert up.size == len(raw) and up.account_id == "alice"
        result = client.email_import({"m1": EmailImport(up.blob_id, {inbox_id(client): True},
                                                        {"$seen": True, "MyFlag": True}, "2024-01-02T03:04:05Z")})
        email_id = result.email_id("m1")
        assert email_id and not result.not_created
        again = client.email_import({"m2": EmailImport(up.blob_id, {inbox_id(client): True})})
        assert again.not_created["m2"].type == "alreadyExists"
        assert again.email_id("m2") == email_id  # the existing id, so a restore can merge mailboxIds

        (email,) = client.get_emails([email_id])
        assert email.keywords == {"$seen": True, "myflag": True}  # Cyrus' own spelling is kept …
        assert email.has_keyword("MyFlag") and email.keyword_set == {"$seen", "myflag"}  # … and compared case-insensitively
        assert email.received_at == "2024-01-02T03:04:05Z" and email.size == len(raw)

        out = tmp_path / "out.eml"
        got = client.download(email.blob_id, out, expected_size=len(raw))
        assert got.sha256 == hashlib.sha256(raw).hexdigest()
        assert out.read_bytes() == raw
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]

        with pytest.raises(BlobMismatch):
            client.download(email.blob_id, tmp_path / "bad.eml", expected_sha256="00" * 32)
        assert not (tmp_path / "bad.eml").exists()  # a mismatch leaves no file behind
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
        with pytest.raises(BlobNotFound):
            client.download("Gffffffffffffffffffffffffffffffffffffffff", tmp_path / "none")


@pytest.mark.cyrus
def test_cyrus_download_memory_does_not_grow_with_size(cyrus: CyrusTestbed, tmp_path: Path) -> None:
    big = tmp_path / "big.eml"
    digest = hashlib.sha256()
    with big.open("wb") as fh:
        head = b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: big\r\nMessage-ID: <big@example.test>\r\n\r\n"
        fh.write(head)
        digest.update(head)
        line = b"y" * 998 + b"\r\n"
        for _ in range(24_000):  # 24 MB
            fh.write(line)
            digest.update(line)
    with cyrus_client(cyrus) as client:
        client.session  # noqa: B018
        tracemalloc.start()
        try:
            up = client.upload(big, content_type="message/rfc822")
            _, upload_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            got = client.download(up.blob_id, tmp_path / "copy.eml")
            _, download_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert got.size == big.stat().st_size and got.sha256 == digest.hexdigest()
    assert upload_peak < 4_000_000, upload_peak
    assert download_peak < 4_000_000, download_peak


@pytest.mark.cyrus
def test_cyrus_batching_respects_session_limits(cyrus: CyrusTestbed, proxy_factory: Callable[..., Proxy]) -> None:
    cyrus.bulk("carol", 23)

    def small_limits(session: dict[str, Any]) -> None:
        core = session["capabilities"]["urn:ietf:params:jmap:core"]
        core.update(maxObjectsInGet=4, maxCallsInRequest=6)

    proxy = proxy_factory(cyrus.url, patch_session=small_limits)
    with cyrus_client(cyrus, "carol", url=proxy.url) as client:
        assert client.limits.max_objects_in_get == 4
        emails = list(client.iter_emails())
        listing = proxy.api_records()
        ids = [e.id for e in emails]
        assert len(ids) == 23 and len(set(ids)) == 23
        # pages of 4 (query + back-referenced get), 3 pairs per request: 6 pages → 2 requests
        assert len(listing) == 2
        for rec in listing:
            calls = rec.calls()
            assert len(calls) <= 6
            assert [c[0] for c in calls] == ["Email/query", "Email/get"] * 3
            assert all(c[1]["limit"] <= 4 for c in calls if c[0] == "Email/query")
            assert all("#ids" in c[1] for c in calls if c[0] == "Email/get")

        before = len(proxy.api_records())
        fetched = client.get_emails(ids)
        gets = proxy.api_records()[before:]
        assert {e.id for e in fetched} == set(ids)
        assert len(gets) == 1  # 23 ids → 6 Email/get calls of ≤4 ids, all in one request
        calls = gets[0].calls()
        assert len(calls) == 6 and all(len(c[1]["ids"]) <= 4 for c in calls)


@pytest.mark.cyrus
def test_cyrus_request_with_back_reference(cyrus: CyrusTestbed) -> None:
    with cyrus_client(cyrus) as client:
        resp = client.request([
            Invocation("Mailbox/query", {"accountId": client.account_id, "filter": {"role": "inbox"}}, "q"),
            Invocation("Mailbox/get", {"accountId": client.account_id, "#ids": ref("q", "Mailbox/query", "/ids"),
                                       "properties": ["name", "role"]}, "g"),
        ])
        assert [m["role"] for m in resp.args("g")["list"]] == ["inbox"]
        with pytest.raises(JmapMethodError) as exc:
            client.request([("Mailbox/get", {"accountId": client.account_id, "#ids": ref("nope", "Mailbox/query", "/ids")}, "g")])
        # RFC 8620 says invalidResultReference; Cyrus 3.6 still uses the draft name resultReference
        assert exc.value.type in ("invalidResultReference", "resultReference") and exc.value.method == "Mailbox/get"


@pytest.mark.cyrus
def test_cyrus_retry_on_429_and_503_honours_retry_after(cyrus: CyrusTestbed, proxy_factory: Callable[..., Proxy]) -> None:
    proxy = proxy_factory(cyrus.url, throttle=[(429, "1"), (503, None)])
    with cyrus_client(cyrus, url=proxy.url, retry=FAST) as client:
        client.session  # noqa: B018
        started = time.monotonic()
        boxes = client.mailboxes()
        elapsed = time.monotonic() - started
    assert boxes
    assert [r.status for r in proxy.api_records()][:3] == [429, 503, 200]
    assert client.transport.stats.throttled == 2 and client.transport.stats.retries == 2
    assert elapsed >= 1.0  # Retry-After: 1 was honoured (the backoff alone is ≤0.2 s)


@pytest.mark.cyrus
def test_cyrus_retries_exhausted_raise_typed_error(cyrus: CyrusTestbed, proxy_factory: Callable[..., Proxy]) -> None:
    proxy = proxy_factory(cyrus.url, throttle=[(429, "0")] * 4)
    with cyrus_client(cyrus, url=proxy.url, retry=FAST) as client, pytest.raises(JmapRequestError) as exc:
        client.mailboxes()
    assert exc.value.status == 429 and exc.value.limit == "maxConcurrentRequests"
    assert len(proxy.api_records()) == FAST.attempts


@pytest.mark.cyrus
def test_cyrus_dropped_connection_retried_only_for_reads(cyrus: CyrusTestbed, proxy_factory: Callable[..., Proxy]) -> None:
    proxy = proxy_factory(cyrus.url, drop=1)
    with cyrus_client(cyrus, url=proxy.url, retry=FAST) as client:
        assert client.mailboxes()  # Mailbox/query is safe to repeat
        assert client.transport.stats.retries == 1
        proxy.drop = 1
        create = Invocation("Mailbox/set", {"accountId": client.account_id, "create": {"n": {"name": "Dropped"}}}, "s")
        with pytest.raises(ConnectError):
            client.request([create])  # a write that may have been applied is not repeated
        assert sum(1 for r in proxy.api_records() if r.status == 0) == 2


@pytest.mark.cyrus
@pytest.mark.cyrus
def test_cyrus_session_refetched_when_session_state_changes(cyrus: CyrusTestbed, proxy_factory: Callable[..., Proxy]) -> None:
    proxy = proxy_factory(cyrus.url)
    with cyrus_client(cyrus, url=proxy.url) as client:
        client.mailboxes()
        client.mailboxes()
        session_gets = lambda: sum(1 for r in proxy.records if r.method == "GET" and r.path == "/jmap")  # noqa: E731
        assert session_gets() == 1
        echo = [Invocation("Core/echo", {"n": 1}, "e")]
        proxy.patch_api = lambda answer: answer.update(sessionState="moved-on")
        client.request(echo)  # the answer reports a new session state …
        proxy.patch_api = None
        assert session_gets() == 1
        client.request(echo)  # … so the session is fetched again before the next request
        client.request(echo)
        assert session_gets() == 2


@pytest.mark.cyrus
def test_cyrus_session_pointing_at_plain_http_remote_host_is_refused(cyrus: CyrusTestbed, proxy_factory: Callable[..., Proxy]) -> None:
    def remote(session: dict[str, Any]) -> None:
        session["apiUrl"] = "http://mail.example.net/jmap/"

    proxy = proxy_factory(cyrus.url, patch_session=remote)
    with cyrus_client(cyrus, url=proxy.url) as client, pytest.raises(InsecureUrlError) as exc:
        client.session  # noqa: B018
    assert "mail.example.net" in str(exc.value) and "allow_plain_http" in str(exc.value)


def test_plain_http_to_remote_host_refused_without_allow_plain_http() -> None:
    with pytest.raises(InsecureUrlError) as exc:
        JmapClient("http://mail.example.org", auth=BasicAuth("alice", "pw"))
    assert "allow_plain_http" in str(exc.value)
    with pytest.raises(InsecureUrlError):
        JmapClient("ftp://mail.example.org", auth=None)
    assert JmapClient("http://mail.example.org", auth=None, allow_plain_http=True).session_url == "http://mail.example.org/.well-known/jmap"
    assert JmapClient("http://[::1]:8080", auth=None).session_url.startswith("http://[::1]:8080/")


@pytest.mark.cyrus
def test_cyrus_redirect_to_another_origin_gets_no_credentials(cyrus: CyrusTestbed, proxy_factory: Callable[..., Proxy]) -> None:
    proxy = proxy_factory(cyrus.url, rewrite_location=False)  # 301 Location points at the real server's port
    with cyrus_client(cyrus, url=proxy.url) as client, pytest.raises(AuthError) as exc:
        client.session  # noqa: B018
    assert "jmap_session_url" in str(exc.value)
    with cyrus_client(cyrus, url=proxy.url, session_url=cyrus.url + "/jmap") as direct:
        assert direct.session.username == "alice"


@pytest.mark.cyrus
def test_cyrus_https_with_ca_file(cyrus: CyrusTestbed) -> None:
    with cyrus_client(cyrus, url=cyrus.https_url, ca_file=str(cyrus.ca_file)) as client:
        assert client.session.api_url.startswith(cyrus.https_url)
        assert client.mailboxes()
    with cyrus_client(cyrus, url=cyrus.https_url) as untrusted, pytest.raises(ConnectError) as exc:
        untrusted.session  # noqa: B018
    assert "ca_file" in str(exc.value)
    with pytest.raises(ConnectError):
        cyrus_client(cyrus, url=cyrus.https_url, ca_file="/nonexistent/ca.pem")


def test_connection_refused_is_a_connect_error() -> None:
    port = free_port()
    with JmapClient(f"http://127.0.0.1:{port}", auth=None, retry=FAST) as client, pytest.raises(ConnectError) as exc:
        client.session  # noqa: B018
    assert f"127.0.0.1:{port}" in str(exc.value)
    assert client.transport.stats.requests == FAST.attempts


@pytest.mark.cyrus
def test_cyrus_capabilities_not_offered_are_reported(cyrus: CyrusTestbed) -> None:
    with cyrus_client(cyrus) as client:
        assert not client.has_capability(QUOTA) and not client.has_capability(BLOB)
        assert client.features() == {"identities": True, "vacation": True, "sieve": False, "quota": False, "blob_digest": False}
        with pytest.raises(UnsupportedCapability):
            client.quotas()
        with pytest.raises(UnsupportedCapability):
            client.blob_digests(["x"])
        # Cyrus advertises its own sieve URN, but its methods answer unknownMethod in the standard config
        assert client.has_capability("https://cyrusimap.org/ns/jmap/sieve")
        assert client.sieve_capability() is None
        with pytest.raises(UnsupportedCapability) as exc:
            client.sieve_scripts()
        assert exc.value.capability == SIEVE
        (identity,) = client.identities()  # a read-only stub identity
        assert identity.id == "alice"
        with pytest.raises(UnsupportedCapability):
            client.create_identity(identity)  # Identity/set is unknownMethod


@pytest.fixture(scope="module")
def cyrus_nonstandard() -> Iterator[CyrusTestbed]:
    """A second testbed with jmap_nonstandard_extensions: yes (its SieveScript methods answer)."""
    from tests.cyrus import CyrusUnavailable, start_cyrus, temp_dir

    base = temp_dir()
    try:
        bed = start_cyrus(base, users=("dave",), nonstandard=True)
    except CyrusUnavailable as exc:
        pytest.skip(f"Cyrus testbed unavailable: {exc}")
    try:
        yield bed
    finally:
        bed.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.cyrus
def test_cyrus_sieve_used_when_its_methods_work(cyrus_nonstandard: CyrusTestbed) -> None:
    with cyrus_client(cyrus_nonstandard, "dave") as client:
        assert client.sieve_capability() == CYRUS_SIEVE and client.features()["sieve"]
        text = b'require ["fileinto"];\r\nif header :contains "subject" "report" { fileinto "Archive"; }\r\n'
        created = client.create_sieve_script("filters", text, activate=True)
        listed = {s.name: s for s in client.sieve_scripts()}
        assert listed["filters"].id == created.id and listed["filters"].is_active
        assert client.fetch_blob(listed["filters"].blob_id) == text


@pytest.mark.cyrus
def test_cyrus_vacation_response_set_whole_object(cyrus: CyrusTestbed) -> None:
    with cyrus_client(cyrus, "bob") as client:
        current = client.vacation_response()
        assert current.id == "singleton"
        client.set_vacation_response(VacationResponse(is_enabled=True, subject="Away", text_body="Back on Monday"))
        client.set_vacation_response(VacationResponse(is_enabled=False))


@pytest.mark.cyrus
def test_cyrus_email_changes(cyrus: CyrusTestbed) -> None:
    with cyrus_client(cyrus, "bob") as client:
        state = client.email_state()
        cyrus.deliver("bob", message("changes", to="bob@example.test"))
        changes = client.email_changes(state)
        assert len(changes.created) == 1 and changes.old_state == state and changes.new_state != state
        assert client.email_changes(changes.new_state).created == []


# == mailsrv ==========================================================================================
def alice(srv: MailsrvProc, **kw: Any) -> JmapClient:
    return JmapClient(srv.url, auth=BasicAuth("alice", USER_PASSWORD), **kw)


def test_mailsrv_session_307_and_limits(mailsrv_factory: Callable[..., MailsrvProc]) -> None:
    srv = mailsrv_factory(jmap={"max_objects_in_get": 7, "max_calls_in_request": 5, "max_concurrent_requests": 3})
    srv.add_account("alice")
    with alice(srv) as client:
        assert client.session.url == srv.url + "/jmap/session"  # 307 from /.well-known/jmap
        limits = client.limits
        assert (limits.max_objects_in_get, limits.max_calls_in_request, limits.max_concurrent_requests) == (7, 5, 3)
        assert client.account_id == client.session.primary_accounts["urn:ietf:params:jmap:mail"]
    with alice(srv, max_objects_in_get=3, max_calls_in_request=50) as lowered:
        assert lowered.limits.max_objects_in_get == 3 and lowered.limits.max_calls_in_request == 5


def test_mailsrv_upload_download_sha256(mailsrv: MailsrvProc, tmp_path: Path) -> None:
    raw = message("blob", to="alice@example.org") * 50
    with alice(mailsrv) as client:
        up = client.upload(raw, content_type="message/rfc822")
        assert up.blob_id == hashlib.sha256(raw).hexdigest() and up.size == len(raw)
        got = client.download(up.blob_id, tmp_path / "blob", expected_sha256=up.blob_id)
        assert got.sha256 == up.blob_id and (tmp_path / "blob").read_bytes() == raw
        assert client.fetch_blob(up.blob_id) == raw


def test_mailsrv_request_and_method_errors_are_typed(mailsrv: MailsrvProc) -> None:
    with alice(mailsrv) as client:
        with pytest.raises(JmapRequestError) as req:
            client.request([("Core/echo", {}, "e")], using=["urn:ietf:params:jmap:core", "urn:example:unknown"])
        assert req.value.type == "urn:ietf:params:jmap:error:unknownCapability" and req.value.status == 400
        with pytest.raises(AccountNotFound):
            client.request([("Mailbox/get", {"accountId": "zzzzzz", "ids": None}, "m")])
        partial = client.request([("Mailbox/get", {"accountId": "zzzzzz", "ids": None}, "m"), ("Core/echo", {"x": 1}, "e")],
                                 using=["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"], raise_errors=False)
        assert partial.get("m").name == "error" and partial.args("e") == {"x": 1}


def test_mailsrv_retry_on_429_from_max_concurrent_requests(mailsrv_factory: Callable[..., MailsrvProc]) -> None:
    srv = mailsrv_factory(jmap={"max_concurrent_requests": 1})
    srv.add_account("alice")
    clients = [alice(srv, retry=RetryPolicy(attempts=30, backoff_base=0.05, backoff_max=0.5)) for _ in range(8)]
    errors: list[BaseException] = []

    def work(client: JmapClient) -> None:
        try:
            for _ in range(6):
                client.mailboxes()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    throttled = sum(c.transport.stats.throttled for c in clients)
    assert throttled > 0 and sum(c.transport.stats.retries for c in clients) >= throttled
    scrape = requests.get(srv.url + "/metrics/prometheus", timeout=10).text
    assert "limit_concurrent_request" in scrape


def test_mailsrv_mailbox_changes_and_cannot_calculate(mailsrv_factory: Callable[..., MailsrvProc]) -> None:
    srv = mailsrv_factory(jmap={"changes_max_history": 5})
    srv.add_account("alice")
    with alice(srv) as client:
        client.mailboxes()
        state = client.mailbox_state()
        create = {f"n{i}": {"name": f"Folder {i}"} for i in range(2)}
        client.request([("Mailbox/set", {"accountId": client.account_id, "create": create}, "s")])
        changes = client.mailbox_changes(state, max_changes=1)  # two pages merged
        assert len(changes.created) == 2 and changes.updated == [] and changes.destroyed == []
        for i in range(8):
            client.request([("Mailbox/set", {"accountId": client.account_id, "create": {"x": {"name": f"More {i}"}}}, "s")])
        with pytest.raises(CannotCalculateChanges):
            client.mailbox_changes(state)


def _import_messages(client: JmapClient, count: int) -> list[str]:
    inbox = inbox_id(client)
    imports = {}
    for n in range(count):
        up = client.upload(message(n, to="alice@example.org"), content_type="message/rfc822")
        imports[f"m{n}"] = EmailImport(up.blob_id, {inbox: True}, {"$Seen": True} if n % 2 else {}, f"2024-01-{n % 28 + 1:02d}T00:00:00Z")
    result = client.email_import(imports)
    assert not result.not_created, result.not_created
    return [c.id for c in result.created.values()]


def test_mailsrv_email_paging_and_batching(mailsrv_factory: Callable[..., MailsrvProc]) -> None:
    srv = mailsrv_factory(jmap={"max_objects_in_get": 5, "max_calls_in_request": 4, "max_objects_in_set": 10})
    srv.add_account("alice")
    with alice(srv) as client:
        ids = _import_messages(client, 23)  # 3 Email/import calls of ≤10 in one request
        before = client.transport.stats.requests
        emails = list(client.iter_emails())
        assert sorted(e.id for e in emails) == sorted(ids)
        # the server itself rejects a /get of more than 5 ids: 5 pages of 5, 2 query+get pairs per request → 3 requests
        assert client.transport.stats.requests - before == 3
        seen = [e for e in emails if e.has_keyword("$seen")]
        assert len(seen) == 11 and all("$seen" in e.keyword_set for e in seen)
        before = client.transport.stats.requests
        assert len(client.get_emails(ids)) == 23
        assert client.transport.stats.requests - before == 2  # 5 calls of ≤5 ids, 4 calls per request
        state = client.email_state()
        client.request([("Email/set", {"accountId": client.account_id, "destroy": ids[:2]}, "d")])
        changes = client.email_changes(state)
        assert sorted(changes.destroyed) == sorted(ids[:2])


def test_mailsrv_blob_digest(mailsrv: MailsrvProc) -> None:
    raw = message("digest", to="alice@example.org")
    with alice(mailsrv) as client:
        assert client.supports_blob_digest()
        up = client.upload(raw, content_type="message/rfc822")
        digests = client.blob_digests([up.blob_id])
        assert digests[up.blob_id].sha256_hex == hashlib.sha256(raw).hexdigest()
        assert digests[up.blob_id].size == len(raw)


def test_mailsrv_sieve_vacation_identity_quota(mailsrv: MailsrvProc) -> None:
    with alice(mailsrv) as client:
        assert client.sieve_capability() == SIEVE
        script = client.create_sieve_script("filters", b'require ["fileinto"];\r\nkeep;\r\n', activate=True)
        (listed,) = [s for s in client.sieve_scripts() if s.name == "filters"]
        assert listed.id == script.id and listed.is_active
        assert client.fetch_blob(listed.blob_id) == b'require ["fileinto"];\r\nkeep;\r\n'

        client.set_vacation_response(VacationResponse(is_enabled=True, subject="Away", text_body="Back Monday"))
        vacation = client.vacation_response()
        assert vacation.is_enabled and vacation.subject == "Away" and vacation.text_body == "Back Monday"

        from mailsrv.client.models import Identity

        new_id = client.create_identity(Identity(name="Alice", email="alice@example.org", text_signature="-- A"))
        assert any(i.id == new_id and i.text_signature == "-- A" for i in client.identities())
        assert isinstance(client.quotas(), list)
