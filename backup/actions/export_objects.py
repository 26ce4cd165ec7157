"""Everything of an account besides the emails: the mailbox tree, identities, Sieve scripts, vacation, quota.

What the server does not offer for the account goes into ``manifest.unsupported`` with the reason, decided
from the account's capabilities (:meth:`~mailsrv.client.JmapClient.features`) and from the server turning a
method down; nothing is silently left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backup.exportdir import MailboxRecord, mailbox_paths
from mailsrv.client import JmapClient, UnsupportedCapability
from mailsrv.client.errors import ProtocolError
from mailsrv.client.models import Mailbox, to_json

# Kinds an account may offer that this version does not export (recorded, never silently dropped).
NOT_EXPORTED = {
    "contacts": "urn:ietf:params:jmap:contacts",
    "calendars": "urn:ietf:params:jmap:calendars",
    "files": "urn:ietf:params:jmap:filenode",
}
SIEVE_MAX = 16 << 20


# -- mailboxes --------------------------------------------------------------------------------------------
def mailbox_records(boxes: list[Mailbox]) -> list[MailboxRecord]:
    """Mailbox/get objects → records with their path of names; a malformed mailbox is a ProtocolError."""
    out = []
    for m in boxes:
        if not isinstance(m.id, str) or not m.id or not isinstance(m.name, str):
            raise ProtocolError(f"Mailbox/get: mailbox {m.id!r} has no id or name")
        parent = m.parent_id if isinstance(m.parent_id, str) and m.parent_id else None
        role = m.role.lower() if isinstance(m.role, str) and m.role else None
        sort = m.sort_order if isinstance(m.sort_order, int) and not isinstance(m.sort_order, bool) else 0
        out.append(MailboxRecord(id=m.id, name=m.name, parent_id=parent, role=role, sort_order=sort,
                                 is_subscribed=bool(m.is_subscribed), path=[]))
    paths = mailbox_paths(out)
    for r in out:
        r.path = paths[r.id]
    return sorted(out, key=lambda r: r.id)


def fetch_mailboxes(client: JmapClient, account_id: str) -> tuple[list[MailboxRecord], dict[str, int | None]]:
    """Every mailbox as a record, and the server's ``totalEmails`` per mailbox."""
    boxes = client.mailboxes(account_id=account_id)
    return mailbox_records(boxes), {m.id: m.total_emails for m in boxes}


# -- identities, sieve, vacation, quota -------------------------------------------------------------------
@dataclass
class Objects:
    """What the account's other objects contribute to the export."""

    data: dict[str, Any] = field(default_factory=dict)  # kind → JSON written to meta/<kind>-<run>.json
    unsupported: dict[str, str] = field(default_factory=dict)
    sieve_blobs: dict[str, int] = field(default_factory=dict)  # sha256 → size
    counts: dict[str, int] = field(default_factory=dict)


def export_objects(client: JmapClient, account_id: str, features: dict[str, bool],
                   put_blob: Callable[[bytes], str] | None) -> Objects:
    """Identities, Sieve scripts (and their blobs, through ``put_blob``), vacation response and quotas.

    ``put_blob`` stores a script's bytes and returns their sha256; ``None`` (dry run) only hashes them.
    """
    objs = Objects()

    def attempt(kind: str, offered: bool, urn: str, fetch: Callable[[], Any]) -> None:
        if not offered:
            objs.unsupported[kind] = f"the server does not offer {urn} for this account"
            return
        try:
            objs.data[kind] = fetch()
        except UnsupportedCapability as exc:
            objs.unsupported[kind] = str(exc)

    def identities() -> list[dict[str, Any]]:
        found = client.identities(account_id=account_id)
        objs.counts["identities"] = len(found)
        return [to_json(i) for i in found]

    def sieve() -> list[dict[str, Any]]:
        scripts = []
        for s in client.sieve_scripts(account_id=account_id):
            if not s.blob_id:
                raise ProtocolError(f"SieveScript/get: script {s.id!r} has no blobId")
            data = client.fetch_blob(s.blob_id, account_id=account_id, max_size=SIEVE_MAX)
            sha = put_blob(data) if put_blob is not None else hashlib.sha256(data).hexdigest()
            objs.sieve_blobs[sha] = len(data)
            scripts.append({"id": s.id, "name": s.name, "is_active": bool(s.is_active), "blob_id": s.blob_id, "sha256": sha})
        objs.counts["sieve_scripts"] = len(scripts)
        return sorted(scripts, key=lambda s: str(s["id"]))

    def vacation() -> list[dict[str, Any]]:  # a list holding the singleton, like VacationResponse/get's list
        return [to_json(client.vacation_response(account_id=account_id))]

    def quota() -> list[dict[str, Any]]:
        return [to_json(q) for q in client.quotas(account_id=account_id)]

    attempt("identities", features.get("identities", False), "urn:ietf:params:jmap:submission (identities)", identities)
    attempt("sieve", features.get("sieve", False), "urn:ietf:params:jmap:sieve", sieve)
    attempt("vacation", features.get("vacation", False), "urn:ietf:params:jmap:vacationresponse", vacation)
    attempt("quota", features.get("quota", False), "urn:ietf:params:jmap:quota", quota)
    caps = client.capabilities(account_id)
    for kind, urn in NOT_EXPORTED.items():
        if urn in caps:
            objs.unsupported[kind] = f"offered by the server ({urn}) but not exported by this version of mail-backup"
    return objs
