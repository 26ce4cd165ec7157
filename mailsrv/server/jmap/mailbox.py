"""Mailbox/get, /changes, /query, /queryChanges and /set (RFC 8621 §2), plus /set helpers shared by mail types."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..store.mail import COUNT_PROPERTIES, MAILBOX, Mailbox, MailTx
from .core import (
    MAIL,
    Call,
    MethodError,
    SetError,
    check_properties,
    filter_predicate,
    filter_properties,
    get_ids_limit,
    jmap_id,
    method,
    set_limit,
)
from .thread import changes_response

SETTABLE = frozenset({"name", "parentId", "role", "sortOrder", "isSubscribed", "shareWith"})
PROPERTIES = SETTABLE | {"id", "myRights", *COUNT_PROPERTIES}
SERVER_SET = PROPERTIES - SETTABLE
# IANA "IMAP Mailbox Name Attributes" usable as JMAP roles (RFC 8457, RFC 8621 §2, RFC 9051).
ROLES = frozenset({"all", "archive", "drafts", "flagged", "important", "inbox", "junk", "sent", "subscribed",
                   "trash", "snoozed", "scheduled", "memos"})
MAX_NAME_OCTETS = 255
MAX_DEPTH = 10
MAX_UINT = 2**53 - 1
RIGHTS = dict.fromkeys(("mayReadItems", "mayAddItems", "mayRemoveItems", "maySetSeen", "maySetKeywords",
                        "mayCreateChild", "mayRename", "mayDelete", "maySubmit"), True)
COLLATIONS = {"i;ascii-numeric", "i;ascii-casemap", "i;unicode-casemap"}


# -- helpers shared by the /set methods of mail types -------------------------------------------------
@dataclass
class SetOutcome:
    """Collects the per-object results of a /set-like call."""

    created: dict[str, Any] = field(default_factory=dict)
    updated: dict[str, Any] = field(default_factory=dict)
    destroyed: list[str] = field(default_factory=list)
    not_created: dict[str, Any] = field(default_factory=dict)
    not_updated: dict[str, Any] = field(default_factory=dict)
    not_destroyed: dict[str, Any] = field(default_factory=dict)

    def response(self, account_id: str, old_state: str, new_state: str, *, with_update: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"accountId": account_id, "oldState": old_state, "newState": new_state,
                               "created": self.created or None, "notCreated": self.not_created or None}
        if with_update:
            out.update({"updated": self.updated or None, "destroyed": self.destroyed or None,
                        "notUpdated": self.not_updated or None, "notDestroyed": self.not_destroyed or None})
        return out


def map_arg(call: Call, key: str) -> dict[str, Any]:
    """A ``create``/``update``-style argument: a JSON object or null."""
    value = call.args.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MethodError("invalidArguments", f"'{key}' must be an object")
    return value


def invalid(props: list[str], description: str) -> SetError:
    return SetError("invalidProperties", description, properties=props)


def check_if_in_state(call: Call, t: MailTx, type_: str) -> str:
    """The current state; ``stateMismatch`` when ``ifInState`` is given and differs."""
    wanted = call.arg("ifInState", str)
    state = t.state(type_)
    if wanted is not None and wanted != state:
        raise MethodError("stateMismatch", f"state is {state}, not {wanted}")
    return state


# -- Mailbox objects -----------------------------------------------------------------------------------
def mailbox_json(mb: Mailbox, counts: dict[str, int] | None) -> dict[str, Any]:
    return {
        "id": jmap_id(mb.id),
        "name": mb.name,
        "parentId": jmap_id(mb.parent_id) if mb.parent_id is not None else None,
        "role": mb.role,
        "sortOrder": mb.sort_order,
        **(counts or dict.fromkeys(COUNT_PROPERTIES, 0)),
        "myRights": dict(RIGHTS),
        "isSubscribed": mb.is_subscribed,
        "shareWith": None,
    }


@method("Mailbox/get", MAIL)
def mailbox_get(call: Call) -> dict[str, Any]:
    account = call.account()
    props = check_properties(call, PROPERTIES)
    ids = call.ids_arg()
    get_ids_limit(call, ids)
    mail = call.store.mail
    with call.store.db.lock:
        state = mail.state(account, MAILBOX)
        boxes = {m.id: m for m in mail.mailboxes(account)}
        need_counts = props is None or any(p in COUNT_PROPERTIES for p in props)
        counts = mail.mailbox_counts_all(account) if need_counts else {}
    if ids is None:
        if len(boxes) > call.limits.max_objects_in_get:
            raise MethodError("requestTooLarge", "too many mailboxes; ask for ids")
        ids = [jmap_id(i) for i in boxes]
    found, not_found = [], []
    for given in dict.fromkeys(ids):
        n = call.resolve_id(given)
        if n is None or n not in boxes:
            not_found.append(given)
        else:
            found.append(filter_properties(mailbox_json(boxes[n], counts.get(n)), props))
    return {"accountId": call.args["accountId"], "state": state, "list": found, "notFound": not_found}


@method("Mailbox/changes", MAIL)
def mailbox_changes(call: Call) -> dict[str, Any]:
    out, counts_only = changes_response(call, MAILBOX)
    out["updatedProperties"] = list(COUNT_PROPERTIES) if counts_only else None
    return out


# -- Mailbox/query -------------------------------------------------------------------------------------
Matcher = Callable[[Mailbox], bool]




def _condition(call: Call, key: str, value: Any) -> Matcher:
    """One FilterCondition property as a predicate."""
    if key == "parentId":
        if value is not None and not isinstance(value, str):
            raise MethodError("invalidArguments", "filter parentId must be an id or null")
        parent = call.resolve_id(value) if value is not None else None
        if value is not None and parent is None:
            return lambda m: False
        return lambda m: m.parent_id == parent
    if key == "name":
        if not isinstance(value, str):
            raise MethodError("invalidArguments", "filter name must be a string")
        needle = value.casefold()
        return lambda m: needle in m.name.casefold()
    if key == "role":
        if value is not None and not isinstance(value, str):
            raise MethodError("invalidArguments", "filter role must be a string or null")
        role = value.lower() if isinstance(value, str) else None
        return lambda m: m.role == role
    if key in ("hasAnyRole", "isSubscribed"):
        if not isinstance(value, bool):
            raise MethodError("invalidArguments", f"filter {key} must be a boolean")
        flag: bool = value
        if key == "hasAnyRole":
            return lambda m: (m.role is not None) == flag
        return lambda m: m.is_subscribed == flag
    raise MethodError("unsupportedFilter", f"cannot filter mailboxes by {key}")


def _sorter(call: Call) -> Callable[[list[Mailbox]], list[Mailbox]]:
    sort = call.args.get("sort")
    if sort is None:
        sort = []
    if not isinstance(sort, list):
        raise MethodError("invalidArguments", "'sort' must be a list")
    comparators: list[tuple[str, bool]] = []
    for comp in sort:
        if not isinstance(comp, dict) or not isinstance(comp.get("property"), str):
            raise MethodError("invalidArguments", "a Comparator needs a property")
        prop, asc = comp["property"], comp.get("isAscending", True)
        if prop not in ("name", "sortOrder"):
            raise MethodError("unsupportedSort", f"cannot sort mailboxes by {prop}")
        if not isinstance(asc, bool):
            raise MethodError("invalidArguments", "isAscending must be a boolean")
        collation = comp.get("collation")
        if collation is not None and collation not in COLLATIONS:
            raise MethodError("unsupportedSort", f"unknown collation {collation}")
        comparators.append((prop, asc))

    def apply(boxes: list[Mailbox]) -> list[Mailbox]:
        out = sorted(boxes, key=lambda m: m.id)
        for prop, asc in reversed(comparators):
            if prop == "name":
                out.sort(key=lambda m: m.name.casefold(), reverse=not asc)
            else:
                out.sort(key=lambda m: m.sort_order, reverse=not asc)
        return out

    return apply


def _tree_order(boxes: list[Mailbox], sort: Callable[[list[Mailbox]], list[Mailbox]]) -> list[Mailbox]:
    """Parents before their children, siblings in sort order (``sortAsTree``)."""
    by_id = {m.id: m for m in boxes}
    children: dict[int | None, list[Mailbox]] = {}
    for m in boxes:
        parent = m.parent_id if m.parent_id in by_id else None
        children.setdefault(parent, []).append(m)
    out: list[Mailbox] = []
    stack = list(reversed(sort(children.get(None, []))))
    while stack:
        m = stack.pop()
        out.append(m)
        stack.extend(reversed(sort(children.get(m.id, []))))
    return out


def _int_arg(call: Call, key: str, default: int, minimum: int | None = None) -> int:
    value = call.args.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise MethodError("invalidArguments", f"'{key}' must be an integer" + (f" >= {minimum}" if minimum is not None else ""))
    return value


@method("Mailbox/query", MAIL)
def mailbox_query(call: Call) -> dict[str, Any]:
    account = call.account()
    match = filter_predicate(call.args.get("filter"), lambda key, value: _condition(call, key, value))
    sort = _sorter(call)
    position = _int_arg(call, "position", 0)
    anchor_offset = _int_arg(call, "anchorOffset", 0)
    limit = call.args.get("limit")
    if limit is not None:
        limit = _int_arg(call, "limit", 0, minimum=0)
    anchor = call.arg("anchor", str)
    as_tree = call.arg("sortAsTree", bool, False)
    filter_tree = call.arg("filterAsTree", bool, False)
    calculate_total = call.arg("calculateTotal", bool, False)
    mail = call.store.mail
    with call.store.db.lock:
        state = mail.state(account, MAILBOX)
        boxes = mail.mailboxes(account)
    ordered = _tree_order(boxes, sort) if as_tree else sort(boxes)
    if filter_tree:
        by_id = {m.id: m for m in boxes}
        ok: dict[int, bool] = {}

        def tree_match(m: Mailbox) -> bool:
            if m.id not in ok:
                parent = by_id.get(m.parent_id) if m.parent_id is not None else None
                ok[m.id] = False  # guards against a parent loop in stored data
                ok[m.id] = match(m) and (parent is None or tree_match(parent))
            return ok[m.id]

        ids = [jmap_id(m.id) for m in ordered if tree_match(m)]
    else:
        ids = [jmap_id(m.id) for m in ordered if match(m)]
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
    if calculate_total:
        out["total"] = total
    if (limit is not None and applied != limit) or (limit is None and total - start > cap):
        out["limit"] = applied
    return out


@method("Mailbox/queryChanges", MAIL)
def mailbox_query_changes(call: Call) -> dict[str, Any]:
    call.account()
    if not isinstance(call.args.get("sinceQueryState"), str):
        raise MethodError("invalidArguments", "'sinceQueryState' is required")
    raise MethodError("cannotCalculateChanges", "run Mailbox/query again")


# -- Mailbox/set ---------------------------------------------------------------------------------------
def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise invalid(["name"], "name must be a string")
    if not name:
        raise invalid(["name"], "name must not be empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise invalid(["name"], "name is not valid Unicode") from None
    if size > MAX_NAME_OCTETS:
        raise invalid(["name"], f"name is longer than {MAX_NAME_OCTETS} octets")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in name):
        raise invalid(["name"], "name contains control characters")


def _depth(by_id: dict[int, Mailbox], mailbox_id: int | None) -> int:
    """Levels from the top down to ``mailbox_id`` (0 for the top level itself)."""
    depth, seen = 0, set()
    while mailbox_id is not None and mailbox_id in by_id and mailbox_id not in seen:
        seen.add(mailbox_id)
        depth += 1
        mailbox_id = by_id[mailbox_id].parent_id
    return depth


def _height(boxes: list[Mailbox], root: int) -> int:
    """Levels of the subtree under ``root``, counting ``root`` itself."""
    children: dict[int | None, list[int]] = {}
    for m in boxes:
        children.setdefault(m.parent_id, []).append(m.id)
    best, stack, seen = 0, [(root, 1)], set()
    while stack:
        mid, level = stack.pop()
        if mid in seen:
            continue
        seen.add(mid)
        best = max(best, level)
        stack.extend((c, level + 1) for c in children.get(mid, []))
    return best


def _descendants(boxes: list[Mailbox], root: int) -> set[int]:
    children: dict[int | None, list[int]] = {}
    for m in boxes:
        children.setdefault(m.parent_id, []).append(m.id)
    out: set[int] = set()
    stack = list(children.get(root, []))
    while stack:
        mid = stack.pop()
        if mid not in out:
            out.add(mid)
            stack.extend(children.get(mid, []))
    return out


def _parent(call: Call, by_id: dict[int, Mailbox], value: Any) -> int | None:
    if value is None:
        return None
    pid = call.resolve_id(value) if isinstance(value, str) else None
    if pid is None or pid not in by_id:
        raise invalid(["parentId"], "parentId is not a mailbox of this account")
    return pid


def _role(value: Any, boxes: list[Mailbox], self_id: int | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in ROLES:
        raise invalid(["role"], f"role must be null or one of {', '.join(sorted(ROLES))}")
    role = value.lower()
    if any(m.role == role and m.id != self_id for m in boxes):
        raise invalid(["role"], f"another mailbox already has the role {role}")
    return role


def _scalar_fields(obj: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if "sortOrder" in obj:
        v = obj["sortOrder"]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_UINT:
            raise invalid(["sortOrder"], "sortOrder must be an unsigned integer")
        fields["sort_order"] = v
    if "isSubscribed" in obj:
        if not isinstance(obj["isSubscribed"], bool):
            raise invalid(["isSubscribed"], "isSubscribed must be a boolean")
        fields["is_subscribed"] = obj["isSubscribed"]
    if obj.get("shareWith") is not None:
        raise invalid(["shareWith"], "sharing mailboxes is not supported")
    return fields


def _check_keys(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SetError("invalidProperties", "expected a Mailbox object")
    unknown = [k for k in obj if k not in PROPERTIES]
    if unknown:
        raise invalid(unknown, "unknown properties")
    server_set = [k for k in obj if k in SERVER_SET]
    if server_set:
        raise invalid(server_set, "these properties are set by the server")
    return obj


def _sibling_clash(boxes: list[Mailbox], name: str, parent_id: int | None, self_id: int | None) -> bool:
    return any(m.name == name and m.parent_id == parent_id and m.id != self_id for m in boxes)


def _create(call: Call, t: MailTx, creation_id: str, obj: Any) -> dict[str, Any]:
    obj = _check_keys(obj)
    if "name" not in obj:
        raise invalid(["name"], "name is required")
    _check_name(obj["name"])
    boxes = t.mailboxes()
    by_id = {m.id: m for m in boxes}
    parent = _parent(call, by_id, obj.get("parentId"))
    if _depth(by_id, parent) + 1 > MAX_DEPTH:
        raise invalid(["parentId"], f"mailboxes nest at most {MAX_DEPTH} levels deep")
    role = _role(obj.get("role"), boxes, None)
    fields = {"sort_order": 0, "is_subscribed": False, **_scalar_fields(obj)}
    if _sibling_clash(boxes, obj["name"], parent, None):
        raise invalid(["name"], "a sibling mailbox has this name")
    new_id = t.create_mailbox(obj["name"], parent, role, fields["sort_order"], fields["is_subscribed"])
    call.created_ids[creation_id] = jmap_id(new_id)
    out = {"id": jmap_id(new_id), **dict.fromkeys(COUNT_PROPERTIES, 0), "myRights": dict(RIGHTS)}
    defaults = {"parentId": None, "role": None, "sortOrder": 0, "isSubscribed": False, "shareWith": None}
    out.update({k: v for k, v in defaults.items() if k not in obj})
    if obj.get("role") != role:
        out["role"] = role  # normalised to lower case
    return out


def _update(call: Call, t: MailTx, mailbox_id: int, patch: Any) -> None:
    patch = _check_keys(patch)
    boxes = t.mailboxes()
    by_id = {m.id: m for m in boxes}
    mb = by_id.get(mailbox_id)
    if mb is None:
        raise SetError("notFound")
    fields = _scalar_fields(patch)
    name, parent = mb.name, mb.parent_id
    if "name" in patch:
        _check_name(patch["name"])
        name = fields["name"] = patch["name"]
    if "parentId" in patch:
        parent = _parent(call, by_id, patch["parentId"])
        if parent is not None and (parent == mailbox_id or parent in _descendants(boxes, mailbox_id)):
            raise invalid(["parentId"], "a mailbox cannot move below itself")
        if _depth(by_id, parent) + _height(boxes, mailbox_id) > MAX_DEPTH:
            raise invalid(["parentId"], f"mailboxes nest at most {MAX_DEPTH} levels deep")
        fields["parent_id"] = parent
    if "role" in patch:
        role = _role(patch["role"], boxes, mailbox_id)
        if mb.role == "inbox" and role != "inbox":
            raise invalid(["role"], "the inbox keeps its role")
        fields["role"] = role
    if _sibling_clash(boxes, name, parent, mailbox_id):
        raise invalid(["name"], "a sibling mailbox has this name")
    current = {"name": mb.name, "parent_id": mb.parent_id, "role": mb.role, "sort_order": mb.sort_order,
               "is_subscribed": mb.is_subscribed}
    changed = {k: v for k, v in fields.items() if current[k] != v}
    if changed:
        t.update_mailbox(mailbox_id, **changed)


def _destroy(t: MailTx, mailbox_id: int, remove_emails: bool) -> None:
    boxes = t.mailboxes()
    mb = next((m for m in boxes if m.id == mailbox_id), None)
    if mb is None:
        raise SetError("notFound")
    if mb.role == "inbox":
        raise SetError("forbidden", "the inbox cannot be destroyed")
    if any(m.parent_id == mailbox_id for m in boxes):
        raise SetError("mailboxHasChild", "destroy or move the child mailboxes first")
    if not remove_emails and t.mailbox_has_email(mailbox_id):
        raise SetError("mailboxHasEmail", "the mailbox has emails; set onDestroyRemoveEmails to remove them")
    t.destroy_mailbox(mailbox_id, remove_emails=True)


def _run_creates(call: Call, t: MailTx, create: dict[str, Any], result: SetOutcome) -> None:
    """Create in an order where a ``#creationId`` parent is made before its children."""
    pending = dict(create)
    progress = True
    while pending and progress:
        progress = False
        for cid, obj in list(pending.items()):
            parent = obj.get("parentId") if isinstance(obj, dict) else None
            if isinstance(parent, str) and parent.startswith("#") and parent[1:] in pending and parent[1:] != cid:
                continue
            del pending[cid]
            progress = True
            try:
                with t.savepoint():
                    result.created[cid] = _create(call, t, cid, obj)
            except SetError as exc:
                result.not_created[cid] = exc.to_json()
    for cid in pending:
        result.not_created[cid] = invalid(["parentId"], "parentId references form a loop").to_json()


