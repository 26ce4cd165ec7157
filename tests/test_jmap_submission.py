"""EmailSubmission against a real mailsrv (RFC 8621 §7): local delivery, the smarthost (an aiosmtpd sink on
a run-time port), implicit Email/set, the sender checks and the vacation auto-reply a submission triggers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailsrv.server.store import Store
from mailsrv.server.store.ids import parse_id
from tests.conftest import MailsrvProc, free_port, start_mailsrv
from tests.test_jmap_objects import add_account, aid, call, calls, error


@dataclass
class Sink:
    """The smarthost: records every message it accepts."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        with self.lock:
            self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 Queued on the smarthost"

    def to(self, rcpt: str) -> list[tuple[str, list[str], bytes]]:
        with self.lock:
            return [m for m in self.messages if rcpt in m[1]]


@pytest.fixture(scope="module")
def sink() -> Iterator[tuple[Sink, int]]:
    handler, port = Sink(), free_port()
    ctl = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False)
    ctl.start()
    try:
        yield handler, port
    finally:
        ctl.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, sink: tuple[Sink, int]) -> Iterator[MailsrvProc]:
    s = start_mailsrv(Path(tmp_path_factory.mktemp("submission")), smarthost=f"127.0.0.1:{sink[1]}",
                      vacation_interval=3600)
    for name in ("alice", "bob", "carol", "dave"):
        add_account(s, name)
    add_account(s, "erin", "erin@example.org", "erin.alias@example.org")
    yield s
    s.stop()


