"""Email/set, Email/import, Email/copy and Email/changes (RFC 8621 §4.3, §4.6-4.8)."""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from ..mime import parse_utc, summarize
from ..store.mail import EMAIL, MailTx
from .core import MAIL, Call, MethodError, SetError, account_for, jmap_id, method, set_limit
from .mailbox import SetOutcome, check_if_in_state, invalid, map_arg
from .thread import changes_response

# RFC 8621 §4.1.1: keyword characters are IMAP atom characters minus "]"
_KEYWORD = re.compile(r"^[\x21-\x7e]{1,255}$")
_KEYWORD_FORBIDDEN = set('(){]%*"\\')
_BLOB_ID = re.compile(r"^[0-9a-f]{64}$")
ADDRESS_HEADERS = {"from": "From", "to": "To", "cc": "Cc", "bcc": "Bcc", "replyTo": "Reply-To", "sender": "Sender"}
MSGID_HEADERS = {"messageId": "Message-ID", "inReplyTo": "In-Reply-To", "references": "References"}
CREATE_PROPERTIES = {"mailboxIds", "keywords", "receivedAt", "subject", "sentAt", "textBody", "htmlBody",
                     "attachments", "bodyValues", *ADDRESS_HEADERS, *MSGID_HEADERS}
IMMUTABLE = {"id", "blobId", "threadId", "size", "receivedAt", "headers", "bodyStructure", "preview", "hasAttachment",
             *CREATE_PROPERTIES - {"mailboxIds", "keywords"}}


# -- argument checks -----------------------------------------------------------------------------------
def keyword_name(value: Any) -> str:
    """A valid keyword, lower-cased (keywords compare case-insensitively)."""
    if not isinstance(value, str) or not _KEYWORD.match(value) or _KEYWORD_FORBIDDEN & set(value):
        raise invalid(["keywords"], f"not a valid keyword: {value!r}")
    return value.lower()


def keywords_arg(value: Any) -> dict[str, bool]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(v is True for v in value.values()):
        raise invalid(["keywords"], "keywords must map keyword names to true")
    return {keyword_name(k): True for k in value}


def received_at_arg(value: Any) -> float | None:
    if value is None:
        return None
    ts = parse_utc(value)
    if ts is None:
        raise invalid(["receivedAt"], "receivedAt must be a UTCDate such as 2024-01-02T03:04:05Z")
    return ts


def mailbox_ids_arg(call: Call, t: MailTx, value: Any) -> set[int]:
    """The ids of a ``mailboxIds`` value; every mailbox must exist in the account (at least one)."""
    if not isinstance(value, dict) or not value or not all(v is True for v in value.values()):
        raise invalid(["mailboxIds"], "mailboxIds must map at least one mailbox id to true")
    out = set()
    for key in value:
        mid = call.resolve_id(key)
        if mid is None or t.mailbox(mid) is None:
            raise invalid(["mailboxIds"], f"no mailbox {key} in this account")
        out.add(mid)
    return out


def blob_arg(call: Call, account: int, value: Any) -> bytes:
    """The bytes of a blob the account may read (``blobNotFound`` otherwise)."""
    if isinstance(value, str) and _BLOB_ID.match(value) and call.store.mail.account_can_read_blob(account, value):
        try:
            return bytes(call.store.blobs.read(value))
        except OSError:
            pass
    raise SetError("blobNotFound", f"blob {value} not found", notFound=[value])


def _unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


# -- building a message from JMAP properties (drafts) ---------------------------------------------------
@dataclass
class Prepared:
    """A message ready to be stored."""

    raw: bytes
    summary: dict[str, Any]
    blob_hash: str


def _addresses(prop: str, value: Any) -> list[Address]:
    if not isinstance(value, list):
        raise invalid([prop], f"{prop} must be a list of EmailAddress objects")
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("email"), str) or not isinstance(item.get("name") or "", str):
            raise invalid([prop], f"{prop} must be a list of EmailAddress objects")
        try:
            out.append(Address(display_name=item.get("name") or "", addr_spec=item["email"]))
        except (ValueError, IndexError, TypeError):
            raise invalid([prop], f"not an e-mail address: {item['email']!r}") from None
    return out


