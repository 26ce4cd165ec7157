"""``mail-backup export`` against real servers: mailsrv in every profile it serves (embedded, Stalwart 0.15 via
the master user and via admin + accountId, Stalwart 0.16 impersonation) and the Cyrus testbed as ``generic``.

Every exported message is compared with a fresh download from the server (sha256), and every metadata file
with what the server answers now. The helpers here are shared by the other export/verify/maildir tests.
"""

from __future__ import annotations

import hashlib
import json
import mailbox
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from backup.actions.export import ExportRunResult, run_export
from backup.actions.maildir import folder_name
from backup.actions.verify import run_verify
from backup.exportdir import EmailRecord, ExportDir, load_manifest
from backup.exportdir.account import AccountReader
from backup.output import Output
from backup.state import StateDir
from mailsrv import __version__
from mailsrv.client import BasicAuth, EmailImport, Invocation, JmapClient
from mailsrv.client.models import Identity, VacationResponse
from mailsrv.config import Config, load_config
from tests.conftest import USER_PASSWORD, MailsrvProc, start_mailsrv

if TYPE_CHECKING:
    from tests.cyrus import CyrusTestbed

pytest_plugins = ("tests.cyrus",)  # the module-scoped ``cyrus`` fixture

HOSTILE_MAILBOXES = ["..", ".", "a/b", "😀 emoji", "manifest.json", "blobs", "meta", "cur", "...", "a.b", "~home", "back\\slash",
                     "ü" * 120]
SIEVE = b'require ["fileinto"];\r\nif header :contains "subject" "report" { fileinto "Archive"; }\r\n'


# -- helpers shared by the export tests ----------------------------------------------------------------------
def message(n: int | str, to: str = "alice@example.org", *, size: int = 0, msgid: str | None = None) -> bytes:
    body = ("line of filler text for a larger message\r\n" * (size // 42 + 1))[:size] if size else f"hello {n}\r\n"
    mid = msgid or f"<export-{n}@example.org>"
    return (f"From: Sender <sender@example.net>\r\nTo: {to}\r\nSubject: message {n}\r\nMessage-ID: {mid}\r\n"
            f"Date: Tue, 02 Jan 2024 03:04:05 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()


def mailsrv_server(srv: MailsrvProc, profile: str = "embedded", *, master: bool = True, url: str | None = None) -> dict[str, Any]:
    server: dict[str, Any] = {"profile": profile, "url": url or srv.url, "admin_user": "admin",
                              "admin_password_file": str(srv.dir / "admin.pw")}
    if master:
        server.update(master_user="master", master_password_file=str(srv.dir / "master.pw"))
    return server


def write_config(base: Path, server: dict[str, Any], *, accounts: dict[str, Any] | None = None, name: str = "backup",
                 export: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """A mail-backup config in ``base``: export dir ``base/<name>-export``, state dir ``base/<name>-state``."""
    base.mkdir(parents=True, exist_ok=True)
    sections: dict[str, Any] = {"server": server}
    if accounts:
        sections["accounts"] = accounts
    sections["export"] = {"dir": str(base / f"{name}-export"), **(export or {})}
    sections["state"] = {"dir": str(base / f"{name}-state")}
    sections.update(extra or {})
    path = base / f"{name}.toml"
    path.write_text(to_toml(sections))
    return path


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """TOML for nested dicts (tables) and lists of dicts (arrays of tables, e.g. ``targets``)."""
    plain = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict) and not _table_list(v)]
    out = ([f"[{prefix}]"] if prefix and plain else []) + plain
    for k, v in data.items():
        key = f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)
        if isinstance(v, dict):
            out.append(to_toml(v, key) if v else f"[{key}]")
        elif _table_list(v):
            for item in v:
                out.append(f"[[{key}]]")
                out += [f"{_toml_key(ik)} = {_toml_value(iv)}" for ik, iv in item.items()]
    return "\n".join(line for line in out if line) + "\n"


def _table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(i, dict) for i in v)


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else json.dumps(k, ensure_ascii=False)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v), ensure_ascii=False)


