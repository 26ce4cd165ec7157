"""EmailSubmission/get, /changes, /query, /queryChanges and /set (RFC 8621 §7).

A submission sends an email of the account as one of its identities: the identity's address must be in the
message's From (``forbiddenFrom``) and the envelope sender must be an address of the account
(``forbiddenMailFrom``). Without an envelope, the sender is the identity's address and the recipients are the
message's To, Cc and Bcc. The message (without its Bcc header) goes through :func:`delivery.route_sync`:
local recipients get it in their Inbox, others are queued for the smarthost. Sending is immediate, so every
submission is ``final`` and cannot be cancelled (``cannotUnsend``). ``onSuccessUpdateEmail`` and
``onSuccessDestroyEmail`` run as an implicit ``Email/set`` whose response follows this one.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..delivery import domain_of, route_sync
from ..mime import parse_utc, utc_iso
from ..smtp import MAX_RECIPIENTS
from ..store.changes import CREATED, DESTROYED
from .core import SUBMISSION, Call, MethodError, SetError, filter_predicate, jmap_id, method, parse_id, set_limit
from .email_set import email_set
from .identity import (
    account_addresses,
    apply_sort,
    check_if_in_state,
    ensure_default_identity,
    is_address,
    load_identity,
    next_object_id,
    query_changes_unsupported,
    query_response,
    record_changes,
    sort_arg,
    standard_get,
    state_of,
)
from .mailbox import SetOutcome, invalid, map_arg
from .thread import changes_response

log = logging.getLogger("mailsrv.jmap")

EMAIL_SUBMISSION = "EmailSubmission"
PROPERTIES = frozenset({"id", "identityId", "emailId", "threadId", "envelope", "sendAt", "undoStatus",
                        "deliveryStatus", "dsnBlobIds", "mdnBlobIds"})
CREATE_PROPERTIES = frozenset({"identityId", "emailId", "envelope", "undoStatus"})
_BCC = re.compile(rb"^bcc[ \t]*:", re.IGNORECASE)


# -- EmailSubmission/get, /changes, /query -------------------------------------------------------------------
def _submissions(c: sqlite3.Connection, account: int) -> dict[int, dict[str, Any]]:
    rows = c.execute("SELECT id, data FROM submissions WHERE account_id=? ORDER BY id", (account,)).fetchall()
    return {int(r[0]): {"id": jmap_id(r[0]), **json.loads(r[1])} for r in rows}


@method("EmailSubmission/get", SUBMISSION)
def submission_get(call: Call) -> dict[str, Any]:
    account = call.account()

    def load(c: sqlite3.Connection) -> tuple[str, dict[str, dict[str, Any]]]:
        found = _submissions(c, account)
        return state_of(call, c, account, EMAIL_SUBMISSION), {s["id"]: s for s in found.values()}

    return standard_get(call, PROPERTIES, load)


@method("EmailSubmission/changes", SUBMISSION)
def submission_changes(call: Call) -> dict[str, Any]:
    return changes_response(call, EMAIL_SUBMISSION)[0]


def _id_list(value: Any, key: str) -> set[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MethodError("invalidArguments", f"filter {key} must be a list of ids")
    return set(value)




def _condition(key: str, value: Any) -> Callable[[dict[str, Any]], bool]:
    if key in ("identityIds", "emailIds", "threadIds"):
        wanted, prop = _id_list(value, key), key[:-1]
        return lambda s: s[prop] in wanted
    if key == "undoStatus":
        if not isinstance(value, str):
            raise MethodError("invalidArguments", "filter undoStatus must be a string")
        status = value
        return lambda s: s["undoStatus"] == status
    if key in ("before", "after"):
        when = parse_utc(value)
        if when is None:
            raise MethodError("invalidArguments", f"filter {key} must be a UTCDate")
        if key == "before":
            return lambda s: (parse_utc(s["sendAt"]) or 0) < when
        return lambda s: (parse_utc(s["sendAt"]) or 0) >= when
    raise MethodError("unsupportedFilter", f"cannot filter submissions by {key}")


def _sort_key(s: dict[str, Any], prop: str) -> Any:
    if prop == "sentAt":
        return parse_utc(s["sendAt"]) or 0
    return parse_id(s[prop]) or 0


@method("EmailSubmission/query", SUBMISSION)
def submission_query(call: Call) -> dict[str, Any]:
    account = call.account()
    match = filter_predicate(call.args.get("filter"), _condition)
    sort = sort_arg(call, {"emailId", "threadId", "sentAt"})
    with call.store.db.lock:
        c = call.store.db.conn
        state = state_of(call, c, account, EMAIL_SUBMISSION)
        found = [s for s in _submissions(c, account).values() if match(s)]
    found = apply_sort(found, sort, _sort_key)
    return query_response(call, [s["id"] for s in found], state)


@method("EmailSubmission/queryChanges", SUBMISSION)
def submission_query_changes(call: Call) -> dict[str, Any]:
    return query_changes_unsupported(call)


# -- EmailSubmission/set: checks ------------------------------------------------------------------------------
@dataclass
class Outgoing:
    """A checked submission, ready to be sent."""

    identity_id: str
    email_id: str
    thread_id: str
    mail_from: str
    rcpts: list[str]
    envelope: dict[str, Any]
    envelope_given: bool
    raw: bytes


def _envelope_address(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) - {"email", "parameters"} or not isinstance(value.get("email"), str):
        raise invalid(["envelope"], "an envelope Address is an object with email and parameters")
    if value.get("parameters"):
        raise invalid(["envelope"], "SMTP parameters are not supported")
    return {"email": value["email"], "parameters": None}


def _envelope_arg(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != {"mailFrom", "rcptTo"} or not isinstance(value["rcptTo"], list):
        raise invalid(["envelope"], "envelope must have mailFrom and rcptTo")
    return {"mailFrom": _envelope_address(value["mailFrom"]), "rcptTo": [_envelope_address(r) for r in value["rcptTo"]]}


def _message_recipients(summary: dict[str, Any]) -> list[str]:
    out: dict[str, str] = {}
    for header in ("to", "cc", "bcc"):
        for addr in summary.get(header) or []:
            email = addr.get("email") if isinstance(addr, dict) else None
            if isinstance(email, str) and email:
                out.setdefault(email.lower(), email)
    return list(out.values())


def _may_send_as(own: list[str], address: str) -> bool:
    local, _, domain = address.lower().rpartition("@")
    return f"{local}@{domain}" in own or f"{local.split('+')[0]}@{domain}" in own


def without_bcc(raw: bytes) -> bytes:
    """The message without its Bcc header field(s); the body is untouched."""
    ends = [i + len(sep) // 2 for sep in (b"\r\n\r\n", b"\n\n") if (i := raw.find(sep)) >= 0]
    end = min(ends) if ends else len(raw)
    head, body = raw[:end], raw[end:]
    lines = head.splitlines(keepends=True)
    out, skipping = [], False
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = bool(_BCC.match(line))
        if not skipping:
            out.append(line)
    return b"".join(out) + body


def _check_recipients(call: Call, rcpts: list[str]) -> None:
    if not rcpts:
        raise SetError("noRecipients", "the submission has no recipients")
    if len(rcpts) > MAX_RECIPIENTS:
        raise SetError("tooManyRecipients", f"at most {MAX_RECIPIENTS} recipients", maxRecipients=MAX_RECIPIENTS)
    principals = call.store.principals
    bad = [r for r in rcpts if not is_address(r) or (
        principals.is_local_domain(domain_of(r)) and principals.resolve_recipient(r) is None)]
    if bad:
        raise SetError("invalidRecipients", "no such recipient: " + ", ".join(bad), invalidRecipients=bad)


def _prepare(call: Call, account: int, obj: Any) -> Outgoing:
    if not isinstance(obj, dict):
        raise SetError("invalidProperties", "expected an EmailSubmission object")
    unknown = [k for k in obj if k not in CREATE_PROPERTIES]
    if unknown:
        raise invalid(unknown, "these properties cannot be set")
    if obj.get("undoStatus", "final") != "final":
        raise invalid(["undoStatus"], "messages are sent at once; undoStatus is final")
    identity_id = call.resolve_id(obj.get("identityId"))
    identity = load_identity(call, account, identity_id) if identity_id is not None else None
    if identity is None:
        raise invalid(["identityId"], "no such identity in this account")
    email_id = call.resolve_id(obj.get("emailId"))
    email = call.store.mail.email(account, email_id) if email_id is not None else None
    if email is None:
        raise invalid(["emailId"], "no such email in this account")
    own = account_addresses(call, account)
    sender = str(identity["email"]).lower()
    if sender not in own:
        raise SetError("forbiddenFrom", f"{identity['email']} is no longer an address of this account")
    from_addrs = [str(a.get("email", "")).lower() for a in email.summary.get("from") or [] if isinstance(a, dict)]
    if not from_addrs:
        raise SetError("invalidEmail", "the message has no From address", properties=["from"])
    if sender not in from_addrs:
        raise SetError("forbiddenFrom", f"the message's From is not the identity's address {identity['email']}")
    if "envelope" in obj and obj["envelope"] is not None:
        envelope, given = _envelope_arg(obj["envelope"]), True
    else:
        rcpts = _message_recipients(email.summary)
        envelope = {"mailFrom": {"email": identity["email"], "parameters": None},
                    "rcptTo": [{"email": r, "parameters": None} for r in rcpts]}
        given = False
    mail_from = envelope["mailFrom"]["email"]
    if not is_address(mail_from) or not _may_send_as(own, mail_from):
        raise SetError("forbiddenMailFrom", f"you may not send from {mail_from}")
    rcpts = list({r["email"].lower(): r["email"] for r in envelope["rcptTo"]}.values())
    _check_recipients(call, rcpts)
    max_size = call.server.cfg.max_message_size
    if email.size > max_size:
        raise SetError("tooLarge", f"messages are limited to {max_size} octets", maxSize=max_size)
    try:
        raw = call.store.blobs.read(email.blob_hash)
    except OSError:
        raise SetError("invalidEmail", "the message cannot be read") from None
    return Outgoing(jmap_id(identity_id or 0), jmap_id(email.id), jmap_id(email.thread_id), mail_from, rcpts,
                    envelope, given, without_bcc(raw))


def _send(call: Call, account: int, out: Outgoing) -> dict[str, Any]:
    """Route the message; returns the deliveryStatus (SetError when no recipient could take it)."""
    try:
        routed = route_sync(call.server, out.mail_from, out.rcpts, out.raw, account_id=account)
    except Exception:  # a delivery failure costs this submission, not the whole call
        log.exception("EmailSubmission of email %s failed", out.email_id)
        raise SetError("serverFail", "the message could not be sent; try again later") from None
    status: dict[str, Any] = {}
    for rcpt in out.rcpts:
        if rcpt in routed.failed:
            status[rcpt] = {"smtpReply": routed.failed[rcpt], "delivered": "no", "displayed": "unknown"}
        elif rcpt in routed.delivered:
            status[rcpt] = {"smtpReply": "250 2.1.5 Delivered", "delivered": "yes", "displayed": "unknown"}
        else:
            status[rcpt] = {"smtpReply": "250 2.1.5 Queued", "delivered": "queued", "displayed": "unknown"}
    failed = [r for r in out.rcpts if r in routed.failed]
    if failed and len(failed) == len(out.rcpts):
        if any(" 5.7." in f" {routed.failed[r]}" for r in failed):
            raise SetError("forbiddenToSend", "; ".join(routed.failed[r] for r in failed))
        raise SetError("invalidRecipients", "; ".join(routed.failed[r] for r in failed), invalidRecipients=failed)
    return status


# -- EmailSubmission/set -------------------------------------------------------------------------------------
def _on_success_args(call: Call) -> tuple[dict[str, Any], list[str]]:
    update = call.args.get("onSuccessUpdateEmail") or {}
    destroy = call.args.get("onSuccessDestroyEmail") or []
    if not isinstance(update, dict) or not all(isinstance(v, dict) for v in update.values()):
        raise MethodError("invalidArguments", "onSuccessUpdateEmail must map submission ids to patches")
    if not isinstance(destroy, list) or not all(isinstance(v, str) for v in destroy):
        raise MethodError("invalidArguments", "onSuccessDestroyEmail must be a list of submission ids")
    return update, destroy


def _implicit_email_set(call: Call, succeeded: dict[str, str], update: dict[str, Any], destroy: list[str]) -> None:
    """Apply onSuccessUpdateEmail / onSuccessDestroyEmail as an ``Email/set`` answered after this call."""
    patches: dict[str, dict[str, Any]] = {}
    for key, patch in update.items():
        if key in succeeded:
            patches.setdefault(succeeded[key], {}).update(patch)
    gone = list(dict.fromkeys(succeeded[k] for k in destroy if k in succeeded))
    if not patches and not gone:
        return
    args: dict[str, Any] = {"accountId": call.args["accountId"]}
    if patches:
        args["update"] = patches
    if gone:
        args["destroy"] = gone
    sub = Call(call.server, call.identity, "Email/set", args, call.call_id, call.using, call.created_ids)
    try:
        call.extra_responses.append(["Email/set", email_set(sub), call.call_id])
    except MethodError as exc:
        call.extra_responses.append(["error", exc.to_json(), call.call_id])


def _record(out: Outgoing, status: dict[str, Any]) -> dict[str, Any]:
    return {"identityId": out.identity_id, "emailId": out.email_id, "threadId": out.thread_id,
            "envelope": out.envelope, "sendAt": utc_iso(time.time()), "undoStatus": "final",
            "deliveryStatus": status, "dsnBlobIds": [], "mdnBlobIds": []}


def _update(current: dict[str, Any] | None, patch: Any) -> None:
    if current is None:
        raise SetError("notFound")
    if not isinstance(patch, dict):
        raise SetError("invalidPatch", "a patch must be an object")
    for key, value in patch.items():
        if key == "undoStatus":
            if value == "canceled":
                raise SetError("cannotUnsend", "the message has already been sent")
            if value != current["undoStatus"]:
                raise invalid([key], "undoStatus can only be set to canceled")
        elif key in PROPERTIES:
            if value != current.get(key):
                raise invalid([key], f"{key} cannot be changed")
        else:
            raise invalid([key], f"unknown property {key}")


@method("EmailSubmission/set", SUBMISSION)
def submission_set(call: Call) -> dict[str, Any]:
    account = call.account()
    set_limit(call)
    create, update = map_arg(call, "create"), map_arg(call, "update")
    destroy = call.ids_arg("destroy") or []
    on_update, on_destroy = _on_success_args(call)
    ensure_default_identity(call, account)
    with call.store.db.lock:
        old_state = check_if_in_state(call, call.store.db.conn, account, EMAIL_SUBMISSION)
    result = SetOutcome()
    succeeded: dict[str, str] = {}  # "#creationId" or submission id -> email id
    sent: list[tuple[str, dict[str, Any]]] = []
    for cid, obj in create.items():  # each message is sent before the next one is checked
        try:
            out = _prepare(call, account, obj)
            sent.append((cid, _record(out, _send(call, account, out))))
        except SetError as exc:
            result.not_created[cid] = exc.to_json()
    changes: list[tuple[int, str]] = []
    with call.store.db.tx() as c:
        for cid, data in sent:
            sub_id = next_object_id(c, "submissions")
            c.execute("INSERT INTO submissions(id, account_id, data) VALUES(?,?,?)", (sub_id, account, json.dumps(data)))
            changes.append((sub_id, CREATED))
            call.created_ids[cid] = jmap_id(sub_id)
            succeeded["#" + cid] = data["emailId"]
            given = {k for k, v in create[cid].items() if v is not None}
            result.created[cid] = {"id": jmap_id(sub_id), **{k: v for k, v in data.items() if k not in given}}
        existing = _submissions(c, account)
        for key, patch in update.items():
            target = call.resolve_id(key)
            current = existing.get(target) if target is not None else None
            try:
                _update(current, patch)
            except SetError as exc:
                result.not_updated[key] = exc.to_json()
                continue
            assert current is not None
            result.updated[current["id"]] = None
            succeeded[key] = current["emailId"]
        for key in dict.fromkeys(destroy):
            target = call.resolve_id(key)
            if target is None or target not in existing:
                result.not_destroyed[key] = SetError("notFound").to_json()
                continue
            c.execute("DELETE FROM submissions WHERE id=?", (target,))
            changes.append((target, DESTROYED))
            result.destroyed.append(jmap_id(target))
            succeeded[key] = existing[target]["emailId"]
        record_changes(call, c, account, EMAIL_SUBMISSION, changes)
        new_state = state_of(call, c, account, EMAIL_SUBMISSION)
    _implicit_email_set(call, succeeded, on_update, on_destroy)
    return result.response(call.args["accountId"], old_state, new_state)
