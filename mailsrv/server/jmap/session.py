"""The JMAP Session resource (RFC 8620 §2) with the server's real, enforced limits."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from ..store.ids import jmap_id
from .core import BLOB, CORE, MAIL, QUOTA, SIEVE, STALWART, SUBMISSION, VACATION

if TYPE_CHECKING:
    from ..app import Identity, MailServer


def core_capability(server: MailServer) -> dict[str, Any]:
    lim = server.cfg.jmap
    return {
        "maxSizeUpload": lim.max_size_upload,
        "maxConcurrentUpload": lim.max_concurrent_upload,
        "maxSizeRequest": lim.max_size_request,
        "maxConcurrentRequests": lim.max_concurrent_requests,
        "maxCallsInRequest": lim.max_calls_in_request,
        "maxObjectsInGet": lim.max_objects_in_get,
        "maxObjectsInSet": lim.max_objects_in_set,
        "collationAlgorithms": ["i;ascii-numeric", "i;ascii-casemap", "i;unicode-casemap"],
    }


def account_capabilities(server: MailServer) -> dict[str, Any]:
    lim = server.cfg.jmap
    return {
        MAIL: {
            "maxMailboxesPerEmail": None,
            "maxMailboxDepth": 10,
            "maxSizeMailboxName": 255,
            "maxSizeAttachmentsPerEmail": server.cfg.max_message_size,
            "emailQuerySortOptions": ["receivedAt", "size", "from", "to", "subject", "sentAt", "hasKeyword"],
            "mayCreateTopLevelMailbox": True,
        },
        SUBMISSION: {"maxDelayedSend": 0, "submissionExtensions": {}},
        VACATION: {},
        SIEVE: {"maxSizeScriptName": 512, "maxSizeScript": 1024 * 1024, "maxNumberScripts": 100,
                "maxNumberRedirects": 1, "sieveExtensions": [], "notificationMethods": None, "externalLists": None,
                "implementation": "mailsrv (scripts are stored, not run)"},
        BLOB: {"maxSizeBlobSet": lim.max_size_request * 3 // 4 - 512, "maxDataSources": lim.max_calls_in_request,
               "supportedTypeNames": ["Email", "Mailbox", "Thread", "SieveScript"], "supportedDigestAlgorithms": ["sha", "sha-256"]},
        QUOTA: {},
    }


def session_object(server: MailServer, identity: Identity, base_url: str) -> dict[str, Any]:
    caps = {CORE: core_capability(server)}
    acct_caps = account_capabilities(server)
    caps.update({k: {} for k in acct_caps})
    if identity.is_admin:
        caps[STALWART] = {}
    accounts: dict[str, Any] = {}
    primary: dict[str, str] = {}
    if identity.principal_id is not None:
        aid = jmap_id(identity.principal_id)
        accounts[aid] = {"name": identity.name, "isPersonal": True, "isReadOnly": False, "accountCapabilities": acct_caps}
        primary = {k: aid for k in acct_caps}
    body = {
        "capabilities": caps,
        "accounts": accounts,
        "primaryAccounts": primary,
        "username": identity.name,
        "apiUrl": f"{base_url}/jmap/",
        "downloadUrl": f"{base_url}/jmap/download/{{accountId}}/{{blobId}}/{{name}}?accept={{type}}",
        "uploadUrl": f"{base_url}/jmap/upload/{{accountId}}/",
        "eventSourceUrl": f"{base_url}/jmap/eventsource/?types={{types}}&closeafter={{closeafter}}&ping={{ping}}",
    }
    body["state"] = hashlib.sha256(json.dumps(accounts, sort_keys=True).encode()).hexdigest()[:16]
    return body
