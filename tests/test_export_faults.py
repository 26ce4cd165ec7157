"""Export under bad input and faults: a vanished blob, broken server answers, throttling, huge messages, hostile
account names, a full disk, a second export of the same account, unreachable servers and wrong credentials.

Each fault yields one clear line naming the account (and message) and the documented exit code, and the
previous export stays complete.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backup.exportdir import ExportDir
from backup.exportdir.account import AccountReader
from backup.state import StateDir
from tests.conftest import USER_PASSWORD, MailsrvProc, free_port, start_mailsrv
from tests.test_export import (
    account_reader,
    add_account,
    comparable,
    export,
    import_message,
    mail_backup,
    mailbox_id,
    mailsrv_server,
    message,
    records_of,
    user_client,
    write_config,
)
from tests.test_export_incremental import RecordingProxy, recording_proxies


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., RecordingProxy]]:
    yield from recording_proxies()

BIG = 30_000_000


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailsrvProc]:
    """One server for the module; each test works on accounts of its own (see :func:`add_account`)."""
    srv = start_mailsrv(tmp_path_factory.mktemp("faults-srv"))
    try:
        yield srv
    finally:
        srv.stop()


def one_line(stderr: str, *needles: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("mail-backup:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# -- a blob the server cannot deliver -----------------------------------------------------------------------------
def test_blob_not_found_is_recorded_and_retried(shared: MailsrvProc, tmp_path: Path) -> None:
    mailsrv, alice = shared, add_account(shared, "blobless")
    with user_client(mailsrv.url, alice) as client:
        inbox = mailbox_id(client, role="inbox")
        ids = [import_message(client, message(n), [inbox]) for n in range(5)]
        lost = client.get_emails([ids[2]])[0]
    blob = mailsrv.data_dir / "blobs" / lost.blob_id[:2] / lost.blob_id[2:4] / lost.blob_id
    saved = tmp_path / "saved-blob"
    shutil.move(blob, saved)

    config = write_config(tmp_path, mailsrv_server(mailsrv), accounts={"include": [alice]})
    r = mail_backup(config, "export", "--json")
    assert r.returncode == 4, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["accounts"][0]["status"] == "partial" and ids[2] in summary["accounts"][0]["detail"]
    reader = account_reader(config, alice)
    (err,) = reader.manifest.errors
    assert (err.kind, err.email_id, err.blob_id) == ("blobNotFound", ids[2], lost.blob_id)
    assert set(records_of(reader)) == set(ids) - {ids[2]}, "the other emails are exported"
    state = StateDir(tmp_path / "backup-state").read("export", alice)
    assert state is not None and state.status == "partial" and state.errors == 1

    shutil.move(saved, blob)  # the server can deliver it again: the next (unchanged) run fetches it
    result = export(config)
    assert result.exit_code == 0 and result.outcomes[alice].mode == "incremental"
    assert result.outcomes[alice].fetched_messages == 1
    reader = account_reader(config, alice)
    assert set(records_of(reader)) == set(ids) and reader.manifest.errors == []


# -- broken server answers: one clear error for that account ------------------------------------------------------
def test_malformed_answers_fail_that_account_only(shared: MailsrvProc, proxy_factory: Callable[..., RecordingProxy],
                                                  tmp_path: Path) -> None:
    mailsrv, alice, bob = shared, add_account(shared, "mal-a"), add_account(shared, "mal-b")
    with user_client(mailsrv.url, alice) as a, user_client(mailsrv.url, bob) as b:
        import_message(a, message("alice 1"), [mailbox_id(a, role="inbox")])
        import_message(b, message("bob 1", to="bob@example.org"), [mailbox_id(b, role="inbox")])
        bob_id = b.account_id
    proxy = proxy_factory(mailsrv.url)
    config = write_config(tmp_path, mailsrv_server(mailsrv, url=proxy.url), accounts={"include": [alice, bob]})
    assert export(config).exit_code == 0
    good = {n: comparable(account_reader(config, n)) for n in (alice, bob)}
    with user_client(mailsrv.url, alice) as a:
        victim = import_message(a, message("alice 2"), [mailbox_id(a, role="inbox")])
    with user_client(mailsrv.url, bob) as b:
        import_message(b, message("bob 2", to="bob@example.org"), [mailbox_id(b, role="inbox")])

    def rewrite(request: dict[str, Any], response: bytes) -> bytes | None:
        calls = request.get("methodCalls") or []
        if any(c[0] == "Email/get" and c[1].get("accountId") == bob_id for c in calls):
            return b"<html>502 Bad Gateway</html>"  # not JSON at all
        answer = json.loads(response)
        for name, args, _ in answer["methodResponses"]:
            if name == "Email/get":
                for obj in args.get("list") or []:
                    if obj.get("id") == victim:
                        obj.pop("blobId", None)
        return json.dumps(answer).encode()

    proxy.rewrite_api = rewrite
    r = mail_backup(config, "export", "--json")
    assert r.returncode == 4, r.stderr
    accounts = {a["account"]: a for a in json.loads(r.stdout.splitlines()[-1])["accounts"]}
    assert accounts[alice]["status"] == "failed" and f"email {victim!r}: no blobId" in accounts[alice]["detail"]
    assert accounts[bob]["status"] == "failed" and "non-JSON" in accounts[bob]["detail"]
    warnings = [json.loads(line)["message"] for line in r.stdout.splitlines() if '"warning"' in line]
    assert any(w.startswith(f"{alice}: export failed") for w in warnings) and any(w.startswith(f"{bob}: export failed") for w in warnings)
    assert "Traceback" not in r.stderr
    for n in (alice, bob):  # nothing committed: the previous exports are complete and unchanged
        assert comparable(account_reader(config, n))[:2] == good[n][:2] and account_reader(config, n).check_files() == []
        state = StateDir(tmp_path / "backup-state").read("export", n)
        assert state is not None and state.status == "failed" and state.last_success is not None


def test_throttling_is_retried_honouring_retry_after(shared: MailsrvProc, proxy_factory: Callable[..., RecordingProxy],
                                                     tmp_path: Path) -> None:
    mailsrv, alice = shared, add_account(shared, "throttled")
    with user_client(mailsrv.url, alice) as a:
        for n in range(6):
            import_message(a, message(n), [mailbox_id(a, role="inbox")])
    proxy = proxy_factory(mailsrv.url)
    answers = [("/jmap/download/", 503, "1"), ("/jmap/download/", 429, "1"), ("/jmap", 503, "1")]

    def throttle(path: str) -> tuple[int, str] | None:
        for i, (prefix, status, after) in enumerate(answers):
            if path.startswith(prefix):
                answers.pop(i)
                return status, after
        return None

    proxy.throttle = throttle
    config = write_config(tmp_path, mailsrv_server(mailsrv, url=proxy.url), accounts={"include": [alice]})
    started = time.monotonic()
    result = export(config)
    assert result.exit_code == 0, result.outcomes[alice].detail
    assert answers == [] and time.monotonic() - started >= 1.0, "each throttled request waited for its Retry-After"
    assert len(records_of(account_reader(config, alice))) == 6
    assert sorted(s.status for s in proxy.seen if s.status >= 400) == [429, 503, 503]


# -- messages of 25 MB and more are streamed ----------------------------------------------------------------------
@pytest.mark.slow
def test_huge_messages_are_streamed_with_bounded_memory(mailsrv_factory: Callable[..., MailsrvProc], tmp_path: Path) -> None:
    srv = mailsrv_factory(max_message_size=2 * BIG, jmap={"max_size_upload": 2 * BIG})
    add_account(srv, "alice")
    add_account(srv, "bob")
    with user_client(srv.url, "alice") as a:
        inbox = mailbox_id(a, role="inbox")
        for n in range(2):
            import_message(a, message(f"big {n}", size=BIG + n), [inbox])
    with user_client(srv.url, "bob") as b:
        import_message(b, message("small", to="bob@example.org"), [mailbox_id(b, role="inbox")])

    def measured(account: str) -> int:
        # a fresh process per measurement: ru_maxrss of RUSAGE_CHILDREN is the maximum over all waited children
        code = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)")
        runner = "import sys; from backup.cli import main; sys.exit(main())"
        config = write_config(tmp_path / account, mailsrv_server(srv), accounts={"include": [account]})
        r = subprocess.run([sys.executable, "-c", code, sys.executable, "-c", runner, "--config", str(config), "export"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return int(r.stdout.strip().splitlines()[-1])

    small = measured("bob")
    big = measured("alice")
    reader = account_reader(write_config(tmp_path / "alice", mailsrv_server(srv), accounts={"include": ["alice"]}), "alice")
    assert reader.manifest.counts.bytes > 2 * BIG
    assert all(r.size > BIG for r in records_of(reader).values())
    # 60 MB of mail went through; memory grew by far less than one message
    assert big - small < 20_000, f"peak RSS {big} KB exporting 2 x 30 MB vs {small} KB for one small message"


# -- hostile account names never become paths --------------------------------------------------------------------
def test_hostile_account_names_stay_inside_the_export_dir(shared: MailsrvProc, tmp_path: Path) -> None:
    """The generic profile takes account names from the config: any string, here all logging in as one account."""
    mailsrv, login = shared, add_account(shared, "hostile")
    with user_client(mailsrv.url, login) as a:
        import_message(a, message("hi"), [mailbox_id(a, role="inbox")])
    (tmp_path / "alice.pw").write_text(USER_PASSWORD + "\n")
    names = ["../../evil", "manifest.json", "blobs", "a/b", "😀", "é" * 300, ".mailsidecar-export", "x.lock", "alice"]
    creds = {n: {"user": login, "password_file": str(tmp_path / "alice.pw")} for n in names}
    config = write_config(tmp_path / "cfg", {"profile": "generic", "url": mailsrv.url}, accounts={"credentials": creds})
    before = {p for p in tmp_path.rglob("*")}
    result = export(config)
    assert result.exit_code == 0, {n: o.detail for n, o in result.outcomes.items()}
    root = tmp_path / "cfg" / "backup-export"
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(p.is_relative_to(root) or p.is_relative_to(tmp_path / "cfg" / "backup-state") for p in new)
    dirs = {p.name for p in root.iterdir() if p.is_dir()}
    assert len(dirs) == len(names) and "alice" in dirs
    assert all(d == "alice" or d.startswith("x-") for d in dirs)
    assert {AccountReader(root / d).manifest.account.name for d in dirs} == set(names)
    assert sorted(d.name for d in result.account_dirs) == sorted(dirs)


# -- a full disk: exit 7, the previous export intact -------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs (root can mount one), else the test is skipped."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_exits_7_with_previous_export_intact(shared: MailsrvProc, small_disk: Path, tmp_path: Path) -> None:
    mailsrv, alice = shared, add_account(shared, "diskfull")
    with user_client(mailsrv.url, alice) as a:
        inbox = mailbox_id(a, role="inbox")
        for n in range(5):
            import_message(a, message(n, size=100_000), [inbox])
    config = write_config(tmp_path, mailsrv_server(mailsrv), accounts={"include": [alice]},
                          export={"dir": str(small_disk / "export")})
    assert export(config).exit_code == 0
    reader = account_reader(config, alice)
    good = comparable(reader)
    first = StateDir(tmp_path / "backup-state").read("export", alice)
    assert first is not None

    with user_client(mailsrv.url, alice) as a:
        import_message(a, message("too big for the disk", size=4_000_000), [inbox])
        import_message(a, message("small one"), [inbox])
    r = mail_backup(config, "export")
    assert r.returncode == 7, r.stderr
    assert "disk full" in r.stderr and alice in r.stderr and "Traceback" not in r.stderr
    after = account_reader(config, alice)
    assert after.manifest == reader.manifest and comparable(after)[:2] == good[:2] and after.check_files() == []
    assert all(after.blob_path(sha).is_file() for sha in good[2])
    leftovers = [p.name for p in (after.root / ".tmp").iterdir()]
    assert set(leftovers) <= {"journal.tsv"}, leftovers
    state = StateDir(tmp_path / "backup-state").read("export", alice)
    assert state is not None and state.status == "failed" and state.last_success == first.last_success
    assert "disk full" in state.detail


# -- the same account twice, unreachable servers, bad credentials, a foreign directory ---------------------------
def test_second_export_of_the_same_account_waits_its_turn(shared: MailsrvProc, tmp_path: Path) -> None:
    first, second = add_account(shared, "lock-a"), add_account(shared, "lock-b")
    config = write_config(tmp_path, mailsrv_server(shared), accounts={"include": [first, second]})
    assert export(config).exit_code == 0
    d = ExportDir(tmp_path / "backup-export").account(first)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running export holds
        result = export(config)
    finally:
        os.close(fd)
    assert result.exit_code == 4
    assert result.outcomes[first].status == "failed" and "another export" in result.outcomes[first].detail
    assert result.outcomes[second].status == "success"


def test_unreachable_server_and_wrong_password_exit_2(shared: MailsrvProc, tmp_path: Path) -> None:
    mailsrv, alice = shared, add_account(shared, "wrongpw")
    closed = write_config(tmp_path / "closed", {**mailsrv_server(mailsrv), "url": f"http://127.0.0.1:{free_port()}"})
    r = mail_backup(closed, "export")
    assert r.returncode == 2
    one_line(r.stderr, "cannot")

    (tmp_path / "wrong.pw").write_text("not-the-master-password\n")
    server = {**mailsrv_server(mailsrv), "master_password_file": str(tmp_path / "wrong.pw")}
    r = mail_backup(write_config(tmp_path / "wrong", server, accounts={"include": [alice]}), "export")
    assert r.returncode == 2, r.stderr  # every account failed to authenticate the same way
    assert f"{alice}%master" in r.stderr and "not-the-master-password" not in r.stderr + r.stdout


def test_foreign_export_dir_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "someones-files"
    foreign.mkdir()
    (foreign / "thesis.odt").write_text("precious")
    config = write_config(tmp_path, {"profile": "generic", "url": f"http://127.0.0.1:{free_port()}"},
                          accounts={"credentials": {"x": {"user": "x"}}}, export={"dir": str(foreign)})
    r = mail_backup(config, "export")
    assert r.returncode == 1
    one_line(r.stderr, "export.dir", "not a mailsidecar export directory")
    assert [p.name for p in foreign.iterdir()] == ["thesis.odt"]
