"""Email/get and Email/parse against a real mailsrv (RFC 8621 §4.1, §4.2, §4.9).

Mail is put into accounts through the store in the test process (the server shares the SQLite file in
WAL mode), so these tests depend on nothing but the store's ingest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from mailsrv.server.mime import summarize
from mailsrv.server.store import Store
from mailsrv.server.store.ids import jmap_id
from tests.conftest import USER_PASSWORD, MailsrvProc, start_mailsrv

# multipart/mixed: alternative (text + html), a PDF attachment, an inline image and a forwarded message
RICH = b"""Received: from relay2.example.net by mail.example.org; Tue, 2 Jan 2024 01:04:07 +0000\r
Received: from relay1.example.net by relay2.example.net; Tue, 2 Jan 2024 01:04:06 +0000\r
From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@example.de>\r
Sender: secretary@example.de\r
To: "Doe, John" <john@example.org>, team: ann@example.org, bob@example.org;\r
Cc: carol@example.org\r
Reply-To: replies@example.de\r
Subject: =?utf-8?b?R3LDvMOfZQ==?=\r
 =?utf-8?q?_aus_K=C3=B6ln?=\r
Date: Tue, 2 Jan 2024 03:04:05 +0200\r
Message-ID: <rich-1@example.de>\r
In-Reply-To: <parent@example.org>\r
References: <root@example.org> <parent@example.org>\r
List-Unsubscribe: <mailto:leave@example.org>, <https://example.org/leave?x=1>\r
X-Custom: one\r
X-Custom: two\r
MIME-Version: 1.0\r
Content-Type: multipart/mixed; boundary="outer"\r
\r
This is a multi-part message in MIME format.\r
--outer\r
Content-Type: multipart/alternative; boundary="alt"\r
\r
--alt\r
Content-Type: text/plain; charset=utf-8\r
Content-Transfer-Encoding: quoted-printable\r
\r
Hallo aus K=C3=B6ln, sch=C3=B6ne Gr=C3=BC=C3=9Fe!\r
--alt\r
Content-Type: text/html; charset=utf-8\r
Content-Language: de, en\r
\r
<html><body><p>Hallo aus <b>K\xc3\xb6ln</b>, sch\xc3\xb6ne Gr\xc3\xbc\xc3\x9fe!</p></body></html>\r
--alt--\r
--outer\r
Content-Type: application/pdf; name="=?utf-8?q?R=C3=A9sum=C3=A9.pdf?="\r
Content-Disposition: attachment; filename*=utf-8''R%C3%A9sum%C3%A9.pdf\r
Content-Transfer-Encoding: base64\r
Content-Location: https://example.de/cv.pdf\r
\r
JVBERi0xLjQKJcOkw7zDtsOfCg==\r
--outer\r
Content-Type: image/png\r
Content-Disposition: inline\r
Content-ID: <logo@example.de>\r
Content-Transfer-Encoding: base64\r
\r
iVBORw0KGgo=\r
--outer\r
Content-Type: message/rfc822\r
\r
From: Inner Sender <inner@example.com>\r
Subject: Forwarded inner message\r
Content-Type: multipart/alternative; boundary="innerb"\r
\r
--innerb\r
Content-Type: text/plain\r
\r
inner plain text\r
--innerb--\r
--outer--\r
"""
PDF = b"%PDF-1.4\n%\xc3\xa4\xc3\xbc\xc3\xb6\xc3\x9f\n"
PNG = b"\x89PNG\r\n\x1a\n"
INNER = RICH[RICH.index(b"From: Inner") : RICH.index(b"--innerb--\r\n") + len(b"--innerb--")]

# 8-bit UTF-8 headers (RFC 6532), no Message-ID, 8bit body
EIGHTBIT = (
    "From: Zoë Ünal <zoe@example.org>\r\nTo: bob@example.org\r\nSubject: Café ☕ täglich\r\n"
    "Date: Wed, 3 Jan 2024 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n\r\nKaffee für alle — jeden Tag.\r\n"
).encode()

# legacy charset, HTML only, a truncation candidate
LATIN1_HTML = (
    b"From: shop@example.com\r\nTo: alice@example.org\r\nSubject: =?iso-8859-1?q?Gr=FC=DFe?=\r\n"
    b"Message-ID: <latin@example.com>\r\nContent-Type: text/html; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"<p>Sch=F6ne <a href=3D\"https://example.com/x\">Gr=FC=DFe</a> aus M=FCnchen</p>\r\n"
)

# broken: no close delimiter, invalid base64, unknown charset, garbage header line
BROKEN = (
    b"From: broken@example.com\r\nSubject: broken\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n\r\nweird \xff\xfe text\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"aGVsbG8gd29ybGQ*!\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\nunterminated"
)


def account_id(srv: MailsrvProc, user: str) -> str:
    return str(srv.session(user)["primaryAccounts"]["urn:ietf:params:jmap:mail"])


def principal(store: Store, user: str) -> int:
    p = store.principals.by_name(user)
    assert p is not None
    return int(p.id)


def put(srv: MailsrvProc, user: str, raw: bytes, *, keywords: dict[str, bool] | None = None,
        received_at: float | None = None, mailbox: str = "inbox") -> str:
    """Store ``raw`` in ``user``'s mailbox with role ``mailbox`` (or named so); returns the email id."""
    store = Store(srv.data_dir)
    try:
        pid = principal(store, user)
        store.mail.ensure_default_mailboxes(pid)
        box = store.mail.mailbox_by_role(pid, mailbox)
        box_id = box.id if box else next(m.id for m in store.mail.mailboxes(pid) if m.name == mailbox)
        digest = store.blobs.put(raw)
        email_id, _ = store.mail.ingest(pid, digest, len(raw), summarize(raw), [box_id], keywords, received_at)
    finally:
        store.close()
    return jmap_id(email_id)


