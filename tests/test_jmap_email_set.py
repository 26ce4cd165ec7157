"""Email/import, Email/set and Thread/get against a real mailsrv (RFC 8621 §3, §4.6, §4.8)."""

from __future__ import annotations

import email
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests

from mailsrv.server.store import Store
from mailsrv.server.store.ids import parse_id
from mailsrv.server.store.mail import Email
from tests.conftest import USER_PASSWORD, MailsrvProc, start_mailsrv
from tests.test_jmap_mailbox import (
    account_id,
    call,
    call_error,
    import_email,
    mailbox_set,
    make_message,
    role_id,
    upload,
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailsrvProc]:
    s = start_mailsrv(Path(tmp_path_factory.mktemp("emailset")))
    s.add_account("alice")
    s.add_account("bob")
    yield s
    s.stop()


def stored(srv: MailsrvProc, user: str, *ids: str) -> dict[str, Email]:
    """The emails as the server's store holds them, read straight from its database."""
    store = Store(srv.data_dir)
    try:
        aid = parse_id(account_id(srv, user))
        assert aid is not None
        got = store.mail.emails(aid, [parse_id(i) or 0 for i in ids])
    finally:
        store.close()
    return {i: got[n] for i in ids if (n := parse_id(i)) is not None and n in got}


def download(srv: MailsrvProc, user: str, blob_id: str) -> bytes:
    r = requests.get(f"{srv.url}/jmap/download/{account_id(srv, user)}/{blob_id}/m.eml",
                     auth=(user, USER_PASSWORD), timeout=10)
    assert r.status_code == 200
    return r.content


