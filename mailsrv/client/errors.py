"""Exceptions of the mail-server client.

Every failure a caller can act on has its own class, so mail-backup and mail-exporter can map them to exit
codes and metrics: :class:`ConnectError` and :class:`AuthError` mean "cannot connect / authenticate",
:class:`UnknownAccount` means "no such account", :class:`UnsupportedCapability` means "record as not
supported, carry on". Messages name the URL, user or object concerned and never contain a secret.
"""

from __future__ import annotations

from typing import Any


class MailClientError(Exception):
    """Base class of every error raised by :mod:`mailsrv.client`."""


class InsecureUrlError(MailClientError):
    """A URL the client refuses to use (plain http to a non-loopback host, unknown scheme)."""


class ConnectError(MailClientError):
    """The server could not be reached (after retries), or TLS verification failed."""


class AuthError(MailClientError):
    """The server rejected the credentials (HTTP 401) or the login lacks the rights (HTTP 403)."""


class ProtocolError(MailClientError):
    """The server answered with something that is not the protocol's shape (bad JSON, missing fields)."""


class HttpError(MailClientError):
    """An HTTP status the client has no better name for; ``status`` and ``detail`` say what happened."""

    def __init__(self, message: str, status: int, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class JmapRequestError(MailClientError):
    """A request-level JMAP problem (RFC 8620 §3.6.1): the whole request was rejected.

    ``type`` is the problem type URI (``urn:ietf:params:jmap:error:limit`` …), ``limit`` names the limit
    for ``limit`` errors.
    """

    def __init__(self, type_: str, status: int, detail: str = "", limit: str | None = None) -> None:
        text = f"JMAP request rejected ({status} {type_})"
        if limit:
            text += f", limit {limit}"
        if detail:
            text += f": {detail}"
        super().__init__(text)
        self.type = type_
        self.status = status
        self.detail = detail
        self.limit = limit


class JmapMethodError(MailClientError):
    """A JMAP method error (RFC 8620 §3.6.2): ``["error", {"type": …}, callId]``."""

    def __init__(self, type_: str, method: str, call_id: str, description: str | None = None, **extra: Any) -> None:
        text = f"{method} failed: {type_}"
        if description:
            text += f" ({description})"
        super().__init__(text)
        self.type = type_
        self.method = method
        self.call_id = call_id
        self.description = description
        self.extra = extra


class CannotCalculateChanges(JmapMethodError):
    """The server no longer has the changes since the given state: do a full sync instead."""


class AccountNotFound(JmapMethodError):
    """The accountId does not exist (or is not visible to this login)."""


class UnknownMethod(JmapMethodError):
    """The server does not implement the method (or not for the capabilities sent)."""


METHOD_ERRORS: dict[str, type[JmapMethodError]] = {
    "cannotCalculateChanges": CannotCalculateChanges,
    "accountNotFound": AccountNotFound,
    "unknownMethod": UnknownMethod,
}


def method_error(type_: str, method: str, call_id: str, args: dict[str, Any]) -> JmapMethodError:
    """The typed exception for a method error response."""
    extra = {k: v for k, v in args.items() if k not in ("type", "description")}
    description = args.get("description")
    cls = METHOD_ERRORS.get(type_, JmapMethodError)
    return cls(type_, method, call_id, description if isinstance(description, str) else None, **extra)


class UnsupportedCapability(MailClientError):
    """The server or account does not offer a capability: callers record "not supported" and go on."""

    def __init__(self, capability: str, account_id: str | None = None, detail: str = "") -> None:
        where = f"account {account_id}" if account_id else "this server"
        text = f"{capability} is not supported by {where}"
        if detail:
            text += f" ({detail})"
        super().__init__(text)
        self.capability = capability
        self.account_id = account_id


class BlobNotFound(MailClientError):
    """The server has no blob with that id in that account (HTTP 404 on download)."""


class SetFailed(MailClientError):
    """A /set or /import did not create, update or destroy an object; ``type`` is the SetError type."""

    def __init__(self, method: str, object_id: str, type_: str, description: str | None = None) -> None:
        text = f"{method}: {object_id} not accepted: {type_}"
        if description:
            text += f" ({description})"
        super().__init__(text)
        self.method = method
        self.object_id = object_id
        self.type = type_
        self.description = description


class BlobMismatch(MailClientError):
    """A downloaded blob does not have the expected size or digest."""


class UploadTooLarge(MailClientError):
    """An upload exceeds the server's ``maxSizeUpload``."""


class ManagementError(MailClientError):
    """The management API answered with an error (Stalwart's tagged ``{"error": …}`` or a problem body)."""

    def __init__(self, message: str, kind: str = "", details: Any = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details


class UnknownAccount(MailClientError):
    """An account name that the server does not list (or that the account selection excludes)."""
