"""Account discovery and queue listing per server dialect: Stalwart 0.15 REST (also mailsrv), Stalwart 0.16
JMAP ``x:`` objects, and the config-driven generic dialect."""

from .base import QUEUE_STATUSES, ManagedAccount, ManagementClient, QueuedMessage, QueuedRecipient
from .generic import GenericManagement
from .stalwart015 import Stalwart015Management, jmap_account_id
from .stalwart016 import Stalwart016Management

__all__ = [
    "QUEUE_STATUSES", "GenericManagement", "ManagedAccount", "ManagementClient", "QueuedMessage", "QueuedRecipient",
    "Stalwart015Management", "Stalwart016Management", "jmap_account_id",
]
