"""Hooks: healthchecks-style pings to a real HTTP receiver on loopback and commands writing files, on start,
success and failure of a job; a hook that fails or hangs is cut at its timeout and never changes the job's result.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backup.exportdir import ExportDir
from backup.exportdir.account import AccountWriter
from backup.exportdir.manifest import AccountInfo, Counts, Manifest, RunInfo, ServerInfo, ToolInfo
from backup.exportdir.records import EmailRecord
from backup.hooks import Hooks
from backup.output import Output
from backup.schedule import run_job
from mailsrv.config import ConfigError, parse_config
from tests.test_drill import RESTIC_PASSWORD, mail_backup, one_line
from tests.test_export import to_toml

SECRET = "hook-must-never-see-this-9f2c"


class Receiver:
    """A healthchecks-like HTTP endpoint on 127.0.0.1 that records every request (or never answers)."""

    def __init__(self, *, hang: float = 0.0) -> None:
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"path": self.path, "body": json.loads(body or b"{}"), "time": time.time(),
                                          "agent": self.headers.get("User-Agent", "")})
                if hang:
                    time.sleep(hang)
                # a hook that timed out has hung up long ago; a traceback from this thread would land in the
                # stderr of whatever test runs then
                with contextlib.suppress(OSError):
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"OK")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def recorder(path: Path) -> list[str]:
    return ["/bin/sh", "-c", f'printf "%s %s %s %s %s\\n" "$MAILSIDECAR_HOOK_EVENT" "$MAILSIDECAR_JOB" "$MAILSIDECAR_STATUS" '
                             f'"$MAILSIDECAR_EXIT_CODE" "$MAILSIDECAR_SUMMARY" >> {path}; env > {path}.env; cat > {path}.stdin']


def tiny_export(root: Path, account: str = "alice", n: int = 3) -> list[EmailRecord]:
    """An export of one account written with the export format's own writer (no mail server needed)."""
    ExportDir(root).ensure()
    writer = AccountWriter(ExportDir(root).account(account))
    records = []
    for i in range(n):
        raw = f"From: a@example.net\r\nTo: {account}@example.org\r\nMessage-ID: <hook-{i}@example.net>\r\nSubject: {i}\r\n\r\nbody {i}\r\n"
        sha = writer.put_blob(raw.encode())
        records.append(EmailRecord(id=f"e{i}", blob_id=f"b{i}", sha256=sha, size=len(raw), mailbox_ids=["m1"],
                                   received_at="2026-01-02T03:04:05Z", message_id=[f"hook-{i}@example.net"]))
    writer.write_jsonl("emails", records)
    writer.write_json("mailboxes", [{"id": "m1", "name": "Inbox", "parent_id": None, "role": "inbox", "sort_order": 0,
                                     "is_subscribed": True, "path": ["Inbox"]}])
    now = "2026-01-02T03:04:05Z"
    manifest = Manifest(account=AccountInfo(name=account, id="a1"), server=ServerInfo(profile="embedded", url="http://127.0.0.1"),
                        tool=ToolInfo(version="test"), run=RunInfo(id=writer.run_id, started=now, finished=now, mode="full"),
                        counts=Counts(emails=n, mailboxes=1, blobs=n, bytes=sum(r.size for r in records)), files=writer.files)
    writer.commit(manifest, {r.sha256 for r in records})
    return records