def mail_backup(config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The ``mail-backup`` program as operators run it (output not a terminal), run in-process for speed;
    :func:`mail_backup_process` runs it as a separate process."""
    from click.testing import CliRunner

    from backup.cli import main

    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MAILSIDECAR_")}
    result = CliRunner().invoke(main, ["--config", str(config), *args], env={**clean, **(env or {})}, catch_exceptions=False)
    return subprocess.CompletedProcess(["mail-backup", *args], result.exit_code, result.stdout, result.stderr)


def mail_backup_process(config: Path, *args: str, env: dict[str, str] | None = None,
                        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIDECAR_")} | (env or {})
    code = "import sys; from backup.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, "--config", str(config), *args], capture_output=True, text=True,
                          env=full, timeout=timeout)


def export(config: Path, accounts: list[str] | None = None, *, dry_run: bool = False) -> ExportRunResult:
    """run_export in-process (the function ``mail-backup run`` calls)."""
    return run_export(load_config(str(config)), accounts, Output(quiet=True), dry_run=dry_run)


def account_reader(config: Path, account: str) -> AccountReader:
    cfg: Config = load_config(str(config))
    return AccountReader(ExportDir(cfg.export.dir).account(account))


def records_of(reader: AccountReader) -> dict[str, EmailRecord]:
    return {r.id: r for r in reader.emails()}


def blob_files(reader: AccountReader) -> set[str]:
    return {p.name for p in (reader.root / "blobs").glob("*/*/*")}


def comparable(reader: AccountReader) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str]]:
    """What two exports of the same server state must share: email records, mailboxes, blob files."""
    return ([r.model_dump() for r in reader.emails()], [m.model_dump() for m in reader.mailboxes()], blob_files(reader))


def add_account(srv: MailsrvProc, name: str) -> str:
    """A new account on a running mailsrv through its management API (faster than ``mailsrv account add``)."""
    r = requests.post(f"{srv.url}/api/principal", auth=srv.admin, timeout=30, json={
        "type": "individual", "name": name, "secrets": [USER_PASSWORD], "emails": [f"{name}@example.org"]})
    assert r.status_code == 200 and "error" not in r.json(), r.text
    srv.accounts[name] = USER_PASSWORD
    return name


def user_client(url: str, user: str, password: str = USER_PASSWORD) -> JmapClient:
    return JmapClient(url, auth=BasicAuth(user, password))


def server_view(client: JmapClient) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Emails (with the sha256 of a fresh download of each) and mailboxes as the server holds them now."""
    emails: dict[str, dict[str, Any]] = {}
    for e in client.iter_emails():
        import io

        buf = io.BytesIO()
        got = client.download(e.blob_id, buf)
        assert hashlib.sha256(buf.getvalue()).hexdigest() == got.sha256
        emails[e.id] = {"blob_id": e.blob_id, "sha256": got.sha256, "size": got.size, "thread_id": e.thread_id,
                        "mailbox_ids": sorted(k for k, v in e.mailbox_ids.items() if v), "keywords": e.keyword_set,
                        "message_id": e.message_id or None, "received_at": e.received_at}
    boxes = {m.id: {"name": m.name, "parent_id": m.parent_id, "role": m.role, "sort_order": m.sort_order,
                    "is_subscribed": m.is_subscribed} for m in client.mailboxes()}
    return emails, boxes


def assert_export_matches_server(reader: AccountReader, client: JmapClient) -> None:
    """Every record and blob equals a fresh read of the server; every mailbox property too."""
    emails, boxes = server_view(client)
    recs = records_of(reader)
    assert set(recs) == set(emails), "the export lists exactly the server's emails"
    for eid, rec in recs.items():
        want = emails[eid]
        assert rec.sha256 == want["sha256"] and rec.size == want["size"] and rec.blob_id == want["blob_id"], eid
        assert hashlib.sha256(reader.blob_path(rec.sha256).read_bytes()).hexdigest() == rec.sha256
        assert rec.mailbox_ids == want["mailbox_ids"] and rec.thread_id == (want["thread_id"] or None)
        assert {k.lower() for k in rec.keywords} == set(want["keywords"])
        assert rec.message_id == want["message_id"]
        assert rec.received_at.rstrip("Z")[:19] == want["received_at"].rstrip("Z")[:19]
    got_boxes = {m.id: m for m in reader.mailboxes()}
    assert set(got_boxes) == set(boxes)
    for mid, want in boxes.items():
        box = got_boxes[mid]
        assert (box.name, box.parent_id, box.role, box.sort_order, box.is_subscribed) == (
            want["name"], want["parent_id"], want["role"], want["sort_order"], want["is_subscribed"]), mid
        parent = got_boxes.get(box.parent_id) if box.parent_id else None
        assert box.path == [*(parent.path if parent else []), box.name]
    m = reader.manifest
    assert m.counts.emails == len(recs) and m.counts.mailboxes == len(boxes)
    assert m.counts.blobs == len({r.sha256 for r in recs.values()} | {s["sha256"] for s in (reader.json("sieve") or [])})
    assert reader.check_files() == []
    assert blob_files(reader) == {r.sha256 for r in recs.values()} | {s["sha256"] for s in (reader.json("sieve") or [])}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def import_message(client: JmapClient, raw: bytes, mailbox_ids: list[str], keywords: dict[str, bool] | None = None,
                   received_at: str | None = None) -> str:
    up = client.upload(raw, content_type="message/rfc822")
    res = client.email_import({"m": EmailImport(up.blob_id, dict.fromkeys(mailbox_ids, True), keywords or {}, received_at)})
    eid = res.email_id("m")
    assert eid, res.not_created
    return eid


def mailbox_id(client: JmapClient, *, role: str | None = None, name: str | None = None) -> str:
    return next(m.id for m in client.mailboxes() if (role and m.role == role) or (name and m.name == name))


def set_email(client: JmapClient, eid: str, patch: dict[str, Any]) -> None:
    resp = client.request([Invocation("Email/set", {"accountId": client.account_id, "update": {eid: patch}}, "u")])
    assert eid in (resp.args("u").get("updated") or {}), resp.args("u")


def destroy_email(client: JmapClient, eid: str) -> None:
    resp = client.request([Invocation("Email/set", {"accountId": client.account_id, "destroy": [eid]}, "d")])
    assert eid in (resp.args("d").get("destroyed") or []), resp.args("d")


def populate(client: JmapClient) -> dict[str, str]:
    """Tricky content on top of seeded mail: hostile mailbox names, an email in two mailboxes, a custom keyword,
    duplicate Message-IDs, two emails with identical bytes, a Sieve script, vacation and an identity."""
    aid = client.account_id
    create = {f"h{i}": {"name": n} for i, n in enumerate(HOSTILE_MAILBOXES)}
    create["child"] = {"name": "child.of/dots", "parentId": "#h0"}
    resp = client.request([Invocation("Mailbox/set", {"accountId": aid, "create": create}, "m")])
    created = resp.args("m").get("created") or {}
    assert len(created) == len(create), resp.args("m").get("notCreated")
    inbox = mailbox_id(client, role="inbox")
    hostile = created["h0"]["id"]
    ids = {
        "two_boxes": import_message(client, message("two boxes"), [inbox, hostile], {"$seen": True, "Project-X": True}),
        "dup_a": import_message(client, message("dup a", msgid="<same@example.org>"), [inbox]),
        "dup_b": import_message(client, message("dup b", msgid="<same@example.org>"), [created["child"]["id"]], {"$flagged": True}),
        "no_msgid": import_message(client, b"From: x@example.net\r\nSubject: no id\r\n\r\nbody\r\n", [inbox], {"$draft": True}),
        "same_bytes_1": import_message(client, message("identical", msgid="<identical@example.org>"), [inbox]),
    }
    # the same bytes again as a second email (servers that deduplicate by content refuse this; fine)
    up = client.upload(message("identical", msgid="<identical@example.org>"), content_type="message/rfc822")
    res = client.email_import({"m": EmailImport(up.blob_id, {hostile: True}, {"$answered": True})})
    if res.email_id("m") and res.email_id("m") != ids["same_bytes_1"]:
        ids["same_bytes_2"] = str(res.email_id("m"))
    ids["hostile_mailbox"] = hostile
    if client.sieve_capability():
        client.create_sieve_script("filters", SIEVE, activate=True)
    client.set_vacation_response(VacationResponse(is_enabled=True, subject="Away", text_body="Back on Monday"))
    try:
        client.create_identity(Identity(name="Alice Work", email="alice@example.org", text_signature="-- Alice"))
    except Exception:  # servers without Identity/set keep their stub identity
        pass
    return ids


# -- a seeded mailsrv shared by the module's read-only tests -----------------------------------------------------
@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MailsrvProc, dict[str, str]]]:
    srv = start_mailsrv(tmp_path_factory.mktemp("seeded"))
    try:
        add_account(srv, "alice")
        add_account(srv, "bob")
        srv.cli("seed", "--account", "alice", "--count", "40")
        with user_client(srv.url, "alice") as client:
            ids = populate(client)
        yield srv, ids
    finally:
        srv.stop()


