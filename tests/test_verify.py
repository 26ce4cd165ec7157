"""``mail-backup verify``: local re-hashing (a flipped byte, a missing blob, an edited metadata file) and the
comparison with the server (Blob/get digests or downloads, per-mailbox counts that tolerate later changes)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backup.actions.verify import run_verify
from backup.exportdir.account import AccountReader
from backup.exportdir.layout import blob_relpath
from backup.exportdir.manifest import write_manifest
from backup.exportdir.records import EmailRecord
from backup.output import Output
from mailsrv.config import load_config
from tests.conftest import MailsrvProc, start_mailsrv
from tests.test_export import (
    account_reader,
    add_account,
    destroy_email,
    export,
    import_message,
    mail_backup,
    mailbox_id,
    mailsrv_server,
    message,
    set_email,
    user_client,
    write_config,
)
from tests.test_export_incremental import RecordingProxy, recording_proxies


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., RecordingProxy]]:
    yield from recording_proxies()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailsrvProc]:
    server = start_mailsrv(tmp_path_factory.mktemp("verify-srv"))
    try:
        add_account(server, "alice")
        add_account(server, "bob")
        server.cli("seed", "--account", "alice", "--count", "30")
        yield server
    finally:
        server.stop()


@pytest.fixture
def exported(srv: MailsrvProc, tmp_path: Path) -> Path:
    config = write_config(tmp_path, mailsrv_server(srv), accounts={"include": ["alice"]})
    assert export(config).exit_code == 0
    return config


def verify(config: Path, *args: str) -> tuple[int, dict[str, dict[str, Any]], str]:
    r = mail_backup(config, "verify", "--json", *args)
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    summary = lines[-1]
    assert summary["event"] == "verify.summary" and "Traceback" not in r.stderr, r.stderr
    return r.returncode, {a["account"]: a for a in summary["accounts"]}, r.stdout


def rewrite_emails(reader: AccountReader, change: Callable[[list[EmailRecord]], list[EmailRecord]]) -> None:
    """Replace the emails file consistently (new content, manifest entry and counts), as a forger would."""
    records = change(list(reader.emails()))
    entry = reader.manifest.files["emails"]
    data = b"".join(r.model_dump_json().encode() + b"\n" for r in records)
    (reader.root / entry.path).write_bytes(data)
    entry.sha256, entry.size, entry.count = hashlib.sha256(data).hexdigest(), len(data), len(records)
    reader.manifest.counts.emails = len(records)
    write_manifest(reader.root, reader.manifest)


# -- local ------------------------------------------------------------------------------------------------------
def test_clean_export_passes_locally_and_against_the_server(exported: Path) -> None:
    code, accounts, _ = verify(exported)
    assert code == 0 and accounts["alice"]["ok"] and accounts["alice"]["emails"] == 30 and accounts["alice"]["blobs"] == 30
    code, accounts, _ = verify(exported, "--against-server", "--sample", "100")
    alice = accounts["alice"]
    assert code == 0, alice
    assert alice["sampled"] == 30 and alice["sample_method"] == "digest" and alice["mailboxes_compared"] >= 10
    r = mail_backup(exported, "verify", "--against-server")  # human summary; the default sample is 1 % (at least one)
    assert r.returncode == 0 and "alice: OK" in r.stdout and "1 sampled (digest)" in r.stdout


def test_flipped_byte_missing_blob_and_edited_metadata_exit_5(exported: Path) -> None:
    reader = account_reader(exported, "alice")
    records = sorted(reader.emails(), key=lambda r: r.id)
    victim = records[3]
    blob = reader.blob_path(victim.sha256)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    r = mail_backup(exported, "verify", "--account", "alice")
    assert r.returncode == 5
    (line,) = [x for x in r.stderr.splitlines() if "does not match" in x]
    assert "alice" in line and f"message {victim.id}" in line and (victim.message_id or [""])[0] in line

    reader.blob_path(records[5].sha256).unlink()
    mailboxes = reader.file("mailboxes")
    assert mailboxes is not None
    mailboxes.write_text(mailboxes.read_text().replace('"Inbox"', '"Outbox"'))
    code, accounts, _ = verify(exported)
    problems = accounts["alice"]["problems"]
    assert code == 5 and len(problems) == 3, problems
    assert any(f"message {records[5].id}" in p and "unreadable" in p for p in problems)
    assert any(p.startswith("mailboxes:") and "differs from the manifest" in p for p in problems)


def test_unreadable_manifest_unknown_account_and_usage(exported: Path, tmp_path: Path) -> None:
    r = mail_backup(exported, "verify", "--account", "nobody")
    assert r.returncode == 3 and "'nobody'" in r.stderr
    r = mail_backup(exported, "verify", "--sample", "5")
    assert r.returncode == 1 and "--against-server" in r.stderr
    (tmp_path / "backup-export" / "alice" / "manifest.json").write_text("{ not json")
    code, accounts, _ = verify(exported)
    assert code == 5 and accounts["alice"]["problems"][0].startswith("manifest:")
    empty = write_config(tmp_path / "none", {"profile": "embedded", "url": "http://127.0.0.1:1"})
    r = mail_backup(empty, "verify")
    assert r.returncode == 3 and "no export" in r.stderr


# -- against the server ---------------------------------------------------------------------------------------------
def test_server_changes_since_the_export_are_not_mismatches(srv: MailsrvProc, tmp_path: Path) -> None:
    mailsrv, alice = srv, add_account(srv, "changing")
    with user_client(mailsrv.url, alice) as a:
        inbox, trash = mailbox_id(a, role="inbox"), mailbox_id(a, role="trash")
        ids = [import_message(a, message(n), [inbox]) for n in range(12)]
        config = write_config(tmp_path, mailsrv_server(mailsrv), accounts={"include": [alice]})
        assert export(config).exit_code == 0
        set_email(a, ids[0], {"mailboxIds": {trash: True}})
        set_email(a, ids[1], {"keywords/$seen": True})
        destroy_email(a, ids[2])
        import_message(a, message("later"), [inbox])
    result = run_verify(load_config(str(config)), None, Output(quiet=True), against_server=True, sample=100)
    (check,) = result.accounts
    assert result.exit_code == 0, check.problems
    assert check.mailboxes_compared >= 5 and check.sampled == 11  # the deleted one cannot be compared
    assert any("changed on the server" in n for n in check.notes) and any("deleted" in n for n in check.notes)


def test_content_and_count_differences_from_the_server_exit_5(exported: Path) -> None:
    reader = account_reader(exported, "alice")
    records = sorted(reader.emails(), key=lambda r: r.id)
    forged = records[4]
    fake = b"Subject: not what the server has\r\n\r\nforged\r\n"
    sha = hashlib.sha256(fake).hexdigest()
    (reader.root / blob_relpath(sha)).parent.mkdir(parents=True, exist_ok=True)
    (reader.root / blob_relpath(sha)).write_bytes(fake)
    dropped = records[7]

    def change(rs: list[EmailRecord]) -> list[EmailRecord]:
        return [r.model_copy(update={"sha256": sha, "size": len(fake)}) if r.id == forged.id else r for r in rs if r.id != dropped.id]

    rewrite_emails(reader, change)
    code, accounts, _ = verify(exported)
    assert code == 0, accounts["alice"]["problems"]  # consistent locally …
    code, accounts, _ = verify(exported, "--against-server", "--sample", "100")
    problems = accounts["alice"]["problems"]
    assert code == 5  # … but not what the server holds
    assert any(f"message {forged.id}" in p and "server's sha256" in p for p in problems), problems
    boxes = {m.id: "/".join(m.path) for m in account_reader(exported, "alice").mailboxes()}
    assert any(f"mailbox {boxes[dropped.mailbox_ids[0]]!r}" in p for p in problems), problems


def test_without_blob_digests_the_sample_is_downloaded(srv: MailsrvProc, proxy_factory: Callable[..., RecordingProxy],
                                                       tmp_path: Path) -> None:
    def no_blob(session: dict[str, object]) -> None:
        for caps in [session["capabilities"]] + [a["accountCapabilities"] for a in session["accounts"].values()]:  # type: ignore[attr-defined]
            caps.pop("urn:ietf:params:jmap:blob", None)  # type: ignore[attr-defined]

    proxy = proxy_factory(srv.url, rewrite_session=no_blob)
    config = write_config(tmp_path, mailsrv_server(srv, url=proxy.url), accounts={"include": ["alice"]})
    assert export(config).exit_code == 0
    proxy.clear()
    result = run_verify(load_config(str(config)), ["alice"], Output(quiet=True), against_server=True, sample=20, seed=7)
    (check,) = result.accounts
    assert result.exit_code == 0 and check.sample_method == "download" and check.sampled == 6
    assert len(proxy.downloads()) == 6 and not [c for c in proxy.method_calls() if c[0] == "Blob/get"]