def _text_part(call: Call, account: int, prop: str, parts: Any, body_values: dict[str, Any], subtype: str) -> str | None:
    if parts is None:
        return None
    if not isinstance(parts, list) or len(parts) != 1 or not isinstance(parts[0], dict):
        raise invalid([prop], f"{prop} must hold exactly one body part")
    part = parts[0]
    if part.get("type", f"text/{subtype}") != f"text/{subtype}":
        raise invalid([prop], f"{prop} must be of type text/{subtype}")
    if isinstance(part.get("partId"), str):
        bv = body_values.get(part["partId"])
        if not isinstance(bv, dict) or not isinstance(bv.get("value"), str):
            raise invalid(["bodyValues"], f"no bodyValues entry for part {part['partId']}")
        return str(bv["value"])
    if "blobId" in part:
        return blob_arg(call, account, part["blobId"]).decode("utf-8", "replace")
    raise invalid([prop], "a body part needs partId or blobId")


def _attach(call: Call, account: int, msg: EmailMessage, parts: Any, body_values: dict[str, Any]) -> None:
    if parts is None:
        return
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise invalid(["attachments"], "attachments must be a list of EmailBodyPart objects")
    for part in parts:
        if isinstance(part.get("partId"), str):
            bv = body_values.get(part["partId"])
            if not isinstance(bv, dict) or not isinstance(bv.get("value"), str):
                raise invalid(["bodyValues"], f"no bodyValues entry for part {part['partId']}")
            data = str(bv["value"]).encode()
        else:
            data = blob_arg(call, account, part.get("blobId"))
        ctype = part.get("type") or "application/octet-stream"
        maintype, _, subtype = str(ctype).partition("/")
        if not maintype or not subtype or "/" in subtype:
            raise invalid(["attachments"], f"not a media type: {ctype!r}")
        name, cid = part.get("name"), part.get("cid")
        disposition = part.get("disposition") or "attachment"
        if (name is not None and not isinstance(name, str)) or (cid is not None and not isinstance(cid, str)) \
                or disposition not in ("attachment", "inline"):
            raise invalid(["attachments"], "attachment name, cid and disposition must be strings")
        msg.add_attachment(data, maintype=maintype.lower(), subtype=subtype.lower(), filename=name,
                           disposition=disposition, cid=f"<{cid.strip('<>')}>" if cid else None)


def _set_header(msg: EmailMessage, prop: str, header: str, value: Any) -> None:
    try:
        msg[header] = value
    except (ValueError, TypeError, IndexError) as exc:  # e.g. line breaks in a header value
        raise invalid([prop], f"{prop} cannot be written as a header: {exc}") from None


def build_message(call: Call, account: int, obj: dict[str, Any]) -> bytes:
    """An RFC 5322 message from the JMAP creation properties (RFC 8621 §4.6)."""
    msg = EmailMessage()
    for prop, header in ADDRESS_HEADERS.items():
        if obj.get(prop) is not None:
            _set_header(msg, prop, header, _addresses(prop, obj[prop]))
    if obj.get("subject") is not None:
        if not isinstance(obj["subject"], str):
            raise invalid(["subject"], "subject must be a string")
        _set_header(msg, "subject", "Subject", obj["subject"])
    sent = datetime.now().astimezone()
    if obj.get("sentAt") is not None:
        try:
            sent = datetime.fromisoformat(str(obj["sentAt"]).replace("Z", "+00:00"))
        except ValueError:
            raise invalid(["sentAt"], "sentAt must be a Date") from None
        if sent.tzinfo is None:
            raise invalid(["sentAt"], "sentAt needs a time zone")
    msg["Date"] = email.utils.format_datetime(sent)
    for prop, header in MSGID_HEADERS.items():
        value = obj.get(prop)
        if value is None:
            continue
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v and " " not in v for v in value):
            raise invalid([prop], f"{prop} must be a list of message ids")
        _set_header(msg, prop, header, " ".join(f"<{v.strip('<>')}>" for v in value))
    if "Message-ID" not in msg:
        msg["Message-ID"] = email.utils.make_msgid(domain=call.server.cfg.hostname)
    body_values = obj.get("bodyValues") or {}
    if not isinstance(body_values, dict):
        raise invalid(["bodyValues"], "bodyValues must be an object")
    text = _text_part(call, account, "textBody", obj.get("textBody"), body_values, "plain")
    html = _text_part(call, account, "htmlBody", obj.get("htmlBody"), body_values, "html")
    if text is not None:
        msg.set_content(text)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content("")
    _attach(call, account, msg, obj.get("attachments"), body_values)
    return msg.as_bytes(policy=SMTP)


