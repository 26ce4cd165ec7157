"""Email/query, Email/queryChanges and SearchSnippet/get (RFC 8621 §4.4, §4.5, §5).

A filter compiles to a tree whose leaves are either SQL (mailbox membership, dates, sizes, keywords,
hasAttachment: answered by SQLite over ``emails`` + ``email_mailboxes``) or Python predicates (address,
subject, header and body text). SQL leaves on the top-level AND chain become the WHERE clause; SQL leaves
nested under OR/NOT become computed columns that the Python side reads. Text matching is a
case-insensitive substring match; body text is extracted from the blob and kept in a bounded cache.
"""

from __future__ import annotations

import html
import json
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..mime import Headers, as_text, parse_utc, search_text
from ..store.changes import CannotCalculateChanges
from ..store.ids import jmap_id, parse_id
from .core import MAIL, Call, MethodError, method
from .email_body import read_header_block

if TYPE_CHECKING:
    import sqlite3

    from ..store import Store

_KEYWORD = re.compile(r"[\x21-\x7e]{1,255}")
_KEYWORD_FORBIDDEN = frozenset('(){]%*"\\')
MAX_FILTER_DEPTH = 16
SORT_PROPERTIES = frozenset({"receivedAt", "size", "from", "to", "subject", "sentAt", "hasKeyword",
                             "allInThreadHaveKeyword", "someInThreadHaveKeyword"})
_KEYWORD_SORTS = frozenset({"hasKeyword", "allInThreadHaveKeyword", "someInThreadHaveKeyword"})
COLLATIONS = frozenset({"i;ascii-numeric", "i;ascii-casemap", "i;unicode-casemap"})
ADDRESS_FIELDS = ("from", "to", "cc", "bcc")


# -- filter tree -----------------------------------------------------------------------------------
@dataclass
class Sql:
    """A condition SQLite evaluates on row ``e`` of ``emails``."""

    sql: str
    params: list[Any] = field(default_factory=list)


@dataclass
class Py:
    """A condition evaluated in Python on summary ``fields`` (cost 1) or the blob (cost 2)."""

    fn: Callable[[Row], bool]
    cost: int = 1
    fields: tuple[str, ...] = ()


@dataclass
class Op:
    op: str
    children: list[Node]


Node = Sql | Py | Op


def _cost(node: Node) -> int:
    if isinstance(node, Sql):
        return 0
    if isinstance(node, Py):
        return node.cost
    return max((_cost(c) for c in node.children), default=0)


def _summary_fields(node: Node | None) -> set[str]:
    """The cached-summary fields Python conditions read (selected with json_extract, not parsed whole)."""
    if isinstance(node, Py):
        return set(node.fields)
    if isinstance(node, Op):
        return set().union(*(_summary_fields(c) for c in node.children))
    return set()


def keyword_path(value: Any) -> str:
    """The JSON path of a keyword in ``emails.keywords`` (invalidArguments for a malformed keyword)."""
    if not isinstance(value, str) or not _KEYWORD.fullmatch(value) or _KEYWORD_FORBIDDEN & set(value):
        raise MethodError("invalidArguments", f"not a valid keyword: {value!r}")
    return f'$."{value.lower()}"'


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise MethodError("invalidArguments", f"filter '{key}' must be a string")
    return value


