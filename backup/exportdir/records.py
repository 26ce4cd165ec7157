"""Records of the metadata files: one JSON object per email (JSONL) and the mailbox tree (JSON array)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EmailRecord(BaseModel):
    """One line of ``emails-<run>.jsonl``; its raw message is ``blobs/…/<sha256>``."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="JMAP Email id on the server")
    blob_id: str = Field(description="JMAP blobId on the server")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the raw RFC 5322 bytes as served")
    size: int = Field(ge=0)
    thread_id: str | None = None
    mailbox_ids: list[str] = Field(description="Ids of the mailboxes (see mailboxes-<run>.json) holding the email")
    keywords: dict[str, bool] = Field(default_factory=dict, description="Keywords exactly as the server spelled them")
    received_at: str = Field(description="RFC 3339 UTC")
    message_id: list[str] | None = None


class MailboxRecord(BaseModel):
    """One item of ``mailboxes-<run>.json``."""

    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    parent_id: str | None = None
    role: str | None = None
    sort_order: int = 0
    is_subscribed: bool = True
    path: list[str] = Field(description="Names from the top-level mailbox down to this one")


def mailbox_paths(records: list[MailboxRecord]) -> dict[str, list[str]]:
    """Each mailbox's path of names; cycles or missing parents end the walk (never loop)."""
    by_id = {m.id: m for m in records}
    out: dict[str, list[str]] = {}
    for m in records:
        path: list[str] = []
        seen: set[str] = set()
        cur: MailboxRecord | None = m
        while cur is not None and cur.id not in seen:
            seen.add(cur.id)
            path.append(cur.name)
            cur = by_id.get(cur.parent_id) if cur.parent_id else None
        out[m.id] = list(reversed(path))
    return out
