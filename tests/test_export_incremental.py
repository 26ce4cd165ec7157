"""Incremental export: only the change is transferred (counted at a recording proxy and by mailsrv's own
Prometheus counters), the fallback when the server's change history is gone, and ``kill -9`` in the middle of
a run followed by a rerun that ends identical to a clean export.

:class:`RecordingProxy` is a real HTTP server on 127.0.0.1 in front of mailsrv; it keeps the ``Host`` header,
so the JMAP session's URLs point at the proxy and every API call and download passes through it.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from backup.actions.export_emails import BlobIndex
from backup.actions.verify import run_verify
from backup.exportdir.account import AccountReader
from backup.output import Output
from backup.state import StateDir
from mailsrv.config import load_config
from tests.conftest import MailsrvProc
from tests.test_export import (
    account_reader,
    add_account,
    comparable,
    destroy_email,
    export,
    import_message,
    mail_backup_process,
    mailbox_id,
    mailsrv_server,
    message,
    records_of,
    set_email,
    user_client,
    write_config,
)


# -- a recording (and fault-injecting) proxy ------------------------------------------------------------------
@dataclass
class Seen:
    method: str
    path: str
    body: bytes
    status: int
    size: int  # bytes of the response body

    def calls(self) -> list[list[Any]]:
        try:
            return list(json.loads(self.body).get("methodCalls") or [])
        except ValueError:
            return []


@dataclass
class RecordingProxy:
    upstream: str
    download_delay: float = 0.0
    rewrite_api: Callable[[dict[str, Any], bytes], bytes | None] | None = None  # (request, response) → new response
    rewrite_session: Callable[[dict[str, Any]], None] | None = None
    throttle: Callable[[str], tuple[int, str] | None] | None = None  # path → (status, Retry-After) to answer instead
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    downloads_in_flight: int = 0
    max_downloads_in_flight: int = 0
    _server: http.server.ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def downloads(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and s.path.startswith("/jmap/download/")]

    def downloaded_blob_ids(self) -> list[str]:
        return [s.path.split("/")[4] for s in self.downloads()]

    def method_calls(self) -> list[list[Any]]:
        return [c for s in self.seen if s.path.rstrip("/") == "/jmap" for c in s.calls()]

    def get_ids(self, type_name: str) -> set[str]:
        """Ids asked for by explicit (not back-referenced) ``<type>/get`` calls."""
        return {i for name, args, _ in self.method_calls() if name == f"{type_name}/get" for i in (args.get("ids") or [])}

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    def start(self) -> RecordingProxy:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = proxy.throttle(self.path) if proxy.throttle else None
                if answer is not None:
                    payload = json.dumps({"type": "urn:ietf:params:jmap:error:limit", "status": answer[0], "detail": "slow down",
                                          "limit": "maxConcurrentRequests"}).encode()
                    with proxy._lock:
                        proxy.seen.append(Seen(self.command, self.path, body, answer[0], len(payload)))
                    self.send_response(answer[0])
                    self.send_header("Retry-After", answer[1])
                    self.send_header("Content-Type", "application/problem+json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                download = self.path.startswith("/jmap/download/")
                if download:
                    with proxy._lock:
                        proxy.downloads_in_flight += 1
                        proxy.max_downloads_in_flight = max(proxy.max_downloads_in_flight, proxy.downloads_in_flight)
                try:
                    if download and proxy.download_delay:
                        time.sleep(proxy.download_delay)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "connection")}
                    resp = requests.request(self.command, proxy.upstream + self.path, data=body or None, headers=headers,
                                            allow_redirects=False, timeout=120)
                finally:
                    if download:
                        with proxy._lock:
                            proxy.downloads_in_flight -= 1
                content = resp.content
                if self.path.rstrip("/") == "/jmap" and self.command == "POST" and proxy.rewrite_api and resp.status_code == 200:
                    content = proxy.rewrite_api(json.loads(body), content) or content
                if self.path == "/jmap/session" and proxy.rewrite_session and resp.status_code == 200:
                    session = resp.json()
                    proxy.rewrite_session(session)
                    content = json.dumps(session).encode()
                with proxy._lock:
                    proxy.seen.append(Seen(self.command, self.path, body, resp.status_code, len(content)))
                self.send_response(resp.status_code)
                for key, value in resp.headers.items():
                    if key.lower() not in ("transfer-encoding", "content-length", "connection", "content-encoding"):
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


def recording_proxies() -> Iterator[Callable[..., RecordingProxy]]:
    """Body of the ``proxy_factory`` fixture (other test modules wrap it in their own fixture)."""
    started: list[RecordingProxy] = []

    def make(upstream: str, **kw: Any) -> RecordingProxy:
        p = RecordingProxy(upstream, **kw).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., RecordingProxy]]:
    yield from recording_proxies()


def counters(srv: MailsrvProc) -> dict[str, float]:
    """mailsrv's Stalwart-style counters (unlabelled series)."""
    text = requests.get(f"{srv.url}/metrics/prometheus", timeout=10).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z_]+) ([0-9.e+]+)$", text, re.M)}


