"""Stalwart 0.16's JMAP management (capability ``urn:stalwart:jmap``): ``x:Account``, ``x:Domain``, ``x:QueuedMessage``.

Only administrators may call these methods; anyone else gets the method error ``forbidden``.

``accountId``: the objects are server-wide, so the argument only selects nothing. It may be omitted (the
configured admin has no account of its own); when given it must be a string and is echoed back, as
Stalwart does for the admin's own id. Without it the response names the caller's own account id, or
``null`` for the configured admin.

Objects (the subset of Stalwart's registry objects mailsrv can fill; secrets/credentials are never returned):

* ``Account`` (individual and group principals): ``id`` (= the JMAP accountId of the account),
  ``@type`` ``User``|``Group``, ``name`` (local part of the primary address, or the login name when the
  account has no address), ``domainId``, ``emailAddress``, ``aliases`` (``{"0": {enabled, name, domainId,
  description}}``), ``description``, ``quotas`` (``{"maxDiskQuota": bytes}`` when limited), ``usedDiskQuota``,
  ``roles`` (``{"@type": "Admin"|"User"}``), ``createdAt``, ``memberGroupIds``, ``memberTenantId``.
  Query filters: ``text``, ``name`` (the ``name`` property or the login name, case-insensitive), ``domainId``,
  ``@type``; sort by ``id`` or ``name``.
* ``Domain``: ``id`` (see ``api/directory.py``), ``name``, ``aliases``, ``isEnabled``, ``createdAt``,
  ``description``, ``catchAllAddress``, ``memberTenantId``. Query filters: ``text``, ``name``; sort ``id``/``name``.
* ``QueuedMessage``: the shape in ``api/queue.py``. Query filters: ``text``, ``returnPath``, ``to``,
  ``queueName``, ``due`` (with ``dueIsLessThan``, ``dueIsGreaterThan``, …OrEqual); sort by ``due`` only.

Queries default to ascending order and support ``position``, ``anchor``/``anchorOffset``, ``limit`` and
``calculateTotal`` (RFC 8620 §5.5); ``canCalculateChanges`` is false.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from typing import Any

from ..api import queue as queue_view
from ..api.directory import domain_id, words
from ..store.ids import jmap_id, parse_id
from .core import STALWART, Call, MethodError, check_properties, filter_properties, get_ids_limit, method

ACCOUNT_TYPES = {"individual": "User", "group": "Group"}
ACCOUNT_PROPERTIES = frozenset({
    "id", "@type", "name", "domainId", "emailAddress", "aliases", "description", "quotas", "usedDiskQuota",
    "roles", "createdAt", "memberGroupIds", "memberTenantId",
})
DOMAIN_PROPERTIES = frozenset({
    "id", "name", "aliases", "isEnabled", "createdAt", "description", "catchAllAddress", "memberTenantId",
})
QUEUED_PROPERTIES = frozenset({
    "id", "createdAt", "nextRetry", "nextNotify", "blobId", "returnPath", "recipients", "flags", "envId",
    "priority", "size",
})
_OPS = ("GreaterThanOrEqual", "GreaterThan", "LessThanOrEqual", "LessThan")
_SQL_OPS = {"Equal": "=", "GreaterThan": ">", "GreaterThanOrEqual": ">=", "LessThan": "<", "LessThanOrEqual": "<="}


def _ts(value: float) -> str:
    return dt.datetime.fromtimestamp(int(value), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _admin(call: Call) -> str | None:
    """Check the caller is an administrator; return the accountId to echo."""
    if not call.identity.is_admin:
        call.server.metrics.inc("jmap_forbidden")
        raise MethodError("forbidden", "management objects are for administrators only")
    account_id = call.args.get("accountId")
    if account_id is not None and not isinstance(account_id, str):
        raise MethodError("invalidArguments", "'accountId' must be a string")
    if account_id is None and call.identity.principal_id is not None:
        return jmap_id(call.identity.principal_id)
    return account_id


def _state(objects: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()[:16]


# -- objects ---------------------------------------------------------------------------------------
def _accounts(call: Call) -> dict[str, dict[str, Any]]:
    """Every Account object by id."""
    db = call.store.db
    created = {r[0]: r[1] for r in db.q("SELECT id, created FROM principals")}
    out: dict[str, dict[str, Any]] = {}
    for p in call.store.principals.search(set(ACCOUNT_TYPES)):
        local, domain = p.name, None
        if p.emails:
            local, _, domain = p.emails[0].rpartition("@")
        aliases = {}
        for i, alias in enumerate(p.emails[1:]):
            a_local, _, a_domain = alias.rpartition("@")
            aliases[str(i)] = {"enabled": True, "name": a_local, "domainId": jmap_id(domain_id(a_domain)),
                               "description": None}
        out[jmap_id(p.id)] = {
            "id": jmap_id(p.id),
            "@type": ACCOUNT_TYPES[p.type],
            "name": local,
            "domainId": jmap_id(domain_id(domain)) if domain else None,
            "emailAddress": p.emails[0] if p.emails else p.name,
            "aliases": aliases,
            "description": p.description or None,
            "quotas": {"maxDiskQuota": p.quota} if p.quota else {},
            "usedDiskQuota": p.used_quota,
            "roles": {"@type": "Admin" if p.is_admin else "User"},
            "createdAt": _ts(created.get(p.id, 0)),
            "memberGroupIds": {},
            "memberTenantId": None,
            "_sort": {"name": local.lower(), "login": p.name.lower(), "id": p.id},
            "_words": words(p.name, p.description, *p.emails),
        }
    return out


def _domains(call: Call) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    rows = call.store.db.q(
        "SELECT d.name, d.created, (SELECT address FROM addresses a WHERE a.principal_id = d.catch_all "
        "ORDER BY rowid LIMIT 1) FROM domains d"
    )
    for name, created, catch_all in rows:
        did = domain_id(name)
        out[jmap_id(did)] = {
            "id": jmap_id(did), "name": name, "aliases": {}, "isEnabled": True, "createdAt": _ts(created),
            "description": None, "catchAllAddress": catch_all, "memberTenantId": None,
            "_sort": {"name": name, "id": did}, "_words": words(name),
        }
    return out


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


# -- filters ---------------------------------------------------------------------------------------
def _filter_conditions(call: Call) -> list[tuple[str, str, Any]]:
    """``(property, operator, value)`` triples of a plain AND filter (Stalwart supports nothing else)."""
    flt = call.args.get("filter")
    if flt is None:
        return []
    if not isinstance(flt, dict):
        raise MethodError("invalidArguments", "'filter' must be a FilterCondition object")
    if "operator" in flt or "conditions" in flt:
        call.server.metrics.inc("jmap_unsupported_filter")
        raise MethodError("unsupportedFilter", "only plain conditions (AND) are supported")
    out = []
    for key, value in flt.items():
        op = "Equal"
        for candidate in _OPS:
            if key.endswith("Is" + candidate):
                key, op = key[: -len("Is" + candidate)], candidate
                break
        out.append((key, op, value))
    return out


def _unsupported_filter(call: Call, prop: str) -> MethodError:
    call.server.metrics.inc("jmap_unsupported_filter")
    return MethodError("unsupportedFilter", f"Filter on property {prop} is not supported or invalid")


def _match_directory(call: Call, obj: dict[str, Any], conds: list[tuple[str, str, Any]], allowed: set[str]) -> bool:
    for prop, op, value in conds:
        if prop not in allowed or op != "Equal" or not isinstance(value, str):
            raise _unsupported_filter(call, prop)
        if prop == "text":
            if not words(value) <= obj["_words"]:
                return False
        elif prop == "name":
            if value.lower() not in (obj["_sort"]["name"], obj["_sort"].get("login")):
                return False
        elif obj.get(prop) != value:
            return False
    return True


def _queued_filter(call: Call, conds: list[tuple[str, str, Any]]) -> queue_view.Filter:
    """The SQL filter of ``x:QueuedMessage/query`` conditions (all of them must hold)."""
    flt = queue_view.Filter(whole_seconds=True)
    for prop, op, value in conds:
        if not isinstance(value, str):
            raise _unsupported_filter(call, prop)
        if prop == "due":
            ts = queue_view.parse_rfc3339(value)
            if ts is None:
                raise _unsupported_filter(call, prop)
            flt.due.append((_SQL_OPS[op], ts))
        elif op != "Equal":
            raise _unsupported_filter(call, prop)
        elif prop == "text":
            flt.text = value
        elif prop == "returnPath":
            flt.from_ = value
        elif prop == "to":
            flt.to = value
        elif prop == "queueName":
            flt.nothing = flt.nothing or value != queue_view.QUEUE_NAME
        else:
            raise _unsupported_filter(call, prop)
    return flt


# -- generic /get and /query -----------------------------------------------------------------------
def _get(call: Call, objects: dict[str, dict[str, Any]], known: frozenset[str]) -> dict[str, Any]:
    account_id = _admin(call)
    props = check_properties(call, known)
    ids = call.ids_arg()
    get_ids_limit(call, ids)
    if ids is None:
        ids = list(objects)[: call.limits.max_objects_in_get]
    found = [filter_properties(_public(objects[i]), props) for i in ids if i in objects]
    return {"accountId": account_id, "state": _state([_public(o) for o in objects.values()]), "list": found,
            "notFound": [i for i in ids if i not in objects]}


def _sort(call: Call, sortable: set[str], default_sort: str) -> tuple[str, bool]:
    """The sort property and direction of a /query (only the first Comparator counts)."""
    sort = call.args.get("sort") or [{"property": default_sort}]
    if not isinstance(sort, list) or not all(isinstance(s, dict) for s in sort):
        raise MethodError("invalidArguments", "'sort' must be a list of Comparator objects")
    key, ascending = default_sort, True
    if sort:
        key, ascending = sort[0].get("property"), sort[0].get("isAscending", True) is not False
        if key not in sortable:
            call.server.metrics.inc("jmap_unsupported_sort")
            raise MethodError("unsupportedSort", f"Property {key} is not supported for sorting")
    return key, ascending


def _limit(call: Call) -> int:
    limit = call.arg("limit", int, call.limits.max_query_results)
    if limit < 0:
        raise MethodError("invalidArguments", "'limit' must not be negative")
    return min(limit, call.limits.max_query_results)


def _query_response(call: Call, account_id: str | None, query_state: str, position: int, ids: list[str],
                    total: int | None, limit: int) -> dict[str, Any]:
    out: dict[str, Any] = {"accountId": account_id, "queryState": query_state, "canCalculateChanges": False,
                           "position": position, "ids": ids}
    if call.arg("calculateTotal", bool, False):
        out["total"] = total
    if call.args.get("limit") is not None and limit < call.args["limit"]:
        out["limit"] = limit
    return out


def _query(call: Call, objects: dict[str, dict[str, Any]], match: Callable[[dict[str, Any]], bool],
           sortable: set[str], default_sort: str) -> dict[str, Any]:
    account_id = _admin(call)
    key, ascending = _sort(call, sortable, default_sort)
    hits = sorted((o for o in objects.values() if match(o)), key=lambda o: (o["_sort"][key], o["_sort"]["id"]),
                  reverse=not ascending)
    ids = [o["id"] for o in hits]
    position = call.arg("position", int, 0)
    limit = _limit(call)
    anchor = call.arg("anchor", str)
    if anchor is not None:
        if anchor not in ids:
            raise MethodError("anchorNotFound")
        position = max(ids.index(anchor) + call.arg("anchorOffset", int, 0), 0)
    elif position < 0:
        position = max(len(ids) + position, 0)
    return _query_response(call, account_id, _state([{"ids": ids}]), position, ids[position : position + limit],
                           len(ids), limit)


# -- methods ---------------------------------------------------------------------------------------
@method("x:Account/get", STALWART)
def account_get(call: Call) -> dict[str, Any]:
    _admin(call)
    return _get(call, _accounts(call), ACCOUNT_PROPERTIES)


@method("x:Account/query", STALWART)
def account_query(call: Call) -> dict[str, Any]:
    _admin(call)
    conds = _filter_conditions(call)
    allowed = {"text", "name", "domainId", "@type"}
    return _query(call, _accounts(call), lambda o: _match_directory(call, o, conds, allowed), {"id", "name"}, "id")


@method("x:Domain/get", STALWART)
def domain_get(call: Call) -> dict[str, Any]:
    _admin(call)
    return _get(call, _domains(call), DOMAIN_PROPERTIES)


@method("x:Domain/query", STALWART)
def domain_query(call: Call) -> dict[str, Any]:
    _admin(call)
    conds = _filter_conditions(call)
    return _query(call, _domains(call), lambda o: _match_directory(call, o, conds, {"text", "name"}), {"id", "name"}, "id")


@method("x:QueuedMessage/get", STALWART)
def queued_get(call: Call) -> dict[str, Any]:
    """Only the requested messages are read (without ``ids``: the first ``maxObjectsInGet`` by queue id)."""
    account_id = _admin(call)
    props = check_properties(call, QUEUED_PROPERTIES)
    ids = call.ids_arg()
    get_ids_limit(call, ids)
    db = call.store.db
    with db.lock:
        if ids is None:
            ids = [jmap_id(i) for i in queue_view.first_ids(db, call.limits.max_objects_in_get)]
        wanted = sorted({n for n in map(parse_id, ids) if n is not None})
        msgs = {jmap_id(m.id): m for m in queue_view.load(db, wanted)}
        state = queue_view.state(db)
    return {"accountId": account_id, "state": state,
            "list": [filter_properties(queue_view.v016(msgs[i], i), props) for i in ids if i in msgs],
            "notFound": [i for i in ids if i not in msgs]}


@method("x:QueuedMessage/query", STALWART)
def queued_query(call: Call) -> dict[str, Any]:
    """Filtered, sorted and paged in SQL; ``total`` is counted only when asked for (or for a negative position)."""
    account_id = _admin(call)
    flt = _queued_filter(call, _filter_conditions(call))
    _, ascending = _sort(call, {"due"}, "due")
    position = call.arg("position", int, 0)
    limit = _limit(call)
    anchor = call.arg("anchor", str)
    db = call.store.db
    anchor_offset = call.arg("anchorOffset", int, 0)
    with db.lock:  # count, anchor and page from one snapshot
        total = queue_view.count(db, flt) if call.arg("calculateTotal", bool, False) or position < 0 else None
        if anchor is None and position < 0:
            assert total is not None
            position = max(total + position, 0)
        qid = parse_id(anchor) if anchor is not None else None
        if anchor is not None and qid is None:
            raise MethodError("anchorNotFound")
        found = queue_view.due_page(db, flt, position, limit, ascending, qid, anchor_offset)
        if found is None:
            raise MethodError("anchorNotFound")
        state = queue_view.state(db)
    position, ids = found
    return _query_response(call, account_id, state, position, [jmap_id(i) for i in ids], total, limit)


__all__ = ["account_get", "account_query", "domain_get", "domain_query", "queued_get", "queued_query"]
