"""A JMAP client for any server (mailsrv, Stalwart 0.15/0.16, Cyrus), built on jmapc.

:class:`JmapClient` discovers the session (``/.well-known/jmap`` or an explicit URL, following 301/307 with
credentials re-sent to the same origin), resolves relative session URLs, exposes the session limits, and sends
several method calls per request with back-references (:func:`ref`). It streams uploads and downloads for any
``accountId`` (the account can be one the login impersonates and that is not in its session). Object helpers
live in :mod:`.mail` (Mailbox/Email) and :mod:`.account_data` (Identity, Sieve, Vacation, Quota, Blob).

jmapc 0.4.0 hard-codes ``https://host/.well-known/jmap``, uses session URLs verbatim and has no Email/import,
Blob, Sieve or Vacation; :attr:`JmapClient.jmapc` is a jmapc client running on this client's transport, session
and account, so jmapc's typed methods (``EmailQuery``, ``MailboxGet`` …) work too.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import jmapc
import jmapc.session
import requests
from jmapc.api import APIRequest, APIResponse
from jmapc.methods import CustomMethod
from jmapc.methods import Invocation as JmapcInvocation
from jmapc.methods.base import Method as JmapcMethod

from .account_data import AccountDataMethods
from .calls import READ_ONLY_SUFFIXES, Invocation, Response, ref
from .errors import (
    AccountNotFound,
    BlobMismatch,
    BlobNotFound,
    ConnectError,
    HttpError,
    ProtocolError,
    UnsupportedCapability,
    UploadTooLarge,
    method_error,
)
from .mail import MailMethods
from .models import CORE, MAIL, CoreCapability, Download, Session, Upload
from .transport import Auth, RetryPolicy, Transport, log

CallLike = Invocation | tuple[str, Mapping[str, Any], str] | list[Any] | JmapcMethod | JmapcInvocation


def expand(template: str, **values: str) -> str:
    """RFC 6570 level-1 expansion of a session URL template (values are percent-encoded)."""
    out = template
    for key, value in values.items():
        out = out.replace("{" + key + "}", quote(value, safe=""))
    return out


class JmapCore:
    """Session, limits, capabilities, requests and blob transfer; see :class:`JmapClient`."""

    def __init__(
        self,
        url: str = "",
        *,
        auth: Auth | None,
        session_url: str = "",
        account_id: str | None = None,
        ca_file: str = "",
        allow_plain_http: bool = False,
        timeout: tuple[float, float] = (10.0, 120.0),
        retry: RetryPolicy | None = None,
        max_objects_in_get: int | None = None,
        max_calls_in_request: int | None = None,
        transport: Transport | None = None,
    ) -> None:
        if not url and not session_url:
            raise ValueError("JmapClient needs the server URL or the JMAP session URL")
        self.transport = transport or Transport(
            auth, ca_file=ca_file, allow_plain_http=allow_plain_http, timeout=timeout, retry=retry
        )
        self.session_url = self.transport.check(session_url or url.rstrip("/") + "/.well-known/jmap", "JMAP session URL")
        self._account_id = account_id
        self._overrides = {"max_objects_in_get": max_objects_in_get, "max_calls_in_request": max_calls_in_request}
        self._session: Session | None = None
        self._session_stale = False
        self._api_session_state: Any = None
        self._session_json: dict[str, Any] = {}
        self.server_software: str | None = None  # the session response's Server header ("mailsrv/0.1.0", "Cyrus-HTTP/3.6.1 …")
        self._lock = threading.Lock()
        self._request_slots: threading.BoundedSemaphore | None = None
        self._upload_slots: threading.BoundedSemaphore | None = None
        self._probes: dict[tuple[str, str], bool] = {}

    # -- session -----------------------------------------------------------------------------------
    @property
    def session(self) -> Session:
        """The JMAP session, fetched on first use and again after a response reports a new sessionState."""
        with self._lock:
            if self._session is None or self._session_stale:
                self._session = self._fetch_session()
                self._session_stale = False
                if self._request_slots is None:
                    core = self._session.core
                    self._request_slots = threading.BoundedSemaphore(max(1, core.max_concurrent_requests))
                    self._upload_slots = threading.BoundedSemaphore(max(1, core.max_concurrent_upload))
            return self._session

    def refresh_session(self) -> Session:
        with self._lock:
            self._session_stale = True
        return self.session

    def _fetch_session(self) -> Session:
        resp, final_url = self.transport.get_following(self.session_url)
        self.transport.raise_for_status(resp, f"JMAP session {self.session_url}")
        try:
            data = resp.json()
            session = Session.parse(data, final_url)
        except ValueError as exc:
            raise ProtocolError(f"{final_url} is not a JMAP session resource: {exc}") from None
        for what, value in (("apiUrl", session.api_url), ("uploadUrl", session.upload_url), ("downloadUrl", session.download_url)):
            self.transport.check(value, f"session {what}")
        resolved = dict(data)
        resolved.update(apiUrl=session.api_url, uploadUrl=session.upload_url, downloadUrl=session.download_url,
                        eventSourceUrl=session.event_source_url)
        self._session_json = resolved
        self.server_software = resp.headers.get("Server", "")[:200] or None
        log.debug("JMAP session of %s at %s: %d accounts", self.transport.who(), final_url, len(session.accounts))
        return session

    @property
    def limits(self) -> CoreCapability:
        """The server's core limits, lowered by the caller's overrides."""
        core = self.session.core
        changes = {k: min(v, getattr(core, k)) for k, v in self._overrides.items() if v}
        return replace(core, **changes)

    @property
    def account_id(self) -> str:
        """The account this client works on: the one given, else the session's primary mail account."""
        if self._account_id:
            return self._account_id
        session = self.session
        aid = session.primary_accounts.get(MAIL) or next(iter(session.accounts), None)
        if not aid:
            raise AccountNotFound("accountNotFound", "session", "", f"the session of {self.transport.who()} has no mail account")
        return aid

    def resolve_account(self, account_id: str | None) -> str:
        return account_id or self.account_id

    def capabilities(self, account_id: str | None = None) -> frozenset[str]:
        """Capabilities usable for an account: the server's, narrowed to the account's when the session lists it.

        An account reached by impersonation is not in the session; then the server-wide set is returned.
        """
        session = self.session
        server = set(session.capabilities)
        aid = account_id or self._account_id or session.primary_accounts.get(MAIL) or next(iter(session.accounts), None)
        account = session.accounts.get(aid) if aid else None
        if account is None:
            return frozenset(server)
        return frozenset(server & (set(account.account_capabilities) | {CORE}))

    def has_capability(self, urn: str, account_id: str | None = None) -> bool:
        return urn in self.capabilities(account_id)

    def require(self, urn: str, account_id: str | None = None) -> str:
        aid = self.resolve_account(account_id)
        if not self.has_capability(urn, aid):
            raise UnsupportedCapability(urn, aid)
        return aid

    # -- requests ----------------------------------------------------------------------------------
    def request(self, calls: Sequence[CallLike], using: Iterable[str] | None = None, *, raise_errors: bool = True) -> Response:
        """Send several method calls in one request; back-references between them work.

        ``calls`` are :class:`Invocation` / ``(name, args, callId)`` or jmapc methods. A request-level problem
        raises :class:`~.errors.JmapRequestError`; with ``raise_errors`` the first method error raises its
        typed :class:`~.errors.JmapMethodError` (e.g. :class:`~.errors.CannotCalculateChanges`).
        """
        if not calls:
            return Response([])
        limit = self.limits.max_calls_in_request
        if len(calls) > limit:
            raise ValueError(f"{len(calls)} method calls exceed the server's maxCallsInRequest of {limit}")
        using_set = set(using or (CORE, MAIL))
        invocations: list[JmapcInvocation | JmapcMethod] = []
        names: list[str] = []
        for n, call in enumerate(calls):
            if isinstance(call, JmapcMethod | JmapcInvocation):
                invocations.append(call)
                method = call.method if isinstance(call, JmapcInvocation) else call
                names.append(method.jmap_method_name)
                continue
            inv = call if isinstance(call, Invocation) else Invocation(str(call[0]), dict(call[1]), str(call[2]))
            custom = CustomMethod(data=inv.args)
            custom.jmap_method = inv.name
            custom.using = using_set  # type: ignore[misc]  # per-instance, jmapc resets the class attribute
            invocations.append(JmapcInvocation(id=inv.id or str(n), method=custom))
            names.append(inv.name)
        api_request = APIRequest.from_calls(self._account_id or "", invocations)
        api_request.using |= using_set
        body: dict[str, Any] = dict(api_request.to_dict())
        idempotent = all(name.endswith(READ_ONLY_SUFFIXES) for name in names)
        raw = self._post(body, idempotent)
        response = self._parse_response(raw)
        if raise_errors:
            sent = {c[2]: c[0] for c in body["methodCalls"]}
            for inv in response.invocations:
                if inv.name == "error":
                    raise method_error(str(inv.args.get("type", "serverFail")), sent.get(inv.id, "?"), inv.id, inv.args)
        return response

    def _post(self, body: dict[str, Any], idempotent: bool) -> dict[str, Any]:
        session = self.session
        assert self._request_slots is not None
        with self._request_slots:
            resp = self.transport.send("POST", session.api_url, json_body=body, idempotent=idempotent)
        self.transport.raise_for_status(resp, "JMAP request")
        try:
            raw = resp.json()
        except ValueError:
            raise ProtocolError(f"{session.api_url} answered a JMAP request with non-JSON ({resp.headers.get('Content-Type')})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("methodResponses"), list):
            raise ProtocolError(f"{session.api_url} answered without methodResponses")
        state = raw.get("sessionState")
        if state is not None and state != session.state and state != self._api_session_state:
            self._session_stale = True  # RFC 8620 §3.4: refetch the session before its next use
        self._api_session_state = state  # a server whose two states never agree costs one refetch per change
        return raw

    @staticmethod
    def _parse_response(raw: dict[str, Any]) -> Response:
        out = []
        for item in raw["methodResponses"]:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and isinstance(item[1], dict)):
                raise ProtocolError(f"malformed method response {str(item)[:100]}")
            out.append(Invocation(item[0], item[1], str(item[2])))
        return Response(out, str(raw.get("sessionState", "")), raw.get("createdIds"))

    def get_objects(self, type_name: str, ids: Sequence[str], properties: list[str] | None = None, *,
                    account_id: str | None = None, using: Sequence[str] = (CORE, MAIL)) -> tuple[list[dict[str, Any]], list[str], str]:
        """``<type>/get`` for many ids: chunks of maxObjectsInGet, several calls per request.

        Returns the objects, the ids not found and the state of the last response.
        """
        aid = self.resolve_account(account_id)
        limits = self.limits
        per_call = max(1, limits.max_objects_in_get)
        per_request = max(1, limits.max_calls_in_request)
        chunks = list(_chunks(list(ids), per_call))
        found: list[dict[str, Any]] = []
        not_found: list[str] = []
        state = ""
        for first in range(0, len(chunks), per_request):
            calls = [
                Invocation(f"{type_name}/get", {"accountId": aid, "ids": list(chunk), "properties": properties}, f"g{n}")
                for n, chunk in enumerate(chunks[first : first + per_request])
            ]
            resp = self.request(calls, using)
            for call in calls:
                args = resp.args(call.id)
                found += [o for o in args.get("list") or [] if isinstance(o, dict)]
                not_found += [str(i) for i in args.get("notFound") or []]
                state = str(args.get("state", state))
        return found, not_found, state

    # -- blobs -------------------------------------------------------------------------------------
    def upload(self, data: bytes | Path | IO[bytes], *, account_id: str | None = None,
               content_type: str = "application/octet-stream") -> Upload:
        """Upload bytes, a file (streamed from disk) or an open binary file to an account (RFC 8620 §6.1)."""
        aid = self.resolve_account(account_id)
        session = self.session
        url = expand(session.upload_url, accountId=aid)
        limit = self.limits.max_size_upload
        if isinstance(data, Path):
            with data.open("rb") as fh:
                return self._upload(url, fh, data.stat().st_size, limit, aid, content_type)
        if isinstance(data, bytes):
            return self._upload(url, data, len(data), limit, aid, content_type)
        start = data.tell()
        size = data.seek(0, os.SEEK_END) - start
        data.seek(start)
        return self._upload(url, data, size, limit, aid, content_type)

    def _upload(self, url: str, body: bytes | IO[bytes], size: int, limit: int, aid: str, content_type: str) -> Upload:
        if size > limit:
            raise UploadTooLarge(f"upload of {size} bytes to account {aid} exceeds the server's maxSizeUpload of {limit}")
        assert self._upload_slots is not None
        with self._upload_slots:
            resp = self.transport.send("POST", url, data=body, headers={"Content-Type": content_type, "Content-Length": str(size)})
        self.transport.raise_for_status(resp, f"upload to account {aid}")
        try:
            raw = resp.json()
            return Upload(account_id=str(raw.get("accountId", aid)), blob_id=str(raw["blobId"]),
                          type=str(raw.get("type", content_type)), size=int(raw.get("size", size)))
        except (ValueError, KeyError, TypeError):
            raise ProtocolError(f"upload to account {aid}: the server's answer is not an upload response") from None

    def download(
        self,
        blob_id: str,
        dest: Path | str | IO[bytes],
        *,
        account_id: str | None = None,
        name: str = "blob",
        content_type: str = "application/octet-stream",
        expected_size: int | None = None,
        expected_sha256: str | None = None,
        chunk_size: int = 1 << 16,
    ) -> Download:
        """Stream a blob into a file, hashing it on the way; memory use does not grow with the blob's size.

        A path is written to a temporary file beside it, fsynced and renamed into place, so a failed or
        mismatching download never leaves a partial file. An open file is written at its current position.
        """
        aid = self.resolve_account(account_id)
        url = expand(self.session.download_url, accountId=aid, blobId=blob_id, name=name, type=content_type)
        if isinstance(dest, str | Path):
            return self._download_to_path(url, Path(dest), blob_id, aid, expected_size, expected_sha256, chunk_size)
        result = self._download_stream(url, dest, blob_id, aid, chunk_size)
        _check_blob(result, expected_size, expected_sha256)
        return result

    def fetch_blob(self, blob_id: str, *, account_id: str | None = None, max_size: int = 16 << 20) -> bytes:
        """A small blob (a Sieve script, a test message) in memory; larger than ``max_size`` is an error."""
        import io

        buf = io.BytesIO()
        result = self.download(blob_id, buf, account_id=account_id)
        if result.size > max_size:
            raise BlobMismatch(f"blob {blob_id} has {result.size} bytes, more than {max_size}")
        return buf.getvalue()

    def _download_to_path(self, url: str, dest: Path, blob_id: str, aid: str, expected_size: int | None,
                          expected_sha256: str | None, chunk_size: int) -> Download:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                result = self._download_stream(url, fh, blob_id, aid, chunk_size)
                _check_blob(result, expected_size, expected_sha256)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return result

    def _download_stream(self, url: str, fh: IO[bytes], blob_id: str, aid: str, chunk_size: int) -> Download:
        start = fh.tell() if fh.seekable() else None
        attempts = self.transport.retry.attempts
        for attempt in range(1, attempts + 1):
            resp = self.transport.send("GET", url, stream=True, headers={"Accept-Encoding": "identity"})
            try:
                if resp.status_code == 404:
                    raise BlobNotFound(f"blob {blob_id} not found in account {aid}")
                self.transport.raise_for_status(resp, f"download of blob {blob_id} from account {aid}")
                digest, size = hashlib.sha256(), 0
                for chunk in resp.iter_content(chunk_size):
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                return Download(blob_id, size, digest.hexdigest(), resp.headers.get("Content-Type", ""))
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                if start is None or attempt == attempts:
                    raise ConnectError(f"download of blob {blob_id} from account {aid} broke off: {type(exc).__name__}") from None
                fh.seek(start)
                fh.truncate()
                self.transport.stats.add("retries")
                log.info("download of blob %s broke off (%s); starting again", blob_id, type(exc).__name__)
            finally:
                resp.close()
        raise ConnectError(f"download of blob {blob_id} failed")  # pragma: no cover - loop always returns/raises

    # -- jmapc -------------------------------------------------------------------------------------
    @functools.cached_property
    def jmapc(self) -> jmapc.Client:
        """A jmapc client on this transport, session and account (for jmapc's typed methods)."""
        return _Jmapc(self)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> JmapCore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _check_blob(result: Download, expected_size: int | None, expected_sha256: str | None) -> None:
    if expected_size is not None and result.size != expected_size:
        raise BlobMismatch(f"blob {result.blob_id}: got {result.size} bytes, expected {expected_size}")
    if expected_sha256 is not None and result.sha256 != expected_sha256.lower():
        raise BlobMismatch(f"blob {result.blob_id}: sha256 {result.sha256} differs from the expected {expected_sha256}")


