"""The one narrow interface every backup target implements (restic, native B2, native S3).

A *snapshot* is an immutable copy of some account directories of the export at one point in time. Targets
never see JMAP or mailboxes: they move the export format (backup/exportdir) and nothing else. Every target
type passes the same contract test suite (tests/test_target_contract.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from mailsrv.config import KeepPolicy


class TargetError(Exception):
    """A target operation failed; the message names the target and what went wrong (never a secret)."""


class TargetUnavailable(TargetError):
    """The repository/bucket cannot be reached, or rejected the credentials."""


class SnapshotNotFound(TargetError):
    """No snapshot matches the id, ``latest`` or date given."""


class TargetIOError(TargetError):
    """The target's storage is full or not writable (e.g. a local repository's disk is full)."""


@dataclass
class Snapshot:
    id: str
    time: datetime  # timezone-aware
    target: str
    accounts: list[str]  # account names (as in the manifests), not directory names
    host: str = ""
    short_id: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "short_id": self.short_id or self.id[:8], "time": self.time.isoformat(),
                "target": self.target, "accounts": self.accounts, "host": self.host, **self.extra}


@dataclass
class ShipResult:
    target: str
    snapshot_id: str
    accounts: list[str]
    bytes_added: int
    files_new: int = 0
    duration: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)  # account → why it is not in the snapshot


@dataclass
class PruneResult:
    target: str
    kept: list[str]
    removed: list[str]
    bytes_freed: int | None = None


@dataclass
class CheckResult:
    target: str
    ok: bool
    detail: str = ""
    read_data_percent: float | None = None


Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@runtime_checkable
class Target(Protocol):
    """What mail-backup asks of any repository."""

    name: str

    def init(self) -> None:
        """Create the repository/bucket layout if it does not exist (idempotent)."""

    def ship(self, export_root: Path, account_dirs: Sequence[Path], *, host: str, progress: Progress | None = None) -> ShipResult:
        """Store one new snapshot holding ``account_dirs`` (complete accounts of the export under ``export_root``).

        Nothing half-written is ever listed as a snapshot: a failure leaves the previous snapshots as they were.
        """

    def snapshots(self) -> list[Snapshot]:
        """Every complete snapshot, oldest first."""

    def fetch(self, snapshot_id: str, account: str, dest: Path, *, paths: Sequence[str] | None = None) -> Path:
        """Materialise ``account``'s directory from a snapshot under ``dest`` and return its path.

        ``paths`` (relative to the account directory, e.g. ``manifest.json``, ``meta/...``, ``blobs/ab/cd/...``)
        restricts what is fetched; ``None`` fetches the whole account directory.
        """

    def forget(self, keep: KeepPolicy, *, dry_run: bool = False) -> PruneResult:
        """Apply the retention policy and reclaim space (restic ``forget --prune``; object GC for b2/s3)."""

    def check(self, *, read_data_percent: float | None = None) -> CheckResult:
        """Verify the repository's integrity, optionally reading a share of the data."""


def resolve_snapshot(snapshots: Sequence[Snapshot], spec: str) -> Snapshot:
    """``ID`` (full or unique prefix), ``latest``, or ``YYYY-MM-DD`` = the newest snapshot at or before that day."""
    if not snapshots:
        raise SnapshotNotFound("the target has no snapshots")
    ordered = sorted(snapshots, key=lambda s: s.time)
    if spec == "latest":
        return ordered[-1]
    try:
        day = datetime.strptime(spec, "%Y-%m-%d").date()
    except ValueError:
        matches = [s for s in ordered if s.id.startswith(spec) or s.short_id == spec]
        if len(matches) == 1:
            return matches[0]
        raise SnapshotNotFound(f"snapshot {spec!r} {'is ambiguous' if matches else 'not found'}") from None
    candidates = [s for s in ordered if s.time.date() <= day]
    if not candidates:
        raise SnapshotNotFound(f"no snapshot at or before {spec}")
    return candidates[-1]
