"""``mail-backup restore`` against a real mailsrv: export → wipe or another account → restore → fidelity.

Fidelity means: the same mailbox paths and roles, the same set of raw-message sha256, the same keywords
(compared case-insensitively), the same receivedAt and the same mailbox memberships; identities, Sieve and
vacation where the server supports them. Restoring twice changes nothing; parts of the mail (a mailbox, a
date range, one message) restore alone; a damaged blob in the backup exits 5 naming the message.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backup.actions.restore_mailboxes import name_candidates
from backup.actions.restore_plan import Selection, build_plan, format_mailbox_path, parse_mailbox_path, parse_time
from backup.errors import UnknownObject, UsageError
from backup.exportdir import EmailRecord, MailboxRecord
from mailsrv.client import BasicAuth, EmailImport, JmapClient
from mailsrv.client.calls import Invocation
from mailsrv.client.models import Identity, VacationResponse
from tests.conftest import USER_PASSWORD, MailsrvProc, free_port, start_mailsrv, write_toml

CLI = [sys.executable, "-c", "from backup.cli import main; main()"]
SIEVE_SCRIPT = b'require ["fileinto"];\r\nif header :contains "subject" "invoice" { fileinto "Projects"; }\r\n'


# -- helpers shared with the Cyrus and resume tests ------------------------------------------------------------
def backup_config(base: Path, server: dict[str, Any], *, accounts: dict[str, Any] | None = None,
                  targets: list[dict[str, Any]] | None = None) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    sections: dict[str, dict[str, Any]] = {"server": server, "export": {"dir": str(base / "export")}, "state": {"dir": str(base / "state")}}
    for name, cred in (accounts or {}).items():
        sections[f"accounts.credentials.{name}"] = cred
    path = base / "config.toml"
    write_toml(path, sections)
    if targets:
        with path.open("a") as f:
            for t in targets:
                f.write("\n[[targets]]\n" + "".join(f'{k} = "{v}"\n' for k, v in t.items()))
    return path


def mailsrv_server(srv: MailsrvProc) -> dict[str, Any]:
    return {"profile": "embedded", "url": srv.url, "admin_user": "admin", "admin_password_file": str(srv.dir / "admin.pw"),
            "master_user": "master", "master_password_file": str(srv.dir / "master.pw")}


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cli(config: Path, *args: str, timeout: float = 300) -> Ran:
    """``mail-backup`` as a separate process (what operators and systemd run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIDECAR_")}
    r = subprocess.run([*CLI, "--config", str(config), *args], capture_output=True, text=True, timeout=timeout, env=env)
    return Ran(r.returncode, r.stdout, r.stderr)


def run(config: Path, *args: str) -> Ran:
    """``mail-backup`` in this process (the same code path, without the interpreter start-up)."""
    from click.testing import CliRunner

    from backup.cli import main

    res = CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)
    return Ran(res.exit_code, res.stdout, res.stderr)


