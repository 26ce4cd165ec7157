"""Putting the selected messages on the destination: detect what is there, import the rest, merge the gaps.

1. **Detect** by content. The destination's emails are listed once; a candidate (same size) is identified by
   ``Blob/get`` ``digest:sha-256`` where the server offers it, otherwise candidates with the same size and
   ``receivedAt`` (and a shared Message-ID when both have one) are downloaded and hashed. Hashes are kept
   in the :class:`~.restore_journal.Journal` so a resumed or repeated run does not download again.
2. **Merge** messages already present: missing mailboxes and keywords are added with ``Email/set``
   (keywords compared case-insensitively); nothing is removed.
3. **Import** the rest: each message's bytes are checked against the backup's sha256 (a damaged blob is
   reported with account, mailbox, Message-ID and receivedAt, the others go on), uploaded, and imported
   with its keywords and ``receivedAt``; many messages per ``Email/import`` (up to 100 or 32 MB, within
   ``maxObjectsInSet``), several batches in flight at once within ``maxConcurrentUpload`` / ``maxConcurrentRequests``.
   ``alreadyExists`` (Cyrus keeps one email per content) becomes a merge into the existing email.

Running the same restore again finds everything present and changes nothing.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailsrv.client import EmailImport, JmapClient
from mailsrv.client.calls import Invocation
from mailsrv.client.errors import BlobNotFound, HttpError, JmapRequestError, MailClientError, UploadTooLarge
from mailsrv.client.models import Email

from .restore_journal import Journal
from .restore_plan import Item, format_mailbox_path, received_key

EMAIL_PROPERTIES = ["id", "blobId", "mailboxIds", "keywords", "size", "receivedAt", "messageId"]
IMPORT_BATCH = 100  # messages per Email/import call (lowered to maxObjectsInSet) …
IMPORT_BATCH_BYTES = 32 << 20  # … and at most this much mail, so one call never keeps the server busy for long


def pointer(segment: str) -> str:
    """A JSON Pointer path segment (RFC 6901) for patch keys such as ``keywords/<kw>``."""
    return segment.replace("~", "~0").replace("/", "~1")


@dataclass
class Problem:
    """A message that could not be restored (or did not verify), named so an operator can find it."""

    kind: str  # corrupt | missing-blob | refused | unmapped | mismatch
    sha256: str
    detail: str
    mailboxes: list[str]
    message_id: str | None
    received_at: str

    def describe(self, account: str) -> str:
        where = ", ".join(repr(m) for m in self.mailboxes) or "(no mailbox)"
        mid = f"<{self.message_id}>" if self.message_id else "(no Message-ID)"
        return f"account {account!r}, mailbox {where}, Message-ID {mid}, receivedAt {self.received_at}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "sha256": self.sha256, "detail": self.detail, "mailboxes": self.mailboxes,
                "message_id": self.message_id, "received_at": self.received_at}


def problem(item: Item, kind: str, detail: str, paths: dict[str, list[str]]) -> Problem:
    boxes = [format_mailbox_path(paths[m]) for m in item.mailbox_ids if m in paths]
    return Problem(kind, item.sha256, detail, boxes, item.message_id[0] if item.message_id else None, item.received_at)


@dataclass
class DestIndex:
    """The destination account's emails and what is known of their content."""

    emails: dict[str, Email]
    sha_of: dict[str, str]  # email id → sha256 (digest, download or journal)
    by_sha: dict[str, str]  # sha256 → email id
    downloaded: int = 0
    digests: int = 0


class _Sink:
    """A write-only file that keeps nothing: downloads are hashed on the way, never stored."""

    def write(self, data: bytes) -> int:
        return len(data)

    def seekable(self) -> bool:
        return False


def hash_blob(client: JmapClient, blob_id: str) -> str:
    return client.download(blob_id, _Sink(), content_type="message/rfc822").sha256  # type: ignore[arg-type]


def list_emails(client: JmapClient) -> dict[str, Email]:
    return {e.id: e for e in client.iter_emails(properties=EMAIL_PROPERTIES)}


def _may_be(item: Item, email: Email) -> bool:
    if email.size != item.size or received_key(email.received_at) != received_key(item.received_at):
        return False
    if item.message_id and email.message_id:
        return bool(set(item.message_id) & set(email.message_id))
    return True


