"""Typed JMAP wire objects (RFC 8620, 8621, 9404, 9425, 9661), named after the protocol.

Dataclass fields are snake_case; :func:`from_json` / :func:`to_json` map them to the wire's camelCase in one
place (a field may name its wire key with ``metadata={"json": ...}``). Unknown wire fields are ignored, so
servers that add properties do not break the client.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urljoin

T = TypeVar("T")

CORE = "urn:ietf:params:jmap:core"
MAIL = "urn:ietf:params:jmap:mail"
SUBMISSION = "urn:ietf:params:jmap:submission"
VACATION = "urn:ietf:params:jmap:vacationresponse"
SIEVE = "urn:ietf:params:jmap:sieve"
CYRUS_SIEVE = "https://cyrusimap.org/ns/jmap/sieve"
BLOB = "urn:ietf:params:jmap:blob"
QUOTA = "urn:ietf:params:jmap:quota"
STALWART = "urn:stalwart:jmap"


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _wire_name(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("json", camel(f.name)))


def from_json(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from a wire object; unknown keys are ignored, missing ones take defaults."""
    kwargs = {f.name: data[_wire_name(f)] for f in dataclasses.fields(cls) if f.init and _wire_name(f) in data}  # type: ignore[arg-type]
    return cls(**kwargs)


def to_json(obj: Any, *, exclude: tuple[str, ...] = (), skip_none: bool = False) -> dict[str, Any]:
    """The wire form of a dataclass (nested dataclasses and lists of them included)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name in exclude or f.name.startswith("_") or not f.metadata.get("wire", True):
            continue
        value = getattr(obj, f.name)
        if value is None and skip_none:
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = to_json(value, skip_none=skip_none)
        elif isinstance(value, list):
            value = [to_json(v, skip_none=skip_none) if dataclasses.is_dataclass(v) else v for v in value]
        out[_wire_name(f)] = value
    return out


# -- session ---------------------------------------------------------------------------------------
@dataclass
class CoreCapability:
    """``urn:ietf:params:jmap:core`` limits (RFC 8620 §2)."""

    max_size_upload: int = 50_000_000
    max_concurrent_upload: int = 4
    max_size_request: int = 10_000_000
    max_concurrent_requests: int = 4
    max_calls_in_request: int = 16
    max_objects_in_get: int = 500
    max_objects_in_set: int = 500
    collation_algorithms: list[str] = field(default_factory=list)


@dataclass
class Account:
    """One entry of the session's ``accounts``."""

    id: str = field(default="", metadata={"wire": False})
    name: str = ""
    is_personal: bool = False
    is_read_only: bool = False
    account_capabilities: dict[str, Any] = field(default_factory=dict)


@dataclass
class Session:
    """The JMAP Session resource with its URLs already resolved against the session URL."""

    username: str
    api_url: str
    download_url: str
    upload_url: str
    event_source_url: str
    state: str
    capabilities: dict[str, Any]
    accounts: dict[str, Account]
    primary_accounts: dict[str, str]
    url: str = ""

    @property
    def core(self) -> CoreCapability:
        """Core limits; a limit the server leaves out or sends as a non-number keeps RFC 8620's usual default."""
        raw = self.capabilities.get(CORE)
        raw = raw if isinstance(raw, dict) else {}
        usable = {k: v for k, v in raw.items() if (isinstance(v, int) and not isinstance(v, bool) and v > 0) or isinstance(v, list)}
        return from_json(CoreCapability, usable)

    @classmethod
    def parse(cls, data: Mapping[str, Any], session_url: str) -> Session:
        """Validate a session object and resolve relative URLs (Cyrus sends ``/jmap/``) against ``session_url``."""
        if not isinstance(data, Mapping):
            raise ValueError("the session is not a JSON object")
        missing = [k for k in ("apiUrl", "downloadUrl", "uploadUrl", "capabilities") if k not in data]
        if missing:
            raise ValueError(f"session object lacks {', '.join(missing)}")
        capabilities = data.get("capabilities")
        accounts = data.get("accounts") or {}
        if not isinstance(capabilities, dict) or not isinstance(accounts, dict):
            raise ValueError("session capabilities/accounts are not objects")
        parsed = {}
        for aid, acct in accounts.items():
            a = from_json(Account, acct if isinstance(acct, dict) else {})
            a.id = str(aid)
            parsed[str(aid)] = a
        # urljoin keeps the {accountId} template braces; only scheme/host/path are resolved
        return cls(
            username=str(data.get("username", "")),
            api_url=urljoin(session_url, str(data["apiUrl"])),
            download_url=urljoin(session_url, str(data["downloadUrl"])),
            upload_url=urljoin(session_url, str(data["uploadUrl"])),
            event_source_url=urljoin(session_url, str(data.get("eventSourceUrl") or "")),
            state=str(data.get("state", "")),
            capabilities=capabilities,
            accounts=parsed,
            primary_accounts={str(k): str(v) for k, v in (data.get("primaryAccounts") or {}).items()},
            url=session_url,
        )


