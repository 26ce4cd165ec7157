"""Blob/get, Blob/upload and Blob/lookup (RFC 9404).

An account reads only its own blobs (those of its emails, Sieve scripts and live uploads) and parts of them
(``<hash>_<partId>``); any other id is ``notFound``. Digests are base64 of the raw digest over the selected
range. Blobs made by Blob/upload count as uploads of the account (readable until the upload TTL expires or an
object references them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from typing import Any

from ..store.ids import jmap_id
from .core import BLOB, Call, MethodError, SetError, get_ids_limit, method
from .email_body import is_blob_id, read_blob
from .identity import int_arg, properties_arg
from .mailbox import invalid, map_arg

DIGESTS: dict[str, Callable[[bytes], Any]] = {"sha": hashlib.sha1, "sha-256": hashlib.sha256}
DATA = ("data", "data:asText", "data:asBase64")
PROPERTIES = frozenset({"id", "size", "isEncodingProblem", "isTruncated", *DATA, *(f"digest:{a}" for a in DIGESTS)})
DEFAULT_PROPERTIES = ["data", "size"]
LOOKUP_TYPES = ("Email", "Mailbox", "Thread", "SieveScript")


def resolve_blob_id(call: Call, value: str) -> str:
    """A blob id, resolving ``#creationId`` references to blobs created earlier in the request."""
    return call.created_ids.get(value[1:], value) if value.startswith("#") else value


# -- Blob/get ------------------------------------------------------------------------------------------------
def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _blob_json(blob_id: str, data: bytes, props: list[str], offset: int, length: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": blob_id}
    end = len(data) if length is None else offset + length
    if end > len(data) or offset > len(data):
        out["isTruncated"] = True
    chunk = data[offset:end]
    for prop in props:
        if prop == "size":
            out["size"] = len(data)
        elif prop.startswith("digest:"):
            out[prop] = base64.b64encode(DIGESTS[prop[7:]](chunk).digest()).decode()
        elif prop in DATA:
            text = _utf8(chunk) if prop != "data:asBase64" else None
            if prop == "data:asBase64" or (prop == "data" and text is None):
                out["data:asBase64"] = base64.b64encode(chunk).decode()
            else:
                out["data:asText"] = text
            if text is None and prop != "data:asBase64":
                out["isEncodingProblem"] = True
    return out


@method("Blob/get", BLOB)
def blob_get(call: Call) -> dict[str, Any]:
    account = call.account()
    ids = call.ids_arg()
    if ids is None:
        raise MethodError("invalidArguments", "'ids' is required: blobs cannot be listed")
    get_ids_limit(call, ids)
    props = properties_arg(call, PROPERTIES) or DEFAULT_PROPERTIES
    offset = int_arg(call, "offset", 0, minimum=0)
    length = int_arg(call, "length", 0, minimum=0) if call.args.get("length") is not None else None
    found, not_found = [], []
    for given in dict.fromkeys(ids):
        blob_id = resolve_blob_id(call, given)
        data = read_blob(call.store, account, blob_id)
        if data is None:
            not_found.append(given)
        else:
            found.append(_blob_json(blob_id, data, props, offset, length))
    return {"accountId": call.args["accountId"], "list": found, "notFound": not_found}


# -- Blob/upload ---------------------------------------------------------------------------------------------
def _source(call: Call, account: int, source: Any) -> bytes:
    """The bytes of one DataSourceObject."""
    if not isinstance(source, dict):
        raise invalid(["data"], "each data source must be an object")
    kinds = [k for k in ("data:asText", "data:asBase64", "blobId") if k in source]
    extra = set(source) - {"data:asText", "data:asBase64", "blobId", "offset", "length"}
    if len(kinds) != 1 or extra or (kinds[0] != "blobId" and {"offset", "length"} & set(source)):
        raise invalid(["data"], "a data source has exactly one of data:asText, data:asBase64 or blobId (+offset/length)")
    value = source[kinds[0]]
    if not isinstance(value, str):
        raise invalid(["data"], f"{kinds[0]} must be a string")
    if kinds[0] == "data:asText":
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise invalid(["data"], "data:asText is not valid Unicode") from None
    if kinds[0] == "data:asBase64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise invalid(["data"], "data:asBase64 is not valid base64") from None
    blob_id = resolve_blob_id(call, value)
    data = read_blob(call.store, account, blob_id)
    if data is None:
        raise SetError("blobNotFound", f"blob {value} not found", notFound=[value])
    offset, length = source.get("offset") or 0, source.get("length")
    if (isinstance(offset, bool) or not isinstance(offset, int) or offset < 0
            or (length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 0))):
        raise invalid(["data"], "offset and length must be unsigned integers")
    end = len(data) if length is None else offset + length
    if offset > len(data) or end > len(data):
        raise invalid(["data"], f"the range is outside blob {value} ({len(data)} octets)")
    return data[offset:end]


