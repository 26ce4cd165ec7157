"""Interoperability with jmapc 0.4.0, a third-party JMAP client, over HTTPS (it hard-codes https://).

The server runs with ``https_listen`` and its generated self-signed certificate; requests trusts it
through REQUESTS_CA_BUNDLE.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jmapc import (
    Client,
    Comparator,
    EmailBodyPart,
    EmailQueryFilterCondition,
    EmailQueryFilterOperator,
    Operator,
    Ref,
)
from jmapc.methods import (
    EmailGet,
    EmailGetResponse,
    EmailQuery,
    EmailQueryChanges,
    EmailQueryChangesResponse,
    EmailQueryResponse,
    EmailSet,
    EmailSetResponse,
    MailboxGet,
    MailboxGetResponse,
    SearchSnippetGet,
    SearchSnippetGetResponse,
)

from tests.conftest import USER_PASSWORD, MailsrvProc, free_port, start_mailsrv
from tests.test_jmap_email_get import EIGHTBIT, PDF, RICH, put

BASE = 1_704_067_200.0  # 2024-01-01T00:00:00Z


@dataclass
class Tls:
    srv: MailsrvProc
    host: str
    ids: dict[str, str]

    def client(self, user: str = "alice") -> Client:
        return Client.create_with_password(host=self.host, user=user, password=USER_PASSWORD)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    port = free_port()
    srv = start_mailsrv(Path(tmp_path_factory.mktemp("jmapc")), https_listen=f"127.0.0.1:{port}")
    srv.add_account("alice")
    ids = {
        "rich": put(srv, "alice", RICH, received_at=BASE + 60),
        "eightbit": put(srv, "alice", EIGHTBIT, received_at=BASE + 120, keywords={"$seen": True}),
        "sent": put(srv, "alice", EIGHTBIT.replace(b"Subject: ", b"Subject: Sent "), received_at=BASE, mailbox="sent"),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REQUESTS_CA_BUNDLE", str(srv.cert))
        yield Tls(srv, f"127.0.0.1:{port}", ids)
    srv.stop()


def _inbox(client: Client) -> str:
    resp = client.request(MailboxGet(ids=None))
    assert isinstance(resp, MailboxGetResponse), resp
    return next(m.id for m in resp.data if m.role == "inbox" and m.id)


def test_session_and_mailboxes(tls: Tls) -> None:
    client = tls.client()
    assert client.jmap_session.api_url == f"https://{tls.host}/jmap/"
    assert client.account_id == tls.srv.session("alice")["primaryAccounts"]["urn:ietf:params:jmap:mail"]
    resp = client.request(MailboxGet(ids=None))
    assert isinstance(resp, MailboxGetResponse)
    assert {m.role for m in resp.data} >= {"inbox", "sent", "trash"}
    inbox = next(m for m in resp.data if m.role == "inbox")
    assert inbox.total_emails == 2


def test_query_then_get_by_reference(tls: Tls) -> None:
    client = tls.client()
    inbox = _inbox(client)
    results = client.request([
        EmailQuery(filter=EmailQueryFilterCondition(in_mailbox=inbox),
                   sort=[Comparator(property="receivedAt", is_ascending=False)], calculate_total=True),
        EmailGet(ids=Ref("/ids"), fetch_text_body_values=True,
                 properties=["id", "blobId", "subject", "from", "to", "receivedAt", "sentAt", "keywords",
                             "attachments", "textBody", "bodyValues", "hasAttachment", "preview", "messageId"]),
    ])
    query, get = results[0].response, results[1].response
    assert isinstance(query, EmailQueryResponse) and isinstance(get, EmailGetResponse), results
    assert query.ids == [tls.ids["eightbit"], tls.ids["rich"]] and query.total == 2
    eightbit, rich = get.data
    assert eightbit.subject == "Café ☕ täglich" and eightbit.message_id is None
    assert eightbit.keywords == {"$seen": True}
    assert eightbit.mail_from and eightbit.mail_from[0].name == "Zoë Ünal"
    assert rich.subject == "Grüße aus Köln" and rich.has_attachment is True
    assert rich.received_at == datetime.fromtimestamp(BASE + 60, UTC)
    assert rich.sent_at is not None and rich.sent_at.utcoffset() is not None
    assert rich.sent_at.astimezone(UTC) == datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert rich.to and [a.email for a in rich.to] == ["john@example.org", "ann@example.org", "bob@example.org"]
    assert rich.attachments and rich.attachments[0].name == "Résumé.pdf"
    assert rich.text_body and rich.body_values
    assert rich.body_values[rich.text_body[0].part_id or ""].value == "Hallo aus Köln, schöne Grüße!"


def test_filter_operators_and_snippets(tls: Tls) -> None:
    client = tls.client()
    flt = EmailQueryFilterOperator(operator=Operator.OR, conditions=[
        EmailQueryFilterCondition(text="köln"), EmailQueryFilterCondition(mail_from="zoë"),
    ])
    results = client.request([
        EmailQuery(filter=flt, sort=[Comparator(property="subject")]),
        SearchSnippetGet(ids=Ref("/ids"), filter=EmailQueryFilterCondition(text="köln")),
    ])
    query, snippets = results[0].response, results[1].response
    assert isinstance(query, EmailQueryResponse) and isinstance(snippets, SearchSnippetGetResponse), results
    assert query.ids == [tls.ids["eightbit"], tls.ids["rich"], tls.ids["sent"]]
    by_id = {s.email_id: s for s in snippets.data}
    assert by_id[tls.ids["rich"]].subject == "Grüße aus <mark>Köln</mark>"
    assert by_id[tls.ids["rich"]].preview == "Hallo aus <mark>Köln</mark>, schöne Grüße!"
    assert by_id[tls.ids["eightbit"]].subject is None


def test_keyword_update_and_query_changes(tls: Tls) -> None:
    client = tls.client()
    flagged = EmailQueryFilterCondition(has_keyword="$flagged")
    before = client.request(EmailQuery(filter=flagged))
    assert isinstance(before, EmailQueryResponse) and before.ids == []
    result = client.request(EmailSet(update={tls.ids["rich"]: {"keywords/$flagged": True}}))
    assert isinstance(result, EmailSetResponse) and result.updated and tls.ids["rich"] in result.updated, result
    get = client.request(EmailGet(ids=[tls.ids["rich"]], properties=["keywords"]))
    assert isinstance(get, EmailGetResponse) and get.data[0].keywords == {"$flagged": True}
    after = client.request(EmailQuery(filter=flagged))
    assert isinstance(after, EmailQueryResponse) and after.ids == [tls.ids["rich"]]
    changes = client.request(EmailQueryChanges(filter=flagged, since_query_state=before.query_state))
    assert isinstance(changes, EmailQueryChangesResponse), changes
    assert changes.new_query_state == after.query_state
    assert [(a.id, a.index) for a in changes.added] == [(tls.ids["rich"], 0)]
    assert tls.ids["rich"] in changes.removed  # an updated email is re-reported (RFC 8620 §5.6)


def test_blob_download(tls: Tls, tmp_path: Path) -> None:
    client = tls.client()
    get = client.request(EmailGet(ids=[tls.ids["rich"]], properties=["blobId", "attachments"]))
    assert isinstance(get, EmailGetResponse)
    email = get.data[0]
    assert email.attachments and email.blob_id
    pdf = email.attachments[0]
    client.download_attachment(pdf, tmp_path / "cv.pdf")
    assert (tmp_path / "cv.pdf").read_bytes() == PDF
    whole = EmailBodyPart(blob_id=email.blob_id, name="message.eml", type="message/rfc822")
    client.download_attachment(whole, tmp_path / "message.eml")
    assert (tmp_path / "message.eml").read_bytes() == RICH
