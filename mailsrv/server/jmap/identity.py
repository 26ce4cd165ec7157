"""Identity/get, /changes and /set (RFC 8621 §6), plus helpers shared by the other account-data objects.

An account without any identity gets one on first use: the account's description (or name) with its primary
address. An identity's ``email`` must be one of the account's own addresses (``forbiddenFrom`` otherwise).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from ..store.changes import CREATED, DESTROYED, UPDATED
from ..store.mail import _next_id
from .core import SUBMISSION, Call, MethodError, SetError, get_ids_limit, jmap_id, method, set_limit
from .mailbox import SetOutcome, invalid, map_arg
from .thread import changes_response

IDENTITY = "Identity"
SETTABLE = ("name", "email", "replyTo", "bcc", "textSignature", "htmlSignature")
PROPERTIES = frozenset({"id", *SETTABLE, "mayDelete"})
DEFAULTS: dict[str, Any] = {"name": "", "replyTo": None, "bcc": None, "textSignature": "", "htmlSignature": ""}


# -- helpers shared by Identity, VacationResponse, SieveScript, EmailSubmission and Quota ------------------
def next_object_id(c: sqlite3.Connection, table: str) -> int:
    """A fresh id for ``table`` that was never handed out before (ids are not reused)."""
    return _next_id(c, table)


def record_changes(call: Call, c: sqlite3.Connection, account: int, type_: str, changes: list[tuple[int, str]]) -> None:
    """Record one /set call's changes of ``type_`` under a single new modseq (nothing if there are none)."""
    if changes:
        modseq = call.store.changes.next_modseq(c, account)
        call.store.changes.record(c, account, modseq, type_, changes)


def state_of(call: Call, c: sqlite3.Connection, account: int, type_: str) -> str:
    return str(call.store.changes.state(c, account, type_))


def check_if_in_state(call: Call, c: sqlite3.Connection, account: int, type_: str) -> str:
    """The current state; ``stateMismatch`` when ``ifInState`` is given and differs."""
    wanted = call.arg("ifInState", str)
    state = state_of(call, c, account, type_)
    if wanted is not None and wanted != state:
        raise MethodError("stateMismatch", f"state is {state}, not {wanted}")
    return state


def properties_arg(call: Call, known: frozenset[str] | set[str]) -> list[str] | None:
    props = call.args.get("properties")
    if props is None:
        return None
    if not isinstance(props, list) or not all(isinstance(p, str) for p in props):
        raise MethodError("invalidArguments", "'properties' must be a list of strings")
    bad = [p for p in props if p not in known]
    if bad:
        raise MethodError("invalidArguments", f"unknown property: {bad[0]}")
    return props


def standard_get(
    call: Call, known: frozenset[str], load: Callable[[sqlite3.Connection], tuple[str, dict[str, dict[str, Any]]]]
) -> dict[str, Any]:
    """A standard ``Foo/get`` (RFC 8620 §5.1) over objects ``load`` returns as (state, {wire id: object})."""
    props = properties_arg(call, known)
    ids = call.ids_arg()
    get_ids_limit(call, ids)
    with call.store.db.lock:
        state, objects = load(call.store.db.conn)
    if ids is None:
        if len(objects) > call.limits.max_objects_in_get:
            raise MethodError("requestTooLarge", "too many objects; ask for ids")
        ids = list(objects)
    found, not_found = [], []
    for given in dict.fromkeys(ids):
        key = call.created_ids.get(given[1:], given) if given.startswith("#") else given
        obj = objects.get(key)
        if obj is None:
            not_found.append(given)
        else:
            found.append(obj if props is None else {k: v for k, v in obj.items() if k in props or k == "id"})
    return {"accountId": call.args["accountId"], "state": state, "list": found, "notFound": not_found}


def int_arg(call: Call, key: str, default: int, minimum: int | None = None) -> int:
    value = call.args.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise MethodError("invalidArguments", f"'{key}' must be an integer" + (f" >= {minimum}" if minimum is not None else ""))
    return value


def sort_arg(call: Call, allowed: set[str]) -> list[tuple[str, bool]]:
    """The ``sort`` argument as (property, ascending) pairs (``unsupportedSort`` for other properties)."""
    sort = call.args.get("sort") or []
    if not isinstance(sort, list):
        raise MethodError("invalidArguments", "'sort' must be a list")
    out = []
    for comp in sort:
        if not isinstance(comp, dict) or not isinstance(comp.get("property"), str):
            raise MethodError("invalidArguments", "a Comparator needs a property")
        if comp["property"] not in allowed:
            raise MethodError("unsupportedSort", f"cannot sort by {comp['property']}")
        asc = comp.get("isAscending", True)
        if not isinstance(asc, bool):
            raise MethodError("invalidArguments", "isAscending must be a boolean")
        out.append((comp["property"], asc))
    return out