# -- batched listing, concurrent downloads within the limits -----------------------------------------------------------
def test_listing_is_batched_and_downloads_run_concurrently_within_the_limits(
        mailsrv_factory: Callable[..., MailsrvProc], proxy_factory: Callable[..., RecordingProxy], tmp_path: Path) -> None:
    srv = mailsrv_factory(jmap={"max_objects_in_get": 4, "max_calls_in_request": 4, "max_concurrent_requests": 3})
    add_account(srv, "alice")
    srv.cli("seed", "--account", "alice", "--count", "20")

    # the config allows 8 downloads at once; the server's maxConcurrentRequests (3) is the lower limit
    proxy = proxy_factory(srv.url, download_delay=0.3)
    config = write_config(tmp_path / "a", mailsrv_server(srv, url=proxy.url), accounts={"include": ["alice"]},
                          export={"concurrency": 8})
    assert export(config).exit_code == 0
    assert len(proxy.downloads()) == 20 and proxy.max_downloads_in_flight == 3
    listing = [s.calls() for s in proxy.seen if any(c[0] == "Email/query" for c in s.calls())]
    assert listing and all(len(calls) <= 4 for calls in listing)
    first = listing[0]
    gets = [args for name, args, _ in first if name == "Email/get"]
    assert len(gets) == 2, "several Email/query + Email/get pairs per request"
    assert all("#ids" in g and "ids" not in g for g in gets), "Email/get takes its ids from the query by back-reference"
    assert all(args["limit"] == 4 for name, args, _ in first if name == "Email/query"), "pages of maxObjectsInGet"

    # the config cap below the server's limit wins
    proxy = proxy_factory(srv.url, download_delay=0.3)
    config = write_config(tmp_path / "b", mailsrv_server(srv, url=proxy.url), accounts={"include": ["alice"]},
                          export={"concurrency": 2})
    assert export(config).exit_code == 0
    assert len(proxy.downloads()) == 20 and proxy.max_downloads_in_flight == 2


# -- only the change is transferred -------------------------------------------------------------------------------
def test_incremental_transfers_only_the_change(mailsrv_factory: Callable[..., MailsrvProc],
                                               proxy_factory: Callable[..., RecordingProxy], tmp_path: Path) -> None:
    srv = mailsrv_factory()
    add_account(srv, "alice")
    srv.cli("seed", "--account", "alice", "--count", "30")
    proxy = proxy_factory(srv.url)
    config = write_config(tmp_path, mailsrv_server(srv, url=proxy.url), accounts={"include": ["alice"]})
    assert export(config).exit_code == 0
    full_downloads = len(proxy.downloads())
    assert full_downloads == 30

    with user_client(srv.url, "alice") as client:
        first = records_of(account_reader(config, "alice"))
        ids = sorted(first)
        archive = mailbox_id(client, role="archive")
        inbox = mailbox_id(client, role="inbox")
        added = [import_message(client, message("new 1", size=3000), [inbox]),
                 import_message(client, message("new 2", size=7000), [inbox, archive], {"$seen": True})]
        set_email(client, ids[0], {"mailboxIds": {archive: True}})  # moved
        set_email(client, ids[1], {"keywords/$flagged": True})  # flagged
        destroy_email(client, ids[2])  # deleted
        new_blobs = {e.id: e for e in client.get_emails(added)}

    proxy.clear()
    before = counters(srv)
    result = export(config)
    after = counters(srv)
    outcome = result.outcomes["alice"]
    assert result.exit_code == 0 and outcome.mode == "incremental", outcome.detail

    # exactly the two new messages were downloaded, and only their bytes
    assert sorted(proxy.downloaded_blob_ids()) == sorted(e.blob_id for e in new_blobs.values())
    assert sum(s.size for s in proxy.downloads()) == sum(e.size for e in new_blobs.values())
    assert outcome.fetched_messages == 2 and outcome.fetched_bytes == sum(e.size for e in new_blobs.values())
    # metadata of the changed emails only; nothing was listed
    assert proxy.get_ids("Email") == {*added, ids[0], ids[1]}
    assert not [c for c in proxy.method_calls() if c[0] == "Email/query"]
    # mailsrv's own counters agree with what passed the proxy (+1: the first metrics scrape itself)
    assert after["jmap_method_call"] - before["jmap_method_call"] == len(proxy.method_calls())
    assert after["http_request_time_count"] - before["http_request_time_count"] == len(proxy.seen) + 1

    # the export mirrors the server now: identical to a fresh full export
    reader = account_reader(config, "alice")
    assert reader.manifest.run.mode == "incremental" and ids[2] not in records_of(reader)
    assert records_of(reader)[ids[0]].mailbox_ids == [archive]
    assert "$flagged" in records_of(reader)[ids[1]].keywords
    fresh = write_config(tmp_path / "fresh", mailsrv_server(srv), accounts={"include": ["alice"]})
    assert export(fresh).exit_code == 0
    assert comparable(reader) == comparable(account_reader(fresh, "alice"))
    assert not reader.blob_path(first[ids[2]].sha256).exists(), "the deleted email's blob left the export"

    # a run with no change downloads nothing and asks for no email
    proxy.clear()
    result = export(config)
    assert result.outcomes["alice"].mode == "incremental" and result.outcomes["alice"].fetched_messages == 0
    assert proxy.downloads() == [] and proxy.get_ids("Email") == set()
    assert len(proxy.seen) <= 10, [s.path for s in proxy.seen]

    # the server's URL changed: its states may not apply, so everything is listed again, but nothing is downloaded
    moved = write_config(tmp_path / "moved", mailsrv_server(srv), accounts={"include": ["alice"]},
                         export={"dir": str(tmp_path / "backup-export")})
    result = export(moved)
    assert result.outcomes["alice"].mode == "resync" and result.outcomes["alice"].fetched_messages == 0
    assert comparable(account_reader(moved, "alice")) == comparable(account_reader(fresh, "alice"))