PROFILES = {
    "embedded-master": ("embedded", True, "alice"),
    "stalwart-0.15-master": ("stalwart-0.15", True, "alice"),
    "stalwart-0.15-admin": ("stalwart-0.15", False, "alice"),
    "stalwart-0.16-impersonation": ("stalwart-0.16", False, "alice@example.org"),
}


@pytest.mark.parametrize("variant", list(PROFILES))
def test_full_export_equals_fresh_server_reads(seeded: tuple[MailsrvProc, dict[str, str]], tmp_path: Path, variant: str) -> None:
    srv, ids = seeded
    profile, master, alice = PROFILES[variant]
    config = write_config(tmp_path, mailsrv_server(srv, profile, master=master))
    before = files_under(tmp_path)
    result = export(config)

    assert result.exit_code == 0, {n: o.detail for n, o in result.outcomes.items()}
    assert sorted(result.accounts) == sorted([alice, alice.replace("alice", "bob")])
    assert all(j.status == "success" for j in result.accounts.values())
    written = files_under(tmp_path) - before
    assert all(p.startswith(("backup-export", "backup-state")) for p in written), "nothing outside export and state dirs"

    reader = account_reader(config, alice)
    with user_client(srv.url, "alice") as client:
        assert_export_matches_server(reader, client)
    m = reader.manifest
    assert m.account.name == alice and m.account.id == "b" and m.account.emails == ["alice@example.org"]
    assert m.run.mode == "full" and m.run.previous is None and m.tool.version
    assert m.server.profile == profile and m.server.url == srv.url and "urn:ietf:params:jmap:mail" in m.server.capabilities
    assert m.server.version == f"mailsrv/{__version__}"
    assert set(m.states) == {"Email", "Mailbox"} and m.unsupported == {} and m.errors == []
    assert set(m.files) == {"emails", "mailboxes", "identities", "sieve", "vacation", "quota"}
    assert load_manifest(reader.root) == m

    recs = records_of(reader)
    assert len(recs[ids["two_boxes"]].mailbox_ids) == 2 and recs[ids["two_boxes"]].keywords == {"$seen": True, "project-x": True}
    assert recs[ids["dup_a"]].message_id == recs[ids["dup_b"]].message_id == ["same@example.org"]
    assert recs[ids["dup_a"]].sha256 != recs[ids["dup_b"]].sha256
    assert recs[ids["no_msgid"]].message_id is None
    if "same_bytes_2" in ids:  # two emails, one blob
        assert recs[ids["same_bytes_1"]].sha256 == recs[ids["same_bytes_2"]].sha256
    names = {mb.name for mb in reader.mailboxes()}
    assert set(HOSTILE_MAILBOXES) <= names and "child.of/dots" in names
    # mailbox names never become paths: the account directory holds the format's own names only
    assert {p.name for p in reader.root.iterdir()} <= {"manifest.json", "blobs", "meta", ".tmp"}
    assert {p.name.split("-")[0] for p in (reader.root / "meta").iterdir()} == set(m.files)

    (script,) = reader.json("sieve")
    assert script["name"] == "filters" and script["is_active"] is True
    assert reader.blob_path(script["sha256"]).read_bytes() == SIEVE
    (vacation,) = reader.json("vacation")
    assert vacation["isEnabled"] is True and vacation["subject"] == "Away" and vacation["textBody"] == "Back on Monday"
    assert any(i["name"] == "Alice Work" and i["textSignature"] == "-- Alice" for i in reader.json("identities"))
    assert isinstance(reader.json("quota"), list)
    assert m.counts.identities == len(reader.json("identities")) and m.counts.sieve_scripts == 1

    state = StateDir(tmp_path / "backup-state").read("export", alice)
    assert state is not None and state.status == "success" and state.last_success == state.finished
    assert state.messages == len(recs) and state.bytes == m.counts.bytes and state.errors == 0


