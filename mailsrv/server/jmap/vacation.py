"""VacationResponse/get and /set (RFC 8621 §8): one ``singleton`` per account.

The object is stored as JSON in table ``vacation`` with exactly the keys isEnabled, fromDate, toDate, subject,
textBody and htmlBody; delivery (``vacation_reply.py``) reads it from there to send the auto-replies.
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

from ..mime import parse_utc
from ..store.changes import UPDATED
from .core import VACATION, Call, SetError, method, set_limit
from .identity import check_if_in_state, record_changes, standard_get, state_of
from .mailbox import SetOutcome, invalid, map_arg

VACATION_RESPONSE = "VacationResponse"
SINGLETON = "singleton"
SINGLETON_OBJECT_ID = 0  # the change log's object id of the singleton
DEFAULTS: dict[str, Any] = {"isEnabled": False, "fromDate": None, "toDate": None, "subject": None, "textBody": None,
                            "htmlBody": None}
PROPERTIES = frozenset({"id", *DEFAULTS})
_UTC_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def load_vacation(c: sqlite3.Connection, account: int) -> dict[str, Any]:
    """The stored VacationResponse of an account (defaults when none was ever set)."""
    row = c.execute("SELECT data FROM vacation WHERE account_id=?", (account,)).fetchone()
    stored = json.loads(row[0]) if row else {}
    return {k: stored.get(k, v) for k, v in DEFAULTS.items()} if isinstance(stored, dict) else dict(DEFAULTS)


@method("VacationResponse/get", VACATION)
def vacation_get(call: Call) -> dict[str, Any]:
    account = call.account()

    def load(c: sqlite3.Connection) -> tuple[str, dict[str, dict[str, Any]]]:
        return state_of(call, c, account, VACATION_RESPONSE), {SINGLETON: {"id": SINGLETON, **load_vacation(c, account)}}

    return standard_get(call, PROPERTIES, load)


def _patched(current: dict[str, Any], patch: Any) -> dict[str, Any]:
    """The VacationResponse after applying ``patch`` (every property is replaced whole)."""
    if not isinstance(patch, dict):
        raise SetError("invalidPatch", "a patch must be an object")
    unknown = [k for k in patch if k not in PROPERTIES]
    if unknown:
        raise invalid(unknown, "unknown properties")
    if "id" in patch and patch["id"] != SINGLETON:
        raise invalid(["id"], "id is always singleton")
    out = dict(current)
    if "isEnabled" in patch:
        if not isinstance(patch["isEnabled"], bool):
            raise invalid(["isEnabled"], "isEnabled must be true or false")
        out["isEnabled"] = patch["isEnabled"]
    for key in ("fromDate", "toDate"):
        if key in patch:
            value = patch[key]
            if value is not None and (not isinstance(value, str) or not _UTC_DATE.match(value) or parse_utc(value) is None):
                raise invalid([key], f"{key} must be a UTCDate such as 2024-01-02T03:04:05Z, or null")
            out[key] = value
    for key in ("subject", "textBody", "htmlBody"):
        if key in patch:
            if patch[key] is not None and not isinstance(patch[key], str):
                raise invalid([key], f"{key} must be a string or null")
            out[key] = patch[key]
    return out


@method("VacationResponse/set", VACATION)
def vacation_set(call: Call) -> dict[str, Any]:
    account = call.account()
    set_limit(call)
    create, update = map_arg(call, "create"), map_arg(call, "update")
    destroy = call.ids_arg("destroy") or []
    result = SetOutcome()
    for cid in create:
        result.not_created[cid] = SetError("singleton", "the VacationResponse always exists; update it").to_json()
    for key in dict.fromkeys(destroy):
        result.not_destroyed[key] = SetError("singleton", "the VacationResponse cannot be destroyed").to_json()
    with call.store.db.tx() as c:
        old_state = check_if_in_state(call, c, account, VACATION_RESPONSE)
        changed = False
        for key, patch in update.items():
            if key != SINGLETON:
                result.not_updated[key] = SetError("notFound", "the only VacationResponse is 'singleton'").to_json()
                continue
            try:
                data = _patched(load_vacation(c, account), patch)
            except SetError as exc:
                result.not_updated[key] = exc.to_json()
                continue
            c.execute(
                "INSERT INTO vacation(account_id, data) VALUES(?,?) ON CONFLICT(account_id) DO UPDATE SET data=excluded.data",
                (account, json.dumps(data)),
            )
            changed = True
            result.updated[SINGLETON] = None
        if changed:
            record_changes(call, c, account, VACATION_RESPONSE, [(SINGLETON_OBJECT_ID, UPDATED)])
        new_state = state_of(call, c, account, VACATION_RESPONSE)
    return result.response(call.args["accountId"], old_state, new_state)