def config_with(tmp_path: Path, hooks: list[dict[str, Any]], **schedule: Any) -> Path:
    pw = tmp_path / "restic.pw"
    pw.write_text(RESTIC_PASSWORD)
    config = tmp_path / "config.toml"
    config.write_text(to_toml({
        "export": {"dir": str(tmp_path / "export")}, "state": {"dir": str(tmp_path / "state")},
        "schedule": {**schedule, "hooks": hooks},
        "targets": [{"name": "local", "type": "restic", "repository": str(tmp_path / "repo"), "password_file": str(pw), "init": True,
                     "cache_dir": str(tmp_path / "cache")}],
    }))
    return config


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (Debian: apt-get install restic)")
def test_hooks_on_success_and_failure_of_a_drill(tmp_path: Path, receiver: Receiver) -> None:
    log = tmp_path / "hook.log"
    url_file = tmp_path / "ping-url"
    url_file.write_text(f"{receiver.url}/ping/0c1d2e3f-uuid\n")
    only_success = {"name": "success-only", "on_success_url": f"{receiver.url}/explicit-ok", "jobs": ["drill"]}
    run_only = {"name": "nightly", "ping_url": f"{receiver.url}/nightly-only", "jobs": ["run"]}
    config = config_with(tmp_path, [{"name": "hc", "ping_url_file": str(url_file), "on_start": recorder(log),
                                     "on_success": recorder(log), "on_failure": recorder(log), "timeout": 20}, only_success, run_only])
    records = tiny_export(tmp_path / "export")
    env = {"MAILSIDECAR_ADMIN_PASSWORD": SECRET, "RESTIC_PASSWORD": SECRET}
    r = mail_backup(config, "ship", env=env)
    assert r.returncode == 0, r.stderr

    r = mail_backup(config, "-v", "drill", env=env)
    assert r.returncode == 0, r.stderr
    paths = [q["path"] for q in receiver.requests]
    assert paths == ["/ping/0c1d2e3f-uuid/start", "/ping/0c1d2e3f-uuid", "/explicit-ok"] or \
        sorted(paths[1:]) == ["/explicit-ok", "/ping/0c1d2e3f-uuid"], paths
    done = next(q["body"] for q in receiver.requests if q["path"] == "/ping/0c1d2e3f-uuid")
    assert done["job"] == "drill" and done["event"] == "success" and done["status"] == "success" and done["exit_code"] == 0
    assert "local: success" in done["summary"] and receiver.requests[0]["agent"].startswith("mail-backup/")
    assert log.read_text().splitlines() == ["start drill running  ", "success drill success 0 local: success"]
    hook_env = Path(f"{log}.env").read_text()
    assert SECRET not in hook_env and "MAILSIDECAR_JOB=drill" in hook_env  # the job's secrets never reach a hook
    assert json.loads(Path(f"{log}.stdin").read_text())["event"] == "success"
    assert "0c1d2e3f-uuid" not in r.stderr and "127.0.0.1" in r.stderr  # log lines name the host, never the ping URL's secret path

    # the drill fails (an altered message): /fail with the exit code and a summary naming the mismatch
    blob = tmp_path / "export" / "alice" / "blobs" / records[1].sha256[:2] / records[1].sha256[2:4] / records[1].sha256
    blob.write_bytes(blob.read_bytes() + b"tampered")
    assert mail_backup(config, "ship").returncode == 0
    receiver.requests.clear()
    r = mail_backup(config, "drill", "--messages", "10", env=env)
    one_line(r, 5, "message e1", "<hook-1@example.net>")
    fail = [q for q in receiver.requests if q["path"] == "/ping/0c1d2e3f-uuid/fail"]
    assert len(fail) == 1 and fail[0]["body"]["exit_code"] == 5 and fail[0]["body"]["status"] == "failed"
    assert "mismatch" in fail[0]["body"]["summary"] and "/explicit-ok" not in [q["path"] for q in receiver.requests]
    assert log.read_text().splitlines()[-1].startswith("failure drill failed 5 ")