def _prepare_create(call: Call, account: int, obj: Any) -> Prepared:
    if not isinstance(obj, dict):
        raise SetError("invalidProperties", "expected an Email object")
    unknown = [k for k in obj if k not in CREATE_PROPERTIES]
    if unknown:
        raise invalid(unknown, "these properties cannot be set on create")
    keywords_arg(obj.get("keywords"))
    received_at_arg(obj.get("receivedAt"))
    try:
        raw = build_message(call, account, obj)
    except (ValueError, TypeError) as exc:  # header values the email package refuses (e.g. line breaks)
        raise invalid([], f"cannot build the message: {exc}") from None
    return _prepare_raw(call, raw)


def _prepare_raw(call: Call, raw: bytes) -> Prepared:
    if not raw.strip():
        raise SetError("invalidEmail", "the blob is empty")
    if len(raw) > call.server.cfg.max_message_size:
        raise SetError("tooLarge", f"messages are limited to {call.server.cfg.max_message_size} octets")
    summary = summarize(raw)
    return Prepared(raw, summary, call.store.blobs.put(raw))


def _store(call: Call, t: MailTx, obj: dict[str, Any], prepared: Prepared) -> dict[str, Any]:
    boxes = mailbox_ids_arg(call, t, obj.get("mailboxIds"))
    keywords = keywords_arg(obj.get("keywords"))
    received = received_at_arg(obj.get("receivedAt"))
    if not t.quota_allows(len(prepared.raw)):
        raise SetError("overQuota", "the account's quota is used up")
    email_id, thread_id = t.ingest(prepared.blob_hash, len(prepared.raw), prepared.summary, sorted(boxes), keywords,
                                   received if received is not None else time.time())
    call.server.metrics.inc("message_ingest_jmap_append")
    return {"id": jmap_id(email_id), "blobId": prepared.blob_hash, "threadId": jmap_id(thread_id),
            "size": len(prepared.raw)}


# -- Email/set -----------------------------------------------------------------------------------------
def _patched(call: Call, t: MailTx, email_id: int, patch: Any) -> tuple[dict[str, bool] | None, set[int] | None]:
    """The keywords and mailbox ids an update patch results in (``None`` = unchanged)."""
    current = t.email(email_id)
    if current is None:
        raise SetError("notFound")
    if not isinstance(patch, dict):
        raise SetError("invalidPatch", "a patch must be an object")
    keywords: dict[str, bool] | None = None
    boxes: set[int] | None = None
    for path in patch:
        root = path.split("/", 1)[0]
        if root in ("keywords", "mailboxIds") and "/" in path and root in patch:
            raise SetError("invalidPatch", f"{root} is both replaced and patched")
    for path, value in patch.items():
        root, _, rest = path.partition("/")
        if path == "keywords":
            keywords = keywords_arg(value)
        elif path == "mailboxIds":
            boxes = mailbox_ids_arg(call, t, value)
        elif root == "keywords" and rest:
            keywords = dict(current.keywords) if keywords is None else keywords
            name = keyword_name(_unescape(rest))
            if value is True:
                keywords[name] = True
            elif value is None:
                keywords.pop(name, None)
            else:
                raise invalid([path], "a keyword is set with true and removed with null")
        elif root == "mailboxIds" and rest:
            boxes = set(current.mailbox_ids) if boxes is None else boxes
            mid = call.resolve_id(_unescape(rest))
            if value is True:
                if mid is None or t.mailbox(mid) is None:
                    raise invalid(["mailboxIds"], f"no mailbox {rest} in this account")
                boxes.add(mid)
            elif value is None:
                if mid is not None:
                    boxes.discard(mid)
            else:
                raise invalid([path], "a mailbox is added with true and removed with null")
        elif root in IMMUTABLE:
            raise invalid([path], f"{root} cannot be changed")
        else:
            raise invalid([path], f"unknown property {root}")
    if boxes is not None and not boxes:
        raise invalid(["mailboxIds"], "an email must stay in at least one mailbox")
    return keywords, boxes


