"""SieveScript/get, /changes, /query, /queryChanges, /set and /validate (RFC 9661).

Scripts are stored (name, blob, which one is active), not run. A script's text must pass a basic syntax check
(:func:`check_sieve`: tokens, strings, comments, balanced blocks, commands ending in ``;`` or a block) both on
/set and on /validate. Error names: ``invalidSieve`` (RFC 9661) for a script that fails the check and, as on
Stalwart, ``scriptIsActive`` for destroying the active script.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from ..store.changes import CREATED, DESTROYED, UPDATED
from .core import SIEVE, Call, MethodError, SetError, filter_predicate, jmap_id, method, set_limit
from .email_body import read_blob
from .identity import (
    apply_sort,
    check_if_in_state,
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

SIEVE_SCRIPT = "SieveScript"
PROPERTIES = frozenset({"id", "name", "blobId", "isActive"})
# The limits advertised in the session (jmap/session.py).
MAX_SIZE_SCRIPT_NAME = 512
MAX_SIZE_SCRIPT = 1024 * 1024
MAX_NUMBER_SCRIPTS = 100


# -- basic syntax check (RFC 5228 §8 grammar, without knowledge of commands or extensions) -----------------
class SieveSyntaxError(ValueError):
    """The script is not well-formed Sieve; the message names the line."""


_MULTILINE = re.compile(r"text:[ \t]*(?:#[^\n]*)?\r?\n")
_NUMBER = re.compile(r"[0-9]+[KMGkmg]?(?![A-Za-z0-9_])")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPECIALS = frozenset("[]{}(),;")
Token = tuple[str, str, int]  # (kind, value, line)


def _string_end(text: str, i: int, line: int) -> tuple[int, int]:
    """The index after the quoted string starting at ``i`` and the line it ends on."""
    start, j, n = line, i + 1, len(text)
    while j < n:
        ch = text[j]
        if ch == "\\":
            line += text[j + 1 : j + 2] == "\n"
            j += 2
            continue
        if ch == '"':
            return j + 1, line
        line += ch == "\n"
        j += 1
    raise SieveSyntaxError(f"line {start}: unterminated string")


def _multiline_end(text: str, j: int, line: int) -> tuple[int, int]:
    """The index after the ``.`` line that ends a ``text:`` string whose body starts at ``j``."""
    start = line
    while True:
        k = text.find("\n", j)
        if k < 0:
            if text[j:].rstrip("\r") == ".":
                return len(text), line
            raise SieveSyntaxError(f"line {start}: unterminated multi-line string")
        if text[j:k].rstrip("\r") == ".":
            return k + 1, line + 1
        line += 1
        j = k + 1


def tokenize(text: str) -> list[Token]:
    out: list[Token] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line, i = line + 1, i + 1
        elif ch in " \t\r":
            i += 1
        elif ch == "#":
            k = text.find("\n", i)
            i = n if k < 0 else k
        elif text.startswith("/*", i):
            k = text.find("*/", i + 2)
            if k < 0:
                raise SieveSyntaxError(f"line {line}: unterminated comment")
            line += text.count("\n", i, k)
            i = k + 2
        elif ch == '"':
            start = line
            i, line = _string_end(text, i, line)
            out.append(("string", "", start))
        elif m := _MULTILINE.match(text, i):
            start = line
            i, line = _multiline_end(text, m.end(), line + 1)
            out.append(("string", "", start))
        elif m := _NUMBER.match(text, i):
            out.append(("number", m.group(), line))
            i = m.end()
        elif m := _IDENTIFIER.match(text, i):
            out.append(("identifier", m.group().lower(), line))
            i = m.end()
        elif ch == ":" and (m := _IDENTIFIER.match(text, i + 1)):
            out.append(("tag", m.group().lower(), line))
            i = m.end()
        elif ch in _SPECIALS:
            out.append((ch, ch, line))
            i += 1
        else:
            raise SieveSyntaxError(f"line {line}: unexpected character {ch!r}")
    return out


class _Parser:
    """Recursive descent over the token list; raises :class:`SieveSyntaxError` at the first problem."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def kind(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def fail(self, what: str) -> SieveSyntaxError:
        if self.i < len(self.tokens):
            kind, value, line = self.tokens[self.i]
            return SieveSyntaxError(f"line {line}: {what}, found {value or kind!r}")
        line = self.tokens[-1][2] if self.tokens else 1
        return SieveSyntaxError(f"line {line}: {what}, found the end of the script")

    def expect(self, kind: str, what: str) -> None:
        if self.kind() != kind:
            raise self.fail(f"expected {what}")
        self.i += 1

    def commands(self, top: bool) -> None:
        previous, others = "", False
        while self.kind() == "identifier":
            name = self.tokens[self.i][1]
            self.i += 1
            if name == "require":
                if others or not top:
                    raise self.fail("'require' must come before other commands")
                if self.kind() not in ("string", "["):
                    raise self.fail("'require' needs a string or string list")
            else:
                others = True
            if name in ("elsif", "else") and previous not in ("if", "elsif"):
                raise self.fail(f"'{name}' without a preceding 'if'")
            has_test = self.arguments()
            if name in ("if", "elsif") and not has_test:
                raise self.fail(f"'{name}' needs a test")
            if self.kind() == "{":
                self.i += 1
                self.commands(False)
                self.expect("}", "'}'")
            elif name in ("if", "elsif", "else"):
                raise self.fail(f"'{name}' needs a block")
            else:
                self.expect(";", "';' at the end of the command")
            previous = name

    def arguments(self) -> bool:
        """Arguments, then an optional test or test list; True when there was a test."""
        while (kind := self.kind()) in ("string", "number", "tag", "["):
            if kind == "[":
                self.string_list()
            else:
                self.i += 1
        if self.kind() == "identifier":
            self.test()
            return True
        if self.kind() == "(":
            self.i += 1
            self.test()
            while self.kind() == ",":
                self.i += 1
                self.test()
            self.expect(")", "')' closing the test list")
            return True
        return False

    def test(self) -> None:
        self.expect("identifier", "a test")
        self.arguments()

    def string_list(self) -> None:
        self.i += 1
        self.expect("string", "a string in the list")
        while self.kind() == ",":
            self.i += 1
            self.expect("string", "a string after ','")
        self.expect("]", "']' closing the string list")