def identify(client: JmapClient, emails: Iterable[Email], journal: Journal, *, use_digest: bool, workers: int,
             fresh: bool = False) -> tuple[dict[str, str], int, int]:
    """sha256 of ``emails`` by journal, digest or download; ``fresh`` ignores the journal for digests.

    Returns (email id → sha256, digests asked, downloads made).
    """
    out: dict[str, str] = {}
    todo: list[Email] = []
    for e in emails:
        known = journal.get(e.blob_id)
        if known and not (fresh and use_digest):
            out[e.id] = known
        else:
            todo.append(e)
    if not todo:
        return out, 0, 0
    if use_digest:
        digests = client.blob_digests(sorted({e.blob_id for e in todo}))
        for e in todo:
            d = digests.get(e.blob_id)
            if d is not None and d.sha256_hex:
                out[e.id] = d.sha256_hex
                journal.put(e.blob_id, d.sha256_hex)
        return out, len(todo), 0
    by_blob: dict[str, list[Email]] = {}
    for e in todo:
        by_blob.setdefault(e.blob_id, []).append(e)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(hash_blob, client, blob_id): blob_id for blob_id in by_blob}
        for fut in as_completed(futures):
            blob_id = futures[fut]
            try:
                sha = fut.result()
            except BlobNotFound:
                continue  # deleted meanwhile
            journal.put(blob_id, sha)
            for e in by_blob[blob_id]:
                out[e.id] = sha
    return out, 0, len(by_blob)


def detect(client: JmapClient, items: Sequence[Item], journal: Journal, *, use_digest: bool, workers: int) -> DestIndex:
    """Which of ``items`` the destination already holds (by sha256 of the raw message)."""
    emails = list_emails(client)
    sizes = {i.size for i in items}
    if use_digest:
        candidates = [e for e in emails.values() if e.size in sizes]
    else:
        keyed: dict[tuple[int, int | None], list[Item]] = {}
        for i in items:
            keyed.setdefault((i.size, received_key(i.received_at)), []).append(i)
        candidates = [
            e for e in emails.values()
            if journal.get(e.blob_id) or any(_may_be(i, e) for i in keyed.get((e.size, received_key(e.received_at)), []))
        ]
    sha_of, digests, downloads = identify(client, candidates, journal, use_digest=use_digest, workers=workers)
    by_sha: dict[str, str] = {}
    for eid in sorted(sha_of):
        by_sha.setdefault(sha_of[eid], eid)
    return DestIndex(emails, sha_of, by_sha, downloads, digests)


# -- planning ------------------------------------------------------------------------------------------
@dataclass
class ItemPlan:
    item: Item
    action: str  # import | merge | present | failed
    dest_mailboxes: list[str]  # destination mailbox ids (known ones)
    email_id: str | None = None  # existing email (merge/present)
    patch: dict[str, Any] = field(default_factory=dict)


def patch_for(email: Email, mailbox_ids: Iterable[str], item: Item) -> dict[str, Any]:
    """The additive Email/set patch that gives ``email`` the item's mailboxes and keywords."""
    patch: dict[str, Any] = {}
    for mid in mailbox_ids:
        if not email.mailbox_ids.get(mid):
            patch[f"mailboxIds/{pointer(mid)}"] = True
    have = email.keyword_set
    for kw, on in item.keywords.items():
        if on and kw.lower() not in have:
            patch[f"keywords/{pointer(kw)}"] = True
    return patch


# -- importing -------------------------------------------------------------------------------------------
@dataclass
class ImportResult:
    imported: dict[str, str] = field(default_factory=dict)  # sha256 → new email id
    existing: dict[str, str] = field(default_factory=dict)  # sha256 → existing email id (alreadyExists)
    problems: list[tuple[Item, str, str]] = field(default_factory=list)  # (item, kind, detail)
    bytes: int = 0


def check_blob(path: Path, item: Item, unfetchable: str | None = None) -> tuple[str, str] | None:
    """``(kind, detail)`` when the backup's copy of a message is missing or differs from its record.

    ``unfetchable``: why the snapshot's copy could not be fetched (a damaged pack file, …), if it was not.
    """
    h = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        if unfetchable and unfetchable != "not in the snapshot":
            return "corrupt", f"the backup's blob {item.sha256[:16]}… cannot be restored: {unfetchable}"
        return "missing-blob", f"the backup has no blob {item.sha256[:16]}…"
    if h.hexdigest() != item.sha256 or size != item.size:
        return "corrupt", f"the backup's blob {item.sha256[:16]}… is damaged (sha256 {h.hexdigest()[:16]}…, {size} bytes)"
    return None