def test_cannot_calculate_changes_falls_back_to_resync(mailsrv_factory: Callable[..., MailsrvProc],
                                                      proxy_factory: Callable[..., RecordingProxy], tmp_path: Path) -> None:
    srv = mailsrv_factory("short", jmap={"changes_max_history": 5})
    add_account(srv, "alice")
    srv.cli("seed", "--account", "alice", "--count", "20")
    proxy = proxy_factory(srv.url)
    config = write_config(tmp_path, mailsrv_server(srv, url=proxy.url), accounts={"include": ["alice"]})
    assert export(config).exit_code == 0
    with user_client(srv.url, "alice") as client:
        ids = sorted(records_of(account_reader(config, "alice")))
        for eid in ids[:8]:  # more changes than the server remembers
            set_email(client, eid, {"keywords/$flagged": True})
        destroy_email(client, ids[8])
        new = import_message(client, message("after the history", size=4000), [mailbox_id(client, role="inbox")])
        (new_email,) = client.get_emails([new])

    proxy.clear()
    result = export(config)
    assert result.exit_code == 0 and result.outcomes["alice"].mode == "resync"
    assert any(c[0] == "Email/changes" for c in proxy.method_calls())
    assert proxy.downloaded_blob_ids() == [new_email.blob_id], "only the unknown blob is downloaded"
    reader = account_reader(config, "alice")
    assert reader.manifest.run.mode == "resync"
    fresh = write_config(tmp_path / "fresh", mailsrv_server(srv), accounts={"include": ["alice"]})
    export(fresh)
    assert comparable(reader) == comparable(account_reader(fresh, "alice"))
    assert all("$flagged" in records_of(reader)[eid].keywords for eid in ids[:8])


