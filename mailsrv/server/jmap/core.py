"""JMAP request processing (RFC 8620 §3): method registry, result references, errors and limits.

Method modules register handlers with :func:`method`; a handler gets a :class:`Call` and returns the
response arguments or raises :class:`MethodError`. Handlers are synchronous and run in a worker thread
(store access is blocking SQLite), so the event loop stays free.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..store.ids import jmap_id, parse_id

if TYPE_CHECKING:
    from ..app import Identity, MailServer

log = logging.getLogger("mailsrv.jmap")

CORE = "urn:ietf:params:jmap:core"
MAIL = "urn:ietf:params:jmap:mail"
SUBMISSION = "urn:ietf:params:jmap:submission"
VACATION = "urn:ietf:params:jmap:vacationresponse"
SIEVE = "urn:ietf:params:jmap:sieve"
BLOB = "urn:ietf:params:jmap:blob"
QUOTA = "urn:ietf:params:jmap:quota"
PRINCIPALS = "urn:ietf:params:jmap:principals"
STALWART = "urn:stalwart:jmap"
KNOWN_CAPABILITIES = {CORE, MAIL, SUBMISSION, VACATION, SIEVE, BLOB, QUOTA, PRINCIPALS, STALWART}


class _TypedError(Exception):
    """An error that travels in a JMAP response as ``{"type": ..., "description": ..., ...}``."""

    def __init__(self, type_: str, description: str | None = None, **extra: Any) -> None:
        super().__init__(description or type_)
        self.type = type_
        self.description = description
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, **self.extra}
        if self.description:
            out["description"] = self.description
        return out


class MethodError(_TypedError):
    """A JMAP method-level error (RFC 8620 §3.6.2): ``["error", {"type": ...}, callId]``."""


class RequestError(Exception):
    """A request-level problem (RFC 8620 §3.6.1), answered as application/problem+json."""

    def __init__(self, type_: str, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.type = type_
        self.status = status
        self.detail = detail
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "status": self.status, "detail": self.detail, **self.extra}


class SetError(_TypedError):
    """A per-object failure inside /set (RFC 8620 §5.3): goes to notCreated/notUpdated/notDestroyed."""


Handler = Callable[["Call"], dict[str, Any]]


@dataclass
class MethodSpec:
    name: str
    capability: str
    handler: Handler


METHODS: dict[str, MethodSpec] = {}


def method(name: str, capability: str) -> Callable[[Handler], Handler]:
    """Register a JMAP method handler."""

    def deco(fn: Handler) -> Handler:
        METHODS[name] = MethodSpec(name, capability, fn)
        return fn

    return deco


@dataclass
class Call:
    """One method invocation with its context."""

    server: MailServer
    identity: Identity
    name: str
    args: dict[str, Any]
    call_id: str
    using: set[str]
    created_ids: dict[str, str]
    extra_responses: list[list[Any]] = field(default_factory=list)

    @property
    def store(self) -> Any:
        return self.server.store

    @property
    def limits(self) -> Any:
        return self.server.cfg.jmap

    def account(self) -> int:
        """The checked ``accountId`` argument as a principal id (accountNotFound / forbidden)."""
        return account_for(self.server, self.identity, self.args.get("accountId"))

    def arg(self, key: str, types: type | tuple[type, ...], default: Any = None) -> Any:
        """An optional argument of the given JSON type (invalidArguments otherwise)."""
        value = self.args.get(key, default)
        if value is None:
            return default
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise MethodError("invalidArguments", f"'{key}' has the wrong type")
        if not isinstance(value, types):
            raise MethodError("invalidArguments", f"'{key}' has the wrong type")
        return value

    def resolve_id(self, value: Any) -> int | None:
        """An id argument, resolving ``#creationId`` references; ``None`` if it is not a valid id."""
        if isinstance(value, str) and value.startswith("#"):
            value = self.created_ids.get(value[1:])
        return parse_id(value)

    def ids_arg(self, key: str = "ids") -> list[str] | None:
        ids = self.args.get(key)
        if ids is None:
            return None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise MethodError("invalidArguments", f"'{key}' must be a list of ids")
        return ids


