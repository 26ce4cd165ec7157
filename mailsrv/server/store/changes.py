"""Per-account change history behind JMAP ``/changes`` and every ``state`` string.

Each write transaction takes the account's next modseq; every object it touches gets a changelog row
of (type, modseq, object, op). A type's state is the modseq of its last change. History is bounded per
account and type (``changes_max_history``): a client whose state predates the retained floor gets
``cannotCalculateChanges``, as on Stalwart.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

CREATED, UPDATED, DESTROYED = "c", "u", "d"


class CannotCalculateChanges(Exception):
    """The requested state is unknown or older than the retained history."""


@dataclass
class ChangeSet:
    old_state: str
    new_state: str
    has_more: bool
    created: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    destroyed: list[int] = field(default_factory=list)
    counts_only: bool = False


class ChangeLog:
    def __init__(self, max_history: int = 10_000) -> None:
        self.max_history = max_history

    def next_modseq(self, conn: sqlite3.Connection, account_id: int) -> int:
        """Reserve the account's next modseq (call inside the write transaction)."""
        row = conn.execute(
            "UPDATE principals SET modseq = modseq + 1 WHERE id = ? RETURNING modseq", (account_id,)
        ).fetchone()
        if row is None:
            raise KeyError(account_id)
        return int(row[0])

    def record(
        self,
        conn: sqlite3.Connection,
        account_id: int,
        modseq: int,
        type_: str,
        changes: list[tuple[int, str]],
        *,
        counts_only: bool = False,
    ) -> None:
        """Append (object_id, op) rows for ``type_`` at ``modseq`` and advance that type's state."""
        if not changes:
            return
        conn.executemany(
            "INSERT INTO changelog(account_id, type, modseq, object_id, op, counts_only) VALUES(?,?,?,?,?,?)",
            [(account_id, type_, modseq, oid, op, int(counts_only)) for oid, op in changes],
        )
        row = conn.execute(
            "INSERT INTO states(account_id, type, modseq, entries) VALUES(?,?,?,?) "
            "ON CONFLICT(account_id, type) DO UPDATE SET modseq = excluded.modseq, "
            "entries = entries + excluded.entries RETURNING entries",
            (account_id, type_, modseq, len(changes)),
        ).fetchone()
        if row[0] > self.max_history:
            self._trim(conn, account_id, type_, int(row[0]) - self.max_history)

    def _trim(self, conn: sqlite3.Connection, account_id: int, type_: str, excess: int) -> None:
        cut = conn.execute(
            "SELECT modseq FROM changelog WHERE account_id=? AND type=? ORDER BY modseq LIMIT 1 OFFSET ?",
            (account_id, type_, excess - 1),
        ).fetchone()
        if cut is None:
            return
        deleted = conn.execute(
            "DELETE FROM changelog WHERE account_id=? AND type=? AND modseq <= ?", (account_id, type_, cut[0])
        ).rowcount
        conn.execute(
            "UPDATE states SET floor = ?, entries = entries - ? WHERE account_id=? AND type=?",
            (cut[0], deleted, account_id, type_),
        )

    def state(self, conn: sqlite3.Connection, account_id: int, type_: str) -> str:
        row = conn.execute(
            "SELECT modseq FROM states WHERE account_id=? AND type=?", (account_id, type_)
        ).fetchone()
        return str(row[0] if row else 0)

    def changes(
        self, conn: sqlite3.Connection, account_id: int, type_: str, since: str, max_changes: int
    ) -> ChangeSet:
        """Changes after ``since``; at most ``max_changes`` ids, never splitting one modseq."""
        if not since.isdigit() or len(since) > 18:
            raise CannotCalculateChanges(since)
        since_n = int(since)
        row = conn.execute(
            "SELECT modseq, floor FROM states WHERE account_id=? AND type=?", (account_id, type_)
        ).fetchone()
        current, floor = (row[0], row[1]) if row else (0, 0)
        if since_n > current or since_n < floor:
            raise CannotCalculateChanges(since)
        rows = conn.execute(
            "SELECT modseq, object_id, op, counts_only FROM changelog "
            "WHERE account_id=? AND type=? AND modseq > ? ORDER BY modseq, rowid",
            (account_id, type_, since_n),
        ).fetchall()
        first: dict[int, str] = {}
        last: dict[int, str] = {}
        counts_only = True
        new_state = since_n
        has_more = False
        i = 0
        while i < len(rows):
            modseq = rows[i][0]
            j = i
            group = []
            while j < len(rows) and rows[j][0] == modseq:
                group.append(rows[j])
                j += 1
            touched = set(first) | {r[1] for r in group}
            if len(touched) > max_changes and first:
                has_more = True
                break
            for _, oid, op, co in group:
                first.setdefault(oid, op)
                last[oid] = op
                if not (op == UPDATED and co):
                    counts_only = False
            new_state = modseq
            i = j
        if not has_more:
            new_state = max(new_state, current)
        cs = ChangeSet(str(since_n), str(new_state), has_more)
        for oid, op in first.items():
            end = last[oid]
            if op == CREATED:
                if end != DESTROYED:
                    cs.created.append(oid)
            elif end == DESTROYED:
                cs.destroyed.append(oid)
            else:
                cs.updated.append(oid)
        cs.counts_only = counts_only and bool(cs.updated) and not cs.created and not cs.destroyed
        return cs