def _assemble(call: Call, account: int, obj: Any) -> tuple[bytes, str]:
    if not isinstance(obj, dict):
        raise SetError("invalidProperties", "expected an UploadObject")
    unknown = [k for k in obj if k not in ("data", "type")]
    if unknown:
        raise invalid(unknown, "an UploadObject has only data and type")
    sources, type_ = obj.get("data"), obj.get("type") or "application/octet-stream"
    if not isinstance(sources, list) or not isinstance(type_, str):
        raise invalid(["data"], "data must be a list of data sources and type a string")
    if len(sources) > call.limits.max_calls_in_request:
        raise SetError("tooLarge", f"at most {call.limits.max_calls_in_request} data sources (maxDataSources)")
    limit = call.limits.max_size_request * 3 // 4 - 512  # maxSizeBlobSet, as in the session
    data = bytearray()
    for source in sources:
        data += _source(call, account, source)
        if len(data) > limit:
            raise SetError("tooLarge", f"a blob made by Blob/upload is limited to {limit} octets", maxSize=limit)
    return bytes(data), type_


@method("Blob/upload", BLOB)
def blob_upload(call: Call) -> dict[str, Any]:
    account = call.account()
    create = map_arg(call, "create")
    if len(create) > call.limits.max_objects_in_set:
        raise MethodError("requestTooLarge", f"at most {call.limits.max_objects_in_set} blobs per Blob/upload")
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    for cid, obj in create.items():
        try:
            data, type_ = _assemble(call, account, obj)
        except SetError as exc:
            not_created[cid] = exc.to_json()
            continue
        digest = call.store.blobs.put(data)
        call.store.add_upload(account, digest, len(data), type_, call.server.cfg.jmap.upload_ttl)
        call.created_ids[cid] = digest
        created[cid] = {"id": digest, "type": type_, "size": len(data)}
    return {"accountId": call.args["accountId"], "created": created or None, "notCreated": not_created or None}


# -- Blob/lookup ---------------------------------------------------------------------------------------------
def _matched(call: Call, account: int, digest: str, types: list[str]) -> dict[str, list[str]]:
    db = call.store.db
    emails = db.q("SELECT id, thread_id FROM emails WHERE account_id=? AND blob_hash=? ORDER BY id", (account, digest))
    out: dict[str, list[str]] = {}
    for type_ in types:
        if type_ == "Email":
            out[type_] = [jmap_id(r[0]) for r in emails]
        elif type_ == "Thread":
            out[type_] = [jmap_id(t) for t in dict.fromkeys(int(r[1]) for r in emails)]
        elif type_ == "Mailbox":
            ids = [int(r[0]) for r in emails]
            marks = ",".join("?" * len(ids))
            rows = db.q(f"SELECT DISTINCT mailbox_id FROM email_mailboxes WHERE email_id IN ({marks}) ORDER BY mailbox_id",
                        ids) if ids else []
            out[type_] = [jmap_id(r[0]) for r in rows]
        else:
            rows = db.q("SELECT id FROM sieve_scripts WHERE account_id=? AND blob_hash=? ORDER BY id", (account, digest))
            out[type_] = [jmap_id(r[0]) for r in rows]
    return out


@method("Blob/lookup", BLOB)
def blob_lookup(call: Call) -> dict[str, Any]:
    account = call.account()
    types = call.args.get("typeNames")
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise MethodError("invalidArguments", "'typeNames' must be a list of type names")
    unknown = [t for t in types if t not in LOOKUP_TYPES]
    if unknown:
        raise MethodError("unknownDataType", f"cannot look up blobs in {unknown[0]}")
    ids = call.ids_arg()
    if ids is None:
        raise MethodError("invalidArguments", "'ids' is required")
    get_ids_limit(call, ids)
    found, not_found = [], []
    for given in dict.fromkeys(ids):
        blob_id = resolve_blob_id(call, given)
        digest = blob_id.split("_")[0]
        readable = is_blob_id(blob_id) and (
            read_blob(call.store, account, blob_id) is not None if "_" in blob_id
            else call.store.mail.account_can_read_blob(account, digest))
        if not readable:
            not_found.append(given)
            continue
        found.append({"id": blob_id, "matchedIds": _matched(call, account, digest, list(dict.fromkeys(types)))})
    return {"accountId": call.args["accountId"], "list": found, "notFound": not_found}