def apply_sort(items: list[Any], sort: list[tuple[str, bool]], key: Callable[[Any, str], Any]) -> list[Any]:
    for prop, asc in reversed(sort):
        items = sorted(items, key=lambda o, p=prop: key(o, p), reverse=not asc)  # type: ignore[misc]
    return items


def query_response(call: Call, ids: list[str], state: str) -> dict[str, Any]:
    """The window of a ``Foo/query`` result (RFC 8620 §5.5): position or anchor, limit, total."""
    position = int_arg(call, "position", 0)
    anchor_offset = int_arg(call, "anchorOffset", 0)
    limit = call.args.get("limit")
    if limit is not None:
        limit = int_arg(call, "limit", 0, minimum=0)
    anchor = call.arg("anchor", str)
    total = len(ids)
    if anchor is not None:
        if anchor not in ids:
            raise MethodError("anchorNotFound")
        start = max(0, ids.index(anchor) + anchor_offset)
    else:
        start = position if position >= 0 else max(0, total + position)
    cap = call.limits.max_query_results
    applied = cap if limit is None else min(limit, cap)
    out: dict[str, Any] = {"accountId": call.args["accountId"], "queryState": state, "canCalculateChanges": False,
                           "position": start, "ids": ids[start : start + applied]}
    if call.arg("calculateTotal", bool, False):
        out["total"] = total
    if (limit is not None and applied != limit) or (limit is None and total - start > cap):
        out["limit"] = applied
    return out


def query_changes_unsupported(call: Call) -> dict[str, Any]:
    """``Foo/queryChanges``: these small lists are cheap to query again."""
    call.account()
    if not isinstance(call.args.get("sinceQueryState"), str):
        raise MethodError("invalidArguments", "'sinceQueryState' is required")
    raise MethodError("cannotCalculateChanges", "run the query again")


def email_addresses_arg(prop: str, value: Any) -> list[dict[str, Any]] | None:
    """An ``EmailAddress[]|null`` value (RFC 8621 §4.1.2.3)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid([prop], f"{prop} must be a list of EmailAddress objects or null")
    out = []
    for item in value:
        if (not isinstance(item, dict) or set(item) - {"name", "email"} or not isinstance(item.get("email"), str)
                or not isinstance(item.get("name") or "", str) or not is_address(item["email"])):
            raise invalid([prop], f"{prop} must be a list of EmailAddress objects with valid addresses")
        out.append({"name": item.get("name"), "email": item["email"]})
    return out


def is_address(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    return bool(local and at and domain) and not any(c.isspace() or c in "<>,;\"" for c in value)


def account_addresses(call: Call, account: int) -> list[str]:
    principal = call.store.principals.get(account)
    return [a.lower() for a in principal.emails] if principal else []


# -- Identity ----------------------------------------------------------------------------------------------
def _wire(identity_id: int, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": jmap_id(identity_id), **DEFAULTS, **{k: data.get(k, DEFAULTS.get(k)) for k in SETTABLE}, "mayDelete": True}


def identities(c: sqlite3.Connection, account: int) -> dict[int, dict[str, Any]]:
    """The account's identities by id, in their stored form."""
    rows = c.execute("SELECT id, data FROM identities WHERE account_id=? ORDER BY id", (account,)).fetchall()
    return {int(r[0]): json.loads(r[1]) for r in rows}


def ensure_default_identity(call: Call, account: int) -> None:
    """Give an account without identities its default one (name and primary address)."""
    if call.store.db.one("SELECT 1 FROM identities WHERE account_id=? LIMIT 1", (account,)):
        return
    principal = call.store.principals.get(account)
    if principal is None or not principal.emails:
        return
    data = {**DEFAULTS, "name": principal.description or principal.name, "email": principal.emails[0]}
    with call.store.db.tx() as c:
        if c.execute("SELECT 1 FROM identities WHERE account_id=? LIMIT 1", (account,)).fetchone():
            return
        identity_id = next_object_id(c, "identities")
        c.execute("INSERT INTO identities(id, account_id, data) VALUES(?,?,?)", (identity_id, account, json.dumps(data)))
        record_changes(call, c, account, IDENTITY, [(identity_id, CREATED)])


@method("Identity/get", SUBMISSION)
def identity_get(call: Call) -> dict[str, Any]:
    account = call.account()
    ensure_default_identity(call, account)

    def load(c: sqlite3.Connection) -> tuple[str, dict[str, dict[str, Any]]]:
        found = identities(c, account)
        return state_of(call, c, account, IDENTITY), {jmap_id(i): _wire(i, d) for i, d in found.items()}

    return standard_get(call, PROPERTIES, load)