class Importer:
    """Uploads and imports batches of messages concurrently within the server's limits."""

    def __init__(self, client: JmapClient, blob_path: Callable[[str], Path],
                 unfetchable: Callable[[str], str | None] = lambda sha: None) -> None:
        self.client = client
        self.blob_path = blob_path
        self.unfetchable = unfetchable
        limits = client.limits
        self.batch = max(1, min(IMPORT_BATCH, limits.max_objects_in_set))
        self.workers = max(1, min(limits.max_concurrent_upload, limits.max_concurrent_requests))
        self._stop = threading.Event()

    def run(self, plans: Sequence[ItemPlan], progress: Callable[[ImportResult, int], None]) -> ImportResult:
        total = ImportResult()
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = [pool.submit(self._batch, chunk) for chunk in _chunks(plans, self.batch, IMPORT_BATCH_BYTES)]
            try:
                for fut in as_completed(futures):
                    part = fut.result()
                    total.imported.update(part.imported)
                    total.existing.update(part.existing)
                    total.problems += part.problems
                    total.bytes += part.bytes
                    progress(part, len(part.imported) + len(part.existing) + len(part.problems))
            except BaseException:
                self._stop.set()  # running batches stop after their current upload; nothing half-imported
                for f in futures:
                    f.cancel()
                raise
        return total

    def _batch(self, plans: list[ItemPlan]) -> ImportResult:
        out = ImportResult()
        entries: dict[str, EmailImport] = {}
        by_cid: dict[str, Item] = {}
        for n, plan in enumerate(plans):
            if self._stop.is_set():
                return out
            item = plan.item
            path = self.blob_path(item.sha256)
            bad = check_blob(path, item, self.unfetchable(item.sha256))
            if bad is not None:
                out.problems.append((item, *bad))
                continue
            try:
                up = self.client.upload(path, content_type="message/rfc822")
            except (UploadTooLarge, HttpError, JmapRequestError) as exc:  # this message only; connection problems stop the run
                out.problems.append((item, "refused", f"the server refused the upload: {exc}"))
                continue
            out.bytes += item.size
            cid = f"e{n}"
            by_cid[cid] = item
            entries[cid] = EmailImport(up.blob_id, {m: True for m in plan.dest_mailboxes}, dict(item.keywords), item.received_at)
        if not entries:
            return out
        result = self.client.email_import(entries)
        for cid, item in by_cid.items():
            created = result.created.get(cid)
            if created is not None:
                out.imported[item.sha256] = created.id
                continue
            err = result.not_created.get(cid)
            if err is not None and err.type == "alreadyExists" and err.existing_id:
                out.existing[item.sha256] = err.existing_id
                continue
            detail = f"the server refused the import: {err.type if err else 'no answer'}"
            if err is not None and err.description:
                detail += f" ({err.description})"
            out.problems.append((item, "refused", detail))
        return out


def _chunks(items: Sequence[ItemPlan], count: int, nbytes: int) -> Iterator[list[ItemPlan]]:
    """Consecutive batches of at most ``count`` messages and (unless one message is larger) ``nbytes`` bytes."""
    batch: list[ItemPlan] = []
    size = 0
    for plan in items:
        if batch and (len(batch) >= count or size + plan.item.size > nbytes):
            yield batch
            batch, size = [], 0
        batch.append(plan)
        size += plan.item.size
    if batch:
        yield batch


def apply_patches(client: JmapClient, patches: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Email/set updates, many per call and several calls per request; returns email id → error for refusals."""
    aid = client.account_id
    limits = client.limits
    per_call = max(1, limits.max_objects_in_set)
    per_request = max(1, limits.max_calls_in_request)
    ids = list(patches)
    calls = [
        Invocation("Email/set", {"accountId": aid, "update": {i: patches[i] for i in ids[n : n + per_call]}}, f"u{n}")
        for n in range(0, len(ids), per_call)
    ]
    failed: dict[str, str] = {}
    for first in range(0, len(calls), per_request):
        batch = calls[first : first + per_request]
        resp = client.request(batch)
        for call in batch:
            args = resp.args(call.id)
            for eid, err in (args.get("notUpdated") or {}).items():
                err = err if isinstance(err, dict) else {}
                failed[str(eid)] = str(err.get("type", "refused")) + (f" ({err['description']})" if err.get("description") else "")
    return failed


def get_emails(client: JmapClient, ids: Sequence[str]) -> dict[str, Email]:
    if not ids:
        return {}
    return {e.id: e for e in client.get_emails(list(ids), properties=EMAIL_PROPERTIES)}


__all__ = [
    "DestIndex", "ImportResult", "Importer", "ItemPlan", "MailClientError", "Problem", "apply_patches", "check_blob", "detect",
    "get_emails", "identify", "list_emails", "patch_for", "pointer", "problem",
]