def check_sieve(data: bytes) -> None:
    """Raise :class:`SieveSyntaxError` unless ``data`` is plausibly well-formed Sieve (UTF-8, RFC 5228 grammar)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SieveSyntaxError("the script is not UTF-8") from None
    if "\x00" in text:
        raise SieveSyntaxError("the script contains NUL characters")
    parser = _Parser(tokenize(text))
    parser.commands(True)
    if parser.i != len(parser.tokens):
        raise parser.fail("expected a command")


# -- SieveScript objects -------------------------------------------------------------------------------------
def _scripts(c: sqlite3.Connection, account: int) -> dict[int, sqlite3.Row]:
    rows = c.execute("SELECT * FROM sieve_scripts WHERE account_id=? ORDER BY id", (account,)).fetchall()
    return {int(r["id"]): r for r in rows}


def _wire(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": jmap_id(row["id"]), "name": row["name"], "blobId": row["blob_hash"], "isActive": bool(row["is_active"])}


@method("SieveScript/get", SIEVE)
def sieve_get(call: Call) -> dict[str, Any]:
    account = call.account()

    def load(c: sqlite3.Connection) -> tuple[str, dict[str, dict[str, Any]]]:
        found = _scripts(c, account)
        return state_of(call, c, account, SIEVE_SCRIPT), {jmap_id(i): _wire(r) for i, r in found.items()}

    return standard_get(call, PROPERTIES, load)


@method("SieveScript/changes", SIEVE)
def sieve_changes(call: Call) -> dict[str, Any]:
    return changes_response(call, SIEVE_SCRIPT)[0]


# -- SieveScript/query ---------------------------------------------------------------------------------------


def _condition(key: str, value: Any) -> Callable[[sqlite3.Row], bool]:
    if key == "name" and isinstance(value, str):
        needle = value.casefold()
        return lambda r: needle in str(r["name"]).casefold()
    if key == "isActive" and isinstance(value, bool):
        flag = value
        return lambda r: bool(r["is_active"]) == flag
    if key in ("name", "isActive"):
        raise MethodError("invalidArguments", f"filter {key} has the wrong type")
    raise MethodError("unsupportedFilter", f"cannot filter scripts by {key}")


@method("SieveScript/query", SIEVE)
def sieve_query(call: Call) -> dict[str, Any]:
    account = call.account()
    match = filter_predicate(call.args.get("filter"), _condition)
    sort = sort_arg(call, {"name", "isActive"})
    with call.store.db.lock:
        c = call.store.db.conn
        state = state_of(call, c, account, SIEVE_SCRIPT)
        rows = [r for r in _scripts(c, account).values() if match(r)]
    rows = apply_sort(rows, sort, lambda r, p: str(r["name"]) if p == "name" else int(r["is_active"]))
    return query_response(call, [jmap_id(r["id"]) for r in rows], state)


@method("SieveScript/queryChanges", SIEVE)
def sieve_query_changes(call: Call) -> dict[str, Any]:
    return query_changes_unsupported(call)


# -- SieveScript/set -----------------------------------------------------------------------------------------
def script_blob(call: Call, account: int, value: Any) -> tuple[str, bytes]:
    """The (sha256 hex, bytes) of a blob the account may read, checked as Sieve."""
    if isinstance(value, str) and value.startswith("#"):
        value = call.created_ids.get(value[1:], value)
    data = read_blob(call.store, account, value) if isinstance(value, str) else None
    if data is None:
        raise SetError("blobNotFound", f"blob {value} not found", notFound=[value])
    if len(data) > MAX_SIZE_SCRIPT:
        raise SetError("tooLarge", f"scripts are limited to {MAX_SIZE_SCRIPT} octets", maxSize=MAX_SIZE_SCRIPT)
    try:
        check_sieve(data)
    except SieveSyntaxError as exc:
        raise SetError("invalidSieve", str(exc)) from None
    return hashlib.sha256(data).hexdigest(), data


def _name(c: sqlite3.Connection, account: int, value: Any, self_id: int | None) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(["name"], "name must be a non-empty string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise invalid(["name"], "name is not valid Unicode") from None
    if size > MAX_SIZE_SCRIPT_NAME:
        raise invalid(["name"], f"name is longer than {MAX_SIZE_SCRIPT_NAME} octets")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in "\u2028\u2029" for ch in value):
        raise invalid(["name"], "name contains control characters")
    row = c.execute("SELECT id FROM sieve_scripts WHERE account_id=? AND name=?", (account, value)).fetchone()
    if row is not None and row[0] != self_id:
        raise SetError("alreadyExists", f"a script named {value!r} exists", existingId=jmap_id(row[0]))
    return value


def _check_keys(obj: Any, current: sqlite3.Row | None) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SetError("invalidProperties", "expected a SieveScript object")
    unknown = [k for k in obj if k not in PROPERTIES]
    if unknown:
        raise invalid(unknown, "unknown properties")
    if "id" in obj and (current is None or obj["id"] != jmap_id(current["id"])):
        raise invalid(["id"], "id is set by the server")
    if "isActive" in obj and obj["isActive"] != (bool(current["is_active"]) if current is not None else False):
        raise invalid(["isActive"], "isActive is changed with onSuccessActivateScript / onSuccessDeactivateScript")
    return obj


def _keep_blob(call: Call, c: sqlite3.Connection, digest: str, data: bytes) -> None:
    """Make sure the script's bytes are a stored blob of their own (a part of a message is copied out)."""
    if not call.store.blobs.exists(digest):
        call.store.blobs.put(data)
    c.execute("INSERT OR IGNORE INTO blobs(hash, size, created) VALUES(?,?,?)", (digest, len(data), time.time()))


