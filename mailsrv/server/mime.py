"""Parse RFC 5322 / MIME messages: header fields and their JMAP forms, the body-part tree, the ingest summary.

The summary (subject, addresses, Message-ID, references, sentAt, preview, hasAttachment) is computed once
at ingest and cached as JSON, so Email/get and Email/query do not re-parse the blob for common properties.
Body parts are located by byte offsets into the raw message, so a part's raw bytes (a forwarded
message/rfc822, an attachment) are exactly what the sender wrote. Malformed input never raises: missing or
broken headers become ``None`` and broken MIME structure degrades to fewer, simpler parts.
"""

from __future__ import annotations

import binascii
import email.utils
import html
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.headerregistry import AddressHeader
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

PREVIEW_LEN = 256
PREVIEW_SCAN = 16384  # characters of a part's text looked at for the preview
MAX_DEPTH = 32  # multipart nesting deeper than this is kept as one opaque part
MAX_PARTS = 1000  # parts beyond this are ignored
MAX_GROUPED_INPUT = 16384  # longer address fields are returned as one ungrouped group

# -- header fields ---------------------------------------------------------------------------------
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_ENCODED_WORD = re.compile(r"=\?([!->@-~]+?)\?([BbQq])\?([!->@-~]*?)\?=")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MSGID = re.compile(r"<([^<>\s]+)>")
_URL = re.compile(r"<([^<>]*)>")


class Headers:
    """The header fields of one entity as ``(name, raw value)``; lookups are case-insensitive."""

    __slots__ = ("_index", "fields")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self.fields = fields
        self._index: dict[str, list[str]] = {}
        for name, value in fields:
            self._index.setdefault(name.lower(), []).append(value)

    def all(self, name: str) -> list[str]:
        return list(self._index.get(name.lower(), ()))

    def last(self, name: str) -> str | None:
        values = self._index.get(name.lower())
        return values[-1] if values else None


def split_headers(raw: bytes, start: int = 0, end: int | None = None) -> tuple[list[tuple[str, str]], int]:
    """The header fields of the entity in ``raw[start:end]`` and the offset where its body starts.

    Raw values keep everything after the colon (leading space and folding included) minus the final line
    break, decoded as UTF-8 with U+FFFD for invalid octets (RFC 8621 ``asRaw``). A line that is neither a
    field nor a continuation ends the header section, as does the blank line.
    """
    end = len(raw) if end is None else end
    names: list[str] = []
    values: list[list[bytes]] = []
    pos = start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        nxt = end if nl < 0 else nl + 1
        line = raw[pos:nxt]
        content = line.rstrip(b"\r\n")
        if not content:
            pos = nxt
            break
        if line[:1] in (b" ", b"\t"):
            if not values:
                break
            values[-1].append(line)
        else:
            colon = content.find(b":")
            if colon > 0 and _FIELD_NAME.fullmatch(content, 0, colon):
                names.append(content[:colon].rstrip(b" \t").decode("ascii"))
                values.append([line[colon + 1 :]])
            elif not (pos == start and content.startswith(b"From ")):  # an mbox separator line is skipped
                break
        pos = nxt
    fields = [(n, b"".join(v).rstrip(b"\r\n").decode("utf-8", "replace")) for n, v in zip(names, values, strict=True)]
    return fields, pos


def unfold(raw: str) -> str:
    return _FOLD.sub("", raw).replace("\r", "").replace("\n", "")


def _decode_word(charset: str, encoding: str, text: str) -> str | None:
    charset = charset.split("*", 1)[0]  # RFC 2231 language suffix
    try:
        if encoding in "Bb":
            data = binascii.a2b_base64(text + "=" * (-len(text) % 4))
        else:
            data = binascii.a2b_qp(text.encode("ascii"), header=True)
        return _CONTROL.sub("", data.decode(charset, "replace"))
    except (LookupError, ValueError, binascii.Error):
        return None


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words (whitespace between adjacent encoded-words is dropped)."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pos, word_end = 0, -1
    for m in _ENCODED_WORD.finditer(value):
        decoded = _decode_word(m.group(1), m.group(2), m.group(3))
        if decoded is None:
            continue
        gap = value[pos : m.start()]
        if not (pos == word_end and (not gap or gap.isspace())):
            out.append(gap)
        out.append(decoded)
        pos = word_end = m.end()
    out.append(value[pos:])
    return "".join(out)