@method("Mailbox/set", MAIL)
def mailbox_set(call: Call) -> dict[str, Any]:
    account = call.account()
    set_limit(call)
    create, update = map_arg(call, "create"), map_arg(call, "update")
    destroy = call.ids_arg("destroy") or []
    remove_emails = call.arg("onDestroyRemoveEmails", bool, False)
    result = SetOutcome()
    with call.store.mail.write(account) as t:
        old_state = check_if_in_state(call, t, MAILBOX)
        _run_creates(call, t, create, result)
        for key, patch in update.items():
            mid = call.resolve_id(key)
            try:
                if mid is None:
                    raise SetError("notFound")
                with t.savepoint():
                    _update(call, t, mid, patch)
                result.updated[jmap_id(mid)] = None
            except SetError as exc:
                result.not_updated[key] = exc.to_json()
        by_id = {m.id: m for m in t.mailboxes()}
        targets = [(key, call.resolve_id(key)) for key in dict.fromkeys(destroy)]
        targets.sort(key=lambda kv: -_depth(by_id, kv[1]))  # children before their parents
        for key, mid in targets:
            try:
                if mid is None:
                    raise SetError("notFound")
                with t.savepoint():
                    _destroy(t, mid, remove_emails)
                result.destroyed.append(jmap_id(mid))
            except SetError as exc:
                result.not_destroyed[key] = exc.to_json()
        t.finish()
        new_state = t.state(MAILBOX)
    return result.response(call.args["accountId"], old_state, new_state)
