"""Identity, VacationResponse, SieveScript, Blob and Quota against a real mailsrv
(RFC 8621 §6 and §8, RFC 9661, RFC 9404, RFC 9425)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from mailsrv.server.store import Store
from mailsrv.server.store.ids import parse_id
from tests.conftest import USER_PASSWORD, MailsrvProc, start_mailsrv

CORE = "urn:ietf:params:jmap:core"
MAIL = "urn:ietf:params:jmap:mail"
SUBMISSION = "urn:ietf:params:jmap:submission"
VACATION = "urn:ietf:params:jmap:vacationresponse"
SIEVE = "urn:ietf:params:jmap:sieve"
BLOB = "urn:ietf:params:jmap:blob"
QUOTA = "urn:ietf:params:jmap:quota"
USING = [CORE, MAIL, SUBMISSION, VACATION, SIEVE, BLOB, QUOTA]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailsrvProc]:
    s = start_mailsrv(Path(tmp_path_factory.mktemp("objects")))
    for name in ("alice", "bob", "carol", "dave", "frank"):
        add_account(s, name)
    add_account(s, "erin", "erin@example.org", "e.smith@example.org", description="Erin Smith")
    yield s
    s.stop()


def add_account(srv: MailsrvProc, name: str, *emails: str, description: str = "") -> None:
    """Create an account through the management API (quicker than the CLI)."""
    body = {"type": "individual", "name": name, "secrets": [USER_PASSWORD], "description": description,
            "emails": list(emails) or [f"{name}@example.org"]}
    r = requests.post(f"{srv.url}/api/principal", json=body, auth=srv.admin, timeout=10)
    assert r.status_code == 200, r.text
    srv.accounts[name] = USER_PASSWORD


# -- helpers -------------------------------------------------------------------------------------------------
def aid(srv: MailsrvProc, user: str) -> str:
    return str(srv.session(user)["primaryAccounts"][MAIL])


def calls(srv: MailsrvProc, user: str, *invocations: tuple[str, dict[str, Any]]) -> list[list[Any]]:
    """Several method calls in one request, each with the user's accountId unless given."""
    account = aid(srv, user)
    return srv.jmap(user, [[name, {"accountId": account, **args}, str(n)] for n, (name, args) in enumerate(invocations)],
                    USING)


def call(srv: MailsrvProc, user: str, name: str, **args: Any) -> dict[str, Any]:
    (resp,) = calls(srv, user, (name, args))
    assert resp[0] == name, resp
    return dict(resp[1])


def error(srv: MailsrvProc, user: str, name: str, **args: Any) -> str:
    (resp,) = calls(srv, user, (name, args))
    assert resp[0] == "error", resp
    return str(resp[1]["type"])


def upload(srv: MailsrvProc, user: str, data: bytes, content_type: str = "application/sieve") -> str:
    r = requests.post(f"{srv.url}/jmap/upload/{aid(srv, user)}/", data=data, auth=(user, USER_PASSWORD),
                      headers={"Content-Type": content_type}, timeout=10)
    assert r.status_code == 201, r.text
    return str(r.json()["blobId"])


def stored_rows(srv: MailsrvProc, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows read straight from the server's database by a second connection."""
    store = Store(srv.data_dir)
    try:
        return [tuple(r) for r in store.db.q(sql, params)]
    finally:
        store.close()


def principal(srv: MailsrvProc, user: str) -> int:
    n = parse_id(aid(srv, user))
    assert n is not None
    return n


def import_message(srv: MailsrvProc, user: str, raw: bytes) -> dict[str, Any]:
    inbox = next(m["id"] for m in call(srv, user, "Mailbox/get", ids=None)["list"] if m["role"] == "inbox")
    out = call(srv, user, "Email/import", emails={"m": {"blobId": upload(srv, user, raw, "message/rfc822"),
                                                          "mailboxIds": {inbox: True}}})
    assert out["notCreated"] is None, out
    return dict(out["created"]["m"]) | {"mailboxId": inbox}


MESSAGE = (b"From: Carol <carol@example.net>\r\nTo: alice@example.org\r\nSubject: blob test\r\n"
           b"Message-ID: <blob-test@example.net>\r\n\r\nHello\r\n")


# -- access ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Identity/get", "VacationResponse/get", "SieveScript/get", "Quota/get",
                                  "EmailSubmission/get", "Blob/get", "SieveScript/query", "Quota/query"])
