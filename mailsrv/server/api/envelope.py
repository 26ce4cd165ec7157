"""Stalwart 0.15's management envelope: ``{"data": …}`` on success, tagged errors, and request parsing.

Management errors are answered as HTTP 200 with ``{"error": "<kind>", …}`` exactly like Stalwart's
``ManagementApiError`` (``fieldAlreadyExists``, ``fieldMissing``, ``notFound``, ``unsupported``, ``other``);
malformed requests (bad JSON, wrong types, garbage numbers) are ``400`` problem+json ("Invalid parameters");
unknown routes and unknown queue ids are ``404`` problem+json.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

MAX_BODY = 1024 * 1024  # Stalwart caps management request bodies at 1 MiB
MAX_STRING = 512  # Stalwart rejects principal values longer than this


class ManageError(Exception):
    """A management error answered in Stalwart's tagged shape (HTTP 200)."""

    def __init__(self, kind: str, **fields: Any) -> None:
        super().__init__(kind)
        self.kind = kind
        self.fields = fields

    def body(self) -> dict[str, Any]:
        return {"error": self.kind, **self.fields}


def field_exists(field: str, value: str) -> ManageError:
    return ManageError("fieldAlreadyExists", field=field, value=value)


def field_missing(field: str) -> ManageError:
    return ManageError("fieldMissing", field=field)


def not_found(item: str) -> ManageError:
    return ManageError("notFound", item=item)


def unsupported(details: str) -> ManageError:
    return ManageError("unsupported", details=details)


def other(details: str, reason: str | None = None) -> ManageError:
    return ManageError("other", details=details, reason=reason)


class BadRequest(Exception):
    """A request that cannot be parsed: answered 400 problem+json."""


class NotFound(Exception):
    """The addressed resource does not exist: answered 404 problem+json."""


def data(payload: Any) -> web.Response:
    return web.json_response({"data": payload})


def problem(status: int, title: str, detail: str) -> web.Response:
    body = {"type": "about:blank", "status": status, "title": title, "detail": detail}
    return web.Response(status=status, text=json.dumps(body), content_type="application/problem+json")


async def json_body(request: web.Request) -> Any:
    """The request body parsed as JSON (BadRequest when too large, empty or not JSON)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest("request body too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequest("request body too large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None


def int_param(request: web.Request, name: str, default: int = 0) -> int:
    """A non-negative integer query parameter (BadRequest for anything else)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"parameter '{name}' must be a non-negative integer")
    return int(raw)


def text(value: Any, field: str) -> str:
    """A string value of at most 512 characters."""
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string")
    if len(value) > MAX_STRING:
        raise BadRequest(f"'{field}' is too long")
    return value


def text_list(value: Any, field: str) -> list[str]:
    """A string or a list of strings (Stalwart accepts both for list fields)."""
    if isinstance(value, str):
        return [text(value, field)]
    if not isinstance(value, list):
        raise BadRequest(f"'{field}' must be a string or a list of strings")
    return [text(v, field) for v in value]


def page_slice(items: list[Any], page: int, limit: int) -> list[Any]:
    """Stalwart paging: page is 1-based (0 and 1 both mean the first page), limit 0 = unlimited."""
    if limit == 0:
        return items
    start = (max(page, 1) - 1) * limit
    return items[start : start + limit]
