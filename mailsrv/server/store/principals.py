"""Principals (accounts), their addresses and aliases, hosted domains, passwords and recipient lookup."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .db import Database

INDIVIDUAL = "individual"
PRINCIPAL_TYPES = {"individual", "group", "resource", "location", "list", "other", "domain", "tenant", "role"}
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class PrincipalError(Exception):
    """A principal operation that cannot be done; ``code`` follows Stalwart's management errors."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.extra = extra


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return f"$scrypt$n={_SCRYPT['n']},r={_SCRYPT['r']},p={_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def is_hashed(secret: str) -> bool:
    return secret.startswith("$scrypt$") or secret.startswith("$pbkdf2-sha256$")


def verify_password(stored: str, password: str) -> bool:
    """Check ``password`` against a stored scrypt or pbkdf2-sha256 hash (never plain text)."""
    try:
        if stored.startswith("$scrypt$"):
            _, _, params, salt, digest = stored.split("$")
            p = dict(kv.split("=") for kv in params.split(","))
            got = hashlib.scrypt(
                password.encode(),
                salt=base64.b64decode(salt),
                n=int(p["n"]),
                r=int(p["r"]),
                p=int(p["p"]),
                dklen=len(base64.b64decode(digest)),
            )
            return hmac.compare_digest(got, base64.b64decode(digest))
        if stored.startswith("$pbkdf2-sha256$"):
            _, _, rounds, salt, digest = stored.split("$")
            got = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(rounds))
            return hmac.compare_digest(got, base64.b64decode(digest))
    except (ValueError, KeyError, TypeError):
        return False
    return False


@dataclass
class Principal:
    id: int
    name: str
    type: str
    description: str
    secrets: list[str]
    quota: int
    roles: list[str]
    emails: list[str] = field(default_factory=list)
    usage: Callable[[], int] = field(default=lambda: 0, repr=False, compare=False)

    @property
    def used_quota(self) -> int:
        """Bytes of mail stored (summed on demand: most lookups, e.g. per JMAP call, never need it)."""
        return self.usage()

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


