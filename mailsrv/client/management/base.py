"""What every management dialect offers: account discovery and (where the server has one) the outbound queue."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

QUEUE_STATUSES = ("scheduled", "completed", "temp_fail", "perm_fail")


@dataclass
class ManagedAccount:
    """An account the server lists: an individual principal (Stalwart 0.15 ``/api/principal``), a ``User``
    Account (0.16 ``x:Account``), or a configured ``[accounts.credentials.NAME]`` entry (generic).

    ``account_id`` is the JMAP accountId when the listing gives it; ``None`` means "the primary mail account
    of the account's own session".
    """

    name: str
    account_id: str | None = None
    principal_id: str | None = None
    emails: list[str] = field(default_factory=list)
    description: str | None = None
    quota: int | None = None
    used_quota: int | None = None


@dataclass
class QueuedRecipient:
    """One recipient of a queued message; ``status`` is one of :data:`QUEUE_STATUSES`, ``detail`` the
    remote response or error text."""

    address: str
    status: str
    detail: str = ""
    queue: str = ""
    retry_count: int = 0
    next_retry: str | None = None
    next_notify: str | None = None
    expires: str | None = None
    orcpt: str | None = None


@dataclass
class QueuedMessage:
    """A message in the outbound queue (Stalwart 0.15 ``Message`` / 0.16 ``QueuedMessage``), normalised."""

    id: str
    return_path: str
    size: int = 0
    created: str | None = None
    next_retry: str | None = None
    priority: int = 0
    env_id: str | None = None
    blob_id: str | None = None
    recipients: list[QueuedRecipient] = field(default_factory=list)


@runtime_checkable
class ManagementClient(Protocol):
    """Account discovery and queue listing for one server dialect.

    ``queue_running`` is whether the queue was delivering according to the last listing (``None`` when the
    dialect does not say, or before the first listing).
    """

    dialect: str
    supports_queue: bool
    queue_running: bool | None

    def list_accounts(self) -> list[ManagedAccount]:
        """Every individual account the server (or config) lists, sorted by name."""
        ...

    def iter_queue(self, page_size: int) -> Iterator[QueuedMessage]:
        """Every queued message once, fetched ``page_size`` at a time; fold them as they come and memory stays
        flat whatever the queue size. Yields nothing when the dialect has no queue (``supports_queue``).

        The queue moves while it is listed: a message that arrives or leaves meanwhile may be missing.
        """
        ...

    def list_queue(self) -> list[QueuedMessage]:
        """Every queued message (``list(iter_queue(…))``); raises UnsupportedCapability when the dialect has no queue."""
        ...

    def close(self) -> None:
        ...