def _uint(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MethodError("invalidArguments", f"filter '{key}' must be an unsigned integer")
    return value


def _thread_keyword(exists: bool, present: bool, path: str) -> Sql:
    inner = ("SELECT 1 FROM emails t WHERE t.account_id = e.account_id AND t.thread_id = e.thread_id "
             f"AND json_extract(t.keywords, ?) IS {'NOT ' if present else ''}NULL")
    return Sql(f"{'' if exists else 'NOT '}EXISTS ({inner})", [path])


def _fold(text: str) -> str:
    """Caseless form for substring matching (Unicode case folding of NFC text)."""
    return text.lower() if text.isascii() else unicodedata.normalize("NFC", text).casefold()


def _address_text(addresses: list[dict[str, Any]] | None) -> str:
    return " ".join(f"{a.get('name') or ''} <{a.get('email') or ''}>" for a in addresses or [])


def _summary_contains(fields: tuple[str, ...], needle: str) -> Callable[[Row], bool]:
    return lambda row: any(needle in row.folded(f) for f in fields)


def _condition(call: Call, key: str, value: Any) -> Node:
    if key == "inMailbox":
        mailbox_id = parse_id(_string(key, value))
        if mailbox_id is None:
            return Sql("0")
        return Sql("e.id IN (SELECT email_id FROM email_mailboxes WHERE mailbox_id = ?)", [mailbox_id])
    if key == "inMailboxOtherThan":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise MethodError("invalidArguments", "'inMailboxOtherThan' must be a list of ids")
        ids = [i for i in (parse_id(v) for v in value) if i is not None]
        marks = ",".join("?" * len(ids))
        extra = f" AND m.mailbox_id NOT IN ({marks})" if ids else ""
        return Sql(f"EXISTS (SELECT 1 FROM email_mailboxes m WHERE m.email_id = e.id{extra})", ids)
    if key in ("before", "after"):
        ts = parse_utc(value)
        if ts is None:
            raise MethodError("invalidArguments", f"filter '{key}' must be a UTCDate")
        return Sql(f"e.received_at {'<' if key == 'before' else '>='} ?", [ts])
    if key in ("minSize", "maxSize"):
        return Sql(f"e.size {'>=' if key == 'minSize' else '<'} ?", [_uint(key, value)])
    if key == "hasKeyword":
        return Sql("json_extract(e.keywords, ?) IS NOT NULL", [keyword_path(value)])
    if key == "notKeyword":
        return Sql("json_extract(e.keywords, ?) IS NULL", [keyword_path(value)])
    if key == "allInThreadHaveKeyword":
        return _thread_keyword(False, False, keyword_path(value))
    if key == "someInThreadHaveKeyword":
        return _thread_keyword(True, True, keyword_path(value))
    if key == "noneInThreadHaveKeyword":
        return _thread_keyword(False, True, keyword_path(value))
    if key == "hasAttachment":
        if not isinstance(value, bool):
            raise MethodError("invalidArguments", "filter 'hasAttachment' must be a boolean")
        return Sql("COALESCE(json_extract(e.summary, '$.hasAttachment'), 0) = ?", [int(value)])
    if key in ADDRESS_FIELDS or key == "subject":
        return Py(_summary_contains((key,), _fold(_string(key, value))), fields=(key,))
    if key == "text":
        needle = _fold(" ".join(_string(key, value).split()))
        in_headers = _summary_contains((*ADDRESS_FIELDS, "subject"), needle)
        return Py(lambda row: in_headers(row) or needle in row.body_text, cost=2, fields=(*ADDRESS_FIELDS, "subject"))
    if key == "body":
        needle = _fold(" ".join(_string(key, value).split()))  # body text is matched with whitespace collapsed
        return Py(lambda row: needle in row.body_text, cost=2)
    if key == "header":
        return _header_condition(value)
    call.server.metrics.inc("jmap_unsupported_filter")
    raise MethodError("unsupportedFilter", f"unsupported filter condition: {key}")


def _header_condition(value: Any) -> Py:
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= 2
        or not all(isinstance(v, str) for v in value)
        or not value[0]
    ):
        raise MethodError("invalidArguments", "filter 'header' must be [name] or [name, text]")
    name = value[0]
    if len(value) == 1:
        return Py(lambda row: row.headers.last(name) is not None, cost=2)
    needle = _fold(value[1])
    return Py(lambda row: any(needle in _fold(as_text(v)) for v in row.headers.all(name)), cost=2)


