"""Where a restore reads from: an export directory, or a snapshot of a target fetched piecemeal.

From a snapshot only the account's subtree is fetched, in steps: ``manifest.json``, then the metadata files
it names, then just the blobs the selection needs, into a private temporary directory (0700) that is
removed afterwards, also when the restore fails or is interrupted (SIGINT/SIGTERM). Directories left by a
``kill -9`` are removed by the next restore once their process is gone. A blob the target cannot restore
(missing, or its data damaged in the repository) is isolated and left out; the restore names that message.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from backup.errors import BackupError, ConnectFailure, UnknownObject, UsageError, VerificationMismatch
from backup.exportdir import ExportDir, LayoutError, ManifestError, blob_relpath, load_manifest
from backup.exportdir.account import AccountReader
from backup.exportdir.layout import BLOBS, MANIFEST
from backup.targets.base import SnapshotNotFound, Target, TargetError, TargetIOError, TargetUnavailable, resolve_snapshot
from mailsrv.config import Config

TMP_PREFIX = "mail-restore-"
FETCH_CHUNK = 2000  # blob paths per fetch call (keeps restic's include lists and B2 listings reasonable)


class RestoreSource:
    """One account's export, readable locally; :meth:`ensure_blobs` makes blobs available before use."""

    kind = "dir"

    def __init__(self, reader: AccountReader, description: dict[str, Any]) -> None:
        self.reader = reader
        self.description = description

    @property
    def account(self) -> str:
        return self.reader.manifest.account.name

    def blob(self, sha256: str) -> Path:
        return self.reader.blob_path(sha256)

    def ensure_blobs(self, shas: Iterable[str]) -> None:
        """Make the blobs readable locally (a no-op for an export directory)."""

    def unfetchable(self, sha256: str) -> str | None:
        """Why the blob could not be fetched from the snapshot (None: it was not asked for, or it came)."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> RestoreSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_metadata(reader: AccountReader) -> None:
    problems = reader.check_files()
    if problems:
        raise VerificationMismatch(f"account {reader.manifest.account.name!r}: the backup's metadata is damaged: {problems[0]}")


def _reader(root: Path, account: str) -> AccountReader:
    try:
        reader = AccountReader(root)
    except ManifestError as exc:
        raise VerificationMismatch(f"account {account!r}: {exc}") from None
    _check_metadata(reader)
    return reader


def open_dir_source(directory: str | Path, account: str) -> RestoreSource:
    """The newest complete export of ``account`` in an export directory."""
    export = ExportDir(directory)
    if not export.root.is_dir():
        raise UsageError(f"--from-dir {export.root}: no such directory")
    try:
        export.check_marker()
    except LayoutError as exc:
        raise UsageError(str(exc)) from None
    root = _find_account_dir(export, account)
    if root is None:
        raise UnknownObject(f"account {account!r} has no complete export in {export.root}")
    return RestoreSource(_reader(root, account), {"kind": "dir", "dir": str(export.root), "path": str(root)})


def _find_account_dir(export: ExportDir, account: str) -> Path | None:
    direct = export.account(account)
    with contextlib.suppress(ManifestError):
        if (direct / "manifest.json").exists() and load_manifest(direct).account.name == account:
            return direct
    for root in export.account_dirs():
        with contextlib.suppress(ManifestError):
            info = load_manifest(root).account
            if info.name == account or account.lower() in (e.lower() for e in info.emails):
                return root
    return None


# -- snapshots --------------------------------------------------------------------------------------------
class _Damaged(Exception):
    """The target failed to restore some of the paths asked for (e.g. a pack file whose data is damaged)."""


class SnapshotSource(RestoreSource):
    """An account fetched from a target's snapshot into a private temporary directory."""

    kind = "snapshot"

    def __init__(self, target: Target, snapshot_id: str, account: str, tmp: Path, description: dict[str, Any]) -> None:
        self.target = target
        self.snapshot_id = snapshot_id
        self.tmp = tmp
        self._account = account
        self._failed: dict[str, str] = {}  # blob path → why the target could not restore it
        try:
            try:
                root = self._fetch([MANIFEST], damaged_ok=True)
                manifest = load_manifest(root)
                self._fetch([entry.path for entry in manifest.files.values()], damaged_ok=True)
            except _Damaged as exc:
                raise VerificationMismatch(f"account {account!r} in snapshot {snapshot_id[:12]}: its metadata is damaged: {exc}") from None
            except SnapshotNotFound as exc:
                raise VerificationMismatch(f"account {account!r} in snapshot {snapshot_id[:12]}: {exc}") from None
            except ManifestError as exc:
                raise VerificationMismatch(f"account {account!r} in snapshot {snapshot_id[:12]}: {exc}") from None
            super().__init__(_reader(root, account), description)
            self.root = root
        except BaseException:
            self.close()
            raise

    def _fetch(self, paths: Sequence[str] | None, *, damaged_ok: bool = False) -> Path:
        """Fetch ``paths`` of the account; :class:`SnapshotNotFound` (some path is not in it) passes through.

        With ``damaged_ok`` any other failure of the target (not unreachable, not a full disk) raises
        :class:`_Damaged` so the caller can isolate the paths that cannot be restored.
        """
        try:
            return self.target.fetch(self.snapshot_id, self._account, self.tmp, paths=paths)
        except SnapshotNotFound:
            raise
        except TargetUnavailable as exc:
            raise ConnectFailure(str(exc)) from None
        except TargetIOError as exc:
            raise BackupError(f"target {self.target.name}: fetching account {self._account!r} failed: {exc}") from None
        except TargetError as exc:
            if damaged_ok:
                raise _Damaged(f"target {self.target.name} cannot restore it: {exc}") from None
            raise BackupError(f"target {self.target.name}: fetching account {self._account!r} failed: {exc}") from None

    def ensure_blobs(self, shas: Iterable[str]) -> None:
        """Fetch the blobs not fetched yet: all of ``blobs/`` in one go when most are wanted, else in chunks.

        A blob the snapshot lacks, or whose data the target cannot restore (a damaged pack file), is left
        missing — :meth:`unfetchable` says why, the restore reports that message (exit 5) — and does not keep
        the others from being fetched.
        """
        wanted = sorted({blob_relpath(s) for s in shas if not self.blob(s).exists()} - set(self._failed))
        if not wanted:
            return
        if len(wanted) * 2 >= max(1, self.reader.manifest.counts.blobs):
            try:
                self._fetch([BLOBS], damaged_ok=True)
                return
            except (SnapshotNotFound, _Damaged):
                pass  # some blob is missing or cannot be restored: isolate it below
            wanted = [p for p in wanted if not (self.root / p).exists()]
        for i in range(0, len(wanted), FETCH_CHUNK):
            self._fetch_tolerant(wanted[i : i + FETCH_CHUNK])

    def unfetchable(self, sha256: str) -> str | None:
        return self._failed.get(blob_relpath(sha256))

    def _fetch_tolerant(self, paths: list[str]) -> None:
        """Fetch ``paths``; when some cannot be restored, halve the list until those are isolated."""
        try:
            self._fetch(paths, damaged_ok=True)
        except (SnapshotNotFound, _Damaged) as exc:
            if len(paths) == 1:
                self._failed[paths[0]] = "not in the snapshot" if isinstance(exc, SnapshotNotFound) else str(exc)
                return
            half = len(paths) // 2
            self._fetch_tolerant(paths[:half])
            self._fetch_tolerant(paths[half:])

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _tmp_root(tmp_dir: str | None) -> Path:
    root = Path(tmp_dir) if tmp_dir else Path(tempfile.gettempdir())
    if not root.is_dir():
        raise UsageError(f"--tmp-dir {root}: no such directory")
    return root


