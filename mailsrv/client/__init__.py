"""Talking to any mail server: JMAP (:mod:`.jmap`), management APIs (:mod:`.management`) and server profiles
(:mod:`.profiles`). Used by mail-backup and mail-exporter; never imports :mod:`mailsrv.server`.

Typical use::

    profile = open_profile(load_config())
    for account in profile.list_accounts():          # [accounts] include/exclude applied
        with profile.open(account) as client:         # master user, impersonation or own credentials
            for email in client.iter_emails():        # paged + batched at the session's limits
                client.download(email.blob_id, path)  # streamed, sha256 computed on the way
"""

from .calls import Invocation, Response, ref
from .errors import (
    AuthError,
    BlobMismatch,
    BlobNotFound,
    CannotCalculateChanges,
    ConnectError,
    InsecureUrlError,
    JmapMethodError,
    JmapRequestError,
    MailClientError,
    UnknownAccount,
    UnsupportedCapability,
)
from .jmap import JmapClient
from .mail import EmailImport
from .profiles import AccountLogin, Profile, open_profile
from .transport import BasicAuth, BearerAuth, RetryPolicy

__all__ = [
    "AccountLogin", "AuthError", "BasicAuth", "BearerAuth", "BlobMismatch", "BlobNotFound", "CannotCalculateChanges",
    "ConnectError", "EmailImport", "InsecureUrlError", "Invocation", "JmapClient", "JmapMethodError", "JmapRequestError",
    "MailClientError", "Profile", "Response", "RetryPolicy", "UnknownAccount", "UnsupportedCapability", "open_profile", "ref",
]
