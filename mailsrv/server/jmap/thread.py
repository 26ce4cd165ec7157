"""Thread/get and Thread/changes (RFC 8621 §3), plus the /changes implementation shared by mail types."""

from __future__ import annotations

from typing import Any

from ..store.changes import CannotCalculateChanges
from ..store.mail import THREAD
from .core import MAIL, Call, MethodError, check_properties, filter_properties, get_ids_limit, jmap_id, method, parse_id


def max_changes_arg(call: Call) -> int:
    """``maxChanges`` (a positive integer or null), capped by the server's limit."""
    value = call.args.get("maxChanges")
    cap = int(call.limits.max_changes_results)
    if value is None:
        return cap
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise MethodError("invalidArguments", "'maxChanges' must be a positive integer")
    return min(value, cap)


def changes_response(call: Call, type_: str) -> tuple[dict[str, Any], bool]:
    """The standard ``Foo/changes`` response (RFC 8620 §5.2) and whether only mailbox counts changed."""
    account = call.account()
    since = call.args.get("sinceState")
    if not isinstance(since, str):
        raise MethodError("invalidArguments", "'sinceState' is required")
    try:
        cs = call.store.mail.changes_since(account, type_, since, max_changes_arg(call))
    except CannotCalculateChanges:
        raise MethodError("cannotCalculateChanges", "the state is unknown or too old; resynchronise") from None
    return {
        "accountId": call.args["accountId"],
        "oldState": cs.old_state,
        "newState": cs.new_state,
        "hasMoreChanges": cs.has_more,
        "created": [jmap_id(i) for i in cs.created],
        "updated": [jmap_id(i) for i in cs.updated],
        "destroyed": [jmap_id(i) for i in cs.destroyed],
    }, cs.counts_only


@method("Thread/get", MAIL)
def thread_get(call: Call) -> dict[str, Any]:
    account = call.account()
    props = check_properties(call, {"id", "emailIds"})
    ids = call.ids_arg()
    get_ids_limit(call, ids)
    store = call.store.mail
    with call.store.db.lock:
        state = store.state(account, THREAD)
        if ids is None:
            found = store.threads_email_ids(account, None)
            if len(found) > call.limits.max_objects_in_get:
                raise MethodError("requestTooLarge", "too many threads; ask for ids")
            wanted = [jmap_id(t) for t in sorted(found)]
        else:
            wanted = list(dict.fromkeys(ids))
            found = store.threads_email_ids(account, [t for t in (parse_id(i) for i in wanted) if t is not None])
    out, not_found = [], []
    for tid in wanted:
        n = parse_id(tid)
        if n is None or n not in found:
            not_found.append(tid)
            continue
        out.append(filter_properties({"id": tid, "emailIds": [jmap_id(e) for e in found[n]]}, props))
    return {"accountId": call.args["accountId"], "state": state, "list": out, "notFound": not_found}


@method("Thread/changes", MAIL)
def thread_changes(call: Call) -> dict[str, Any]:
    return changes_response(call, THREAD)[0]