def account_for(server: MailServer, identity: Identity, account_id: Any) -> int:
    if not isinstance(account_id, str):
        raise MethodError("invalidArguments", "accountId is required")
    pid = parse_id(account_id)
    principal = server.store.principals.get(pid) if pid is not None else None
    if principal is None:
        raise MethodError("accountNotFound")
    if identity.principal_id != pid and not identity.is_admin:
        server.metrics.inc("jmap_forbidden")
        raise MethodError("forbidden", "this account is not accessible to you")
    return principal.id


def _pointer(value: Any, path: str) -> Any:
    """Evaluate an RFC 6901 JSON pointer with JMAP's ``*`` extension (RFC 8620 §3.7)."""
    if path == "":
        return value
    if not path.startswith("/"):
        raise KeyError(path)
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]

    def walk(v: Any, i: int) -> Any:
        if i == len(parts):
            return v
        key = parts[i]
        if isinstance(v, list):
            if key == "*":
                out: list[Any] = []
                for item in v:
                    r = walk(item, i + 1)
                    out.extend(r if isinstance(r, list) else [r])
                return out
            if not key.isdigit() or int(key) >= len(v):
                raise KeyError(path)
            return walk(v[int(key)], i + 1)
        if isinstance(v, dict) and key in v:
            return walk(v[key], i + 1)
        raise KeyError(path)

    return walk(value, 0)


