"""Email/query, Email/queryChanges and SearchSnippet/get against a real mailsrv (RFC 8620 §5.5-5.6, RFC 8621 §4.4-4.5, §5).

Alice's ten emails (A…J below) are written once through the store and only read afterwards; tests that
change mail work in Bob's account. The server caps results at MAX_RESULTS = 8, so unlimited queries over
all ten emails return the first eight.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailsrv.server.store import Store
from mailsrv.server.store.ids import jmap_id, parse_id
from tests.conftest import MailsrvProc, start_mailsrv
from tests.test_jmap_email_get import call, call_error, principal, put

MAX_RESULTS = 8
BASE = 1_709_251_200.0  # 2024-03-01T00:00:00Z; email n is received BASE + hours[n]


@dataclass
class Spec:
    subject: str
    sender: str
    to: str
    body: str
    hours: int
    mailboxes: tuple[str, ...] = ("inbox",)
    keywords: tuple[str, ...] = ()
    date: str | None = None
    cc: str | None = None
    bcc: str | None = None
    reply_to_msg: str | None = None
    attachment: bytes | None = None
    html: bool = False
    extra: str = ""


SPECS: dict[str, Spec] = {
    "A": Spec("Quarterly report", "Alice Adams <alice@example.org>", "bob@example.org", "Numbers look good.", 5,
              keywords=("$seen",), date="Fri, 1 Mar 2024 10:00:00 +0000", attachment=b"%PDF-1.4 quarterly"),
    "B": Spec("Re: Quarterly report", "Bob Brown <bob@example.org>", "alice@example.org",
              "Thanks, the zebra numbers are fine.", 1, keywords=("$seen", "$flagged"),
              date="Sat, 2 Mar 2024 09:00:00 +0100", reply_to_msg="A"),
    "C": Spec("Lunch?", "carol@example.com", "alice@example.org", "Pizza or sushi today?", 8, cc="dave@example.net",
              date="Wed, 28 Feb 2024 12:00:00 -0500"),
    "D": Spec("[list] Weekly digest", "List Bot <bot@lists.example.com>", "list@lists.example.com",
              "<p>Digest of the week: <b>zebra</b> crossing</p>", 2, mailboxes=("inbox", "Work"), keywords=("$seen",),
              date="Mon, 15 Jan 2024 08:00:00 +0000", html=True, extra="List-Id: Weekly <weekly.lists.example.com>\r\n"),
    "E": Spec("Invoice 42", "Billing <billing@shop.example>", "alice@example.org", "Please find the invoice attached.", 9,
              mailboxes=("Work",), keywords=("$flagged",), date="Tue, 5 Mar 2024 11:00:00 +0000",
              bcc="archive@example.org", attachment=b"%PDF-1.4 " + b"x" * 3000, extra="X-Priority: 1 (Highest)\r\n"),
    "F": Spec("Fwd: Lunch?", "Alice Adams <alice@example.org>", "erin@example.org", "Forwarding: pizza place.", 0,
              mailboxes=("sent",), keywords=("$seen", "$draft"), date="Wed, 28 Feb 2024 13:00:00 -0500",
              reply_to_msg="C"),
    "G": Spec("Ünïcödé subject Ärger", "Zoë <zoe@example.org>", "alice@example.org", "Grüße mit Umlauten.", 7),
    "H": Spec("Re: Re: Quarterly report", "Carol <carol@example.com>", "bob@example.org", "Agreed on all points.", 3,
              cc="alice@example.org", date="Sat, 2 Mar 2024 08:30:00 +0000", reply_to_msg="B"),
    "I": Spec("10 things", "Numbers <n@example.org>", "alice@example.org", "A list of things.", 6,
              mailboxes=("trash",), date="Mon, 1 Jan 2024 00:00:00 +0000"),
    "J": Spec("9 lives & <cats>", "Cats <c@example.org>", "alice@example.org", "Meow.", 4, keywords=("$seen",),
              date="Sun, 31 Dec 2023 12:00:00 +0000"),
}


def build(label: str, spec: Spec) -> bytes:
    lines = [f"From: {spec.sender}", f"To: {spec.to}", f"Subject: {spec.subject}", f"Message-ID: <{label}@example.test>"]
    lines += [f"Date: {spec.date}"] if spec.date else []
    lines += [f"Cc: {spec.cc}"] if spec.cc else []
    lines += [f"Bcc: {spec.bcc}"] if spec.bcc else []
    if spec.reply_to_msg:
        lines += [f"In-Reply-To: <{spec.reply_to_msg}@example.test>", f"References: <{spec.reply_to_msg}@example.test>"]
    head = "\r\n".join(lines) + "\r\n" + spec.extra + "MIME-Version: 1.0\r\n"
    body_type = "text/html" if spec.html else "text/plain"
    if spec.attachment is None:
        return (head + f"Content-Type: {body_type}; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                + spec.body + "\r\n").encode()
    return (head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
            f"Content-Type: {body_type}; charset=utf-8\r\n\r\n{spec.body}\r\n--b\r\n"
            'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="doc.pdf"\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n{base64.b64encode(spec.attachment).decode()}\r\n--b--\r\n").encode()


RAW = {label: build(label, spec) for label, spec in SPECS.items()}


@dataclass
class World:
    srv: MailsrvProc
    ids: dict[str, str]  # label -> email id
    boxes: dict[str, str]  # role or name -> mailbox id

    def labels(self, ids: list[str]) -> list[str]:
        back = {v: k for k, v in self.ids.items()}
        return [back.get(i, i) for i in ids]

    def query(self, user: str = "alice", **args: Any) -> dict[str, Any]:
        return call(self.srv, user, "Email/query", args)

    def found(self, **args: Any) -> list[str]:
        return self.labels(self.query(**args)["ids"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    srv = start_mailsrv(Path(tmp_path_factory.mktemp("query")), jmap={"max_query_results": MAX_RESULTS})
    srv.add_account("alice")
    srv.add_account("bob")
    store = Store(srv.data_dir)
    try:
        pid = principal(store, "alice")
        store.mail.ensure_default_mailboxes(pid)
        store.mail.create_mailbox(pid, "Work")
        boxes = {m.role or m.name: jmap_id(m.id) for m in store.mail.mailboxes(pid)}
    finally:
        store.close()
    ids: dict[str, str] = {}
    for label, spec in SPECS.items():  # ids ascend A…J
        ids[label] = put(srv, "alice", RAW[label], keywords=dict.fromkeys(spec.keywords, True),
                         received_at=BASE + spec.hours * 3600, mailbox=spec.mailboxes[0])
        if len(spec.mailboxes) > 1:
            _add_to_mailbox(srv, ids[label], spec.mailboxes[1])
    yield World(srv, ids, boxes)
    srv.stop()


def _add_to_mailbox(srv: MailsrvProc, email_id: str, name: str) -> None:
    store = Store(srv.data_dir)
    try:
        pid = principal(store, "alice")
        eid = parse_id(email_id)
        assert eid is not None
        box = next(m.id for m in store.mail.mailboxes(pid) if m.name == name)
        email = store.mail.email(pid, eid)
        assert email is not None
        store.mail.update_email(pid, eid, mailbox_ids=[*email.mailbox_ids, box])
    finally:
        store.close()


def by_size(labels: str) -> list[str]:
    return sorted(labels, key=lambda label: (len(RAW[label]), label))


# -- filters -----------------------------------------------------------------------------------------
FILTERS: list[tuple[dict[str, Any], str]] = [
    ({"inMailbox": "@inbox"}, "ABCDGHJ"),
    ({"inMailbox": "@Work"}, "DE"),
    ({"inMailbox": "zzzzzz"}, ""),
    ({"inMailboxOtherThan": ["@inbox"]}, "DEFI"),
    ({"inMailboxOtherThan": ["@inbox", "@Work"]}, "FI"),
    ({"after": "2024-03-01T05:00:00Z"}, "ACEGI"),
    ({"before": "2024-03-01T02:00:00Z"}, "BF"),
    ({"after": "2024-03-01T02:00:00Z", "before": "2024-03-01T05:00:00Z"}, "DHJ"),
    ({"hasKeyword": "$seen"}, "ABDFJ"),
    ({"hasKeyword": "$SEEN"}, "ABDFJ"),
    ({"notKeyword": "$seen"}, "CEGHI"),
    ({"hasKeyword": "$flagged"}, "BE"),
    ({"allInThreadHaveKeyword": "$seen"}, "DJ"),
    ({"someInThreadHaveKeyword": "$seen"}, "ABCDFHJ"),
    ({"noneInThreadHaveKeyword": "$seen"}, "EGI"),
    ({"someInThreadHaveKeyword": "$flagged"}, "ABEH"),
    ({"hasAttachment": True}, "AE"),
    ({"hasAttachment": False}, "BCDFGHIJ"),
    ({"text": "zebra"}, "BD"),
    ({"text": "CAROL"}, "CH"),
    ({"text": "attached"}, "E"),
    ({"from": "alice adams"}, "AF"),
    ({"from": "example.com"}, "CDH"),
    ({"from": "zoë"}, "G"),
    ({"to": "erin"}, "F"),
    ({"to": "lists.example"}, "D"),
    ({"cc": "dave"}, "C"),
    ({"cc": "alice@"}, "H"),
    ({"bcc": "archive"}, "E"),
    ({"subject": "quarterly"}, "ABH"),
    ({"subject": "ärger"}, "G"),
    ({"body": "pizza"}, "CF"),
    ({"body": "zebra crossing"}, "D"),
    ({"body": "carol"}, ""),
    ({"body": "grüsse"}, "G"),  # caseless matching folds ß to ss
    ({"body": "GRÜßE"}, "G"),
    ({"header": ["List-Id"]}, "D"),
    ({"header": ["list-id", "WEEKLY"]}, "D"),
    ({"header": ["X-Priority", "highest"]}, "E"),
    ({"header": ["Subject", "lunch"]}, "CF"),
    ({"header": ["In-Reply-To"]}, "BFH"),
    ({"inMailbox": "@inbox", "hasKeyword": "$seen"}, "ABDJ"),
    ({"operator": "OR", "conditions": [{"hasKeyword": "$flagged"}, {"from": "carol"}]}, "BCEH"),
    ({"operator": "NOT", "conditions": [{"inMailbox": "@inbox"}, {"text": "zebra"}]}, "EFI"),
    ({"operator": "AND", "conditions": [
        {"inMailbox": "@inbox"},
        {"operator": "OR", "conditions": [{"subject": "quarterly"},
                                          {"operator": "NOT", "conditions": [{"hasKeyword": "$seen"}]}]},
    ]}, "ABCGH"),
    ({"operator": "OR", "conditions": [{"minSize": 3000}, {"body": "meow"}]}, "EJ"),
    ({"operator": "AND", "conditions": []}, "ABCDEFGH"),
    ({"operator": "OR", "conditions": []}, ""),
]


def _resolve(world: World, value: Any) -> Any:
    """Replace "@role" placeholders with mailbox ids."""
    if isinstance(value, str) and value.startswith("@"):
        return world.boxes[value[1:]]
    if isinstance(value, list):
        return [_resolve(world, v) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(world, v) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("flt", "expected"), FILTERS, ids=[str(f) for f, _ in FILTERS])
def test_filter(world: World, flt: dict[str, Any], expected: str) -> None:
    assert world.found(filter=_resolve(world, flt)) == list(expected)


def test_size_filters(world: World) -> None:
    sizes = {label: len(raw) for label, raw in RAW.items()}
    cut = sorted(sizes.values())[4]
    assert world.found(filter={"minSize": cut}, sort=[{"property": "size"}]) == [x for x in by_size("ABCDEFGHIJ") if sizes[x] >= cut]
    assert world.found(filter={"maxSize": cut}) == sorted(x for x in sizes if sizes[x] < cut)


# -- sorting -----------------------------------------------------------------------------------------
SORTS: list[tuple[list[dict[str, Any]], str]] = [
    ([{"property": "receivedAt"}], "FBDHJAIGCE"),
    ([{"property": "receivedAt", "isAscending": False}], "ECGIAJHDBF"),
    ([{"property": "from"}], "AFEBHCJDIG"),
    ([{"property": "from", "isAscending": False}], "GIDJCHBEFA"),
    ([{"property": "to"}], "BCEGIJAHFD"),
    ([{"property": "subject"}], "IJECFABHGD"),
    ([{"property": "subject", "collation": "i;ascii-casemap"}], "IJECFABHDG"),
    ([{"property": "subject", "collation": "i;ascii-numeric"}], "JIABCDEFGH"),
    ([{"property": "sentAt"}], "GJIDCFABHE"),
    ([{"property": "sentAt", "isAscending": False}], "EHBAFCDIJG"),
    ([{"property": "hasKeyword", "keyword": "$flagged", "isAscending": False}], "EBJIHGFDCA"),
    ([{"property": "hasKeyword", "keyword": "$seen", "isAscending": False}, {"property": "receivedAt"}], "FBDJAHIGCE"),
    ([{"property": "someInThreadHaveKeyword", "keyword": "$flagged"}], "CDFGIJABEH"),
]


@pytest.mark.parametrize(("sort", "expected"), SORTS, ids=[str(s) for s, _ in SORTS])
def test_sort(world: World, sort: list[dict[str, Any]], expected: str) -> None:
    assert world.found(sort=sort) == list(expected)[:MAX_RESULTS]


def test_sort_by_size(world: World) -> None:
    assert world.found(sort=[{"property": "size"}], limit=8) == by_size("ABCDEFGHIJ")[:8]
    assert world.found(sort=[{"property": "size", "isAscending": False}]) == by_size("ABCDEFGHIJ")[::-1][:8]
    every_seen_first = [{"property": "allInThreadHaveKeyword", "keyword": "$seen", "isAscending": False},
                        {"property": "size"}]
    assert world.found(sort=every_seen_first)[:2] == by_size("DJ")


def test_collapse_threads(world: World) -> None:
    out = world.query(sort=[{"property": "receivedAt"}], collapseThreads=True, calculateTotal=True)
    assert world.labels(out["ids"]) == list("FBDJIGE")  # H, A (thread of B) and C (thread of F) collapse
    assert out["total"] == 7
    assert world.found(filter={"subject": "quarterly"}, collapseThreads=True) == ["A"]


# -- windowing ---------------------------------------------------------------------------------------
def test_position_limit_total(world: World) -> None:
    by_received = [{"property": "receivedAt"}]
    out = world.query(sort=by_received, position=2, limit=3, calculateTotal=True)
    assert (world.labels(out["ids"]), out["position"], out["total"]) == (list("DHJ"), 2, 10)
    assert "limit" not in out  # the client's limit was honoured
    inbox = {"inMailbox": world.boxes["inbox"]}
    out = world.query(filter=inbox, sort=by_received, position=-3, limit=2)
    assert (world.labels(out["ids"]), out["position"]) == (["A", "G"], 4)
    out = world.query(filter=inbox, sort=by_received, position=-30)
    assert out["position"] == 0 and len(out["ids"]) == 7
    out = world.query(sort=by_received, position=50, calculateTotal=True)
    assert out["ids"] == [] and out["total"] == 10


def test_limit_is_capped(world: World) -> None:
    out = world.query(calculateTotal=True)
    assert (len(out["ids"]), out["limit"], out["total"]) == (MAX_RESULTS, MAX_RESULTS, 10)
    out = world.query(limit=100)
    assert (len(out["ids"]), out["limit"]) == (MAX_RESULTS, MAX_RESULTS)
    out = world.query(limit=0)
    assert out["ids"] == [] and "limit" not in out


def test_anchor(world: World) -> None:
    args: dict[str, Any] = {"filter": {"inMailbox": world.boxes["inbox"]}, "sort": [{"property": "receivedAt"}]}
    out = world.query(**args, anchor=world.ids["H"], anchorOffset=1, limit=2)
    assert (world.labels(out["ids"]), out["position"]) == (["J", "A"], 3)
    out = world.query(**args, anchor=world.ids["H"], limit=2, position=5)  # position is ignored with an anchor
    assert (world.labels(out["ids"]), out["position"]) == (["H", "J"], 2)
    out = world.query(**args, anchor=world.ids["H"], anchorOffset=-5, limit=2)
    assert (world.labels(out["ids"]), out["position"]) == (["B", "D"], 0)
    err = call_error(world.srv, "alice", "Email/query", {**args, "anchor": world.ids["E"]})  # E is not in the inbox
    assert err["type"] == "anchorNotFound"
    assert call_error(world.srv, "alice", "Email/query", {**args, "anchor": "!"})["type"] == "anchorNotFound"


def test_query_state_and_isolation(world: World) -> None:
    out = world.query()
    assert out["canCalculateChanges"] is True
    assert out["queryState"] == call(world.srv, "alice", "Email/get", {"ids": []})["state"]
    assert world.query(user="bob", filter={"text": "zebra"})["ids"] == []  # bob sees none of alice's mail
    assert world.query(user="bob", filter={"inMailbox": world.boxes["inbox"]})["ids"] == []


@pytest.mark.parametrize(("args", "error"), [
    ({"filter": {"color": "red"}}, "unsupportedFilter"),
    ({"filter": {"operator": "OR", "conditions": [{"subject": "x"}, {"size": 3}]}}, "unsupportedFilter"),
    ({"sort": [{"property": "color"}]}, "unsupportedSort"),
    ({"sort": [{"property": "subject", "collation": "i;octet"}]}, "unsupportedSort"),
    ({"sort": [{"property": "hasKeyword"}]}, "invalidArguments"),
    ({"sort": {"property": "size"}}, "invalidArguments"),
    ({"filter": {"hasKeyword": "bad keyword"}}, "invalidArguments"),
    ({"filter": {"hasKeyword": 7}}, "invalidArguments"),
    ({"filter": {"before": "yesterday"}}, "invalidArguments"),
    ({"filter": {"minSize": -1}}, "invalidArguments"),
    ({"filter": {"hasAttachment": "yes"}}, "invalidArguments"),
    ({"filter": {"header": ["a", "b", "c"]}}, "invalidArguments"),
    ({"filter": {"operator": "XOR", "conditions": []}}, "invalidArguments"),
    ({"filter": {"operator": "AND"}}, "invalidArguments"),
    ({"filter": ["subject"]}, "invalidArguments"),
    ({"limit": -1}, "invalidArguments"),
    ({"position": "1"}, "invalidArguments"),
    ({"collapseThreads": 1}, "invalidArguments"),
])
def test_query_errors(world: World, args: dict[str, Any], error: str) -> None:
    assert call_error(world.srv, "alice", "Email/query", args)["type"] == error


def test_deep_filter_is_refused(world: World) -> None:
    flt: dict[str, Any] = {"subject": "x"}
    for _ in range(40):
        flt = {"operator": "NOT", "conditions": [flt]}
    assert call_error(world.srv, "alice", "Email/query", {"filter": flt})["type"] == "unsupportedFilter"


# -- SearchSnippet/get -------------------------------------------------------------------------------
def test_search_snippets(world: World) -> None:
    ids = world.ids
    out = call(world.srv, "alice", "SearchSnippet/get",
               {"filter": {"text": "zebra"}, "emailIds": [ids["B"], ids["D"], ids["C"], "zzzzzz"]})
    snippets = {s["emailId"]: s for s in out["list"]}
    assert out["notFound"] == ["zzzzzz"]
    assert snippets[ids["B"]] == {"emailId": ids["B"], "subject": None,
                                  "preview": "Thanks, the <mark>zebra</mark> numbers are fine."}
    assert snippets[ids["D"]]["preview"] == "Digest of the week: <mark>zebra</mark> crossing"
    assert snippets[ids["C"]] == {"emailId": ids["C"], "subject": None, "preview": None}
    out = call(world.srv, "alice", "SearchSnippet/get", {"filter": {"subject": "LIVES"}, "emailIds": [ids["J"]]})
    assert out["list"][0]["subject"] == "9 <mark>lives</mark> &amp; &lt;cats&gt;"
    assert out["list"][0]["preview"] is None
    err = call_error(world.srv, "alice", "SearchSnippet/get", {"filter": {"color": 1}, "emailIds": [ids["J"]]})
    assert err["type"] == "unsupportedFilter"
    err = call_error(world.srv, "alice", "SearchSnippet/get", {"emailIds": ["a"] * 501})
    assert err["type"] == "requestTooLarge"


# -- Email/queryChanges (in bob's account) -----------------------------------------------------------
def _bob_message(n: int, reply_to: int | None = None) -> bytes:
    refs = f"In-Reply-To: <bob{reply_to}@example.test>\r\n" if reply_to else ""
    return (f"From: x{n}@example.org\r\nTo: bob@example.org\r\nSubject: bob {n}\r\n"
            f"Message-ID: <bob{n}@example.test>\r\n{refs}\r\nbody {n}\r\n").encode()


def _store_op(srv: MailsrvProc, fn: Any) -> None:
    store = Store(srv.data_dir)
    try:
        fn(store, principal(store, "bob"))
    finally:
        store.close()


def _apply(old: list[str], changes: dict[str, Any]) -> list[str]:
    """A client's update of its cached results (RFC 8620 §5.6)."""
    out = [i for i in old if i not in set(changes["removed"])]
    for item in sorted(changes["added"], key=lambda a: a["index"]):
        out.insert(item["index"], item["id"])
    return out


