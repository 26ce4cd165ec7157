"""Stalwart 0.15's management REST API under ``/api`` (also mailsrv's, the ``embedded`` profile).

Accounts: ``GET /api/principal?types=individual&limit=N&page=P&fields=…`` (always with ``fields``: without it
Stalwart returns password hashes). A principal's numeric id becomes its JMAP accountId in Stalwart's base32.
Queue: ``GET /api/queue/messages?values&limit=N&page=P`` with snake_case ``Message`` objects whose recipient
``status`` is ``"scheduled"`` or ``{"completed"|"temp_fail"|"perm_fail": text}``; pages come in queue-id order
(Stalwart and mailsrv), so a message never appears twice, and each page says whether the queue is running.
Answers are ``{"data": …}``; errors ``{"error": kind, …}`` with HTTP 200.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from ..errors import ManagementError, ProtocolError
from ..transport import Transport
from .base import ManagedAccount, QueuedMessage, QueuedRecipient

ALPHABET = "abcdefghijklmnopqrstuvwxyz792013"
PRINCIPAL_FIELDS = "name,emails,description,quota,usedQuota"
MAX_PAGES = 100_000


def jmap_account_id(principal_id: int) -> str:
    """Stalwart's JMAP id of a principal id: base32 over :data:`ALPHABET`, most significant group first."""
    if principal_id < 0:
        raise ValueError("principal ids are non-negative")
    if principal_id == 0:
        return "a"
    out = ""
    while principal_id:
        out, principal_id = ALPHABET[principal_id & 31] + out, principal_id >> 5
    return out


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and isinstance(value[0], int):
        return value[0]  # [total, per-type…] when directory quotas exist
    return None


def parse_principal(item: dict[str, Any]) -> ManagedAccount:
    pid = item.get("id")
    emails = item.get("emails")
    if isinstance(emails, str):
        emails = [emails]
    return ManagedAccount(
        name=str(item.get("name", "")),
        account_id=jmap_account_id(pid) if isinstance(pid, int) and not isinstance(pid, bool) else None,
        principal_id=str(pid) if pid is not None else None,
        emails=[str(e) for e in emails or []],
        description=item.get("description") if isinstance(item.get("description"), str) else None,
        quota=_int(item.get("quota")),
        used_quota=_int(item.get("usedQuota")),
    )


def parse_status(status: Any) -> tuple[str, str]:
    """``(status, detail)`` from Stalwart 0.15's externally tagged recipient status."""
    if isinstance(status, str):
        return status, ""
    if isinstance(status, dict) and len(status) == 1:
        key, value = next(iter(status.items()))
        return str(key), value if isinstance(value, str) else str(value)
    return "unknown", str(status)


def parse_message(item: dict[str, Any]) -> QueuedMessage:
    recipients = []
    for r in item.get("recipients") or []:
        status, detail = parse_status(r.get("status"))
        recipients.append(QueuedRecipient(
            address=str(r.get("address", "")), status=status, detail=detail, queue=str(r.get("queue", "")),
            retry_count=int(r.get("retry_num") or 0), next_retry=r.get("next_retry"), next_notify=r.get("next_notify"),
            expires=r.get("expires"), orcpt=r.get("orcpt"),
        ))
    retries = sorted(r.next_retry for r in recipients if r.next_retry and r.status in ("scheduled", "temp_fail"))
    return QueuedMessage(
        id=str(item.get("id", "")), return_path=str(item.get("return_path", "")), size=int(item.get("size") or 0),
        created=item.get("created"), next_retry=retries[0] if retries else None, priority=int(item.get("priority") or 0),
        env_id=item.get("env_id"), blob_id=item.get("blob_hash"), recipients=recipients,
    )


class Stalwart015Management:
    """Management client for the ``/api`` REST dialect (Stalwart 0.15, mailsrv)."""

    dialect = "stalwart-0.15"
    supports_queue = True
    queue_running: bool | None = None

    def __init__(self, base_url: str, transport: Transport, *, page_size: int = 100) -> None:
        self.base_url = transport.check(base_url.rstrip("/"), "server URL")
        self.transport = transport
        self.page_size = page_size

    def _get(self, path: str, query: str) -> Any:
        url = f"{self.base_url}{path}"
        resp = self.transport.send("GET", url, params=query)
        if resp.status_code == 404:
            raise ManagementError(f"{url}: not found (HTTP 404); is this a Stalwart 0.15 / mailsrv management API?", "notFound")
        self.transport.raise_for_status(resp, f"management API {path}")
        try:
            body = resp.json()
        except ValueError:
            raise ProtocolError(f"{url} answered with non-JSON") from None
        if isinstance(body, dict) and "error" in body:
            kind = str(body.get("error"))
            details = body.get("details") or body.get("reason") or body.get("item") or body.get("field") or ""
            raise ManagementError(f"{path}: the server reported {kind}" + (f": {details}" if details else ""), kind, body)
        if not isinstance(body, dict) or "data" not in body:
            raise ProtocolError(f"{url}: answer without a data member")
        return body["data"]

    def _pages(self, path: str, query: str, page_size: int) -> Iterator[dict[str, Any]]:
        """The ``data`` of each page of a listing, until a short page or ``total`` is reached."""
        size = max(1, page_size)
        for page in range(1, MAX_PAGES):
            data = self._get(path, f"{query}&limit={size}&page={page}")
            items = data.get("items") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise ProtocolError(f"{path}: data.items is not a list")
            yield data
            total = data.get("total")
            if len(items) < size or (isinstance(total, int) and page * size >= total):
                return

    def _paged(self, path: str, query: str) -> list[dict[str, Any]]:
        return [i for data in self._pages(path, query, self.page_size) for i in data["items"] if isinstance(i, dict)]

    def list_accounts(self) -> list[ManagedAccount]:
        items = self._paged("/api/principal", f"types=individual&fields={quote(PRINCIPAL_FIELDS, safe=',')}")
        return sorted((parse_principal(i) for i in items), key=lambda a: a.name)

    def iter_queue(self, page_size: int) -> Iterator[QueuedMessage]:
        for data in self._pages("/api/queue/messages", "values", page_size):
            if isinstance(data.get("status"), bool):
                self.queue_running = data["status"]
            for item in data["items"]:
                if isinstance(item, dict):
                    yield parse_message(item)

    def list_queue(self) -> list[QueuedMessage]:
        return list(self.iter_queue(self.page_size))

    def queue_size(self) -> int:
        """The number of queued messages (one cheap request)."""
        data = self._get("/api/queue/messages", "limit=1")
        total = data.get("total") if isinstance(data, dict) else None
        if not isinstance(total, int):
            raise ProtocolError("/api/queue/messages: data.total is not a number")
        return total

    def close(self) -> None:
        self.transport.close()