def resolve_references(args: dict[str, Any], responses: list[list[Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in args.items():
        if not key.startswith("#"):
            out[key] = value
            continue
        plain = key[1:]
        if plain in args:
            raise MethodError("invalidArguments", f"both '{plain}' and '{key}' given")
        if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in ("resultOf", "name", "path")):
            raise MethodError("invalidResultReference", f"'{key}' is not a ResultReference")
        match = next((r for r in responses if r[2] == value["resultOf"]), None)
        if match is None or match[0] != value["name"]:
            raise MethodError("invalidResultReference", f"no '{value['name']}' response for '{value['resultOf']}'")
        try:
            out[plain] = _pointer(match[1], value["path"])
        except KeyError:
            raise MethodError("invalidResultReference", f"path {value['path']} not found") from None
    return out


def parse_request(body: bytes, server: MailServer) -> tuple[set[str], list[list[Any]], dict[str, str]]:
    """Validate a JMAP Request object; raise :class:`RequestError` for a malformed one."""
    limits = server.cfg.jmap
    if len(body) > limits.max_size_request:
        server.metrics.inc("limit_size_request")
        raise RequestError("urn:ietf:params:jmap:error:limit", 400, "request too large", limit="maxSizeRequest")
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        server.metrics.inc("jmap_not_json")
        raise RequestError("urn:ietf:params:jmap:error:notJSON", 400, "request body is not valid JSON") from None
    using = req.get("using") if isinstance(req, dict) else None
    calls = req.get("methodCalls") if isinstance(req, dict) else None
    created = req.get("createdIds", {}) if isinstance(req, dict) else None
    if (
        not isinstance(using, list)
        or not all(isinstance(u, str) for u in using)
        or not isinstance(calls, list)
        or not all(
            isinstance(c, list) and len(c) == 3 and isinstance(c[0], str) and isinstance(c[1], dict) and isinstance(c[2], str)
            for c in calls
        )
        or not isinstance(created, dict)
    ):
        server.metrics.inc("jmap_not_request")
        raise RequestError("urn:ietf:params:jmap:error:notRequest", 400, "not a valid JMAP Request object")
    unknown = [u for u in using if u not in KNOWN_CAPABILITIES]
    if unknown:
        raise RequestError("urn:ietf:params:jmap:error:unknownCapability", 400, f"unknown capability: {unknown[0]}")
    if len(calls) > limits.max_calls_in_request:
        server.metrics.inc("limit_calls_in")
        raise RequestError("urn:ietf:params:jmap:error:limit", 400, "too many method calls", limit="maxCallsInRequest")
    return set(using), calls, {str(k): str(v) for k, v in created.items()}


def process(
    server: MailServer, identity: Identity, using: set[str], calls: list[list[Any]], created_ids: dict[str, str]
) -> list[list[Any]]:
    """Run the method calls in order and return methodResponses (synchronous; run in a worker thread)."""
    responses: list[list[Any]] = []
    for name, args, call_id in calls:
        server.metrics.inc("jmap_method_call")
        spec = METHODS.get(name)
        if spec is None or spec.capability not in using:
            server.metrics.inc("jmap_unknown_method")
            responses.append(["error", {"type": "unknownMethod"}, call_id])
            continue
        try:
            resolved = resolve_references(args, responses)
            call = Call(server, identity, name, resolved, call_id, using, created_ids)
            result = spec.handler(call)
            responses.append([name, result, call_id])
            responses.extend(call.extra_responses)
        except MethodError as exc:
            if exc.type == "invalidArguments":
                server.metrics.inc("jmap_invalid_arguments")
            responses.append(["error", exc.to_json(), call_id])
        except Exception:  # a bug must cost one call a serverFail, never the request a 500
            log.exception("JMAP method %s failed", name)
            responses.append(["error", {"type": "serverFail", "description": "internal error"}, call_id])
    return responses


def get_ids_limit(call: Call, ids: list[str] | None) -> None:
    if ids is not None and len(ids) > call.limits.max_objects_in_get:
        raise MethodError("requestTooLarge", f"at most {call.limits.max_objects_in_get} ids per /get")


def set_limit(call: Call) -> None:
    n = sum(
        len(call.args.get(k) or {}) if isinstance(call.args.get(k), dict | list) else 0
        for k in ("create", "update", "destroy")
    )
    if n > call.limits.max_objects_in_set:
        raise MethodError("requestTooLarge", f"at most {call.limits.max_objects_in_set} objects per /set")


def filter_properties(obj: dict[str, Any], properties: list[str] | None, always: tuple[str, ...] = ("id",)) -> dict[str, Any]:
    if properties is None:
        return obj
    return {k: v for k, v in obj.items() if k in properties or k in always}


def check_properties(call: Call, known: set[str] | frozenset[str]) -> list[str] | None:
    props = call.args.get("properties")
    if props is None:
        return None
    if not isinstance(props, list) or not all(isinstance(p, str) for p in props):
        raise MethodError("invalidArguments", "'properties' must be a list of strings")
    bad = [p for p in props if p not in known and not p.startswith("header:")]
    if bad:
        raise MethodError("invalidArguments", f"unknown property: {bad[0]}")
    return props


__all__ = [
    "BLOB", "CORE", "MAIL", "PRINCIPALS", "QUOTA", "SIEVE", "STALWART", "SUBMISSION", "VACATION",
    "Call", "MethodError", "RequestError", "SetError", "account_for", "check_properties", "filter_properties",
    "get_ids_limit", "jmap_id", "method", "parse_id", "process", "set_limit",
]


T = TypeVar("T")


def filter_predicate(f: Any, condition: Callable[[str, Any], Callable[[T], bool]]) -> Callable[[T], bool]:
    """An RFC 8620 §5.5 filter (a FilterCondition or a nested FilterOperator; None = everything) as one predicate
    over objects; ``condition(property, value)`` turns one condition property into a predicate (or raises MethodError)."""
    if f is None:
        return lambda o: True
    if not isinstance(f, dict):
        raise MethodError("invalidArguments", "a filter must be an object")
    if "operator" in f:
        op, conds = f.get("operator"), f.get("conditions")
        if op not in ("AND", "OR", "NOT") or not isinstance(conds, list) or set(f) - {"operator", "conditions"}:
            raise MethodError("invalidArguments", "a FilterOperator needs operator AND/OR/NOT and conditions")
        subs = [filter_predicate(c, condition) for c in conds]
        if op == "AND":
            return lambda o: all(s(o) for s in subs)
        if op == "OR":
            return lambda o: any(s(o) for s in subs)
        return lambda o: not any(s(o) for s in subs)
    tests = [condition(key, value) for key, value in f.items()]
    return lambda o: all(t(o) for t in tests)
