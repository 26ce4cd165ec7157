"""Identities, Sieve scripts and the vacation response: restored where the destination supports them.

Each kind ends in one :class:`ObjectResult`. What the server does not offer or turns down (Cyrus answers
``Identity/set`` with ``unknownMethod``; its Sieve methods are off by default) is reported as
``unsupported`` with the server's reason — never hidden — and never stops the mail restore. Everything is
additive: an identity with the same name and address, or a script with the same name and content, counts as
present; a script whose name is taken by different content is restored beside it as ``<name> (restored)``.
The backup's active script is activated only when no other script is active on the server.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from mailsrv.client import JmapClient
from mailsrv.client.calls import Invocation
from mailsrv.client.errors import JmapMethodError, MailClientError, SetFailed, UnsupportedCapability
from mailsrv.client.models import CORE, SIEVE, Identity, SieveScript, VacationResponse, from_json

from .restore_source import RestoreSource

CYRUS_VACATION_SCRIPT = "urn:ietf:params:jmap:vacationresponse"  # Cyrus keeps the vacation response as a script
_HEX64 = re.compile(r"[0-9a-f]{64}")
VACATION_FIELDS = ("is_enabled", "from_date", "to_date", "subject", "text_body", "html_body")


@dataclass
class ObjectResult:
    kind: str  # identities | sieve | vacation
    status: str = "none"  # none | present | restored | planned | unsupported | failed | not-in-backup
    created: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def bad(self) -> bool:
        return self.status in ("unsupported", "failed") or bool(self.failed)

    def finish(self, dry_run: bool) -> ObjectResult:
        if self.status in ("unsupported", "not-in-backup"):
            return self
        if self.failed:
            self.status = "failed"
        elif self.created:
            self.status = "planned" if dry_run else "restored"
        elif self.present:
            self.status = "present"
        return self

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "created": self.created, "present": self.present, "failed": self.failed, "detail": self.detail}

    def summary(self) -> str:
        parts = [self.status]
        if self.created:
            parts.append(f"{'to create' if self.status == 'planned' else 'created'}: {', '.join(self.created)}")
        if self.present:
            parts.append(f"already there: {len(self.present)}")
        if self.failed:
            parts.append(f"failed: {'; '.join(self.failed)}")
        if self.detail:
            parts.append(self.detail)
        return " · ".join(parts)


def _unsupported(result: ObjectResult, exc: Exception) -> ObjectResult:
    result.status = "unsupported"
    result.detail = str(exc)
    return result


def _not_in_backup(source: RestoreSource, kind: str, result: ObjectResult) -> ObjectResult | None:
    reason = source.reader.manifest.unsupported.get(kind)
    if reason is not None:
        result.status, result.detail = "not-in-backup", f"the backed-up server did not offer it: {reason}"
        return result
    return None


# -- identities --------------------------------------------------------------------------------------------
def _identity_key(i: Identity) -> tuple[str, str]:
    return (i.name or "", (i.email or "").lower())


def restore_identities(client: JmapClient, source: RestoreSource, *, dry_run: bool) -> ObjectResult:
    result = ObjectResult("identities")
    if _not_in_backup(source, "identities", result):
        return result
    wanted = [Identity.parse(o) for o in source.reader.json("identities") or [] if isinstance(o, dict)]
    blank = [i for i in wanted if not i.email]  # e.g. Cyrus' read-only stub: nothing an identity could send as
    wanted = [i for i in wanted if i.email]
    if blank:
        result.detail = f"{len(blank)} identit{'y' if len(blank) == 1 else 'ies'} without an address skipped"
    if not wanted:
        return result
    try:
        have = {_identity_key(i) for i in client.identities()}
    except UnsupportedCapability as exc:
        return _unsupported(result, exc)
    for ident in wanted:
        label = f"{ident.name or '(no name)'} <{ident.email}>"
        if _identity_key(ident) in have:
            result.present.append(label)
            continue
        if dry_run:
            result.created.append(label)
            continue
        try:
            client.create_identity(ident)
        except UnsupportedCapability as exc:
            return _unsupported(result, exc)
        except (SetFailed, JmapMethodError) as exc:
            result.failed.append(f"{label}: {exc}")
            continue
        have.add(_identity_key(ident))
        result.created.append(label)
    return result.finish(dry_run)


# -- sieve -------------------------------------------------------------------------------------------------
def _script_records(data: Any) -> list[dict[str, Any]]:
    return [s for s in data or [] if isinstance(s, dict) and isinstance(s.get("name"), str)]


def _activate(client: JmapClient, urn: str, script_id: str) -> None:
    aid = client.account_id
    resp = client.request([Invocation("SieveScript/set", {"accountId": aid, "onSuccessActivateScript": script_id}, "a")], (CORE, urn))
    resp.args("a")


def restore_sieve(client: JmapClient, source: RestoreSource, *, dry_run: bool) -> ObjectResult:
    result = ObjectResult("sieve")
    if _not_in_backup(source, "sieve", result):
        return result
    scripts = [s for s in _script_records(source.reader.json("sieve")) if s["name"] != CYRUS_VACATION_SCRIPT]
    if not scripts:
        return result
    try:
        existing = client.sieve_scripts()  # UnsupportedCapability (with the server's reason) when it has no Sieve
        urn = client.sieve_capability() or SIEVE
    except UnsupportedCapability as exc:
        return _unsupported(result, exc)
    by_name = {s.name: s for s in existing if s.name}
    active = any(s.is_active for s in existing)
    left_inactive = False
    source.ensure_blobs(str(s["sha256"]) for s in scripts if _HEX64.fullmatch(str(s.get("sha256") or "")))
    for rec in scripts:
        name = str(rec["name"])
        sha = str(rec.get("sha256") or "")
        try:
            content = source.blob(sha).read_bytes() if _HEX64.fullmatch(sha) else None
        except (OSError, ValueError):
            content = None
        if content is None or hashlib.sha256(content).hexdigest() != sha:
            result.failed.append(f"{name}: the backup's copy of the script is missing or damaged")
            continue
        want_active = bool(rec.get("is_active", rec.get("isActive", False)))
        try:
            kind, label, is_active = _one_script(client, urn, by_name, name, content, activate=want_active and not active,
                                                 dry_run=dry_run)
        except UnsupportedCapability as exc:
            return _unsupported(result, exc)
        except MailClientError as exc:
            result.failed.append(f"{name}: {exc}")
            continue
        (result.present if kind == "present" else result.created).append(label)
        active = active or is_active
        left_inactive = left_inactive or (want_active and not is_active)
    if left_inactive:
        result.detail = "another script is active on the server; the backup's active script was restored inactive"
    return result.finish(dry_run)


def _one_script(client: JmapClient, urn: str, by_name: dict[str, SieveScript], name: str, content: bytes, *, activate: bool,
                dry_run: bool) -> tuple[str, str, bool]:
    """``(present|created, name used, active afterwards)`` for one script."""
    for candidate in (name, f"{name} (restored)"):
        current = by_name.get(candidate)
        if current is None:
            if dry_run:
                return "created", candidate, activate
            made = client.create_sieve_script(candidate, content, activate=activate)
            by_name[candidate] = made
            return "created", candidate, activate
        if client.fetch_blob(current.blob_id) == content:
            if activate and not current.is_active and not dry_run:
                _activate(client, urn, current.id)
                current.is_active = True
            return "present", candidate, current.is_active or activate
    raise SetFailed("SieveScript/set", name, "alreadyExists", f"both {name!r} and {name + ' (restored)'!r} hold other scripts")


# -- vacation ----------------------------------------------------------------------------------------------
def _vacation_record(data: Any) -> VacationResponse | None:
    if isinstance(data, list):
        data = data[0] if data else None
    return from_json(VacationResponse, data) if isinstance(data, dict) else None


def _same(a: VacationResponse, b: VacationResponse) -> bool:
    if not a.is_enabled and not b.is_enabled and not (a.subject or a.text_body or a.html_body):
        return True
    return all((getattr(a, f) or None) == (getattr(b, f) or None) for f in VACATION_FIELDS)


def restore_vacation(client: JmapClient, source: RestoreSource, *, dry_run: bool) -> ObjectResult:
    result = ObjectResult("vacation")
    if _not_in_backup(source, "vacation", result):
        return result
    wanted = _vacation_record(source.reader.json("vacation"))
    if wanted is None:
        return result
    label = "enabled" if wanted.is_enabled else "disabled"
    try:
        current = client.vacation_response()
        if _same(wanted, current):
            result.present.append(label)
        elif dry_run:
            result.created.append(label)
        else:
            client.set_vacation_response(VacationResponse(**{f: getattr(wanted, f) for f in VACATION_FIELDS}))
            result.created.append(label)
    except UnsupportedCapability as exc:
        return _unsupported(result, exc)
    except (SetFailed, JmapMethodError) as exc:
        result.failed.append(str(exc))
    return result.finish(dry_run)


RESTORERS = {"identities": restore_identities, "sieve": restore_sieve, "vacation": restore_vacation}
