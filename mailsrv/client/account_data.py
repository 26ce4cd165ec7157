"""Per-account data besides mail, for :class:`~.jmap.JmapClient`: Identity, VacationResponse, SieveScript,
Quota and Blob digests.

Each helper checks the account's capability first and raises :class:`~.errors.UnsupportedCapability` when it
is missing or the server turns the method down (``unknownMethod``, ``accountNotSupportedByMethod``), so
callers can record "not supported" instead of failing. Sieve uses RFC 9661 (``urn:ietf:params:jmap:sieve``);
Cyrus' ``https://cyrusimap.org/ns/jmap/sieve`` is used only when a probe shows its methods answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .calls import Invocation
from .errors import JmapMethodError, SetFailed, UnsupportedCapability
from .models import (
    BLOB,
    CORE,
    CYRUS_SIEVE,
    MAIL,
    QUOTA,
    SIEVE,
    SUBMISSION,
    VACATION,
    BlobDigest,
    Identity,
    Quota,
    SieveScript,
    VacationResponse,
    from_json,
    to_json,
)

if TYPE_CHECKING:
    from .jmap import JmapCore as _Base
else:
    _Base = object

UNSUPPORTED_ERRORS = frozenset({"unknownMethod", "accountNotSupportedByMethod", "unknownCapability"})


@contextmanager
def unsupported_as(capability: str, account_id: str) -> Iterator[None]:
    """Turn "the server does not do this" method errors into :class:`UnsupportedCapability`."""
    try:
        yield
    except JmapMethodError as exc:
        if exc.type in UNSUPPORTED_ERRORS:
            raise UnsupportedCapability(capability, account_id, f"{exc.method}: {exc.type}") from None
        raise


def _set_result(args: dict[str, Any], method: str, creation_id: str) -> dict[str, Any]:
    created = (args.get("created") or {}).get(creation_id)
    if created is None:
        err = (args.get("notCreated") or {}).get(creation_id) or {}
        raise SetFailed(method, creation_id, str(err.get("type", "unknown")), err.get("description"))
    return dict(created)


def _raise_not_updated(args: dict[str, Any], method: str) -> None:
    for oid, err in (args.get("notUpdated") or {}).items():
        raise SetFailed(method, oid, str(err.get("type", "unknown")), err.get("description"))


class AccountDataMethods(_Base):
    """Mixin: identities, vacation response, Sieve scripts, quotas, blob digests."""

    # -- Identity (RFC 8621 §6) --------------------------------------------------------------------
    def identities(self, *, account_id: str | None = None) -> list[Identity]:
        aid = self.require(SUBMISSION, account_id)
        with unsupported_as(SUBMISSION, aid):
            resp = self.request([Invocation("Identity/get", {"accountId": aid, "ids": None}, "i")], (CORE, MAIL, SUBMISSION))
        return [Identity.parse(o) for o in resp.args("i").get("list") or []]

    def create_identity(self, identity: Identity, *, account_id: str | None = None) -> str:
        """Create an identity; returns its id (``SetFailed`` when the server refuses it)."""
        aid = self.require(SUBMISSION, account_id)
        body = to_json(identity, exclude=("id", "may_delete"), skip_none=True)
        with unsupported_as(SUBMISSION, aid):
            resp = self.request([Invocation("Identity/set", {"accountId": aid, "create": {"new": body}}, "i")], (CORE, MAIL, SUBMISSION))
        return str(_set_result(resp.args("i"), "Identity/set", "new")["id"])

    # -- VacationResponse (RFC 8621 §8) ------------------------------------------------------------
    def vacation_response(self, *, account_id: str | None = None) -> VacationResponse:
        aid = self.require(VACATION, account_id)
        with unsupported_as(VACATION, aid):
            resp = self.request([Invocation("VacationResponse/get", {"accountId": aid, "ids": None}, "v")], (CORE, VACATION))
        found = resp.args("v").get("list") or []
        return from_json(VacationResponse, found[0]) if found else VacationResponse()

    def set_vacation_response(self, vacation: VacationResponse, *, account_id: str | None = None) -> None:
        """Write the whole singleton (some servers apply a patch to defaults rather than to what is stored)."""
        aid = self.require(VACATION, account_id)
        body = to_json(vacation, exclude=("id",))
        with unsupported_as(VACATION, aid):
            resp = self.request([Invocation("VacationResponse/set", {"accountId": aid, "update": {"singleton": body}}, "v")],
                                (CORE, VACATION))
        _raise_not_updated(resp.args("v"), "VacationResponse/set")

    # -- SieveScript (RFC 9661) --------------------------------------------------------------------
    def sieve_capability(self, *, account_id: str | None = None) -> str | None:
        """The Sieve URN usable for the account, or ``None``: RFC 9661's, else Cyrus' when its methods answer."""
        aid = self.resolve_account(account_id)
        if self.has_capability(SIEVE, aid):
            return SIEVE
        if not self.has_capability(CYRUS_SIEVE, aid):
            return None
        key = (aid, CYRUS_SIEVE)
        if key not in self._probes:
            try:
                self.request([Invocation("SieveScript/get", {"accountId": aid, "ids": []}, "p")], (CORE, CYRUS_SIEVE))
                self._probes[key] = True
            except JmapMethodError as exc:
                if exc.type not in UNSUPPORTED_ERRORS:
                    raise
                self._probes[key] = False
        return CYRUS_SIEVE if self._probes[key] else None

    def _sieve(self, account_id: str | None) -> tuple[str, str]:
        aid = self.resolve_account(account_id)
        urn = self.sieve_capability(account_id=aid)
        if urn is None:
            detail = "Cyrus' sieve methods are disabled" if self.has_capability(CYRUS_SIEVE, aid) else ""
            raise UnsupportedCapability(SIEVE, aid, detail)
        return aid, urn

    def sieve_scripts(self, *, account_id: str | None = None) -> list[SieveScript]:
        aid, urn = self._sieve(account_id)
        with unsupported_as(SIEVE, aid):
            resp = self.request([Invocation("SieveScript/get", {"accountId": aid, "ids": None}, "s")], (CORE, urn))
        return [from_json(SieveScript, o) for o in resp.args("s").get("list") or []]

    def create_sieve_script(self, name: str, content: bytes, *, activate: bool = False, account_id: str | None = None) -> SieveScript:
        """Upload the script text and create the script (RFC 9661 §2.2), optionally making it the active one."""
        aid, urn = self._sieve(account_id)
        blob = self.upload(content, account_id=aid, content_type="application/sieve")
        args: dict[str, Any] = {"accountId": aid, "create": {"new": {"name": name, "blobId": blob.blob_id}}}
        if activate:
            args["onSuccessActivateScript"] = "#new"
        with unsupported_as(SIEVE, aid):
            resp = self.request([Invocation("SieveScript/set", args, "s")], (CORE, urn))
        created = _set_result(resp.args("s"), "SieveScript/set", "new")
        return SieveScript(id=str(created["id"]), name=name, blob_id=str(created.get("blobId", blob.blob_id)), is_active=activate)

    # -- Quota (RFC 9425) --------------------------------------------------------------------------
    def quotas(self, *, account_id: str | None = None) -> list[Quota]:
        aid = self.require(QUOTA, account_id)
        with unsupported_as(QUOTA, aid):
            resp = self.request([Invocation("Quota/get", {"accountId": aid, "ids": None}, "q")], (CORE, QUOTA))
        return [from_json(Quota, o) for o in resp.args("q").get("list") or []]

    # -- overview --------------------------------------------------------------------------------
    def features(self, *, account_id: str | None = None) -> dict[str, bool]:
        """What the account offers beyond mail, so callers can record "not supported" up front."""
        aid = self.resolve_account(account_id)
        return {
            "identities": self.has_capability(SUBMISSION, aid),
            "vacation": self.has_capability(VACATION, aid),
            "sieve": self.sieve_capability(account_id=aid) is not None,
            "quota": self.has_capability(QUOTA, aid),
            "blob_digest": self.supports_blob_digest(account_id=aid),
        }

    # -- Blob digests (RFC 9404) -------------------------------------------------------------------
    def supports_blob_digest(self, algorithm: str = "sha-256", *, account_id: str | None = None) -> bool:
        aid = self.resolve_account(account_id)
        if not self.has_capability(BLOB, aid):
            return False
        account = self.session.accounts.get(aid)
        caps = (account.account_capabilities.get(BLOB) if account else None) or {}
        algorithms = caps.get("supportedDigestAlgorithms")
        return algorithms is None or algorithm in algorithms

    def blob_digests(self, blob_ids: Sequence[str], *, account_id: str | None = None) -> dict[str, BlobDigest]:
        """``Blob/get`` with ``digest:sha-256`` and ``size`` for many blobs (batched at maxObjectsInGet)."""
        aid = self.resolve_account(account_id)
        if not self.supports_blob_digest(account_id=aid):
            raise UnsupportedCapability(BLOB, aid, "Blob/get with digest:sha-256")
        with unsupported_as(BLOB, aid):
            objs, _, _ = self.get_objects("Blob", blob_ids, ["digest:sha-256", "size"], account_id=aid, using=(CORE, BLOB))
        return {str(o["id"]): from_json(BlobDigest, o) for o in objs if "id" in o}