def test_cli_export_json_events_summary_and_state(seeded: tuple[MailsrvProc, dict[str, str]], tmp_path: Path) -> None:
    srv, _ = seeded
    config = write_config(tmp_path, mailsrv_server(srv))
    r = mail_backup(config, "export", "--account", "alice", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    events = [e["event"] for e in lines]
    assert events[0] == "export.account.started" and events[-1] == "export.summary"
    summary = lines[-1]
    (acct,) = summary["accounts"]
    assert acct["account"] == "alice" and acct["status"] == "success" and acct["mode"] == "full"
    assert acct["messages"] == acct["fetched_messages"] > 40
    assert acct["bytes"] - acct["fetched_bytes"] == len(SIEVE)  # the Sieve script's blob is stored, not "fetched" mail
    assert not (tmp_path / "backup-export" / "bob").exists(), "--account limits the run"

    r = mail_backup(config, "export")  # human output: a summary table on stdout, one line per account on stderr
    assert r.returncode == 0, r.stderr
    assert "alice" in r.stdout and "incremental" in r.stdout and "bob" in r.stdout and "full" in r.stdout
    assert "2/2 account(s) exported completely" in r.stdout and "Traceback" not in r.stderr


def test_dry_run_lists_work_and_writes_nothing(seeded: tuple[MailsrvProc, dict[str, str]], tmp_path: Path) -> None:
    srv, _ = seeded
    config = write_config(tmp_path, mailsrv_server(srv))
    r = mail_backup(config, "export", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    plan = {a["account"]: a["plan"] for a in summary["accounts"]}
    with user_client(srv.url, "alice") as client:
        emails = list(client.iter_emails())
    assert plan["alice"]["mode"] == "full" and plan["alice"]["emails"] == len(emails)
    assert plan["alice"]["blobs_to_fetch"] == len({e.blob_id for e in emails})
    assert plan["alice"]["bytes_to_fetch"] == sum({e.blob_id: e.size for e in emails}.values())
    assert plan["bob"]["blobs_to_fetch"] == 0
    assert not (tmp_path / "backup-export").exists() and not (tmp_path / "backup-state").exists()

    export(config, ["alice"])
    again = export(config, ["alice"], dry_run=True)
    assert again.outcomes["alice"].plan == {**plan["alice"], "mode": "incremental", "blobs_to_fetch": 0, "bytes_to_fetch": 0}


def test_unknown_account_exit_3_names_it(seeded: tuple[MailsrvProc, dict[str, str]], tmp_path: Path) -> None:
    srv, _ = seeded
    config = write_config(tmp_path, mailsrv_server(srv))
    r = mail_backup(config, "export", "--account", "alice", "--account", "nobody", "--account", "ghost@example.org")
    assert r.returncode == 3
    assert "'nobody'" in r.stderr and "'ghost@example.org'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "backup-export" / "alice").exists(), "nothing is exported when an account is unknown"


def test_account_by_address_and_include_exclude(seeded: tuple[MailsrvProc, dict[str, str]], tmp_path: Path) -> None:
    srv, _ = seeded
    config = write_config(tmp_path, mailsrv_server(srv), accounts={"exclude": ["bob"]})
    result = export(config)
    assert list(result.accounts) == ["alice"]
    assert [p.name for p in result.account_dirs] == ["alice"] and result.committed == ["alice"]
    assert list(export(config, ["alice@example.org"]).accounts) == ["alice"]


# -- Cyrus as a generic JMAP server --------------------------------------------------------------------------
def cyrus_config(bed: CyrusTestbed, base: Path, users: tuple[str, ...] = ("alice", "bob")) -> Path:
    (base / "cyrus.pw").parent.mkdir(parents=True, exist_ok=True)
    (base / "cyrus.pw").write_text(bed.password + "\n")
    creds = {u: {"user": u, "password_file": str(base / "cyrus.pw")} for u in users}
    return write_config(base, {"profile": "generic", "url": bed.url}, accounts={"credentials": creds})


@pytest.mark.cyrus
def test_cyrus_generic_full_and_incremental(cyrus: CyrusTestbed, tmp_path: Path) -> None:
    cyrus.bulk("bob", 30)
    with JmapClient(cyrus.url, auth=BasicAuth("bob", cyrus.password)) as client:
        inbox = mailbox_id(client, role="inbox")
        resp = client.request([Invocation("Mailbox/set", {"accountId": client.account_id, "create": {
            "p": {"name": "Projekte ✈️"}, "c": {"name": "a.b", "parentId": "#p"}}}, "m")])
        child = resp.args("m")["created"]["c"]["id"]
        both = import_message(client, message("in two", to="bob@example.test"), [inbox, child], {"$seen": True, "MyFlag": True})
        config = cyrus_config(cyrus, tmp_path, ("bob",))
        result = export(config)
        assert result.exit_code == 0, result.outcomes["bob"].detail
        reader = account_reader(config, "bob")
        assert_export_matches_server(reader, client)
        m = reader.manifest
        assert m.server.profile == "generic" and m.account.id == "bob"
        assert "sieve" in m.unsupported and "quota" in m.unsupported, m.unsupported  # Cyrus offers neither here
        assert m.server.version is None or m.server.version.startswith("Cyrus-HTTP/"), m.server.version  # `serverinfo: off` hides it
        assert "files" not in m.files and set(m.files) >= {"emails", "mailboxes", "identities", "vacation"}
        assert records_of(reader)[both].keywords == {"$seen": True, "myflag": True}  # Cyrus lower-cases keywords

        # flag, move, delete and add: the incremental run mirrors the server now and downloads only the new mail
        recs = sorted(records_of(reader))
        set_email(client, recs[0], {"keywords/$flagged": True})
        set_email(client, recs[1], {"mailboxIds": {child: True}})
        destroy_email(client, recs[2])
        new = import_message(client, message("new one", to="bob@example.test", size=5000), [inbox])
        result = export(config)
        outcome = result.outcomes["bob"]
        assert result.exit_code == 0 and outcome.mode == "incremental", outcome.detail
        assert outcome.fetched_messages == 1 and outcome.fetched_bytes == records_of(account_reader(config, "bob"))[new].size
        reader = account_reader(config, "bob")
        assert_export_matches_server(reader, client)
        assert reader.manifest.run.previous == m.run.id

    # verify against a server without Blob/get digests: the sample is downloaded and hashed
    check = run_verify(load_config(str(config)), ["bob"], Output(quiet=True), against_server=True, sample=100)
    (acct,) = check.accounts
    assert check.exit_code == 0 and acct.sample_method == "download" and acct.sampled == len(records_of(reader)), acct
    assert acct.mailboxes_compared >= 6
    # and a Maildir copy of it
    r = mail_backup(config, "maildir", "--account", "bob", str(tmp_path / "Maildir"))
    assert r.returncode == 0, r.stderr
    md = mailbox.Maildir(tmp_path / "Maildir", create=False)
    assert folder_name(["Projekte ✈️", "a.b"])[1:] in md.list_folders()  # ".Projekte &Jwj+Dw-.a\\2eb"
    keys = {k.split(".")[1]: k for k in md.keys()}
    assert set(md.get_message(keys[both]).get_flags()) >= {"S"}