def compile_filter(call: Call, f: Any, depth: int = 0) -> Node:
    """A FilterOperator / FilterCondition as a tree of :class:`Sql`, :class:`Py` and :class:`Op`."""
    if not isinstance(f, dict):
        raise MethodError("invalidArguments", "a filter must be an object")
    if depth > MAX_FILTER_DEPTH:
        call.server.metrics.inc("jmap_unsupported_filter")
        raise MethodError("unsupportedFilter", f"filters nest at most {MAX_FILTER_DEPTH} levels")
    if "operator" in f:
        op, conditions = f.get("operator"), f.get("conditions")
        if op not in ("AND", "OR", "NOT") or not isinstance(conditions, list) or set(f) - {"operator", "conditions"}:
            raise MethodError("invalidArguments", "a FilterOperator needs operator AND/OR/NOT and conditions")
        return _combine(op, [compile_filter(call, c, depth + 1) for c in conditions])
    return _combine("AND", [_condition(call, k, v) for k, v in f.items() if v is not None])


def _combine(op: str, children: list[Node]) -> Node:
    if all(isinstance(c, Sql) for c in children):
        sqls = [c for c in children if isinstance(c, Sql)]
        params = [p for c in sqls for p in c.params]
        if not sqls:
            return Sql("1" if op in ("AND", "NOT") else "0")
        joined = (" AND " if op == "AND" else " OR ").join(f"({c.sql})" for c in sqls)
        return Sql(f"NOT ({joined})" if op == "NOT" else joined, params)
    if op == "AND" and len(children) == 1:
        return children[0]
    return Op(op, children)


# -- evaluation ------------------------------------------------------------------------------------
class _TextCache:
    """Casefolded body text of recently searched blobs, bounded by total characters."""

    def __init__(self, budget: int = 64_000_000) -> None:
        self.budget = budget
        self.used = 0
        self.items: OrderedDict[str, str] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, store: Store, digest: str) -> str:
        with self.lock:
            text = self.items.get(digest)
            if text is not None:
                self.items.move_to_end(digest)
                return text
        try:
            raw = store.blobs.read(digest)
        except OSError:
            raw = b""
        text = _fold(" ".join(search_text(raw).split()))
        with self.lock:
            if digest not in self.items and len(text) <= self.budget:
                self.items[digest] = text
                self.used += len(text)
                while self.used > self.budget:
                    _, old = self.items.popitem(last=False)
                    self.used -= len(old)
        return text


TEXT_CACHE = _TextCache()


class Row:
    """One candidate email during a query; summary, headers and body text load lazily."""

    __slots__ = ("_body", "_folded", "_headers", "r", "store")

    def __init__(self, r: sqlite3.Row, store: Store) -> None:
        self.r = r
        self.store = store
        self._folded: dict[str, str] = {}
        self._headers: Headers | None = None
        self._body: str | None = None

    def folded(self, name: str) -> str:
        """A summary field (subject or an address list) as caseless text, from its ``s_<name>`` column."""
        text = self._folded.get(name)
        if text is None:
            value = self.r[f"s_{name}"]
            if name != "subject":
                value = _address_text(json.loads(value)) if value else ""
            text = self._folded[name] = _fold(value or "")
        return text

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = read_header_block(self.store, self.r["blob_hash"])
        return self._headers

    @property
    def body_text(self) -> str:
        if self._body is None:
            self._body = TEXT_CACHE.get(self.store, self.r["blob_hash"])
        return self._body


class _Select:
    """The SELECT being assembled: extra columns (with parameters) and WHERE terms."""

    def __init__(self) -> None:
        self.columns: list[str] = []
        self.column_params: list[Any] = []
        self.where: list[str] = []
        self.where_params: list[Any] = []

    def column(self, sql: str, params: list[Any] | None = None) -> str:
        name = f"c{len(self.columns)}"
        self.columns.append(f"({sql}) AS {name}")
        self.column_params += params or []
        return name


def _evaluator(node: Node, sel: _Select) -> Callable[[Row], bool]:
    if isinstance(node, Sql):
        name = sel.column(f"COALESCE(({node.sql}), 0)", node.params)
        return lambda row: bool(row.r[name])
    if isinstance(node, Py):
        return node.fn
    fns = [_evaluator(c, sel) for c in sorted(node.children, key=_cost)]
    if node.op == "AND":
        return lambda row: all(f(row) for f in fns)
    if node.op == "OR":
        return lambda row: any(f(row) for f in fns)
    return lambda row: not any(f(row) for f in fns)