# -- mail ------------------------------------------------------------------------------------------
@dataclass
class Mailbox:
    """RFC 8621 §2 Mailbox (the properties an export keeps)."""

    id: str
    name: str = ""
    parent_id: str | None = None
    role: str | None = None
    sort_order: int = 0
    is_subscribed: bool = False
    total_emails: int | None = None


@dataclass
class Email:
    """RFC 8621 §4 Email metadata used by export.

    ``keywords`` keeps the server's spelling; :attr:`keyword_set` is lower-cased for comparison, since
    keywords are case-insensitive (RFC 8621 §4.1.1) and servers differ (Cyrus lower-cases them).
    """

    id: str
    blob_id: str = ""
    thread_id: str = ""
    mailbox_ids: dict[str, bool] = field(default_factory=dict)
    keywords: dict[str, bool] = field(default_factory=dict)
    size: int = 0
    received_at: str = ""
    message_id: list[str] | None = None

    @property
    def keyword_set(self) -> frozenset[str]:
        return frozenset(k.lower() for k, v in self.keywords.items() if v)

    def has_keyword(self, keyword: str) -> bool:
        return keyword.lower() in self.keyword_set


EMAIL_PROPERTIES = ["id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt", "messageId"]
MAILBOX_PROPERTIES = ["id", "name", "parentId", "role", "sortOrder", "isSubscribed", "totalEmails"]


@dataclass
class EmailAddress:
    """RFC 8621 §4.1.2.3 EmailAddress."""

    email: str
    name: str | None = None


@dataclass
class Identity:
    """RFC 8621 §6 Identity."""

    id: str = ""
    name: str = ""
    email: str = ""
    reply_to: list[EmailAddress] | None = None
    bcc: list[EmailAddress] | None = None
    text_signature: str = ""
    html_signature: str = ""
    may_delete: bool = True

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Identity:
        ident = from_json(cls, data)
        for attr in ("reply_to", "bcc"):
            value = getattr(ident, attr)
            if isinstance(value, list):
                setattr(ident, attr, [from_json(EmailAddress, a) for a in value if isinstance(a, dict)])
        return ident


@dataclass
class VacationResponse:
    """RFC 8621 §8 VacationResponse (always the ``singleton``)."""

    id: str = "singleton"
    is_enabled: bool = False
    from_date: str | None = None
    to_date: str | None = None
    subject: str | None = None
    text_body: str | None = None
    html_body: str | None = None


@dataclass
class SieveScript:
    """RFC 9661 SieveScript; the script text is the blob ``blob_id``."""

    id: str = ""
    name: str | None = None
    blob_id: str = ""
    is_active: bool = False


@dataclass
class Quota:
    """RFC 9425 Quota."""

    id: str
    resource_type: str = ""
    used: int = 0
    hard_limit: int = 0
    scope: str = ""
    name: str = ""
    types: list[str] = field(default_factory=list)
    warn_limit: int | None = None
    soft_limit: int | None = None
    description: str | None = None


@dataclass
class SetError:
    """RFC 8620 §5.3 SetError; ``existing_id`` is set for ``alreadyExists``."""

    type: str
    description: str | None = None
    properties: list[str] | None = None
    existing_id: str | None = None


@dataclass
class ImportedEmail:
    """The created part of one Email/import entry."""

    id: str
    blob_id: str = ""
    thread_id: str = ""
    size: int = 0


@dataclass
class EmailImportResult:
    """RFC 8621 §4.8 Email/import response, keyed by the caller's creation ids."""

    created: dict[str, ImportedEmail]
    not_created: dict[str, SetError]
    new_state: str | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> EmailImportResult:
        return cls(
            created={k: from_json(ImportedEmail, v) for k, v in (data.get("created") or {}).items()},
            not_created={k: from_json(SetError, v) for k, v in (data.get("notCreated") or {}).items()},
            new_state=data.get("newState"),
        )

    def email_id(self, creation_id: str) -> str | None:
        """The id of the imported email, or of the existing identical one (``alreadyExists``)."""
        if creation_id in self.created:
            return self.created[creation_id].id
        err = self.not_created.get(creation_id)
        return err.existing_id if err is not None and err.type == "alreadyExists" else None


@dataclass
class BlobDigest:
    """RFC 9404 Blob/get with ``digest:sha-256`` (base64 on the wire) and ``size``."""

    id: str
    size: int | None = None
    digest_sha256: str | None = field(default=None, metadata={"json": "digest:sha-256"})

    @property
    def sha256_hex(self) -> str | None:
        return base64.b64decode(self.digest_sha256).hex() if self.digest_sha256 else None


@dataclass
class Upload:
    """RFC 8620 §6.1 upload response."""

    account_id: str
    blob_id: str
    type: str = ""
    size: int = 0


@dataclass
class Download:
    """A blob written to a file: its size and sha256 (hex) computed while streaming."""

    blob_id: str
    size: int
    sha256: str
    content_type: str = ""


@dataclass
class Changes:
    """RFC 8620 §5.2 /changes, all pages merged."""

    old_state: str
    new_state: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