def test_foreign_and_unknown_accounts(srv: MailsrvProc, name: str) -> None:
    args: dict[str, Any] = {"ids": []} if name == "Blob/get" else {}
    assert error(srv, "bob", name, accountId=aid(srv, "alice"), **args) == "forbidden"
    assert error(srv, "bob", name, accountId="zzzzzz", **args) == "accountNotFound"


def test_foreign_account_set_methods_are_forbidden(srv: MailsrvProc) -> None:
    alice = aid(srv, "alice")
    attempts: list[tuple[str, dict[str, Any]]] = [("Identity/set", {"create": {"x": {"email": "bob@example.org"}}}),
                                                  ("VacationResponse/set", {"update": {"singleton": {"isEnabled": True}}}),
                                                  ("SieveScript/set", {"destroy": ["a"]}),
                                                  ("Blob/upload", {"create": {"x": {"data": [{"data:asText": "x"}]}}})]
    for name, args in attempts:
        assert error(srv, "bob", name, accountId=alice, **args) == "forbidden"
    identities = call(srv, "alice", "Identity/get", ids=None)["list"]
    assert all(i["email"] == "alice@example.org" for i in identities)
    assert call(srv, "alice", "VacationResponse/get", ids=None)["list"][0]["isEnabled"] is False


def test_capability_must_be_in_using(srv: MailsrvProc) -> None:
    (resp,) = srv.jmap("alice", [["Identity/get", {"accountId": aid(srv, "alice")}, "0"]], [CORE, MAIL])
    assert resp[0] == "error" and resp[1]["type"] == "unknownMethod"


# -- Identity --------------------------------------------------------------------------------------------------
def test_identity_default_created_on_first_get(srv: MailsrvProc) -> None:
    (ident,) = call(srv, "erin", "Identity/get", ids=None)["list"]
    assert ident == {"id": ident["id"], "name": "Erin Smith", "email": "erin@example.org", "replyTo": None,
                     "bcc": None, "textSignature": "", "htmlSignature": "", "mayDelete": True}
    again = call(srv, "erin", "Identity/get", ids=None)
    assert [i["id"] for i in again["list"]] == [ident["id"]]
    rows = stored_rows(srv, "SELECT id, data FROM identities WHERE account_id=?", principal(srv, "erin"))
    assert len(rows) == 1 and json.loads(rows[0][1])["email"] == "erin@example.org"


