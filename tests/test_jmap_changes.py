"""Email/changes, Mailbox/changes and Thread/changes: exact sets, paging and the bounded history."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MailsrvProc, start_mailsrv
from tests.test_jmap_mailbox import call, call_error, import_email, mailbox_set, make_message, role_id


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailsrvProc]:
    s = start_mailsrv(Path(tmp_path_factory.mktemp("changes")))
    s.add_account("alice")
    s.add_account("bob")
    yield s
    s.stop()


def states(srv: MailsrvProc, user: str) -> dict[str, str]:
    """The current Email, Mailbox and Thread states of ``user``."""
    return {
        "Email": call(srv, user, "Email/set", {})["oldState"],
        "Mailbox": call(srv, user, "Mailbox/get", {"ids": []})["state"],
        "Thread": call(srv, user, "Thread/get", {"ids": []})["state"],
    }


def changes(srv: MailsrvProc, user: str, type_: str, since: str, **args: Any) -> dict[str, Any]:
    return call(srv, user, f"{type_}/changes", {"sinceState": since, **args})


def sets(ch: dict[str, Any]) -> tuple[set[str], set[str], set[str]]:
    return set(ch["created"]), set(ch["updated"]), set(ch["destroyed"])


def test_flag_move_destroy_are_reflected_exactly(srv: MailsrvProc) -> None:
    inbox, trash = role_id(srv, "alice", "inbox"), role_id(srv, "alice", "trash")
    folder = mailbox_set(srv, "alice", create={"f": {"name": "Folder"}})["created"]["f"]["id"]
    s0 = states(srv, "alice")
    root = import_email(srv, "alice", make_message("root", "root@c"), [inbox])
    reply = import_email(srv, "alice", make_message("Re: root", "reply@c", in_reply_to="root@c"), [folder])
    s1 = states(srv, "alice")
    assert sets(changes(srv, "alice", "Email", s0["Email"])) == ({root["id"], reply["id"]}, set(), set())
    assert sets(changes(srv, "alice", "Thread", s0["Thread"])) == ({root["threadId"]}, set(), set())
    mb = changes(srv, "alice", "Mailbox", s0["Mailbox"])
    assert sets(mb) == (set(), {inbox, folder}, set()) and mb["updatedProperties"] is not None

    # a flag change: the email, and the counts of its mailbox; the thread is unchanged
    call(srv, "alice", "Email/set", {"update": {root["id"]: {"keywords/$seen": True}}})
    s2 = states(srv, "alice")
    assert sets(changes(srv, "alice", "Email", s1["Email"])) == (set(), {root["id"]}, set())
    mb = changes(srv, "alice", "Mailbox", s1["Mailbox"])
    assert sets(mb) == (set(), {inbox}, set())
    assert mb["updatedProperties"] == ["totalEmails", "unreadEmails", "totalThreads", "unreadThreads"]
    assert sets(changes(srv, "alice", "Thread", s1["Thread"])) == (set(), set(), set())
    assert s2["Thread"] == s1["Thread"]

    # a flag that does not affect counts: only the email
    call(srv, "alice", "Email/set", {"update": {root["id"]: {"keywords/$flagged": True}}})
    s3 = states(srv, "alice")
    assert sets(changes(srv, "alice", "Email", s2["Email"])) == (set(), {root["id"]}, set())
    assert s3["Mailbox"] == s2["Mailbox"] and s3["Thread"] == s2["Thread"]

    # a move: the email, the mailbox it left and the one it entered
    call(srv, "alice", "Email/set", {"update": {reply["id"]: {"mailboxIds": {trash: True}}}})
    s4 = states(srv, "alice")
    assert sets(changes(srv, "alice", "Email", s3["Email"])) == (set(), {reply["id"]}, set())
    assert sets(changes(srv, "alice", "Mailbox", s3["Mailbox"])) == (set(), {folder, trash}, set())
    assert s4["Thread"] == s3["Thread"]

    # destroying one email of two: the thread is updated; the last one: the thread is destroyed
    call(srv, "alice", "Email/set", {"destroy": [reply["id"]]})
    s5 = states(srv, "alice")
    assert sets(changes(srv, "alice", "Email", s4["Email"])) == (set(), set(), {reply["id"]})
    assert sets(changes(srv, "alice", "Thread", s4["Thread"])) == (set(), {root["threadId"]}, set())
    assert sets(changes(srv, "alice", "Mailbox", s4["Mailbox"])) == (set(), {trash}, set())
    call(srv, "alice", "Email/set", {"destroy": [root["id"]]})
    assert sets(changes(srv, "alice", "Thread", s5["Thread"])) == (set(), set(), {root["threadId"]})
    # created and destroyed since s0: neither shows up; the mailbox rename shows with all properties
    assert sets(changes(srv, "alice", "Email", s0["Email"])) == (set(), set(), set())
    assert sets(changes(srv, "alice", "Thread", s0["Thread"])) == (set(), set(), set())
    mailbox_set(srv, "alice", update={folder: {"name": "Renamed"}}, destroy=[])
    mb = changes(srv, "alice", "Mailbox", s5["Mailbox"])
    assert folder in mb["updated"] and mb["updatedProperties"] is None


def test_mailbox_created_and_destroyed(srv: MailsrvProc) -> None:
    s0 = states(srv, "alice")
    out = mailbox_set(srv, "alice", create={"a": {"name": "Short-lived"}, "b": {"name": "Stays"}})
    a, b = out["created"]["a"]["id"], out["created"]["b"]["id"]
    s1 = states(srv, "alice")
    mailbox_set(srv, "alice", destroy=[a])
    assert sets(changes(srv, "alice", "Mailbox", s0["Mailbox"])) == ({b}, set(), set())
    assert sets(changes(srv, "alice", "Mailbox", s1["Mailbox"])) == (set(), set(), {a})


def test_max_changes_paging(srv: MailsrvProc) -> None:
    inbox = role_id(srv, "bob", "inbox")
    start = states(srv, "bob")["Email"]
    made = [import_email(srv, "bob", make_message(f"page {i}", f"page-{i}@c"), [inbox])["id"] for i in range(5)]
    seen: list[str] = []
    since, pages = start, 0
    while True:
        page = changes(srv, "bob", "Email", since, maxChanges=2)
        assert len(page["created"]) <= 2 and page["oldState"] == since
        seen += page["created"]
        since, pages = page["newState"], pages + 1
        if not page["hasMoreChanges"]:
            break
        assert pages < 10
    assert seen == made and pages == 3
    assert since == states(srv, "bob")["Email"]
    assert changes(srv, "bob", "Email", start, maxChanges=100)["hasMoreChanges"] is False


def test_bad_arguments(srv: MailsrvProc) -> None:
    for type_ in ("Email", "Mailbox", "Thread"):
        assert call_error(srv, "alice", f"{type_}/changes", {"sinceState": "0", "maxChanges": 0})["type"] == "invalidArguments"
        assert call_error(srv, "alice", f"{type_}/changes", {})["type"] == "invalidArguments"
        for garbage in ("not-a-state", "99999999", "-1"):
            err = call_error(srv, "alice", f"{type_}/changes", {"sinceState": garbage})
            assert err["type"] == "cannotCalculateChanges", (type_, garbage)


def test_history_limit_gives_cannot_calculate_changes(mailsrv_factory: Callable[..., MailsrvProc]) -> None:
    srv = mailsrv_factory("short", jmap={"changes_max_history": 5})
    srv.add_account("alice")
    inbox = role_id(srv, "alice", "inbox")
    old = states(srv, "alice")
    ids = [import_email(srv, "alice", make_message(f"h{i}", f"h{i}@c"), [inbox])["id"] for i in range(3)]
    recent = states(srv, "alice")
    for i in range(3, 8):
        ids.append(import_email(srv, "alice", make_message(f"h{i}", f"h{i}@c"), [inbox])["id"])
    for type_ in ("Email", "Mailbox", "Thread"):
        err = call_error(srv, "alice", f"{type_}/changes", {"sinceState": old[type_]})
        assert err["type"] == "cannotCalculateChanges", type_
    # a client that is only a little behind still gets its changes
    assert changes(srv, "alice", "Email", recent["Email"])["created"] == ids[3:]
