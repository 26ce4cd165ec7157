"""Mailbox/get, /changes, /query, /queryChanges and /set against a real mailsrv (RFC 8621 §2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import USER_PASSWORD, MailsrvProc, start_mailsrv

MAIL_USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]


# -- helpers shared by the JMAP mail test modules ----------------------------------------------------
def account_id(srv: MailsrvProc, user: str) -> str:
    return str(srv.session(user)["primaryAccounts"]["urn:ietf:params:jmap:mail"])


def call(srv: MailsrvProc, user: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """One method call; returns its arguments (fails the test on a method error)."""
    (resp,) = srv.jmap(user, [[name, {"accountId": account_id(srv, user), **args}, "c"]])
    assert resp[0] == name, resp
    return dict(resp[1])


def call_error(srv: MailsrvProc, user: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """One method call that must fail with a method-level error; returns the error object."""
    (resp,) = srv.jmap(user, [[name, {"accountId": account_id(srv, user), **args}, "c"]])
    assert resp[0] == "error", resp
    return dict(resp[1])


def make_message(subject: str, msgid: str, *, in_reply_to: str | None = None, body: str = "Hello") -> bytes:
    headers = [
        "From: Carol <carol@example.net>",
        "To: alice@example.org",
        f"Subject: {subject}",
        "Date: Tue, 02 Jan 2024 03:04:05 +0000",
        f"Message-ID: <{msgid}>",
    ]
    if in_reply_to:
        headers += [f"In-Reply-To: <{in_reply_to}>", f"References: <{in_reply_to}>"]
    return ("\r\n".join(headers) + "\r\n\r\n" + body + "\r\n").encode()


def upload(srv: MailsrvProc, user: str, data: bytes, aid: str | None = None) -> str:
    r = requests.post(
        f"{srv.url}/jmap/upload/{aid or account_id(srv, user)}/", data=data,
        auth=(user, srv.accounts.get(user, USER_PASSWORD)), headers={"Content-Type": "message/rfc822"}, timeout=10,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["blobId"])


def import_email(
    srv: MailsrvProc, user: str, raw: bytes, mailbox_ids: list[str], *,
    keywords: dict[str, bool] | None = None, received_at: str | None = None,
) -> dict[str, Any]:
    """Upload and import one message; returns the created entry (id, blobId, threadId, size)."""
    item: dict[str, Any] = {"blobId": upload(srv, user, raw), "mailboxIds": dict.fromkeys(mailbox_ids, True)}
    if keywords is not None:
        item["keywords"] = keywords
    if received_at is not None:
        item["receivedAt"] = received_at
    out = call(srv, user, "Email/import", {"emails": {"m": item}})
    assert out["notCreated"] is None, out
    return dict(out["created"]["m"])


def mailboxes(srv: MailsrvProc, user: str) -> dict[str, dict[str, Any]]:
    """All mailboxes of ``user`` by id."""
    return {m["id"]: m for m in call(srv, user, "Mailbox/get", {"ids": None})["list"]}


def role_id(srv: MailsrvProc, user: str, role: str) -> str:
    return next(m["id"] for m in mailboxes(srv, user).values() if m["role"] == role)


def mailbox_set(srv: MailsrvProc, user: str, **args: Any) -> dict[str, Any]:
    return call(srv, user, "Mailbox/set", args)


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailsrvProc]:
    """One server for the module, with accounts alice and bob; tests use their own mailbox names."""
    s = start_mailsrv(Path(tmp_path_factory.mktemp("mailbox")))
    s.add_account("alice")
    s.add_account("bob")
    yield s
    s.stop()


# -- Mailbox/get ---------------------------------------------------------------------------------------
def test_get_default_mailboxes(srv: MailsrvProc) -> None:
    out = call(srv, "alice", "Mailbox/get", {"ids": None})
    assert out["state"] and out["notFound"] == []
    roles = {m["role"]: m for m in out["list"]}
    assert {"inbox", "drafts", "sent", "junk", "trash"} <= set(roles)
    inbox = roles["inbox"]
    assert inbox["name"] == "Inbox" and inbox["parentId"] is None and inbox["sortOrder"] == 0
    assert inbox["isSubscribed"] is True
    assert {inbox[k] for k in ("totalEmails", "unreadEmails", "totalThreads", "unreadThreads")} == {0}
    assert inbox["myRights"]["mayDelete"] is True and inbox["myRights"]["maySetSeen"] is True

    some = call(srv, "alice", "Mailbox/get", {"ids": [inbox["id"], "zzzzzz", "not an id!"], "properties": ["name"]})
    assert some["list"] == [{"id": inbox["id"], "name": "Inbox"}]
    assert some["notFound"] == ["zzzzzz", "not an id!"]
    bad = call_error(srv, "alice", "Mailbox/get", {"properties": ["nope"]})
    assert bad["type"] == "invalidArguments"


def test_counts_follow_emails(srv: MailsrvProc) -> None:
    box = mailbox_set(srv, "alice", create={"c": {"name": "Counted"}})["created"]["c"]["id"]
    first = import_email(srv, "alice", make_message("count 1", "count-1@x"), [box])
    import_email(srv, "alice", make_message("count 2", "count-2@x", in_reply_to="count-1@x"), [box], keywords={"$seen": True})
    import_email(srv, "alice", make_message("count 3", "count-3@x"), [box], keywords={"$draft": True})
    got = mailboxes(srv, "alice")[box]
    assert (got["totalEmails"], got["unreadEmails"], got["totalThreads"], got["unreadThreads"]) == (3, 1, 2, 1)
    call(srv, "alice", "Email/set", {"update": {first["id"]: {"keywords/$seen": True}}})
    got = mailboxes(srv, "alice")[box]
    assert (got["totalEmails"], got["unreadEmails"], got["totalThreads"], got["unreadThreads"]) == (3, 0, 2, 0)


# -- accounts ------------------------------------------------------------------------------------------
def test_foreign_and_unknown_accounts(srv: MailsrvProc) -> None:
    bob = account_id(srv, "bob")
    for method in ("Mailbox/get", "Mailbox/set", "Mailbox/query", "Mailbox/changes"):
        args: dict[str, Any] = {"accountId": bob, "sinceState": "0"}
        (resp,) = srv.jmap("alice", [[method, args, "c"]])
        assert resp == ["error", {"type": "forbidden", "description": "this account is not accessible to you"}, "c"]
    (resp,) = srv.jmap("alice", [["Mailbox/get", {"accountId": "zzzzzzz"}, "c"]])
    assert resp[1]["type"] == "accountNotFound"
    # bob's mailboxes are untouched by alice's attempt
    (resp,) = srv.jmap("alice", [["Mailbox/set", {"accountId": bob, "create": {"x": {"name": "Intruder"}}}, "c"]])
    assert resp[1]["type"] == "forbidden"
    assert all(m["name"] != "Intruder" for m in mailboxes(srv, "bob").values())


# -- Mailbox/set ---------------------------------------------------------------------------------------
def test_tree_create_rename_move_destroy(srv: MailsrvProc) -> None:
    odd = {"dots": "..", "slash": "a/b", "emoji": "📁 Ünïcödé ✓", "spaces": "  padded  ", "long": "é" * 127 + "x"}
    out = mailbox_set(srv, "alice", create={
        "kid": {"name": "Kid", "parentId": "#top", "sortOrder": 3},  # parent is created first anyway
        "top": {"name": "Projects", "isSubscribed": True},
        **{k: {"name": v, "parentId": "#top"} for k, v in odd.items()},
    })
    assert out["notCreated"] is None, out["notCreated"]
    ids = {k: v["id"] for k, v in out["created"].items()}
    assert out["created"]["top"]["totalEmails"] == 0 and out["created"]["top"]["parentId"] is None
    assert out["created"]["kid"]["isSubscribed"] is False  # defaulted properties are returned
    got = mailboxes(srv, "alice")
    assert got[ids["kid"]]["parentId"] == ids["top"] and got[ids["kid"]]["sortOrder"] == 3
    for key, name in odd.items():
        assert got[ids[key]]["name"] == name
        assert got[ids[key]]["parentId"] == ids["top"]

    bad = mailbox_set(srv, "alice", create={
        "empty": {"name": ""},
        "long": {"name": "x" * 300},
        "octets": {"name": "é" * 128},  # 256 UTF-8 octets
        "control": {"name": "tab\there"},
        "noname": {"parentId": ids["top"]},
        "dup": {"name": "Kid", "parentId": ids["top"]},
        "orphan": {"name": "Orphan", "parentId": "zzzzzzz"},
        "server": {"name": "Counts", "totalEmails": 5},
        "unknown": {"name": "X", "colour": "red"},
        "badref": {"name": "Y", "parentId": "#nosuch"},
    })
    assert bad["created"] is None
    nc = bad["notCreated"]
    expected = {"empty": ["name"], "long": ["name"], "octets": ["name"], "control": ["name"], "noname": ["name"],
                "dup": ["name"], "orphan": ["parentId"], "server": ["totalEmails"], "unknown": ["colour"],
                "badref": ["parentId"]}
    for key, props in expected.items():
        assert nc[key]["type"] == "invalidProperties", (key, nc[key])
        assert nc[key]["properties"] == props, (key, nc[key])

    # rename (also to a sibling's name: refused), move, cycle
    out = mailbox_set(srv, "alice", update={
        ids["kid"]: {"name": "Kid renamed"},
        ids["dots"]: {"name": "a/b"},
        ids["emoji"]: {"parentId": None},
    })
    assert set(out["updated"]) == {ids["kid"], ids["emoji"]}
    assert out["notUpdated"][ids["dots"]]["properties"] == ["name"]
    out = mailbox_set(srv, "alice", update={
        ids["top"]: {"parentId": ids["kid"]},
        ids["kid"]: {"parentId": ids["kid"]},
        "zzzzzzz": {"name": "ghost"},
    })
    assert out["notUpdated"][ids["top"]]["properties"] == ["parentId"]
    assert out["notUpdated"][ids["kid"]]["properties"] == ["parentId"]
    assert out["notUpdated"]["zzzzzzz"]["type"] == "notFound"
    got = mailboxes(srv, "alice")
    assert got[ids["kid"]]["name"] == "Kid renamed" and got[ids["emoji"]]["parentId"] is None
    assert got[ids["top"]]["parentId"] is None and got[ids["dots"]]["name"] == ".."

    # a parent with children cannot go; destroying parent and children together works
    out = mailbox_set(srv, "alice", destroy=[ids["top"]])
    assert out["notDestroyed"][ids["top"]]["type"] == "mailboxHasChild"
    children = [ids[k] for k in ("kid", "dots", "slash", "spaces", "long")]
    out = mailbox_set(srv, "alice", destroy=[ids["top"], *children, "zzzzzzz"])
    assert sorted(out["destroyed"]) == sorted([ids["top"], *children])
    assert out["notDestroyed"] == {"zzzzzzz": {"type": "notFound"}}
    assert not {ids["top"], *children} & set(mailboxes(srv, "alice"))


def test_depth_limit(srv: MailsrvProc) -> None:
    create = {f"d{i}": {"name": f"Level {i}", **({"parentId": f"#d{i - 1}"} if i else {})} for i in range(11)}
    out = mailbox_set(srv, "alice", create=create)
    assert len(out["created"]) == 10
    assert out["notCreated"]["d10"]["properties"] == ["parentId"]


def test_roles_and_subscriptions(srv: MailsrvProc) -> None:
    inbox = role_id(srv, "alice", "inbox")
    out = mailbox_set(srv, "alice", create={
        "arch": {"name": "Old stuff", "role": "Archive"},
        "twice": {"name": "Another archive", "role": "archive"},
        "inbox2": {"name": "Second inbox", "role": "inbox"},
        "weird": {"name": "Weird", "role": "no-such-role"},
    })
    arch = out["created"]["arch"]["id"]
    assert out["created"]["arch"]["role"] == "archive"
    for key in ("twice", "inbox2", "weird"):
        assert out["notCreated"][key]["properties"] == ["role"], key
    out = mailbox_set(srv, "alice", update={
        arch: {"role": None, "isSubscribed": True, "sortOrder": 7},
        inbox: {"role": None},
    })
    assert list(out["updated"]) == [arch]
    assert out["notUpdated"][inbox]["properties"] == ["role"]
    got = mailboxes(srv, "alice")[arch]
    assert (got["role"], got["isSubscribed"], got["sortOrder"]) == (None, True, 7)
    out = mailbox_set(srv, "alice", destroy=[inbox])
    assert out["notDestroyed"][inbox]["type"] == "forbidden"
    bad = mailbox_set(srv, "alice", update={arch: {"sortOrder": -1, }})
    assert bad["notUpdated"][arch]["properties"] == ["sortOrder"]


def test_if_in_state_and_states(srv: MailsrvProc) -> None:
    state = call(srv, "alice", "Mailbox/get", {"ids": []})["state"]
    err = call_error(srv, "alice", "Mailbox/set", {"ifInState": "999999", "create": {"a": {"name": "Never"}}})
    assert err["type"] == "stateMismatch"
    assert all(m["name"] != "Never" for m in mailboxes(srv, "alice").values())
    out = mailbox_set(srv, "alice", ifInState=state, create={"a": {"name": "Once"}})
    assert out["oldState"] == state and out["newState"] != state
    assert call(srv, "alice", "Mailbox/get", {"ids": []})["state"] == out["newState"]
    err = call_error(srv, "alice", "Mailbox/set", {"ifInState": state, "destroy": [out["created"]["a"]["id"]]})
    assert err["type"] == "stateMismatch"


def test_destroy_with_emails(srv: MailsrvProc) -> None:
    inbox = role_id(srv, "alice", "inbox")
    out = mailbox_set(srv, "alice", create={"a": {"name": "Doomed"}, "b": {"name": "Keeper"}})
    doomed, keeper = out["created"]["a"]["id"], out["created"]["b"]["id"]
    only = import_email(srv, "alice", make_message("only doomed", "only@x"), [doomed])
    shared = import_email(srv, "alice", make_message("shared", "shared@x"), [doomed, keeper])
    elsewhere = import_email(srv, "alice", make_message("inbox", "inbox@x"), [inbox])
    email_state = call(srv, "alice", "Email/set", {})["oldState"]

    out = mailbox_set(srv, "alice", destroy=[doomed])
    assert out["notDestroyed"][doomed]["type"] == "mailboxHasEmail"
    out = mailbox_set(srv, "alice", destroy=[doomed], onDestroyRemoveEmails=True)
    assert out["destroyed"] == [doomed]
    changes = call(srv, "alice", "Email/changes", {"sinceState": email_state})
    assert changes["destroyed"] == [only["id"]]
    assert changes["updated"] == [shared["id"]]
    assert changes["created"] == []
    got = mailboxes(srv, "alice")
    assert got[keeper]["totalEmails"] == 1 and doomed not in got
    assert elsewhere["id"] not in changes["destroyed"] + changes["updated"]
    from mailsrv.server.store import Store
    from mailsrv.server.store.ids import parse_id

    store = Store(srv.data_dir)
    try:
        aid = parse_id(account_id(srv, "alice"))
        assert aid is not None
        left = store.mail.emails(aid, [parse_id(e["id"]) or 0 for e in (only, shared, elsewhere)])
        assert {e.id for e in left.values()} == {parse_id(shared["id"]), parse_id(elsewhere["id"])}
        assert left[parse_id(shared["id"]) or 0].mailbox_ids == [parse_id(keeper)]
    finally:
        store.close()


def test_bad_set_arguments(srv: MailsrvProc) -> None:
    assert call_error(srv, "alice", "Mailbox/set", {"create": ["x"]})["type"] == "invalidArguments"
    assert call_error(srv, "alice", "Mailbox/set", {"destroy": "x"})["type"] == "invalidArguments"
    assert call_error(srv, "alice", "Mailbox/set", {"onDestroyRemoveEmails": "yes"})["type"] == "invalidArguments"
    out = mailbox_set(srv, "alice", create={"x": "not an object"}, update={role_id(srv, "alice", "junk"): ["nope"]})
    assert out["notCreated"]["x"]["type"] == "invalidProperties"
    assert out["notUpdated"][role_id(srv, "alice", "junk")]["type"] == "invalidProperties"
    too_many = {f"c{i}": {"name": f"n{i}"} for i in range(501)}
    assert call_error(srv, "alice", "Mailbox/set", {"create": too_many})["type"] == "requestTooLarge"


# -- Mailbox/changes -----------------------------------------------------------------------------------
def test_changes_updated_properties(srv: MailsrvProc) -> None:
    box = mailbox_set(srv, "alice", create={"c": {"name": "Watched"}})["created"]["c"]["id"]
    state = call(srv, "alice", "Mailbox/get", {"ids": []})["state"]
    import_email(srv, "alice", make_message("watch", "watch@x"), [box])
    ch = call(srv, "alice", "Mailbox/changes", {"sinceState": state})
    assert (ch["created"], ch["updated"], ch["destroyed"]) == ([], [box], [])
    assert ch["updatedProperties"] == ["totalEmails", "unreadEmails", "totalThreads", "unreadThreads"]
    assert ch["oldState"] == state and ch["hasMoreChanges"] is False
    mailbox_set(srv, "alice", update={box: {"name": "Watched too"}})
    ch = call(srv, "alice", "Mailbox/changes", {"sinceState": state})
    assert ch["updated"] == [box] and ch["updatedProperties"] is None
    again = call(srv, "alice", "Mailbox/changes", {"sinceState": ch["newState"]})
    assert (again["created"], again["updated"], again["destroyed"]) == ([], [], [])
    assert again["newState"] == ch["newState"]


# -- Mailbox/query -------------------------------------------------------------------------------------
def test_query(srv: MailsrvProc) -> None:
    out = mailbox_set(srv, "bob", create={
        "p": {"name": "Zeta", "sortOrder": 1},
        "c1": {"name": "beta", "parentId": "#p", "sortOrder": 2, "isSubscribed": True},
        "c2": {"name": "Alpha", "parentId": "#p", "sortOrder": 1},
        "q": {"name": "Able", "sortOrder": 9},
    })
    ids = {k: v["id"] for k, v in out["created"].items()}
    everything = list(mailboxes(srv, "bob"))

    def q(**args: Any) -> dict[str, Any]:
        return call(srv, "bob", "Mailbox/query", args)

    r = q(filter={"parentId": ids["p"]}, sort=[{"property": "name"}])
    assert r["ids"] == [ids["c2"], ids["c1"]] and r["canCalculateChanges"] is False
    r = q(filter={"parentId": ids["p"]}, sort=[{"property": "sortOrder", "isAscending": False}])
    assert r["ids"] == [ids["c1"], ids["c2"]]
    assert q(filter={"name": "ETA"})["ids"] == [ids["p"], ids["c1"]]
    assert q(filter={"role": "inbox"})["ids"] == [role_id(srv, "bob", "inbox")]
    no_role = q(filter={"hasAnyRole": False})["ids"]
    assert set(no_role) == set(ids.values())
    assert q(filter={"isSubscribed": True, "hasAnyRole": False})["ids"] == [ids["c1"]]
    r = q(filter={"operator": "OR", "conditions": [{"name": "alpha"}, {"name": "able"}]}, sort=[{"property": "name"}])
    assert r["ids"] == [ids["q"], ids["c2"]]
    assert set(q(filter={"operator": "NOT", "conditions": [{"hasAnyRole": True}]})["ids"]) == set(ids.values())
    assert q(filter={"parentId": None, "name": "Zeta"})["ids"] == [ids["p"]]

    # tree order: parents first, siblings sorted by name
    tree = q(filter={"hasAnyRole": False}, sort=[{"property": "name"}], sortAsTree=True)["ids"]
    assert tree == [ids["q"], ids["p"], ids["c2"], ids["c1"]]
    mine = {"operator": "AND", "conditions": [{"name": "a"}, {"hasAnyRole": False}]}
    assert q(filter=mine, filterAsTree=True, sortAsTree=True, sort=[{"property": "name"}])["ids"] == [
        ids["q"], ids["p"], ids["c2"], ids["c1"]]
    assert q(filter={"name": "alpha"}, filterAsTree=True)["ids"] == []  # its parent Zeta does not match

    # paging
    full = q(sort=[{"property": "name"}], calculateTotal=True)
    assert full["total"] == len(everything) and len(full["ids"]) == len(everything)
    page = q(sort=[{"property": "name"}], position=1, limit=2, calculateTotal=True)
    assert page["ids"] == full["ids"][1:3] and page["position"] == 1 and page["total"] == len(everything)
    assert q(sort=[{"property": "name"}], position=-2)["ids"] == full["ids"][-2:]
    anchored = q(sort=[{"property": "name"}], anchor=full["ids"][3], anchorOffset=-1, limit=2)
    assert anchored["ids"] == full["ids"][2:4] and anchored["position"] == 2

    def err(**args: Any) -> str:
        return str(call_error(srv, "bob", "Mailbox/query", args)["type"])

    assert err(filter={"colour": "red"}) == "unsupportedFilter"
    assert err(sort=[{"property": "totalEmails"}]) == "unsupportedSort"
    assert err(limit=-1) == "invalidArguments"
    assert err(filter={"isSubscribed": "yes"}) == "invalidArguments"
    assert err(filter={"operator": "XOR", "conditions": []}) == "invalidArguments"
    assert err(anchor="zzzzzzz") == "anchorNotFound"
    qc = call_error(srv, "bob", "Mailbox/queryChanges", {"sinceQueryState": full["queryState"]})
    assert qc["type"] == "cannotCalculateChanges"
