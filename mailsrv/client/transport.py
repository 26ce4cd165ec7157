"""HTTP for every client in this package: URL policy, TLS with an extra CA, auth, retries with backoff.

One :class:`Transport` per login. It refuses plain ``http://`` to anything but loopback unless the
operator allowed it, trusts the system CAs plus ``ca_file``, retries 429/503 (honouring ``Retry-After``),
connection failures and timeouts with exponential backoff, and maps 401/403/problem bodies to typed errors.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import ipaddress
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.auth
from requests.adapters import HTTPAdapter

from .errors import AuthError, ConnectError, HttpError, InsecureUrlError, JmapRequestError

log = logging.getLogger("mailsrv.client")
log.addHandler(logging.NullHandler())

USER_AGENT = "mailsidecar/0.1"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
RETRY_ALWAYS = frozenset({429, 503})  # the server did not process the request
RETRY_IDEMPOTENT = frozenset({502, 504})  # a proxy gave up; only safe to repeat reads


def is_loopback(host: str) -> bool:
    """True for ``localhost`` names and 127.0.0.0/8 / ::1 addresses."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_plain_http: bool, what: str = "URL") -> str:
    """Return ``url`` if the policy allows it; raise :class:`InsecureUrlError` naming the problem otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InsecureUrlError(f"{what} {url!r} is not an http(s) URL with a host name")
    if parts.scheme == "http" and not allow_plain_http and not is_loopback(parts.hostname):
        raise InsecureUrlError(
            f"refusing plain http to {parts.hostname} ({what} {url}): credentials and mail would travel unencrypted; "
            "use https, or set [server] allow_plain_http = true"
        )
    return url


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


class BasicAuth(requests.auth.AuthBase):
    """HTTP Basic with UTF-8 credentials (requests' own encodes latin-1); the password never shows in repr."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self._token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Basic {self._token}"
        return r

    def describe(self) -> str:
        return f"user {self.user!r}"

    def __repr__(self) -> str:
        return f"BasicAuth(user={self.user!r})"


class BearerAuth(requests.auth.AuthBase):
    """HTTP Bearer token (OAuth access token, JWT, API key); ``label`` names it in messages."""

    def __init__(self, token: str, label: str = "bearer token") -> None:
        self._token = token
        self.label = label

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def describe(self) -> str:
        return self.label

    def __repr__(self) -> str:
        return f"BearerAuth(label={self.label!r})"


Auth = BasicAuth | BearerAuth


@dataclass
class RetryPolicy:
    """How often and how long to retry; ``Retry-After`` above ``max_retry_after`` seconds is not waited for."""

    attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 120.0

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)


@dataclass
class TransportStats:
    """Counters callers and tests read: HTTP requests sent, retries, 429/503 answers seen."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


def retry_after(resp: requests.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), ``None`` when absent/garbled."""
    value = resp.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def problem_of(resp: requests.Response) -> tuple[str, str, str | None]:
    """``(type, detail, limit)`` from a problem+json body (or the start of a text body)."""
    try:
        body = resp.json()
    except ValueError:
        return "", resp.text[:200].strip(), None
    if not isinstance(body, dict):
        return "", "", None
    type_ = body.get("type") if isinstance(body.get("type"), str) else ""
    detail = body.get("detail") or body.get("title") or ""
    limit = body.get("limit") if isinstance(body.get("limit"), str) else None
    return str(type_), str(detail), limit