def metric(srv: MailsrvProc, name: str) -> int:
    for line in requests.get(f"{srv.url}/metrics/prometheus", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return 0


# -- Email/import --------------------------------------------------------------------------------------
def test_import_keeps_keywords_and_received_at(srv: MailsrvProc) -> None:
    inbox = role_id(srv, "alice", "inbox")
    archive = mailbox_set(srv, "alice", create={"a": {"name": "Imported"}})["created"]["a"]["id"]
    raw = make_message("imported", "import-1@x")
    before = metric(srv, "message_ingest_jmap_append")
    blob = upload(srv, "alice", raw)
    out = call(srv, "alice", "Email/import", {"emails": {
        "one": {"blobId": blob, "mailboxIds": {inbox: True, archive: True},
                "keywords": {"$Seen": True, "$Flagged": True, "Custom_Tag": True},
                "receivedAt": "2021-03-04T05:06:07Z"},
        "two": {"blobId": blob, "mailboxIds": {inbox: True}},
    }})
    assert out["notCreated"] is None
    one, two = out["created"]["one"], out["created"]["two"]
    assert one["id"] != two["id"]  # the same bytes imported twice are two emails
    assert one["blobId"] == two["blobId"] == blob and one["size"] == len(raw)
    assert one["threadId"] == two["threadId"]  # same Message-ID, same thread
    assert out["oldState"] != out["newState"]
    got = stored(srv, "alice", one["id"], two["id"])
    assert got[one["id"]].keywords == {"$seen": True, "$flagged": True, "custom_tag": True}
    assert got[one["id"]].received_at == 1614834367.0  # 2021-03-04T05:06:07Z exactly
    assert sorted(got[one["id"]].mailbox_ids) == sorted([parse_id(inbox), parse_id(archive)])
    assert got[one["id"]].summary["subject"] == "imported"
    assert got[two["id"]].keywords == {}
    assert download(srv, "alice", blob) == raw
    assert metric(srv, "message_ingest_jmap_append") == before + 2


def test_import_errors(srv: MailsrvProc) -> None:
    inbox = role_id(srv, "alice", "inbox")
    mine = upload(srv, "alice", make_message("mine", "mine@x"))
    bobs = upload(srv, "bob", make_message("bob only", "bob-only@x"))
    empty = upload(srv, "alice", b"")
    out = call(srv, "alice", "Email/import", {"emails": {
        "foreign": {"blobId": bobs, "mailboxIds": {inbox: True}},
        "missing": {"blobId": "0" * 64, "mailboxIds": {inbox: True}},
        "garbage": {"blobId": "../../etc/passwd", "mailboxIds": {inbox: True}},
        "nobox": {"blobId": mine, "mailboxIds": {"zzzzzzz": True}},
        "nomailboxes": {"blobId": mine, "mailboxIds": {}},
        "bobsbox": {"blobId": mine, "mailboxIds": {role_id(srv, "bob", "inbox"): True}},
        "badkw": {"blobId": mine, "mailboxIds": {inbox: True}, "keywords": {"bad keyword": True}},
        "falsekw": {"blobId": mine, "mailboxIds": {inbox: True}, "keywords": {"$seen": False}},
        "baddate": {"blobId": mine, "mailboxIds": {inbox: True}, "receivedAt": "yesterday"},
        "extra": {"blobId": mine, "mailboxIds": {inbox: True}, "subject": "x"},
        "empty": {"blobId": empty, "mailboxIds": {inbox: True}},
        "notobject": 5,
    }})
    assert out["created"] is None
    nc = out["notCreated"]
    for key in ("foreign", "missing", "garbage"):
        assert nc[key]["type"] == "blobNotFound", key
    assert nc["foreign"]["notFound"] == [bobs]
    for key, prop in {"nobox": "mailboxIds", "nomailboxes": "mailboxIds", "bobsbox": "mailboxIds", "badkw": "keywords",
                      "falsekw": "keywords", "baddate": "receivedAt", "extra": "subject"}.items():
        assert nc[key]["type"] == "invalidProperties" and nc[key]["properties"] == [prop], (key, nc[key])
    assert nc["empty"]["type"] == "invalidEmail"
    assert nc["notobject"]["type"] == "invalidProperties"
    # bob's account, seen by alice: forbidden; and a stale state: stateMismatch
    (resp,) = srv.jmap("alice", [["Email/import", {"accountId": account_id(srv, "bob"), "emails": {}}, "c"]])
    assert resp[1]["type"] == "forbidden"
    err = call_error(srv, "alice", "Email/import", {"ifInState": "1", "emails": {
        "x": {"blobId": mine, "mailboxIds": {inbox: True}}}})
    assert err["type"] == "stateMismatch"
    assert call_error(srv, "alice", "Email/import", {"emails": []})["type"] == "invalidArguments"


def test_import_over_quota(srv: MailsrvProc) -> None:
    srv.add_account("quentin")
    inbox = role_id(srv, "quentin", "inbox")
    store = Store(srv.data_dir)
    try:
        pid = parse_id(account_id(srv, "quentin"))
        assert pid is not None
        store.principals.update(pid, quota=300)
    finally:
        store.close()
    small = make_message("fits", "fits@x")
    assert len(small) < 300
    import_email(srv, "quentin", small, [inbox])
    big = make_message("too big", "big@x", body="x" * 200)
    out = call(srv, "quentin", "Email/import", {"emails": {"b": {"blobId": upload(srv, "quentin", big),
                                                                    "mailboxIds": {inbox: True}}}})
    assert out["notCreated"]["b"]["type"] == "overQuota"


# -- Email/set update and destroy ----------------------------------------------------------------------
def test_update_keywords_and_mailboxes(srv: MailsrvProc) -> None:
    inbox, trash = role_id(srv, "alice", "inbox"), role_id(srv, "alice", "trash")
    e = import_email(srv, "alice", make_message("flags", "flags@x"), [inbox], keywords={"$seen": True})["id"]

    out = call(srv, "alice", "Email/set", {"update": {e: {"keywords/$Flagged": True, "keywords/$seen": None,
                                                           "keywords/a~1b": True}}})
    assert out["updated"] == {e: None}
    assert stored(srv, "alice", e)[e].keywords == {"$flagged": True, "a/b": True}
    call(srv, "alice", "Email/set", {"update": {e: {"keywords": {"$Answered": True, "$SEEN": True}}}})
    assert stored(srv, "alice", e)[e].keywords == {"$answered": True, "$seen": True}

    call(srv, "alice", "Email/set", {"update": {e: {f"mailboxIds/{trash}": True}}})
    assert sorted(stored(srv, "alice", e)[e].mailbox_ids) == sorted([parse_id(inbox), parse_id(trash)])
    call(srv, "alice", "Email/set", {"update": {e: {f"mailboxIds/{inbox}": None}}})
    assert stored(srv, "alice", e)[e].mailbox_ids == [parse_id(trash)]
    call(srv, "alice", "Email/set", {"update": {e: {"mailboxIds": {inbox: True}}}})
    assert stored(srv, "alice", e)[e].mailbox_ids == [parse_id(inbox)]

    out = call(srv, "alice", "Email/set", {"update": {
        e: {f"mailboxIds/{inbox}": None},
    }})
    assert out["notUpdated"][e] == {"type": "invalidProperties", "description": "an email must stay in at least one mailbox",
                                    "properties": ["mailboxIds"]}
    bad = {
        "mailboxIds/zzzzzzz": True,
        "subject": "changed",
        "keywords/$seen": False,
        "keywords/bad(kw": True,
        "mailboxIds": {},
    }
    for path, value in bad.items():
        out = call(srv, "alice", "Email/set", {"update": {e: {path: value}}})
        assert out["notUpdated"][e]["type"] == "invalidProperties", (path, out)
    out = call(srv, "alice", "Email/set", {"update": {e: {"keywords": {}, "keywords/$seen": True}}})
    assert out["notUpdated"][e]["type"] == "invalidPatch"
    out = call(srv, "alice", "Email/set", {"update": {"zzzzzzz": {"keywords": {}}, e: "nope"}})
    assert out["notUpdated"]["zzzzzzz"]["type"] == "notFound"
    assert out["notUpdated"][e]["type"] == "invalidPatch"
    # nothing above changed the email
    assert stored(srv, "alice", e)[e].mailbox_ids == [parse_id(inbox)]
    assert stored(srv, "alice", e)[e].keywords == {"$answered": True, "$seen": True}


def test_destroy_and_state(srv: MailsrvProc) -> None:
    inbox = role_id(srv, "alice", "inbox")
    e = import_email(srv, "alice", make_message("bye", "bye@x"), [inbox])["id"]
    (resp,) = srv.jmap("bob", [["Email/set", {"accountId": account_id(srv, "bob"), "destroy": [e]}, "c"]])
    assert resp[1]["notDestroyed"] == {e: {"type": "notFound"}}  # bob cannot touch alice's email
    state = call(srv, "alice", "Email/set", {})["oldState"]
    assert call_error(srv, "alice", "Email/set", {"ifInState": "0", "destroy": [e]})["type"] == "stateMismatch"
    assert stored(srv, "alice", e)
    out = call(srv, "alice", "Email/set", {"ifInState": state, "destroy": [e, "zzzzzzz"]})
    assert out["destroyed"] == [e] and out["notDestroyed"] == {"zzzzzzz": {"type": "notFound"}}
    assert out["oldState"] == state and out["newState"] != state
    assert stored(srv, "alice", e) == {}
    out = call(srv, "alice", "Email/set", {"destroy": [e]})
    assert out["notDestroyed"] == {e: {"type": "notFound"}}


# -- Email/set create ----------------------------------------------------------------------------------
def test_create_draft(srv: MailsrvProc) -> None:
    drafts = role_id(srv, "alice", "drafts")
    attachment = b"%PDF-1.4 not really a pdf \x00\x01\x02"
    blob = upload(srv, "alice", attachment)
    out = call(srv, "alice", "Email/set", {"create": {"d": {
        "mailboxIds": {drafts: True},
        "keywords": {"$draft": True, "$seen": True},
        "from": [{"name": "Alice Ämmä", "email": "alice@example.org"}],
        "to": [{"name": None, "email": "bob@example.org"}, {"email": "carol@example.net"}],
        "cc": [{"name": "Dave, Jr.", "email": "dave@example.net"}],
        "subject": "Draft — with ünïcode",
        "receivedAt": "2022-05-06T07:08:09Z",
        "sentAt": "2022-05-06T09:08:09+02:00",
        "inReplyTo": ["parent@example.net"],
        "textBody": [{"partId": "t", "type": "text/plain"}],
        "htmlBody": [{"partId": "h", "type": "text/html"}],
        "bodyValues": {"t": {"value": "Plain text ✓\nsecond line"}, "h": {"value": "<p>Rich text ✓</p>"}},
        "attachments": [{"blobId": blob, "type": "application/pdf", "name": "report.pdf"}],
    }}})
    assert out["notCreated"] is None, out["notCreated"]
    created = out["created"]["d"]
    assert set(created) >= {"id", "blobId", "threadId", "size"}
    raw = download(srv, "alice", created["blobId"])
    assert len(raw) == created["size"]
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert str(msg["Subject"]) == "Draft — with ünïcode"
    assert msg["From"].addresses[0].display_name == "Alice Ämmä"
    assert [a.addr_spec for a in msg["To"].addresses] == ["bob@example.org", "carol@example.net"]
    assert msg["Cc"].addresses[0].display_name == "Dave, Jr."
    assert msg["In-Reply-To"] == "<parent@example.net>"
    assert msg["Message-ID"] and msg["Date"].datetime.isoformat() == "2022-05-06T09:08:09+02:00"
    body = msg.get_body(("plain",))
    assert body is not None and body.get_content().replace("\r\n", "\n") == "Plain text ✓\nsecond line\n"
    html = msg.get_body(("html",))
    assert html is not None and "<p>Rich text ✓</p>" in html.get_content()
    (att,) = list(msg.iter_attachments())
    assert att.get_filename() == "report.pdf" and att.get_content_type() == "application/pdf"
    assert att.get_content() == attachment
    got = stored(srv, "alice", created["id"])[created["id"]]
    assert got.keywords == {"$draft": True, "$seen": True}
    assert got.mailbox_ids == [parse_id(drafts)] and got.received_at == 1651820889.0
    assert got.summary["subject"] == "Draft — with ünïcode"


def test_create_errors_and_references(srv: MailsrvProc) -> None:
    drafts = role_id(srv, "alice", "drafts")
    bobs_blob = upload(srv, "bob", b"bob's attachment")
    (mb_resp, set_resp) = srv.jmap("alice", [
        ["Mailbox/set", {"accountId": account_id(srv, "alice"), "create": {"box": {"name": "Fresh drafts"}}}, "0"],
        ["Email/set", {"accountId": account_id(srv, "alice"), "create": {
            "ok": {"mailboxIds": {"#box": True}, "subject": "into a new mailbox", "textBody": [{"partId": "1"}],
                   "bodyValues": {"1": {"value": "hi"}}},
            "nobox": {"subject": "nowhere"},
            "blob": {"mailboxIds": {drafts: True}, "attachments": [{"blobId": bobs_blob, "type": "text/plain"}]},
            "part": {"mailboxIds": {drafts: True}, "textBody": [{"partId": "missing"}]},
            "twotext": {"mailboxIds": {drafts: True}, "textBody": [{"partId": "a"}, {"partId": "b"}],
                        "bodyValues": {"a": {"value": "a"}, "b": {"value": "b"}}},
            "addr": {"mailboxIds": {drafts: True}, "from": [{"email": "not an address"}]},
            "inject": {"mailboxIds": {drafts: True}, "subject": "evil\r\nBcc: victim@example.net"},
            "server": {"mailboxIds": {drafts: True}, "id": "abc"},
        }}, "1"],
    ])
    box = mb_resp[1]["created"]["box"]["id"]
    res = set_resp[1]
    assert list(res["created"]) == ["ok"]
    assert stored(srv, "alice", res["created"]["ok"]["id"])[res["created"]["ok"]["id"]].mailbox_ids == [parse_id(box)]
    nc = res["notCreated"]
    assert nc["nobox"]["properties"] == ["mailboxIds"]
    assert nc["blob"]["type"] == "blobNotFound" and nc["blob"]["notFound"] == [bobs_blob]
    assert nc["part"]["properties"] == ["bodyValues"]
    assert nc["twotext"]["properties"] == ["textBody"]
    assert nc["addr"]["properties"] == ["from"]
    assert nc["inject"]["properties"] == ["subject"]
    assert nc["server"]["properties"] == ["id"]
    # an Email/set update can refer to the email created earlier in the same request
    (c1, c2) = srv.jmap("alice", [
        ["Email/set", {"accountId": account_id(srv, "alice"), "create": {"n": {"mailboxIds": {drafts: True}}}}, "0"],
        ["Email/set", {"accountId": account_id(srv, "alice"), "update": {"#n": {"keywords/$seen": True}}}, "1"],
    ])
    new_id = c1[1]["created"]["n"]["id"]
    assert c2[1]["updated"] == {new_id: None}
    assert stored(srv, "alice", new_id)[new_id].keywords == {"$seen": True}


# -- Thread/get ----------------------------------------------------------------------------------------
def test_thread_get_orders_by_received_at(srv: MailsrvProc) -> None:
    inbox = role_id(srv, "alice", "inbox")
    first = import_email(srv, "alice", make_message("root", "root@thread"), [inbox], received_at="2020-01-02T00:00:00Z")
    reply = import_email(srv, "alice", make_message("Re: root", "reply@thread", in_reply_to="root@thread"), [inbox],
                         received_at="2020-01-01T00:00:00Z")
    other = import_email(srv, "alice", make_message("unrelated", "other@thread"), [inbox])
    assert first["threadId"] == reply["threadId"] != other["threadId"]
    out = call(srv, "alice", "Thread/get", {"ids": [first["threadId"], other["threadId"], "zzzzzzz"]})
    assert out["list"] == [{"id": first["threadId"], "emailIds": [reply["id"], first["id"]]},
                           {"id": other["threadId"], "emailIds": [other["id"]]}]
    assert out["notFound"] == ["zzzzzzz"] and out["state"]
    (resp,) = srv.jmap("bob", [["Thread/get", {"accountId": account_id(srv, "bob"), "ids": [first["threadId"]]}, "c"]])
    assert resp[1]["list"] == [] and resp[1]["notFound"] == [first["threadId"]]
    assert call_error(srv, "alice", "Thread/get", {"ids": ["x"] * 501})["type"] == "requestTooLarge"
    assert call_error(srv, "alice", "Thread/get", {"properties": ["subject"]})["type"] == "invalidArguments"


# -- Email/copy ----------------------------------------------------------------------------------------
def test_copy_between_accounts(srv: MailsrvProc) -> None:
    alice, bob = account_id(srv, "alice"), account_id(srv, "bob")
    source = import_email(srv, "alice", make_message("copy me", "copy@x"), [role_id(srv, "alice", "inbox")],
                          keywords={"$seen": True}, received_at="2019-09-09T09:09:09Z")
    bob_inbox = role_id(srv, "bob", "inbox")
    # a user reaches only their own account, and a copy needs two different ones
    (resp,) = srv.jmap("bob", [["Email/copy", {"fromAccountId": alice, "accountId": bob,
                                              "create": {"c": {"id": source["id"], "mailboxIds": {bob_inbox: True}}}}, "c"]])
    assert resp[1]["type"] == "forbidden"
    (resp,) = srv.jmap("alice", [["Email/copy", {"fromAccountId": alice, "accountId": alice, "create": {}}, "c"]])
    assert resp[1]["type"] == "invalidArguments"

    copy_args = {"fromAccountId": alice, "accountId": bob, "onSuccessDestroyOriginal": True, "create": {
        "c": {"id": source["id"], "mailboxIds": {bob_inbox: True}},
        "ghost": {"id": "zzzzzzz", "mailboxIds": {bob_inbox: True}},
        "badbox": {"id": source["id"], "mailboxIds": {role_id(srv, "alice", "inbox"): True}},
    }}
    resp, implicit = srv.jmap(srv.admin, [["Email/copy", copy_args, "c"]])
    assert resp[0] == "Email/copy" and resp[1]["fromAccountId"] == alice and resp[1]["accountId"] == bob
    created = resp[1]["created"]["c"]
    assert created["blobId"] == source["blobId"] and created["size"] == source["size"]
    assert resp[1]["notCreated"]["ghost"]["type"] == "notFound"
    assert resp[1]["notCreated"]["badbox"]["properties"] == ["mailboxIds"]
    assert implicit[0] == "Email/set" and implicit[1]["destroyed"] == [source["id"]] and implicit[2] == "c"
    copy = stored(srv, "bob", created["id"])[created["id"]]
    assert copy.keywords == {"$seen": True} and copy.received_at == 1568020149.0
    assert copy.mailbox_ids == [parse_id(bob_inbox)]
    assert stored(srv, "alice", source["id"]) == {}
    assert download(srv, "bob", created["blobId"]) == make_message("copy me", "copy@x")
