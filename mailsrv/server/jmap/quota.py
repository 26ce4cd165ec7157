"""Quota/get, /changes, /query and /queryChanges (RFC 9425).

An account whose principal has a quota (``quota`` > 0, in octets) has exactly one Quota object, id ``a``:
resourceType ``octets``, scope ``account``, types ``["Email"]``, ``used`` = the sum of its email sizes and
``hardLimit`` = the principal's quota. An account without a quota (0 = unlimited) has no Quota object, as on
Stalwart, so clients never see a zero limit.

The state is ``<Email state>.<quota>``: it changes whenever ``used`` (any email change) or the limit changes,
and ``Quota/changes`` derives created/updated/destroyed from the two states.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..store.mail import EMAIL
from .core import QUOTA, Call, MethodError, jmap_id, method
from .identity import (
    apply_sort,
    query_changes_unsupported,
    query_response,
    sort_arg,
    standard_get,
    state_of,
)

QUOTA_ID = jmap_id(0)
PROPERTIES = frozenset({"id", "resourceType", "used", "hardLimit", "warnLimit", "softLimit", "scope", "name",
                        "types", "description"})


def _limit_and_used(c: sqlite3.Connection, account: int) -> tuple[int, int, str, str]:
    row = c.execute("SELECT quota, name, description FROM principals WHERE id=?", (account,)).fetchone()
    used = c.execute("SELECT COALESCE(SUM(size), 0) FROM emails WHERE account_id=?", (account,)).fetchone()[0]
    return (int(row[0]), int(used), str(row[1]), str(row[2])) if row else (0, int(used), "", "")


def _load(call: Call, c: sqlite3.Connection, account: int) -> tuple[str, dict[str, dict[str, Any]]]:
    limit, used, name, description = _limit_and_used(c, account)
    state = f"{state_of(call, c, account, EMAIL)}.{max(limit, 0)}"
    if limit <= 0:
        return state, {}
    return state, {QUOTA_ID: {
        "id": QUOTA_ID, "resourceType": "octets", "used": used, "hardLimit": limit, "warnLimit": None,
        "softLimit": None, "scope": "account", "name": name, "types": ["Email"], "description": description or None,
    }}


@method("Quota/get", QUOTA)
def quota_get(call: Call) -> dict[str, Any]:
    account = call.account()
    return standard_get(call, PROPERTIES, lambda c: _load(call, c, account))


def _parse_state(state: str) -> tuple[int, int] | None:
    email, dot, limit = state.partition(".")
    if not dot or not email.isdigit() or not limit.isdigit() or len(email) > 18 or len(limit) > 20:
        return None
    return int(email), int(limit)


@method("Quota/changes", QUOTA)
def quota_changes(call: Call) -> dict[str, Any]:
    account = call.account()
    since = call.args.get("sinceState")
    if not isinstance(since, str):
        raise MethodError("invalidArguments", "'sinceState' is required")
    with call.store.db.lock:
        state, objects = _load(call, call.store.db.conn, account)
    old, new = _parse_state(since), _parse_state(state)
    if old is None or new is None or old[0] > new[0]:
        raise MethodError("cannotCalculateChanges", "unknown state; fetch the quotas again")
    out: dict[str, Any] = {"accountId": call.args["accountId"], "oldState": since, "newState": state,
                           "hasMoreChanges": False, "created": [], "updated": [], "destroyed": [],
                           "updatedProperties": None}
    if since != state:
        had, has = old[1] > 0, bool(objects)
        key = "created" if has and not had else "destroyed" if had and not has else "updated" if has else None
        if key is not None:
            out[key] = [QUOTA_ID]
        if key == "updated" and old[1] == new[1]:
            out["updatedProperties"] = ["used"]
    return out


@method("Quota/query", QUOTA)
def quota_query(call: Call) -> dict[str, Any]:
    account = call.account()
    filter_ = call.args.get("filter") or {}
    if not isinstance(filter_, dict):
        raise MethodError("invalidArguments", "'filter' must be an object")
    sort = sort_arg(call, {"name", "used"})
    with call.store.db.lock:
        state, objects = _load(call, call.store.db.conn, account)
    items = list(objects.values())
    for key, value in filter_.items():
        if key not in ("name", "scope", "resourceType", "type"):
            raise MethodError("unsupportedFilter", f"cannot filter quotas by {key}")
        if not isinstance(value, str):
            raise MethodError("invalidArguments", f"filter {key} must be a string")
        if key == "name":
            items = [q for q in items if value.casefold() in q["name"].casefold()]
        elif key == "type":
            items = [q for q in items if value in q["types"]]
        else:
            items = [q for q in items if q[key] == value]
    items = apply_sort(items, sort, lambda q, p: q[p])
    return query_response(call, [q["id"] for q in items], state)


@method("Quota/queryChanges", QUOTA)
def quota_query_changes(call: Call) -> dict[str, Any]:
    return query_changes_unsupported(call)
