"""Principals and domains as Stalwart's management APIs see them (shared by the 0.15 REST and 0.16 JMAP dialects).

Deliberate differences from Stalwart, for operators reading the API:

* **Secrets are never returned.** Stalwart 0.15 returns password hashes in ``secrets`` unless ``fields=`` is
  given; mailsrv omits ``secrets`` always, even when asked for it. Plain-text secrets sent on create/update
  are hashed (scrypt) before they are stored; values already in mailsrv's hash formats are kept as they are.
* **Domains** live in their own table. Their PrincipalSet ``id`` is stable and derived from the name:
  ``0x80000000 | (first 4 bytes of sha256(lower-case name) & 0x7fffffff)`` — always in the upper half of
  the u32 range, so it never collides with account ids (small integers), and it survives restarts,
  backups and VACUUM. ``members`` of a domain is the number of addresses in it, as on Stalwart.
* Groups, mailing lists, permissions, tenants, pictures, URLs and locales are not modelled: setting them
  answers ``{"error":"unsupported"}``; ``apiKey``/``oauthClient``/``tenant`` principals cannot be created.
* New individual accounts get Stalwart's default mailboxes at once (Inbox, Drafts, Sent Items, Junk Mail,
  Deleted Items). Unlike ``mailsrv account add``, no address is invented: an account without ``emails`` has none.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..store.principals import Principal, PrincipalError, hash_password, is_hashed, verify_password
from .envelope import BadRequest, field_exists, field_missing, not_found, other, page_slice, text, text_list, unsupported

if TYPE_CHECKING:
    from ..app import MailServer

DOMAIN = "domain"
ACCOUNT_TYPES = {"individual", "group", "resource", "location", "list", "other", "role"}
ALL_TYPES = [*sorted(ACCOUNT_TYPES), DOMAIN]
NOT_MODELLED_TYPES = {"tenant", "apiKey", "oauthClient"}
BUILTIN_ROLES = {"admin", "user", "tenant-admin"}
# Stalwart PrincipalSet fields mailsrv has no storage for.
NOT_MODELLED_FIELDS = {"memberOf", "members", "lists", "enabledPermissions", "disabledPermissions", "picture",
                       "urls", "externalMembers", "locale", "tenant"}
OUTPUT_FIELDS = {"name", "description", "emails", "roles", "quota", "usedQuota", "memberOf", "members"}
_WORD = re.compile(r"[^\W_]+")


def domain_id(name: str) -> int:
    """The stable id of a hosted domain (see the module docstring)."""
    digest = hashlib.sha256(name.strip().lower().encode()).digest()
    return 0x80000000 | (int.from_bytes(digest[:4], "big") & 0x7FFFFFFF)


def words(*texts: str) -> set[str]:
    """Lower-case alphanumeric words, as Stalwart's principal word index tokenizes names, addresses, descriptions."""
    return {w.lower() for t in texts for w in _WORD.findall(t)}


def normalize_type(value: Any) -> str:
    type_ = text(value, "type")
    if type_ == "superuser":  # Stalwart's legacy alias
        return "individual"
    if type_ in NOT_MODELLED_TYPES:
        raise unsupported(f"principals of type {type_} are not supported by mailsrv")
    if type_ not in ACCOUNT_TYPES and type_ != DOMAIN:
        raise BadRequest(f"unknown principal type: {type_}")
    return type_


@dataclass
class Entry:
    """One listed principal: an account or a hosted domain."""

    name: str
    type: str
    principal: Principal | None = None