# -- helpers -------------------------------------------------------------------------------------------------
def wait_for(check: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def boxes(srv: MailsrvProc, user: str) -> dict[str, str]:
    """Mailbox ids by role."""
    return {m["role"]: m["id"] for m in call(srv, user, "Mailbox/get", ids=None)["list"] if m["role"]}


def identity(srv: MailsrvProc, user: str) -> str:
    return str(call(srv, user, "Identity/get", ids=None)["list"][0]["id"])


def draft(srv: MailsrvProc, user: str, subject: str, *, sender: str | None = None, to: list[str] | None = None,
          cc: list[str] | None = None, bcc: list[str] | None = None) -> dict[str, Any]:
    """The Email/set creation of a draft in the user's Drafts folder."""
    obj: dict[str, Any] = {
        "mailboxIds": {boxes(srv, user)["drafts"]: True}, "keywords": {"$draft": True},
        "from": [{"name": user.title(), "email": sender or f"{user}@example.org"}], "subject": subject,
        "bodyValues": {"1": {"value": f"Body of {subject}\r\n"}}, "textBody": [{"partId": "1", "type": "text/plain"}],
    }
    for key, value in (("to", to), ("cc", cc), ("bcc", bcc)):
        if value:
            obj[key] = [{"email": a} for a in value]
    return obj


def create_draft(srv: MailsrvProc, user: str, subject: str, **kw: Any) -> str:
    out = call(srv, user, "Email/set", create={"d": draft(srv, user, subject, **kw)})
    assert out["notCreated"] is None, out
    return str(out["created"]["d"]["id"])


def submit(srv: MailsrvProc, user: str, email_id: str, **extra: Any) -> dict[str, Any]:
    return call(srv, user, "EmailSubmission/set", create={"s": {"identityId": identity(srv, user), "emailId": email_id, **extra}})


def inbox_subjects(srv: MailsrvProc, user: str) -> dict[str, bytes]:
    """Subject -> raw message of every email in the user's Inbox, read from the server's store."""
    store = Store(srv.data_dir)
    try:
        account = parse_id(aid(srv, user))
        assert account is not None
        inbox = store.mail.mailbox_by_role(account, "inbox")
        if inbox is None:
            return {}
        ids = [r[0] for r in store.db.q("SELECT email_id FROM email_mailboxes WHERE mailbox_id=?", (inbox.id,))]
        return {str(e.summary.get("subject")): store.blobs.read(e.blob_hash) for e in store.mail.emails(account, ids).values()}
    finally:
        store.close()


# -- tests -----------------------------------------------------------------------------------------------------
def test_submission_delivers_locally_and_moves_the_draft(srv: MailsrvProc) -> None:
    alice = boxes(srv, "alice")
    ident = identity(srv, "alice")
    responses = calls(srv, "alice",
        ("Email/set", {"create": {"d": draft(srv, "alice", "Lunch?", to=["bob@example.org"], bcc=["carol@example.org"])}}),
        ("EmailSubmission/set", {
            "create": {"s": {"identityId": ident, "emailId": "#d"}},
            "onSuccessUpdateEmail": {"#s": {f"mailboxIds/{alice['drafts']}": None, f"mailboxIds/{alice['sent']}": True,
                                            "keywords/$draft": None, "keywords/$seen": True}}}))
    assert [r[0] for r in responses] == ["Email/set", "EmailSubmission/set", "Email/set"]
    email_id = responses[0][1]["created"]["d"]["id"]
    sub = responses[1][1]["created"]["s"]
    assert sub["undoStatus"] == "final" and sub["threadId"] == responses[0][1]["created"]["d"]["threadId"]
    assert sub["envelope"] == {"mailFrom": {"email": "alice@example.org", "parameters": None},
                               "rcptTo": [{"email": "bob@example.org", "parameters": None},
                                          {"email": "carol@example.org", "parameters": None}]}
    assert sub["deliveryStatus"]["bob@example.org"]["delivered"] == "yes"
    assert sub["deliveryStatus"]["carol@example.org"]["delivered"] == "yes"
    assert responses[2][1]["updated"] == {email_id: None}

    (moved,) = call(srv, "alice", "Email/get", ids=[email_id], properties=["mailboxIds", "keywords"])["list"]
    assert moved["mailboxIds"] == {alice["sent"]: True} and moved["keywords"] == {"$seen": True}
    got_bob, got_carol = inbox_subjects(srv, "bob")["Lunch?"], inbox_subjects(srv, "carol")["Lunch?"]
    for raw in (got_bob, got_carol):
        msg = message_from_bytes(raw, policy=policy.default)
        assert msg["From"] == "Alice <alice@example.org>" and msg["Bcc"] is None
        assert "Body of Lunch?" in msg.get_content()

    (stored,) = call(srv, "alice", "EmailSubmission/get", ids=[sub["id"]])["list"]
    assert stored["emailId"] == email_id and stored["identityId"] == ident and stored["dsnBlobIds"] == []


def test_submission_to_remote_recipient_goes_to_the_smarthost(srv: MailsrvProc, sink: tuple[Sink, int]) -> None:
    email_id = create_draft(srv, "alice", "Hello outside", to=["friend@remote.test"], cc=["bob@example.org"])
    out = submit(srv, "alice", email_id, envelope={"mailFrom": {"email": "alice+news@example.org"},
                                                   "rcptTo": [{"email": "friend@remote.test", "parameters": None}]})
    sub = out["created"]["s"]
    assert "envelope" not in sub  # given by the client
    assert sub["deliveryStatus"] == {"friend@remote.test": {"smtpReply": sub["deliveryStatus"]["friend@remote.test"]["smtpReply"],
                                                            "delivered": "queued", "displayed": "unknown"}}
    (mail_from, rcpts, raw) = wait_for(lambda: sink[0].to("friend@remote.test"))[0]
    assert mail_from == "alice+news@example.org" and rcpts == ["friend@remote.test"]
    assert b"Subject: Hello outside" in raw
    assert "Hello outside" not in inbox_subjects(srv, "bob")  # the envelope, not the headers, decides


def test_submission_checks(srv: MailsrvProc) -> None:
    ident = identity(srv, "dave")
    foreign_from = create_draft(srv, "dave", "Spoof", sender="bob@example.org", to=["carol@example.org"])
    to_nobody = create_draft(srv, "dave", "Nobody", to=["nobody@example.org", "carol@example.org"])
    no_rcpt = create_draft(srv, "dave", "Nothing")
    fine = create_draft(srv, "dave", "Fine", to=["carol@example.org"])
    out = call(srv, "dave", "EmailSubmission/set", create={
        "from": {"identityId": ident, "emailId": foreign_from},
        "nobody": {"identityId": ident, "emailId": to_nobody},
        "none": {"identityId": ident, "emailId": no_rcpt},
        "mailfrom": {"identityId": ident, "emailId": fine,
                     "envelope": {"mailFrom": {"email": "bob@example.org"}, "rcptTo": [{"email": "carol@example.org"}]}},
        "badenv": {"identityId": ident, "emailId": fine, "envelope": {"mailFrom": "dave@example.org"}},
        "params": {"identityId": ident, "emailId": fine, "envelope": {
            "mailFrom": {"email": "dave@example.org", "parameters": {"HOLDFOR": "60"}}, "rcptTo": [{"email": "carol@example.org"}]}},
        "noident": {"identityId": "zzzz", "emailId": fine},
        "noemail": {"identityId": ident, "emailId": "zzzz"},
        "pending": {"identityId": ident, "emailId": fine, "undoStatus": "pending"},
        "serverset": {"identityId": ident, "emailId": fine, "sendAt": "2030-01-01T00:00:00Z"},
        "foreignemail": {"identityId": ident, "emailId": create_draft(srv, "alice", "Alice's", to=["carol@example.org"])},
    })
    nc = out["notCreated"]
    assert out["created"] is None and out["oldState"] == out["newState"]
    assert nc["from"]["type"] == "forbiddenFrom"
    assert nc["nobody"]["type"] == "invalidRecipients" and nc["nobody"]["invalidRecipients"] == ["nobody@example.org"]
    assert nc["none"]["type"] == "noRecipients"
    assert nc["mailfrom"]["type"] == "forbiddenMailFrom"
    for key, prop in [("badenv", "envelope"), ("params", "envelope"), ("noident", "identityId"),
                      ("noemail", "emailId"), ("pending", "undoStatus"), ("serverset", "sendAt"),
                      ("foreignemail", "emailId")]:
        assert nc[key]["type"] == "invalidProperties" and nc[key]["properties"] == [prop], (key, nc[key])
    assert not any(s in inbox_subjects(srv, "carol") for s in ("Spoof", "Nobody", "Fine"))  # nothing was sent

    sent = submit(srv, "dave", fine)["created"]["s"]
    assert "Fine" in inbox_subjects(srv, "carol")
    refused = call(srv, "dave", "EmailSubmission/set", update={sent["id"]: {"undoStatus": "canceled"}, "zzz": {}},
                   destroy=["zzz"])
    assert refused["notUpdated"][sent["id"]]["type"] == "cannotUnsend"
    assert refused["notUpdated"]["zzz"]["type"] == "notFound" and refused["notDestroyed"]["zzz"]["type"] == "notFound"
    changed = call(srv, "dave", "EmailSubmission/set", update={sent["id"]: {"emailId": "other"}})
    assert changed["notUpdated"][sent["id"]]["properties"] == ["emailId"]
    assert error(srv, "dave", "EmailSubmission/set", ifInState="nope", create={}) == "stateMismatch"
    assert error(srv, "dave", "EmailSubmission/set", onSuccessDestroyEmail="#s") == "invalidArguments"
    assert error(srv, "bob", "EmailSubmission/set", accountId=aid(srv, "dave"),
                 create={"x": {"identityId": ident, "emailId": fine}}) == "forbidden"


def test_alias_identity_and_from_check(srv: MailsrvProc) -> None:
    made = call(srv, "erin", "Identity/set", create={"a": {"name": "Erin (alias)", "email": "erin.alias@example.org"}})
    alias_identity = made["created"]["a"]["id"]
    via_alias = create_draft(srv, "erin", "From the alias", sender="erin.alias@example.org", to=["carol@example.org"])
    wrong = call(srv, "erin", "EmailSubmission/set",
                 create={"x": {"identityId": identity(srv, "erin"), "emailId": via_alias}})
    assert wrong["notCreated"]["x"]["type"] == "forbiddenFrom"
    ok = call(srv, "erin", "EmailSubmission/set", create={"x": {"identityId": alias_identity, "emailId": via_alias}})
    assert ok["created"]["x"]["envelope"]["mailFrom"]["email"] == "erin.alias@example.org"
    assert "From the alias" in inbox_subjects(srv, "carol")


def test_get_query_changes_and_destroy_with_the_email(srv: MailsrvProc) -> None:
    state = call(srv, "bob", "EmailSubmission/get", ids=None)["state"]
    first = create_draft(srv, "bob", "One", to=["carol@example.org"])
    second = create_draft(srv, "bob", "Two", to=["carol@example.org"])
    s1 = submit(srv, "bob", first)["created"]["s"]
    time.sleep(1.1)  # sendAt has second resolution
    s2 = submit(srv, "bob", second)["created"]["s"]
    listed = call(srv, "bob", "EmailSubmission/get", ids=None, properties=["emailId", "undoStatus"])
    assert listed["list"] == [{"id": s1["id"], "emailId": first, "undoStatus": "final"},
                              {"id": s2["id"], "emailId": second, "undoStatus": "final"}]
    changes = call(srv, "bob", "EmailSubmission/changes", sinceState=state)
    assert changes["created"] == [s1["id"], s2["id"]] and changes["newState"] == listed["state"]

    q = call(srv, "bob", "EmailSubmission/query", sort=[{"property": "sentAt", "isAscending": False}], calculateTotal=True)
    assert q["ids"] == [s2["id"], s1["id"]] and q["total"] == 2
    assert call(srv, "bob", "EmailSubmission/query", filter={"emailIds": [first]})["ids"] == [s1["id"]]
    assert call(srv, "bob", "EmailSubmission/query", filter={"after": s2["sendAt"]})["ids"] == [s2["id"]]
    assert call(srv, "bob", "EmailSubmission/query", filter={"undoStatus": "pending"})["ids"] == []
    assert error(srv, "bob", "EmailSubmission/query", filter={"subject": "x"}) == "unsupportedFilter"

    responses = calls(srv, "bob", ("EmailSubmission/set", {"destroy": [s1["id"]], "onSuccessDestroyEmail": [s1["id"]]}))
    assert [r[0] for r in responses] == ["EmailSubmission/set", "Email/set"]
    assert responses[0][1]["destroyed"] == [s1["id"]] and responses[1][1]["destroyed"] == [first]
    assert call(srv, "bob", "Email/get", ids=[first], properties=["id"])["notFound"] == [first]
    assert call(srv, "bob", "EmailSubmission/changes", sinceState=listed["state"])["destroyed"] == [s1["id"]]


def test_submission_triggers_the_recipients_vacation_reply(srv: MailsrvProc) -> None:
    out = call(srv, "carol", "VacationResponse/set", update={"singleton": {
        "isEnabled": True, "subject": "Carol is away", "textBody": "Back next week"}})
    assert out["updated"] == {"singleton": None}
    email_id = create_draft(srv, "dave", "Are you there?", to=["carol@example.org"])
    submit(srv, "dave", email_id)
    reply = wait_for(lambda: inbox_subjects(srv, "dave").get("Carol is away"))
    msg = message_from_bytes(reply, policy=policy.default)
    assert msg["Auto-Submitted"] == "auto-replied" and "Back next week" in msg.get_content()
    call(srv, "carol", "VacationResponse/set", update={"singleton": {"isEnabled": False}})
