"""Which emails an export run lists and which blobs it must download.

Three modes (``manifest.run.mode``):

* ``full`` — no usable previous export: list every email (Email/query + Email/get pairs).
* ``incremental`` — ``Email/changes`` since the previous manifest's state: fetch the metadata of created and
  updated emails only (plus the ones the previous run could not export), drop destroyed ones.
* ``resync`` — the server no longer has the changes (``cannotCalculateChanges``; Stalwart trims its history):
  list every email again, but download only blobs whose sha256 is not known yet.

The state is read **before** listing (see :func:`read_states`), so anything that changes while the run lists
is reported again by the next run's ``/changes``. A blob already exported is never downloaded again: JMAP
blob ids are immutable, so ``blobId → sha256`` from the previous emails file (and from the resume journal of
an interrupted run) says which file already holds its bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from backup.exportdir import EmailRecord, blob_relpath
from backup.exportdir.layout import LayoutError
from mailsrv.client import CannotCalculateChanges, Invocation, JmapClient
from mailsrv.client.errors import ProtocolError
from mailsrv.client.models import CORE, MAIL, Email, from_json

Mode = Literal["full", "incremental", "resync"]
EMAIL_PROPERTIES = ["id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt", "messageId"]
JOURNAL = "journal.tsv"


# -- states --------------------------------------------------------------------------------------------
def read_states(client: JmapClient, account_id: str) -> dict[str, str]:
    """The current Email and Mailbox states, in one request, before anything is listed."""
    calls = [Invocation(f"{t}/get", {"accountId": account_id, "ids": [], "properties": ["id"]}, t) for t in ("Email", "Mailbox")]
    resp = client.request(calls, (CORE, MAIL))
    states = {}
    for t in ("Email", "Mailbox"):
        state = resp.args(t).get("state")
        if not isinstance(state, str) or not state:
            raise ProtocolError(f"{t}/get returned no state")
        states[t] = state
    return states


# -- one email's metadata ---------------------------------------------------------------------------------
@dataclass
class EmailMeta:
    """The metadata of one email as listed; its record is complete once the blob's sha256 is known."""

    id: str
    blob_id: str
    size: int
    thread_id: str | None
    mailbox_ids: list[str]
    keywords: dict[str, bool]
    received_at: str
    message_id: list[str] | None

    def record(self, sha256: str, size: int) -> EmailRecord:
        return EmailRecord(id=self.id, blob_id=self.blob_id, sha256=sha256, size=size, thread_id=self.thread_id,
                           mailbox_ids=self.mailbox_ids, keywords=self.keywords, received_at=self.received_at,
                           message_id=self.message_id)


def utc_time(value: str) -> str:
    """RFC 3339 in UTC (``…Z``); raises ValueError for anything that is not a date-time."""
    when = datetime.fromisoformat(value)
    if when.tzinfo is None:
        raise ValueError("no time zone")
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_email(email: Email) -> EmailMeta:
    """Check one Email/get object; a missing or mistyped property is a :class:`ProtocolError` naming it."""
    eid = email.id if isinstance(email.id, str) and email.id else None

    def bad(what: str) -> ProtocolError:
        return ProtocolError(f"Email/get: email {eid!r}: {what}")

    if eid is None:
        raise bad("no id")
    if not isinstance(email.blob_id, str) or not email.blob_id:
        raise bad("no blobId")
    if not isinstance(email.mailbox_ids, dict) or not all(isinstance(k, str) for k in email.mailbox_ids):
        raise bad("mailboxIds is not an object")
    if not isinstance(email.keywords, dict):
        raise bad("keywords is not an object")
    if not isinstance(email.received_at, str) or not email.received_at:
        raise bad("no receivedAt")
    try:
        received = utc_time(email.received_at)
    except ValueError:
        raise bad(f"receivedAt {email.received_at!r} is not an RFC 3339 time") from None
    message_id = email.message_id
    if message_id is not None and not (isinstance(message_id, list) and all(isinstance(m, str) for m in message_id)):
        raise bad("messageId is not a list of strings")
    size = email.size if isinstance(email.size, int) and not isinstance(email.size, bool) and email.size >= 0 else 0
    thread = email.thread_id if isinstance(email.thread_id, str) and email.thread_id else None
    return EmailMeta(
        id=eid, blob_id=email.blob_id, size=size, thread_id=thread,
        mailbox_ids=sorted(k for k, v in email.mailbox_ids.items() if v),
        keywords={str(k): True for k, v in email.keywords.items() if v is True},
        received_at=received, message_id=message_id or None,
    )


def _from_wire(obj: Any) -> Email:
    if not isinstance(obj, Mapping):
        raise ProtocolError(f"Email/get returned a non-object in its list: {str(obj)[:60]!r}")
    try:
        return from_json(Email, obj)
    except TypeError:
        raise ProtocolError("Email/get returned an email without id") from None


def list_all(client: JmapClient, account_id: str) -> Iterator[EmailMeta]:
    """Every email of the account (Email/query + Email/get pairs, batched at the session's limits)."""
    try:
        for email in client.iter_emails(account_id=account_id, properties=EMAIL_PROPERTIES):
            yield parse_email(email)
    except TypeError:  # the client builds Email objects; a server object without "id" cannot become one
        raise ProtocolError("Email/get returned an email without id") from None


def get_some(client: JmapClient, account_id: str, ids: Iterable[str]) -> tuple[list[EmailMeta], list[str]]:
    """Metadata of the given emails (batched); also the ids the server no longer has."""
    wanted = sorted(set(ids))
    if not wanted:
        return [], []
    objs, not_found, _ = client.get_objects("Email", wanted, EMAIL_PROPERTIES, account_id=account_id)
    return [parse_email(_from_wire(o)) for o in objs], not_found


