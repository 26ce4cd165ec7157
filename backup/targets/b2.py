"""Native Backblaze B2 target (b2sdk): file lock retention, SHA-1 checked transfers, large-file API.

b2sdk sends the SHA-1 of every upload (or of every part of a large file, used automatically above the
account's recommended part size) and B2 rejects a body that does not match; downloads are checked against
the stored SHA-1 by b2sdk and against our sha256 by the target. With ``file_lock_days`` every file is
uploaded with a B2 file-lock retention (``file_lock_mode``, compliance by default); the bucket must have
file lock enabled. Deleting means deleting every version of a name (a B2 "hide" only hides).

Production builds a real ``B2Api`` authorised with ``key_id`` + ``application_key_file``; tests inject
one backed by b2sdk's ``RawSimulator`` (``build_b2_target(opts, api=...)`` or :data:`API_FACTORY`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from .base import TargetError, TargetUnavailable
from .objectstore import BucketInfo, Codec, ObjectInfo, ObjectLocked, ObjectMissing, ObjectTarget

T = TypeVar("T")


def make_api(key_id: str, application_key: str) -> Any:
    """A real B2Api authorised for production use."""
    from b2sdk.v2 import B2Api, InMemoryAccountInfo

    api = B2Api(InMemoryAccountInfo())
    api.authorize_account("production", key_id, application_key)
    return api


API_FACTORY: Callable[[str, str], Any] = make_api  # tests swap in a simulator-backed factory


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _dt(ms: int | None) -> datetime:
    return datetime.fromtimestamp((ms or 0) / 1000, UTC)


class B2Store:
    """The bucket operations of :class:`~backup.targets.objectstore.ObjectStore` over b2sdk."""

    def __init__(self, bucket: str, *, api: Any = None, key_id: str = "", application_key: str = "", lock_mode: str = "compliance",
                 part_size: int = 100 * 1024 * 1024) -> None:
        self.bucket_name = bucket
        self.description = f"b2://{bucket}"
        self._api = api
        self._key_id = key_id
        self._app_key = application_key
        self.lock_mode = lock_mode
        self.part_size = part_size
        self._bucket: Any = None
        self._mutex = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T], *, key: str = "") -> T:
        from b2sdk.v2 import exception as e

        try:
            return fn()
        except e.FileNotPresent:
            raise ObjectMissing(f"{self.description}: {key} not found") from None
        except e.NonExistentBucket:
            raise TargetUnavailable(f"{self.description}: the bucket does not exist (or the key may not see it)") from None
        except (e.Unauthorized, e.InvalidAuthToken, e.RestrictedBucket, e.CapabilityNotAllowed, e.NotAllowedByAppKeyError) as exc:
            raise TargetUnavailable(f"{self.description}: the application key was refused for {what} ({type(exc).__name__})") from None
        except e.AccessDenied:
            if what.startswith("delete"):
                raise ObjectLocked(f"{self.description}: {key} is locked") from None
            raise TargetUnavailable(f"{self.description}: access denied for {what}") from None
        except (e.B2ConnectionError, e.B2RequestTimeout, e.ServiceError, e.TooManyRequests, e.MaxRetriesExceeded, e.ConnectionReset,
                e.UnknownHost, e.BrokenPipe) as exc:
            raise TargetUnavailable(f"{self.description}: {what} failed after retries: {type(exc).__name__}: {exc}") from None
        except e.B2Error as exc:
            raise TargetError(f"{self.description}: {what} failed: {type(exc).__name__}: {exc}") from None

    @property
    def api(self) -> Any:
        with self._mutex:
            if self._api is None:
                if not self._key_id or not self._app_key:
                    raise TargetUnavailable(f"{self.description}: no application key configured")
                self._api = self._call("authorize", lambda: API_FACTORY(self._key_id, self._app_key))
            return self._api

    @property
    def bucket(self) -> Any:
        if self._bucket is None:
            self._bucket = self._call("open bucket", lambda: self.api.get_bucket_by_name(self.bucket_name))
        return self._bucket

    def _retention(self, until: datetime | None) -> Any:
        if until is None:
            return None
        from b2sdk.v2 import FileRetentionSetting, RetentionMode

        mode = RetentionMode.COMPLIANCE if self.lock_mode == "compliance" else RetentionMode.GOVERNANCE
        return FileRetentionSetting(mode, _ms(until))

    # -- ObjectStore ---------------------------------------------------------------------------------------------
    def bucket_info(self) -> BucketInfo:
        b = self.bucket
        return BucketInfo(lock_enabled=bool(getattr(b, "is_file_lock_enabled", False)), versioned=True)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            info = self._call("head", lambda: self.bucket.get_file_info_by_name(key), key=key)
        except ObjectMissing:
            return None
        retention = getattr(info, "file_retention", None)
        until = _dt(retention.retain_until) if retention is not None and getattr(retention, "retain_until", None) else None
        return ObjectInfo(key, int(info.size), _dt(info.upload_timestamp), until)

    def put(self, key: str, data: bytes | Path, size: int, *, retain_until: datetime | None = None) -> None:
        from b2sdk.v2 import UploadSourceBytes, UploadSourceLocalFile

        retention = self._retention(retain_until)
        source = UploadSourceBytes(data) if isinstance(data, bytes) else UploadSourceLocalFile(str(data))
        # above part_size: B2's large-file API (parts uploaded with their SHA-1, finished with the list of SHA-1s)
        self._call("upload", lambda: self.bucket.upload(source, key, min_part_size=self.part_size, file_retention=retention), key=key)

    def get(self, key: str, out: IO[bytes]) -> None:
        self._call("download", lambda: self.bucket.download_file_by_name(key).save(out), key=key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        listing = self._call("list", lambda: iter(self.bucket.ls(folder, recursive=True, latest_only=True)))
        while True:
            item = self._call("list", lambda: next(listing, None))
            if item is None:
                return
            fv = item[0]
            if fv.file_name.startswith(prefix) and fv.action == "upload":
                yield ObjectInfo(fv.file_name, int(fv.size), _dt(fv.upload_timestamp))

    def delete(self, key: str, *, older_than: datetime | None = None) -> None:
        versions = self._call("list versions", lambda: list(self.bucket.list_file_versions(key)), key=key)
        locked = False
        for fv in versions:
            if fv.file_name != key or (older_than is not None and _dt(fv.upload_timestamp) >= older_than):
                continue
            try:
                self._call("delete version", lambda fv=fv: self.api.delete_file_version(fv.id_, key), key=key)  # type: ignore[misc]
            except ObjectLocked:
                locked = True
        if locked:
            raise ObjectLocked(f"{self.description}: {key} is locked")

    def extend_retention(self, key: str, until: datetime) -> None:
        info = self._call("head", lambda: self.bucket.get_file_info_by_name(key), key=key)
        self._call("extend retention", lambda: self.api.update_file_retention(info.id_, key, self._retention(until)), key=key)

    def abort_stale_uploads(self, prefix: str, older_than: datetime) -> int:
        n = 0
        for f in self._call("list unfinished large files", lambda: list(self.bucket.list_unfinished_large_files(prefix=prefix))):
            if _dt(getattr(f, "upload_timestamp", None) or 0) < older_than:
                self._call("cancel large file", lambda f=f: self.api.cancel_large_file(f.file_id))  # type: ignore[misc]
                n += 1
        return n


class B2Target(ObjectTarget):
    type = "b2"


def build_b2_target(opts: Any, *, api: Any = None) -> B2Target:
    """``type = "b2"``: bucket, prefix, key_id, application_key_file, file_lock_days, encryption_key_file, keep."""
    from .registry import host_name

    bucket = opts.string("bucket", required=True)
    key_id = opts.string("key_id")
    app_key = opts.read_file("application_key_file", env="B2_APPLICATION_KEY")
    if api is None and (not key_id or not app_key):
        raise opts.error("key_id" if not key_id else "application_key_file",
                         "set key_id and application_key_file (or $B2_APPLICATION_KEY)")
    key_text = opts.read_file("encryption_key_file")
    try:
        codec = Codec(Codec.load_key(key_text)) if key_text else Codec()
    except ValueError as exc:
        raise opts.error("encryption_key_file", str(exc)) from None
    store = B2Store(bucket, api=api, key_id=key_id, application_key=app_key,
                    lock_mode=opts.string("file_lock_mode", "compliance", choices=("compliance", "governance")),
                    part_size=opts.integer("part_size_mb", 100, minimum=5, maximum=5000) * 1024 * 1024)
    return B2Target(opts.tc.name, store, prefix=opts.string("prefix"), codec=codec,
                    lock_days=opts.integer("file_lock_days", 0, minimum=0, maximum=36500),
                    connections=opts.integer("connections", 8, minimum=1, maximum=64),
                    gc_grace_hours=float(opts.number("gc_grace_hours", 1.0, minimum=0, maximum=24 * 365) or 0.0),
                    host=host_name(opts), keep=opts.tc.keep)


__all__ = ["API_FACTORY", "B2Store", "B2Target", "TargetError", "build_b2_target", "make_api"]