def test_identity_set_round_trip_and_changes(srv: MailsrvProc) -> None:
    first = call(srv, "erin", "Identity/get", ids=None)
    state = first["state"]
    created = call(srv, "erin", "Identity/set", create={"w": {
        "name": "Erin at work", "email": "E.Smith@example.org", "replyTo": [{"name": "Desk", "email": "desk@example.net"}],
        "bcc": [{"email": "archive@example.net"}], "htmlSignature": "<b>E</b>"}})
    new = created["created"]["w"]
    assert new["mayDelete"] is True and new["textSignature"] == "" and "name" not in new
    got = call(srv, "erin", "Identity/get", ids=[new["id"]], properties=["email", "replyTo", "bcc", "htmlSignature"])
    assert got["list"] == [{"id": new["id"], "email": "E.Smith@example.org",
                            "replyTo": [{"name": "Desk", "email": "desk@example.net"}],
                            "bcc": [{"name": None, "email": "archive@example.net"}], "htmlSignature": "<b>E</b>"}]

    upd = call(srv, "erin", "Identity/set", update={new["id"]: {"textSignature": "-- E", "replyTo": None,
                                                                  "email": "e.smith@example.org"}})
    assert upd["updated"] == {new["id"]: None}
    (after,) = call(srv, "erin", "Identity/get", ids=[new["id"]])["list"]
    assert after["textSignature"] == "-- E" and after["replyTo"] is None and after["name"] == "Erin at work"

    changes = call(srv, "erin", "Identity/changes", sinceState=state)
    assert changes["created"] == [new["id"]] and changes["updated"] == [] and changes["newState"] == upd["newState"]
    gone = call(srv, "erin", "Identity/set", destroy=[new["id"], "zzz"])
    assert gone["destroyed"] == [new["id"]] and gone["notDestroyed"]["zzz"]["type"] == "notFound"
    changes = call(srv, "erin", "Identity/changes", sinceState=upd["newState"])
    assert changes["destroyed"] == [new["id"]]
    assert call(srv, "erin", "Identity/get", ids=[new["id"]])["notFound"] == [new["id"]]


def test_identity_set_errors(srv: MailsrvProc) -> None:
    (own,) = call(srv, "carol", "Identity/get", ids=None)["list"]
    out = call(srv, "carol", "Identity/set", create={
        "foreign": {"email": "alice@example.org"},
        "unhosted": {"email": "carol@elsewhere.test"},
        "noemail": {"name": "x"},
        "badreply": {"email": "carol@example.org", "replyTo": [{"email": "not an address"}]},
        "badname": {"email": "carol@example.org", "name": 7},
        "serverset": {"email": "carol@example.org", "mayDelete": False},
        "unknown": {"email": "carol@example.org", "colour": "red"},
    }, update={own["id"]: {"email": "carol2@example.org"}, "zzz": {"name": "x"}})
    nc = out["notCreated"]
    assert nc["foreign"]["type"] == "forbiddenFrom" and nc["unhosted"]["type"] == "forbiddenFrom"
    assert nc["noemail"] == {"type": "invalidProperties", "properties": ["email"], "description": nc["noemail"]["description"]}
    for key, prop in [("badreply", "replyTo"), ("badname", "name"), ("serverset", "mayDelete"), ("unknown", "colour")]:
        assert nc[key]["type"] == "invalidProperties" and nc[key]["properties"] == [prop], nc[key]
    assert out["created"] is None and out["oldState"] == out["newState"]
    assert out["notUpdated"][own["id"]]["properties"] == ["email"]
    assert out["notUpdated"]["zzz"]["type"] == "notFound"
    assert error(srv, "carol", "Identity/set", ifInState="nope", create={}) == "stateMismatch"
    assert error(srv, "carol", "Identity/set", create=["x"]) == "invalidArguments"
    assert error(srv, "carol", "Identity/get", properties=["id", "colour"]) == "invalidArguments"
    assert error(srv, "carol", "Identity/changes", sinceState="999999") == "cannotCalculateChanges"


# -- VacationResponse ------------------------------------------------------------------------------------------
def test_vacation_round_trip_and_stored_shape(srv: MailsrvProc) -> None:
    before = call(srv, "dave", "VacationResponse/get", ids=None)
    assert before["list"] == [{"id": "singleton", "isEnabled": False, "fromDate": None, "toDate": None,
                               "subject": None, "textBody": None, "htmlBody": None}]
    assert stored_rows(srv, "SELECT data FROM vacation WHERE account_id=?", principal(srv, "dave")) == []
    out = call(srv, "dave", "VacationResponse/set", ifInState=before["state"], update={"singleton": {
        "isEnabled": True, "fromDate": "2030-01-01T00:00:00Z", "subject": "Away", "textBody": "Back soon"}})
    assert out["updated"] == {"singleton": None} and out["newState"] != before["state"]
    (data,) = stored_rows(srv, "SELECT data FROM vacation WHERE account_id=?", principal(srv, "dave"))
    assert json.loads(data[0]) == {"isEnabled": True, "fromDate": "2030-01-01T00:00:00Z", "toDate": None,
                                   "subject": "Away", "textBody": "Back soon", "htmlBody": None}
    call(srv, "dave", "VacationResponse/set", update={"singleton": {"htmlBody": "<p>Back</p>", "fromDate": None}})
    got = call(srv, "dave", "VacationResponse/get", ids=["singleton", "other"], properties=["isEnabled", "htmlBody", "fromDate"])
    assert got["list"] == [{"id": "singleton", "isEnabled": True, "htmlBody": "<p>Back</p>", "fromDate": None}]
    assert got["notFound"] == ["other"] and got["state"] != out["newState"]