def _plan(node: Node | None, sel: _Select) -> list[Callable[[Row], bool]]:
    """Push the top-level AND chain's SQL into WHERE; return the Python checks left over."""
    if node is None:
        return []
    chain = node.children if isinstance(node, Op) and node.op == "AND" else [node]
    checks = []
    for child in sorted(chain, key=_cost):
        if isinstance(child, Sql):
            sel.where.append(f"({child.sql})")
            sel.where_params += child.params
        else:
            checks.append(_evaluator(child, sel))
    return checks


# -- sorting ---------------------------------------------------------------------------------------
_ASCII_LOWER = {c: c + 32 for c in range(65, 91)}
_SUBJECT_PREFIX = re.compile(r"^\s*(?:(?:re|fwd?|aw|wg|sv|antw)\s*(?:\[\d+\])?\s*:|\[[^\]]*\])\s*", re.I)
_SUBJECT_SUFFIX = re.compile(r"\s*\(fwd\)\s*$", re.I)


def base_subject(subject: str) -> str:
    """RFC 5256 §2.1 base subject: reply/forward prefixes, list tags and "(fwd)" removed."""
    s = " ".join(subject.split())
    while True:
        stripped = _SUBJECT_SUFFIX.sub("", _SUBJECT_PREFIX.sub("", s, count=1))
        if stripped == s:
            return s
        s = stripped


def collation(name: str) -> Callable[[str], Any]:
    if name == "i;ascii-numeric":
        def numeric(s: str) -> tuple[int, int]:
            m = re.match(r"\d+", s)
            return (0, int(m.group())) if m else (1, 0)

        return numeric
    if name == "i;ascii-casemap":
        return lambda s: s.translate(_ASCII_LOWER)
    return lambda s: unicodedata.normalize("NFKD", s).casefold()


def _sent_ts(value: str | None) -> float:
    if not value:
        return float("-inf")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("-inf")


@dataclass
class SortSpec:
    prop: str
    ascending: bool
    collation: str
    keyword_path: str | None


# Sort properties SQLite orders by itself: (expression, takes the keyword path as parameter).
_SQL_ORDER: dict[str, tuple[str, bool]] = {
    "receivedAt": ("e.received_at", False),
    "size": ("e.size", False),
    "hasKeyword": ("(json_extract(e.keywords, ?) IS NOT NULL)", True),
    "allInThreadHaveKeyword": (_thread_keyword(False, False, "").sql, True),
    "someInThreadHaveKeyword": (_thread_keyword(True, True, "").sql, True),
}


def _sort_specs(call: Call, sort: Any) -> list[SortSpec]:
    if sort is None:
        return []
    if not isinstance(sort, list):
        raise MethodError("invalidArguments", "'sort' must be a list of comparators")
    out = []
    for c in sort:
        if not isinstance(c, dict) or not isinstance(c.get("property"), str):
            raise MethodError("invalidArguments", "a comparator needs a 'property'")
        prop, ascending, coll = c["property"], c.get("isAscending", True), c.get("collation", "i;unicode-casemap")
        if not isinstance(ascending, bool) or not isinstance(coll, str):
            raise MethodError("invalidArguments", "'isAscending' must be a boolean and 'collation' a string")
        if prop not in SORT_PROPERTIES or coll not in COLLATIONS:
            call.server.metrics.inc("jmap_unsupported_sort")
            raise MethodError("unsupportedSort", f"cannot sort by {prop} with {coll}")
        path = keyword_path(c.get("keyword")) if prop in _KEYWORD_SORTS else None
        out.append(SortSpec(prop, ascending, coll, path))
    return out


