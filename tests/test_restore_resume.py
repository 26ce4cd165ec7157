"""Restore that survives ``kill -9`` and restores from snapshots (restic repository, native B2).

* a restore killed mid-way (a real process, SIGKILL) completes when run again, with no duplicates;
* from a snapshot only what is needed is fetched, into a private temporary directory that is removed
  afterwards (and, after a ``kill -9``, by the next restore);
* ``--snapshot`` takes an id, ``latest`` or a date (newest at or before); an unknown one exits 3.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from backup.actions.restore_source import TMP_PREFIX, open_snapshot_source
from backup.errors import UnknownObject
from mailsrv.config import load_config
from tests.conftest import MailsrvProc, start_mailsrv
from tests.test_restore import (
    CLI,
    View,
    backup_config,
    client_for,
    mailsrv_server,
    one_line_error,
    populate,
    populate_objects,
    run,
    summary,
    view,
)

SEEDED = 600  # six import batches: a kill after the first leaves the restore unfinished


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MailsrvProc, Path]]:
    """mailsrv with ``big`` (SEEDED realistic messages) and ``alice`` (small, with objects), both exported."""
    base = tmp_path_factory.mktemp("resume")
    srv = start_mailsrv(base / "srv")
    try:
        srv.add_account("big")
        srv.add_account("alice")
        srv.cli("seed", "--account", "big", "--count", str(SEEDED))
        with client_for(srv, "alice") as alice:
            populate(alice)
            populate_objects(alice, "alice@example.org")
        (base / "restic.pw").write_text("restic-test-password\n")
        targets = [{"name": "local", "type": "restic", "repository": str(base / "repo"), "password_file": str(base / "restic.pw")}]
        config = backup_config(base / "backup", mailsrv_server(srv), targets=targets)
        with config.open("a") as f:
            f.write("init = true\n")
        r = run(config, "export")
        assert r.returncode == 0, r.stderr
        yield srv, config
    finally:
        srv.stop()


def snapshots(config: Path) -> list[dict[str, Any]]:
    lines = [ln for ln in run(config, "snapshots", "--target", "local", "--json").stdout.splitlines() if ln.startswith("[")]
    return list(json.loads(lines[-1])) if lines else []


def ensure_shipped(config: Path) -> None:
    if not snapshots(config):
        r = run(config, "ship", "--target", "local")
        assert r.returncode == 0, r.stderr


def _distinct(v: View) -> int:
    return len(v.emails)


@pytest.mark.slow
def test_kill_9_mid_restore_then_resume_completes_without_duplicates(seeded: tuple[MailsrvProc, Path]) -> None:
    srv, config = seeded
    srv.add_account("resumed")
    with client_for(srv, "big") as big:
        source = view(big)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIDECAR_")}
    proc = subprocess.Popen([*CLI, "--config", str(config), "restore", "--account", "big", "--into", "resumed", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killed_at = None
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "restore.progress":
            proc.send_signal(signal.SIGKILL)
            killed_at = event["done"]
            break
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    with client_for(srv, "resumed") as client:
        partial = view(client)
    assert killed_at <= partial.count < _distinct(source)

    r = run(config, "restore", "--account", "big", "--into", "resumed", "--json")
    assert r.returncode == 0, r.stderr
    s = summary(r)
    assert s["emails"]["imported"] + s["emails"]["present"] + s["emails"]["merged"] == _distinct(source)
    assert s["emails"]["present"] + s["emails"]["merged"] >= partial.count and s["verification"]["ok"]
    with client_for(srv, "resumed") as client:
        done = view(client)
    assert done.count == _distinct(source)  # nothing imported twice
    assert done.emails == source.emails and set(done.mailboxes) == set(source.mailboxes)
    again = summary(run(config, "restore", "--account", "big", "--into", "resumed", "--json"))
    assert (again["emails"]["imported"], again["emails"]["merged"]) == (0, 0)


def test_export_ship_wipe_restore_from_restic_by_date_latest_and_id(seeded: tuple[MailsrvProc, Path], tmp_path: Path) -> None:
    srv, config = seeded
    r = run(config, "ship", "--target", "local")
    assert r.returncode == 0, r.stderr
    snap = snapshots(config)[-1]
    day = datetime.fromisoformat(snap["time"]).date().isoformat()
    with client_for(srv, "alice") as alice:
        before = view(alice)
    srv.cli("account", "delete", "--yes", "alice")
    srv.add_account("alice")
    tmp = tmp_path / "fetch"
    tmp.mkdir()
    r = run(config, "restore", "--account", "alice", "--target", "local", "--snapshot", day, "--tmp-dir", str(tmp), "--json")
    assert r.returncode == 0, r.stderr
    s = summary(r)
    assert s["source"]["snapshot"] == snap["id"] and s["emails"]["imported"] == 12 and s["verification"]["ok"]
    assert {k: o["status"] for k, o in s["objects"].items()} == {"identities": "restored", "sieve": "restored", "vacation": "restored"}
    assert list(tmp.iterdir()) == []  # the fetched files are gone
    with client_for(srv, "alice") as alice:
        assert view(alice) == before
        assert [(x.name, x.is_active) for x in alice.sieve_scripts()] == [("filters", True)]
    # one message by snapshot id prefix, from the newest snapshot: already there, nothing to do
    for spec in (snap["short_id"], "latest"):
        r = run(config, "restore", "--account", "alice", "--target", "local", "--snapshot", spec, "--message-id", "msg-2@example.net",
                "--json")
        assert r.returncode == 0 and summary(r)["emails"]["present"] == 1 and summary(r)["emails"]["imported"] == 0
    one_line_error(run(config, "restore", "--account", "alice", "--target", "local", "--snapshot", "1999-01-01"), 3, "1999-01-01")
    one_line_error(run(config, "restore", "--account", "alice", "--target", "local", "--snapshot", "deadbeef"), 3, "deadbeef")
    one_line_error(run(config, "restore", "--account", "nobody", "--target", "local"), 3, "nobody")
    one_line_error(run(config, "restore", "--account", "alice", "--target", "local", "--from-dir", str(tmp)), 1, "--from-dir")


def test_sigterm_stops_cleanly_and_removes_the_fetched_files(seeded: tuple[MailsrvProc, Path], tmp_path: Path) -> None:
    srv, config = seeded
    ensure_shipped(config)
    srv.add_account("termed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIDECAR_")}
    proc = subprocess.Popen([*CLI, "--config", str(config), "restore", "--account", "big", "--into", "termed", "--target", "local",
                             "--tmp-dir", str(tmp_path), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stdout:
        if json.loads(line).get("event") == "restore.progress":
            assert any(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir())  # the snapshot's files, while running
            proc.send_signal(signal.SIGTERM)
            break
    proc.wait(timeout=120)
    err = proc.stderr.read()
    assert proc.returncode == 4, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    r = run(config, "restore", "--account", "big", "--into", "termed", "--target", "local", "--tmp-dir", str(tmp_path), "--json")
    assert r.returncode == 0 and summary(r)["verification"]["ok"], r.stderr
    with client_for(srv, "termed") as client:
        assert view(client).count == summary(r)["emails"]["selected"]


def test_snapshot_source_fetches_only_what_is_asked_into_a_private_dir(seeded: tuple[MailsrvProc, Path], tmp_path: Path) -> None:
    _, config = seeded
    cfg = load_config(str(config))
    ensure_shipped(config)
    stale = tmp_path / f"{TMP_PREFIX}999999-old"  # left by a restore that was killed (no such process)
    stale.mkdir()
    (stale / "junk").write_text("x")
    with open_snapshot_source(cfg, "local", "latest", "alice", str(tmp_path)) as source:
        assert not stale.exists()
        root = source.tmp  # type: ignore[attr-defined]
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        records = list(source.reader.emails())
        assert len(records) == 12 and not any(source.blob(r.sha256).exists() for r in records)
        source.ensure_blobs([records[0].sha256, "0" * 64])  # one that the snapshot lacks does not stop the other
        assert source.blob(records[0].sha256).read_bytes() and not source.blob("0" * 64).exists()
        assert sum(1 for r in records if source.blob(r.sha256).exists()) == 1
        assert hashlib.sha256(source.blob(records[0].sha256).read_bytes()).hexdigest() == records[0].sha256
    assert not root.exists()
    with pytest.raises(UnknownObject):
        open_snapshot_source(cfg, "local", "latest", "nobody", str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def b2_simulator(monkeypatch: pytest.MonkeyPatch) -> Any:
    from b2sdk.v2 import B2Api, B2HttpApiConfig, InMemoryAccountInfo, RawSimulator

    from backup.targets import b2

    sim = RawSimulator()
    key_id, key = sim.create_account()

    def factory(_key_id: str, _key: str) -> Any:
        api = B2Api(InMemoryAccountInfo(), api_config=B2HttpApiConfig(_raw_api_class=RawSimulator))
        api.session.raw_api = sim
        api.authorize_account("production", key_id, key)
        return api

    factory("", "").create_bucket("mail-backups", "allPrivate")
    monkeypatch.setattr(b2, "API_FACTORY", factory)
    return sim


def test_restore_from_native_b2_snapshot(seeded: tuple[MailsrvProc, Path], tmp_path: Path, b2_simulator: Any) -> None:
    srv, config = seeded
    (tmp_path / "b2.key").write_text("simulated-key\n")
    export = tmp_path / "export"  # just alice: the simulator keeps everything in memory
    export.mkdir()
    shutil.copy(config.parent / "export" / ".mailsidecar-export", export)
    shutil.copytree(config.parent / "export" / "alice", export / "alice")
    b2cfg = tmp_path / "config.toml"
    text = config.read_text().split("[[targets]]")[0].replace(str(config.parent / "export"), str(export))
    b2cfg.write_text(text + f'\n[[targets]]\nname = "b2"\ntype = "b2"\nbucket = "mail-backups"\nkey_id = "simulated"\n'
                            f'application_key_file = "{tmp_path / "b2.key"}"\nconnections = 1\n')
    r = run(b2cfg, "ship", "--target", "b2")
    assert r.returncode == 0, r.stdout + r.stderr
    srv.add_account("fromb2")
    r = run(b2cfg, "restore", "--account", "alice", "--into", "fromb2", "--target", "b2", "--mailbox", "Projects", "--json")
    assert r.returncode == 0, r.stderr
    s = summary(r)
    assert s["source"]["kind"] == "snapshot" and s["source"]["target"] == "b2" and s["emails"]["imported"] == 4 and s["verification"]["ok"]
    with client_for(srv, "alice") as alice, client_for(srv, "fromb2") as client:
        want = {k: v for k, v in view(alice).emails.items() if ("Projects", "2026") in v[0]}
        got = view(client).emails
        assert got.keys() == want.keys() and all(got[k][0] == frozenset({("Projects", "2026")}) for k in got)


def test_damaged_blobs_in_a_restic_snapshot_exit_5_naming_the_messages(seeded: tuple[MailsrvProc, Path], tmp_path: Path) -> None:
    """A message altered before shipping and one hit by bit rot in a pack file: both are named (exit 5), the rest is restored."""
    from backup.exportdir.account import AccountReader
    from mailsrv.client import EmailImport

    srv, _ = seeded
    srv.add_account("rot")
    large = (b"From: a@example.net\r\nTo: rot@example.org\r\nSubject: large\r\nMessage-ID: <large-1@example.net>\r\n\r\n"
             + os.urandom(600_000).hex().encode() + b"\r\n")
    smalls = [f"From: a@example.net\r\nTo: rot@example.org\r\nSubject: {n}\r\nMessage-ID: <small-{n}@example.net>\r\n\r\n"
              f"body {n}\r\n".encode() for n in range(3)]
    with client_for(srv, "rot") as client:
        inbox = next(m.id for m in client.mailboxes() if m.role == "inbox")
        for n, raw in enumerate([large, *smalls]):
            up = client.upload(raw)
            assert client.email_import({"e": EmailImport(up.blob_id, {inbox: True}, {}, f"2025-05-0{n + 1}T10:00:00Z")}).created
    (tmp_path / "restic.pw").write_text("restic-test-password\n")
    targets = [{"name": "local", "type": "restic", "repository": str(tmp_path / "repo"), "password_file": str(tmp_path / "restic.pw")}]
    config = backup_config(tmp_path / "backup", mailsrv_server(srv), targets=targets)
    with config.open("a") as f:
        f.write("init = true\n")
    r = run(config, "export", "--account", "rot")
    assert r.returncode == 0, r.stderr
    blob = AccountReader(tmp_path / "backup" / "export" / "rot").blob_path(hashlib.sha256(smalls[0]).hexdigest())
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes().replace(b"body", b"BODY"))  # altered after the export: shipped as is
    r = run(config, "ship", "--target", "local")
    assert r.returncode == 0, r.stderr
    pack = max((tmp_path / "repo" / "data").glob("*/*"), key=lambda p: p.stat().st_size)  # the large message's pack
    assert pack.stat().st_size > 300_000
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.chmod(0o600)
    pack.write_bytes(bytes(data))

    srv.add_account("rotdst")
    r = run(config, "restore", "--account", "rot", "--into", "rotdst", "--target", "local", "--tmp-dir", str(tmp_path), "--json")
    one_line_error(r, 5, "2 message(s) damaged in the backup", "'rot'")
    s = summary(r)
    details = {p["message_id"]: p["detail"] for p in s["problems"]}
    assert set(details) == {"large-1@example.net", "small-0@example.net"}
    assert "cannot be restored" in details["large-1@example.net"] and "damaged" in details["small-0@example.net"]
    assert s["emails"]["imported"] == 2
    with client_for(srv, "rotdst") as client:
        assert view(client).count == 2
    assert not any(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir())


def test_damaged_metadata_in_a_restic_snapshot_is_exit_5(seeded: tuple[MailsrvProc, Path], tmp_path: Path) -> None:
    """Bit rot in every data pack, the account's manifest and metadata included: a verification failure (exit 5)
    naming the account, not a generic target failure; nothing is imported."""
    srv, _ = seeded
    (tmp_path / "restic.pw").write_text("restic-test-password\n")
    targets = [{"name": "local", "type": "restic", "repository": str(tmp_path / "repo"), "password_file": str(tmp_path / "restic.pw")}]
    config = backup_config(tmp_path / "backup", mailsrv_server(srv), targets=targets)
    with config.open("a") as f:
        f.write("init = true\n")
    assert run(config, "export", "--account", "alice").returncode == 0
    assert run(config, "ship", "--target", "local").returncode == 0
    for pack in (tmp_path / "repo" / "data").glob("*/*"):
        data = bytearray(pack.read_bytes())
        for i in range(0, len(data), 64):  # every blob of the pack, however small
            data[i] ^= 0xFF
        pack.chmod(0o600)
        pack.write_bytes(bytes(data))
    srv.add_account("metadst")
    r = run(config, "restore", "--account", "alice", "--into", "metadst", "--target", "local", "--tmp-dir", str(tmp_path))
    one_line_error(r, 5, "'alice'", "metadata is damaged")
    with client_for(srv, "metadst") as client:
        assert view(client).count == 0
    assert not any(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir())
