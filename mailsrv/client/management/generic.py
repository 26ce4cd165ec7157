"""The ``generic`` profile: any JMAP server without a management API (Cyrus, Fastmail-like hosts).

The accounts are the ``[accounts.credentials.NAME]`` entries of the config; each is reached with its own
password or token. There is no queue to list.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from ...config import AccountCredential
from ..errors import UnsupportedCapability
from .base import ManagedAccount, QueuedMessage


class GenericManagement:
    """Accounts from the config; no queue."""

    dialect = "generic"
    supports_queue = False
    queue_running: bool | None = None

    def __init__(self, credentials: Mapping[str, AccountCredential]) -> None:
        self.credentials = dict(credentials)

    def list_accounts(self) -> list[ManagedAccount]:
        return [ManagedAccount(name=name) for name in sorted(self.credentials)]

    def iter_queue(self, page_size: int) -> Iterator[QueuedMessage]:
        return iter(())

    def list_queue(self) -> list[QueuedMessage]:
        raise UnsupportedCapability("queue listing", None, "the generic profile has no management API")

    def close(self) -> None:
        pass