# -- kill -9 in the middle, then rerun ----------------------------------------------------------------------------
def _start_export(config: Path) -> subprocess.Popen[str]:
    code = "import sys; from backup.cli import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIDECAR_")}
    return subprocess.Popen([sys.executable, "-c", code, "--config", str(config), "export", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _kill_after_blobs(proc: subprocess.Popen[str], blobs: Path, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"export finished before it could be killed: {proc.communicate()}"
        if blobs.is_dir() and sum(1 for _ in blobs.glob("*/*/*")) >= at_least:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.01)
    raise AssertionError("no blobs landed in time")


def _journaled(account_dir: Path) -> set[str]:
    """Blob ids the resume journal vouches for (a line torn by the kill does not count)."""
    index = BlobIndex(account_dir)
    index.load_journal(account_dir / ".tmp" / "journal.tsv")
    return {line.split("\t")[0] for line in (account_dir / ".tmp" / "journal.tsv").read_text().splitlines()
            if index.get(line.split("\t")[0]) is not None}


@pytest.mark.slow
def test_kill9_during_first_export_then_rerun_equals_clean_export(mailsrv_factory: Callable[..., MailsrvProc],
                                                                  proxy_factory: Callable[..., RecordingProxy], tmp_path: Path) -> None:
    srv = mailsrv_factory()
    add_account(srv, "alice")
    srv.cli("seed", "--account", "alice", "--count", "120")
    proxy = proxy_factory(srv.url, download_delay=0.02)  # keeps the run long enough to be killed in the middle
    config = write_config(tmp_path, mailsrv_server(srv, url=proxy.url), accounts={"include": ["alice"]})
    account_dir = tmp_path / "backup-export" / "alice"

    _kill_after_blobs(_start_export(config), account_dir / "blobs", 30)
    assert not (account_dir / "manifest.json").exists(), "no manifest before a run completes"
    landed = _journaled(account_dir)
    assert len(landed) >= 25

    proxy.clear()
    proxy.download_delay = 0
    r = mail_backup_process(config, "export", "--json")
    assert r.returncode == 0, r.stderr
    clean = write_config(tmp_path / "clean", mailsrv_server(srv), accounts={"include": ["alice"]})
    export(clean)
    all_blobs = {r.blob_id for r in records_of(account_reader(clean, "alice")).values()}
    assert set(proxy.downloaded_blob_ids()) == all_blobs - landed, "the rerun downloads only what the killed run had not published"
    assert comparable(account_reader(config, "alice")) == comparable(account_reader(clean, "alice"))
    assert list((account_dir / ".tmp").iterdir()) == [], "the journal and partial files are gone after a commit"


@pytest.mark.slow
def test_kill9_during_incremental_keeps_previous_export(mailsrv_factory: Callable[..., MailsrvProc],
                                                        proxy_factory: Callable[..., RecordingProxy], tmp_path: Path) -> None:
    srv = mailsrv_factory()
    add_account(srv, "alice")
    srv.cli("seed", "--account", "alice", "--count", "40")
    proxy = proxy_factory(srv.url)
    config = write_config(tmp_path, mailsrv_server(srv, url=proxy.url), accounts={"include": ["alice"]})
    assert export(config).exit_code == 0
    account_dir = tmp_path / "backup-export" / "alice"
    before = AccountReader(account_dir)
    old = comparable(before)
    old_ids = set(records_of(before))

    srv.cli("seed", "--account", "alice", "--count", "100", "--random-seed", "2")
    proxy.download_delay = 0.02
    _kill_after_blobs(_start_export(config), account_dir / "blobs", 40 + 20)

    after_kill = AccountReader(account_dir)
    assert after_kill.manifest == before.manifest, "the previous export is intact"
    assert comparable(after_kill)[:2] == old[:2] and comparable(after_kill)[2] > old[2], "same records; new blobs wait unreferenced"
    check = run_verify(load_config(str(config)), ["alice"], Output(quiet=True))
    assert check.exit_code == 0, check.accounts[0].problems

    proxy.download_delay = 0
    assert export(config).exit_code == 0
    clean = write_config(tmp_path / "clean", mailsrv_server(srv), accounts={"include": ["alice"]})
    export(clean)
    assert comparable(account_reader(config, "alice")) == comparable(account_reader(clean, "alice"))
    assert set(records_of(account_reader(config, "alice"))) > old_ids


def test_sigterm_stops_at_a_safe_point_and_the_rerun_resumes(mailsrv_factory: Callable[..., MailsrvProc],
                                                            proxy_factory: Callable[..., RecordingProxy], tmp_path: Path) -> None:
    srv = mailsrv_factory()
    add_account(srv, "alice")
    srv.cli("seed", "--account", "alice", "--count", "80")
    proxy = proxy_factory(srv.url, download_delay=0.03)
    config = write_config(tmp_path, mailsrv_server(srv, url=proxy.url), accounts={"include": ["alice"]})
    account_dir = tmp_path / "backup-export" / "alice"
    proc = _start_export(config)
    deadline = time.monotonic() + 60
    while not (account_dir / "blobs").is_dir() or sum(1 for _ in (account_dir / "blobs").glob("*/*/*")) < 10:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 4, err
    assert "stopped" in err and "Traceback" not in err
    assert not (account_dir / "manifest.json").exists()
    state = StateDir(tmp_path / "backup-state").read("export", "alice")
    assert state is not None and state.status == "failed" and "stopped" in state.detail
    assert len(_journaled(account_dir)) >= 10, "what was downloaded is kept for the rerun"

    proxy.download_delay = 0
    assert export(config).exit_code == 0
    clean = write_config(tmp_path / "clean", mailsrv_server(srv), accounts={"include": ["alice"]})
    export(clean)
    assert comparable(account_reader(config, "alice")) == comparable(account_reader(clean, "alice"))
