"""Email/get and Email/parse (RFC 8621 §4.2, §4.9).

Metadata comes from the ``emails`` rows and header properties from the summary cached at ingest, loaded in
bulk; the blob is read and parsed only when body or ``header:`` properties are requested.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..mime import summarize
from ..store.ids import jmap_id
from .core import MAIL, Call, MethodError, get_ids_limit, method
from .email_body import BodyOptions, ParsedEmail, body_properties_arg, header_prop, read_blob, read_head
from .email_query import email_query as _registered  # noqa: F401 - registers Email/query, queryChanges, SearchSnippet/get

if TYPE_CHECKING:
    from ..store.mail import Email

log = logging.getLogger("mailsrv.jmap")

METADATA = ("id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt")
SUMMARY = ("messageId", "inReplyTo", "references", "sender", "from", "to", "cc", "bcc", "replyTo", "subject",
           "sentAt", "hasAttachment", "preview")
BODY = ("bodyStructure", "bodyValues", "textBody", "htmlBody", "attachments")
KNOWN = frozenset((*METADATA, *SUMMARY, *BODY, "headers"))
DEFAULT_GET = [*METADATA, *SUMMARY, "bodyValues", "textBody", "htmlBody", "attachments"]
DEFAULT_PARSE = [*SUMMARY, "bodyValues", "textBody", "htmlBody", "attachments"]
_SUMMARY_DEFAULTS: dict[str, Any] = {"hasAttachment": False, "preview": ""}


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


_METADATA_GETTERS: dict[str, Callable[[Email], Any]] = {
    "id": lambda e: jmap_id(e.id),
    "blobId": lambda e: e.blob_hash,
    "threadId": lambda e: jmap_id(e.thread_id),
    "mailboxIds": lambda e: {jmap_id(m): True for m in e.mailbox_ids},
    "keywords": lambda e: dict(e.keywords),
    "size": lambda e: e.size,
    "receivedAt": lambda e: _utc(e.received_at),
}


def properties_arg(call: Call, default: list[str]) -> list[str]:
    """The checked ``properties`` argument: known names and valid ``header:`` forms."""
    props = call.args.get("properties")
    if props is None:
        return default
    if not isinstance(props, list) or not all(isinstance(p, str) for p in props):
        raise MethodError("invalidArguments", "'properties' must be a list of strings")
    for p in props:
        if p.startswith("header:"):
            header_prop(p)
        elif p not in KNOWN:
            raise MethodError("invalidArguments", f"unknown property: {p}")
    return list(dict.fromkeys(props))


def body_options(call: Call) -> BodyOptions:
    max_bytes = call.arg("maxBodyValueBytes", int, 0)
    if max_bytes < 0:
        raise MethodError("invalidArguments", "'maxBodyValueBytes' must not be negative")
    return BodyOptions(
        body_properties=body_properties_arg(call.args.get("bodyProperties")),
        fetch_text=call.arg("fetchTextBodyValues", bool, False),
        fetch_html=call.arg("fetchHTMLBodyValues", bool, False),
        fetch_all=call.arg("fetchAllBodyValues", bool, False),
        max_bytes=max_bytes,
    )


def _ids_of_account(call: Call, account_id: int) -> list[int]:
    """``ids: null``: every email of the account, if that is within maxObjectsInGet."""
    limit = call.limits.max_objects_in_get
    rows = call.store.db.q("SELECT id FROM emails WHERE account_id=? ORDER BY id LIMIT ?", (account_id, limit + 1))
    if len(rows) > limit:
        raise MethodError("requestTooLarge", f"the account has more than {limit} emails; pass ids")
    return [r[0] for r in rows]


@method("Email/get", MAIL)
def email_get(call: Call) -> dict[str, Any]:
    account_id = call.account()
    ids = call.ids_arg()
    get_ids_limit(call, ids)
    props = properties_arg(call, DEFAULT_GET)
    options = body_options(call)
    state = call.store.mail.state(account_id, "Email")
    wanted: list[tuple[str, int | None]] = []  # (id as given, parsed id)
    if ids is None:
        wanted = [(jmap_id(i), i) for i in _ids_of_account(call, account_id)]
    else:
        for raw_id in dict.fromkeys(ids):
            wanted.append((raw_id, call.resolve_id(raw_id)))
    rows = call.store.mail.emails(account_id, [i for _, i in wanted if i is not None])
    meta = [(p, _METADATA_GETTERS[p]) for p in props if p in _METADATA_GETTERS and p != "id"]
    summary = [p for p in props if p in SUMMARY]
    blob_props = [p for p in props if p not in _METADATA_GETTERS and p not in SUMMARY]
    headers_only = all(p == "headers" or p.startswith("header:") for p in blob_props)
    found: list[dict[str, Any]] = []
    not_found: list[str] = []
    for raw_id, email_id in wanted:
        e = rows.get(email_id) if email_id is not None else None
        if e is None:
            not_found.append(raw_id)
            continue
        obj: dict[str, Any] = {"id": jmap_id(e.id)}
        for p, getter in meta:
            obj[p] = getter(e)
        s = e.summary
        for p in summary:
            obj[p] = s.get(p, _SUMMARY_DEFAULTS.get(p))
        if blob_props:
            raw = read_head(call.store, e.blob_hash) if headers_only else _read_email_blob(call, e)
            parsed = ParsedEmail(raw, e.blob_hash, options)
            for p in blob_props:
                obj[p] = parsed.property(p)
        found.append(obj)
    return {"accountId": jmap_id(account_id), "state": state, "list": found, "notFound": not_found}


def _read_email_blob(call: Call, e: Email) -> bytes:
    try:
        data: bytes = call.store.blobs.read(e.blob_hash)
    except OSError:
        log.error("blob %s of email %s is missing", e.blob_hash, e.id)
        return b""
    return data


@method("Email/parse", MAIL)
def email_parse(call: Call) -> dict[str, Any]:
    account_id = call.account()
    blob_ids = call.ids_arg("blobIds")
    if blob_ids is None:
        raise MethodError("invalidArguments", "'blobIds' is required")
    get_ids_limit(call, blob_ids)
    props = properties_arg(call, DEFAULT_PARSE)
    options = body_options(call)
    parsed: dict[str, Any] = {}
    not_parsable: list[str] = []
    not_found: list[str] = []
    for blob_id in dict.fromkeys(blob_ids):
        data = read_blob(call.store, account_id, blob_id)
        if data is None:
            not_found.append(blob_id)
            continue
        message = ParsedEmail(data, blob_id, options)
        if not message.root.headers.fields:
            not_parsable.append(blob_id)
            continue
        summary = summarize(data)
        obj: dict[str, Any] = {}
        for p in props:
            if p in ("id", "threadId", "mailboxIds", "keywords", "receivedAt"):
                obj[p] = None
            elif p == "blobId":
                obj[p] = blob_id
            elif p == "size":
                obj[p] = len(data)
            elif p in SUMMARY:
                obj[p] = summary.get(p)
            else:
                obj[p] = message.property(p)
        parsed[blob_id] = obj
    return {"accountId": jmap_id(account_id), "parsed": parsed, "notParsable": not_parsable, "notFound": not_found}