def _sort_key(spec: SortSpec, sel: _Select) -> Callable[[Row], Any]:
    """A Python sort key for one comparator (adding the SELECT columns it reads)."""
    coll = collation(spec.collation)
    if spec.prop in ("from", "to"):
        name = sel.column(f"COALESCE(json_extract(e.summary, '$.{spec.prop}[0].name'), "
                          f"json_extract(e.summary, '$.{spec.prop}[0].email'), '')")
        return lambda row: coll(row.r[name])
    if spec.prop == "subject":
        name = sel.column("COALESCE(json_extract(e.summary, '$.subject'), '')")
        return lambda row: coll(base_subject(row.r[name]))
    if spec.prop == "sentAt":
        name = sel.column("json_extract(e.summary, '$.sentAt')")
        return lambda row: _sent_ts(row.r[name])
    expr, keyed = _SQL_ORDER[spec.prop]
    name = sel.column(expr, [spec.keyword_path] if keyed else [])
    return lambda row: row.r[name]


# -- the query -------------------------------------------------------------------------------------
@dataclass
class QueryResult:
    ids: list[int]  # every matching email id in order (threads collapsed if asked)
    thread_sensitive: bool  # membership or order depends on other emails of the same thread


def _tuples(store: Store, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """Rows as plain tuples (cheaper than sqlite3.Row for ten thousand of them)."""
    with store.db.lock:
        cur = store.db.conn.cursor()
        cur.row_factory = None
        rows: list[tuple[Any, ...]] = cur.execute(sql, params).fetchall()
        return rows


def run_query(call: Call, account_id: int) -> QueryResult:
    """Evaluate the call's ``filter``, ``sort`` and ``collapseThreads`` over the whole account.

    Filters and sorts SQLite can do entirely run as one SELECT of (id, threadId) pairs; otherwise the
    candidates SQLite narrowed down are checked and ordered in Python.
    """
    raw_filter = call.args.get("filter")
    node = compile_filter(call, raw_filter) if raw_filter is not None else None
    collapse = call.arg("collapseThreads", bool, False)
    specs = _sort_specs(call, call.args.get("sort"))
    sel = _Select()
    checks = _plan(node, sel)
    where = "".join(f" AND {w}" for w in sel.where)
    tie = "DESC" if specs and not specs[0].ascending else "ASC"
    if not checks and all(spec.prop in _SQL_ORDER for spec in specs):
        order, order_params = [], []
        for spec in specs:
            expr, keyed = _SQL_ORDER[spec.prop]
            order.append(f"{expr} {'ASC' if spec.ascending else 'DESC'}")
            order_params += [spec.keyword_path] if keyed else []
        sql = (f"SELECT e.id, e.thread_id FROM emails e WHERE e.account_id = ?{where} "
               f"ORDER BY {', '.join([*order, f'e.id {tie}'])}")
        pairs = _tuples(call.store, sql, [account_id, *sel.where_params, *order_params])
    else:
        keys = [(_sort_key(spec, sel), spec.ascending) for spec in specs]
        columns = ["e.id", "e.thread_id", "e.blob_hash"]
        columns += [f"json_extract(e.summary, '$.{f}') AS s_{f}" for f in sorted(_summary_fields(node))]
        sql = f"SELECT {', '.join(columns + sel.columns)} FROM emails e WHERE e.account_id = ?{where} ORDER BY e.id {tie}"
        rows = [Row(r, call.store) for r in call.store.db.q(sql, [*sel.column_params, account_id, *sel.where_params])]
        if checks:
            rows = [row for row in rows if all(check(row) for check in checks)]
        for key, ascending in reversed(keys):  # stable sorts, last key first
            rows.sort(key=key, reverse=not ascending)
        pairs = [(row.r[0], row.r[1]) for row in rows]
    ids: list[int] = []
    seen: set[int] = set()
    for email_id, thread_id in pairs:
        if collapse:
            if thread_id in seen:
                continue
            seen.add(thread_id)
        ids.append(email_id)
    return QueryResult(ids, collapse or _thread_dependent(raw_filter, call.args.get("sort")))


def _thread_dependent(f: Any, sort: Any) -> bool:
    """Whether a filter or sort looks at other emails of the thread (…InThreadHaveKeyword)."""
    def in_filter(node: Any) -> bool:
        if not isinstance(node, dict):
            return False
        if "operator" in node:
            return any(in_filter(c) for c in node.get("conditions") or [])
        return any(k.endswith("InThreadHaveKeyword") for k in node)

    in_sort = any(isinstance(c, dict) and str(c.get("property", "")).endswith("InThreadHaveKeyword") for c in sort or [])
    return in_filter(f) or in_sort


def _int_arg(call: Call, key: str, default: int, minimum: int | None = None) -> int:
    value = call.args.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        raise MethodError("invalidArguments", f"'{key}' must be an integer" + (f" >= {minimum}" if minimum is not None else ""))
    return value


@method("Email/query", MAIL)
def email_query(call: Call) -> dict[str, Any]:
    account_id = call.account()
    position = _int_arg(call, "position", 0)
    anchor = call.arg("anchor", str)
    anchor_offset = _int_arg(call, "anchorOffset", 0)
    cap = call.limits.max_query_results
    requested = call.args.get("limit")
    limit = _int_arg(call, "limit", cap, minimum=0)
    calculate_total = call.arg("calculateTotal", bool, False)
    state = call.store.mail.state(account_id, "Email")  # read before the results: a race only over-reports changes
    ids = run_query(call, account_id).ids
    total = len(ids)
    if anchor is not None:
        anchor_id = parse_id(anchor)
        try:
            index = ids.index(anchor_id) if anchor_id is not None else -1
        except ValueError:
            index = -1
        if index < 0:
            raise MethodError("anchorNotFound", "the anchor is not in the results")
        start = max(0, index + anchor_offset)
    else:
        start = position if position >= 0 else max(0, total + position)
    out: dict[str, Any] = {
        "accountId": jmap_id(account_id),
        "queryState": state,
        "canCalculateChanges": True,
        "position": start,
        "ids": [jmap_id(i) for i in ids[start : start + min(limit, cap)]],
    }
    if calculate_total:
        out["total"] = total
    if requested is None or limit > cap:
        out["limit"] = cap
    return out


def _changed_threads(store: Store, account_id: int, since: int) -> set[int]:
    """Threads touched after modseq ``since`` (CannotCalculateChanges if that history is gone)."""
    with store.db.lock:
        row = store.db.conn.execute(
            "SELECT floor FROM states WHERE account_id=? AND type='Thread'", (account_id,)
        ).fetchone()
        if row is not None and since < row[0]:
            raise CannotCalculateChanges(str(since))
        rows = store.db.conn.execute(
            "SELECT DISTINCT object_id FROM changelog WHERE account_id=? AND type='Thread' AND modseq > ?",
            (account_id, since),
        ).fetchall()
    return {r[0] for r in rows}


@method("Email/queryChanges", MAIL)
def email_query_changes(call: Call) -> dict[str, Any]:
    account_id = call.account()
    since = call.args.get("sinceQueryState")
    if not isinstance(since, str):
        raise MethodError("invalidArguments", "'sinceQueryState' is required")
    max_changes = _int_arg(call, "maxChanges", 0, minimum=0) or None
    call.arg("upToId", str)  # allowed, but only an optimisation hint: changes are always complete
    calculate_total = call.arg("calculateTotal", bool, False)
    store = call.store
    new_state = store.mail.state(account_id, "Email")
    result = run_query(call, account_id)
    try:
        cs = store.mail.changes_since(account_id, "Email", since, 1 << 30)
        changed = set(cs.created) | set(cs.updated) | set(cs.destroyed)
        if result.thread_sensitive:
            threads = sorted(_changed_threads(store, account_id, int(since)))
            for start in range(0, len(threads), 500):
                chunk = threads[start : start + 500]
                rows = store.db.q(
                    f"SELECT id FROM emails WHERE account_id=? AND thread_id IN ({','.join('?' * len(chunk))})",
                    [account_id, *chunk],
                )
                changed.update(r[0] for r in rows)
    except CannotCalculateChanges:
        raise MethodError("cannotCalculateChanges", "the query state is too old or unknown") from None
    added = [{"id": jmap_id(i), "index": n} for n, i in enumerate(result.ids) if i in changed]
    removed = [jmap_id(i) for i in sorted(changed)]
    if max_changes is not None and len(added) + len(removed) > max_changes:
        raise MethodError("tooManyChanges", f"more than {max_changes} changes")
    out: dict[str, Any] = {
        "accountId": jmap_id(account_id),
        "oldQueryState": since,
        "newQueryState": new_state,
        "removed": removed,
        "added": added,
    }
    if calculate_total:
        out["total"] = len(result.ids)
    return out


# -- SearchSnippet/get -----------------------------------------------------------------------------
def _terms(f: Any, out: dict[str, list[str]], negated: bool = False) -> None:
    """The search terms of a filter outside NOT: text/subject highlight subjects, text/body previews."""
    if not isinstance(f, dict):
        return
    if "operator" in f:
        for c in f.get("conditions") or []:
            _terms(c, out, negated or f.get("operator") == "NOT")
        return
    if negated:
        return
    for key in ("text", "subject", "body"):
        if isinstance(f.get(key), str) and f[key].strip():
            out.setdefault(key, []).append(f[key])


def highlight(text: str, terms: list[str]) -> str | None:
    """``text`` HTML-escaped with every term occurrence in ``<mark>``; None if no term occurs."""
    if not terms:
        return None
    pattern = re.compile("|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)), re.I)
    pieces: list[str] = []
    pos = 0
    for m in pattern.finditer(text):
        pieces += [html.escape(text[pos : m.start()]), "<mark>", html.escape(m.group()), "</mark>"]
        pos = m.end()
    if not pieces:
        return None
    pieces.append(html.escape(text[pos:]))
    return "".join(pieces)


def _preview_snippet(text: str, terms: list[str], width: int = 200) -> str | None:
    flat = " ".join(text.split())
    m = re.search("|".join(re.escape(t) for t in terms), flat, re.I) if terms else None
    if m is None:
        return None
    start = max(0, m.start() - 40)
    if start:
        space = flat.find(" ", start)
        start = space + 1 if 0 <= space < m.start() else start
    return highlight(flat[start : start + width], terms)


@method("SearchSnippet/get", MAIL)
def search_snippet_get(call: Call) -> dict[str, Any]:
    account_id = call.account()
    ids = call.ids_arg("emailIds")
    if ids is None:
        raise MethodError("invalidArguments", "'emailIds' is required")
    if len(ids) > call.limits.max_objects_in_get:
        raise MethodError("requestTooLarge", f"at most {call.limits.max_objects_in_get} emailIds")
    raw_filter = call.args.get("filter")
    if raw_filter is not None:
        compile_filter(call, raw_filter)  # validates (unsupportedFilter / invalidArguments)
    terms: dict[str, list[str]] = {}
    _terms(raw_filter, terms)
    subject_terms = terms.get("text", []) + terms.get("subject", [])
    body_terms = terms.get("text", []) + terms.get("body", [])
    parsed = {raw: parse_id(raw) for raw in dict.fromkeys(ids)}
    emails = call.store.mail.emails(account_id, [i for i in parsed.values() if i is not None])
    found, not_found = [], []
    for raw, email_id in parsed.items():
        e = emails.get(email_id) if email_id is not None else None
        if e is None:
            not_found.append(raw)
            continue
        preview = None
        if body_terms:
            try:
                preview = _preview_snippet(search_text(call.store.blobs.read(e.blob_hash)), body_terms)
            except OSError:
                preview = None
        found.append({"emailId": raw, "subject": highlight(e.summary.get("subject") or "", subject_terms),
                      "preview": preview})
    return {"accountId": jmap_id(account_id), "list": found, "notFound": not_found}
