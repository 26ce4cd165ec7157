"""``mail-backup restore`` into the Cyrus testbed (a generic JMAP server without Blob digests).

Cyrus keeps one email per content (a re-import answers ``alreadyExists``), lower-cases keywords, refuses
``/`` in mailbox names, has a read-only Identity stub and Sieve methods switched off: the restore must merge,
compare keywords case-insensitively, substitute and report the name, and report what is unsupported.
Without digests, content is confirmed by downloading; the journal spares the second run those downloads.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mailsrv.client import BasicAuth, EmailImport, JmapClient
from tests.conftest import MailsrvProc, start_mailsrv
from tests.test_restore import (
    Populated,
    backup_config,
    client_for,
    events,
    mailsrv_server,
    one_line_error,
    populate,
    populate_objects,
    raw_message,
    run,
    summary,
    view,
)

if TYPE_CHECKING:
    from tests.cyrus import CyrusTestbed

pytest_plugins = ("tests.cyrus",)
pytestmark = pytest.mark.cyrus


@dataclass
class CyrusWorld:
    bed: CyrusTestbed
    config: Path  # generic profile on the testbed; its export holds Cyrus' alice
    pop: Populated
    mailsrv: MailsrvProc
    mailsrv_export: Path  # an export of a mailsrv account "alice" (with identities, Sieve, a/b)

    def client(self, user: str) -> JmapClient:
        return JmapClient(self.bed.url, auth=BasicAuth(user, self.bed.password))


@pytest.fixture(scope="module")
def cw(cyrus: CyrusTestbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CyrusWorld]:
    base = tmp_path_factory.mktemp("restore-cyrus")
    (base / "pw").write_text(cyrus.password + "\n")
    creds = {u: {"user": u, "password_file": str(base / "pw")} for u in ("alice", "bob", "carol")}
    config = backup_config(base / "cyrus", {"profile": "generic", "url": cyrus.url}, accounts=creds)
    with JmapClient(cyrus.url, auth=BasicAuth("alice", cyrus.password)) as alice:
        pop = populate(alice, slash_name=False, eight_bit=False, to="alice@example.test")
    r = run(config, "export", "--account", "alice")
    assert r.returncode == 0, r.stderr
    srv = start_mailsrv(base / "mailsrv")
    try:
        srv.add_account("alice")
        srv.add_account("eight")
        with client_for(srv, "alice") as client:
            populate(client, eight_bit=False)  # Cyrus rewrites raw 8-bit header bytes (munge8bit); see the last test
            populate_objects(client, "alice@example.org")
        with client_for(srv, "eight") as client:
            inbox = next(m.id for m in client.mailboxes() if m.role == "inbox")
            up = client.upload(raw_message(80))
            assert client.email_import({"x": EmailImport(up.blob_id, {inbox: True}, {"$seen": True}, "2025-03-03T03:03:03Z")}).created
        mcfg = backup_config(base / "mailsrv-backup", mailsrv_server(srv))
        r = run(mcfg, "export")
        assert r.returncode == 0, r.stderr
        yield CyrusWorld(cyrus, config, pop, srv, mcfg.parent / "export")
    finally:
        srv.stop()


def test_cyrus_roundtrip_into_another_account_and_again(cw: CyrusWorld) -> None:
    with cw.client("alice") as alice:
        source = view(alice)
    r = run(cw.config, "restore", "--account", "alice", "--into", "bob", "--json")
    assert r.returncode == 0, r.stderr
    s = summary(r)
    assert s["emails"]["imported"] == 12 and s["verification"]["ok"]
    assert s["verification"]["downloads"] == 12  # no digests: every restored message was downloaded and hashed
    assert s["objects"]["sieve"]["status"] == "not-in-backup"  # the backed-up Cyrus did not offer Sieve either
    assert "without an address skipped" in s["objects"]["identities"]["detail"]
    with cw.client("bob") as bob:
        restored = view(bob)
    assert restored == source  # paths, roles, subscriptions, contents, keywords (lower-cased by Cyrus), receivedAt

    again = summary(run(cw.config, "restore", "--account", "alice", "--into", "bob", "--json"))
    assert (again["emails"]["imported"], again["emails"]["merged"], again["emails"]["present"]) == (0, 0, 12)
    assert again["detection"]["downloads"] == 0 and again["verification"]["downloads"] == 0  # known from the journal
    assert again["verification"]["ok"] and not again["mailboxes"]["created"]
    with cw.client("bob") as bob:
        assert view(bob) == source


def test_mailsrv_backup_into_cyrus_substitutes_names_and_reports_unsupported(cw: CyrusWorld) -> None:
    with client_for(cw.mailsrv, "alice") as alice:
        source = view(alice)
    # carol already has message 0 with another receivedAt: the import answers alreadyExists and is merged
    with cw.client("carol") as carol:
        inbox = next(m.id for m in carol.mailboxes() if m.role == "inbox")
        up = carol.upload(raw_message(0, size=0, eight_bit=False))
        assert carol.email_import({"x": EmailImport(up.blob_id, {inbox: True}, {}, "2020-01-01T00:00:00Z")}).created
    args = ("restore", "--account", "alice", "--into", "carol", "--from-dir", str(cw.mailsrv_export), "--json")
    r = run(cw.config, *args)
    assert r.returncode == 0, r.stderr  # identities and Sieve were not asked for explicitly
    s = summary(r)
    assert (s["emails"]["imported"], s["emails"]["merged"]) == (11, 1) and s["verification"]["ok"]
    subst = s["mailboxes"]["substituted"]
    assert [(m["path"], m["substitute_for"], m["name"]) for m in subst] == [("a\\/b", "a/b", "a\u2215b")]
    assert any("'a/b'" in w["message"] and "a\u2215b" in w["message"] for w in events(r, "warning"))  # warned, never skipped
    assert s["objects"]["identities"]["status"] == "unsupported" and "unknownMethod" in s["objects"]["identities"]["detail"]
    assert s["objects"]["sieve"]["status"] == "unsupported"
    assert s["objects"]["vacation"]["status"] == "restored"
    with cw.client("carol") as carol:
        got = view(carol)
    renamed = {tuple("a\u2215b" if p == "a/b" else p for p in path) for path in source.mailboxes}
    assert {p for p in got.mailboxes if p[0] in ("Projects", "a\u2215b")} == {p for p in renamed if p[0] in ("Projects", "a\u2215b")}
    assert got.count == 12 and set(got.emails) == set(source.emails)
    for sha, (paths, keywords, _) in source.emails.items():
        want = {tuple("a\u2215b" if p == "a/b" else p for p in path) for path in paths}
        assert {p for p in got.emails[sha][0] if p[0] != "Inbox"} == {p for p in want if p[0] != "Inbox"}
        assert keywords <= got.emails[sha][1]
    first = hashlib.sha256(raw_message(0, size=0, eight_bit=False)).hexdigest()
    assert {"$flagged", "myflag"} <= got.emails[first][1]  # merged into the email Cyrus already had

    again = summary(run(cw.config, *args))
    assert (again["emails"]["imported"], again["emails"]["merged"]) == (0, 0) and not again["mailboxes"]["created"]
    one_line_error(run(cw.config, *args[:-1], "--objects", "mail,identities"), 4, "identities: unsupported")


def test_cyrus_corrupted_blob_and_unknown_account(cw: CyrusWorld, tmp_path: Path) -> None:
    copy = tmp_path / "export"
    shutil.copytree(cw.config.parent / "export", copy)
    sha = hashlib.sha256(cw.pop.raws[9]).hexdigest()
    blob = copy / "alice" / "blobs" / sha[:2] / sha[2:4] / sha
    blob.write_bytes(blob.read_bytes().replace(b"Body", b"body"))
    one_line_error(run(cw.config, "restore", "--account", "alice", "--into", "carol", "--from-dir", str(copy), "--mailbox", "a.b"), 5,
                   "<msg-9@example.net>", "'a.b'", "2025-10-19T08:09:00Z")
    one_line_error(run(cw.config, "restore", "--account", "alice", "--into", "dave", "--from-dir", str(copy)), 3, "dave")


def test_a_message_the_server_rewrites_fails_verification_without_duplicates(cw: CyrusWorld) -> None:
    """Cyrus replaces raw 8-bit header bytes with X: the restore says so (exit 5) and a rerun adds nothing."""
    args = ("restore", "--account", "eight", "--into", "carol", "--from-dir", str(cw.mailsrv_export), "--into-mailbox", "Eight")
    r = run(cw.config, *args)
    one_line_error(r, 5, "<msg-80@example.net>", "2025-03-03T03:03:03Z", "rewrote the message")
    for _ in range(2):
        one_line_error(run(cw.config, *args), 5, "<msg-80@example.net>")
    with cw.client("carol") as carol:
        under = view(carol, under=("Eight",))
    assert under.count == 1 and next(iter(under.emails.values()))[1] == frozenset({"$seen"})


def wipe(client: JmapClient) -> None:
    """Destroy every email and every mailbox without a role (children first), as a lost or rebuilt account."""
    from mailsrv.client import Invocation

    aid = client.account_id
    ids = client.query_ids("Email")
    if ids:
        client.request([Invocation("Email/set", {"accountId": aid, "destroy": ids}, "e")])
    boxes = [m for m in client.mailboxes() if not m.role]
    depth = {m.id: 0 for m in boxes}
    parents = {m.id: m.parent_id for m in client.mailboxes()}
    for m in boxes:
        p = m.parent_id
        while p:
            depth[m.id] += 1
            p = parents.get(p)
    for m in sorted(boxes, key=lambda b: -depth[b.id]):
        client.request([Invocation("Mailbox/set", {"accountId": aid, "destroy": [m.id]}, "m")])


def test_cyrus_export_ship_wipe_restore_from_restic(cw: CyrusWorld, tmp_path: Path) -> None:
    """The whole path on Cyrus: export (module fixture) → ship to restic → wipe the account → restore the newest
    snapshot into it → the same mail, paths, roles, keywords and dates; a second restore adds nothing."""
    if shutil.which("restic") is None:
        pytest.skip("restic is not installed (Debian: apt-get install restic)")
    with cw.client("alice") as alice:
        source = view(alice)
    (tmp_path / "restic.pw").write_text("cyrus-restic-password\n")
    config = tmp_path / "config.toml"
    config.write_text(cw.config.read_text() + f'\n[[targets]]\nname = "local"\ntype = "restic"\nrepository = "{tmp_path / "repo"}"\n'
                      f'password_file = "{tmp_path / "restic.pw"}"\ninit = true\n')
    r = run(config, "ship", "--target", "local")
    assert r.returncode == 0, r.stderr
    with cw.client("alice") as alice:
        wipe(alice)
        assert view(alice).count == 0

    r = run(config, "restore", "--account", "alice", "--target", "local", "--snapshot", "latest", "--json")
    assert r.returncode == 0, r.stderr
    s = summary(r)
    assert s["source"]["kind"] == "snapshot" and s["emails"]["imported"] == 12 and s["verification"]["ok"]
    with cw.client("alice") as alice:
        assert view(alice) == source
    again = summary(run(config, "restore", "--account", "alice", "--target", "local", "--snapshot", "latest", "--json"))
    assert (again["emails"]["imported"], again["emails"]["merged"], again["emails"]["present"]) == (0, 0, 12)
    with cw.client("alice") as alice:
        assert view(alice) == source