class Directory:
    """Reads and writes principals for the management APIs (synchronous; call from a worker thread)."""

    def __init__(self, server: MailServer) -> None:
        self.server = server
        self.db = server.store.db
        self.principals = server.store.principals

    # -- reading -----------------------------------------------------------------------------------
    def find(self, name: str) -> Entry | None:
        """The principal or domain called exactly ``name`` (case-insensitive)."""
        row = self.db.one("SELECT id FROM principals WHERE name=?", (name,))
        if row is not None:
            p = self.principals.get(row[0])
            if p is not None:
                return Entry(p.name, p.type, p)
        dom = self.db.one("SELECT name FROM domains WHERE name=?", (name,))
        return Entry(dom[0], DOMAIN) if dom else None

    def entries(self, types: set[str] | None = None, filter_: str = "") -> list[Entry]:
        """Accounts and domains of ``types`` (all when empty) matching every word of ``filter_``, by name."""
        tokens = words(filter_)
        out: list[Entry] = []
        if not types or types & ACCOUNT_TYPES:
            for p in self.principals.search(types & ACCOUNT_TYPES if types else None):
                if tokens <= words(p.name, p.description, *p.emails):
                    out.append(Entry(p.name, p.type, p))
        if not types or DOMAIN in types:
            out += [Entry(d, DOMAIN) for d in self.principals.domains() if tokens <= words(d)]
        out.sort(key=lambda e: e.name.lower())
        return out

    def domain_members(self, name: str) -> list[str]:
        """Names of the accounts with an address in domain ``name``."""
        rows = self.db.q(
            "SELECT DISTINCT p.name FROM addresses a JOIN principals p ON p.id = a.principal_id "
            "WHERE a.address LIKE ? ESCAPE '\\' ORDER BY p.name",
            (_in_domain(name),),
        )
        return [r[0] for r in rows]

    def principal_set(self, entry: Entry, fields: set[str] | None = None) -> dict[str, Any]:
        """Stalwart's PrincipalSet JSON (keys omitted when unset; never secrets)."""

        def want(f: str) -> bool:
            return not fields or f in fields

        if entry.principal is None:
            out: dict[str, Any] = {"id": domain_id(entry.name), "type": DOMAIN}
            if want("name"):
                out["name"] = entry.name
            if want("members"):
                row = self.db.one("SELECT COUNT(*) FROM addresses WHERE address LIKE ? ESCAPE '\\'", (_in_domain(entry.name),))
                out["members"] = int(row[0]) if row else 0
            return out
        p = entry.principal
        out = {"id": p.id, "type": p.type}
        if want("name"):
            out["name"] = p.name
        if want("description") and p.description:
            out["description"] = p.description
        if want("emails") and p.emails:
            out["emails"] = list(p.emails)
        if want("roles") and p.roles:
            out["roles"] = list(p.roles)
        if want("quota") and p.quota:
            out["quota"] = p.quota
        if want("usedQuota") and p.used_quota > 0 and p.type in ("individual", "group"):
            out["usedQuota"] = p.used_quota
        return out

    def list_page(self, types: set[str], filter_: str, page: int, limit: int, fields: set[str], count: bool) -> dict[str, Any]:
        found = self.entries(types, filter_)
        items = [] if count else [self.principal_set(e, fields) for e in page_slice(found, page, limit)]
        return {"items": items, "total": len(found)}

    def get(self, name: str) -> dict[str, Any]:
        entry = self.find(name)
        if entry is None:
            raise not_found(name)
        return self.principal_set(entry)

    # -- validation --------------------------------------------------------------------------------
    def _check_email(self, value: str, owner_id: int | None) -> str:
        address = value.strip().lower()
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or any(c.isspace() for c in address):
            raise other("Invalid email", "Email address is invalid")
        row = self.db.one("SELECT principal_id FROM addresses WHERE address=?", (address,))
        if row is not None and row[0] != owner_id:
            raise field_exists("emails", address)
        if not self.principals.is_local_domain(domain):
            raise not_found(domain)
        return address

    def _check_roles(self, roles: list[str]) -> list[str]:
        for role in roles:
            if role in BUILTIN_ROLES:
                continue
            if self.db.one("SELECT 1 FROM principals WHERE name=? AND type='role'", (role,)) is None:
                raise not_found(role)
        return roles

    def _name_taken(self, name: str) -> bool:
        return (
            self.db.one("SELECT 1 FROM principals WHERE name=?", (name,)) is not None
            or self.principals.is_local_domain(name)
        )

    @staticmethod
    def _quota(value: Any) -> int:
        if isinstance(value, list):
            raise unsupported("per-type directory quotas are not supported by mailsrv")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRequest("'quota' must be a non-negative integer")
        return value

    @staticmethod
    def _hash(secrets: list[str]) -> list[str]:
        return [s if is_hashed(s) else hash_password(s) for s in secrets if s]

    # -- writing -----------------------------------------------------------------------------------
    def create(self, body: Any) -> int:
        """Create a principal from a PrincipalSet; returns its id."""
        if not isinstance(body, dict):
            raise BadRequest("the body must be a PrincipalSet object")
        for key, value in body.items():
            if key in NOT_MODELLED_FIELDS:
                if value not in (None, "", [], 0):
                    raise unsupported(f"field {key} is not supported by mailsrv")
            elif key not in {"type", "name", "description", "secrets", "emails", "quota", "roles", "id", "usedQuota"}:
                raise BadRequest(f"unknown field: {key}")
        type_ = normalize_type(body.get("type", "individual"))
        name = text(body.get("name") or "", "name").strip().lower()
        if not name:
            raise field_missing("name")
        if type_ == DOMAIN:
            return self._create_domain(name)
        description = text(body.get("description") or "", "description")
        secrets = self._hash(text_list(body.get("secrets") or [], "secrets"))
        emails = text_list(body.get("emails") or [], "emails")
        quota = self._quota(body.get("quota") or 0)
        roles = text_list(body.get("roles") or [], "roles")
        with self.db.tx():
            if self._name_taken(name):
                raise field_exists("name", name)
            addresses = [self._check_email(e, None) for e in emails]
            if len(set(addresses)) != len(addresses):
                raise BadRequest("duplicate address in 'emails'")
            try:
                pid = self.principals.create(
                    name, type_=type_, secrets=secrets, emails=addresses, description=description,
                    quota=quota, roles=self._check_roles(roles) or (["user"] if type_ == "individual" else []),
                )
            except PrincipalError as exc:
                raise _from_store(exc) from None
            if type_ == "individual":
                self.server.store.mail.ensure_default_mailboxes(pid)
        return pid

    def _create_domain(self, name: str) -> int:
        with self.db.tx():
            if self._name_taken(name):
                raise field_exists("name", name)
            try:
                self.principals.add_domain(name)
            except PrincipalError as exc:
                raise _from_store(exc) from None
        return domain_id(name)

    def update(self, name: str, changes: Any) -> None:
        """Apply Stalwart PrincipalUpdate actions, all or nothing."""
        if not isinstance(changes, list) or not all(isinstance(c, dict) for c in changes):
            raise BadRequest("the body must be a list of {action, field, value} objects")
        parsed: list[tuple[str, str, Any]] = []
        for change in changes:
            action, field = change.get("action"), change.get("field")
            if action not in ("set", "addItem", "removeItem"):
                raise BadRequest(f"unknown action: {action!r}")
            if not isinstance(field, str):
                raise BadRequest("'field' must be a string")
            value = change.get("value")
            if field == "secrets" and action != "removeItem":
                value = self._hash(text_list(value if value is not None else [], "secrets"))
            parsed.append((action, field, value))
        with self.db.tx():
            entry = self.find(name)
            if entry is None:
                raise not_found(name)
            if entry.principal is None:
                if parsed:
                    raise unsupported("hosted domains have no editable fields on mailsrv")
                return
            for action, field, value in parsed:
                self._apply(entry.principal.id, action, field, value)

    def _apply(self, pid: int, action: str, field: str, value: Any) -> None:
        p = self.principals.get(pid)
        assert p is not None
        scalar = field in ("name", "description", "type", "quota")
        if scalar and action != "set":
            raise BadRequest(f"'{field}' only supports the 'set' action")
        try:
            if field == "name":
                new = text(value, "name").strip().lower()
                if not new:
                    raise field_missing("name")
                if new != p.name.lower() and self._name_taken(new):
                    raise field_exists("name", new)
                self.principals.update(pid, name=new)
            elif field == "description":
                self.principals.update(pid, description=text(value or "", "description"))
            elif field == "type":
                type_ = normalize_type(value)
                if type_ == DOMAIN:
                    raise unsupported("an account cannot become a domain")
                self.principals.update(pid, type=type_)
            elif field == "quota":
                self.principals.update(pid, quota=self._quota(value))
            elif field == "secrets":
                self._apply_secrets(p, action, value)
            elif field == "emails":
                self._apply_emails(p, action, text_list(value if value is not None else [], "emails"))
            elif field == "roles":
                roles = text_list(value if value is not None else [], "roles")
                if action == "set":
                    new_roles = roles
                elif action == "addItem":
                    new_roles = p.roles + [r for r in roles if r not in p.roles]
                else:
                    new_roles = [r for r in p.roles if r not in roles]
                self.principals.update(pid, roles=self._check_roles(new_roles))
            elif field in NOT_MODELLED_FIELDS or field == "usedQuota":
                raise unsupported(f"field {field} is not supported by mailsrv")
            else:
                raise BadRequest(f"unknown field: {field}")
        except PrincipalError as exc:
            raise _from_store(exc) from None

    def _apply_secrets(self, p: Principal, action: str, value: Any) -> None:
        if action == "set":
            self.principals.update(p.id, secrets=value)
        elif action == "addItem":
            self.principals.update(p.id, secrets=[*p.secrets, *value])
        else:
            gone = text_list(value if value is not None else [], "secrets")
            keep = [s for s in p.secrets if not any(s == g or verify_password(s, g) for g in gone)]
            self.principals.update(p.id, secrets=keep)

    def _apply_emails(self, p: Principal, action: str, values: list[str]) -> None:
        if action == "removeItem":
            for v in values:
                self.principals.remove_address(p.id, v.strip().lower())
            return
        addresses = [self._check_email(v, p.id) for v in values]
        if action == "set":
            for old in p.emails:
                self.principals.remove_address(p.id, old)
            current: list[str] = []
        else:
            current = [e.lower() for e in p.emails]
        for address in addresses:
            if address not in current:
                self.principals.add_address(p.id, address, "primary" if not current else "alias")
                current.append(address)

    def delete(self, name: str) -> None:
        with self.db.tx():
            entry = self.find(name)
            if entry is None:
                raise not_found(name)
            if entry.principal is not None:
                self.principals.delete(entry.principal.id)
                return
            members = self.domain_members(entry.name)
            if members:
                found = ", ".join(members[:5]) + (f" and {len(members) - 5} others" if len(members) > 5 else "")
                raise other("Domain has members", f"Domains must have no members to be deleted: Found: {found}")
            self.principals.delete_domain(entry.name)


def _in_domain(name: str) -> str:
    """A LIKE pattern for the addresses of domain ``name``."""
    return "%@" + name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _from_store(exc: PrincipalError) -> Exception:
    """Map a store-level PrincipalError to Stalwart's management error."""
    if exc.code == "fieldAlreadyExists":
        return field_exists(str(exc.extra.get("field", "")), str(exc.extra.get("value", "")))
    if exc.code == "notFound":
        return not_found(str(exc.extra.get("value", exc)))
    return other(str(exc), f"invalid {exc.extra.get('field', 'value')}")


__all__ = ["ALL_TYPES", "DOMAIN", "Directory", "Entry", "domain_id"]
