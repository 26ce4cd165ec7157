"""Server profiles: which management client to use and how to log in to one account's JMAP.

==============  =====================  ==========================================================================
profile         management             login for account ``A``
==============  =====================  ==========================================================================
embedded        ``/api`` REST          ``A%<master_user>`` + master password when ``master_user`` is set,
stalwart-0.15   ``/api`` REST          else the admin's Basic login with ``A``'s accountId (admin impersonation)
stalwart-0.16   JMAP ``x:Account``     ``A%<admin_user>`` + the admin's own password (impersonation)
generic         ``[accounts.*]``       ``A``'s own user + ``password_file``, or ``token_file`` (Bearer)
==============  =====================  ==========================================================================

Secrets come from the ``*_file`` keys or the environment (:func:`mailsrv.config.read_secret`):
``MAILSIDECAR_ADMIN_PASSWORD``, ``MAILSIDECAR_MASTER_PASSWORD``, and per generic account
``MAILSIDECAR_PASSWORD_<NAME>`` / ``MAILSIDECAR_TOKEN_<NAME>`` (name upper-cased, other characters ``_``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..config import AccountsConfig, Config, ConfigError, ServerConfig, read_secret
from .errors import UnknownAccount
from .jmap import JmapClient
from .management import GenericManagement, ManagedAccount, ManagementClient, Stalwart015Management, Stalwart016Management
from .transport import Auth, BasicAuth, BearerAuth, RetryPolicy, Transport

PROFILES = ("embedded", "stalwart-0.15", "stalwart-0.16", "generic")
ADMIN_ENV = "MAILSIDECAR_ADMIN_PASSWORD"
MASTER_ENV = "MAILSIDECAR_MASTER_PASSWORD"


def account_env(kind: str, name: str) -> str:
    """``MAILSIDECAR_PASSWORD_ALICE_EXAMPLE_ORG`` for kind ``PASSWORD`` and account ``alice@example.org``."""
    return f"MAILSIDECAR_{kind}_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


def select_accounts(accounts: Iterable[ManagedAccount], include: list[str], exclude: list[str]) -> list[ManagedAccount]:
    """The accounts whose name matches an ``include`` glob and no ``exclude`` glob (case-sensitive)."""
    return [
        a for a in accounts
        if any(fnmatch.fnmatchcase(a.name, p) for p in include) and not any(fnmatch.fnmatchcase(a.name, p) for p in exclude)
    ]


@dataclass
class AccountLogin:
    """How to reach one account: credentials, and the accountId to use (``None``: the session's primary one).

    ``method`` is ``master-user``, ``admin-impersonation``, ``impersonation`` or ``own-credentials``.
    """

    account: ManagedAccount
    auth: Auth
    account_id: str | None
    method: str


class Profile:
    """A configured server: its management client, its account selection and per-account JMAP clients."""

    def __init__(self, server: ServerConfig, accounts: AccountsConfig) -> None:
        if server.profile not in PROFILES:
            raise ConfigError(f"server.profile: unknown profile {server.profile!r} (one of {', '.join(PROFILES)})")
        self.name = server.profile
        self.server = server
        self.accounts_cfg = accounts
        self._management: ManagementClient | None = None
        self._listed: list[ManagedAccount] | None = None
        if self.name == "generic":
            if not accounts.credentials:
                raise ConfigError("accounts.credentials: the generic profile needs one [accounts.credentials.NAME] per account")
            for name, cred in accounts.credentials.items():
                if cred.password_file and cred.token_file:
                    raise ConfigError(f"accounts.credentials.{name}: set password_file or token_file, not both")

    # -- secrets -----------------------------------------------------------------------------------
    def _admin_password(self) -> str:
        password = read_secret(self.server.admin_password_file, ADMIN_ENV, "server.admin_password_file")
        assert password is not None  # required=True raises instead
        return password

    def admin_auth(self) -> BasicAuth:
        return BasicAuth(self.server.admin_user, self._admin_password())

    def _master_password(self) -> str | None:
        if not self.server.master_user:
            return None
        return read_secret(self.server.master_password_file, MASTER_ENV, "server.master_password_file")

    def _own_auth(self, name: str) -> Auth:
        cred = self.accounts_cfg.credentials.get(name)
        if cred is None:
            raise UnknownAccount(f"account {name!r} has no [accounts.credentials.{name}] entry")
        key = f"accounts.credentials.{name}"
        if not cred.password_file:
            token = read_secret(cred.token_file, account_env("TOKEN", name), f"{key}.token_file", required=False)
            if token:
                return BearerAuth(token, f"token of {cred.user!r}")
        password = read_secret(cred.password_file, account_env("PASSWORD", name), f"{key}.password_file", required=False)
        if password:
            return BasicAuth(cred.user, password)
        raise ConfigError(
            f"{key}: no secret configured (set password_file or token_file, or ${account_env('PASSWORD', name)} / "
            f"${account_env('TOKEN', name)})"
        )

    # -- clients -----------------------------------------------------------------------------------
    def jmap_client(self, auth: Auth, account_id: str | None = None, *, retry: RetryPolicy | None = None,
                    max_objects_in_get: int | None = None, max_calls_in_request: int | None = None) -> JmapClient:
        """A JMAP client for this server with the given login (limits can only be lowered)."""
        transport = Transport(auth, ca_file=self.server.ca_file, allow_plain_http=self.server.allow_plain_http, retry=retry)
        return JmapClient(self.server.url, session_url=self.server.jmap_session_url, auth=auth, account_id=account_id,
                          transport=transport, max_objects_in_get=max_objects_in_get, max_calls_in_request=max_calls_in_request)

    @property
    def management(self) -> ManagementClient:
        """The management client of the profile's dialect (created on first use)."""
        if self._management is None:
            if self.name == "generic":
                self._management = GenericManagement(self.accounts_cfg.credentials)
            elif self.name == "stalwart-0.16":
                self._management = Stalwart016Management(self.jmap_client(self.admin_auth()))
            else:
                transport = Transport(self.admin_auth(), ca_file=self.server.ca_file, allow_plain_http=self.server.allow_plain_http)
                self._management = Stalwart015Management(self.server.url, transport)
        return self._management

    def list_accounts(self) -> list[ManagedAccount]:
        """The accounts the server lists now, narrowed by ``[accounts] include`` / ``exclude``."""
        self._listed = select_accounts(self.management.list_accounts(), self.accounts_cfg.include, self.accounts_cfg.exclude)
        return list(self._listed)

    def account(self, name: str) -> ManagedAccount:
        """One selected account by name (or e-mail address); :class:`UnknownAccount` if not listed/selected.

        Uses the last :meth:`list_accounts` result (listing once if there is none).
        """
        listed = self._listed if self._listed is not None else self.list_accounts()
        for a in listed:
            if a.name == name:
                return a
        for a in listed:
            if name.lower() in (e.lower() for e in a.emails):
                return a
        raise UnknownAccount(f"account {name!r} is not on the server or not selected by [accounts] include/exclude")

    def login_for(self, account: ManagedAccount) -> AccountLogin:
        """The credentials and accountId that reach ``account`` under this profile."""
        if self.name == "generic":
            return AccountLogin(account, self._own_auth(account.name), account.account_id, "own-credentials")
        if self.name == "stalwart-0.16":
            login = BasicAuth(f"{account.name}%{self.server.admin_user}", self._admin_password())
            return AccountLogin(account, login, None, "impersonation")
        master = self._master_password()
        if master is not None:
            return AccountLogin(account, BasicAuth(f"{account.name}%{self.server.master_user}", master), None, "master-user")
        if not account.account_id:
            raise UnknownAccount(f"account {account.name!r}: the server listed no id for it, so the admin cannot address it")
        return AccountLogin(account, self.admin_auth(), account.account_id, "admin-impersonation")

    def open(self, account: ManagedAccount | str, *, retry: RetryPolicy | None = None, max_objects_in_get: int | None = None,
             max_calls_in_request: int | None = None) -> JmapClient:
        """A JMAP client working on one account (by object, name or e-mail address)."""
        acct = self.account(account) if isinstance(account, str) else account
        login = self.login_for(acct)
        return self.jmap_client(login.auth, login.account_id, retry=retry, max_objects_in_get=max_objects_in_get,
                                max_calls_in_request=max_calls_in_request)

    def close(self) -> None:
        if self._management is not None:
            self._management.close()


def open_profile(cfg: Config) -> Profile:
    """The :class:`Profile` of a loaded config (``[server]`` + ``[accounts]``)."""
    return Profile(cfg.server, cfg.accounts)
