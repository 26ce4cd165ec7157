"""The check at the end of every restore: is each restored message on the server, whole and where it belongs?

For every message of the selection that was restored (imported, merged or found present) the destination
email is read again: its content must have the backup's sha256 (``Blob/get`` digest where offered,
otherwise a download hashed on the way — blobs already hashed are known from the journal, since blobs never
change), it must be in every mailbox the selection maps it to and carry the backup's keywords
(case-insensitively); a message imported by this run must also keep its ``receivedAt``. Per mailbox, the
count of restored messages found is compared with the count expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mailsrv.client import JmapClient

from .restore_emails import get_emails, identify
from .restore_journal import Journal
from .restore_plan import Item, received_key


@dataclass
class MailboxCount:
    path: str
    dest_id: str
    expected: int = 0
    found: int = 0
    total: int | None = None  # every email in the destination mailbox (restored or not)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "dest_id": self.dest_id, "expected": self.expected, "found": self.found, "total": self.total}


@dataclass
class Verification:
    checked: int = 0
    mismatches: list[tuple[Item, str]] = field(default_factory=list)
    mailboxes: list[MailboxCount] = field(default_factory=list)
    downloads: int = 0

    @property
    def ok(self) -> bool:
        return not self.mismatches and all(c.found >= c.expected for c in self.mailboxes)


def verify(client: JmapClient, expected: dict[str, tuple[Item, list[str]]], claimed: dict[str, str], imported: set[str],
           mailbox_paths: dict[str, str], journal: Journal, *, use_digest: bool, workers: int) -> Verification:
    """Check ``expected`` (sha256 → (item, destination mailbox ids)) against the emails ``claimed`` for them."""
    result = Verification()
    counts = {mid: MailboxCount(path, mid) for mid, path in mailbox_paths.items()}
    emails = get_emails(client, sorted(set(claimed.values())))
    shas, _, downloads = identify(client, emails.values(), journal, use_digest=use_digest, workers=workers, fresh=True)
    result.downloads = downloads
    for sha, (item, mailboxes) in expected.items():
        result.checked += 1
        for mid in mailboxes:
            if mid in counts:
                counts[mid].expected += 1
        eid = claimed.get(sha)
        email = emails.get(eid) if eid else None
        if email is None:
            result.mismatches.append((item, "not on the server after the restore"))
            continue
        got = shas.get(email.id)
        if got != sha:
            detail = f"email {email.id} holds other bytes than the backup (sha256 {(got or 'unknown')[:16]}…)"
            if sha in imported:
                detail += "; the server rewrote the message on import (Cyrus, for one, replaces 8-bit header bytes unless munge8bit is off)"
            result.mismatches.append((item, detail))
            continue
        problems = []
        missing_boxes = [mailbox_paths.get(m, m) for m in mailboxes if not email.mailbox_ids.get(m)]
        if missing_boxes:
            problems.append(f"not in mailbox {', '.join(repr(p) for p in missing_boxes)}")
        missing_kw = sorted(item.keyword_set() - email.keyword_set)
        if missing_kw:
            problems.append(f"keywords missing: {' '.join(missing_kw)}")
        if sha in imported and received_key(email.received_at) != received_key(item.received_at):
            problems.append(f"receivedAt is {email.received_at}, the backup has {item.received_at}")
        if problems:
            result.mismatches.append((item, "; ".join(problems)))
        for mid in mailboxes:
            if email.mailbox_ids.get(mid) and mid in counts:
                counts[mid].found += 1
    totals = _totals(client, list(counts))
    for mid, c in counts.items():
        c.total = totals.get(mid)
    result.mailboxes = sorted(counts.values(), key=lambda c: c.path)
    journal.flush()
    return result


def _totals(client: JmapClient, ids: list[str]) -> dict[str, int]:
    if not ids:
        return {}
    objs, _, _ = client.get_objects("Mailbox", ids, ["id", "totalEmails"])
    return {str(o["id"]): int(o["totalEmails"]) for o in objs if isinstance(o.get("totalEmails"), int)}
