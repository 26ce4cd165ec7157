"""Native S3 target (boto3): any S3-compatible service — AWS, Backblaze B2's S3 endpoint, MinIO, SeaweedFS, Wasabi.

Uploads carry Content-MD5 (the server rejects a corrupted body) and go multipart above ``part_size_mb``;
failed multipart uploads are aborted. 5xx answers, throttling and timeouts are retried (``retries``,
standard mode with backoff), then reported as one clear line. With ``object_lock_days`` every object is
written with an Object Lock retention (``object_lock_mode``, COMPLIANCE by default) — the bucket must have
been created with Object Lock. ``sse`` asks for server-side encryption (``AES256`` or ``aws:kms``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from .base import TargetError, TargetUnavailable
from .objectstore import BucketInfo, Codec, MiB, ObjectInfo, ObjectLocked, ObjectMissing, ObjectTarget

T = TypeVar("T")
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"}


class S3Store:
    """The bucket operations of :class:`~backup.targets.objectstore.ObjectStore` over boto3."""

    def __init__(self, *, bucket: str, endpoint_url: str = "", region: str = "", access_key_id: str = "", secret_access_key: str = "",
                 session_token: str = "", addressing_style: str = "auto", timeout: float = 60.0, retries: int = 5,
                 part_size: int = 16 * MiB, lock_mode: str = "COMPLIANCE", sse: str = "", sse_kms_key_id: str = "") -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.description = f"s3://{bucket}" + (f" at {endpoint_url}" if endpoint_url else "")
        self.part_size = part_size
        self.lock_mode = lock_mode
        self.sse = sse
        self.sse_kms_key_id = sse_kms_key_id
        self.retries = retries
        self._versioned: bool | None = None
        cfg = BotoConfig(connect_timeout=min(timeout, 30.0), read_timeout=timeout, retries={"max_attempts": retries, "mode": "standard"},
                         s3={"addressing_style": addressing_style}, max_pool_connections=32,
                         request_checksum_calculation="when_required", response_checksum_validation="when_required")
        session = boto3.session.Session()
        self.client: Any = session.client("s3", endpoint_url=endpoint_url or None, region_name=region or None,
                                          aws_access_key_id=access_key_id or None, aws_secret_access_key=secret_access_key or None,
                                          aws_session_token=session_token or None, config=cfg)

    # -- error mapping -----------------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T], *, key: str = "") -> T:
        from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, NoCredentialsError

        try:
            return fn()
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("NoSuchKey", "NotFound") or (status == 404 and key and code not in ("NoSuchBucket",)):
                raise ObjectMissing(f"{self.description}: {key} not found") from None
            if code == "NoSuchBucket" or (status == 404 and not key):
                raise TargetUnavailable(f"{self.description}: the bucket does not exist") from None
            if code in _AUTH_CODES:
                raise TargetUnavailable(f"{self.description}: credentials rejected ({code})") from None
            if code == "AccessDenied" and what.startswith("delete"):
                raise ObjectLocked(f"{self.description}: {key} is locked") from None
            if code in ("AccessDenied", "403", "Forbidden") or status == 403:
                raise TargetUnavailable(f"{self.description}: access denied for {what} (wrong credentials, "
                                        "or the key lacks permission)") from None
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"):
                raise TargetUnavailable(f"{self.description}: {what} failed after {self.retries} attempts: HTTP {status} {code}") from None
            raise TargetError(f"{self.description}: {what} failed: {code or status} {err.get('Message', '')}".rstrip()) from None
        except NoCredentialsError:
            raise TargetUnavailable(f"{self.description}: no credentials (set access_key_id and secret_access_key_file)") from None
        except (ConnectionError, HTTPClientError) as exc:
            raise TargetUnavailable(f"{self.description}: {what} failed after {self.retries} attempts: {type(exc).__name__}") from None
        except BotoCoreError as exc:
            raise TargetError(f"{self.description}: {what} failed: {exc}") from None

    def _sse_args(self) -> dict[str, str]:
        if not self.sse:
            return {}
        args = {"ServerSideEncryption": self.sse}
        if self.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.sse_kms_key_id
        return args

    def _lock_args(self, until: datetime | None) -> dict[str, Any]:
        return {"ObjectLockMode": self.lock_mode, "ObjectLockRetainUntilDate": until} if until else {}

    # -- ObjectStore ---------------------------------------------------------------------------------------------
    def bucket_info(self) -> BucketInfo:
        from botocore.exceptions import ClientError

        self._call("open bucket", lambda: self.client.head_bucket(Bucket=self.bucket))
        versioning = self._call("read versioning", lambda: self.client.get_bucket_versioning(Bucket=self.bucket))
        self._versioned = versioning.get("Status") in ("Enabled", "Suspended")
        try:
            lock = self.client.get_object_lock_configuration(Bucket=self.bucket)
            enabled = lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except ClientError:
            enabled = False
        return BucketInfo(lock_enabled=enabled, versioned=bool(self._versioned))

    def head(self, key: str) -> ObjectInfo | None:
        try:
            r = self._call("head", lambda: self.client.head_object(Bucket=self.bucket, Key=key), key=key)
        except ObjectMissing:
            return None
        return ObjectInfo(key, int(r.get("ContentLength", 0)), r["LastModified"], r.get("ObjectLockRetainUntilDate"))

    def put(self, key: str, data: bytes | Path, size: int, *, retain_until: datetime | None = None) -> None:
        if size > self.part_size:
            with io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb") as f:
                self._multipart(key, f, retain_until)
            return
        body = data if isinstance(data, bytes) else Path(data).read_bytes()
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        self._call("upload", lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentMD5=md5,
                                                            **self._lock_args(retain_until), **self._sse_args()), key=key)

    def _multipart(self, key: str, f: IO[bytes], until: datetime | None) -> None:
        up = self._call("start multipart upload", lambda: self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, **self._lock_args(until), **self._sse_args()), key=key)
        upload_id = up["UploadId"]
        parts = []
        try:
            n = 1
            while chunk := f.read(self.part_size):
                md5 = base64.b64encode(hashlib.md5(chunk, usedforsecurity=False).digest()).decode()
                num = n
                r = self._call("upload part", lambda c=chunk, m=md5, p=num: self.client.upload_part(  # type: ignore[misc]
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=p, Body=c, ContentMD5=m), key=key)
                parts.append({"PartNumber": n, "ETag": r["ETag"]})
                n += 1
            self._call("complete multipart upload", lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}), key=key)
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def get(self, key: str, out: IO[bytes]) -> None:
        r = self._call("download", lambda: self.client.get_object(Bucket=self.bucket, Key=key), key=key)
        body = r["Body"]
        try:
            self._call("download", lambda: _copy(body, out), key=key)
        finally:
            body.close()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list", lambda: iter(paginator.paginate(Bucket=self.bucket, Prefix=prefix)))
        while True:
            page = self._call("list", lambda: next(pages, None))
            if page is None:
                return
            for o in page.get("Contents", []) or []:
                yield ObjectInfo(o["Key"], int(o["Size"]), o["LastModified"])

    def delete(self, key: str, *, older_than: datetime | None = None) -> None:
        if self._versioned is None:
            self.bucket_info()
        if not self._versioned:
            self._call("delete", lambda: self.client.delete_object(Bucket=self.bucket, Key=key), key=key)
            return
        r = self._call("list versions", lambda: self.client.list_object_versions(Bucket=self.bucket, Prefix=key), key=key)
        locked = False
        for v in (r.get("Versions") or []) + (r.get("DeleteMarkers") or []):
            if v["Key"] != key or (older_than is not None and v["LastModified"] >= older_than):
                continue
            try:
                self._call("delete version", lambda v=v: self.client.delete_object(  # type: ignore[misc]
                    Bucket=self.bucket, Key=key, VersionId=v["VersionId"]), key=key)
            except ObjectLocked:
                locked = True
        if locked:
            raise ObjectLocked(f"{self.description}: {key} is locked")

    def extend_retention(self, key: str, until: datetime) -> None:
        self._call("extend retention", lambda: self.client.put_object_retention(
            Bucket=self.bucket, Key=key, Retention={"Mode": self.lock_mode, "RetainUntilDate": until}), key=key)

    def abort_stale_uploads(self, prefix: str, older_than: datetime) -> int:
        r = self._call("list multipart uploads", lambda: self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix))
        n = 0
        for u in r.get("Uploads") or []:
            if u.get("Initiated", datetime.now(UTC)) < older_than:
                self._call("abort multipart upload", lambda u=u: self.client.abort_multipart_upload(  # type: ignore[misc]
                    Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"]), key=u["Key"])
                n += 1
        return n


def _copy(body: Any, out: IO[bytes]) -> None:
    for chunk in body.iter_chunks(MiB):
        out.write(chunk)


class S3Target(ObjectTarget):
    type = "s3"


def build_s3_target(opts: Any) -> S3Target:
    """``type = "s3"``: endpoint_url, bucket, prefix, region, access_key_id, secret_access_key_file (or env_file), …"""
    from .registry import host_name
    from .restic import parse_env_file

    env: dict[str, str] = {}
    env_file = opts.file_path("env_file")
    if env_file:
        try:
            env = parse_env_file(env_file)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise opts.error("env_file", f"{env_file}: {exc}") from None
    access_key = opts.string("access_key_id") or env.get("AWS_ACCESS_KEY_ID", "")
    secret = opts.read_file("secret_access_key_file") or env.get("AWS_SECRET_ACCESS_KEY", "")
    if bool(access_key) != bool(secret):
        raise opts.error("secret_access_key_file" if access_key else "access_key_id",
                         "set both access_key_id and secret_access_key_file (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in env_file)")
    endpoint = opts.string("endpoint_url")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise opts.error("endpoint_url", f"expected an http:// or https:// URL, got {endpoint!r}")
    lock_days = opts.integer("object_lock_days", 0, minimum=0, maximum=36500)
    sse = opts.string("sse", choices=("AES256", "aws:kms"))
    key_text = opts.read_file("encryption_key_file")
    try:
        codec = Codec(Codec.load_key(key_text)) if key_text else Codec()
    except ValueError as exc:
        raise opts.error("encryption_key_file", str(exc)) from None
    store = S3Store(bucket=opts.string("bucket", required=True), endpoint_url=endpoint,
                    region=opts.string("region") or env.get("AWS_DEFAULT_REGION", "") or env.get("AWS_REGION", ""),
                    access_key_id=access_key, secret_access_key=secret, session_token=env.get("AWS_SESSION_TOKEN", ""),
                    addressing_style=opts.string("addressing_style", "auto", choices=("auto", "path", "virtual")),
                    timeout=float(opts.number("timeout", 60.0, minimum=1, maximum=3600) or 60.0),
                    retries=opts.integer("retries", 5, minimum=1, maximum=50),
                    part_size=opts.integer("part_size_mb", 16, minimum=5, maximum=5000) * MiB,
                    lock_mode=opts.string("object_lock_mode", "COMPLIANCE", choices=("COMPLIANCE", "GOVERNANCE")),
                    sse=sse, sse_kms_key_id=opts.string("sse_kms_key_id"))
    return S3Target(opts.tc.name, store, prefix=opts.string("prefix"), codec=codec, lock_days=lock_days,
                    connections=opts.integer("connections", 8, minimum=1, maximum=64),
                    gc_grace_hours=float(opts.number("gc_grace_hours", 1.0, minimum=0, maximum=24 * 365) or 0.0),
                    host=host_name(opts), keep=opts.tc.keep)


__all__ = ["S3Store", "S3Target", "build_s3_target"]
