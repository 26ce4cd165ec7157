"""Stalwart 0.15's management REST API under ``/api``: principals and the outbound queue.

Every route needs HTTP Basic credentials of an administrator (the configured admin, or an account with the
``admin`` role): none or wrong → 401 with ``WWW-Authenticate`` (counted toward a ban by the AuthGuard),
a non-admin → 403 (``security_unauthorized``). Payloads and errors follow ``envelope.py``; principal and
queue semantics (and where mailsrv deliberately differs, e.g. secrets are never returned) are documented
in ``directory.py`` and ``queue.py``.

Routes: ``GET|POST /api/principal``, ``GET|PATCH|DELETE /api/principal/{name}``, ``GET /api/queue/messages``,
``GET|PATCH|DELETE /api/queue/messages/{id}``, ``GET /api/queue/status``, ``PATCH /api/queue/status/{stop|start}``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from ..http import SERVER_KEY, require_admin
from . import queue
from .directory import ALL_TYPES, Directory
from .envelope import BadRequest, ManageError, NotFound, data, int_param, json_body, problem

if TYPE_CHECKING:
    from ..app import MailServer

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _admin(request: web.Request) -> None:
    try:
        require_admin(request)
    except web.HTTPForbidden:
        request.app[SERVER_KEY].metrics.inc("security_unauthorized")
        raise


def managed(handler: Handler) -> Handler:
    """Authenticate an admin, then answer management errors in Stalwart's shapes."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.Response:
        await asyncio.to_thread(_admin, request)  # password hashing stays off the event loop
        try:
            return await handler(request)
        except ManageError as exc:
            return web.json_response(exc.body())
        except BadRequest as exc:
            request.app[SERVER_KEY].metrics.inc("resource_bad_parameters")
            return problem(400, "Invalid parameters", str(exc))
        except NotFound:
            request.app[SERVER_KEY].metrics.inc("resource_not_found")
            return problem(404, "Not Found", "The requested resource does not exist on this server.")

    return wrapper


def _server(request: web.Request) -> MailServer:
    return request.app[SERVER_KEY]


def _csv(request: web.Request, *names: str) -> list[str]:
    for name in names:
        raw = request.query.get(name)
        if raw:
            return [v.strip() for v in raw.split(",") if v.strip()]
    return []


# -- principals ------------------------------------------------------------------------------------
@managed
async def list_principals(request: web.Request) -> web.Response:
    known = {t: t for t in ALL_TYPES} | {"superuser": "individual", "tenant": "tenant", "apiKey": "apiKey",
                                         "oauthClient": "oauthClient"}
    types = {known[t] for t in _csv(request, "types", "type") if t in known}  # unknown names are ignored
    fields = set(_csv(request, "fields"))
    page, limit = int_param(request, "page"), int_param(request, "limit")
    directory = Directory(_server(request))
    result = await asyncio.to_thread(
        directory.list_page, types, request.query.get("filter", ""), page, limit, fields, "count" in request.query
    )
    return data(result)


@managed
async def create_principal(request: web.Request) -> web.Response:
    body = await json_body(request)
    return data(await asyncio.to_thread(Directory(_server(request)).create, body))


@managed
async def get_principal(request: web.Request) -> web.Response:
    return data(await asyncio.to_thread(Directory(_server(request)).get, request.match_info["name"]))


@managed
async def update_principal(request: web.Request) -> web.Response:
    body = await json_body(request)
    await asyncio.to_thread(Directory(_server(request)).update, request.match_info["name"], body)
    return data(None)


@managed
async def delete_principal(request: web.Request) -> web.Response:
    await asyncio.to_thread(Directory(_server(request)).delete, request.match_info["name"])
    return data(None)


# -- queue -----------------------------------------------------------------------------------------
def _future(request: web.Request, name: str) -> float | None:
    """An RFC 3339 instant in the future; past or unparsable values are ignored, as on Stalwart."""
    raw = request.query.get(name)
    ts = queue.parse_rfc3339(raw) if raw else None
    return ts if ts is not None and ts >= time.time() else None


def _wake_queue(request: web.Request) -> None:
    """Let the queue look for due messages now (Stalwart's QueueEvent::Refresh)."""
    worker = _server(request).queue
    if worker is not None:
        worker.wake()


def _queue_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 19:
        raise NotFound
    return int(raw)


@managed
async def list_queue(request: web.Request) -> web.Response:
    q = request.query
    page, limit, max_total = int_param(request, "page"), int_param(request, "limit"), int_param(request, "max-total")
    before, after = _future(request, "before"), _future(request, "after")
    due = [("<", before)] if before is not None else []
    due += [(">", after)] if after is not None else []
    text = q.get("text")  # Stalwart: text replaces from/to
    flt = queue.Filter(text=text, from_=None if text else q.get("from"), to=None if text else q.get("to"), due=due,
                       nothing=q.get("queue") not in (None, "", queue.QUEUE_NAME))
    db = _server(request).store.db
    return data(await asyncio.to_thread(queue.list_v015, db, flt, page, limit, max_total, "values" in q))


@managed
async def get_queued(request: web.Request) -> web.Response:
    msg = await asyncio.to_thread(queue.get, _server(request).store.db, _queue_id(request))
    if msg is None:
        raise NotFound
    return data(queue.v015(msg))


@managed
async def reschedule_queued(request: web.Request) -> web.Response:
    at = _future(request, "at")
    found = await asyncio.to_thread(
        queue.reschedule, _server(request).store.db, _queue_id(request), at, request.query.get("filter")
    )
    if found is None:
        raise NotFound
    if found:
        _wake_queue(request)
    return data(found)


@managed
async def delete_queued(request: web.Request) -> web.Response:
    found = await asyncio.to_thread(queue.cancel, _server(request).store.db, _queue_id(request), request.query.get("filter"))
    if found is None:
        raise NotFound
    return data(found)


@managed
async def queue_status(request: web.Request) -> web.Response:
    return data(await asyncio.to_thread(queue.is_running, _server(request).store.db))


@managed
async def set_queue_status(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    if action not in ("stop", "start"):
        raise NotFound
    was_running = await asyncio.to_thread(queue.set_running, _server(request).store.db, action == "start")
    if action == "start":
        _wake_queue(request)
    return data(was_running)


@managed
async def unknown(request: web.Request) -> web.Response:
    raise NotFound


def setup(app: web.Application, server: MailServer) -> None:
    """Register the /api routes."""
    r = app.router
    r.add_get("/api/principal", list_principals)
    r.add_post("/api/principal", create_principal)
    r.add_get("/api/principal/{name}", get_principal)
    r.add_patch("/api/principal/{name}", update_principal)
    r.add_delete("/api/principal/{name}", delete_principal)
    r.add_get("/api/queue/messages", list_queue)
    r.add_get("/api/queue/messages/{id}", get_queued)
    r.add_patch("/api/queue/messages/{id}", reschedule_queued)
    r.add_delete("/api/queue/messages/{id}", delete_queued)
    r.add_get("/api/queue/status", queue_status)
    r.add_patch("/api/queue/status/{action}", set_queue_status)
    r.add_route("*", "/api", unknown)
    r.add_route("*", "/api/{tail:.*}", unknown)