def _create(call: Call, c: sqlite3.Connection, account: int, obj: Any) -> tuple[int, dict[str, Any]]:
    obj = _check_keys(obj, None)
    if "blobId" not in obj:
        raise invalid(["blobId"], "blobId is required")
    count = c.execute("SELECT COUNT(*) FROM sieve_scripts WHERE account_id=?", (account,)).fetchone()[0]
    if count >= MAX_NUMBER_SCRIPTS:
        raise SetError("overQuota", f"at most {MAX_NUMBER_SCRIPTS} scripts per account")
    name = _name(c, account, obj["name"], None) if obj.get("name") is not None else None
    digest, data = script_blob(call, account, obj["blobId"])
    script_id = next_object_id(c, "sieve_scripts")
    if name is None:
        name = f"script-{jmap_id(script_id)}"
        while c.execute("SELECT 1 FROM sieve_scripts WHERE account_id=? AND name=?", (account, name)).fetchone():
            name += "-1"
    _keep_blob(call, c, digest, data)
    c.execute("INSERT INTO sieve_scripts(id, account_id, name, blob_hash, is_active) VALUES(?,?,?,?,0)",
              (script_id, account, name, digest))
    out: dict[str, Any] = {"id": jmap_id(script_id), "blobId": digest, "isActive": False}
    if obj.get("name") is None:
        out["name"] = name
    return script_id, out


def _update(call: Call, c: sqlite3.Connection, account: int, script_id: int, patch: Any) -> dict[str, Any] | None:
    row = c.execute("SELECT * FROM sieve_scripts WHERE account_id=? AND id=?", (account, script_id)).fetchone()
    if row is None:
        raise SetError("notFound")
    patch = _check_keys(patch, row)
    name = _name(c, account, patch["name"], script_id) if "name" in patch else row["name"]
    digest = row["blob_hash"]
    if "blobId" in patch and patch["blobId"] != row["blob_hash"]:
        digest, data = script_blob(call, account, patch["blobId"])
        _keep_blob(call, c, digest, data)
    c.execute("UPDATE sieve_scripts SET name=?, blob_hash=? WHERE id=?", (name, digest, script_id))
    return {"blobId": digest} if "blobId" in patch and digest != patch["blobId"] else None