def test_vacation_singleton_rules_and_errors(srv: MailsrvProc) -> None:
    state = call(srv, "bob", "VacationResponse/get", ids=None)["state"]
    out = call(srv, "bob", "VacationResponse/set", create={"x": {"isEnabled": True}}, destroy=["singleton"],
               update={"other": {"isEnabled": True}})
    assert out["notCreated"]["x"]["type"] == "singleton"
    assert out["notDestroyed"]["singleton"]["type"] == "singleton"
    assert out["notUpdated"]["other"]["type"] == "notFound"
    bad = call(srv, "bob", "VacationResponse/set", update={"singleton": {"isEnabled": "yes"}})
    assert bad["notUpdated"]["singleton"]["properties"] == ["isEnabled"]
    for patch, prop in [({"fromDate": "tomorrow"}, "fromDate"), ({"toDate": "2030-01-01T00:00:00+02:00"}, "toDate"),
                        ({"subject": 5}, "subject"), ({"reply": "x"}, "reply")]:
        bad = call(srv, "bob", "VacationResponse/set", update={"singleton": patch})
        assert bad["notUpdated"]["singleton"]["properties"] == [prop], patch
    assert call(srv, "bob", "VacationResponse/get", ids=None)["state"] == state
    assert error(srv, "bob", "VacationResponse/set", ifInState="x", update={}) == "stateMismatch"


# -- SieveScript -----------------------------------------------------------------------------------------------
FILTER = b'require ["fileinto"];\r\nif header :contains "subject" "[list]" {\r\n  fileinto "Lists";\r\n} else {\r\n  keep;\r\n}\r\n'
OTHER = b"# just keep\r\nkeep;\r\n"


def scripts(srv: MailsrvProc, user: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in call(srv, user, "SieveScript/get", ids=None)["list"]}


def test_sieve_create_activate_switch_and_destroy(srv: MailsrvProc) -> None:
    blob_a, blob_b = upload(srv, "alice", FILTER), upload(srv, "alice", OTHER)
    first = call(srv, "alice", "SieveScript/set", create={"a": {"name": "lists", "blobId": blob_a}},
                 onSuccessActivateScript="#a")
    a = first["created"]["a"]
    assert a["isActive"] is True and a["blobId"] == hashlib.sha256(FILTER).hexdigest()
    second = call(srv, "alice", "SieveScript/set", create={"b": {"name": "plain", "blobId": blob_b}},
                  onSuccessActivateScript="#b")
    b = second["created"]["b"]
    assert b["isActive"] is True and second["updated"] == {a["id"]: {"isActive": False}}
    now = scripts(srv, "alice")
    assert now["lists"]["isActive"] is False and now["plain"]["isActive"] is True
    assert now["plain"]["blobId"] == b["blobId"]

    refused = call(srv, "alice", "SieveScript/set", destroy=[b["id"]], onSuccessDeactivateScript=True)
    assert refused["notDestroyed"][b["id"]]["type"] == "scriptIsActive"
    assert scripts(srv, "alice")["plain"]["isActive"] is True  # nothing happens when anything failed
    off = call(srv, "alice", "SieveScript/set", onSuccessDeactivateScript=True)
    assert off["updated"] == {b["id"]: {"isActive": False}}
    assert not any(s["isActive"] for s in scripts(srv, "alice").values())
    gone = call(srv, "alice", "SieveScript/set", destroy=[b["id"]], onSuccessActivateScript=a["id"])
    assert gone["destroyed"] == [b["id"]] and gone["updated"] == {a["id"]: {"isActive": True}}
    assert set(scripts(srv, "alice")) == {"lists"}

    # the script text is readable as a blob of the account, also after the upload expired
    blob = call(srv, "alice", "Blob/get", ids=[a["blobId"]], properties=["data:asText"])["list"][0]
    assert blob["data:asText"] == FILTER.decode()
    changes = call(srv, "alice", "SieveScript/changes", sinceState=first["oldState"])
    assert changes["created"] == [a["id"]] and changes["destroyed"] == []