@method("Identity/changes", SUBMISSION)
def identity_changes(call: Call) -> dict[str, Any]:
    return changes_response(call, IDENTITY)[0]


def _check_values(obj: dict[str, Any]) -> dict[str, Any]:
    """Type-check the settable properties present in ``obj``."""
    out: dict[str, Any] = {}
    for key in ("name", "textSignature", "htmlSignature"):
        if key in obj:
            if not isinstance(obj[key], str):
                raise invalid([key], f"{key} must be a string")
            out[key] = obj[key]
    for key in ("replyTo", "bcc"):
        if key in obj:
            out[key] = email_addresses_arg(key, obj[key])
    return out


def _check_keys(obj: Any, current_id: int | None) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SetError("invalidProperties", "expected an Identity object")
    unknown = [k for k in obj if k not in PROPERTIES]
    if unknown:
        raise invalid(unknown, "unknown properties")
    if "id" in obj and (current_id is None or obj["id"] != jmap_id(current_id)):
        raise invalid(["id"], "id is set by the server")
    if "mayDelete" in obj and obj["mayDelete"] is not True:
        raise invalid(["mayDelete"], "mayDelete is set by the server")
    return obj


def _create(call: Call, c: sqlite3.Connection, account: int, obj: Any) -> tuple[int, dict[str, Any]]:
    obj = _check_keys(obj, None)
    email = obj.get("email")
    if not isinstance(email, str) or not email:
        raise invalid(["email"], "email is required")
    data = {**DEFAULTS, **_check_values(obj), "email": email}
    if email.lower() not in account_addresses(call, account):
        raise SetError("forbiddenFrom", f"{email} is not an address of this account")
    identity_id = next_object_id(c, "identities")
    c.execute("INSERT INTO identities(id, account_id, data) VALUES(?,?,?)", (identity_id, account, json.dumps(data)))
    return identity_id, data


def _update(c: sqlite3.Connection, account: int, identity_id: int, patch: Any) -> None:
    row = c.execute("SELECT data FROM identities WHERE account_id=? AND id=?", (account, identity_id)).fetchone()
    if row is None:
        raise SetError("notFound")
    patch = _check_keys(patch, identity_id)
    data = json.loads(row[0])
    if "email" in patch and (not isinstance(patch["email"], str) or patch["email"].lower() != str(data.get("email")).lower()):
        raise invalid(["email"], "email cannot be changed")
    changed = {**data, **_check_values(patch)}
    if changed != data:
        c.execute("UPDATE identities SET data=? WHERE id=?", (json.dumps(changed), identity_id))


@method("Identity/set", SUBMISSION)
def identity_set(call: Call) -> dict[str, Any]:
    account = call.account()
    set_limit(call)
    create, update = map_arg(call, "create"), map_arg(call, "update")
    destroy = call.ids_arg("destroy") or []
    ensure_default_identity(call, account)
    result = SetOutcome()
    changes: list[tuple[int, str]] = []
    with call.store.db.tx() as c:
        old_state = check_if_in_state(call, c, account, IDENTITY)
        for cid, obj in create.items():
            try:
                identity_id, data = _create(call, c, account, obj)
            except SetError as exc:
                result.not_created[cid] = exc.to_json()
                continue
            changes.append((identity_id, CREATED))
            call.created_ids[cid] = jmap_id(identity_id)
            result.created[cid] = {"id": jmap_id(identity_id), "mayDelete": True,
                                   **{k: data[k] for k in DEFAULTS if k not in obj}}
        for key, patch in update.items():
            target = call.resolve_id(key)
            try:
                if target is None:
                    raise SetError("notFound")
                _update(c, account, target, patch)
            except SetError as exc:
                result.not_updated[key] = exc.to_json()
                continue
            changes.append((target, UPDATED))
            result.updated[jmap_id(target)] = None
        for key in dict.fromkeys(destroy):
            target = call.resolve_id(key)
            if target is not None and c.execute(
                    "DELETE FROM identities WHERE account_id=? AND id=?", (account, target)).rowcount > 0:
                changes.append((target, DESTROYED))
                result.destroyed.append(jmap_id(target))
            else:
                result.not_destroyed[key] = SetError("notFound").to_json()
        record_changes(call, c, account, IDENTITY, changes)
        new_state = state_of(call, c, account, IDENTITY)
    return result.response(call.args["accountId"], old_state, new_state)


def load_identity(call: Call, account: int, identity_id: int) -> dict[str, Any] | None:
    """One identity of the account in its wire form, or ``None``."""
    row = call.store.db.one("SELECT data FROM identities WHERE account_id=? AND id=?", (account, identity_id))
    return _wire(identity_id, json.loads(row[0])) if row else None