class Principals:
    """Principal, address and domain records."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._verified: dict[tuple[int, str], float] = {}

    # -- domains -----------------------------------------------------------------------------------
    def add_domain(self, name: str, catch_all: int | None = None) -> bool:
        name = name.strip().lower()
        if not name or "@" in name or " " in name or "/" in name:
            raise PrincipalError("fieldInvalid", f"not a domain name: {name!r}", field="name")
        with self.db.tx() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO domains(name, catch_all, created) VALUES(?,?,?)", (name, catch_all, time.time())
            )
            if catch_all is not None:
                c.execute("UPDATE domains SET catch_all=? WHERE name=?", (catch_all, name))
            return cur.rowcount > 0

    def domains(self) -> list[str]:
        return [r[0] for r in self.db.q("SELECT name FROM domains ORDER BY name")]

    def is_local_domain(self, domain: str) -> bool:
        return self.db.one("SELECT 1 FROM domains WHERE name=?", (domain.lower(),)) is not None

    def delete_domain(self, name: str) -> bool:
        with self.db.tx() as c:
            return c.execute("DELETE FROM domains WHERE name=?", (name.lower(),)).rowcount > 0

    # -- principals --------------------------------------------------------------------------------
    def _load(self, row: sqlite3.Row) -> Principal:
        emails = [r[0] for r in self.db.q("SELECT address FROM addresses WHERE principal_id=? ORDER BY rowid", (row["id"],))]
        return Principal(
            id=row["id"],
            name=row["name"],
            type=row["type"],
            description=row["description"],
            secrets=json.loads(row["secret"] or "[]"),
            quota=row["quota"],
            roles=json.loads(row["roles"]),
            emails=emails,
            usage=functools.partial(self._usage, int(row["id"])),
        )

    def _usage(self, principal_id: int) -> int:
        row = self.db.one("SELECT COALESCE(SUM(size),0) FROM emails WHERE account_id=?", (principal_id,))
        return int(row[0]) if row else 0

    def get(self, principal_id: int) -> Principal | None:
        row = self.db.one("SELECT * FROM principals WHERE id=?", (principal_id,))
        return self._load(row) if row else None

    def by_name(self, name: str) -> Principal | None:
        row = self.db.one("SELECT * FROM principals WHERE name=?", (name,))
        if row is None and "@" in name:
            found = self.db.one("SELECT principal_id FROM addresses WHERE address=?", (name,))
            if found:
                row = self.db.one("SELECT * FROM principals WHERE id=?", (found[0],))
        return self._load(row) if row else None

    def search(self, types: set[str] | None = None, words: str = "") -> list[Principal]:
        rows = self.db.q("SELECT * FROM principals ORDER BY name")
        out = []
        tokens = [t.lower() for t in words.split()]
        for row in rows:
            if types and row["type"] not in types:
                continue
            p = self._load(row)
            hay = " ".join([p.name, p.description, *p.emails]).lower()
            if all(t in hay for t in tokens):
                out.append(p)
        return out

    def create(
        self,
        name: str,
        *,
        type_: str = INDIVIDUAL,
        password: str | None = None,
        secrets: list[str] | None = None,
        emails: list[str] | None = None,
        description: str = "",
        quota: int = 0,
        roles: list[str] | None = None,
    ) -> int:
        """Create a principal; plain-text passwords are hashed. Returns the new id."""
        name = name.strip()
        if not name or len(name) > 255 or any(c in name for c in "/\\\x00%") or name != name.strip():
            raise PrincipalError("fieldInvalid", f"invalid principal name: {name!r}", field="name")
        if type_ not in PRINCIPAL_TYPES:
            raise PrincipalError("fieldInvalid", f"unknown principal type: {type_!r}", field="type")
        stored = [s if is_hashed(s) else hash_password(s) for s in (secrets or [])]
        if password is not None:
            stored.insert(0, hash_password(password))
        if emails is None:
            emails = [name] if "@" in name else []
            if not emails and type_ == INDIVIDUAL:
                first = self.db.one("SELECT name FROM domains ORDER BY created, name LIMIT 1")
                if first:
                    emails = [f"{name}@{first[0]}"]
        with self.db.tx() as c:
            if c.execute("SELECT 1 FROM principals WHERE name=?", (name,)).fetchone():
                raise PrincipalError("fieldAlreadyExists", f"principal {name!r} already exists", field="name", value=name)
            cur = c.execute(
                "INSERT INTO principals(name, type, description, secret, quota, roles, created) VALUES(?,?,?,?,?,?,?)",
                (name, type_, description, json.dumps(stored), quota, json.dumps(roles or ["user"]), time.time()),
            )
            pid = int(cur.lastrowid or 0)
            for i, addr in enumerate(emails):
                self._add_address(c, pid, addr, "primary" if i == 0 else "alias")
        return pid

    def _add_address(self, c: sqlite3.Connection, pid: int, address: str, kind: str) -> None:
        address = address.strip().lower()
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or " " in address:
            raise PrincipalError("fieldInvalid", f"not an e-mail address: {address!r}", field="emails", value=address)
        owner = c.execute("SELECT principal_id FROM addresses WHERE address=?", (address,)).fetchone()
        if owner and owner[0] != pid:
            raise PrincipalError("fieldAlreadyExists", f"address {address} is in use", field="emails", value=address)
        c.execute("INSERT OR IGNORE INTO addresses(address, principal_id, kind) VALUES(?,?,?)", (address, pid, kind))

    def add_address(self, pid: int, address: str, kind: str = "alias") -> None:
        with self.db.tx() as c:
            self._add_address(c, pid, address, kind)

    def remove_address(self, pid: int, address: str) -> None:
        with self.db.tx() as c:
            c.execute("DELETE FROM addresses WHERE principal_id=? AND address=?", (pid, address.lower()))

    def set_password(self, pid: int, password: str) -> None:
        with self.db.tx() as c:
            c.execute("UPDATE principals SET secret=? WHERE id=?", (json.dumps([hash_password(password)]), pid))
        self._verified = {k: v for k, v in self._verified.items() if k[0] != pid}

    def update(self, pid: int, **fields: Any) -> None:
        """Update columns: description, quota, roles (list), secrets (list), type, name."""
        cols: dict[str, Any] = {}
        for key, value in fields.items():
            if key == "roles":
                cols["roles"] = json.dumps(value)
            elif key == "secrets":
                cols["secret"] = json.dumps([s if is_hashed(s) else hash_password(s) for s in value])
            elif key in ("description", "quota", "type", "name"):
                cols[key] = value
            else:
                raise PrincipalError("fieldInvalid", f"unknown field {key!r}", field=key)
        if not cols:
            return
        with self.db.tx() as c:
            c.execute(
                f"UPDATE principals SET {', '.join(f'{k}=?' for k in cols)} WHERE id=?",
                (*cols.values(), pid),
            )
        self._verified = {k: v for k, v in self._verified.items() if k[0] != pid}

    def delete(self, pid: int) -> bool:
        with self.db.tx() as c:
            for table in ("emails", "mailboxes", "identities", "sieve_scripts", "submissions", "uploads",
                          "threads", "thread_msgids", "changelog", "states", "vacation", "vacation_replies"):
                c.execute(f"DELETE FROM {table} WHERE account_id=?", (pid,))
            return c.execute("DELETE FROM principals WHERE id=?", (pid,)).rowcount > 0

    # -- authentication and delivery lookup --------------------------------------------------------
    def authenticate(self, name: str, password: str) -> Principal | None:
        """The principal whose name or address is ``name`` and whose password matches."""
        return self.login(name, password)[0]

    def login(self, name: str, password: str) -> tuple[Principal | None, bool]:
        """:meth:`authenticate`, and whether the answer was worked out now: ``False`` only for a match answered
        from the cache of passwords verified in the last 5 minutes (failures are never cached)."""
        p = self.by_name(name)
        if p is None or not password:
            return None, True
        # keyed by the stored hashes too, so a password changed by another process (the CLI) takes effect at once
        key = (p.id, hashlib.sha256("\0".join([password, *p.secrets]).encode()).hexdigest())
        if self._verified.get(key, 0) > time.monotonic():
            return p, False
        if any(verify_password(s, password) for s in p.secrets):
            self._verified[key] = time.monotonic() + 300
            return p, True
        return None, True

    def resolve_recipient(self, address: str) -> int | None:
        """The account that receives mail for ``address`` (aliases, ``+detail``, catch-all)."""
        address = address.strip().strip("<>").lower()
        local, at, domain = address.rpartition("@")
        if not at:
            return None
        row = self.db.one("SELECT principal_id FROM addresses WHERE address=?", (address,))
        if row is None and "+" in local:
            row = self.db.one("SELECT principal_id FROM addresses WHERE address=?", (f"{local.split('+')[0]}@{domain}",))
        if row is None:
            row = self.db.one("SELECT catch_all FROM domains WHERE name=? AND catch_all IS NOT NULL", (domain,))
        return int(row[0]) if row else None