def test_sieve_set_errors(srv: MailsrvProc) -> None:
    good, garbage = upload(srv, "bob", OTHER), upload(srv, "bob", b"this is not a sieve script")
    existing = call(srv, "bob", "SieveScript/set", create={"x": {"name": "mine", "blobId": good}})["created"]["x"]
    foreign = upload(srv, "alice", OTHER + b"# alice\r\n")
    out = call(srv, "bob", "SieveScript/set", create={
        "dup": {"name": "mine", "blobId": good},
        "garbage": {"name": "g", "blobId": garbage},
        "foreign": {"name": "f", "blobId": foreign},
        "missing": {"name": "m", "blobId": "0" * 64},
        "active": {"name": "act", "blobId": good, "isActive": True},
        "noblob": {"name": "nb"},
        "ctrl": {"name": "a\x07b", "blobId": good},
    }, update={existing["id"]: {"isActive": True}}, destroy=["zzz"], onSuccessActivateScript=existing["id"])
    nc = out["notCreated"]
    assert nc["dup"]["type"] == "alreadyExists" and nc["dup"]["existingId"] == existing["id"]
    assert nc["garbage"]["type"] == "invalidSieve" and "line 1" in nc["garbage"]["description"]
    assert nc["foreign"]["type"] == "blobNotFound" and nc["missing"]["type"] == "blobNotFound"
    assert nc["active"]["properties"] == ["isActive"] and nc["noblob"]["properties"] == ["blobId"]
    assert nc["ctrl"]["properties"] == ["name"]
    assert out["notUpdated"][existing["id"]]["properties"] == ["isActive"]
    assert out["notDestroyed"]["zzz"]["type"] == "notFound"
    assert out["created"] is None and out["updated"] is None  # and the activation was skipped
    assert scripts(srv, "bob")["mine"]["isActive"] is False

    renamed = call(srv, "bob", "SieveScript/set", update={existing["id"]: {"name": "renamed", "blobId": upload(srv, "bob", FILTER)}})
    assert renamed["updated"] == {existing["id"]: None}
    assert scripts(srv, "bob")["renamed"]["blobId"] == hashlib.sha256(FILTER).hexdigest()
    unnamed = call(srv, "bob", "SieveScript/set", create={"n": {"name": None, "blobId": good}})["created"]["n"]
    assert unnamed["name"] and unnamed["name"] in scripts(srv, "bob")