class _Jmapc(jmapc.Client):
    """jmapc with the owner's transport, resolved session and account, and its retries and typed errors."""

    def __init__(self, owner: JmapCore) -> None:
        super().__init__(host=owner.session_url, auth=owner.transport.auth)
        self._owner = owner

    @functools.cached_property
    def requests_session(self) -> requests.Session:
        return self._owner.transport.session

    @functools.cached_property
    def jmap_session(self) -> jmapc.session.Session:
        self._owner.session  # noqa: B018 - fetches and resolves it
        return jmapc.session.Session.from_dict(self._owner._session_json)

    @property
    def account_id(self) -> str:
        return self._owner.account_id

    def _api_request(self, request: APIRequest) -> Any:
        names = [c[0] for c in request.method_calls]
        raw = self._owner._post(request.to_dict(), all(n.endswith(READ_ONLY_SUFFIXES) for n in names))
        return APIResponse.from_dict(raw).method_responses

    def upload_blob(self, file_name: str | Path) -> Any:
        up = self._owner.upload(Path(file_name))
        return jmapc.Blob(id=up.blob_id, type=up.type, size=up.size)


class JmapClient(MailMethods, AccountDataMethods, JmapCore):
    """A JMAP client for one login; see the module docstring. Use as a context manager or call close()."""

    def __enter__(self) -> JmapClient:
        return self


__all__ = ["HttpError", "Invocation", "JmapClient", "JmapCore", "Response", "expand", "ref"]