def call(srv: MailsrvProc, user: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    args = {"accountId": account_id(srv, user), **args}
    (resp,) = srv.jmap(user, [[name, args, "c"]])
    assert resp[0] == name, resp
    return dict(resp[1])


def call_error(srv: MailsrvProc, user: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    args = {"accountId": account_id(srv, user), **args}
    (resp,) = srv.jmap(user, [[name, args, "c"]])
    assert resp[0] == "error", resp
    return dict(resp[1])


def get_one(srv: MailsrvProc, user: str, email_id: str, **args: Any) -> dict[str, Any]:
    out = call(srv, user, "Email/get", {"ids": [email_id], **args})
    assert out["notFound"] == []
    (obj,) = out["list"]
    return dict(obj)


def download(srv: MailsrvProc, user: str, blob_id: str) -> requests.Response:
    return requests.get(f"{srv.url}/jmap/download/{account_id(srv, user)}/{blob_id}/file?accept=application/pdf",
                        auth=(user, USER_PASSWORD), timeout=10)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailsrvProc]:
    s = start_mailsrv(Path(tmp_path_factory.mktemp("emailget")))
    s.add_account("alice")
    s.add_account("bob")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def mail(srv: MailsrvProc) -> dict[str, str]:
    return {
        "rich": put(srv, "alice", RICH, keywords={"$seen": True, "$Flagged": True}, received_at=1704164645.5),
        "eightbit": put(srv, "alice", EIGHTBIT),
        "latin1": put(srv, "alice", LATIN1_HTML),
        "broken": put(srv, "alice", BROKEN),
        "bobs": put(srv, "bob", EIGHTBIT),
    }


# -- metadata and summary properties -----------------------------------------------------------------
def test_default_properties(srv: MailsrvProc, mail: dict[str, str]) -> None:
    out = call(srv, "alice", "Email/get", {"ids": [mail["rich"]]})
    store = Store(srv.data_dir)
    try:
        pid = principal(store, "alice")
        state, inbox = store.mail.state(pid, "Email"), store.mail.mailbox_by_role(pid, "inbox")
    finally:
        store.close()
    assert inbox is not None and out["state"] == state != "0"
    (e,) = out["list"]
    assert set(e) == {
        "id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt", "messageId", "inReplyTo",
        "references", "sender", "from", "to", "cc", "bcc", "replyTo", "subject", "sentAt", "hasAttachment",
        "preview", "bodyValues", "textBody", "htmlBody", "attachments",
    }
    assert e["id"] == mail["rich"]
    assert e["blobId"] == hashlib.sha256(RICH).hexdigest()
    assert e["size"] == len(RICH)
    assert e["mailboxIds"] == {jmap_id(inbox.id): True}
    assert e["keywords"] == {"$seen": True, "$flagged": True}
    assert e["receivedAt"] == "2024-01-02T03:04:05Z"
    assert e["messageId"] == ["rich-1@example.de"]
    assert e["inReplyTo"] == ["parent@example.org"]
    assert e["references"] == ["root@example.org", "parent@example.org"]
    assert e["from"] == [{"name": "Jörg Müller", "email": "joerg@example.de"}]
    assert e["sender"] == [{"name": None, "email": "secretary@example.de"}]
    assert e["to"] == [{"name": "Doe, John", "email": "john@example.org"},
                       {"name": None, "email": "ann@example.org"}, {"name": None, "email": "bob@example.org"}]
    assert e["cc"] == [{"name": None, "email": "carol@example.org"}]
    assert e["bcc"] is None
    assert e["replyTo"] == [{"name": None, "email": "replies@example.de"}]
    assert e["subject"] == "Grüße aus Köln"
    assert e["sentAt"] == "2024-01-02T03:04:05+02:00"
    assert e["hasAttachment"] is True
    assert e["preview"] == "Hallo aus Köln, schöne Grüße!"
    assert e["bodyValues"] == {}
    # an inline image between the bodies is shown inline in both (RFC 8621 §4.1.4), so not an attachment
    assert [p["type"] for p in e["textBody"]] == ["text/plain", "image/png"]
    assert [p["type"] for p in e["htmlBody"]] == ["text/html", "image/png"]
    assert [(p["type"], p["name"]) for p in e["attachments"]] == [("application/pdf", "Résumé.pdf"), ("message/rfc822", None)]
    assert set(e["textBody"][0]) == {"partId", "blobId", "size", "name", "type", "charset", "disposition", "cid",
                                     "language", "location"}


def test_property_selection(srv: MailsrvProc, mail: dict[str, str]) -> None:
    e = get_one(srv, "alice", mail["rich"], properties=["subject", "keywords"])
    assert e == {"id": mail["rich"], "subject": "Grüße aus Köln", "keywords": {"$seen": True, "$flagged": True}}
    e = get_one(srv, "alice", mail["latin1"], properties=["subject", "preview", "hasAttachment", "messageId"])
    assert e["subject"] == "Grüße"
    assert e["preview"] == "Schöne Grüße aus München"
    assert e["hasAttachment"] is False


def test_eight_bit_headers_and_missing_message_id(srv: MailsrvProc, mail: dict[str, str]) -> None:
    e = get_one(srv, "alice", mail["eightbit"], properties=["subject", "from", "messageId", "sentAt", "preview",
                                                           "header:Subject"])
    assert e["subject"] == "Café ☕ täglich"
    assert e["from"] == [{"name": "Zoë Ünal", "email": "zoe@example.org"}]
    assert e["messageId"] is None
    assert e["sentAt"] == "2024-01-03T10:00:00Z"
    assert e["preview"] == "Kaffee für alle — jeden Tag."
    assert e["header:Subject"] == " Café ☕ täglich"


def test_summary_properties_do_not_read_the_blob(srv: MailsrvProc) -> None:
    raw = EIGHTBIT.replace(b"Subject: Caf", b"Subject: Blobless Caf")
    email_id = put(srv, "alice", raw)
    store = Store(srv.data_dir)
    try:
        store.blobs.path(hashlib.sha256(raw).hexdigest()).unlink()
    finally:
        store.close()
    e = get_one(srv, "alice", email_id, properties=["subject", "from", "preview", "size", "blobId"])
    assert e["subject"] == "Blobless Café ☕ täglich" and e["size"] == len(raw)
    e = get_one(srv, "alice", email_id, properties=["bodyStructure", "header:Subject"])  # degrades, never fails
    assert e["header:Subject"] is None


# -- body structure, parts and values ---------------------------------------------------------------
def test_body_structure(srv: MailsrvProc, mail: dict[str, str]) -> None:
    e = get_one(srv, "alice", mail["rich"], properties=["bodyStructure"],
                bodyProperties=["partId", "blobId", "size", "type", "name", "charset", "disposition", "cid",
                                "language", "location"])
    root = e["bodyStructure"]
    assert root["type"] == "multipart/mixed" and root["partId"] is None and root["blobId"] is None
    alt, pdf, png, fwd = root["subParts"]
    assert alt["type"] == "multipart/alternative"
    plain, html = alt["subParts"]
    blob = hashlib.sha256(RICH).hexdigest()
    assert plain == {"partId": "1", "blobId": f"{blob}_1", "size": len("Hallo aus Köln, schöne Grüße!".encode()),
                     "type": "text/plain", "name": None, "charset": "utf-8", "disposition": None, "cid": None,
                     "language": None, "location": None}
    assert html["language"] == ["de", "en"] and html["charset"] == "utf-8"
    assert pdf == {"partId": "3", "blobId": f"{blob}_3", "size": len(PDF), "type": "application/pdf",
                   "name": "Résumé.pdf", "charset": None, "disposition": "attachment", "cid": None,
                   "language": None, "location": "https://example.de/cv.pdf"}
    assert (png["type"], png["cid"], png["disposition"], png["size"]) == ("image/png", "logo@example.de", "inline", len(PNG))
    assert fwd["type"] == "message/rfc822" and "subParts" not in fwd  # not recursed into (RFC 8621 §4.1.4)
    assert fwd["size"] == len(INNER)


def test_body_part_headers_and_header_forms(srv: MailsrvProc, mail: dict[str, str]) -> None:
    e = get_one(srv, "alice", mail["rich"], properties=["attachments", "htmlBody"],
                bodyProperties=["partId", "headers", "header:Content-Type:asText", "header:Content-ID:asMessageIds"])
    pdf = e["attachments"][0]
    assert pdf["headers"][0] == {"name": "Content-Type", "value": ' application/pdf; name="=?utf-8?q?R=C3=A9sum=C3=A9.pdf?="'}
    assert pdf["header:Content-Type:asText"] == 'application/pdf; name="Résumé.pdf"'
    assert e["htmlBody"][1]["header:Content-ID:asMessageIds"] == ["logo@example.de"]
    assert e["htmlBody"][0]["header:Content-ID:asMessageIds"] is None


def test_body_values(srv: MailsrvProc, mail: dict[str, str]) -> None:
    e = get_one(srv, "alice", mail["rich"], properties=["bodyValues"], fetchTextBodyValues=True)
    assert e["bodyValues"] == {"1": {"value": "Hallo aus Köln, schöne Grüße!", "isEncodingProblem": False,
                                     "isTruncated": False}}
    e = get_one(srv, "alice", mail["rich"], properties=["bodyValues"], fetchHTMLBodyValues=True)
    assert list(e["bodyValues"]) == ["2"]
    assert e["bodyValues"]["2"]["value"].startswith("<html><body><p>Hallo aus <b>Köln</b>")
    e = get_one(srv, "alice", mail["rich"], properties=["bodyValues"], fetchAllBodyValues=True)
    assert sorted(e["bodyValues"]) == ["1", "2"]  # every text/* part; not the PDF or the image


def test_body_value_truncation(srv: MailsrvProc, mail: dict[str, str]) -> None:
    # "Hallo aus Köln": 'ö' is two octets; 12 octets would end inside it
    e = get_one(srv, "alice", mail["rich"], properties=["bodyValues"], fetchTextBodyValues=True, maxBodyValueBytes=12)
    assert e["bodyValues"]["1"] == {"value": "Hallo aus K", "isEncodingProblem": False, "isTruncated": True}
    # HTML is not cut inside a tag: 20 octets end inside '<a href=...>'
    e = get_one(srv, "alice", mail["latin1"], properties=["bodyValues"], fetchHTMLBodyValues=True, maxBodyValueBytes=20)
    assert e["bodyValues"]["1"] == {"value": "<p>Schöne ", "isEncodingProblem": False, "isTruncated": True}
    e = get_one(srv, "alice", mail["latin1"], properties=["bodyValues"], fetchHTMLBodyValues=True, maxBodyValueBytes=1000)
    value = e["bodyValues"]["1"]
    assert value["value"] == '<p>Schöne <a href="https://example.com/x">Grüße</a> aus München</p>\n'
    assert value["isTruncated"] is False


def test_html_only_and_encoding_problems(srv: MailsrvProc, mail: dict[str, str]) -> None:
    e = get_one(srv, "alice", mail["latin1"], properties=["textBody", "htmlBody", "attachments"],
                bodyProperties=["partId", "type", "charset"])
    part = {"partId": "1", "type": "text/html", "charset": "iso-8859-1"}
    assert e["textBody"] == [part] and e["htmlBody"] == [part] and e["attachments"] == []
    e = get_one(srv, "alice", mail["broken"], properties=["bodyValues", "bodyStructure", "attachments", "subject"],
                fetchAllBodyValues=True, bodyProperties=["partId", "type"])
    assert e["subject"] == "broken"
    assert [p["type"] for p in e["bodyStructure"]["subParts"]] == ["text/plain", "text/plain", "application/octet-stream"]
    unknown_charset, bad_base64 = e["bodyValues"]["1"], e["bodyValues"]["2"]
    assert unknown_charset["isEncodingProblem"] is True and "weird" in unknown_charset["value"]
    assert bad_base64 == {"value": "hello world", "isEncodingProblem": True, "isTruncated": False}
    assert e["attachments"] == [{"partId": "3", "type": "application/octet-stream"}]


def test_header_properties(srv: MailsrvProc, mail: dict[str, str]) -> None:
    props = [
        "header:Subject", "header:subject:asText", "header:From:asAddresses", "header:To:asGroupedAddresses",
        "header:Message-ID:asMessageIds", "header:References:asMessageIds", "header:Date:asDate",
        "header:List-Unsubscribe:asURLs", "header:Received:all", "header:X-Custom", "header:X-Custom:all",
        "header:X-Custom:asText:all", "header:X-Missing", "header:X-Missing:all", "header:X-Custom:asDate",
    ]
    e = get_one(srv, "alice", mail["rich"], properties=props)
    assert e["header:Subject"] == " =?utf-8?b?R3LDvMOfZQ==?=\r\n =?utf-8?q?_aus_K=C3=B6ln?="
    assert e["header:subject:asText"] == "Grüße aus Köln"
    assert e["header:From:asAddresses"] == [{"name": "Jörg Müller", "email": "joerg@example.de"}]
    assert e["header:To:asGroupedAddresses"] == [
        {"name": None, "addresses": [{"name": "Doe, John", "email": "john@example.org"}]},
        {"name": "team", "addresses": [{"name": None, "email": "ann@example.org"}, {"name": None, "email": "bob@example.org"}]},
    ]
    assert e["header:Message-ID:asMessageIds"] == ["rich-1@example.de"]
    assert e["header:References:asMessageIds"] == ["root@example.org", "parent@example.org"]
    assert e["header:Date:asDate"] == "2024-01-02T03:04:05+02:00"
    assert e["header:List-Unsubscribe:asURLs"] == ["mailto:leave@example.org", "https://example.org/leave?x=1"]
    assert [v.split(" by ")[0] for v in e["header:Received:all"]] == [" from relay2.example.net", " from relay1.example.net"]
    assert e["header:X-Custom"] == " two"  # the last instance
    assert e["header:X-Custom:all"] == [" one", " two"]
    assert e["header:X-Custom:asText:all"] == ["one", "two"]
    assert e["header:X-Missing"] is None and e["header:X-Missing:all"] == []
    assert e["header:X-Custom:asDate"] is None
    e = get_one(srv, "alice", mail["rich"], properties=["headers"])
    assert [h["name"] for h in e["headers"]][:4] == ["Received", "Received", "From", "Sender"]
    assert {"name": "Content-Type", "value": ' multipart/mixed; boundary="outer"'} in e["headers"]


@pytest.mark.parametrize("prop", [
    "header:From:asDate", "header:Subject:asAddresses", "header:Date:asURLs", "header:X-A:asNothing",
    "header:X-A:all:asRaw", "header:", "header:X A", "header:X-A:foo",
])
def test_bad_header_property(srv: MailsrvProc, mail: dict[str, str], prop: str) -> None:
    err = call_error(srv, "alice", "Email/get", {"ids": [mail["rich"]], "properties": [prop]})
    assert err["type"] == "invalidArguments"


# -- part blobs and Email/parse ----------------------------------------------------------------------
def test_part_blobs_download_and_parse(srv: MailsrvProc, mail: dict[str, str]) -> None:
    e = get_one(srv, "alice", mail["rich"], properties=["attachments", "textBody"])
    (pdf, fwd), png = e["attachments"], e["textBody"][1]
    r = download(srv, "alice", pdf["blobId"])
    assert r.status_code == 200 and r.content == PDF and r.headers["Content-Type"] == "application/pdf"
    assert download(srv, "alice", png["blobId"]).content == PNG
    assert download(srv, "alice", fwd["blobId"]).content == INNER
    assert download(srv, "bob", pdf["blobId"]).status_code == 404  # another account's part
    assert download(srv, "alice", pdf["blobId"][:-1] + "9").status_code == 404  # no such part
    out = call(srv, "alice", "Email/parse", {"blobIds": [fwd["blobId"]], "fetchTextBodyValues": True,
                                               "properties": ["subject", "from", "blobId", "size", "id", "textBody",
                                                              "bodyValues"]})
    inner = out["parsed"][fwd["blobId"]]
    assert inner["subject"] == "Forwarded inner message" and inner["id"] is None
    assert inner["from"] == [{"name": "Inner Sender", "email": "inner@example.com"}]
    assert inner["blobId"] == fwd["blobId"] and inner["size"] == len(INNER)
    assert inner["bodyValues"]["1"]["value"] == "inner plain text"
    assert download(srv, "alice", inner["textBody"][0]["blobId"]).content == b"inner plain text"


def test_email_parse_uploaded_blob(srv: MailsrvProc) -> None:
    aid = account_id(srv, "alice")
    raw = EIGHTBIT.replace(b"Subject: Caf", b"Subject: Uploaded Caf")
    up = requests.post(f"{srv.url}/jmap/upload/{aid}/", data=raw, auth=("alice", USER_PASSWORD), timeout=10).json()
    junk = requests.post(f"{srv.url}/jmap/upload/{aid}/", data=b"\x00\x01 no headers at all\n",
                         auth=("alice", USER_PASSWORD), timeout=10).json()
    missing = "0" * 64
    out = call(srv, "alice", "Email/parse", {"blobIds": [up["blobId"], junk["blobId"], missing]})
    parsed = out["parsed"][up["blobId"]]
    assert set(parsed) == {"messageId", "inReplyTo", "references", "sender", "from", "to", "cc", "bcc", "replyTo",
                           "subject", "sentAt", "hasAttachment", "preview", "bodyValues", "textBody", "htmlBody",
                           "attachments"}
    assert parsed["subject"] == "Uploaded Café ☕ täglich" and parsed["textBody"][0]["type"] == "text/plain"
    assert out["notParsable"] == [junk["blobId"]]
    assert out["notFound"] == [missing]
    other = call(srv, "bob", "Email/parse", {"blobIds": [up["blobId"]]})  # bob cannot read alice's upload
    assert other["notFound"] == [up["blobId"]] and other["parsed"] == {}


# -- ids and errors ----------------------------------------------------------------------------------
def test_not_found_and_foreign_ids(srv: MailsrvProc, mail: dict[str, str]) -> None:
    out = call(srv, "alice", "Email/get", {"ids": [mail["bobs"], "zzzzzz", "not-an-id", mail["eightbit"],
                                                     mail["eightbit"]], "properties": ["subject"]})
    assert [e["id"] for e in out["list"]] == [mail["eightbit"]]
    assert out["notFound"] == [mail["bobs"], "zzzzzz", "not-an-id"]


def test_ids_null_returns_the_account(srv: MailsrvProc, mail: dict[str, str]) -> None:
    out = call(srv, "bob", "Email/get", {"ids": None, "properties": ["id"]})
    assert [e["id"] for e in out["list"]] == [mail["bobs"]]


def test_too_many_ids(srv: MailsrvProc) -> None:
    ids = [jmap_id(i) for i in range(1, 502)]
    assert call_error(srv, "alice", "Email/get", {"ids": ids})["type"] == "requestTooLarge"
    assert call_error(srv, "alice", "Email/parse", {"blobIds": ["a" * 64] * 501})["type"] == "requestTooLarge"


@pytest.mark.parametrize(("args", "error"), [
    ({"properties": ["subject", "nope"]}, "invalidArguments"),
    ({"properties": "subject"}, "invalidArguments"),
    ({"bodyProperties": ["partId", "subject"]}, "invalidArguments"),
    ({"maxBodyValueBytes": -1}, "invalidArguments"),
    ({"fetchTextBodyValues": "yes"}, "invalidArguments"),
    ({"ids": "abc"}, "invalidArguments"),
])
def test_invalid_arguments(srv: MailsrvProc, mail: dict[str, str], args: dict[str, Any], error: str) -> None:
    assert call_error(srv, "alice", "Email/get", {"ids": [mail["rich"]], **args})["type"] == error


def test_foreign_account_is_forbidden(srv: MailsrvProc, mail: dict[str, str]) -> None:
    (resp,) = srv.jmap("alice", [["Email/get", {"accountId": account_id(srv, "bob"), "ids": [mail["bobs"]]}, "c"]])
    assert resp[1]["type"] == "forbidden"
