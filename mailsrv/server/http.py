"""mailsrv's HTTP listener: JMAP (session, API, upload, download), /api management, metrics, health."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mailsrv import __version__

from .app import Identity, MailServer
from .jmap import RequestError, process
from .jmap.core import MethodError, account_for, parse_request
from .jmap.session import session_object
from .store.ids import jmap_id

SERVER_KEY = web.AppKey("server", MailServer)
REALM = 'Basic realm="mailsrv"'


def problem(status: int, type_: str, detail: str, **extra: Any) -> web.Response:
    body = {"type": type_, "status": status, "detail": detail, **extra}
    return web.Response(status=status, text=json.dumps(body), content_type="application/problem+json")


def unauthorized() -> web.Response:
    resp = problem(401, "about:blank", "You have to authenticate first.")
    resp.headers["WWW-Authenticate"] = REALM
    return resp


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (user, password) if sep else None


def peer_ip(request: web.Request) -> str:
    return request.remote or "unknown"


def authenticate(request: web.Request) -> Identity:
    """The request's identity from HTTP Basic; raises 401 (and counts failures toward a ban).

    A failure always counts (``auth_failed``); a success counts (``auth_success``) only when the password was
    verified, not when the login was answered from the credential cache, as on Stalwart: a client that sends
    the same credentials with every request is one authentication per cache period, not one per request.
    """
    server = request.app[SERVER_KEY]
    creds = basic_credentials(request)
    if creds is None:
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": REALM}, text='{"detail":"authentication required"}',
                                   content_type="application/problem+json")
    identity, verified = server.login(*creds)
    ip = peer_ip(request)
    if identity is None:
        server.guard.failure(ip)
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": REALM}, text='{"detail":"invalid credentials"}',
                                   content_type="application/problem+json")
    if verified:
        server.guard.success(ip)
    return identity


def require_admin(request: web.Request) -> Identity:
    identity = authenticate(request)
    if not identity.is_admin:
        raise web.HTTPForbidden(text='{"detail":"administrator rights required"}', content_type="application/problem+json")
    return identity


class Slots:
    """Per-identity concurrency limit (maxConcurrentRequests / maxConcurrentUpload)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy: Counter[str] = Counter()

    def acquire(self, key: str) -> bool:
        if self.busy[key] >= self.limit:
            return False
        self.busy[key] += 1
        return True

    def release(self, key: str) -> None:
        self.busy[key] -= 1


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def well_known(request: web.Request) -> web.Response:
    raise web.HTTPTemporaryRedirect("/jmap/session")


async def jmap_session(request: web.Request) -> web.Response:
    identity = authenticate(request)
    return web.json_response(session_object(request.app[SERVER_KEY], identity, _base_url(request)))