def test_sieve_query(srv: MailsrvProc) -> None:
    blob = upload(srv, "frank", OTHER)
    made = call(srv, "frank", "SieveScript/set", create={n: {"name": n, "blobId": blob} for n in ("beta", "alpha", "Gamma")},
                onSuccessActivateScript="#beta")["created"]
    q = call(srv, "frank", "SieveScript/query", sort=[{"property": "name"}], calculateTotal=True)
    assert q["ids"] == [made["Gamma"]["id"], made["alpha"]["id"], made["beta"]["id"]] and q["total"] == 3
    assert call(srv, "frank", "SieveScript/query", filter={"isActive": True})["ids"] == [made["beta"]["id"]]
    assert call(srv, "frank", "SieveScript/query", filter={"name": "GAM"})["ids"] == [made["Gamma"]["id"]]
    q = call(srv, "frank", "SieveScript/query", sort=[{"property": "isActive", "isAscending": False}], limit=1)
    assert q["ids"] == [made["beta"]["id"]]
    assert error(srv, "frank", "SieveScript/query", filter={"size": 3}) == "unsupportedFilter"
    assert error(srv, "frank", "SieveScript/query", sort=[{"property": "size"}]) == "unsupportedSort"


VALID_SCRIPTS = [
    b"",
    b"keep;",
    b"# only a comment\n",
    b'require "vacation";\nvacation :days 7 :subject "Away" "I am away";\n',
    b'require ["fileinto", "imap4flags"];\r\nif allof (header :is "from" "a@b.c", not exists "x-spam") {\r\n'
    b'  addflag "\\\\Seen"; fileinto "A";\r\n} elsif size :over 100K { discard; stop; } else { keep; }\r\n',
    b'/* multi\r\nline comment */ if true { redirect "x@example.org"; }\r\n',
    b'require "reject";\nreject text:\nSorry, not here.\n.. dot-stuffed line\n.\n;\n',
]
INVALID_SCRIPTS = [
    b"this is not a sieve script",
    b"keep",
    b"if true { keep; ",
    b"keep; }",
    b'fileinto "unterminated;',
    b"/* never closed",
    b'if header :is "a" "b";',
    b"else { keep; }",
    b'keep; require "fileinto";',
    b"if (true, { keep; }",
    b"discard; @",
    b"\xff\xfe keep;",
]


def test_sieve_validate(srv: MailsrvProc) -> None:
    blobs = [upload(srv, "dave", s) for s in VALID_SCRIPTS + INVALID_SCRIPTS]
    errors = []
    for start in range(0, len(blobs), 10):  # within maxCallsInRequest
        responses = calls(srv, "dave", *[("SieveScript/validate", {"blobId": b}) for b in blobs[start : start + 10]])
        errors += [r[1]["error"] for r in responses]
    assert errors[: len(VALID_SCRIPTS)] == [None] * len(VALID_SCRIPTS)
    for script, err in zip(INVALID_SCRIPTS, errors[len(VALID_SCRIPTS):], strict=True):
        assert err is not None and err["type"] == "invalidSieve", script
    foreign = upload(srv, "alice", b"keep; # alice's\n")
    assert call(srv, "dave", "SieveScript/validate", blobId=foreign)["error"]["type"] == "blobNotFound"
    assert error(srv, "dave", "SieveScript/validate") == "invalidArguments"


# -- Blob ------------------------------------------------------------------------------------------------------
def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_blob_get_digests_data_and_ranges(srv: MailsrvProc) -> None:
    text = "Grüße aus dem Blob\n".encode()
    blob = upload(srv, "bob", text, "text/plain")
    (got,) = call(srv, "bob", "Blob/get", ids=[blob], properties=["data:asText", "digest:sha-256", "digest:sha", "size"])["list"]
    assert got == {"id": blob, "data:asText": text.decode(), "digest:sha-256": b64(hashlib.sha256(text).digest()),
                   "digest:sha": b64(hashlib.sha1(text).digest()), "size": len(text)}
    (default,) = call(srv, "bob", "Blob/get", ids=[blob])["list"]
    assert default == {"id": blob, "data:asText": text.decode(), "size": len(text)}
    (part,) = call(srv, "bob", "Blob/get", ids=[blob], offset=3, length=4, properties=["data:asBase64", "digest:sha-256"])["list"]
    assert part == {"id": blob, "data:asBase64": b64(text[3:7]), "digest:sha-256": b64(hashlib.sha256(text[3:7]).digest())}
    (tail,) = call(srv, "bob", "Blob/get", ids=[blob], offset=10, length=1000, properties=["data", "size"])["list"]
    assert tail == {"id": blob, "isTruncated": True, "data:asText": text[10:].decode(), "size": len(text)}

    binary = bytes(range(256))
    bin_blob = upload(srv, "bob", binary, "application/octet-stream")
    (as_data,) = call(srv, "bob", "Blob/get", ids=[bin_blob], properties=["data"])["list"]
    assert as_data == {"id": bin_blob, "data:asBase64": b64(binary), "isEncodingProblem": True}
    (as_text,) = call(srv, "bob", "Blob/get", ids=[bin_blob], properties=["data:asText"])["list"]
    assert as_text == {"id": bin_blob, "data:asText": None, "isEncodingProblem": True}


