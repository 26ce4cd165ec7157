"""Mapping the backup's mailboxes onto the destination account, creating what is missing.

Each backed-up mailbox is matched by role first (``inbox``, ``sent`` … compared case-insensitively, each
destination mailbox claimed once), then by name under its already-mapped parent. What is missing is created
with its original name, sort order and subscription, parents first, one ``Mailbox/set`` per tree level.
Beneath ``--into-mailbox`` nothing is matched by role and no role is assigned: the whole tree is recreated
under that parent (created if missing).

A server that refuses a name (Cyrus refuses ``/``, the hierarchy separator) gets a substitute — ``/``
becomes U+2215 DIVISION SLASH, then an ASCII-only form, then a short hash-suffixed one — and every substitution is
reported. A mailbox that cannot be created at all is reported as failed; nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from backup.exportdir import MailboxRecord
from mailsrv.client import JmapClient
from mailsrv.client.calls import Invocation
from mailsrv.client.models import Mailbox

from .restore_plan import format_mailbox_path

_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")


def name_candidates(name: str) -> list[str]:
    """The name itself, then substitutes for servers that refuse it (in the order tried)."""
    out = [name]
    if "/" in name:
        out.append(name.replace("/", "\u2215"))
    safe = _UNSAFE.sub("_", name).strip() or "mailbox"
    out.append(safe)
    out.append(f"{re.sub(r'[^A-Za-z0-9 ._-]', '_', safe)[:40].strip() or 'mailbox'}-{hashlib.sha256(name.encode()).hexdigest()[:8]}")
    return list(dict.fromkeys(out))


@dataclass
class MailboxTarget:
    """Where one mailbox of the backup goes on the destination."""

    source_id: str
    source_path: list[str]
    name: str  # the name used on the destination
    dest_id: str | None = None  # None: not there yet (dry run) or failed
    dest_path: list[str] = field(default_factory=list)
    action: str = "create"  # role | path | create | created | failed
    substitute_for: str | None = None  # the original name, when the server refused it
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": format_mailbox_path(self.source_path), "dest_path": format_mailbox_path(self.dest_path),
                               "action": self.action, "dest_id": self.dest_id}
        if self.substitute_for is not None:
            out["substitute_for"] = self.substitute_for
            out["name"] = self.name
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class MailboxMap:
    targets: dict[str, MailboxTarget]  # by source mailbox id
    parent: MailboxTarget | None  # the --into-mailbox parent (and its ancestors' outcome)
    inbox_id: str | None
    base_id: str | None = None  # the --into-mailbox parent's id, once it exists
    created_parents: list[MailboxTarget] = field(default_factory=list)

    def dest_id(self, source_id: str) -> str | None:
        t = self.targets.get(source_id)
        return t.dest_id if t else None

    @property
    def created(self) -> list[MailboxTarget]:
        return self.created_parents + [t for t in self.targets.values() if t.action == "created"]

    @property
    def failed(self) -> list[MailboxTarget]:
        return [t for t in [*self.created_parents, *self.targets.values()] if t.action == "failed"]

    @property
    def substituted(self) -> list[MailboxTarget]:
        return [t for t in [*self.created_parents, *self.targets.values()] if t.substitute_for is not None]


@dataclass
class _Create:
    target: MailboxTarget
    parent_id: str | None
    parent_path: list[str]
    role: str | None
    sort_order: int
    is_subscribed: bool
    attempts: list[tuple[str, str | None]] = field(default_factory=list)


class DestTree:
    """The destination's mailboxes, indexed by (parent, name) and role; updated as mailboxes are created."""

    def __init__(self, mailboxes: list[Mailbox]) -> None:
        self.by_id = {m.id: m for m in mailboxes}
        self.children: dict[tuple[str | None, str], str] = {}
        self.roles: dict[str, list[str]] = {}
        for m in mailboxes:
            self.add(m.id, m.name, m.parent_id, m.role)

    def add(self, mid: str, name: str, parent_id: str | None, role: str | None) -> None:
        self.children.setdefault((parent_id, name), mid)
        if role:
            self.roles.setdefault(role.lower(), []).append(mid)

    def path(self, mid: str | None) -> list[str]:
        out: list[str] = []
        seen: set[str] = set()
        while mid and mid in self.by_id and mid not in seen:
            seen.add(mid)
            out.append(self.by_id[mid].name)
            mid = self.by_id[mid].parent_id
        return list(reversed(out))

    def child(self, parent_id: str | None, name: str) -> tuple[str, str] | None:
        for candidate in name_candidates(name):
            mid = self.children.get((parent_id, candidate))
            if mid is not None:
                return mid, candidate
        return None


def map_mailboxes(client: JmapClient, records: list[MailboxRecord], paths: dict[str, list[str]], *,
                  into_mailbox: list[str] | None, dry_run: bool) -> MailboxMap:
    """Match ``records`` (parents first) on the destination and, unless ``dry_run``, create what is missing."""
    tree = DestTree(client.mailboxes())
    inbox = next(iter(tree.roles.get("inbox", [])), None)
    parent_target: MailboxTarget | None = None
    created_parents: list[MailboxTarget] = []
    base_id: str | None = None
    base_path: list[str] = []
    base_missing = False
    if into_mailbox:
        base_id, base_missing, created_parents = _ensure_path(client, tree, into_mailbox, dry_run)
        parent_target = created_parents[-1] if created_parents else None
        base_path = into_mailbox
    claimed: set[str] = set()
    targets: dict[str, MailboxTarget] = {}
    by_id = {r.id: r for r in records}
    levels: dict[int, list[MailboxRecord]] = {}
    for rec in records:
        levels.setdefault(len(paths.get(rec.id, [rec.name])), []).append(rec)
    for depth in sorted(levels):
        jobs: list[_Create] = []
        for rec in levels[depth]:
            target = MailboxTarget(rec.id, paths.get(rec.id, [rec.name]), rec.name)
            targets[rec.id] = target
            parent = targets.get(rec.parent_id) if rec.parent_id and rec.parent_id in by_id else None
            job = _match(tree, rec, target, parent, claimed, base_id, base_path, base_missing, into_mailbox is not None, dry_run)
            if job is not None:
                jobs.append(job)
        _create_level(client, tree, jobs)
    return MailboxMap(targets, parent_target, inbox, base_id, created_parents)