# -- what is already on disk ------------------------------------------------------------------------------
class BlobIndex:
    """``blobId → (sha256, size)`` for blobs whose bytes are already in the account directory.

    Fed from the previous emails file and from the resume journal (``.tmp/journal.tsv``), which a run appends
    to after each blob it publishes, so a rerun after a crash does not download those blobs again.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._map: dict[str, tuple[str, int]] = {}
        self._present: dict[str, bool] = {}
        self._journal: Any = None

    def add(self, blob_id: str, sha256: str, size: int) -> None:
        self._map[blob_id] = (sha256, size)

    def present(self, sha256: str) -> bool:
        if sha256 not in self._present:
            try:
                self._present[sha256] = (self.root / blob_relpath(sha256)).is_file()
            except LayoutError:
                self._present[sha256] = False
        return self._present[sha256]

    def get(self, blob_id: str) -> tuple[str, int] | None:
        known = self._map.get(blob_id)
        return known if known is not None and self.present(known[0]) else None

    def load_records(self, records: Iterable[EmailRecord]) -> None:
        for r in records:
            self.add(r.blob_id, r.sha256, r.size)

    def load_journal(self, path: Path) -> int:
        """Entries of an interrupted run's journal (torn or foreign lines are skipped)."""
        n = 0
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.rstrip("\n").split("\t")
                    if len(parts) == 3 and len(parts[1]) == 64 and parts[2].isdigit():
                        self.add(parts[0], parts[1], int(parts[2]))
                        n += 1
        except FileNotFoundError:
            pass
        return n

    def open_journal(self, path: Path) -> None:
        self._journal = open(path, "a", encoding="utf-8")  # closed by close_journal

    def published(self, blob_id: str, sha256: str, size: int) -> None:
        """Remember a blob that is now durable on disk (and journal it for a rerun)."""
        self.add(blob_id, sha256, size)
        self._present[sha256] = True
        if self._journal is not None and "\t" not in blob_id and "\n" not in blob_id:
            self._journal.write(f"{blob_id}\t{sha256}\t{size}\n")
            self._journal.flush()

    def close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


# -- the plan ---------------------------------------------------------------------------------------------
@dataclass
class EmailPlan:
    """Emails of this run: complete records, and emails waiting for their blob (grouped by blobId)."""

    mode: Mode
    done: dict[str, EmailRecord] = field(default_factory=dict)
    pending: dict[str, list[EmailMeta]] = field(default_factory=dict)
    fetched: int = 0  # email metadata objects fetched from the server
    destroyed: int = 0  # emails the previous export had and the server no longer has

    @property
    def blobs_to_fetch(self) -> int:
        return len(self.pending)

    @property
    def bytes_to_fetch(self) -> int:
        return sum(metas[0].size for metas in self.pending.values())

    @property
    def emails_pending(self) -> int:
        return sum(len(m) for m in self.pending.values())

    def add(self, meta: EmailMeta, index: BlobIndex) -> None:
        self.fetched += 1
        known = index.get(meta.blob_id)
        if known is not None:
            self.done[meta.id] = meta.record(*known)
        else:
            self.pending.setdefault(meta.blob_id, []).append(meta)

    def mailbox_ids(self) -> set[str]:
        ids = {m for r in self.done.values() for m in r.mailbox_ids}
        return ids | {m for metas in self.pending.values() for e in metas for m in e.mailbox_ids}


def plan_emails(client: JmapClient, account_id: str, index: BlobIndex, previous: dict[str, EmailRecord] | None,
                since_state: str | None, retry_ids: Iterable[str] = ()) -> EmailPlan:
    """Decide the mode and list what changed; ``previous`` is ``None`` when there is no usable export, ``since_state``
    ``None`` when its states cannot be used (then every email is listed, known blobs are not downloaded again)."""
    if previous is None:
        plan = EmailPlan("full")
    elif since_state is None:  # a previous export whose states do not apply (another server URL): list everything
        plan = EmailPlan("resync")
    else:
        try:
            changes = client.email_changes(since_state, account_id=account_id)
        except CannotCalculateChanges:
            plan = EmailPlan("resync")
        else:
            plan = EmailPlan("incremental")
            gone = set(changes.destroyed)
            refetch = (set(changes.created) | set(changes.updated) | set(retry_ids)) - gone
            metas, not_found = get_some(client, account_id, refetch)
            gone |= set(not_found)
            refetched = {m.id for m in metas}
            for eid, record in previous.items():
                if eid in gone:
                    plan.destroyed += 1
                elif eid not in refetched:
                    plan.done[eid] = record
            for meta in metas:
                plan.add(meta, index)
            return plan
    for meta in list_all(client, account_id):
        plan.add(meta, index)
    if previous is not None:
        listed = set(plan.done) | {m.id for metas in plan.pending.values() for m in metas}
        plan.destroyed = sum(1 for eid in previous if eid not in listed)
    return plan


def clean_tmp(tmp: Path, keep: str = JOURNAL) -> None:
    """Remove what an interrupted run left in ``.tmp`` (partial downloads), keeping the resume journal."""
    if not tmp.is_dir():
        return
    for path in tmp.iterdir():
        if path.name != keep and path.is_file():
            path.unlink(missing_ok=True)


__all__ = ["EMAIL_PROPERTIES", "JOURNAL", "BlobIndex", "EmailMeta", "EmailPlan", "Mode", "clean_tmp", "list_all", "plan_emails",
           "read_states"]
