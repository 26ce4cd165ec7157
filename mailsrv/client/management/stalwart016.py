"""Stalwart 0.16's management over JMAP (``urn:stalwart:jmap``): ``x:Account`` and ``x:QueuedMessage``.

Accounts: ``x:Account/query`` (filter ``{"@type": "User"}``) paged, with ``x:Account/get`` back-referenced in
the same request. An account's ``emailAddress`` (``name@domain``) is its login name in 0.16.
Queue: ``x:QueuedMessage/query`` for ids, then ``/get`` of those ids in batches of ``maxObjectsInGet``;
recipients are a map address → ``QueuedRecipient`` whose ``status`` is ``{"@type": "Scheduled" | "Completed"
| "TemporaryFailure" | "PermanentFailure", …}``. Stalwart sorts the queue only by next retry, and a retry moves
a message, so pages follow the last id seen (``anchor``, ``anchorOffset`` 1) instead of a position, and ids
already listed are skipped.

Management access is checked against the server's capabilities: an administrator login (mailsrv's configured
admin, a Stalwart recovery admin) may have no account at all in its session.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..calls import Invocation, ref
from ..errors import JmapMethodError, ProtocolError, UnsupportedCapability, method_error
from ..models import CORE, MAIL, STALWART
from .base import ManagedAccount, QueuedMessage, QueuedRecipient

if TYPE_CHECKING:
    from ..jmap import JmapClient

USING = (CORE, STALWART)
ACCOUNT_PROPERTIES = ["id", "name", "emailAddress", "description", "quotas", "usedDiskQuota"]
QUEUED_PROPERTIES = ["id", "returnPath", "size", "createdAt", "nextRetry", "priority", "envId", "blobId", "recipients"]
STATUS = {"Scheduled": "scheduled", "Completed": "completed", "TemporaryFailure": "temp_fail", "PermanentFailure": "perm_fail"}
MAX_PAGES = 100_000


def parse_account(obj: dict[str, Any]) -> ManagedAccount:
    name = str(obj.get("name", ""))
    email = obj.get("emailAddress") if isinstance(obj.get("emailAddress"), str) else None
    quotas = obj.get("quotas")
    disk = quotas.get("maxDiskQuota") if isinstance(quotas, dict) else None
    quota = disk if isinstance(disk, int) else None
    used = obj.get("usedDiskQuota")
    return ManagedAccount(
        name=email or name,
        account_id=str(obj["id"]) if obj.get("id") is not None else None,
        principal_id=str(obj["id"]) if obj.get("id") is not None else None,
        emails=[email] if email else [],
        description=obj.get("description") if isinstance(obj.get("description"), str) else None,
        quota=quota,
        used_quota=used if isinstance(used, int) and not isinstance(used, bool) else None,
    )


def parse_status(status: Any) -> tuple[str, str]:
    if not isinstance(status, dict):
        return "unknown", str(status)
    kind = STATUS.get(str(status.get("@type")), "unknown")
    detail = status.get("errorMessage") or status.get("responseMessage") or ""
    code = status.get("responseCode")
    if code and detail:
        detail = f"{code} {detail}"
    return kind, str(detail)


def _expires(value: Any) -> str | None:
    if isinstance(value, dict):
        at = value.get("expiresAt")
        return at if isinstance(at, str) else None
    return value if isinstance(value, str) else None


def parse_queued(obj: dict[str, Any]) -> QueuedMessage:
    recipients = []
    rcpts = obj.get("recipients") or {}
    for address, r in (rcpts.items() if isinstance(rcpts, dict) else []):
        r = r if isinstance(r, dict) else {}
        status, detail = parse_status(r.get("status"))
        recipients.append(QueuedRecipient(
            address=str(address), status=status, detail=detail, queue=str(r.get("queueName", "")),
            retry_count=int(r.get("retryCount") or 0), next_retry=r.get("retryDue"), next_notify=r.get("notifyDue"),
            expires=_expires(r.get("expires")), orcpt=r.get("orcpt"),
        ))
    return QueuedMessage(
        id=str(obj.get("id", "")), return_path=str(obj.get("returnPath", "")), size=int(obj.get("size") or 0),
        created=obj.get("createdAt"), next_retry=obj.get("nextRetry"), priority=int(obj.get("priority") or 0),
        env_id=obj.get("envId"), blob_id=obj.get("blobId"), recipients=recipients,
    )


class Stalwart016Management:
    """Management client for the 0.16 JMAP dialect; ``client`` is logged in as an administrator."""

    dialect = "stalwart-0.16"
    supports_queue = True
    queue_running: bool | None = None  # the 0.16 listing does not say

    def __init__(self, client: JmapClient, *, page_size: int | None = None) -> None:
        self.client = client
        self.page_size = page_size

    def _account_args(self) -> dict[str, Any]:
        """``accountId`` for ``x:`` calls: the login's management (or mail) account; none if it has none."""
        session = self.client.session
        aid = session.primary_accounts.get(STALWART) or session.primary_accounts.get(MAIL) or next(iter(session.accounts), None)
        return {"accountId": aid} if aid else {}

    def _require_management(self) -> None:
        """Server-wide check: the login's session may list no account (a configured or recovery admin)."""
        if STALWART not in self.client.session.capabilities:
            raise UnsupportedCapability(STALWART, None, f"{self.client.transport.who()} has no JMAP management access")

    def _query_get(self, type_name: str, filter: dict[str, Any] | None, properties: list[str] | None) -> list[dict[str, Any]]:
        """All objects of ``x:<type>``: /query pages with /get back-referenced in the same request."""
        self._require_management()
        base = self._account_args()
        page = self.page_size or max(1, self.client.limits.max_objects_in_get)
        out: list[dict[str, Any]] = []
        position = 0
        for _ in range(MAX_PAGES):
            query: dict[str, Any] = {**base, "position": position, "limit": page, "calculateTotal": True}
            if filter:
                query["filter"] = filter
            get: dict[str, Any] = {**base, "#ids": ref("q", f"x:{type_name}/query", "/ids")}
            if properties:
                get["properties"] = properties
            resp = self.client.request([Invocation(f"x:{type_name}/query", query, "q"), Invocation(f"x:{type_name}/get", get, "g")], USING)
            ids = resp.args("q").get("ids")
            if not isinstance(ids, list):
                raise ProtocolError(f"x:{type_name}/query returned no ids")
            out += [o for o in resp.args("g").get("list") or [] if isinstance(o, dict)]
            total = resp.args("q").get("total")
            position += len(ids)
            if not ids or len(ids) < page or (isinstance(total, int) and position >= total):
                break
        return out

    def list_accounts(self) -> list[ManagedAccount]:
        objs = self._query_get("Account", {"@type": "User"}, ACCOUNT_PROPERTIES)
        return sorted((parse_account(o) for o in objs if o.get("@type", "User") == "User"), key=lambda a: a.name)

    def _queue_ids(self, base: dict[str, Any], page_size: int) -> Iterator[list[str]]:
        """Pages of queued ids from ``x:QueuedMessage/query``: the first by position, each next one right after
        the last id of the page before (``anchor``). When that message has left the queue meanwhile, the ids
        before it are tried (one request), and only when all of them are gone the page is asked for by position."""
        position, page = 0, None
        for _ in range(MAX_PAGES):
            query: dict[str, Any] = {**base, "limit": page_size, "calculateTotal": True}
            found = self._after(query, page) if page else None
            if found is None:
                found = self._call("x:QueuedMessage/query", {**query, "position": position})
            ids = found.get("ids")
            if not isinstance(ids, list):
                raise ProtocolError("x:QueuedMessage/query returned no ids")
            ids = [i for i in ids if isinstance(i, str)]
            if ids:
                yield ids
            start = found.get("position")
            position = (start if isinstance(start, int) else position) + len(ids)
            total, clamped = found.get("total"), found.get("limit")
            if not ids or (page and ids[-1] == page[-1]):
                return
            if isinstance(total, int) and not isinstance(total, bool):
                if position >= total:
                    return
            elif len(ids) < min(page_size, clamped if isinstance(clamped, int) else page_size):
                return
            page = ids

    def _after(self, query: dict[str, Any], page: list[str]) -> dict[str, Any] | None:
        """The /query answer for the ids after ``page``, anchored on its last id still in the queue (None: all gone)."""
        try:
            return self._call("x:QueuedMessage/query", {**query, "anchor": page[-1], "anchorOffset": 1})
        except JmapMethodError as exc:
            if exc.type != "anchorNotFound":
                raise
        fallbacks = page[-2 : -2 - min(8, self.client.limits.max_calls_in_request) : -1]  # the ids before, newest first
        if not fallbacks:
            return None
        calls = [Invocation("x:QueuedMessage/query", {**query, "anchor": a, "anchorOffset": 1}, f"q{n}") for n, a in enumerate(fallbacks)]
        resp = self.client.request(calls, USING, raise_errors=False)
        for call in calls:
            answer = resp.get(call.id)
            if answer.name != "error":
                return answer.args
            if answer.args.get("type") != "anchorNotFound":
                raise method_error(str(answer.args.get("type", "serverFail")), call.name, call.id, answer.args)
        return None

    def _call(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        return self.client.request([Invocation(name, args, "c")], USING).args("c")

    def iter_queue(self, page_size: int) -> Iterator[QueuedMessage]:
        self._require_management()
        base = self._account_args()
        limits = self.client.limits
        batch, calls = max(1, limits.max_objects_in_get), max(1, limits.max_calls_in_request)
        seen: set[str] = set()  # a retry moves a message to a later page: list it once
        for page in self._queue_ids(base, max(1, page_size)):
            fresh = [i for i in dict.fromkeys(page) if i not in seen]
            seen.update(fresh)
            for start in range(0, len(fresh), batch * calls):  # several /get calls per request
                chunk = fresh[start : start + batch * calls]
                gets = [Invocation("x:QueuedMessage/get", {**base, "ids": chunk[i : i + batch], "properties": QUEUED_PROPERTIES},
                                   f"g{i}") for i in range(0, len(chunk), batch)]
                resp = self.client.request(gets, USING)
                for get in gets:
                    for obj in resp.args(get.id).get("list") or []:
                        if isinstance(obj, dict):
                            yield parse_queued(obj)

    def list_queue(self) -> list[QueuedMessage]:
        return list(self.iter_queue(self.page_size or self.client.limits.max_objects_in_get))

    def close(self) -> None:
        self.client.close()