def _match(tree: DestTree, rec: MailboxRecord, target: MailboxTarget, parent: MailboxTarget | None, claimed: set[str],
           base_id: str | None, base_path: list[str], base_missing: bool, beneath: bool, dry_run: bool) -> _Create | None:
    """Match one mailbox by role, then by name under its parent; the creation job when it is missing (not in a dry run)."""
    parent_missing = (parent is not None and parent.dest_id is None) or (parent is None and base_missing)
    parent_id = parent.dest_id if parent is not None else base_id
    parent_path = parent.dest_path if parent is not None else base_path
    if not beneath and rec.role:
        free = [m for m in tree.roles.get(rec.role.lower(), []) if m not in claimed]
        if free:
            claimed.add(free[0])
            target.dest_id, target.dest_path, target.action = free[0], tree.path(free[0]), "role"
            target.name = tree.by_id[free[0]].name
            return None
    if not parent_missing:
        found = tree.child(parent_id, rec.name)
        if found is not None and found[0] not in claimed:
            claimed.add(found[0])
            target.dest_id, target.action, target.name = found[0], "path", found[1]
            target.dest_path = [*parent_path, found[1]]
            if found[1] != rec.name:
                target.substitute_for = rec.name
            return None
    target.dest_path = [*parent_path, rec.name]
    if dry_run:
        return None
    if parent_missing:
        above = format_mailbox_path(parent.source_path if parent is not None else base_path)
        target.action, target.error = "failed", f"its parent {above!r} could not be created"
        return None
    role = rec.role.lower() if rec.role and not beneath and not tree.roles.get(rec.role.lower()) else None
    job = _Create(target, parent_id, parent_path, role, rec.sort_order, rec.is_subscribed)
    job.attempts = [(n, r) for n in name_candidates(rec.name) for r in dict.fromkeys([role, None])]
    return job


def _ensure_path(client: JmapClient, tree: DestTree, path: list[str], dry_run: bool) -> tuple[str | None, bool, list[MailboxTarget]]:
    """The mailbox at ``path`` (top-level names, no roles), created level by level when missing."""
    parent: str | None = None
    outcome: list[MailboxTarget] = []
    for depth, name in enumerate(path, 1):
        found = tree.children.get((parent, name))
        if found is not None:
            parent = found
            continue
        target = MailboxTarget("", path[:depth], name, dest_path=path[:depth])
        outcome.append(target)
        if dry_run:
            return None, True, outcome
        job = _Create(target, parent, path[: depth - 1], None, 0, True, [(n, None) for n in name_candidates(name)])
        _create_level(client, tree, [job])
        if target.dest_id is None:
            return None, True, outcome
        parent = target.dest_id
    return parent, False, outcome


def _create_level(client: JmapClient, tree: DestTree, jobs: list[_Create]) -> None:
    """Create sibling-independent mailboxes in as few Mailbox/set calls as the limits allow, retrying refusals."""
    aid = client.account_id
    per_call = max(1, client.limits.max_objects_in_set)
    todo = [j for j in jobs if j.attempts]
    while todo:
        for chunk in _chunks(todo, per_call):
            create = {}
            for n, job in enumerate(chunk):
                name, role = job.attempts[0]
                obj: dict[str, Any] = {"name": name, "parentId": job.parent_id, "isSubscribed": job.is_subscribed}
                if job.sort_order:
                    obj["sortOrder"] = job.sort_order
                if role:
                    obj["role"] = role
                create[f"m{n}"] = obj
            resp = client.request([Invocation("Mailbox/set", {"accountId": aid, "create": create}, "s")])
            args = resp.args("s")
            created = args.get("created") or {}
            refused = args.get("notCreated") or {}
            for n, job in enumerate(chunk):
                name, role = job.attempts.pop(0)
                t = job.target
                got = created.get(f"m{n}")
                if isinstance(got, dict) and got.get("id"):
                    mid = str(got["id"])
                    tree.by_id[mid] = Mailbox(mid, name, job.parent_id, role)
                    tree.add(mid, name, job.parent_id, role)
                    t.dest_id, t.action, t.name = mid, "created", name
                    t.dest_path = [*job.parent_path, name]
                    if name != t.source_path[-1]:
                        t.substitute_for = t.source_path[-1]
                    continue
                err = refused.get(f"m{n}") or {}
                t.error = f"{err.get('type', 'refused')}" + (f": {err['description']}" if err.get("description") else "")
                if not job.attempts:
                    t.action = "failed"
        todo = [j for j in todo if j.attempts and j.target.dest_id is None]
    for job in jobs:
        if job.target.dest_id is not None:
            job.target.error = None


def _chunks(items: list[_Create], size: int) -> Iterator[list[_Create]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