@method("Email/set", MAIL)
def email_set(call: Call) -> dict[str, Any]:
    account = call.account()
    set_limit(call)
    create, update = map_arg(call, "create"), map_arg(call, "update")
    destroy = call.ids_arg("destroy") or []
    result = SetOutcome()
    prepared: dict[str, Prepared] = {}
    for cid, obj in create.items():  # build and store the bytes before taking the write lock
        try:
            prepared[cid] = _prepare_create(call, account, obj)
        except SetError as exc:
            result.not_created[cid] = exc.to_json()
    with call.store.mail.write(account) as t:
        old_state = check_if_in_state(call, t, EMAIL)
        for cid, prep in prepared.items():
            try:
                with t.savepoint():
                    result.created[cid] = _store(call, t, create[cid], prep)
                call.created_ids[cid] = result.created[cid]["id"]
            except SetError as exc:
                result.not_created[cid] = exc.to_json()
        for key, patch in update.items():
            eid = call.resolve_id(key)
            try:
                if eid is None:
                    raise SetError("notFound")
                with t.savepoint():
                    keywords, boxes = _patched(call, t, eid, patch)
                    t.update_email(eid, keywords=keywords, mailbox_ids=boxes)
                result.updated[jmap_id(eid)] = None
            except SetError as exc:
                result.not_updated[key] = exc.to_json()
        for key in dict.fromkeys(destroy):
            eid = call.resolve_id(key)
            if eid is not None and t.destroy_email(eid):
                result.destroyed.append(jmap_id(eid))
            else:
                result.not_destroyed[key] = SetError("notFound").to_json()
        t.finish()
        new_state = t.state(EMAIL)
    return result.response(call.args["accountId"], old_state, new_state)


# -- Email/import --------------------------------------------------------------------------------------
IMPORT_PROPERTIES = {"blobId", "mailboxIds", "keywords", "receivedAt"}


def _prepare_import(call: Call, account: int, obj: Any) -> Prepared:
    if not isinstance(obj, dict):
        raise SetError("invalidProperties", "expected an EmailImport object")
    unknown = [k for k in obj if k not in IMPORT_PROPERTIES]
    if unknown:
        raise invalid(unknown, "unknown EmailImport properties")
    if "blobId" not in obj or "mailboxIds" not in obj:
        raise invalid([k for k in ("blobId", "mailboxIds") if k not in obj], "blobId and mailboxIds are required")
    keywords_arg(obj.get("keywords"))
    received_at_arg(obj.get("receivedAt"))
    raw = blob_arg(call, account, obj["blobId"])
    return _prepare_raw(call, raw)


@method("Email/import", MAIL)
def email_import(call: Call) -> dict[str, Any]:
    account = call.account()
    emails = map_arg(call, "emails")
    if len(emails) > call.limits.max_objects_in_set:
        raise MethodError("requestTooLarge", f"at most {call.limits.max_objects_in_set} emails per Email/import")
    result = SetOutcome()
    prepared: dict[str, Prepared] = {}
    for cid, obj in emails.items():
        try:
            prepared[cid] = _prepare_import(call, account, obj)
        except SetError as exc:
            result.not_created[cid] = exc.to_json()
    with call.store.mail.write(account) as t:
        old_state = check_if_in_state(call, t, EMAIL)
        for cid, prep in prepared.items():
            try:
                with t.savepoint():
                    result.created[cid] = _store(call, t, emails[cid], prep)
                call.created_ids[cid] = result.created[cid]["id"]
            except SetError as exc:
                result.not_created[cid] = exc.to_json()
        t.finish()
        new_state = t.state(EMAIL)
    return result.response(call.args["accountId"], old_state, new_state, with_update=False)


