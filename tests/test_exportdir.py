"""The export format's building blocks: safe names, manifest schema, atomic writes, job state."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from backup.exportdir import (
    EmailRecord,
    ExportDir,
    LayoutError,
    Manifest,
    ManifestError,
    account_dir_name,
    inside,
    load_manifest,
    write_manifest,
)
from backup.exportdir.manifest import json_schema
from backup.exportdir.records import MailboxRecord, mailbox_paths
from backup.state import StateDir, result
from mailsrv.fsio import atomic_open, atomic_write_json

HOSTILE = ["..", ".", "a/b", "../../etc", "x\x00y", "é" * 300, "😀", "manifest.json", "blobs", "meta", ".mailsidecar-export", ""]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_account_names_never_become_paths(name: str, tmp_path: Path) -> None:
    d = ExportDir(tmp_path / "exp")
    p = d.account(name)
    assert p.parent == d.root
    assert "/" not in p.name and "\x00" not in p.name and p.name not in ("..", ".")
    assert p.name.startswith("x-")


def test_plain_names_are_kept_and_distinct() -> None:
    assert account_dir_name("alice@example.org") == "alice@example.org"
    assert len({account_dir_name(n) for n in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "a/../../b", "a//b", "a\x00b", ""])
def test_manifest_paths_cannot_escape(rel: str, tmp_path: Path) -> None:
    with pytest.raises(LayoutError):
        inside(tmp_path, rel)


def test_committed_schema_matches_models() -> None:
    committed = json.loads((Path(__file__).parent.parent / "backup/exportdir/manifest.schema.json").read_text())
    assert committed == json_schema()


def test_export_dir_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "somebody-elses-file").write_text("x")
    with pytest.raises(LayoutError, match="not a mailsidecar export directory"):
        ExportDir(tmp_path).ensure()
    fresh = ExportDir(tmp_path / "new")
    fresh.ensure()
    fresh.ensure()  # idempotent
    assert (fresh.root / ".mailsidecar-export").read_text() == "1\n"


def _manifest() -> Manifest:
    return Manifest.model_validate({
        "account": {"name": "alice", "id": "b"},
        "server": {"profile": "embedded", "url": "http://127.0.0.1:1"},
        "tool": {"version": "0.1.0"},
        "run": {"id": "20261121T024500Z-abcdef", "started": "2026-11-21T02:45:00Z", "finished": "2026-11-21T02:46:00Z", "mode": "full"},
        "counts": {"emails": 0, "mailboxes": 0, "blobs": 0, "bytes": 0},
        "files": {},
    })


def test_manifest_round_trip_and_clear_errors(tmp_path: Path) -> None:
    write_manifest(tmp_path, _manifest())
    assert load_manifest(tmp_path) == _manifest()
    (tmp_path / "manifest.json").write_text('{"format": "mailsidecar-export"}')
    with pytest.raises(ManifestError, match=r"manifest\.json: account"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no complete export"):
        load_manifest(tmp_path / "missing")


def test_atomic_write_keeps_old_content_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write('{"v": 2, "torn')
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind


def test_mailbox_paths_survive_cycles() -> None:
    recs = [MailboxRecord(id="a", name="A", parent_id="b", path=[]), MailboxRecord(id="b", name="B", parent_id="a", path=[]),
            MailboxRecord(id="c", name="C", path=[])]
    paths = mailbox_paths(recs)
    assert paths["c"] == ["C"] and len(paths["a"]) == 2


def test_state_keeps_last_success_across_failures(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    ok = state.write(result("export", "alice", "success", started=100.0, messages=5))
    failed = state.write(result("export", "alice", "failed", started=200.0, detail="server down"))
    assert failed.last_success == ok.finished
    assert state.read("export", "alice") == failed
    assert state.read("export", "../../etc") is None
    assert os.path.basename(state.path("export", "../../etc")).startswith("x-")
    assert [r.subject for r in state.all()] == ["alice"]


def _email(i: int, sha: str) -> EmailRecord:
    return EmailRecord(id=f"e{i}", blob_id=f"b{i}", sha256=sha, size=3, mailbox_ids=["m1"], received_at="2026-01-01T00:00:00Z")


def test_commit_protocol_keeps_previous_export_until_manifest_switches(tmp_path: Path) -> None:
    from backup.exportdir.account import AccountReader, AccountWriter

    root = tmp_path / "alice"
    w1 = AccountWriter(root, "20261120T024500Z-aaaaaa")
    s1 = w1.put_blob(b"one")
    w1.write_jsonl("emails", [_email(1, s1)])
    m1 = _manifest().model_copy(update={"files": w1.files})
    w1.commit(m1, {s1})

    # a second run writes new files but "crashes" before its manifest: the first export stays complete
    w2 = AccountWriter(root, "20261121T024500Z-bbbbbb")
    s2 = w2.put_blob(b"two")
    w2.write_jsonl("emails", [_email(2, s2)])
    r = AccountReader(root)
    assert [e.id for e in r.emails()] == ["e1"] and r.blob_path(s1).read_bytes() == b"one" and r.check_files() == []

    # the rerun commits; files and blobs no longer referenced are removed afterwards
    w3 = AccountWriter(root, "20261121T030000Z-cccccc")
    s3 = w3.put_blob(b"two")
    w3.write_jsonl("emails", [_email(2, s3)])
    w3.commit(_manifest().model_copy(update={"files": w3.files}), {s3})
    r = AccountReader(root)
    assert [e.id for e in r.emails()] == ["e2"]
    assert not r.blob_path(s1).exists()
    assert sorted(p.name for p in (root / "meta").iterdir()) == ["emails-20261121T030000Z-cccccc.jsonl"]
    (root / "meta" / "emails-20261121T030000Z-cccccc.jsonl").write_text("tampered\n")
    assert r.check_files() == ["emails: meta/emails-20261121T030000Z-cccccc.jsonl: content differs from the manifest"]