def test_blob_get_isolation_and_errors(srv: MailsrvProc) -> None:
    alices = upload(srv, "alice", b"alice's secret blob", "text/plain")
    out = call(srv, "bob", "Blob/get", ids=[alices, "not-a-blob", "0" * 64])
    assert out["list"] == [] and out["notFound"] == [alices, "not-a-blob", "0" * 64]
    assert error(srv, "bob", "Blob/get", ids=None) == "invalidArguments"
    assert error(srv, "bob", "Blob/get", ids=[alices], properties=["digest:md5"]) == "invalidArguments"
    assert error(srv, "bob", "Blob/get", ids=[alices], offset=-1) == "invalidArguments"
    (resp,) = srv.jmap("bob", [["Blob/get", {"accountId": aid(srv, "bob"), "ids": []}, "0"]], [CORE])
    assert resp[1]["type"] == "unknownMethod"


def test_blob_upload(srv: MailsrvProc) -> None:
    base = upload(srv, "carol", b"0123456789", "text/plain")
    (resp, got, script) = calls(srv, "carol",
        ("Blob/upload", {"create": {
            "joined": {"type": "text/plain", "data": [{"data:asText": "keep;"}, {"data:asBase64": b64(b" # ")},
                                                        {"blobId": base, "offset": 2, "length": 3}]},
            "again": {"data": [{"blobId": "#joined"}, {"data:asText": "\n"}]},
            "badb64": {"data": [{"data:asBase64": "***"}]},
            "range": {"data": [{"blobId": base, "offset": 8, "length": 5}]},
            "foreign": {"data": [{"blobId": upload(srv, "alice", b"alice only")}]},
            "both": {"data": [{"data:asText": "a", "data:asBase64": "YQ=="}]},
        }}),
        ("Blob/get", {"ids": ["#joined", "#again"], "properties": ["data:asText", "size"]}),
        ("SieveScript/set", {"create": {"s": {"name": "uploaded", "blobId": "#again"}}}))
    joined = b"keep; # 234"
    created = resp[1]["created"]
    assert created["joined"] == {"id": hashlib.sha256(joined).hexdigest(), "type": "text/plain", "size": len(joined)}
    assert created["again"]["id"] == hashlib.sha256(joined + b"\n").hexdigest()
    assert created["again"]["type"] == "application/octet-stream"
    nc = resp[1]["notCreated"]
    assert nc["badb64"]["type"] == "invalidProperties" and nc["range"]["type"] == "invalidProperties"
    assert nc["foreign"]["type"] == "blobNotFound" and nc["both"]["type"] == "invalidProperties"
    assert [o["data:asText"] for o in got[1]["list"]] == [joined.decode(), joined.decode() + "\n"]
    assert script[1]["created"]["s"]["blobId"] == created["again"]["id"]
    r = requests.get(f"{srv.url}/jmap/download/{aid(srv, 'carol')}/{created['joined']['id']}/x.txt",
                     auth=("carol", USER_PASSWORD), timeout=10)
    assert r.status_code == 200 and r.content == joined
    big = call(srv, "carol", "Blob/upload", create={"big": {"data": [{"data:asText": "x"}] * 17}})
    assert big["notCreated"]["big"]["type"] == "tooLarge"