def test_query_changes(world: World) -> None:
    srv = world.srv
    x = {n: put(srv, "bob", _bob_message(n), received_at=BASE + n) for n in (1, 2, 3)}
    queries: list[dict[str, Any]] = [
        {"sort": [{"property": "receivedAt", "isAscending": False}]},
        {"sort": [{"property": "receivedAt", "isAscending": False}], "collapseThreads": True},
        {"filter": {"hasKeyword": "$flagged"}},
    ]
    before = [call(srv, "bob", "Email/query", q) for q in queries]
    assert before[0]["ids"] == [x[3], x[2], x[1]] and before[2]["ids"] == []

    x[4] = put(srv, "bob", _bob_message(4), received_at=BASE + 4)
    x[5] = put(srv, "bob", _bob_message(5, reply_to=3), received_at=BASE + 5)  # joins the thread of 3
    _store_op(srv, lambda s, pid: s.mail.update_email(pid, parse_id(x[1]), keywords={"$flagged": True}))
    _store_op(srv, lambda s, pid: s.mail.destroy_email(pid, parse_id(x[2])))

    for q, old in zip(queries, before, strict=True):
        now = call(srv, "bob", "Email/query", q)
        changes = call(srv, "bob", "Email/queryChanges", {**q, "sinceQueryState": old["queryState"], "calculateTotal": True})
        assert changes["oldQueryState"] == old["queryState"]
        assert changes["newQueryState"] == now["queryState"] != old["queryState"]
        assert changes["total"] == len(now["ids"])
        assert _apply(old["ids"], changes) == now["ids"], (q, changes)
    assert call(srv, "bob", "Email/query", queries[1])["ids"] == [x[5], x[4], x[1]]
    collapsed = call(srv, "bob", "Email/queryChanges", {**queries[1], "sinceQueryState": before[1]["queryState"]})
    assert x[3] in collapsed["removed"]  # unchanged itself, but no longer represents its thread

    same = call(srv, "bob", "Email/queryChanges", {**queries[0], "sinceQueryState": before[0]["queryState"]})
    assert same["removed"] and same["added"]
    err = call_error(srv, "bob", "Email/queryChanges", {**queries[0], "sinceQueryState": before[0]["queryState"],
                                                        "maxChanges": 1})
    assert err["type"] == "tooManyChanges"
    for state in ("bogus", "999999"):
        err = call_error(srv, "bob", "Email/queryChanges", {"sinceQueryState": state})
        assert err["type"] == "cannotCalculateChanges"
    assert call_error(srv, "bob", "Email/queryChanges", {})["type"] == "invalidArguments"
    now = call(srv, "bob", "Email/query", queries[0])
    unchanged = call(srv, "bob", "Email/queryChanges", {**queries[0], "sinceQueryState": now["queryState"]})
    assert (unchanged["removed"], unchanged["added"]) == ([], [])