def as_text(raw: str) -> str:
    """RFC 8621 ``asText``: unfolded, encoded-words decoded, leading blanks removed, NFC."""
    return unicodedata.normalize("NFC", decode_words(unfold(raw)).lstrip(" \t"))


def _address(name: str, addr: str) -> dict[str, str | None]:
    name = decode_words(name).strip() if name else ""
    return {"name": unicodedata.normalize("NFC", name) or None, "email": addr.strip()}


_SIMPLE_MAILBOX = re.compile(r'\s*(?:"([^"\\]*)"|([^"\\,;:<>@()\[\]]*?))\s*<([^<>\s"(),;:@]+@[^<>\s"(),;:@]+)>\s*')
_BARE_ADDRESS = re.compile(r'\s*([^<>\s"(),;:@]+@[^<>\s"(),;:@]+)\s*')


def as_addresses(raw: str) -> list[dict[str, str | None]]:
    """RFC 8621 ``asAddresses``: every mailbox of an address-list, group syntax flattened."""
    text = unfold(raw)
    m = _SIMPLE_MAILBOX.fullmatch(text)  # the common single-mailbox forms, without the general parser
    if m:
        return [_address(m.group(1) if m.group(1) is not None else m.group(2), m.group(3))]
    m = _BARE_ADDRESS.fullmatch(text)
    if m:
        return [_address("", m.group(1))]
    out = []
    for name, addr in email.utils.getaddresses([text]):
        if addr or name:
            out.append(_address(name, addr))
    return [a for a in out if a["email"]]


def as_grouped_addresses(raw: str) -> list[dict[str, Any]]:
    """RFC 8621 ``asGroupedAddresses``: groups; mailboxes outside a group form groups with a null name."""
    text = unfold(raw)
    if len(text) > MAX_GROUPED_INPUT:  # the stdlib's full address parser is slow on huge fields
        return [{"name": None, "addresses": as_addresses(raw)}]
    try:
        kwds: dict[str, Any] = {"defects": []}
        AddressHeader.parse(text, kwds)
        groups: list[dict[str, Any]] = []
        for g in kwds["groups"]:
            members = [_address(a.display_name, a.addr_spec) for a in g.addresses if a.addr_spec]
            if g.display_name is None and groups and groups[-1]["name"] is None:
                groups[-1]["addresses"].extend(members)
            else:
                name = decode_words(g.display_name).strip() if g.display_name else None
                groups.append({"name": name or None, "addresses": members})
        return groups
    except Exception:  # noqa: BLE001 - the stdlib parser can trip over hostile input
        return [{"name": None, "addresses": as_addresses(raw)}]


def as_message_ids(raw: str | None) -> list[str] | None:
    """RFC 8621 ``asMessageIds``: the ids without angle brackets; a single bare ``x@y`` is accepted too."""
    if not raw:
        return None
    ids = _MSGID.findall(raw)
    if not ids:
        token = unfold(raw).strip()
        ids = [token] if "@" in token and not any(c in token for c in " \t<>,") else []
    return ids or None