def test_blob_lookup(srv: MailsrvProc) -> None:
    email = import_message(srv, "dave", MESSAGE)
    script_blob = upload(srv, "dave", b"keep; # lookup\n")
    script = call(srv, "dave", "SieveScript/set", create={"s": {"name": "lookup", "blobId": script_blob}})["created"]["s"]
    out = call(srv, "dave", "Blob/lookup", typeNames=["Email", "Mailbox", "Thread", "SieveScript"],
               ids=[email["blobId"], script_blob, upload(srv, "alice", b"not dave's")])
    assert out["list"] == [
        {"id": email["blobId"], "matchedIds": {"Email": [email["id"]], "Mailbox": [email["mailboxId"]],
                                               "Thread": [email["threadId"]], "SieveScript": []}},
        {"id": script_blob, "matchedIds": {"Email": [], "Mailbox": [], "Thread": [], "SieveScript": [script["id"]]}},
    ]
    assert len(out["notFound"]) == 1
    assert error(srv, "dave", "Blob/lookup", typeNames=["Calendar"], ids=[script_blob]) == "unknownDataType"


# -- Quota -----------------------------------------------------------------------------------------------------
def set_quota(srv: MailsrvProc, user: str, octets: int) -> None:
    r = requests.patch(f"{srv.url}/api/principal/{user}", json=[{"action": "set", "field": "quota", "value": octets}],
                       auth=srv.admin, timeout=10)
    assert r.status_code == 200, r.text


def test_quota(srv: MailsrvProc) -> None:
    none = call(srv, "erin", "Quota/get", ids=None)
    assert none["list"] == [] and call(srv, "erin", "Quota/query")["ids"] == []
    set_quota(srv, "erin", 1_000_000)
    (quota,) = call(srv, "erin", "Quota/get", ids=None)["list"]
    used = sum(r[0] for r in stored_rows(srv, "SELECT size FROM emails WHERE account_id=?", principal(srv, "erin")))
    assert quota == {"id": quota["id"], "resourceType": "octets", "used": used, "hardLimit": 1_000_000,
                     "warnLimit": None, "softLimit": None, "scope": "account", "name": "erin", "types": ["Email"],
                     "description": "Erin Smith"}
    created = call(srv, "erin", "Quota/changes", sinceState=none["state"])
    assert created["created"] == [quota["id"]] and created["updated"] == []
    state = call(srv, "erin", "Quota/get", ids=[quota["id"]])["state"]

    email = import_message(srv, "erin", MESSAGE)
    (after,) = call(srv, "erin", "Quota/get", ids=[quota["id"]], properties=["used"])["list"]
    assert after == {"id": quota["id"], "used": used + email["size"]}
    changed = call(srv, "erin", "Quota/changes", sinceState=state)
    assert changed["updated"] == [quota["id"]] and changed["updatedProperties"] == ["used"]
    same = call(srv, "erin", "Quota/changes", sinceState=changed["newState"])
    assert same["updated"] == [] and same["created"] == [] and same["oldState"] == same["newState"]

    assert call(srv, "erin", "Quota/query", filter={"resourceType": "octets", "type": "Email"})["ids"] == [quota["id"]]
    assert call(srv, "erin", "Quota/query", filter={"scope": "domain"})["ids"] == []
    assert error(srv, "erin", "Quota/changes", sinceState="garbage") == "cannotCalculateChanges"
    assert error(srv, "erin", "Quota/query", filter={"colour": "red"}) == "unsupportedFilter"

    set_quota(srv, "erin", 0)
    assert call(srv, "erin", "Quota/get", ids=None)["list"] == []
    assert call(srv, "erin", "Quota/changes", sinceState=changed["newState"])["destroyed"] == [quota["id"]]
