"""What the native b2 and s3 targets share: the bucket layout, snapshots, content dedup, retention and GC.

Layout under ``<prefix>/``::

    config.json                         format version and encryption (written once, by the first ship or init)
    data/<object-id>                    content: every file of every account, stored once (id = sha256 of the
                                        bytes, or with encryption an HMAC of it), plus account indexes and shards
    snapshots/<UTC time>-<id>.json      one snapshot manifest, written LAST: nothing half-written is ever listed
    inprogress/ship-<id>.json           a running ship (rewritten every minute); prune does not collect while one lives
    inprogress/gc-<id>.json             a running prune; a ship waits for it to finish

A snapshot manifest lists its accounts; each account entry points at an *account index* object listing the
account's metadata files (path, sha256, size) and its blobs, grouped in *shards* by the first hex digits of
their sha256. Index and shards are content addressed too, so an unchanged account costs nothing and a new
message changes one shard, not the whole list.

Object lock (S3 Object Lock / B2 file lock): every object a snapshot references is locked at least until
the snapshot's ``locked_until``; reused objects are extended in bulk only every ``lock_days`` (the horizon
jumps to now + 2 * lock_days), so a compromised mail host cannot delete or shorten the history.

Optional client-side encryption: AES-256-GCM with a 32-byte key from a file; object ids become
HMAC-SHA256(key, sha256) so the bucket does not reveal message hashes; every object is authenticated.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import hmac
import io
import json
import logging
import math
import os
import random
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol

from mailsrv import __version__
from mailsrv.config import KeepPolicy

from ..exportdir.layout import BLOBS, MANIFEST, account_dir_name, blob_relpath, inside
from ..exportdir.manifest import Manifest
from .base import (
    CheckResult,
    Progress,
    PruneResult,
    ShipResult,
    Snapshot,
    SnapshotNotFound,
    TargetError,
    TargetUnavailable,
    resolve_snapshot,
)
from .retention import apply_policy

log = logging.getLogger(__name__)

FORMAT = "mailsidecar-objects"
FORMAT_VERSION = 1
MiB = 1024 * 1024
HEARTBEAT_SECONDS = 60.0
MARKER_STALE = timedelta(minutes=10)  # a marker not rewritten for this long belongs to a dead process
LIST_THRESHOLD = 100  # at least this many new files before a listing of data/ may replace the HEADs
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SNAP_NAME = re.compile(r"(\d{8}T\d{6}Z)-([0-9a-f]{32})\.json")


# -- storage adapters ----------------------------------------------------------------------------------------
class ObjectMissing(TargetError):
    """The object does not exist."""


class ObjectLocked(TargetError):
    """The object (version) is under retention and cannot be deleted yet."""


@dataclass
class ObjectInfo:
    key: str
    size: int
    mtime: datetime
    retain_until: datetime | None = None


@dataclass
class BucketInfo:
    lock_enabled: bool
    versioned: bool


class ObjectStore(Protocol):
    """The few bucket operations the native targets need (s3.py: boto3; b2.py: b2sdk)."""

    description: str  # e.g. "s3://bucket" — never credentials

    def bucket_info(self) -> BucketInfo: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def put(self, key: str, data: bytes | Path, size: int, *, retain_until: datetime | None = None) -> None:
        """Store the bytes (or the file); integrity-checked in transit (MD5 / SHA-1); multipart when large."""

    def get(self, key: str, out: IO[bytes]) -> None: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def delete(self, key: str, *, older_than: datetime | None = None) -> None:
        """Remove every version of ``key`` (older than ``older_than``); :class:`ObjectLocked` if retention forbids."""

    def extend_retention(self, key: str, until: datetime) -> None: ...

    def abort_stale_uploads(self, prefix: str, older_than: datetime) -> int: ...


# -- encryption ----------------------------------------------------------------------------------------------
class Codec:
    """Object ids and stored bytes: plain (id = sha256) or AES-256-GCM (id = HMAC of the sha256)."""

    MAGIC = b"MSC1"
    overhead = 0

    def __init__(self, key: bytes | None = None) -> None:
        self.encrypted = key is not None
        self._id_key = b""
        self._aead: Any = None
        if key is not None:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF

            def derive(info: bytes) -> bytes:
                return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)

            self._id_key = derive(b"mailsidecar object id")
            self._aead = AESGCM(derive(b"mailsidecar object data"))
            self.overhead = len(self.MAGIC) + 12 + 16

    @staticmethod
    def load_key(text: str) -> bytes:
        """A 32-byte key written as 64 hex digits or base64."""
        text = text.strip()
        try:
            key = bytes.fromhex(text) if re.fullmatch(r"[0-9a-fA-F]{64}", text) else base64.b64decode(text, validate=True)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ValueError("expected 32 random bytes written as 64 hex digits or base64 (e.g. `head -c 32 /dev/urandom | base64`)")
        return key

    def oid(self, sha256: str) -> str:
        if not self.encrypted:
            return sha256
        return hmac.new(self._id_key, bytes.fromhex(sha256), hashlib.sha256).hexdigest()

    def key_check(self) -> str:
        return hmac.new(self._id_key, b"mailsidecar key check", hashlib.sha256).hexdigest()[:32] if self.encrypted else ""

    def seal(self, plain: bytes, name: str) -> bytes:
        if not self.encrypted:
            return plain
        nonce = os.urandom(12)
        return self.MAGIC + nonce + self._aead.encrypt(nonce, plain, name.encode())

    def open(self, stored: bytes, name: str) -> bytes:
        if not self.encrypted:
            return stored
        from cryptography.exceptions import InvalidTag

        if not stored.startswith(self.MAGIC):
            raise ValueError("not an encrypted object")
        try:
            plain: bytes = self._aead.decrypt(stored[4:16], stored[16:], name.encode())
        except InvalidTag:
            raise ValueError("authentication failed (damaged object or wrong key)") from None
        return plain


# -- the formats -----------------------------------------------------------------------------------------------
def _gz_json(obj: Any) -> bytes:
    raw = json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    return gzip.compress(raw, compresslevel=6, mtime=0)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(s: str) -> datetime:
    return datetime.fromisoformat(s)


def shard_digits(blob_count: int) -> int:
    """Hex digits of the sha256 prefix shards are grouped by: ~2,000 blobs per shard at most."""
    return 0 if blob_count <= 2000 else 1 if blob_count <= 32000 else 2


@dataclass
class Ref:
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass
class AccountIndex:
    account: str
    dir: str
    files: dict[str, tuple[str, int]]  # relpath → (sha256, size): manifest.json and metadata files
    shards: dict[str, Ref]  # sha256 prefix → shard object
    digits: int

    def to_bytes(self) -> bytes:
        return _gz_json({"format": "mailsidecar-account-index", "version": 1, "account": self.account, "dir": self.dir,
                         "files": sorted([p, s, n] for p, (s, n) in self.files.items()), "shard_digits": self.digits,
                         "shards": {k: v.to_json() for k, v in sorted(self.shards.items())}})

    @classmethod
    def from_bytes(cls, data: bytes) -> AccountIndex:
        obj = json.loads(gzip.decompress(data))
        if obj.get("format") != "mailsidecar-account-index":
            raise ValueError("not an account index")
        return cls(account=obj["account"], dir=obj["dir"], files={p: (s, int(n)) for p, s, n in obj["files"]},
                   shards={k: Ref(v["sha256"], int(v["size"])) for k, v in obj["shards"].items()}, digits=int(obj["shard_digits"]))


def shard_bytes(blobs: Iterable[tuple[str, int]]) -> bytes:
    return _gz_json({"format": "mailsidecar-blob-shard", "version": 1, "blobs": sorted([s, n] for s, n in blobs)})


def shard_from_bytes(data: bytes) -> dict[str, int]:
    obj = json.loads(gzip.decompress(data))
    if obj.get("format") != "mailsidecar-blob-shard":
        raise ValueError("not a blob shard")
    return {s: int(n) for s, n in obj["blobs"]}


@dataclass
class SnapshotEntry:
    name: str
    dir: str
    index: Ref
    files: int
    bytes: int
    run: str = ""


@dataclass
class SnapshotDoc:
    id: str
    time: datetime
    host: str
    accounts: list[SnapshotEntry]
    locked_until: datetime | None = None
    key: str = ""

    def to_bytes(self) -> bytes:
        tool_version = __version__
        doc = {"format": "mailsidecar-snapshot", "version": 1, "id": self.id, "time": _iso(self.time), "host": self.host,
               "tool": {"name": "mail-backup", "version": tool_version},
               "locked_until": _iso(self.locked_until) if self.locked_until else None,
               "accounts": [{"name": a.name, "dir": a.dir, "index": a.index.to_json(), "files": a.files, "bytes": a.bytes, "run": a.run}
                            for a in self.accounts]}
        return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> SnapshotDoc:
        obj = json.loads(data)
        if obj.get("format") != "mailsidecar-snapshot":
            raise ValueError("not a snapshot manifest")
        return cls(id=obj["id"], time=_parse_time(obj["time"]), host=obj.get("host", ""), key=key,
                   locked_until=_parse_time(obj["locked_until"]) if obj.get("locked_until") else None,
                   accounts=[SnapshotEntry(a["name"], a["dir"], Ref(a["index"]["sha256"], int(a["index"]["size"])), int(a["files"]),
                                           int(a["bytes"]), a.get("run", "")) for a in obj["accounts"]])

    def to_snapshot(self, target: str) -> Snapshot:
        return Snapshot(id=self.id, short_id=self.id[:8], time=self.time, target=target, accounts=[a.name for a in self.accounts],
                        host=self.host, extra={"bytes": sum(a.bytes for a in self.accounts),
                                               **({"locked_until": _iso(self.locked_until)} if self.locked_until else {})})


# -- shipping plans ---------------------------------------------------------------------------------------------
class AccountProblem(Exception):
    """This account cannot be shipped now (damaged or changing export); the others continue."""


@dataclass
class Item:
    """One file to store: where it comes from and what it must hash to."""

    sha256: str
    size: int
    source: Path | bytes
    known: bool  # referenced by the previous snapshot: present and locked as long as that one
    blob: bool = False


@dataclass
class AccountPlan:
    name: str
    dir: str
    run: str
    files: dict[str, tuple[str, int]]
    blobs: dict[str, int]
    items: list[Item] = field(default_factory=list)
    known_meta: set[str] = field(default_factory=set)  # index and shards of the previous snapshot (stored already)


# -- the target -------------------------------------------------------------------------------------------------
class ObjectTarget:
    """A native object-store target (the Target protocol) over an :class:`ObjectStore`."""

    type = "objects"

    def __init__(self, name: str, store: ObjectStore, *, prefix: str = "", codec: Codec | None = None, lock_days: int = 0,
                 connections: int = 8, gc_grace_hours: float = 1.0, host: str = "", keep: KeepPolicy | None = None,
                 prune_wait: float = 3600.0) -> None:
        self.name = name
        self.store = store
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.codec = codec or Codec()
        self.lock_days = lock_days
        self.connections = max(1, connections)
        self.gc_grace = timedelta(hours=gc_grace_hours)
        self.host = host
        self.keep = keep or KeepPolicy()
        self.prune_wait = prune_wait
        self._docs: dict[str, SnapshotDoc] = {}
        self._index_cache: dict[str, AccountIndex] = {}
        self._shard_cache: dict[str, dict[str, int]] = {}
        self._opened = False

    # -- keys ---------------------------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"{self.type} target {self.name} ({self.store.description}/{self.prefix})"

    def k(self, rel: str) -> str:
        return self.prefix + rel

    def data_key(self, sha256: str) -> str:
        return self.k("data/" + self.codec.oid(sha256))

    # -- config marker ------------------------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION,
                "encryption": {"cipher": "AES-256-GCM", "key_check": self.codec.key_check()} if self.codec.encrypted else None}

    def init(self) -> None:
        self._open(create=True)

    def _open(self, *, create: bool = True) -> bool:
        """Check the bucket and the prefix's config.json; False when nothing was ever shipped here (and not ``create``)."""
        if self._opened:
            return True
        info = self.store.bucket_info()
        if self.lock_days and not info.lock_enabled:
            raise TargetError(f"{self.where}: lock days are set but the bucket has no object lock / file lock enabled "
                              "(create the bucket with object lock, or remove the lock setting)")
        buf = io.BytesIO()
        try:
            self.store.get(self.k("config.json"), buf)
        except ObjectMissing:
            if any(True for _ in self.store.list(self.k("snapshots/"))):
                raise TargetError(f"{self.where}: snapshots exist but config.json is missing") from None
            if not create:
                return False
            data = (json.dumps(self._config(), indent=1) + "\n").encode()
            self.store.put(self.k("config.json"), data, len(data))
            self._opened = True
            return True
        try:
            cfg = json.loads(buf.getvalue())
        except ValueError:
            raise TargetError(f"{self.where}: config.json is not JSON (not a mail-backup bucket prefix?)") from None
        if cfg.get("format") != FORMAT or int(cfg.get("version", 0)) > FORMAT_VERSION:
            raise TargetError(f"{self.where}: {self.prefix}config.json is not a mail-backup format this version reads")
        enc = cfg.get("encryption")
        if enc and not self.codec.encrypted:
            raise TargetError(f"{self.where}: the backups here are encrypted; set encryption_key_file")
        if not enc and self.codec.encrypted:
            raise TargetError(f"{self.where}: the backups here are not encrypted; use a new prefix to start encrypted backups")
        if enc and enc.get("key_check") != self.codec.key_check():
            raise TargetUnavailable(f"{self.where}: wrong encryption key (it does not match the one these backups were made with)")
        self._opened = True
        return True

    # -- objects ----------------------------------------------------------------------------------------------------
    def _get_plain(self, sha256: str, *, what: str) -> bytes:
        """Content object ``sha256``, decrypted and verified."""
        key = self.data_key(sha256)
        buf = io.BytesIO()
        try:
            self.store.get(key, buf)
        except ObjectMissing:
            raise TargetError(f"{self.where}: {what}: object {key} is missing") from None
        try:
            plain = self.codec.open(buf.getvalue(), key)
        except ValueError as exc:
            raise TargetError(f"{self.where}: {what}: object {key}: {exc}") from None
        if hashlib.sha256(plain).hexdigest() != sha256:
            raise TargetError(f"{self.where}: {what}: object {key} is damaged (sha256 differs)")
        return plain

    def _put_plain(self, sha256: str, data: bytes | Path, size: int, until: datetime | None) -> int:
        key = self.data_key(sha256)
        if self.codec.encrypted:
            plain = data if isinstance(data, bytes) else Path(data).read_bytes()
            stored = self.codec.seal(plain, key)
            self.store.put(key, stored, len(stored), retain_until=until)
            return len(stored)
        self.store.put(key, data, size, retain_until=until)
        return size

    def _index(self, ref: Ref) -> AccountIndex:
        if ref.sha256 not in self._index_cache:
            data = self._get_plain(ref.sha256, what="account index")
            try:
                self._index_cache[ref.sha256] = AccountIndex.from_bytes(data)
            except (ValueError, KeyError, OSError) as exc:
                raise TargetError(f"{self.where}: account index {ref.sha256[:12]} is unreadable: {exc}") from None
        return self._index_cache[ref.sha256]

    def _shard(self, ref: Ref) -> dict[str, int]:
        if ref.sha256 not in self._shard_cache:
            data = self._get_plain(ref.sha256, what="blob list")
            try:
                self._shard_cache[ref.sha256] = shard_from_bytes(data)
            except (ValueError, KeyError, OSError) as exc:
                raise TargetError(f"{self.where}: blob list {ref.sha256[:12]} is unreadable: {exc}") from None
        return self._shard_cache[ref.sha256]

    def _blobs(self, index: AccountIndex) -> dict[str, int]:
        out: dict[str, int] = {}
        for ref in index.shards.values():
            out.update(self._shard(ref))
        return out

    # -- snapshots ------------------------------------------------------------------------------------------------
    def _snapshot_keys(self) -> list[str]:
        keys = [o.key for o in self.store.list(self.k("snapshots/")) if _SNAP_NAME.fullmatch(o.key.rsplit("/", 1)[-1])]
        return sorted(keys)

    def _doc(self, key: str) -> SnapshotDoc:
        snap_id = _SNAP_NAME.fullmatch(key.rsplit("/", 1)[-1]).group(2)  # type: ignore[union-attr]
        if snap_id in self._docs:
            return self._docs[snap_id]
        buf = io.BytesIO()
        self.store.get(key, buf)
        try:
            doc = SnapshotDoc.from_bytes(self.codec.open(buf.getvalue(), key), key)
        except (ValueError, KeyError, TypeError) as exc:
            raise TargetError(f"{self.where}: snapshot manifest {key} is unreadable: {exc}") from None
        if doc.id != snap_id:
            raise TargetError(f"{self.where}: snapshot manifest {key} names another snapshot ({doc.id})")
        self._docs[snap_id] = doc
        return doc

    def _docs_all(self) -> list[SnapshotDoc]:
        keys = self._snapshot_keys()
        with ThreadPoolExecutor(self.connections) as pool:
            return list(pool.map(self._doc, keys))

    def snapshots(self) -> list[Snapshot]:
        if not self._open(create=False):
            return []
        return [d.to_snapshot(self.name) for d in sorted(self._docs_all(), key=lambda d: d.time)]

    def _find(self, snapshot_id: str) -> SnapshotDoc:
        if snapshot_id in self._docs:
            return self._docs[snapshot_id]
        snap = resolve_snapshot(self.snapshots(), snapshot_id)
        return self._docs[snap.id]

    # -- markers ---------------------------------------------------------------------------------------------------
    def _markers(self, kind: str, now: datetime) -> list[ObjectInfo]:
        """Live markers of running ships or prunes (rewritten within MARKER_STALE of ``now``, server time)."""
        return [o for o in self.store.list(self.k(f"inprogress/{kind}-")) if o.mtime > now - MARKER_STALE]

    @contextlib.contextmanager
    def _marker(self, kind: str) -> Iterator[datetime]:
        """Announce a running ship/prune; yields the server's time of the announcement."""
        key = self.k(f"inprogress/{kind}-{secrets.token_hex(8)}.json")
        body = json.dumps({"host": self.host, "pid": os.getpid(), "started": _iso(datetime.now(UTC))}).encode()
        self.store.put(key, body, len(body))
        info = self.store.head(key)
        server_now = info.mtime if info else datetime.now(UTC)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_SECONDS):
                with contextlib.suppress(TargetError, OSError):
                    self.store.put(key, body, len(body))

        t = threading.Thread(target=beat, name=f"{kind}-marker", daemon=True)
        t.start()
        try:
            yield server_now
        finally:
            stop.set()
            t.join(timeout=5)
            with contextlib.suppress(TargetError, OSError):
                self.store.delete(key)

    # -- ship -----------------------------------------------------------------------------------------------------
    def ship(self, export_root: Path, account_dirs: Sequence[Path], *, host: str, progress: Progress | None = None) -> ShipResult:
        started = time.monotonic()
        self._open(create=True)
        if not account_dirs:
            raise TargetError(f"{self.where}: nothing to ship (no complete accounts)")
        with self._marker("ship") as server_now:
            self._wait_for_prune(server_now)
            keys = self._snapshot_keys()
            prev = self._doc(keys[-1]) if keys else None
            prev_by_dir = {a.dir: a for a in prev.accounts} if prev else {}
            plans: list[AccountPlan] = []
            skipped: dict[str, str] = {}
            for d in account_dirs:
                try:
                    plans.append(self._plan(Path(d), prev_by_dir.get(Path(d).name)))
                except AccountProblem as exc:
                    skipped[_name_for(Path(d))] = str(exc)
                    log.warning("%s: account directory %s skipped: %s", self.where, Path(d).name, exc)
            if not plans:
                raise TargetError(f"{self.where}: no account could be shipped: {_first(skipped)}")
            until, extend_known = self._horizon(prev, datetime.now(UTC))  # retention dates are absolute: this clock
            uploader = _Uploader(self, until, progress, sum(i.size for p in plans for i in p.items if not i.known))
            failed = uploader.run(plans, extend_known, stored_estimate=sum(a.files for a in prev.accounts) if prev else 0)
            for name, why in failed.items():
                skipped[name] = why
            plans = [p for p in plans if p.name not in failed]
            if not plans:
                raise TargetError(f"{self.where}: no account could be shipped: {_first(skipped)}")
            with ThreadPoolExecutor(self.connections) as workers:
                entries = list(workers.map(lambda p: self._store_index(p, uploader, extend_known), plans))
            now = datetime.now(UTC)
            doc = SnapshotDoc(id=secrets.token_hex(16), time=now, host=host, accounts=entries, locked_until=until)
            key = self.k(f"snapshots/{now.strftime('%Y%m%dT%H%M%SZ')}-{doc.id}.json")
            data = self.codec.seal(doc.to_bytes(), key)
            self.store.put(key, data, len(data), retain_until=until)  # the commit point: written last
            doc.key = key
            self._docs[doc.id] = doc
        return ShipResult(target=self.name, snapshot_id=doc.id, accounts=[p.name for p in plans], bytes_added=uploader.bytes_added,
                          files_new=uploader.files_new, duration=time.monotonic() - started, skipped=skipped)

    def _wait_for_prune(self, server_now: datetime) -> None:
        t0 = time.monotonic()
        while True:
            now = server_now + timedelta(seconds=time.monotonic() - t0)
            running = self._markers("gc", now)
            if not running:
                return
            if time.monotonic() - t0 > self.prune_wait:
                raise TargetError(f"{self.where}: a prune has been running since {_iso(min(o.mtime for o in running))}; "
                                  "ship again when it has finished")
            log.info("%s: waiting for a running prune to finish", self.where)
            time.sleep(min(10.0, max(0.1, self.prune_wait / 10)))

    def _horizon(self, prev: SnapshotDoc | None, now: datetime) -> tuple[datetime | None, bool]:
        """(retain-until for this snapshot's objects, whether reused objects need their lock extended)."""
        if not self.lock_days:
            return None, False
        need = now + timedelta(days=self.lock_days)
        if prev is not None and prev.locked_until is not None and prev.locked_until >= need:
            return prev.locked_until, False
        until = (now + timedelta(days=2 * self.lock_days)).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return until, True

    def _plan(self, d: Path, prev: SnapshotEntry | None) -> AccountPlan:
        """What to store for one account directory; reads only what changed since the previous snapshot."""
        try:
            manifest_bytes = (d / MANIFEST).read_bytes()
        except OSError as exc:
            raise AccountProblem(f"{MANIFEST}: {exc.strerror}") from None
        try:
            manifest = Manifest.model_validate_json(manifest_bytes)
        except ValueError as exc:
            raise AccountProblem(f"{MANIFEST} is not a valid manifest: {str(exc).splitlines()[0]}") from None
        prev_files: dict[str, tuple[str, int]] = {}
        prev_blobs: dict[str, int] = {}
        known_meta: set[str] = set()
        if prev is not None:
            try:
                index = self._index(prev.index)
                prev_files, prev_blobs = index.files, self._blobs(index)
                known_meta = {prev.index.sha256, *(r.sha256 for r in index.shards.values())}
            except TargetError as exc:
                log.warning("%s: previous index of %s unusable (%s); re-checking every file", self.where, d.name, exc)
        plan = AccountPlan(name=manifest.account.name, dir=d.name, run=manifest.run.id, files={}, blobs={}, known_meta=known_meta)
        msha = hashlib.sha256(manifest_bytes).hexdigest()
        plan.files[MANIFEST] = (msha, len(manifest_bytes))
        plan.items.append(Item(msha, len(manifest_bytes), manifest_bytes, known=prev_files.get(MANIFEST) == (msha, len(manifest_bytes))))
        for kind, entry in manifest.files.items():
            try:
                path = inside(d, entry.path)
                size = path.stat().st_size
            except OSError as exc:
                raise AccountProblem(f"{entry.path}: {exc.strerror}") from None
            except ValueError as exc:
                raise AccountProblem(str(exc)) from None
            if size != entry.size:
                raise AccountProblem(f"{entry.path}: size {size} differs from the manifest ({entry.size}); export changing or damaged")
            known = prev_files.get(entry.path) == (entry.sha256, entry.size)
            if not known:
                digest = _sha256_file(path)
                if digest != entry.sha256:
                    raise AccountProblem(f"{entry.path} ({kind}): content differs from the manifest; run `mail-backup verify`")
            plan.files[entry.path] = (entry.sha256, entry.size)
            plan.items.append(Item(entry.sha256, entry.size, path, known=known))
        for sha, path, size in _walk_blobs(d):
            plan.blobs[sha] = size
            plan.items.append(Item(sha, size, path, known=prev_blobs.get(sha) == size, blob=True))
        return plan

    def _store_index(self, plan: AccountPlan, up: _Uploader, extend_known: bool) -> SnapshotEntry:
        digits = shard_digits(len(plan.blobs))
        groups: dict[str, list[tuple[str, int]]] = {}
        for sha, size in plan.blobs.items():
            groups.setdefault(sha[:digits], []).append((sha, size))
        if not groups:
            groups[""] = []
        shards: dict[str, Ref] = {}
        for prefix, blobs in groups.items():
            data = shard_bytes(blobs)
            shards[prefix] = up.put_meta(data, extend_known, plan.known_meta)
        index = AccountIndex(account=plan.name, dir=plan.dir, files=plan.files, shards=shards, digits=digits)
        ref = up.put_meta(index.to_bytes(), extend_known, plan.known_meta)
        self._index_cache[ref.sha256] = index
        total = sum(n for _, n in plan.files.values()) + sum(plan.blobs.values())
        return SnapshotEntry(plan.name, plan.dir, ref, len(plan.files) + len(plan.blobs), total, plan.run)

    # -- fetch ----------------------------------------------------------------------------------------------------
    def fetch(self, snapshot_id: str, account: str, dest: Path, *, paths: Sequence[str] | None = None) -> Path:
        if not self._open(create=False):
            raise SnapshotNotFound(f"target {self.name} has no snapshots yet")
        doc = self._find(snapshot_id)
        entry = next((a for a in doc.accounts if a.name == account), None) or next(
            (a for a in doc.accounts if a.dir == account_dir_name(account)), None)
        if entry is None:
            raise SnapshotNotFound(f"account {account!r} is not in snapshot {doc.id[:8]} of target {self.name}")
        index = self._index(entry.index)
        wanted: dict[str, tuple[str, int]] = {}
        if paths is None:
            wanted.update(index.files)
            wanted.update({blob_relpath(s): (s, n) for s, n in self._blobs(index).items()})
        else:
            missing = []
            blobs: dict[str, int] | None = None
            for p in paths:
                inside(Path("/"), p)  # refuses absolute paths and ..
                p = p.strip("/")
                if p in index.files:
                    wanted[p] = index.files[p]
                    continue
                m = re.fullmatch(rf"{BLOBS}/[0-9a-f]{{2}}/[0-9a-f]{{2}}/([0-9a-f]{{64}})", p)
                if m:
                    sha = m.group(1)
                    ref = index.shards.get(sha[:index.digits])
                    shard = self._shard(ref) if ref else {}
                    if sha in shard and blob_relpath(sha) == p:
                        wanted[p] = (sha, shard[sha])
                        continue
                else:
                    if blobs is None and (p == BLOBS or p.startswith(BLOBS + "/")):
                        blobs = self._blobs(index)
                    pool = dict(index.files) | ({blob_relpath(s): (s, n) for s, n in blobs.items()} if blobs else {})
                    under = {q: v for q, v in pool.items() if q.startswith(p + "/")}
                    if under:
                        wanted.update(under)
                        continue
                missing.append(p)
            if missing:
                raise SnapshotNotFound(f"snapshot {doc.id[:8]} of target {self.name}: account {account!r} has no {missing[0]!r}"
                                       f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
        root = Path(dest) / entry.dir
        root.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(self.connections) as workers:
            futures = [workers.submit(self._download, sha, size, inside(root, rel)) for rel, (sha, size) in sorted(wanted.items())]
            for f in futures:
                f.result()
        return root

    def _download(self, sha256: str, size: int, path: Path) -> None:
        if path.exists() and path.stat().st_size == size and _sha256_file(path) == sha256:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        key = self.data_key(sha256)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fetch-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w+b") as f:
                if self.codec.encrypted:
                    buf = io.BytesIO()
                    self._get_or_missing(key, buf, path.name)
                    try:
                        f.write(self.codec.open(buf.getvalue(), key))
                    except ValueError as exc:
                        raise TargetError(f"{self.where}: object {key} ({path.name}): {exc}") from None
                else:
                    self._get_or_missing(key, f, path.name)
                f.flush()
                f.seek(0)
                h = hashlib.sha256()
                while chunk := f.read(MiB):
                    h.update(chunk)
                if h.hexdigest() != sha256:
                    raise TargetError(f"{self.where}: object {key} is damaged: its sha256 differs from {path.name}")
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _get_or_missing(self, key: str, out: IO[bytes], what: str) -> None:
        try:
            self.store.get(key, out)
        except ObjectMissing:
            raise TargetError(f"{self.where}: object {key} ({what}) is missing from the bucket") from None

    # -- retention ----------------------------------------------------------------------------------------------
    def forget(self, keep: KeepPolicy, *, dry_run: bool = False) -> PruneResult:
        if not self._open(create=False):
            return PruneResult(target=self.name, kept=[], removed=[], bytes_freed=0)
        docs = self._docs_all()
        kept, removed = apply_policy(docs, lambda d: d.time, keep)
        result = PruneResult(target=self.name, kept=[d.id for d in kept], removed=[d.id for d in removed], bytes_freed=0)
        if dry_run:
            return result
        with self._marker("gc") as server_now:
            still_locked = []
            for d in removed:
                try:
                    self.store.delete(d.key)
                    self._docs.pop(d.id, None)
                except ObjectLocked:
                    still_locked.append(d)
            if still_locked:
                log.info("%s: %d snapshot(s) are still locked and stay until their lock expires", self.where, len(still_locked))
                result.kept += [d.id for d in still_locked]
                result.removed = [i for i in result.removed if i not in {d.id for d in still_locked}]
            if self._markers("ship", server_now):
                log.info("%s: a ship is running; unreferenced data will be collected by the next prune", self.where)
                return result
            result.bytes_freed = self._collect(server_now)
        return result

    def _referenced(self, docs: Iterable[SnapshotDoc]) -> set[str]:
        """Object keys every remaining snapshot needs (indexes, shards, files, blobs)."""
        refs: set[str] = set()
        seen_index: set[str] = set()
        for d in docs:
            for a in d.accounts:
                if a.index.sha256 in seen_index:
                    continue
                seen_index.add(a.index.sha256)
                refs.add(a.index.sha256)
                index = self._index(a.index)
                refs.update(s for s, _ in index.files.values())
                for ref in index.shards.values():
                    refs.add(ref.sha256)
                    refs.update(self._shard(ref))
        return {self.data_key(s) for s in refs}

    def _collect(self, server_now: datetime) -> int:
        docs = self._docs_all()  # listed again after the ship check: includes anything committed meanwhile
        referenced = self._referenced(docs)
        cutoff = server_now - self.gc_grace
        freed = 0
        locked = 0
        for obj in list(self.store.list(self.k("data/"))):
            if obj.key in referenced or obj.mtime >= cutoff:
                continue
            try:
                self.store.delete(obj.key, older_than=cutoff)
                freed += obj.size
            except ObjectLocked:
                locked += 1
        if locked:
            log.info("%s: %d unreferenced object(s) are still locked; a later prune removes them", self.where, locked)
        with contextlib.suppress(TargetError):
            self.store.abort_stale_uploads(self.k("data/"), cutoff)
        for marker in self.store.list(self.k("inprogress/")):
            if marker.mtime < server_now - timedelta(days=1):
                with contextlib.suppress(TargetError):
                    self.store.delete(marker.key)
        return freed

    # -- check ----------------------------------------------------------------------------------------------------
    def check(self, *, read_data_percent: float | None = None) -> CheckResult:
        if not self._open(create=False):
            return CheckResult(target=self.name, ok=True, detail="no snapshots yet", read_data_percent=read_data_percent)
        problems: list[str] = []
        docs: list[SnapshotDoc] = []
        for key in self._snapshot_keys():
            try:
                docs.append(self._doc(key))
            except TargetError as exc:
                problems.append(str(exc).removeprefix(self.where + ": "))
        expected: dict[str, tuple[str, int, str]] = {}  # key → (sha256, plain size, where it is used)
        for d in docs:
            for a in d.accounts:
                expected.setdefault(self.data_key(a.index.sha256), (a.index.sha256, a.index.size, f"index of {a.name}"))
                try:
                    index = self._index(a.index)
                    for rel, (sha, size) in index.files.items():
                        expected.setdefault(self.data_key(sha), (sha, size, f"{a.name}/{rel}"))
                    for ref in index.shards.values():
                        expected.setdefault(self.data_key(ref.sha256), (ref.sha256, ref.size, f"blob list of {a.name}"))
                        for sha, size in self._shard(ref).items():
                            expected.setdefault(self.data_key(sha), (sha, size, f"{a.name}/{blob_relpath(sha)}"))
                except TargetError as exc:
                    problems.append(f"snapshot {d.id[:8]} account {a.name!r}: {str(exc).removeprefix(self.where + ': ')}")
        present = {o.key: o.size for o in self.store.list(self.k("data/"))}
        for key, (_sha, size, used) in sorted(expected.items()):
            if key not in present:
                problems.append(f"missing object {key} ({used})")
            elif present[key] != size + self.codec.overhead:
                problems.append(f"object {key} has size {present[key]}, expected {size + self.codec.overhead} ({used})")
        if read_data_percent:
            keys = sorted(k for k in expected if k in present)
            n = min(len(keys), math.ceil(len(keys) * read_data_percent / 100))
            sample = random.sample(keys, n)
            with ThreadPoolExecutor(self.connections) as pool:
                futures: list[tuple[str, Future[None]]] = [(k, pool.submit(self._verify_object, k, expected[k][0])) for k in sample]
                for k, f in futures:
                    try:
                        f.result()
                    except TargetError as exc:
                        problems.append(f"{str(exc).removeprefix(self.where + ': ')} ({expected[k][2]})")
        detail = (f"{len(docs)} snapshots, {len(expected)} objects" + (f", read {read_data_percent:g}%" if read_data_percent else "")
                  if not problems else f"{len(problems)} problem(s): " + "; ".join(problems[:5]))
        return CheckResult(target=self.name, ok=not problems, detail=detail, read_data_percent=read_data_percent)

    def _verify_object(self, key: str, sha256: str) -> None:
        buf = io.BytesIO()
        try:
            self.store.get(key, buf)
            plain = self.codec.open(buf.getvalue(), key)
        except ObjectMissing:
            raise TargetError(f"object {key} is missing") from None
        except ValueError as exc:
            raise TargetError(f"object {key}: {exc}") from None
        if hashlib.sha256(plain).hexdigest() != sha256:
            raise TargetError(f"object {key} is damaged (sha256 differs)")


class _Uploader:
    """Stores the items of many account plans: HEAD/list first, upload what is missing, extend locks."""

    def __init__(self, target: ObjectTarget, until: datetime | None, progress: Progress | None, total: int) -> None:
        self.t = target
        self.until = until
        self.progress = progress
        self.total = total
        self.done = 0
        self.bytes_added = 0
        self.files_new = 0
        self._lock = threading.Lock()
        self._present: dict[str, ObjectInfo | None] = {}
        self._listed: set[str] | None = None

    def _advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            done = self.done
        if self.progress is not None:
            self.progress(done, self.total)

    def run(self, plans: list[AccountPlan], extend_known: bool, stored_estimate: int = 0) -> dict[str, str]:
        """Store every item; returns accounts that failed locally (unreadable or damaged files).

        Whether each new file is already stored is answered by one HEAD per file, or — when that would take
        more requests than listing everything stored (1,000 keys per LIST) — by one listing of ``data/``.
        """
        todo: dict[str, tuple[Item, list[AccountPlan]]] = {}
        known: set[str] = set()
        for p in plans:
            for it in p.items:
                if it.known:
                    known.add(it.sha256)
                else:
                    todo.setdefault(it.sha256, (it, []))[1].append(p)
        if not self.t.lock_days and len(todo) > max(LIST_THRESHOLD, stored_estimate // 1000):
            self._listed = {o.key for o in self.t.store.list(self.t.k("data/"))}
        failed: dict[str, str] = {}
        with ThreadPoolExecutor(self.t.connections) as pool:
            futures = [(pool.submit(self._store, it), owners) for it, owners in todo.values()]
            if extend_known and self.until is not None:
                futures += [(pool.submit(self._extend, sha), []) for sha in known if sha not in todo]
            for f, owners in futures:
                try:
                    f.result()
                except AccountProblem as exc:
                    for p in owners:
                        failed.setdefault(p.name, str(exc))
        return failed

    def _exists(self, sha256: str) -> ObjectInfo | None:
        key = self.t.data_key(sha256)
        if self._listed is not None:
            return ObjectInfo(key, 0, datetime.now(UTC)) if key in self._listed else None
        return self.t.store.head(key)

    def _store(self, it: Item) -> None:
        info = self._exists(it.sha256)
        if info is not None:
            if self.until is not None and (info.retain_until is None or info.retain_until < self.until):
                self.t.store.extend_retention(info.key, self.until)
            self._advance(it.size)
            return
        source: bytes | Path = it.source
        try:
            if isinstance(source, Path):
                if it.size <= 16 * MiB or self.t.codec.encrypted:
                    source = source.read_bytes()
                elif it.blob and _sha256_file(source) != it.sha256:
                    raise AccountProblem(f"{source.name}: blob content does not match its name; run `mail-backup verify`")
            if isinstance(source, bytes) and (len(source) != it.size or (it.blob and hashlib.sha256(source).hexdigest() != it.sha256)):
                raise AccountProblem(f"blob {it.sha256[:12]}…: content does not match its name or size; run `mail-backup verify`")
        except OSError as exc:
            raise AccountProblem(f"{getattr(it.source, 'name', 'file')}: {exc.strerror}") from None
        stored = self.t._put_plain(it.sha256, source, it.size, self.until)
        with self._lock:
            self.bytes_added += stored
            self.files_new += 1
        self._advance(it.size)

    def _extend(self, sha256: str) -> None:
        self.t.store.extend_retention(self.t.data_key(sha256), self.until)  # type: ignore[arg-type]

    def put_meta(self, data: bytes, extend_known: bool, known: set[str] | None = None) -> Ref:
        """Store an index or shard (content addressed; skipped when the previous snapshot has it, or it is present)."""
        sha = hashlib.sha256(data).hexdigest()
        if known and sha in known:
            if extend_known and self.until is not None:
                self.t.store.extend_retention(self.t.data_key(sha), self.until)
            return Ref(sha, len(data))
        info = self.t.store.head(self.t.data_key(sha))
        if info is None:
            with self._lock:
                self.bytes_added += self.t._put_plain(sha, data, len(data), self.until)
        elif self.until is not None and (info.retain_until is None or info.retain_until < self.until):
            self.t.store.extend_retention(info.key, self.until)
        return Ref(sha, len(data))


def _first(problems: dict[str, str]) -> str:
    return "; ".join(f"{a}: {w}" for a, w in list(problems.items())[:3])



def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def _walk_blobs(d: Path) -> Iterator[tuple[str, Path, int]]:
    """(sha256, path, size) of every blob file stored at its content address under ``d/blobs``."""
    root = d / BLOBS
    if not root.is_dir():
        return
    with os.scandir(root) as level1:
        for a in sorted(level1, key=lambda e: e.name):
            if len(a.name) != 2 or not a.is_dir(follow_symlinks=False):
                continue
            with os.scandir(a.path) as level2:
                for b in sorted(level2, key=lambda e: e.name):
                    if len(b.name) != 2 or not b.is_dir(follow_symlinks=False):
                        continue
                    with os.scandir(b.path) as files:
                        for f in files:
                            if _HEX64.fullmatch(f.name) and f.name.startswith(a.name + b.name) and f.is_file(follow_symlinks=False):
                                yield f.name, Path(f.path), f.stat(follow_symlinks=False).st_size


def _name_for(d: Path) -> str:
    try:
        return Manifest.model_validate_json((d / MANIFEST).read_bytes()).account.name
    except (OSError, ValueError):
        return d.name


def copy_stream(src: IO[bytes], dst: IO[bytes], chunk: int = MiB) -> int:
    """Copy a stream; returns the byte count."""
    n = 0
    while data := src.read(chunk):
        dst.write(data)
        n += len(data)
    return n


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["AccountIndex", "BucketInfo", "Codec", "ObjectInfo", "ObjectLocked", "ObjectMissing", "ObjectStore", "ObjectTarget",
           "SnapshotDoc", "copy_stream"]
