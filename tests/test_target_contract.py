"""One contract every target type passes: restic (local), restic on S3 (SeaweedFS), native S3 (SeaweedFS),
native B2 (b2sdk's RawSimulator). Real exports written with AccountWriter; real restic, real S3 server.

``make_export`` / ``read_tree`` are also used by test_restic.py and test_ship.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backup.exportdir import EmailRecord, ExportDir, Manifest, account_dir_name
from backup.exportdir.account import AccountWriter, new_run_id
from backup.exportdir.manifest import AccountInfo, Counts, RunInfo, ServerInfo, ToolInfo
from backup.targets import b2 as b2mod
from backup.targets.base import SnapshotNotFound, Target, TargetError, TargetUnavailable
from backup.targets.registry import build_target
from mailsrv.config import ConfigError, KeepPolicy, TargetConfig

pytest_plugins = ("tests.seaweed",)

HOSTILE = "../Ünïcödé évil/name 😀"
PASSWORD = "correct horse battery staple"


# -- exports ---------------------------------------------------------------------------------------------------
def message(n: int, size: int = 600, seed: str = "") -> bytes:
    body = hashlib.sha256(f"{seed}{n}".encode()).hexdigest() * (size // 64 + 1)
    return (f"From: a{n}@example.org\r\nTo: b@example.org\r\nSubject: message {n}\r\nMessage-ID: <{n}.{seed}@example.org>\r\n\r\n"
            + body[:size]).encode()


def write_account(export: ExportDir, name: str, messages: list[bytes], *, run_id: str | None = None) -> Path:
    """Commit one account's export (blobs, emails JSONL, mailboxes JSON, manifest) with AccountWriter."""
    root = export.account(name)
    w = AccountWriter(root, run_id or new_run_id())
    records = []
    for i, raw in enumerate(messages):
        sha = w.put_blob(raw)
        records.append(EmailRecord(id=f"M{i}", blob_id=f"B{sha[:16]}", sha256=sha, size=len(raw), mailbox_ids=["INBOX"],
                                   received_at="2026-11-20T10:00:00Z", keywords={"$seen": True}))
    records.sort(key=lambda r: r.id)
    w.write_jsonl("emails", records)
    w.write_json("mailboxes", [{"id": "INBOX", "name": "Inbox", "parent_id": None, "role": "inbox", "sort_order": 0,
                                "is_subscribed": True, "path": ["Inbox"]}])
    now = "2026-11-21T02:45:00Z"
    manifest = Manifest(account=AccountInfo(name=name, id="a1"), server=ServerInfo(profile="embedded", url="http://127.0.0.1"),
                        tool=ToolInfo(version="test"), run=RunInfo(id=w.run_id, started=now, finished=now, mode="full"),
                        counts=Counts(emails=len(records), mailboxes=1, blobs=len({r.sha256 for r in records}),
                                      bytes=sum(len(m) for m in messages)), files=w.files)
    w.commit(manifest, {r.sha256 for r in records})
    return root


def make_export(root: Path, accounts: dict[str, list[bytes]]) -> tuple[ExportDir, list[Path]]:
    export = ExportDir(root)
    export.ensure()
    return export, [write_account(export, name, msgs) for name, msgs in accounts.items()]


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and ".tmp" not in p.parts}


def sample_accounts() -> dict[str, list[bytes]]:
    return {"alice@example.org": [message(i, seed="a") for i in range(12)],
            "bob@example.org": [message(i, 3000, seed="b") for i in range(5)],
            HOSTILE: [message(1, seed="h")]}