# -- Email/copy ----------------------------------------------------------------------------------------
COPY_PROPERTIES = {"id", "mailboxIds", "keywords", "receivedAt"}


def _copy_one(call: Call, t: MailTx, from_account: int, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SetError("invalidProperties", "expected an Email object")
    unknown = [k for k in obj if k not in COPY_PROPERTIES]
    if unknown:
        raise invalid(unknown, "only id, mailboxIds, keywords and receivedAt can be given")
    source_id = call.resolve_id(obj.get("id"))
    source = call.store.mail.email(from_account, source_id) if source_id is not None else None
    if source is None:
        raise SetError("notFound", f"no email {obj.get('id')} in the source account")
    boxes = mailbox_ids_arg(call, t, obj.get("mailboxIds"))
    keywords = keywords_arg(obj["keywords"]) if "keywords" in obj else source.keywords
    received = received_at_arg(obj.get("receivedAt"))
    if not t.quota_allows(source.size):
        raise SetError("overQuota", "the account's quota is used up")
    email_id, thread_id = t.ingest(source.blob_hash, source.size, source.summary, sorted(boxes), keywords,
                                   received if received is not None else source.received_at)
    return {"id": jmap_id(email_id), "blobId": source.blob_hash, "threadId": jmap_id(thread_id), "size": source.size}


def _destroy_originals(call: Call, from_account: int, ids: list[str]) -> list[Any]:
    """The implicit ``Email/set`` that destroys the copied originals (``onSuccessDestroyOriginal``)."""
    result = SetOutcome()
    try:
        with call.store.mail.write(from_account) as t:
            wanted = call.arg("destroyFromIfInState", str)
            old_state = t.state(EMAIL)
            if wanted is not None and wanted != old_state:
                raise MethodError("stateMismatch", f"state is {old_state}, not {wanted}")
            for key in ids:
                eid = call.resolve_id(key)
                if eid is not None and t.destroy_email(eid):
                    result.destroyed.append(key)
                else:
                    result.not_destroyed[key] = SetError("notFound").to_json()
            t.finish()
            new_state = t.state(EMAIL)
    except MethodError as exc:
        return ["error", exc.to_json(), call.call_id]
    out = result.response(call.args["fromAccountId"], old_state, new_state)
    return ["Email/set", out, call.call_id]


@method("Email/copy", MAIL)
def email_copy(call: Call) -> dict[str, Any]:
    account = call.account()
    from_account = account_for(call.server, call.identity, call.args.get("fromAccountId"))
    if from_account == account:
        raise MethodError("invalidArguments", "fromAccountId and accountId must differ")
    create = map_arg(call, "create")
    if len(create) > call.limits.max_objects_in_set:
        raise MethodError("requestTooLarge", f"at most {call.limits.max_objects_in_set} emails per Email/copy")
    destroy_original = call.arg("onSuccessDestroyOriginal", bool, False)
    wanted_from = call.arg("ifFromInState", str)
    if wanted_from is not None and wanted_from != call.store.mail.state(from_account, EMAIL):
        raise MethodError("stateMismatch", "the source account's state differs from ifFromInState")
    result = SetOutcome()
    with call.store.mail.write(account) as t:
        old_state = check_if_in_state(call, t, EMAIL)
        for cid, obj in create.items():
            try:
                with t.savepoint():
                    result.created[cid] = _copy_one(call, t, from_account, obj)
                call.created_ids[cid] = result.created[cid]["id"]
                call.server.metrics.inc("message_ingest_jmap_append")
            except SetError as exc:
                result.not_created[cid] = exc.to_json()
        t.finish()
        new_state = t.state(EMAIL)
    out = {"fromAccountId": call.args["fromAccountId"],
           **result.response(call.args["accountId"], old_state, new_state, with_update=False)}
    if destroy_original and result.created:
        originals = [str(create[cid]["id"]) for cid in result.created]
        call.extra_responses.append(_destroy_originals(call, from_account, originals))
    return out


# -- Email/changes -------------------------------------------------------------------------------------
@method("Email/changes", MAIL)
def email_changes(call: Call) -> dict[str, Any]:
    return changes_response(call, EMAIL)[0]