async def jmap_api(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    identity = authenticate(request)
    slots: Slots = request.app["request_slots"]
    key = identity.name
    if not slots.acquire(key):
        server.metrics.inc("limit_concurrent_request")
        resp = problem(429, "urn:ietf:params:jmap:error:limit", "too many concurrent requests", limit="maxConcurrentRequests")
        resp.headers["Retry-After"] = "1"
        return resp
    try:
        limit = server.cfg.jmap.max_size_request
        if request.content_length is not None and request.content_length > limit:
            server.metrics.inc("limit_size_request")
            return problem(400, "urn:ietf:params:jmap:error:limit", "request too large", limit="maxSizeRequest")
        body = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > limit:
                break
        try:
            using, calls, created = parse_request(bytes(body), server)
        except RequestError as exc:
            return problem(exc.status, exc.type, exc.detail, **exc.extra)
        responses = await asyncio.to_thread(process, server, identity, using, calls, created)
        out: dict[str, Any] = {"methodResponses": responses,
                               "sessionState": session_object(server, identity, _base_url(request))["state"]}
        if created:
            out["createdIds"] = created
        return web.json_response(out)
    finally:
        slots.release(key)


async def jmap_upload(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    identity = authenticate(request)
    try:
        pid = account_for(server, identity, request.match_info["account"])
    except MethodError as exc:
        return problem(403 if exc.type == "forbidden" else 404, "about:blank", exc.type)
    limit = server.cfg.jmap.max_size_upload
    if request.content_length is not None and request.content_length > limit:
        server.metrics.inc("limit_size_upload")
        return problem(413, "urn:ietf:params:jmap:error:limit", "upload too large", limit="maxSizeUpload")
    slots: Slots = request.app["upload_slots"]
    if not slots.acquire(identity.name):
        server.metrics.inc("limit_concurrent_upload")
        resp = problem(429, "urn:ietf:params:jmap:error:limit", "too many concurrent uploads", limit="maxConcurrentUpload")
        resp.headers["Retry-After"] = "1"
        return resp
    try:
        result = await server.store.blobs.put_stream(request.content.iter_chunked(1 << 16), limit)
    finally:
        slots.release(identity.name)
    if result is None:
        server.metrics.inc("limit_size_upload")
        return problem(413, "urn:ietf:params:jmap:error:limit", "upload too large", limit="maxSizeUpload")
    digest, size = result
    type_ = request.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip() or "application/octet-stream"
    await asyncio.to_thread(server.store.add_upload, pid, digest, size, type_, server.cfg.jmap.upload_ttl)
    return web.json_response({"accountId": jmap_id(pid), "blobId": digest, "type": type_, "size": size}, status=201)


async def jmap_download(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    identity = authenticate(request)
    try:
        pid = account_for(server, identity, request.match_info["account"])
    except MethodError as exc:
        return problem(403 if exc.type == "forbidden" else 404, "about:blank", exc.type)
    blob_id = request.match_info["blob"]
    name = request.match_info.get("name", "blob")
    ctype = request.query.get("accept") or "application/octet-stream"
    headers = {
        "Content-Type": ctype,
        "Content-Disposition": f"attachment; filename*=UTF-8''{urllib.parse.quote(name)}",
        "Cache-Control": "private, immutable, max-age=31536000",
    }
    if "_" in blob_id:  # a body part of a message, "<message blobId>_<partId>" (jmap/email_body.py)
        from .jmap.email_body import read_blob

        data = await asyncio.to_thread(read_blob, server.store, pid, blob_id)
        if data is None:
            return problem(404, "about:blank", "blob not found")
        return web.Response(body=data, headers=headers)
    try:
        path = server.store.blobs.path(blob_id)
    except ValueError:
        return problem(404, "about:blank", "blob not found")
    readable = await asyncio.to_thread(server.store.mail.account_can_read_blob, pid, blob_id)
    if not readable or not path.exists():
        return problem(404, "about:blank", "blob not found")
    return web.FileResponse(path, headers=headers)


async def metrics_endpoint(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    if server.cfg.metrics_user:
        creds = basic_credentials(request)
        if creds != (server.cfg.metrics_user, server.metrics_password):
            if creds is not None:
                server.guard.failure(peer_ip(request))
            return unauthorized()
    return web.Response(body=server.metrics.render().encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def healthz_live(request: web.Request) -> web.Response:
    return web.Response(status=200, text="")


async def healthz_ready(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    try:
        await asyncio.to_thread(server.store.db.one, "SELECT 1")
    except Exception:  # noqa: BLE001
        return web.Response(status=503, text="")
    return web.Response(status=200, text="")


@web.middleware
async def guard_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    if server.guard.is_banned(peer_ip(request)):
        return problem(403, "about:blank", "your address is banned")
    server.active["http"] += 1
    start = time.monotonic()
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:  # never a bare 500 page for a client mistake we did not foresee
        import logging

        logging.getLogger("mailsrv.http").exception("HTTP handler failed for %s", request.path)
        return problem(500, "about:blank", "internal error")
    finally:
        server.active["http"] -= 1
        server.metrics.observe("http_request_time", (time.monotonic() - start) * 1000)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Name the server and its version, as Stalwart and Cyrus do; exports record it in their manifest."""
    response.headers["Server"] = f"mailsrv/{__version__}"


def build_app(server: MailServer) -> web.Application:
    app = web.Application(middlewares=[guard_middleware], client_max_size=max(server.cfg.jmap.max_size_request, 1 << 20) + 1)
    app[SERVER_KEY] = server
    app.on_response_prepare.append(_server_header)
    app["request_slots"] = Slots(server.cfg.jmap.max_concurrent_requests)
    app["upload_slots"] = Slots(server.cfg.jmap.max_concurrent_upload)
    app.router.add_get("/.well-known/jmap", well_known)
    app.router.add_get("/jmap/session", jmap_session)
    app.router.add_post("/jmap/", jmap_api)
    app.router.add_post("/jmap", jmap_api)
    app.router.add_post("/jmap/upload/{account}/", jmap_upload)
    app.router.add_post("/jmap/upload/{account}", jmap_upload)
    app.router.add_get("/jmap/download/{account}/{blob}/{name}", jmap_download)
    app.router.add_get("/jmap/download/{account}/{blob}", jmap_download)
    app.router.add_get("/metrics/prometheus", metrics_endpoint)
    app.router.add_get("/healthz/live", healthz_live)
    app.router.add_get("/healthz/ready", healthz_ready)
    from .api import rest

    rest.setup(app, server)
    return app