@functools.lru_cache(maxsize=16)  # loading the system CAs costs ~0.1-0.3 s; one context per ca_file serves every login
def _tls_context(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_file:
        path = Path(ca_file)
        if not path.is_file():
            raise ConnectError(f"ca_file {ca_file}: no such file")
        try:
            ctx.load_verify_locations(cafile=str(path))
        except ssl.SSLError as exc:
            raise ConnectError(f"ca_file {ca_file}: not a PEM certificate file ({exc.reason})") from None
    return ctx


class _TlsAdapter(HTTPAdapter):
    """An adapter whose connections trust the system CAs plus the configured ``ca_file``."""

    def __init__(self, ctx: ssl.SSLContext, pool_maxsize: int) -> None:
        self._ctx = ctx
        super().__init__(pool_connections=4, pool_maxsize=pool_maxsize)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._ctx
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self._ctx
        return super().proxy_manager_for(*args, **kwargs)


Body = bytes | IO[bytes] | Iterator[bytes] | None


def _rewind(data: Body, start: int | None) -> None:
    if start is not None and hasattr(data, "seek"):
        data.seek(start)  # type: ignore[union-attr]


def _connect_failed_before_sending(exc: requests.RequestException) -> bool:
    """True when the request certainly never reached the server (refused, DNS, connect timeout)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    text = repr(exc)
    return "NewConnectionError" in text or "NameResolutionError" in text or "ConnectTimeoutError" in text


class Transport:
    """A requests session for one login against one server, with the policies above."""

    def __init__(
        self,
        auth: Auth | None,
        *,
        ca_file: str = "",
        allow_plain_http: bool = False,
        timeout: tuple[float, float] = (10.0, 120.0),
        retry: RetryPolicy | None = None,
        pool_maxsize: int = 16,
    ) -> None:
        self.auth = auth
        self.allow_plain_http = allow_plain_http
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.stats = TransportStats()
        self.session = requests.Session()
        self.session.auth = auth
        self.session.headers["User-Agent"] = USER_AGENT
        adapter = _TlsAdapter(_tls_context(ca_file), pool_maxsize)
        self.session.mount("https://", adapter)
        self.session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=pool_maxsize))

    def who(self) -> str:
        return self.auth.describe() if self.auth is not None else "anonymous"

    def check(self, url: str, what: str = "URL") -> str:
        return check_url(url, self.allow_plain_http, what)

    def close(self) -> None:
        self.session.close()

    # -- sending -----------------------------------------------------------------------------------
    def send(
        self,
        method: str,
        url: str,
        *,
        data: Body = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | str | None = None,
        stream: bool = False,
        idempotent: bool = True,
        with_auth: bool = True,
        on_retry: Callable[[], None] | None = None,
    ) -> requests.Response:
        """Send one request with retries; returns the final response (any status but a retried one).

        ``idempotent=False`` (writes) repeats only what the server certainly did not process: 429/503
        answers and connections that never opened. ``data`` may be a seekable file; it is rewound per try.
        """
        self.check(url)
        body: bytes | None = json.dumps(json_body).encode() if json_body is not None else None
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        start = data.tell() if hasattr(data, "seek") and hasattr(data, "tell") else None  # type: ignore[union-attr]
        rewindable = data is None or isinstance(data, bytes) or start is not None
        attempt = 0
        while True:
            attempt += 1
            _rewind(data, start)
            self.stats.add("requests")
            try:
                resp = self.session.request(
                    method, url, data=body if body is not None else data, headers=hdrs, params=params, stream=stream,
                    timeout=self.timeout, allow_redirects=False, auth=self.auth if with_auth else _NoAuth(),
                )
            except requests.exceptions.SSLError as exc:
                raise ConnectError(f"TLS failure talking to {_host(url)}: {_reason(exc)} (is [server] ca_file right?)") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                retryable = rewindable and (idempotent or _connect_failed_before_sending(exc))
                if not retryable or attempt >= self.retry.attempts:
                    raise ConnectError(f"cannot reach {_host(url)} ({method} {_path(url)}): {_reason(exc)}") from None
                delay = self.retry.backoff(attempt)
                log.info("retrying %s %s in %.1fs after %s", method, _path(url), delay, type(exc).__name__)
            else:
                status = resp.status_code
                retryable = status in RETRY_ALWAYS or (idempotent and status in RETRY_IDEMPOTENT)
                if status in RETRY_ALWAYS:
                    self.stats.add("throttled")
                if not retryable or not rewindable or attempt >= self.retry.attempts:
                    return resp
                wait = retry_after(resp)
                if wait is not None and wait > self.retry.max_retry_after:
                    return resp
                delay = wait if wait is not None else self.retry.backoff(attempt)
                resp.close()
                log.info("retrying %s %s in %.1fs after HTTP %d", method, _path(url), delay, status)
            self.stats.add("retries")
            if on_retry is not None:
                on_retry()
            time.sleep(delay)

    def get_following(self, url: str, *, max_hops: int = 5) -> tuple[requests.Response, str]:
        """GET ``url`` following redirects; credentials are re-sent only while the origin stays the same
        (an http → https upgrade of the same host counts as the same). Returns the response and final URL."""
        first = origin(url)
        current = url
        for _ in range(max_hops + 1):
            here = origin(current)
            same = here[1:] == first[1:] or (here[0] == "https" and here[1] == first[1])
            resp = self.send("GET", current, with_auth=same)
            if resp.status_code not in REDIRECTS:
                if resp.status_code == 401 and not same:
                    raise AuthError(
                        f"{url} redirected to another host ({here[1]}), which wants credentials; they were not sent there: "
                        "set [server] jmap_session_url to the final URL"
                    )
                return resp, current
            location = resp.headers.get("Location")
            resp.close()
            if not location:
                raise HttpError(f"{current}: redirect without a Location header", resp.status_code)
            current = self.check(urljoin(current, location), "redirect target")
        raise HttpError(f"{url}: more than {max_hops} redirects", 310)

    def raise_for_status(self, resp: requests.Response, what: str) -> None:
        """Map an unsuccessful response to a typed error naming ``what`` and the login (never the secret)."""
        status = resp.status_code
        if status < 400:
            return
        type_, detail, limit = problem_of(resp)
        if status == 401:
            raise AuthError(f"{what}: {_host(resp.url)} rejected the credentials of {self.who()}")
        if status == 403:
            raise AuthError(f"{what}: {self.who()} is not allowed to do this on {_host(resp.url)}" + (f" ({detail})" if detail else ""))
        if type_.startswith("urn:ietf:params:jmap:error:"):
            raise JmapRequestError(type_, status, detail, limit)
        if status in RETRY_ALWAYS:
            raise ConnectError(f"{what}: {_host(resp.url)} is busy (HTTP {status}) and stayed so after retries")
        raise HttpError(f"{what}: HTTP {status} from {_host(resp.url)}" + (f": {detail}" if detail else ""), status, detail)


class _NoAuth(requests.auth.AuthBase):
    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers.pop("Authorization", None)
        return r


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


def _path(url: str) -> str:
    return urlsplit(url).path or "/"


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error, without wrapper reprs."""
    cur: BaseException = exc
    for _ in range(6):
        arg = cur.args[0] if cur.args else None
        inner = getattr(arg, "reason", None) if not isinstance(arg, str) else None
        nxt = inner if isinstance(inner, BaseException) else arg if isinstance(arg, BaseException) else None
        if nxt is None:
            break
        cur = nxt
    if isinstance(cur, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {cur.verify_message}"
    if isinstance(cur, ssl.SSLError):
        return str(cur.reason or cur)
    text = str(cur)
    if text.startswith(("HTTPConnection", "HTTPSConnection")) and "): " in text:
        text = text.split("): ", 1)[1]
    return text[:200] or type(cur).__name__