# -- target kinds -------------------------------------------------------------------------------------------------
@dataclass
class Kind:
    """How to configure, break and damage one target type."""

    name: str
    tmp: Path
    seaweed: Any = None
    sim: Any = None

    def item(self, **overrides: Any) -> dict[str, Any]:
        t = self.tmp
        pw = t / "restic-password"
        pw.write_text(PASSWORD + "\n")
        if self.name == "restic-local":
            item = {"name": "local", "type": "restic", "repository": str(t / "repo"), "password_file": str(pw), "init": True,
                    "cache_dir": str(t / "cache")}
        elif self.name == "restic-s3":
            if not hasattr(self, "_bucket"):
                self._bucket = self.seaweed.bucket("restic")
            item = {"name": "s3restic", "type": "restic", "repository": f"s3:{self.seaweed.endpoint}/{self._bucket}/mail",
                    "password_file": str(pw), "env_file": str(self.seaweed.env_file(t / "s3.env")), "init": True,
                    "cache_dir": str(t / "cache")}
        elif self.name == "s3":
            if not hasattr(self, "_bucket"):
                self._bucket = self.seaweed.bucket("native")
            secret = t / "s3-secret"
            secret.write_text(self.seaweed.secret_key)
            item = {"name": "s3", "type": "s3", "endpoint_url": self.seaweed.endpoint, "bucket": self._bucket, "prefix": "mail/host1",
                    "region": "us-east-1", "access_key_id": self.seaweed.access_key, "secret_access_key_file": str(secret),
                    "gc_grace_hours": 0, "retries": 2, "timeout": 10}
        else:
            key_id, app_key = self.sim_key
            keyfile = t / "b2-key"
            keyfile.write_text(app_key)
            item = {"name": "b2", "type": "b2", "bucket": "mail-backups", "prefix": "host1", "key_id": key_id,
                    "application_key_file": str(keyfile), "gc_grace_hours": 0}
        item.update(overrides)
        return item

    def build(self, **overrides: Any) -> Target:
        return build_target(TargetConfig.model_validate(self.item(**overrides)), 0)

    # B2 simulator: one in-process "cloud" per test; the target authorises with a real key through API_FACTORY
    def start_b2(self, monkeypatch: pytest.MonkeyPatch, *, lock: bool = False) -> None:
        from b2sdk.v2 import B2Api, B2HttpApiConfig, InMemoryAccountInfo, RawSimulator

        admin = B2Api(InMemoryAccountInfo(), api_config=B2HttpApiConfig(_raw_api_class=RawSimulator))
        sim = admin.session.raw_api
        admin.authorize_account("production", *sim.create_account())
        admin.create_bucket("mail-backups", "allPrivate", is_file_lock_enabled=lock)
        self.sim, self.admin = sim, admin
        self.sim_key = admin.session.account_info.get_application_key_id(), admin.session.account_info.get_application_key()

        def factory(key_id: str, app_key: str) -> Any:
            api = B2Api(InMemoryAccountInfo(), api_config=B2HttpApiConfig(_raw_api_class=RawSimulator))
            api.session.raw_api = sim
            api.authorize_account("production", key_id, app_key)
            return api

        monkeypatch.setattr(b2mod, "API_FACTORY", factory)

    def data_objects(self) -> list[str]:
        """Keys of the stored content objects (restic pack files / native data objects)."""
        if self.name == "restic-local":
            return sorted(str(p) for p in (self.tmp / "repo" / "data").rglob("*") if p.is_file())
        if self.name == "restic-s3":
            pages = self.seaweed.client().get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix="mail/data/")
            return sorted(o["Key"] for p in pages for o in p.get("Contents", []))
        if self.name == "s3":
            pages = self.seaweed.client().get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix="mail/host1/data/")
            return sorted(o["Key"] for p in pages for o in p.get("Contents", []))
        bucket = self.admin.get_bucket_by_name("mail-backups")
        return sorted(fv.file_name for fv, _ in bucket.ls("host1/data", recursive=True))

    def corrupt(self, key: str) -> None:
        """Replace one stored object by garbage of the same size."""
        if self.name == "restic-local":
            p = Path(key)
            data = bytearray(p.read_bytes())
            data[len(data) // 2] ^= 0xFF
            os.chmod(p, 0o644)
            p.write_bytes(bytes(data))
        elif self.name in ("restic-s3", "s3"):
            c = self.seaweed.client()
            size = c.head_object(Bucket=self._bucket, Key=key)["ContentLength"]
            c.put_object(Bucket=self._bucket, Key=key, Body=secrets.token_bytes(size))
        else:
            bucket = self.admin.get_bucket_by_name("mail-backups")
            buf = io.BytesIO()
            bucket.download_file_by_name(key).save(buf)
            bucket.upload_bytes(secrets.token_bytes(len(buf.getvalue())), key)


KINDS = ["restic-local", "restic-s3", "s3", "b2"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kind]:
    k = Kind(request.param, tmp_path)
    if k.name in ("restic-s3", "s3"):
        k.seaweed = request.getfixturevalue("seaweed")
    if k.name == "b2":
        k.start_b2(monkeypatch)
    yield k


@pytest.fixture
def export(tmp_path: Path) -> tuple[ExportDir, list[Path]]:
    return make_export(tmp_path / "export", sample_accounts())


# -- the contract ---------------------------------------------------------------------------------------------------
def test_ship_list_fetch_round_trip(kind: Kind, export: tuple[ExportDir, list[Path]], tmp_path: Path) -> None:
    exp, dirs = export
    t = kind.build()
    assert isinstance(t, Target)
    t.init()
    t.init()  # idempotent
    seen: list[tuple[int, int]] = []
    res = t.ship(exp.root, dirs, host="mailhost", progress=lambda d, n: seen.append((d, n)))
    assert res.target == t.name and res.bytes_added > 0 and res.files_new > 0 and not res.skipped
    assert sorted(res.accounts) == sorted(sample_accounts())
    snaps = t.snapshots()
    assert [s.id for s in snaps] == [res.snapshot_id]
    s = snaps[0]
    assert s.time.tzinfo is not None and s.host == "mailhost" and s.target == t.name
    assert sorted(s.accounts) == sorted(sample_accounts())  # the hostile name comes back exactly
    for name, d in zip(sample_accounts(), dirs, strict=True):
        got = t.fetch(s.id, name, tmp_path / f"fetch-{account_dir_name(name)}")
        assert got.name == d.name
        assert read_tree(got) == read_tree(d)
    # single files only: the manifest and one blob
    blob = next(p for p in (dirs[0] / "blobs").rglob("*") if p.is_file())
    rel_blob = blob.relative_to(dirs[0]).as_posix()
    got = t.fetch(s.short_id, "alice@example.org", tmp_path / "partial", paths=["manifest.json", rel_blob])
    assert sorted(read_tree(got)) == sorted(["manifest.json", rel_blob])
    assert (got / rel_blob).read_bytes() == blob.read_bytes()
    # a second fetch into the same place adds to it (the restore engineer fetches in steps)
    meta = next(p for p in (dirs[0] / "meta").iterdir()).relative_to(dirs[0]).as_posix()
    t.fetch(s.id, "alice@example.org", tmp_path / "partial", paths=[meta])
    assert sorted(read_tree(got)) == sorted(["manifest.json", rel_blob, meta])


def test_fetch_unknown_account_or_path_is_reported(kind: Kind, export: tuple[ExportDir, list[Path]], tmp_path: Path) -> None:
    exp, dirs = export
    t = kind.build()
    res = t.ship(exp.root, dirs, host="mailhost")
    with pytest.raises(SnapshotNotFound, match="nobody"):
        t.fetch(res.snapshot_id, "nobody@example.org", tmp_path / "f1")
    with pytest.raises(SnapshotNotFound, match="blobs/00/00"):
        t.fetch(res.snapshot_id, "alice@example.org", tmp_path / "f2", paths=["blobs/00/00/" + "0" * 64])
    with pytest.raises(SnapshotNotFound):
        t.fetch("ffffffffffff", "alice@example.org", tmp_path / "f3")
    with pytest.raises(Exception, match="refusing path"):
        t.fetch(res.snapshot_id, "alice@example.org", tmp_path / "f4", paths=["../../etc/passwd"])


def test_unchanged_ship_adds_almost_nothing_and_history_stays(kind: Kind, tmp_path: Path) -> None:
    exp, dirs = make_export(tmp_path / "export", sample_accounts())
    t = kind.build()
    first = t.ship(exp.root, dirs, host="h")
    second = t.ship(exp.root, dirs, host="h")
    assert second.bytes_added < max(2048, first.bytes_added // 50), (first.bytes_added, second.bytes_added)
    # new mail in one account: only that is added
    new = [message(i, seed="a") for i in range(12)] + [message(99, 20000, seed="new")]
    write_account(exp, "alice@example.org", new)
    third = t.ship(exp.root, dirs, host="h")
    assert 20000 // 4 < third.bytes_added < first.bytes_added + 20000
    # an account that disappeared from the export stays in the older snapshots
    fourth = t.ship(exp.root, dirs[:1], host="h")
    snaps = t.snapshots()
    assert [s.id for s in snaps] == [first.snapshot_id, second.snapshot_id, third.snapshot_id, fourth.snapshot_id]
    assert snaps[-1].accounts == ["alice@example.org"]
    old = t.fetch(first.snapshot_id, "bob@example.org", tmp_path / "old")
    assert read_tree(old) == read_tree(dirs[1])
    latest_alice = t.fetch(fourth.snapshot_id, "alice@example.org", tmp_path / "new")
    assert read_tree(latest_alice) == read_tree(dirs[0])


def test_forget_applies_policy_and_reclaims_space(kind: Kind, tmp_path: Path) -> None:
    carol = [message(i, seed="c") + secrets.token_bytes(5000) for i in range(4)]
    exp, dirs = make_export(tmp_path / "export", {"carol@example.org": carol})
    t = kind.build()
    first = t.ship(exp.root, dirs, host="h")
    # replace the mail entirely, so the first snapshot's blobs become garbage once it is forgotten
    write_account(exp, "carol@example.org", [message(i, seed="d") + secrets.token_bytes(5000) for i in range(4)])
    second = t.ship(exp.root, dirs, host="h")
    before = kind.data_objects()
    dry = t.forget(KeepPolicy(last=1), dry_run=True)
    assert dry.removed == [first.snapshot_id] and dry.kept == [second.snapshot_id]
    assert len(t.snapshots()) == 2 and kind.data_objects() == before
    assert t.forget(KeepPolicy(), dry_run=False).removed == []  # no policy keeps everything
    time.sleep(1.1)  # S3 times are whole seconds; a prune spares objects not strictly older than its own start
    res = t.forget(KeepPolicy(last=1))
    assert res.removed == [first.snapshot_id]
    assert [s.id for s in t.snapshots()] == [second.snapshot_id]
    assert res.bytes_freed and res.bytes_freed > 4 * 5000 // 2
    after = kind.data_objects()
    assert len(after) < len(before)
    got = t.fetch(second.snapshot_id, "carol@example.org", tmp_path / "f")
    assert read_tree(got) == read_tree(dirs[0])
    assert t.check(read_data_percent=100).ok


def test_check_finds_damage_and_fetch_refuses_it(kind: Kind, tmp_path: Path) -> None:
    exp, dirs = make_export(tmp_path / "export", {"dave@example.org": [message(i, 4000, seed="e") for i in range(6)]})
    t = kind.build()
    res = t.ship(exp.root, dirs, host="h")
    ok = t.check()
    assert ok.ok, ok.detail
    assert t.check(read_data_percent=100).ok
    objects = kind.data_objects()
    assert objects
    for key in objects:
        kind.corrupt(key)
    bad = t.check(read_data_percent=100)
    assert not bad.ok and bad.detail
    with pytest.raises((TargetError, OSError)):
        t.fetch(res.snapshot_id, "dave@example.org", tmp_path / "f")


def test_interrupted_ship_lists_nothing_and_a_rerun_completes(kind: Kind, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTIC_PROGRESS_FPS", "200")
    big = {"erin@example.org": [message(i, 400_000, seed="big") + secrets.token_bytes(200_000) for i in range(40)]}
    exp, dirs = make_export(tmp_path / "export", big)
    t = kind.build()
    t.init()

    class Killed(Exception):
        pass

    def die(done: int, total: int) -> None:
        raise Killed("simulated crash mid-ship")

    with pytest.raises(Killed):
        t.ship(exp.root, dirs, host="h", progress=die)
    assert t.snapshots() == []
    res = t.ship(exp.root, dirs, host="h")
    assert [s.id for s in t.snapshots()] == [res.snapshot_id]
    got = t.fetch(res.snapshot_id, "erin@example.org", tmp_path / "f")
    assert read_tree(got) == read_tree(dirs[0])


def test_wrong_credentials_are_a_clear_error(kind: Kind, export: tuple[ExportDir, list[Path]], tmp_path: Path) -> None:
    exp, dirs = export
    kind.build().ship(exp.root, dirs, host="h")
    bad = tmp_path / "wrong-secret"
    bad.write_text("definitely-wrong-secret")
    key = {"restic-local": "password_file", "restic-s3": "password_file", "s3": "secret_access_key_file",
           "b2": "application_key_file"}[kind.name]
    t = kind.build(**{key: str(bad)})
    with pytest.raises(TargetUnavailable) as err:
        t.snapshots()
    msg = str(err.value)
    assert t.name in msg and "definitely-wrong-secret" not in msg and PASSWORD not in msg
    assert any(w in msg for w in ("password", "credentials", "key", "refused"))


def test_missing_repository_or_bucket_is_a_clear_error(kind: Kind, export: tuple[ExportDir, list[Path]], tmp_path: Path) -> None:
    exp, dirs = export
    choices: dict[str, dict[str, Any]] = {"restic-local": {"repository": str(tmp_path / "nothing-here"), "init": False},
                                 "restic-s3": {"repository": f"s3:{kind.seaweed.endpoint if kind.seaweed else ''}/no-such-bucket-x/mail",
                                               "init": False},
                                 "s3": {"bucket": "no-such-bucket-x"}, "b2": {"bucket": "no-such-bucket"}}
    overrides = choices[kind.name]
    t = kind.build(**overrides)
    with pytest.raises(TargetUnavailable) as err:
        t.ship(exp.root, dirs, host="h")
    assert t.name in str(err.value)
    assert any(w in str(err.value) for w in ("no repository", "bucket does not exist"))


def test_config_mistakes_name_the_key(kind: Kind) -> None:
    with pytest.raises(ConfigError, match=r"targets\[0\]\.colour: unknown key"):
        kind.build(colour="blue")
    required = {"restic-local": "repository", "restic-s3": "repository", "s3": "bucket", "b2": "bucket"}[kind.name]
    with pytest.raises(ConfigError, match=rf"targets\[0\]\.{required}: required"):
        kind.build(**{required: ""})


@pytest.mark.parametrize("native", ["s3", "b2"])
def test_object_lock_keeps_history_a_compromised_host_cannot_delete(native: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    k = Kind(native, tmp_path)
    if native == "s3":
        k.seaweed = request.getfixturevalue("seaweed")
        k._bucket = k.seaweed.bucket("locked", lock=True)  # type: ignore[attr-defined]
        t = k.build(object_lock_days=7)
    else:
        k.start_b2(monkeypatch, lock=True)
        t = k.build(file_lock_days=7)
    exp, dirs = make_export(tmp_path / "export", {"frank@example.org": [message(i, seed="f") for i in range(3)]})
    first = t.ship(exp.root, dirs, host="h")
    snaps = t.snapshots()
    assert snaps[0].extra.get("locked_until")
    write_account(exp, "frank@example.org", [message(i, seed="g") for i in range(3)])
    t.ship(exp.root, dirs, host="h")
    # the policy wants the first snapshot gone, but its lock has weeks to run: it stays, and so does its data
    res = t.forget(KeepPolicy(last=1))
    assert first.snapshot_id in res.kept and first.snapshot_id not in res.removed
    assert len(t.snapshots()) == 2
    assert read_tree(t.fetch(first.snapshot_id, "frank@example.org", tmp_path / "f")) != {}
    # an attacker holding the same credentials cannot delete the data either
    from backup.targets.objectstore import ObjectLocked, ObjectTarget

    assert isinstance(t, ObjectTarget)
    key = k.data_objects()[0]
    with pytest.raises(ObjectLocked):
        t.store.delete(key)
    assert t.check(read_data_percent=100).ok


def test_lock_days_on_a_bucket_without_lock_is_refused(seaweed: Any, tmp_path: Path) -> None:
    k = Kind("s3", tmp_path, seaweed=seaweed)
    t = k.build(object_lock_days=7)
    exp, dirs = make_export(tmp_path / "export", {"gina@example.org": [message(1)]})
    with pytest.raises(TargetError, match="object lock"):
        t.ship(exp.root, dirs, host="h")


@pytest.mark.parametrize("native", ["s3", "b2"])
def test_client_side_encryption(native: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    k = Kind(native, tmp_path)
    if native == "s3":
        k.seaweed = request.getfixturevalue("seaweed")
    else:
        k.start_b2(monkeypatch)
    keyfile = tmp_path / "enc.key"
    keyfile.write_text(secrets.token_bytes(32).hex())
    msgs = [message(i, seed="secret") for i in range(4)]
    exp, dirs = make_export(tmp_path / "export", {"hana@example.org": msgs})
    t = k.build(encryption_key_file=str(keyfile))
    res = t.ship(exp.root, dirs, host="h")
    stored = k.data_objects()
    shas = {hashlib.sha256(m).hexdigest() for m in msgs}
    assert not shas & {key.rsplit("/", 1)[-1] for key in stored}  # object names do not reveal message hashes
    assert read_tree(t.fetch(res.snapshot_id, "hana@example.org", tmp_path / "f")) == read_tree(dirs[0])
    assert t.check(read_data_percent=100).ok
    other = tmp_path / "other.key"
    other.write_text(secrets.token_bytes(32).hex())
    with pytest.raises(TargetUnavailable, match="wrong encryption key"):
        k.build(encryption_key_file=str(other)).snapshots()
    with pytest.raises(TargetError, match="encrypted"):
        k.build().snapshots()


def test_s3_server_side_encryption_covers_every_object(seaweed: Any, tmp_path: Path) -> None:
    """``sse = "AES256"``: every object the native s3 target writes (config, data, multipart data, indexes,
    snapshot manifest) is stored encrypted by the server, as its HEAD answer says."""
    k = Kind("s3", tmp_path, seaweed=seaweed)
    big = message(1, seed="sse") + secrets.token_bytes(6 * 1024 * 1024)
    exp, dirs = make_export(tmp_path / "export", {"sse@example.org": [big, message(2, seed="sse")]})
    t = k.build(sse="AES256", part_size_mb=5)
    res = t.ship(exp.root, dirs, host="h")
    c = seaweed.client()
    pages = c.get_paginator("list_objects_v2").paginate(Bucket=k._bucket, Prefix="mail/host1/")  # type: ignore[attr-defined]
    keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
    assert any("/snapshots/" in key for key in keys) and any(key.endswith(hashlib.sha256(big).hexdigest()) for key in keys)
    plain = [key for key in keys if c.head_object(Bucket=k._bucket, Key=key).get("ServerSideEncryption") != "AES256"]  # type: ignore[attr-defined]
    assert plain == [], "objects stored without server-side encryption"
    assert read_tree(t.fetch(res.snapshot_id, "sse@example.org", tmp_path / "f")) == read_tree(dirs[0])
    with pytest.raises(ConfigError, match=r"targets\[0\]\.sse: expected one of AES256, aws:kms"):
        k.build(sse="rot13")


def test_restic_kill_9_mid_backup_leaves_no_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The restic process itself is SIGKILLed mid-backup (not just our side): nothing is listed; rerun completes."""
    monkeypatch.setenv("RESTIC_PROGRESS_FPS", "200")
    k = Kind("restic-local", tmp_path)
    t = k.build()
    t.init()
    exp, dirs = make_export(tmp_path / "export", {"ivan@example.org": [secrets.token_bytes(300_000) for _ in range(60)]})
    import subprocess

    real_popen = subprocess.Popen
    procs: list[Any] = []

    def spy(*a: Any, **kw: Any) -> Any:
        p = real_popen(*a, **kw)
        procs.append(p)
        return p

    monkeypatch.setattr(subprocess, "Popen", spy)

    def kill(done: int, total: int) -> None:
        if done > 0:
            os.kill(procs[-1].pid, signal.SIGKILL)

    with pytest.raises(TargetError):
        t.ship(exp.root, dirs, host="h", progress=kill)
    monkeypatch.setattr(subprocess, "Popen", real_popen)
    assert t.snapshots() == []
    res = t.ship(exp.root, dirs, host="h")
    assert len(t.snapshots()) == 1
    assert read_tree(t.fetch(res.snapshot_id, "ivan@example.org", tmp_path / "f")) == read_tree(dirs[0])


@pytest.mark.parametrize("native", ["s3", "b2"])
def test_large_files_go_through_multipart_and_round_trip(native: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    k = Kind(native, tmp_path)
    if native == "s3":
        k.seaweed = request.getfixturevalue("seaweed")
    else:
        k.start_b2(monkeypatch)
    big = message(1, seed="big") + secrets.token_bytes(11 * 1024 * 1024)
    exp, dirs = make_export(tmp_path / "export", {"jane@example.org": [big, message(2)]})
    t = k.build(part_size_mb=5)
    res = t.ship(exp.root, dirs, host="h")
    sha = hashlib.sha256(big).hexdigest()
    key = next(key for key in k.data_objects() if key.endswith(sha))
    if native == "s3":
        etag = k.seaweed.client().head_object(Bucket=k._bucket, Key=key)["ETag"]  # type: ignore[attr-defined]
        assert etag.strip('"').endswith("-3")  # three parts of 5 MiB at most
    else:
        info = k.admin.get_bucket_by_name("mail-backups").get_file_info_by_name(key)  # type: ignore[attr-defined]
        assert "large_file_sha1" in (info.file_info or {})  # B2's large-file API, SHA-1 per part
    got = t.fetch(res.snapshot_id, "jane@example.org", tmp_path / "f")
    assert read_tree(got) == read_tree(dirs[0])


@pytest.mark.parametrize("native", ["s3", "b2"])
def test_a_blob_that_does_not_match_its_name_keeps_only_that_account_out(native: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    k = Kind(native, tmp_path)
    if native == "s3":
        k.seaweed = request.getfixturevalue("seaweed")
    else:
        k.start_b2(monkeypatch)
    exp, dirs = make_export(tmp_path / "export", {"kim@example.org": [message(1)], "lee@example.org": [message(2), message(3)]})
    damaged = next(p for p in (dirs[1] / "blobs").rglob("*") if p.is_file())
    damaged.write_bytes(b"not what the name says")
    t = k.build()
    res = t.ship(exp.root, dirs, host="h")
    assert res.accounts == ["kim@example.org"]
    assert list(res.skipped) == ["lee@example.org"] and "does not match" in res.skipped["lee@example.org"]
    assert t.snapshots()[0].accounts == ["kim@example.org"]


@pytest.mark.parametrize("native", ["s3", "b2"])
def test_prune_and_ship_stay_out_of_each_others_way(native: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Prune never collects while a ship runs (its uploads are not referenced yet); a ship waits for a prune."""
    k = Kind(native, tmp_path)
    if native == "s3":
        k.seaweed = request.getfixturevalue("seaweed")
    else:
        k.start_b2(monkeypatch)
    exp, dirs = make_export(tmp_path / "export", {"max@example.org": [message(i, seed="m1") for i in range(3)]})
    t = k.build()
    from backup.targets.objectstore import ObjectTarget

    assert isinstance(t, ObjectTarget)
    t.ship(exp.root, dirs, host="h")
    write_account(exp, "max@example.org", [message(i, seed="m2") for i in range(3)])
    t.ship(exp.root, dirs, host="h")
    before = k.data_objects()
    with t._marker("ship"):  # another host's ship is running right now
        res = t.forget(KeepPolicy(last=1))
        assert len(res.removed) == 1 and not res.bytes_freed
        assert k.data_objects() == before  # nothing collected: the running ship may reuse any of it
    time.sleep(1.1)  # S3 times are whole seconds; a prune spares objects not strictly older than its own start
    res = t.forget(KeepPolicy(last=1))  # the next prune collects
    assert res.bytes_freed and len(k.data_objects()) < len(before)
    t.prune_wait = 1.0
    with t._marker("gc"), pytest.raises(TargetError, match="a prune has been running"):
        t.ship(exp.root, dirs, host="h")
    assert len(t.snapshots()) == 1
    t.ship(exp.root, dirs, host="h")
    assert len(t.snapshots()) == 2