def remove_stale_tmp(root: Path) -> None:
    """Remove temporary directories of restores whose process no longer runs (after a kill -9)."""
    for path in root.glob(f"{TMP_PREFIX}*"):
        m = re.match(rf"{TMP_PREFIX}(\d+)-", path.name)
        if not m or not path.is_dir() or path.stat().st_uid != os.geteuid():
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_target(cfg: Config, name: str) -> Target:
    """The configured target ``name`` (``[[targets]]``)."""
    if not any(t.name == name for t in cfg.targets):
        known = ", ".join(t.name for t in cfg.targets) or "none configured"
        raise UsageError(f"--target {name!r}: no such target in {cfg.path or 'the config'} ({known})")
    import importlib

    try:
        registry: Any = importlib.import_module("backup.targets.registry")
    except ModuleNotFoundError as exc:
        if exc.name != "backup.targets.registry":
            raise
        raise UsageError("--target: this installation has no target support (backup/targets/registry.py is missing)") from None
    target: Target = registry.open_target(cfg, name)
    return target


def open_snapshot_source(cfg: Config, target_name: str, spec: str, account: str, tmp_dir: str | None = None) -> RestoreSource:
    """``account`` from the snapshot ``spec`` (id, ``latest`` or ``YYYY-MM-DD``) of a target."""
    target = open_target(cfg, target_name)
    try:
        snaps = target.snapshots()
        snap = resolve_snapshot(snaps, spec)
    except SnapshotNotFound as exc:
        raise UnknownObject(f"target {target_name}: {exc}") from None
    except TargetUnavailable as exc:
        raise ConnectFailure(str(exc)) from None
    except TargetError as exc:
        raise BackupError(f"target {target_name}: {exc}") from None
    if account not in snap.accounts:
        raise UnknownObject(f"account {account!r} is not in snapshot {snap.short_id or snap.id} of target {target_name}")
    root = _tmp_root(tmp_dir)
    remove_stale_tmp(root)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=root))  # mode 0700
    description = {"kind": "snapshot", "target": target_name, "snapshot": snap.id, "time": snap.time.isoformat()}
    return SnapshotSource(target, snap.id, account, tmp, description)