def summary(r: Ran) -> dict[str, Any]:
    """The last JSON line of a ``--json`` run (the summary)."""
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON on stdout (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    return dict(json.loads(lines[-1]))


def events(r: Ran, name: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")) if e.get("event") == name]


def one_line_error(r: Ran, code: int, *needles: str) -> str:
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, (n, last)
    return last


def raw_message(n: int, *, message_id: bool = True, size: int = 0, eight_bit: bool = True, to: str = "alice@example.org") -> bytes:
    subject = f"message {n} ünïcode" if eight_bit else f"message {n}"
    head = f"From: Sender {n} <s{n}@example.net>\r\nTo: {to}\r\nSubject: {subject}\r\n"
    if message_id:
        head += f"Message-ID: <msg-{n}@example.net>\r\n"
    head += "Date: Mon, 6 Jan 2025 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    body = f"Body of message {n}.\r\n" + ("x" * 70 + "\r\n") * (size // 72)
    return (head + body).encode()


def create_mailboxes(client: JmapClient, spec: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``{"key": {"name": …, "parentId": "#other" | None, …}}`` in one Mailbox/set; returns key → id."""
    resp = client.request([Invocation("Mailbox/set", {"accountId": client.account_id, "create": spec}, "m")])
    args = resp.args("m")
    assert not args.get("notCreated"), args.get("notCreated")
    return {k: v["id"] for k, v in args["created"].items()}


@dataclass
class Populated:
    boxes: dict[str, str]  # key → mailbox id
    raws: dict[int, bytes]


def populate(client: JmapClient, *, slash_name: bool = True, eight_bit: bool = True, to: str = "alice@example.org") -> Populated:
    """A small account with everything a restore must carry: nesting, an empty mailbox, a name with '/',
    sort orders and subscriptions, keywords in mixed case, a message in two mailboxes, one without Message-ID."""
    inbox = next(m.id for m in client.mailboxes() if m.role == "inbox")
    spec: dict[str, dict[str, Any]] = {
        "proj": {"name": "Projects", "parentId": None, "sortOrder": 7, "isSubscribed": True},
        "y26": {"name": "2026", "parentId": "#proj", "sortOrder": 2, "isSubscribed": False},
        "empty": {"name": "Empty", "parentId": "#proj", "isSubscribed": True},
        "odd": {"name": "a/b" if slash_name else "a.b", "parentId": None, "isSubscribed": True},
    }
    boxes = {"inbox": inbox, **create_mailboxes(client, spec)}
    raws: dict[int, bytes] = {}
    imports: dict[str, EmailImport] = {}
    for n in range(12):
        raws[n] = raw_message(n, message_id=n != 3, size=200 * n, eight_bit=eight_bit, to=to)
        where = {boxes["inbox"]: True} if n < 5 else {boxes["y26"]: True} if n < 8 else {boxes["odd"]: True}
        if n == 4:
            where[boxes["y26"]] = True  # one message, two mailboxes
        keywords = {"$seen": True} if n % 2 else {"$Flagged": True, "MyFlag": True}
        if n == 6:
            keywords = {}
        up = client.upload(raws[n])
        imports[f"e{n}"] = EmailImport(up.blob_id, where, keywords, f"2025-{1 + n:02d}-{10 + n:02d}T08:{n:02d}:00Z")
    result = client.email_import(imports)
    assert not result.not_created, result.not_created
    return Populated(boxes, raws)


def populate_objects(client: JmapClient, email: str) -> None:
    client.create_identity(Identity(name="Alice Work", email=email, text_signature="-- \nAlice"))
    client.create_sieve_script("filters", SIEVE_SCRIPT, activate=True)
    client.set_vacation_response(VacationResponse(is_enabled=True, subject="Away", text_body="Back on Monday."))


class _Sink:
    def write(self, data: bytes) -> int:
        return len(data)

    def seekable(self) -> bool:
        return False


def mailbox_paths(client: JmapClient) -> dict[str, tuple[str, ...]]:
    boxes = client.mailboxes()
    by_id = {m.id: m for m in boxes}
    out: dict[str, tuple[str, ...]] = {}
    for m in boxes:
        path: list[str] = []
        cur: Any = m
        while cur is not None:
            path.insert(0, cur.name)
            cur = by_id.get(cur.parent_id) if cur.parent_id else None
        out[m.id] = tuple(path)
    return out


@dataclass
class View:
    """What fidelity compares: mailboxes (path → role, subscribed) and messages by content."""

    mailboxes: dict[tuple[str, ...], tuple[str | None, bool]]
    emails: dict[str, tuple[frozenset[tuple[str, ...]], frozenset[str], str]]  # sha → (paths, keywords, receivedAt)
    count: int  # emails on the server (duplicates would make it larger than len(emails))


def view(client: JmapClient, *, under: tuple[str, ...] = ()) -> View:
    """The account (or the tree beneath ``under``, with that prefix removed) as :class:`View`."""
    paths = mailbox_paths(client)
    roles = {m.id: (m.role, m.is_subscribed) for m in client.mailboxes()}
    keep = {mid: p[len(under):] for mid, p in paths.items() if p[: len(under)] == under and len(p) > len(under)}
    emails: dict[str, tuple[frozenset[tuple[str, ...]], frozenset[str], str]] = {}
    listed = [e for e in client.iter_emails() if any(m in keep for m in e.mailbox_ids)]
    if client.supports_blob_digest():  # RFC 9404 digests where offered, else download and hash
        digests = client.blob_digests(sorted({e.blob_id for e in listed}))
        sha_of = {e.id: digests[e.blob_id].sha256_hex or "" for e in listed}
    else:
        sha_of = {e.id: client.download(e.blob_id, _Sink()).sha256 for e in listed}  # type: ignore[arg-type]
    for e in listed:
        boxes = frozenset(keep[m] for m in e.mailbox_ids if m in keep)
        emails[sha_of[e.id]] = (boxes, e.keyword_set, e.received_at.replace(".000", ""))
    count = len(listed)
    return View({keep[m]: roles[m] for m in keep}, emails, count)


def client_for(srv: MailsrvProc, user: str) -> JmapClient:
    return JmapClient(srv.url, auth=BasicAuth(user, srv.accounts.get(user, USER_PASSWORD)))


def write_export(root: Path, account: str, boxes: list[MailboxRecord], messages: list[tuple[bytes, list[str], str]]) -> None:
    """An export written directly with the format's writer: ``messages`` are (raw, mailbox ids, receivedAt)."""
    from backup.exportdir import ExportDir
    from backup.exportdir.account import AccountWriter, new_run_id
    from backup.exportdir.manifest import AccountInfo, Counts, Manifest, RunInfo, ServerInfo, ToolInfo

    ExportDir(root).ensure()
    writer = AccountWriter(ExportDir(root).account(account), new_run_id())
    records = []
    for n, (raw, where, received) in enumerate(messages):
        sha = writer.put_blob(raw)
        records.append(EmailRecord(id=f"e{n}", blob_id=sha, sha256=sha, size=len(raw), mailbox_ids=where, keywords={"$seen": True},
                                   received_at=received, message_id=[f"synthetic-{n}@example.net"]))
    writer.write_jsonl("emails", records)
    writer.write_json("mailboxes", [b.model_dump() for b in boxes])
    run = RunInfo(id=writer.run_id, started="2026-11-20T02:45:00Z", finished="2026-11-20T02:46:00Z", mode="full")
    counts = Counts(emails=len(records), mailboxes=len(boxes), blobs=len(records), bytes=sum(r.size for r in records))
    writer.commit(Manifest(account=AccountInfo(name=account, id="x"), server=ServerInfo(profile="embedded", url="http://x.invalid"),
                           tool=ToolInfo(version="test"), run=run, counts=counts, files=writer.files), {r.sha256 for r in records})


def blob_file(export: Path, account: str, sha: str) -> Path:
    return export / account / "blobs" / sha[:2] / sha[2:4] / sha


# -- unit: selection -------------------------------------------------------------------------------------------
def test_mailbox_path_escapes_and_dates() -> None:
    assert parse_mailbox_path("Projects/2026") == ["Projects", "2026"]
    assert parse_mailbox_path(r"a\/b/c\\d") == ["a/b", "c\\d"]
    assert format_mailbox_path(["a/b", "c\\d"]) == r"a\/b/c\\d"
    for bad in ("a//b", "/a", r"a\b", "a/"):
        with pytest.raises(UsageError):
            parse_mailbox_path(bad)
    assert parse_time("2026-11-20", end_of_day=True, option="--until").isoformat() == "2026-11-20T23:59:59.999999+00:00"
    assert parse_time("2026-11-20T10:00:00+02:00", end_of_day=False, option="--since").isoformat() == "2026-11-20T08:00:00+00:00"
    for bad in ("yesterday", "2026-11-20T10:00:00", "2026-13-01"):
        with pytest.raises(UsageError):
            parse_time(bad, end_of_day=False, option="--since")
    assert name_candidates("a/b")[:2] == ["a/b", "a\u2215b"] and all("/" not in n for n in name_candidates("a/b")[1:])


def test_plan_selection_by_mailbox_date_and_message_id() -> None:
    boxes = [MailboxRecord(id="i", name="INBOX", role="inbox", path=["INBOX"]),
             MailboxRecord(id="p", name="Projects", path=["Projects"]),
             MailboxRecord(id="c", name="2026", parent_id="p", path=["Projects", "2026"]),
             MailboxRecord(id="o", name="Other", path=["Other"])]

    def rec(n: int, boxes: list[str], when: str, mid: str | None = None) -> EmailRecord:
        return EmailRecord(id=f"e{n}", blob_id=f"b{n}", sha256=hashlib.sha256(str(n).encode()).hexdigest(), size=n, mailbox_ids=boxes,
                           keywords={"$seen": True} if n % 2 else {"$Flagged": True}, received_at=when,
                           message_id=[mid] if mid else None)

    emails = [rec(1, ["i"], "2026-01-01T00:00:00Z", "a@x"), rec(2, ["c", "i"], "2026-02-01T00:00:00Z", "b@x"),
              rec(3, ["o"], "2026-03-01T00:00:00Z"), rec(4, ["p"], "2026-03-02T00:00:00Z", "d@x")]
    whole = build_plan("alice", boxes, emails, Selection())
    assert len(whole.items) == 4 and {m.id for m in whole.mailboxes} == {"i", "p", "c", "o"}
    proj = build_plan("alice", boxes, emails, Selection(mailboxes=[["Projects"]]))
    assert {i.sha256 for i in proj.items} == {emails[1].sha256, emails[3].sha256}
    assert next(i for i in proj.items if i.sha256 == emails[1].sha256).mailbox_ids == ["c"]  # not its inbox copy
    assert {m.id for m in proj.mailboxes} == {"p", "c"}
    assert len(build_plan("alice", boxes, emails, Selection(mailboxes=[["inbox"]])).items) == 2  # INBOX in any case
    dates = build_plan("alice", boxes, emails, Selection(since=parse_time("2026-02-01", end_of_day=False, option=""),
                                                         until=parse_time("2026-03-01", end_of_day=True, option="")))
    assert {i.email_ids[0] for i in dates.items} == {"e2", "e3"} and {m.id for m in dates.mailboxes} == {"i", "p", "c", "o"}
    one = build_plan("alice", boxes, emails, Selection(message_ids=["<d@x>"]))
    assert [i.email_ids for i in one.items] == [["e4"]] and [m.id for m in one.mailboxes] == ["p"]
    with pytest.raises(UnknownObject, match="Nope"):
        build_plan("alice", boxes, emails, Selection(mailboxes=[["Nope"]]))
    with pytest.raises(UnknownObject, match="<zz@x>"):
        build_plan("alice", boxes, emails, Selection(message_ids=["zz@x"]))
    # two copies of the same bytes become one message carrying both copies' mailboxes and keywords
    twin = EmailRecord(**{**emails[0].model_dump(), "id": "e9", "mailbox_ids": ["o"], "keywords": {"$SEEN": True, "$Answered": True}})
    merged = build_plan("alice", boxes, [emails[0], twin], Selection())
    assert len(merged.items) == 1 and merged.items[0].mailbox_ids == ["i", "o"]
    assert merged.items[0].keyword_set() == {"$seen", "$answered"}


# -- mailsrv round trips -------------------------------------------------------------------------------------
@dataclass
class World:
    """One mailsrv for the module; ``alice`` populated (mail, identity, Sieve, vacation) and exported."""

    srv: MailsrvProc
    config: Path
    pop: Populated
    n: int = 0

    def fresh(self, prefix: str = "u") -> str:
        """A new, empty account."""
        self.n += 1
        return self.srv.add_account(f"{prefix}{self.n}")

    def source(self, prefix: str) -> tuple[str, Populated]:
        """A new account populated like alice and exported."""
        name = self.fresh(prefix)
        with client_for(self.srv, name) as client:
            pop = populate(client)
            populate_objects(client, f"{name}@example.org")
        r = run(self.config, "export", "--account", name)
        assert r.returncode == 0, r.stderr
        return name, pop


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("restore")
    srv = start_mailsrv(base / "srv")
    try:
        for name in ("alice", "bob"):
            srv.add_account(name)
        with client_for(srv, "alice") as alice:
            pop = populate(alice)
            populate_objects(alice, "alice@example.org")
        config = backup_config(base / "backup", mailsrv_server(srv))
        r = run(config, "export", "--account", "alice")
        assert r.returncode == 0, r.stderr
        yield World(srv, config, pop)
    finally:
        srv.stop()


def test_roundtrip_after_wipe_then_again_changes_nothing(world: World) -> None:
    srv, config = world.srv, world.config
    name, _ = world.source("wipe")
    with client_for(srv, name) as src:
        before = view(src)
        idents = {(i.name, i.email, i.text_signature) for i in src.identities()}
    srv.cli("account", "delete", "--yes", name)
    srv.add_account(name)
    with client_for(srv, name) as src:
        assert view(src).count == 0

    r = cli(config, "restore", "--account", name, "--json")  # once as a real process
    assert r.returncode == 0, r.stderr
    s = summary(r)
    assert s["emails"]["imported"] == 12 and s["verification"]["ok"] and s["verification"]["checked"] == 12
    assert {o: s["objects"][o]["status"] for o in s["objects"]} == {"identities": "restored", "sieve": "restored", "vacation": "restored"}
    with client_for(srv, name) as dst:
        after = view(dst)
        assert after == before  # paths, roles, subscriptions, contents, keywords, receivedAt, memberships
        assert idents <= {(i.name, i.email, i.text_signature) for i in dst.identities()}
        scripts = dst.sieve_scripts()
        assert [(s.name, s.is_active) for s in scripts] == [("filters", True)]
        assert dst.fetch_blob(scripts[0].blob_id) == SIEVE_SCRIPT
        vac = dst.vacation_response()
        assert (vac.is_enabled, vac.subject, vac.text_body) == (True, "Away", "Back on Monday.")
        paths = mailbox_paths(dst)
        sort_orders = {paths[m.id]: m.sort_order for m in dst.mailboxes()}
        assert sort_orders[("Projects",)] == 7 and sort_orders[("Projects", "2026")] == 2

    again = run(config, "restore", "--account", name, "--json")
    assert again.returncode == 0, again.stderr
    s2 = summary(again)
    assert (s2["emails"]["imported"], s2["emails"]["merged"], s2["emails"]["present"]) == (0, 0, 12)
    assert not s2["mailboxes"]["created"] and s2["verification"]["ok"]
    assert {s2["objects"][o]["status"] for o in s2["objects"]} == {"present"}
    with client_for(srv, name) as dst:
        assert view(dst) == before


def test_into_other_account_beneath_a_new_parent(world: World) -> None:
    srv, config = world.srv, world.config
    dest = world.fresh("into")
    with client_for(srv, "alice") as alice:
        source = view(alice)
    with client_for(srv, dest) as client:
        roles_before = {m.name: m.role for m in client.mailboxes()}

    args = ("restore", "--account", "alice", "--into", dest, "--into-mailbox", "Restored 2026-11-20", "--objects", "mail", "--json")
    r = run(config, *args)
    assert r.returncode == 0, r.stderr
    s = summary(r)
    assert s["into"] == dest and s["emails"]["imported"] == 12 and s["verification"]["ok"]
    with client_for(srv, dest) as client:
        restored = view(client, under=("Restored 2026-11-20",))
        assert restored.emails == source.emails and restored.count == 12
        # the whole tree is recreated beneath the parent, without roles; the account's own mailboxes keep theirs
        assert {p: sub for p, (_, sub) in restored.mailboxes.items()} == {p: sub for p, (_, sub) in source.mailboxes.items()}
        assert all(role is None for role, _ in restored.mailboxes.values())
        assert {m.name: m.role for m in client.mailboxes() if m.parent_id is None and m.name in roles_before} == roles_before
    again = summary(run(config, *args))
    assert (again["emails"]["imported"], again["emails"]["merged"], again["mailboxes"]["created"]) == (0, 0, [])


def test_one_mailbox_a_date_range_and_one_message(world: World) -> None:
    srv, config, pop = world.srv, world.config, world.pop
    dest = world.fresh("part")
    r = run(config, "restore", "--account", "alice", "--into", dest, "--mailbox", "Projects", "--json")
    assert r.returncode == 0, r.stderr
    s = summary(r)
    assert s["emails"]["imported"] == 4 and s["objects"] == {}  # narrowed: mail only
    with client_for(srv, dest) as client:
        v = view(client)
        assert set(v.mailboxes) >= {("Projects",), ("Projects", "2026"), ("Projects", "Empty")} and ("a/b",) not in v.mailboxes
        assert all(paths == frozenset({("Projects", "2026")}) for paths, _, _ in v.emails.values())  # message 4 not put in Inbox
        assert "Alice Work" not in {i.name for i in client.identities()}

    r = run(config, "restore", "--account", "alice", "--into", dest, "--since", "2025-09-01", "--until", "2025-10-19", "--json")
    assert r.returncode == 0 and summary(r)["emails"]["imported"] == 2  # messages 8 and 9; 10 and 11 are later
    r = run(config, "restore", "--account", "alice", "--into", dest, "--message-id", "<msg-1@example.net>", "--json")
    s = summary(r)
    assert r.returncode == 0 and s["emails"]["imported"] == 1 and s["verification"]["checked"] == 1
    sha = hashlib.sha256(pop.raws[1]).hexdigest()
    with client_for(srv, dest) as client:
        v = view(client)
        assert v.count == 7 and v.emails[sha] == (frozenset({("Inbox",)}), frozenset({"$seen"}), "2025-02-11T08:01:00Z")

    one_line_error(run(config, "restore", "--account", "alice", "--into", dest, "--mailbox", "Nowhere"), 3, "Nowhere", "alice")
    one_line_error(run(config, "restore", "--account", "alice", "--message-id", "nope@x"), 3, "<nope@x>")
    one_line_error(run(config, "restore", "--account", "alice", "--since", "last week"), 1, "--since")


def test_present_messages_are_merged_not_duplicated(world: World) -> None:
    """Restoring into the live account: a message that lost a mailbox and a keyword gets them back."""
    srv, config = world.srv, world.config
    name, pop = world.source("live")
    with client_for(srv, name) as client:
        before = view(client)
        target = next(e for e in client.iter_emails() if len(e.mailbox_ids) == 2)
        client.request([Invocation("Email/set", {"accountId": client.account_id, "update": {
            target.id: {f"mailboxIds/{pop.boxes['y26']}": None, "keywords/myflag": None}}}, "u")])
        assert view(client) != before
    r = run(config, "restore", "--account", name, "--objects", "mail", "--json")
    s = summary(r)
    assert r.returncode == 0, r.stderr
    assert (s["emails"]["imported"], s["emails"]["merged"], s["emails"]["present"]) == (0, 1, 11)
    with client_for(srv, name) as client:
        assert view(client) == before
        assert client.get_emails([target.id])[0].mailbox_ids == {pop.boxes["inbox"]: True, pop.boxes["y26"]: True}


def test_dry_run_changes_nothing_and_prints_the_plan(world: World) -> None:
    srv, config = world.srv, world.config
    dest = world.fresh("dry")
    with client_for(srv, dest) as client:
        state = client.email_state(), client.mailbox_state()
    r = run(config, "restore", "--account", "alice", "--into", dest, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "Projects/2026" in r.stdout and "to create" in r.stdout and "12 to import" in r.stdout
    s = summary(run(config, "restore", "--account", "alice", "--into", dest, "--dry-run", "--json"))
    rows = {row["path"]: row for row in s["mailboxes"]["plan"]}
    assert rows["Projects/2026"]["import"] == 4 and rows["Projects/2026"]["action"] == "create" and rows["Inbox"]["action"] == "role"
    assert s["dry_run"] and s["emails"]["to_import"] == 12 and s["verification"] is None
    with client_for(srv, dest) as client:
        assert (client.email_state(), client.mailbox_state()) == state
    # beneath a parent mailbox that does not exist yet: everything is still planned, nothing reported as failed
    r = run(config, "restore", "--account", "alice", "--into", dest, "--into-mailbox", "Restored/2026-11-20", "--dry-run", "--json")
    s = summary(r)
    assert r.returncode == 0 and s["problems"] == [] and s["emails"]["to_import"] == 12, (r.returncode, s["problems"][:1])
    rows = {row["path"]: row for row in s["mailboxes"]["plan"]}
    assert rows["Inbox"]["dest"] == "Restored/2026-11-20/Inbox" and rows["Inbox"]["action"] == "create" and rows["Inbox"]["import"] == 5
    with client_for(srv, dest) as client:
        assert (client.email_state(), client.mailbox_state()) == state


def test_corrupted_blob_exits_5_naming_the_message(world: World, tmp_path: Path) -> None:
    srv, config, pop = world.srv, world.config, world.pop
    dest = world.fresh("bad")
    copy = tmp_path / "export"
    shutil.copytree(config.parent / "export", copy)
    path = blob_file(copy, "alice", hashlib.sha256(pop.raws[5]).hexdigest())
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    r = run(config, "restore", "--account", "alice", "--into", dest, "--from-dir", str(copy), "--json")
    last = one_line_error(r, 5, "'alice'", "<msg-5@example.net>", "Projects/2026", "2025-06-15T08:05:00Z")
    assert "damaged" in last
    s = summary(r)
    assert s["emails"]["imported"] == 11 and [p["message_id"] for p in s["problems"]] == ["msg-5@example.net"]
    with client_for(srv, dest) as client:
        assert view(client).count == 11


def test_unknown_accounts_bad_sources_and_no_connection(world: World, tmp_path: Path) -> None:
    config = world.config
    one_line_error(run(config, "restore", "--account", "mallory"), 3, "mallory")
    one_line_error(run(config, "restore", "--account", "alice", "--into", "mallory"), 3, "mallory")
    one_line_error(run(config, "restore", "--account", "alice", "--from-dir", str(tmp_path / "nope")), 1, "nope")
    one_line_error(run(config, "restore", "--account", "alice", "--target", "nowhere"), 1, "nowhere")
    dead = backup_config(tmp_path / "dead", {**mailsrv_server(world.srv), "url": f"http://127.0.0.1:{free_port()}"})
    shutil.copytree(config.parent / "export", tmp_path / "dead" / "export")
    one_line_error(run(dead, "restore", "--account", "alice"), 2)


def test_refused_mailbox_names_are_substituted_and_impossible_ones_reported(world: World, tmp_path: Path) -> None:
    """mailsrv refuses control characters (→ a substitute name) and nesting deeper than 10 (→ failed, exit 4)."""
    boxes = [MailboxRecord(id="in", name="INBOX", role="inbox", path=["INBOX"]),
             MailboxRecord(id="ctl", name="tab\there", path=["tab\there"])]
    for depth in range(1, 13):
        boxes.append(MailboxRecord(id=f"d{depth}", name=f"L{depth}", parent_id=f"d{depth - 1}" if depth > 1 else None,
                                   path=[f"L{n}" for n in range(1, depth + 1)]))
    raws = [raw_message(100 + n) for n in range(3)]
    write_export(tmp_path / "export", "synthetic", boxes,
                 [(raws[0], ["in"], "2026-01-01T00:00:00Z"), (raws[1], ["ctl"], "2026-01-02T00:00:00Z"),
                  (raws[2], ["d12"], "2026-01-03T00:00:00Z")])
    dest = world.fresh("names")
    args = ("restore", "--account", "synthetic", "--into", dest, "--from-dir", str(tmp_path / "export"), "--json")
    r = run(world.config, *args)
    last = one_line_error(r, 4, "L11", "could not be created")
    s = summary(r)
    assert [(m["substitute_for"], m["name"]) for m in s["mailboxes"]["substituted"]] == [("tab\there", "tab_here")]
    assert [m["path"] for m in s["mailboxes"]["failed"]] == ["L1/L2/L3/L4/L5/L6/L7/L8/L9/L10/L11", "L1/L2/L3/L4/L5/L6/L7/L8/L9/L10/L11/L12"]
    assert "nest at most" in s["mailboxes"]["failed"][0]["error"]
    assert s["emails"]["imported"] == 2 and s["verification"]["ok"] and "1 message(s) not restored" in last
    assert [(p["kind"], p["message_id"], p["mailboxes"]) for p in s["problems"]] == [
        ("unmapped", "synthetic-2@example.net", ["L1/L2/L3/L4/L5/L6/L7/L8/L9/L10/L11/L12"])]
    with client_for(world.srv, dest) as client:
        v = view(client)
    assert ("tab_here",) in v.mailboxes and v.count == 2
    again = summary(run(world.config, *args))  # the substitute is found again, nothing is created twice
    assert again["emails"]["imported"] == 0 and [m["action"] for m in again["mailboxes"]["plan"] if m["path"] == "tab\there"] == ["path"]
