"""What a restore takes from a backup: the operator's selection applied to one account's export.

The selection is decided here, before anything talks to the mail server:

* ``--mailbox PATH`` (repeatable) selects mailboxes and their children. ``PATH`` is the names from the top,
  separated by ``/``; a ``/`` inside a name is written ``\\/`` and a backslash ``\\\\``.
* ``--since`` / ``--until`` bound ``receivedAt``: a date (``YYYY-MM-DD``, UTC) covers that whole day, an
  RFC 3339 time is exact; both ends are inclusive.
* ``--message-id ID`` (repeatable, with or without ``<>``).

Messages are grouped by content (sha256 of the raw bytes): one :class:`Item` is one message to put on the
server, with every selected mailbox and keyword its copies had in the backup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from backup.errors import UnknownObject, UsageError
from backup.exportdir import EmailRecord, MailboxRecord

OBJECTS = ("mail", "identities", "sieve", "vacation")


# -- parsing operator input ---------------------------------------------------------------------------
def parse_mailbox_path(text: str) -> list[str]:
    r"""``Parent/Child`` → ``["Parent", "Child"]``; ``a\/b`` is one name ``a/b``, ``\\`` a backslash."""
    names: list[str] = []
    cur: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, None)
            if nxt not in ("/", "\\"):
                raise UsageError(f"--mailbox {text!r}: a backslash must be followed by / or \\ (write \\\\ for a backslash)")
            cur.append(nxt)
        elif ch == "/":
            names.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    names.append("".join(cur))
    if any(not n for n in names):
        raise UsageError(f"--mailbox {text!r}: empty mailbox name in the path")
    return names


def format_mailbox_path(path: Sequence[str]) -> str:
    """The inverse of :func:`parse_mailbox_path` (for messages and the plan)."""
    return "/".join(n.replace("\\", "\\\\").replace("/", "\\/") for n in path)


def parse_time(text: str, *, end_of_day: bool, option: str) -> datetime:
    """``YYYY-MM-DD`` (UTC; the day's start, or with ``end_of_day`` its last instant) or RFC 3339."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1) - timedelta(microseconds=1) if end_of_day else start
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected YYYY-MM-DD or an RFC 3339 time such as 2026-11-20T08:00:00Z") from None
    if moment.tzinfo is None:
        raise UsageError(f"{option} {text!r}: an RFC 3339 time needs a zone (Z or +01:00)")
    return moment.astimezone(UTC)


def parse_received(text: str) -> datetime | None:
    """A record's ``receivedAt`` as an aware UTC datetime (``None`` when unreadable)."""
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except (ValueError, AttributeError):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def received_key(text: str) -> int | None:
    """``receivedAt`` to whole seconds, for comparing across servers that keep different precision."""
    moment = parse_received(text)
    return int(moment.timestamp()) if moment else None


def normalize_message_id(text: str) -> str:
    return text.strip().removeprefix("<").removesuffix(">").strip()


def parse_objects(text: str | None) -> tuple[set[str], bool]:
    """``--objects mail,sieve`` → the set and whether the operator named them (default: all four)."""
    if text is None:
        return set(OBJECTS), False
    wanted = {p.strip().lower() for p in text.split(",") if p.strip()}
    unknown = sorted(wanted - set(OBJECTS))
    if unknown or not wanted:
        raise UsageError(f"--objects {text!r}: expected a comma-separated list of {', '.join(OBJECTS)}")
    return wanted, True


# -- selection --------------------------------------------------------------------------------------------
@dataclass
class Selection:
    mailboxes: list[list[str]] = field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None
    message_ids: list[str] = field(default_factory=list)

    @property
    def narrowed(self) -> bool:
        """True when the operator picked part of the mail (then other objects are not restored by default)."""
        return bool(self.mailboxes or self.since or self.until or self.message_ids)

    def describe(self) -> dict[str, object]:
        return {
            "mailboxes": [format_mailbox_path(p) for p in self.mailboxes],
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "message_ids": self.message_ids,
        }


@dataclass
class Item:
    """One message (distinct content) to restore, with everything its selected copies carried."""

    sha256: str
    size: int
    received_at: str
    message_id: list[str] | None
    mailbox_ids: list[str]  # source mailbox ids (selected ones), in first-seen order
    keywords: dict[str, bool]  # original spelling; merged case-insensitively
    email_ids: list[str]  # the source email ids (records) behind it

    def keyword_set(self) -> frozenset[str]:
        return frozenset(k.lower() for k, v in self.keywords.items() if v)


@dataclass
class Plan:
    """The selection resolved against the export: mailboxes (with ancestors) and messages to restore."""

    mailboxes: list[MailboxRecord]  # selected mailboxes and their ancestors, parents first
    selected_mailbox_ids: set[str]
    items: list[Item]
    orphans: int = 0  # messages whose mailboxes are not in the backup's mailbox list (go to the inbox)
    paths: dict[str, list[str]] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(i.size for i in self.items)


def _descendants(records: list[MailboxRecord], roots: set[str]) -> set[str]:
    children: dict[str | None, list[str]] = {}
    for m in records:
        children.setdefault(m.parent_id, []).append(m.id)
    out: set[str] = set()
    stack = list(roots)
    while stack:
        mid = stack.pop()
        if mid in out:
            continue
        out.add(mid)
        stack += children.get(mid, [])
    return out


def _find_mailbox(records: list[MailboxRecord], paths: dict[str, list[str]], wanted: list[str]) -> list[str]:
    exact = [m.id for m in records if paths[m.id] == wanted]
    if exact:
        return exact
    # IMAP habit: "INBOX" in any case names the inbox
    folded = [m.id for m in records if [n.casefold() for n in paths[m.id]] == [n.casefold() for n in wanted]]
    return folded


def build_plan(account: str, mailboxes: list[MailboxRecord], emails: Iterable[EmailRecord], sel: Selection) -> Plan:
    """Apply ``sel`` to an export; a mailbox or Message-ID that is not in the backup is :class:`UnknownObject`."""
    from backup.exportdir import mailbox_paths

    paths = mailbox_paths(mailboxes)
    by_id = {m.id: m for m in mailboxes}
    if sel.mailboxes:
        roots: set[str] = set()
        for wanted in sel.mailboxes:
            found = _find_mailbox(mailboxes, paths, wanted)
            if not found:
                raise UnknownObject(f"mailbox {format_mailbox_path(wanted)!r} is not in the backup of account {account!r}")
            roots.update(found)
        selected = _descendants(mailboxes, roots)
    else:
        selected = set(by_id)
    wanted_ids = {normalize_message_id(m) for m in sel.message_ids}
    matched_ids: set[str] = set()
    items: dict[str, Item] = {}
    orphans = 0
    for rec in emails:
        if sel.since or sel.until:
            moment = parse_received(rec.received_at)
            if moment is None or (sel.since and moment < sel.since) or (sel.until and moment > sel.until):
                continue
        if wanted_ids:
            ids = {normalize_message_id(m) for m in rec.message_id or []}
            hit = ids & wanted_ids
            if not hit:
                continue
            matched_ids |= hit
        known = [m for m in rec.mailbox_ids if m in by_id]
        boxes = [m for m in known if m in selected]
        if sel.mailboxes and not boxes:
            continue
        if not known:
            orphans += 1
        item = items.get(rec.sha256)
        if item is None:
            items[rec.sha256] = Item(rec.sha256, rec.size, rec.received_at, rec.message_id, list(boxes), dict(rec.keywords), [rec.id])
            continue
        item.email_ids.append(rec.id)
        item.mailbox_ids += [m for m in boxes if m not in item.mailbox_ids]
        have = item.keyword_set()
        item.keywords.update({k: v for k, v in rec.keywords.items() if v and k.lower() not in have})
        if (received_key(rec.received_at) or 0) < (received_key(item.received_at) or 0):
            item.received_at = rec.received_at
    missing = sorted(wanted_ids - matched_ids)
    if missing:
        shown = ", ".join(f"<{m}>" for m in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise UnknownObject(f"message-id {shown} is not in the backup of account {account!r} (within the selection)")
    # a whole-account restore brings back empty mailboxes too; a narrowed one only what the selection touches
    used = {m for i in items.values() for m in i.mailbox_ids}
    if sel.mailboxes:
        used |= selected
    elif not sel.narrowed:
        used |= set(by_id)
    needed: set[str] = set()
    for mid in used:
        cur: MailboxRecord | None = by_id.get(mid)
        seen: set[str] = set()
        while cur is not None and cur.id not in seen:
            seen.add(cur.id)
            needed.add(cur.id)
            cur = by_id.get(cur.parent_id) if cur.parent_id else None
    ordered = sorted((by_id[m] for m in needed), key=lambda m: (len(paths[m.id]), m.sort_order, paths[m.id]))
    return Plan(ordered, selected if sel.mailboxes else set(by_id), list(items.values()), orphans, paths)