def as_date(raw: str) -> str | None:
    """RFC 8621 ``asDate``: an RFC 3339 date-time keeping the header's zone, or ``None``."""
    try:
        dt = email.utils.parsedate_to_datetime(unfold(raw).strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def as_urls(raw: str) -> list[str] | None:
    """RFC 8621 ``asURLs``: the URLs inside angle brackets of a list header (RFC 2369)."""
    urls = ["".join(u.split()) for u in _URL.findall(unfold(raw))]
    return [u for u in urls if u] or None


# -- the body-part tree ----------------------------------------------------------------------------
@dataclass(eq=False)
class Part:
    """One MIME entity located in the raw message: headers at ``start``, content ``body_start:end``."""

    headers: Headers
    start: int
    body_start: int
    end: int
    type: str
    params: dict[str, str]
    disposition: str | None
    name: str | None
    subparts: list[Part] = field(default_factory=list)
    multipart: bool = False
    part_id: str | None = None

    @property
    def charset(self) -> str | None:
        """The charset parameter; ``us-ascii`` for text parts without one (RFC 2045)."""
        cs = self.params.get("charset")
        if cs:
            return cs.strip().lower()
        return "us-ascii" if self.type.startswith("text/") else None

    @property
    def transfer_encoding(self) -> str:
        value = self.headers.last("Content-Transfer-Encoding")
        return unfold(value).strip().lower() if value else ""

    def walk(self) -> list[Part]:
        out = [self]
        for sub in self.subparts:
            out.extend(sub.walk())
        return out

    def leaves(self) -> list[Part]:
        return [p for p in self.walk() if not p.multipart]


def _params(msg: Message, header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (msg.get_params(header=header) or [])[1:]:
        out[key.lower()] = email.utils.collapse_rfc2231_value(value).strip()
    return out


def _content_info(h: Headers, default_type: str) -> tuple[str, dict[str, str], str | None, str | None]:
    """(media type, parameters, disposition, file name) using the stdlib's RFC 2045/2231 rules."""
    ct, cd = h.last("Content-Type"), h.last("Content-Disposition")
    if ct is None and cd is None:
        return default_type, {}, None, None
    msg = Message()
    msg.set_default_type(default_type)
    try:
        if ct is not None:
            msg["Content-Type"] = unfold(ct).strip()
        if cd is not None:
            msg["Content-Disposition"] = unfold(cd).strip()
        ctype = msg.get_content_type()
        params = _params(msg, "content-type")
        disposition = msg.get_content_disposition()
        name = _params(msg, "content-disposition").get("filename") if cd is not None else None
    except Exception:  # noqa: BLE001 - malformed parameters must not break parsing
        return default_type, {}, None, None
    name = name or params.get("name")
    if name:
        name = decode_words(name).strip()
    return ctype, params, disposition, name or None


def _split_multipart(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the body parts between ``--boundary`` delimiter lines (RFC 2046 §5.1.1)."""
    delimiter = re.compile(rb"^--" + re.escape(boundary) + rb"(--)?[ \t]*\r?$", re.M)
    spans: list[tuple[int, int]] = []
    part_start: int | None = None
    for m in delimiter.finditer(raw, start, end):
        if part_start is not None:
            stop = m.start()
            if stop > part_start and raw[stop - 1 : stop] == b"\n":  # the line break belongs to the delimiter
                stop -= 1
                if stop > part_start and raw[stop - 1 : stop] == b"\r":
                    stop -= 1
            spans.append((part_start, stop))
        if m.group(1):
            return spans
        part_start = m.end() + 1 if raw[m.end() : m.end() + 1] == b"\n" else m.end()
    if part_start is not None and part_start < end:  # no close delimiter: the last part runs to the end
        spans.append((part_start, end))
    return spans


class _Counter:
    def __init__(self) -> None:
        self.n = 0


def _parse_part(raw: bytes, start: int, end: int, default_type: str, depth: int, counter: _Counter) -> Part:
    fields, body_start = split_headers(raw, start, end)
    headers = Headers(fields)
    ctype, params, disposition, name = _content_info(headers, default_type)
    part = Part(headers, start, body_start, end, ctype, params, disposition, name)
    if ctype.startswith("multipart/"):
        boundary = params.get("boundary")
        if boundary and depth < MAX_DEPTH:
            part.multipart = True
            child_type = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
            for s, e in _split_multipart(raw, body_start, end, boundary.encode("utf-8", "replace")):
                if counter.n >= MAX_PARTS:
                    break
                part.subparts.append(_parse_part(raw, s, e, child_type, depth + 1, counter))
            return part
        part.type = "text/plain" if not boundary else "application/octet-stream"
    counter.n += 1
    part.part_id = str(counter.n)
    return part


def parse_structure(raw: bytes) -> Part:
    """The MIME tree of a message; leaf parts get partIds "1", "2", … in document order."""
    try:
        return _parse_part(raw, 0, len(raw), "text/plain", 0, _Counter())
    except Exception:  # noqa: BLE001 - defensive: a parser bug must not make a message unreadable
        fields, body_start = split_headers(raw)
        return Part(Headers(fields), 0, body_start, len(raw), "text/plain", {}, None, None, part_id="1")


def _is_inline_media(ctype: str) -> bool:
    return ctype.startswith(("image/", "audio/", "video/"))


def classify(root: Part) -> tuple[list[Part], list[Part], list[Part]]:
    """textBody, htmlBody and attachments of a message (the algorithm of RFC 8621 §4.1.4)."""
    text: list[Part] = []
    html_: list[Part] = []
    attachments: list[Part] = []

    def walk(parts: list[Part], multipart_type: str, in_alternative: bool, tb: list[Part] | None, hb: list[Part] | None) -> None:
        text_len = len(tb) if tb is not None else -1
        html_len = len(hb) if hb is not None else -1
        for i, part in enumerate(parts):
            inline = (
                part.disposition != "attachment"
                and (part.type in ("text/plain", "text/html") or _is_inline_media(part.type))
                and (i == 0 or (multipart_type != "related" and (_is_inline_media(part.type) or not part.name)))
            )
            if part.multipart:
                sub = part.type.split("/", 1)[1]
                walk(part.subparts, sub, in_alternative or sub == "alternative", tb, hb)
            elif inline:
                if multipart_type == "alternative":
                    if part.type == "text/plain" and tb is not None:
                        tb.append(part)
                    elif part.type == "text/html" and hb is not None:
                        hb.append(part)
                    elif part.type not in ("text/plain", "text/html"):
                        attachments.append(part)
                    continue
                if in_alternative:  # like the RFC's pseudo-code, this holds for the rest of this multipart
                    if part.type == "text/plain":
                        hb = None
                    if part.type == "text/html":
                        tb = None
                if tb is not None:
                    tb.append(part)
                if hb is not None:
                    hb.append(part)
                if (tb is None or hb is None) and _is_inline_media(part.type):
                    attachments.append(part)
            else:
                attachments.append(part)
        if multipart_type == "alternative" and tb is not None and hb is not None:
            if text_len == len(tb) and html_len != len(hb):
                tb.extend(hb[html_len:])
            if html_len == len(hb) and text_len != len(tb):
                hb.extend(tb[text_len:])

    walk([root], "mixed", False, text, html_)
    return text, html_, attachments


# -- part content ----------------------------------------------------------------------------------
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/=\s]")
_B64_DROP = re.compile(rb"[^A-Za-z0-9+/]")


def part_bytes(raw: bytes, part: Part) -> tuple[bytes, bool]:
    """A leaf part's content after Content-Transfer-Encoding decoding, and whether that was a problem."""
    data = raw[part.body_start : part.end]
    cte = part.transfer_encoding
    if cte in ("", "7bit", "8bit", "binary"):
        return data, False
    if cte == "base64":
        problem = bool(_B64_JUNK.search(data))
        clean = _B64_DROP.sub(b"", data)
        if len(clean) % 4 == 1:
            clean, problem = clean[:-1], True
        try:
            return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4)), problem
        except binascii.Error:
            return b"", True
    if cte == "quoted-printable":
        return binascii.a2b_qp(data), False
    return data, True  # unknown transfer encoding


def part_text(raw: bytes, part: Part) -> tuple[str, bool]:
    """A text part's content as a string (charset decoded, CRLF → LF) and whether decoding had problems."""
    data, problem = part_bytes(raw, part)
    charset = part.charset or "utf-8"
    if charset in ("us-ascii", "ascii", "ansi_x3.4-1968", "utf8"):
        charset = "utf-8"  # ASCII is a subset; undeclared 8-bit text is UTF-8 far more often than not
    try:
        text = data.decode(charset)
    except UnicodeDecodeError:
        text, problem = data.decode(charset, "replace"), True
    except LookupError:  # unknown charset
        text, problem = data.decode("utf-8", "replace"), True
    return text.replace("\r\n", "\n"), problem


_HTML_DROP = re.compile(r"<!--.*?-->|<(script|style|head)\b.*?</\1\s*>", re.S | re.I)
_HTML_BREAK = re.compile(r"<(?:br|/?p|/div|/li|/tr|/h[1-6])\b[^>]*>", re.I)
_HTML_TAG = re.compile(r"<[^>]*>")


def html_to_text(markup: str) -> str:
    """The text a reader sees in an HTML part (markup dropped, entities decoded)."""
    text = _HTML_DROP.sub(" ", markup)
    text = _HTML_BREAK.sub("\n", text)
    return html.unescape(_HTML_TAG.sub("", text))


def readable_text(raw: bytes, part: Part) -> str:
    text, _ = part_text(raw, part)
    return html_to_text(text) if part.type == "text/html" else text


def preview(raw: bytes, text_body: list[Part]) -> str:
    """RFC 8621 ``preview``: up to 256 characters of the text body, whitespace collapsed."""
    words: list[str] = []
    length = 0
    for part in text_body:
        if part.type not in ("text/plain", "text/html"):
            continue
        for word in _CONTROL.sub(" ", readable_text(raw, part)[:PREVIEW_SCAN]).split():
            words.append(word)
            length += len(word) + 1
            if length > PREVIEW_LEN:
                return " ".join(words)[:PREVIEW_LEN]
    return " ".join(words)[:PREVIEW_LEN]


def search_text(raw: bytes) -> str:
    """The text a reader sees: the text body, then other text parts (an HTML alternative is not repeated)."""
    root = parse_structure(raw)
    text_body, html_body, _ = classify(root)
    shown = {id(p) for p in text_body + html_body}
    parts = text_body + [p for p in root.leaves() if id(p) not in shown]
    return "\n".join(readable_text(raw, p) for p in parts if p.type in ("text/plain", "text/html"))


# -- the summary cached at ingest -----------------------------------------------------------------
def _first(h: Headers, name: str, form: Any) -> Any:
    value = h.last(name)
    return None if value is None else form(value)


def summarize(raw: bytes) -> dict[str, Any]:
    """The cached summary of a message (JSON-serialisable); header properties use the last instance."""
    root = parse_structure(raw)
    h = root.headers
    try:
        text_body, _, attachments = classify(root)
        text_preview = preview(raw, text_body)
    except Exception:  # noqa: BLE001
        attachments, text_preview = [], ""
    return {
        "messageId": as_message_ids(h.last("Message-ID")),
        "inReplyTo": as_message_ids(h.last("In-Reply-To")),
        "references": as_message_ids(h.last("References")),
        "subject": _first(h, "Subject", as_text),
        "sentAt": _first(h, "Date", as_date),
        "from": _first(h, "From", as_addresses),
        "sender": _first(h, "Sender", as_addresses),
        "to": _first(h, "To", as_addresses),
        "cc": _first(h, "Cc", as_addresses),
        "bcc": _first(h, "Bcc", as_addresses),
        "replyTo": _first(h, "Reply-To", as_addresses),
        "hasAttachment": bool(attachments),
        "preview": text_preview,
        "autoSubmitted": (_first(h, "Auto-Submitted", as_text) or "no").strip().lower(),
        "listId": _first(h, "List-Id", as_text),
        "precedence": (_first(h, "Precedence", as_text) or "").strip().lower(),
    }


# -- helpers over stdlib message objects (delivery, vacation replies) -----------------------------
def parse_message(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


def header_str(msg: Message, name: str) -> str | None:
    """A header's decoded value, ``None`` when absent or undecodable."""
    try:
        value = msg.get(name)
    except Exception:  # noqa: BLE001 - malformed headers must not break ingest
        return None
    if value is None:
        return None
    try:
        return str(value)
    except Exception:  # noqa: BLE001
        return None


def message_ids(value: str | None) -> list[str] | None:
    """RFC 8621 ``asMessageIds``: the ids inside angle brackets, without the brackets."""
    return as_message_ids(value)


# -- dates -----------------------------------------------------------------------------------------
def utc_iso(ts: float) -> str:
    """A UTC timestamp as RFC 3339 ``YYYY-MM-DDTHH:MM:SSZ`` (JMAP UTCDate)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(value: object) -> float | None:
    """Parse a JMAP UTCDate/Date string; ``None`` if it is not one."""
    if not isinstance(value, str) or len(value) < 20:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return dt.timestamp()
