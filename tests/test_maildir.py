"""``mail-backup maildir``: a Maildir++ tree from the export that Python's ``mailbox.Maildir`` (and so any Maildir
reader) opens with the right folders, flags, bytes and times; hostile mailbox names stay inside DEST."""

from __future__ import annotations

import base64
import mailbox
import random
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from backup.actions.maildir import MAX_NAME, folder_component, folder_name, message_flags, mutf7
from backup.exportdir import ExportDir
from backup.exportdir.account import AccountWriter
from backup.exportdir.manifest import AccountInfo, Counts, Manifest, RunInfo, ServerInfo, ToolInfo
from backup.exportdir.records import EmailRecord, MailboxRecord, mailbox_paths
from tests.conftest import MailsrvProc, start_mailsrv
from tests.test_export import (
    HOSTILE_MAILBOXES,
    account_reader,
    add_account,
    export,
    mail_backup,
    mailsrv_server,
    populate,
    user_client,
    write_config,
)


# -- names ----------------------------------------------------------------------------------------------------
def decode_mutf7(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] != "&":
            out.append(text[i])
            i += 1
            continue
        end = text.index("-", i)
        chunk = text[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            raw = base64.b64decode(chunk.replace(",", "/") + "=" * (-len(chunk) % 4))
            out.append(raw.decode("utf-16-be", "surrogatepass"))
        i = end + 1
    return "".join(out)


def unescape(component: str) -> str:
    """Dovecot listescape: ``\\NN`` hex → the character."""
    out, i = [], 0
    while i < len(component):
        if component[i] == "\\":
            out.append(chr(int(component[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(component[i])
            i += 1
    return "".join(out)


def test_modified_utf7_matches_rfc3501() -> None:
    assert mutf7("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"  # RFC 3501 §5.1.3
    assert mutf7("Tom & Jerry") == "Tom &- Jerry"
    assert mutf7("Reisen ✈️") == "Reisen &Jwj+Dw-"
    assert mutf7("😀") == "&2D3eAA-" and mutf7("a\x00b") == "a&AAA-b"


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a.b/c", "~home", "back\\slash", "x\x00y", "😀", "", "cur", "&", "\\2e"])
def test_folder_components_escape_what_maildir_cannot_hold(name: str) -> None:
    comp = folder_component(name)
    assert comp and "/" not in comp and "." not in comp and "\x00" not in comp and not comp.startswith("~")
    if name:
        assert decode_mutf7(unescape(comp)) == name, "reversible (Dovecot listescape + modified UTF-7)"


def test_folder_names_are_one_safe_entry_and_injective() -> None:
    rng = random.Random(5)
    alphabet = "ab./\\~&-. \x00é日😀"
    names = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(3000)}
    comps = {folder_component(n): n for n in names}
    assert len(comps) == len(names), "distinct names give distinct folders"
    long = "ü" * 300
    comp = folder_component(long)
    assert len(comp.encode()) <= 100 and decode_mutf7(unescape(comp)).startswith("ü" * 10)
    assert folder_component(long) != folder_component(long + "x")
    deep = folder_name(["x" * 90] * 12)
    assert deep.startswith(".x-") and len(deep.encode()) <= MAX_NAME
    assert folder_name(["Projects", "2026", "Q1"]) == ".Projects.2026.Q1"
    assert folder_name([".."]) == ".\\2e\\2e" and folder_name(["a/b", "c.d"]) == ".a\\2fb.c\\2ed"


def test_flags_from_keywords() -> None:
    kw = {"$Seen": True, "$answered": True, "$flagged": True, "$draft": True, "$deleted": True, "$forwarded": True, "other": True}
    assert message_flags(kw) == "DFPRST"
    assert message_flags({"$seen": False}) == ""


# -- a real export -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MailsrvProc, Path, dict[str, str]]]:
    base = tmp_path_factory.mktemp("maildir")
    srv = start_mailsrv(base / "srv")
    try:
        add_account(srv, "alice")
        srv.cli("seed", "--account", "alice", "--count", "40")
        with user_client(srv.url, "alice") as client:
            ids = populate(client)
        config = write_config(base, mailsrv_server(srv), accounts={"include": ["alice"]},
                              extra={"targets": [{"name": "local", "type": "restic", "repository": str(base / "repo"),
                                                  "password_file": str(base / "restic.pw")}]})
        (base / "restic.pw").write_text("restic-test-password\n")
        assert export(config).exit_code == 0
        yield srv, config, ids
    finally:
        srv.stop()


def expected_files(config: Path) -> dict[str, list[tuple[EmailRecord, str]]]:
    """Folder (as mailbox.Maildir names it, "" = INBOX) → the records it must hold and their flags."""
    reader = account_reader(config, "alice")
    boxes = reader.mailboxes()
    inbox = next(m.id for m in boxes if m.role == "inbox")
    folder_of = {m.id: "" if m.id == inbox else folder_name(m.path)[1:] for m in boxes}
    out: dict[str, list[tuple[EmailRecord, str]]] = {f: [] for f in folder_of.values()}
    for r in reader.emails():
        for mid in r.mailbox_ids:
            out[folder_of[mid]].append((r, message_flags(r.keywords)))
    return out


def test_maildir_opens_with_the_right_folders_flags_bytes_and_times(exported: tuple[MailsrvProc, Path, dict[str, str]],
                                                                    tmp_path: Path) -> None:
    _, config, ids = exported
    dest = tmp_path / "Maildir"
    r = mail_backup(config, "maildir", "--account", "alice", str(dest))
    assert r.returncode == 0, r.stderr
    reader = account_reader(config, "alice")
    blobs = {rec.id: reader.blob_path(rec.sha256).read_bytes() for rec in reader.emails()}
    want = expected_files(config)
    root = mailbox.Maildir(dest, create=False)
    assert sorted(root.list_folders()) == sorted(f for f in want if f)
    for folder, expected in want.items():
        md = root if not folder else root.get_folder(folder)
        keys = {k.split(".")[1]: k for k in md.keys()}  # <time>.<email id>.<host>
        assert set(keys) == {rec.id for rec, _ in expected}, folder
        for rec, flags in expected:
            assert md.get_bytes(keys[rec.id]) == blobs[rec.id]
            msg = md.get_message(keys[rec.id])
            assert set(msg.get_flags()) - set("abcdefghijklmnopqrstuvwxyz") == set(flags), (folder, rec.id)
            assert msg.get_subdir() == "cur"
            (file,) = ((dest / f".{folder}" if folder else dest) / "cur").glob(f"*.{rec.id}.*")
            assert file.stat().st_mtime == datetime.fromisoformat(rec.received_at).timestamp()
    # the email in two mailboxes is in both; hostile names are folders directly under DEST
    holders = [f for f, exp in want.items() if any(rec.id == ids["two_boxes"] for rec, _ in exp)]
    assert len(holders) == 2
    assert all(p.parent == dest for p in dest.iterdir())
    assert (dest / folder_name([".."])).is_dir() and (dest / folder_name(["manifest.json"]) / "maildirfolder").exists()
    assert {decode_mutf7(unescape(f.split(".")[0])) for f in root.list_folders()} >= set(HOSTILE_MAILBOXES) - {"ü" * 120}
    # the custom keyword is a Dovecot keyword letter of the folders holding it
    inbox_keywords = (dest / "dovecot-keywords").read_text().splitlines()
    letter = {line.split(" ", 1)[1]: chr(ord("a") + int(line.split(" ", 1)[0])) for line in inbox_keywords}
    inbox_key = next(k for k in root.keys() if f".{ids['two_boxes']}." in k)
    assert letter["project-x"] in root.get_message(inbox_key).get_flags()


def test_dest_must_be_empty_and_account_known(exported: tuple[MailsrvProc, Path, dict[str, str]], tmp_path: Path) -> None:
    _, config, _ = exported
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    r = mail_backup(config, "maildir", "--account", "alice", str(tmp_path / "full"))
    assert r.returncode == 1 and "not empty" in r.stderr
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    assert mail_backup(config, "maildir", "--account", "alice", str(tmp_path / "file")).returncode == 1
    r = mail_backup(config, "maildir", "--account", "nobody", str(tmp_path / "new"))
    assert r.returncode == 3 and "'nobody'" in r.stderr and not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    r = mail_backup(config, "maildir", "--account", "alice@example.org", "--json", str(tmp_path / "empty"))
    assert r.returncode == 0 and '"messages": ' in r.stdout


def test_maildir_from_a_restic_snapshot(exported: tuple[MailsrvProc, Path, dict[str, str]], tmp_path: Path) -> None:
    _, config, _ = exported
    from backup.targets.registry import open_target
    from mailsrv.config import load_config

    cfg = load_config(str(config))
    target = open_target(cfg, "local")
    target.init()
    export_dir = ExportDir(cfg.export.dir)
    target.ship(export_dir.root, [export_dir.account("alice")], host="test")
    r = mail_backup(config, "maildir", "--account", "alice", "--snapshot", "latest", str(tmp_path / "from-snapshot"))
    assert r.returncode == 0, r.stderr
    local = tmp_path / "from-export"
    assert mail_backup(config, "maildir", "--account", "alice", str(local)).returncode == 0
    tree = lambda d: sorted((str(p.relative_to(d)), p.read_bytes() if p.is_file() else b"") for p in d.rglob("*"))  # noqa: E731
    assert tree(tmp_path / "from-snapshot") == tree(local)
    r = mail_backup(config, "maildir", "--account", "alice", "--snapshot", "1999-01-01", str(tmp_path / "old"))
    assert r.returncode == 3


def test_snapshot_without_a_target_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"profile": "embedded", "url": "http://127.0.0.1:1"})
    r = mail_backup(config, "maildir", "--account", "alice", "--snapshot", "latest", str(tmp_path / "d"))
    assert r.returncode == 1 and "needs a target" in r.stderr


# -- names no server accepts, written straight into an export ----------------------------------------------------------
def test_hostile_names_never_leave_dest(tmp_path: Path) -> None:
    root = tmp_path / "export"
    ExportDir(root).ensure()
    writer = AccountWriter(ExportDir(root).account("zoe"))
    names = ["x\x00y", "", "é" * 300, "..", "../../../etc", "/abs", "cur", "new", "tmp", "maildirfolder", "~", "INBOX"]
    boxes = [MailboxRecord(id="inbox", name="Inbox", role="inbox", path=[])]
    boxes += [MailboxRecord(id=f"m{i}", name=n, path=[]) for i, n in enumerate(names)]
    parent = None
    for depth in range(12):  # a path too long for one directory name
        boxes.append(MailboxRecord(id=f"d{depth}", name="y" * 60, parent_id=parent, path=[]))
        parent = f"d{depth}"
    paths = mailbox_paths(boxes)
    for b in boxes:
        b.path = paths[b.id]
    records = []
    for i, b in enumerate(boxes):
        raw = f"Subject: in {b.id}\r\n\r\nhello\r\n".encode()
        sha = writer.put_blob(raw)
        records.append(EmailRecord(id=f"e{i}", blob_id=sha, sha256=sha, size=len(raw), mailbox_ids=[b.id],
                                   keywords={"$seen": True}, received_at="2024-05-06T07:08:09Z"))
    writer.write_jsonl("emails", records)
    writer.write_json("mailboxes", [b.model_dump() for b in boxes])
    writer.commit(Manifest(account=AccountInfo(name="zoe", id="z"), server=ServerInfo(profile="generic", url="https://x"),
                           tool=ToolInfo(version="test"), run=RunInfo(id=writer.run_id, started="2024-05-06T07:08:09Z",
                                                                       finished="2024-05-06T07:08:09Z", mode="full"),
                           counts=Counts(emails=len(records), mailboxes=len(boxes), blobs=1, bytes=0), files=writer.files),
                  {r.sha256 for r in records})
    config = write_config(tmp_path, {"profile": "generic", "url": "https://x"}, export={"dir": str(root)})
    outside = tmp_path / "dest-parent"
    outside.mkdir()
    dest = outside / "md"
    r = mail_backup(config, "maildir", "--account", "zoe", str(dest))
    assert r.returncode == 0, r.stderr
    assert [p.name for p in outside.iterdir()] == ["md"], "nothing written beside DEST"
    assert all(p.resolve().is_relative_to(dest.resolve()) for p in dest.rglob("*"))
    assert all(p.parent == dest for p in dest.iterdir())
    md = mailbox.Maildir(dest, create=False)
    folders = md.list_folders()
    assert len(folders) == len(names) + 12 and all(len(("." + f).encode()) <= MAX_NAME for f in folders)
    assert sum(len(md.get_folder(f)) for f in folders) + len(md) == len(records)
    assert len(md) == 1 and all(len(md.get_folder(f)) == 1 for f in folders)


def test_missing_blob_is_named_and_exit_4(exported: tuple[MailsrvProc, Path, dict[str, str]], tmp_path: Path) -> None:
    _, config, _ = exported
    src = account_reader(config, "alice").root.parent
    copy = tmp_path / "export"
    shutil.copytree(src, copy)
    damaged = write_config(tmp_path, {"profile": "embedded", "url": "http://127.0.0.1:1"}, export={"dir": str(copy)})
    reader = account_reader(damaged, "alice")
    victim = sorted(reader.emails(), key=lambda r: r.id)[0]
    reader.blob_path(victim.sha256).unlink()
    r = mail_backup(damaged, "maildir", "--account", "alice", str(tmp_path / "md"))
    assert r.returncode == 4 and f"message {victim.id}" in r.stderr and "missing" in r.stderr
    assert len(mailbox.Maildir(tmp_path / "md", create=False)) >= 1, "every other message is written"
