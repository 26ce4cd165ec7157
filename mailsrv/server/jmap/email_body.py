"""Email properties parsed from the message blob on demand: header forms, body parts and body values.

RFC 8621 §4.1.2 to §4.1.4. The blob is read only when a client asks for ``headers``, ``header:…``,
``bodyStructure``, ``textBody``, ``htmlBody``, ``attachments`` or ``bodyValues``.

A leaf part's ``blobId`` is ``<message blobId>_<partId>``: its decoded content is read back from the
message blob (:func:`read_blob`), so part blobs are downloadable and a message/rfc822 part can be given
to Email/parse without storing anything twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..mime import (
    Headers,
    Part,
    as_addresses,
    as_date,
    as_grouped_addresses,
    as_message_ids,
    as_text,
    as_urls,
    classify,
    parse_structure,
    part_bytes,
    part_text,
    split_headers,
    unfold,
)
from .core import MethodError

if TYPE_CHECKING:
    from ..store import Store

BODY_PART_DEFAULT = ["partId", "blobId", "size", "name", "type", "charset", "disposition", "cid", "language", "location"]
BODY_PART_KNOWN = frozenset([*BODY_PART_DEFAULT, "headers", "subParts"])

FORMS: dict[str, Callable[[str], Any]] = {
    "Raw": lambda v: v,
    "Text": as_text,
    "Addresses": as_addresses,
    "GroupedAddresses": as_grouped_addresses,
    "MessageIds": as_message_ids,
    "Date": as_date,
    "URLs": as_urls,
}
_RFC5322 = frozenset({
    "date", "from", "sender", "reply-to", "to", "cc", "bcc", "message-id", "in-reply-to", "references", "subject",
    "comments", "keywords", "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc",
    "resent-message-id", "return-path", "received",
})
_RFC2369 = frozenset({"list-help", "list-unsubscribe", "list-subscribe", "list-post", "list-owner", "list-archive"})
_ADDRESS_FIELDS = frozenset({
    "from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-sender", "resent-reply-to", "resent-to",
    "resent-cc", "resent-bcc",
})
# Which known header fields each parsed form may be used with; unknown fields allow every form (§4.1.2).
_FORM_FIELDS: dict[str, frozenset[str]] = {
    "Text": frozenset({"subject", "comments", "keywords", "list-id"}),
    "Addresses": _ADDRESS_FIELDS,
    "GroupedAddresses": _ADDRESS_FIELDS,
    "MessageIds": frozenset({"message-id", "in-reply-to", "references", "resent-message-id"}),
    "Date": frozenset({"date", "resent-date"}),
    "URLs": _RFC2369,
}
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_BLOB_ID = re.compile(r"[0-9a-f]{64}(?:_[1-9][0-9]{0,5})*")


@dataclass(frozen=True)
class HeaderProp:
    """A parsed ``header:{name}[:as{Form}][:all]`` property."""

    prop: str
    name: str
    form: str
    all: bool

    def value(self, headers: Headers) -> Any:
        convert = FORMS[self.form]
        if self.all:
            return [convert(v) for v in headers.all(self.name)]
        last = headers.last(self.name)
        return None if last is None else convert(last)


def header_prop(prop: str) -> HeaderProp:
    """Parse and check a header property (invalidArguments for bad syntax or a forbidden form)."""
    parts = prop.split(":")
    if len(parts) < 2 or parts[0] != "header" or not _FIELD_NAME.fullmatch(parts[1]) or len(parts) > 4:
        raise MethodError("invalidArguments", f"invalid header property: {prop}")
    name, rest = parts[1], parts[2:]
    form, all_ = "Raw", False
    if rest and rest[0].startswith("as"):
        form = rest.pop(0)[2:]
        if form not in FORMS:
            raise MethodError("invalidArguments", f"unknown header form in {prop}")
    if rest == ["all"]:
        all_ = True
    elif rest:
        raise MethodError("invalidArguments", f"invalid header property: {prop}")
    lower = name.lower()
    if form != "Raw" and (lower in _RFC5322 or lower in _RFC2369) and lower not in _FORM_FIELDS[form]:
        raise MethodError("invalidArguments", f"header {name} cannot be fetched as{form}")
    return HeaderProp(prop, name, form, all_)


def body_properties_arg(value: Any) -> list[str]:
    """The checked ``bodyProperties`` argument (default list when absent)."""
    if value is None:
        return BODY_PART_DEFAULT
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise MethodError("invalidArguments", "'bodyProperties' must be a list of strings")
    for p in value:
        if p.startswith("header:"):
            header_prop(p)
        elif p not in BODY_PART_KNOWN:
            raise MethodError("invalidArguments", f"unknown body property: {p}")
    return value


@dataclass
class BodyOptions:
    """The Email/get arguments that shape body properties."""

    body_properties: list[str]
    fetch_text: bool = False
    fetch_html: bool = False
    fetch_all: bool = False
    max_bytes: int = 0


def _truncate(text: str, max_bytes: int, html: bool) -> tuple[str, bool]:
    """Cut to at most ``max_bytes`` UTF-8 octets, never inside a code point (nor an HTML tag)."""
    data = text.encode("utf-8")
    if max_bytes <= 0 or len(data) <= max_bytes:
        return text, False
    cut = data[:max_bytes].decode("utf-8", "ignore")
    if html:
        lt = cut.rfind("<")
        if lt > cut.rfind(">"):
            cut = cut[:lt]
    return cut, True


class ParsedEmail:
    """A message blob parsed once, rendering any body or header property of it."""

    def __init__(self, raw: bytes, blob_id: str, options: BodyOptions) -> None:
        self.raw = raw
        self.blob_id = blob_id
        self.options = options
        self.root = parse_structure(raw)
        self._classified: tuple[list[Part], list[Part], list[Part]] | None = None
        self._sizes: dict[int, int] = {}
        self._header_props = {p: header_prop(p) for p in options.body_properties if p.startswith("header:")}

    @property
    def classified(self) -> tuple[list[Part], list[Part], list[Part]]:
        if self._classified is None:
            self._classified = classify(self.root)
        return self._classified

    def part_json(self, part: Part, nested: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for prop in self.options.body_properties:
            if prop == "subParts":
                continue
            if prop in self._header_props:
                out[prop] = self._header_props[prop].value(part.headers)
            else:
                out[prop] = self._part_value(part, prop)
        if part.multipart and (nested or "subParts" in self.options.body_properties):
            out["subParts"] = [self.part_json(p, nested) for p in part.subparts]
        return out

    def _part_value(self, part: Part, prop: str) -> Any:
        h = part.headers
        if prop == "partId":
            return part.part_id
        if prop == "blobId":
            return f"{self.blob_id}_{part.part_id}" if part.part_id else None
        if prop == "size":
            if not part.part_id:
                return part.end - part.body_start
            if id(part) not in self._sizes:
                self._sizes[id(part)] = len(part_bytes(self.raw, part)[0])
            return self._sizes[id(part)]
        if prop == "headers":
            return [{"name": n, "value": v} for n, v in h.fields]
        if prop == "name":
            return part.name
        if prop == "type":
            return part.type
        if prop == "charset":
            return part.charset
        if prop == "disposition":
            return part.disposition
        if prop == "cid":
            cid = unfold(h.last("Content-ID") or "").strip().strip("<>").strip()
            return cid or None
        if prop == "language":
            langs = [x.strip() for x in unfold(h.last("Content-Language") or "").split(",") if x.strip()]
            return langs or None
        if prop == "location":
            return as_text(h.last("Content-Location") or "").strip() or None
        return None

    def body_values(self) -> dict[str, Any]:
        """bodyValues for the parts selected by fetchTextBodyValues / fetchHTMLBodyValues / fetchAllBodyValues."""
        o = self.options
        if not (o.fetch_text or o.fetch_html or o.fetch_all):
            return {}
        text, html, _ = self.classified
        parts: list[Part] = []
        if o.fetch_all:
            parts = self.root.leaves()
        else:
            parts = (text if o.fetch_text else []) + (html if o.fetch_html else [])
        out: dict[str, Any] = {}
        for part in parts:
            if not part.type.startswith("text/") or part.part_id is None or part.part_id in out:
                continue
            value, problem = part_text(self.raw, part)
            value, truncated = _truncate(value, o.max_bytes, part.type == "text/html")
            out[part.part_id] = {"value": value, "isEncodingProblem": problem, "isTruncated": truncated}
        return out

    def property(self, prop: str) -> Any:
        """One of the blob-backed Email properties."""
        if prop == "bodyStructure":
            return self.part_json(self.root, nested=True)
        if prop == "textBody":
            return [self.part_json(p, False) for p in self.classified[0]]
        if prop == "htmlBody":
            return [self.part_json(p, False) for p in self.classified[1]]
        if prop == "attachments":
            return [self.part_json(p, False) for p in self.classified[2]]
        if prop == "bodyValues":
            return self.body_values()
        if prop == "headers":
            return [{"name": n, "value": v} for n, v in self.root.headers.fields]
        return header_prop(prop).value(self.root.headers)


def is_blob_id(value: object) -> bool:
    return isinstance(value, str) and _BLOB_ID.fullmatch(value) is not None


def read_blob(store: Store, account_id: int, blob_id: str) -> bytes | None:
    """The bytes of a blob the account may read: a stored blob or a part of one (``<hash>_<partId>…``)."""
    if not is_blob_id(blob_id):
        return None
    digest, *part_ids = blob_id.split("_")
    if not store.mail.account_can_read_blob(account_id, digest):
        return None
    try:
        data = store.blobs.read(digest)
    except OSError:
        return None
    for part_id in part_ids:
        part = next((p for p in parse_structure(data).leaves() if p.part_id == part_id), None)
        if part is None:
            return None
        data = part_bytes(data, part)[0]
    return data


def read_head(store: Store, digest: str, limit: int = 1 << 20) -> bytes:
    """The start of a stored message up to the end of its header section (at most ``limit`` bytes)."""
    chunks: list[bytes] = []
    size, tail = 0, b""
    try:
        with open(store.blobs.path(digest), "rb") as f:
            while size < limit:
                chunk = f.read(16384)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                window = tail + chunk
                if b"\n\n" in window or b"\n\r\n" in window:
                    break
                tail = window[-2:]
    except (OSError, ValueError):
        return b""
    return b"".join(chunks)


def read_header_block(store: Store, digest: str) -> Headers:
    """The top-level header fields of a stored message, reading only the start of the blob."""
    return Headers(split_headers(read_head(store, digest))[0])