def _activation_args(call: Call) -> tuple[Any, bool]:
    activate = call.args.get("onSuccessActivateScript")
    if activate is not None and not isinstance(activate, str):
        raise MethodError("invalidArguments", "onSuccessActivateScript must be an id")
    return activate, call.arg("onSuccessDeactivateScript", bool, False)


def _report(result: SetOutcome, created_by_id: dict[int, str], script_id: int, active: bool) -> None:
    cid = created_by_id.get(script_id)
    if cid is not None:
        result.created[cid]["isActive"] = active
    else:
        key = jmap_id(script_id)
        result.updated[key] = {**(result.updated.get(key) or {}), "isActive": active}


def _switch_active(call: Call, c: sqlite3.Connection, account: int, result: SetOutcome,
                   created_by_id: dict[int, str], changes: list[tuple[int, str]]) -> None:
    """onSuccessDeactivateScript, then onSuccessActivateScript (RFC 9661 §2.6), when every change succeeded."""
    activate, deactivate = _activation_args(call)
    if result.not_created or result.not_updated or result.not_destroyed:
        return
    active = {int(r[0]) for r in c.execute("SELECT id FROM sieve_scripts WHERE account_id=? AND is_active=1", (account,))}
    target = call.resolve_id(activate) if activate is not None else None
    if target is not None and not c.execute(
            "SELECT 1 FROM sieve_scripts WHERE account_id=? AND id=?", (account, target)).fetchone():
        target = None  # an unknown id is ignored (RFC 9661 §2.6)
    off = set(active) if deactivate or target is not None else set()
    on = {target} if target is not None else set()
    if not deactivate and target in active:
        off, on = set(), set()  # already the active script
    for script_id in sorted(off):
        c.execute("UPDATE sieve_scripts SET is_active=0 WHERE id=?", (script_id,))
        changes.append((script_id, UPDATED))
        _report(result, created_by_id, script_id, False)
    for script_id in on:
        c.execute("UPDATE sieve_scripts SET is_active=1 WHERE id=?", (script_id,))
        changes.append((script_id, UPDATED))
        _report(result, created_by_id, script_id, True)


@method("SieveScript/set", SIEVE)
def sieve_set(call: Call) -> dict[str, Any]:
    account = call.account()
    set_limit(call)
    create, update = map_arg(call, "create"), map_arg(call, "update")
    destroy = call.ids_arg("destroy") or []
    _activation_args(call)
    result = SetOutcome()
    changes: list[tuple[int, str]] = []
    created_by_id: dict[int, str] = {}
    with call.store.db.tx() as c:
        old_state = check_if_in_state(call, c, account, SIEVE_SCRIPT)
        for cid, obj in create.items():
            try:
                script_id, out = _create(call, c, account, obj)
            except SetError as exc:
                result.not_created[cid] = exc.to_json()
                continue
            changes.append((script_id, CREATED))
            created_by_id[script_id] = cid
            call.created_ids[cid] = out["id"]
            result.created[cid] = out
        for key, patch in update.items():
            target = call.resolve_id(key)
            try:
                if target is None:
                    raise SetError("notFound")
                result.updated[jmap_id(target)] = _update(call, c, account, target, patch)
            except SetError as exc:
                result.not_updated[key] = exc.to_json()
                continue
            changes.append((target, UPDATED))
        for key in dict.fromkeys(destroy):
            target = call.resolve_id(key)
            row = c.execute("SELECT is_active FROM sieve_scripts WHERE account_id=? AND id=?",
                            (account, target)).fetchone() if target is not None else None
            if row is None or target is None:
                result.not_destroyed[key] = SetError("notFound").to_json()
            elif row[0]:
                result.not_destroyed[key] = SetError("scriptIsActive", "deactivate the script first").to_json()
            else:
                c.execute("DELETE FROM sieve_scripts WHERE id=?", (target,))
                changes.append((target, DESTROYED))
                result.destroyed.append(jmap_id(target))
        _switch_active(call, c, account, result, created_by_id, changes)
        record_changes(call, c, account, SIEVE_SCRIPT, changes)
        new_state = state_of(call, c, account, SIEVE_SCRIPT)
    return result.response(call.args["accountId"], old_state, new_state)


# -- SieveScript/validate ------------------------------------------------------------------------------------
@method("SieveScript/validate", SIEVE)
def sieve_validate(call: Call) -> dict[str, Any]:
    account = call.account()
    blob_id = call.args.get("blobId")
    if not isinstance(blob_id, str):
        raise MethodError("invalidArguments", "'blobId' is required")
    error: dict[str, Any] | None = None
    try:
        script_blob(call, account, blob_id)
    except SetError as exc:
        error = exc.to_json()
    return {"accountId": call.args["accountId"], "error": error}