def test_a_hanging_or_failing_hook_is_cut_and_never_changes_the_result(tmp_path: Path) -> None:
    hanging = Receiver(hang=30)
    marker = "31.4159"
    try:
        cfg = parse_config({"state": {"dir": str(tmp_path / "state")}, "schedule": {"hooks": [
            {"name": "slow-cmd", "on_start": ["sleep", marker], "on_success": ["sleep", marker], "timeout": 1},
            {"name": "slow-ping", "ping_url": f"{hanging.url}/hc", "timeout": 1},
            {"name": "broken", "on_success": ["/bin/sh", "-c", "echo boom >&2; exit 3"], "on_failure": ["/nonexistent/hook"]},
        ]}})
        out = Output(quiet=True)
        t0 = time.monotonic()
        ok = run_job(cfg, "drill", out, lambda: (0, "all good"))
        elapsed = time.monotonic() - t0
        assert ok.exit_code == 0 and ok.status == "success" and ok.summary == "all good"
        assert elapsed < 20, elapsed  # two rounds of hooks, each cut at 1 s (+ 2 s grace for a ping); uncut: 60 s
        assert len([q for q in hanging.requests if q["path"] in ("/hc/start", "/hc")]) == 2
        assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p) == f"sleep {marker}"]  # killed

        bad = run_job(cfg, "drill", out, lambda: (5, "target local: mismatch"))
        assert bad.exit_code == 5 and bad.status == "failed" and bad.summary == "target local: mismatch"
        assert hanging.requests[-1]["path"] == "/hc/fail" and hanging.requests[-1]["body"]["exit_code"] == 5
    finally:
        hanging.close()


def test_hook_calls_report_what_happened(tmp_path: Path, receiver: Receiver) -> None:
    cfg = parse_config({"schedule": {"hooks": [
        {"name": "cmd", "on_failure": ["/bin/sh", "-c", "echo 'disk says no' >&2; exit 3"], "timeout": 5},
        {"name": "ping", "on_failure_url": f"{receiver.url}/bad", "timeout": 5},
        {"name": "gone", "on_failure": ["/nonexistent/hook"]},
    ]}})
    calls = {c.hook: c for c in Hooks(cfg.schedule.hooks).fire("failure", "run", status="failed", exit_code=4, summary="x\n y")}
    assert not calls["cmd"].ok and calls["cmd"].detail == "sh: exit 3: disk says no"
    assert calls["ping"].ok and calls["ping"].detail.endswith("HTTP 200") and "/bad" not in calls["ping"].detail
    assert not calls["gone"].ok and "cannot start" in calls["gone"].detail
    assert receiver.requests[0]["body"]["summary"] == "x y" and receiver.requests[0]["body"]["job"] == "run"
    assert Hooks(cfg.schedule.hooks).fire("success", "run", status="success") == []  # nothing configured for success


def test_hook_config_mistakes(tmp_path: Path) -> None:
    for hook, needle in [({"ping_url": "ftp://x"}, "schedule.hooks[0].ping_url: expected an http:// or https:// URL"),
                         ({"jobs": ["export"]}, "schedule.hooks[0].jobs[0]"),
                         ({"timeout": 0}, "schedule.hooks[0].timeout"),
                         ({"on_sucess": ["x"]}, "schedule.hooks[0].on_sucess: unknown key")]:
        with pytest.raises(ConfigError) as err:
            parse_config({"schedule": {"hooks": [hook]}}, "c.toml")
        assert needle in str(err.value), str(err.value)
    url_file = tmp_path / "url"
    url_file.write_text("not a url\n")
    both = {"ping_url": "http://h", "ping_url_file": str(url_file)}
    cfg = parse_config({"schedule": {"hooks": [{"ping_url_file": str(url_file)}, both]}})
    with pytest.raises(ConfigError, match=r"schedule.hooks\[0\].ping_url_file: .* does not hold an http"):
        Hooks(cfg.schedule.hooks[:1])
    with pytest.raises(ConfigError, match=r"schedule.hooks\[0\]: set ping_url or ping_url_file, not both"):
        Hooks(cfg.schedule.hooks[1:])
    config = config_with(tmp_path, [{"ping_url_file": str(tmp_path / "missing")}])
    one_line(mail_backup(config, "drill"), 1, "schedule.hooks[0].ping_url_file", "cannot read secret file")


def _cmdline(p: Path) -> str:
    try:
        return (p / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
