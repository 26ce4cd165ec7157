"""Stalwart 0.16's management over JMAP (``urn:stalwart:jmap``): ``x:Account`` and ``x:QueuedMessage``.

Accounts: ``x:Account/query`` (filter ``{"@type": "User"}``) paged, with ``x:Account/get`` back-referenced in
the same request. An account's ``emailAddress`` (``name@domain``) is its login name in 0.16.
Queue: ``x:QueuedMessage/query`` + ``/get``; recipients are a map address → ``QueuedRecipient`` whose
``status`` is ``{"@type": "Scheduled" | "Completed" | "TemporaryFailure" | "PermanentFailure", …}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..calls import Invocation, ref
from ..errors import ProtocolError, UnsupportedCapability
from ..models import CORE, MAIL, STALWART
from .base import ManagedAccount, QueuedMessage, QueuedRecipient

if TYPE_CHECKING:
    from ..jmap import JmapClient

USING = (CORE, STALWART)
ACCOUNT_PROPERTIES = ["id", "name", "emailAddress", "description", "quotas", "usedDiskQuota"]
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

    def __init__(self, client: JmapClient, *, page_size: int | None = None) -> None:
        self.client = client
        self.page_size = page_size

    def _account_args(self) -> dict[str, Any]:
        """``accountId`` for ``x:`` calls: the login's management (or mail) account; none if it has none."""
        session = self.client.session
        aid = session.primary_accounts.get(STALWART) or session.primary_accounts.get(MAIL) or next(iter(session.accounts), None)
        return {"accountId": aid} if aid else {}

    def _query_get(self, type_name: str, filter: dict[str, Any] | None, properties: list[str] | None) -> list[dict[str, Any]]:
        """All objects of ``x:<type>``: /query pages with /get back-referenced in the same request."""
        if STALWART not in self.client.session.capabilities:
            raise UnsupportedCapability(STALWART, None, f"{self.client.transport.who()} has no JMAP management access")
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

    def list_queue(self) -> list[QueuedMessage]:
        return [parse_queued(o) for o in self._query_get("QueuedMessage", None, None)]

    def close(self) -> None:
        self.client.close()
