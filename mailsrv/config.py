"""Load and validate the one TOML file shared by mailsrv, mail-exporter and mail-backup.

Every program calls :func:`load_config`; a user mistake becomes a :class:`ConfigError` whose message names
the file, the key path and the problem. Secrets never live in the file: ``*_file`` keys point at a file
holding the secret, or an environment variable supplies it (see :func:`read_secret`).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_CONFIG_PATH = "/etc/mailsidecar/config.toml"
CONFIG_ENV = "MAILSIDECAR_CONFIG"


class ConfigError(Exception):
    """A configuration problem the operator must fix; the message says where and what."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


def split_listen(value: str) -> tuple[str, int]:
    """Split a validated ``HOST:PORT`` (``[::1]:25`` too) into host and port."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class ServerConfig(_Section):
    profile: Literal["embedded", "stalwart-0.15", "stalwart-0.16", "generic"] = "embedded"
    url: str = "http://127.0.0.1:8080"
    jmap_session_url: str = ""
    metrics_url: str = ""
    admin_user: str = "admin"
    admin_password_file: str = ""
    master_user: str = ""
    master_password_file: str = ""
    ca_file: str = ""
    allow_plain_http: bool = False
    metrics_user: str = ""
    metrics_password_file: str = ""


class AccountCredential(_Section):
    user: str
    password_file: str = ""
    token_file: str = ""


class AccountsConfig(_Section):
    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)
    credentials: dict[str, AccountCredential] = Field(default_factory=dict)


class ExportConfig(_Section):
    dir: str = "/var/lib/mailsidecar/export"
    concurrency: int = Field(default=4, ge=1, le=64)


class StateConfig(_Section):
    dir: str = "/var/lib/mailsidecar/state"


class KeepPolicy(_Section):
    last: int | None = Field(default=None, ge=0)
    daily: int | None = Field(default=None, ge=0)
    weekly: int | None = Field(default=None, ge=0)
    monthly: int | None = Field(default=None, ge=0)
    yearly: int | None = Field(default=None, ge=0)
    within: str | None = None


class TargetConfig(BaseModel):
    """One backup target; type-specific keys are checked by the target that uses them."""

    model_config = ConfigDict(extra="allow")
    name: str
    type: Literal["restic", "b2", "s3"]
    keep: KeepPolicy = Field(default_factory=KeepPolicy)


HookJob = Literal["run", "check", "drill"]
HOOK_JOBS: tuple[HookJob, ...] = ("run", "check", "drill")


class HookConfig(_Section):
    """One ``[[schedule.hooks]]`` item: commands and/or HTTP pings on start, success and failure of jobs."""

    name: str = ""  # shown in log lines; default: hook N
    jobs: list[HookJob] = Field(default_factory=lambda: list(HOOK_JOBS))
    ping_url: str = ""  # healthchecks-style: <url>/start, <url>, <url>/fail
    ping_url_file: str = ""  # the same, read from a file (a ping URL is a secret)
    on_start_url: str = ""  # explicit URLs win over ping_url for their event
    on_success_url: str = ""
    on_failure_url: str = ""
    on_start: list[str] = Field(default_factory=list)  # a command (argv, no shell)
    on_success: list[str] = Field(default_factory=list)
    on_failure: list[str] = Field(default_factory=list)
    timeout: float = Field(default=10.0, gt=0, le=3600)

    @field_validator("ping_url", "on_start_url", "on_success_url", "on_failure_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value


class ScheduleConfig(_Section):
    run: str = "45 2 * * *"  # cron; "" disables the job in `mail-backup schedule`
    check: str = "0 4 * * 0"
    drill: str = "30 4 * * 0"
    timezone: str = ""  # IANA name for the cron times; default: the system's local time
    jitter: float = Field(default=0.0, ge=0, le=86400)  # up to this many seconds of random delay per start
    misfire_grace: float = Field(default=7 * 86400.0, gt=0)  # a start missed by less than this runs once at start-up
    lock_wait: float = Field(default=4 * 3600.0, ge=0)  # how long a job waits for another one to finish
    check_read_data: float = Field(default=0.0, ge=0, le=100)  # percent of pack data the weekly check reads
    drill_accounts: int = Field(default=3, ge=1, le=100_000)  # accounts sampled per target
    drill_messages: int = Field(default=20, ge=0, le=100_000)  # messages sampled per account
    drill_dir: str = ""  # scratch directory of the drill; default: the system's temp dir
    hooks: list[HookConfig] = Field(default_factory=list)


ExporterSource = Literal["mailserver", "queue", "backups", "tls"]
EXPORTER_SOURCES: tuple[ExporterSource, ...] = ("mailserver", "queue", "backups", "tls")


class ExporterProbeConfig(_Section):
    """mail-exporter's optional end-to-end probe: submit over SMTP, wait for it over JMAP, delete it."""

    enabled: bool = False
    submission: str = ""  # HOST:PORT of the submission listener; default: [server] url's host, port 587
    tls: Literal["starttls", "tls"] = "starttls"
    user: str = ""  # the probe account's login (SMTP AUTH and JMAP)
    password_file: str = ""  # or $MAILSIDECAR_PROBE_PASSWORD
    mail_from: str = ""  # default: user
    to: str = ""  # default: mail_from; must be a mailbox the probe login reads over JMAP
    interval: float = Field(default=300.0, gt=0)
    timeout: float = Field(default=120.0, gt=0)

    @field_validator("submission")
    @classmethod
    def _optional_listen(cls, value: str) -> str:
        return _listen(value) if value else value


class ExporterConfig(_Section):
    listen: str = "127.0.0.1:9925"
    tls_cert_file: str = ""  # serve /metrics over HTTPS when both are set
    tls_key_file: str = ""
    auth_user: str = ""  # require HTTP Basic auth on /metrics when set
    auth_password_file: str = ""  # or $MAILSIDECAR_EXPORTER_PASSWORD
    sources: list[ExporterSource] = Field(default_factory=lambda: list(EXPORTER_SOURCES))
    tls_endpoints: list[str] = Field(default_factory=list)  # smtp://host:25, smtps://host:465, imaps://…, https://…
    stalwart_metric_names: Literal["auto", "0.16.12", "0.16.0"] = "auto"  # stalwart-0.16 only
    queue_top_domains: int = Field(default=10, ge=0, le=1000)
    queue_page_size: int = Field(default=5000, ge=1, le=100_000)
    queue_max_messages: int = Field(default=1_000_000, ge=1)
    mailserver_interval: float = Field(default=15.0, gt=0)
    mailserver_timeout: float = Field(default=10.0, gt=0)
    queue_interval: float = Field(default=60.0, gt=0)
    queue_timeout: float = Field(default=300.0, gt=0)
    backups_interval: float = Field(default=30.0, gt=0)
    backups_timeout: float = Field(default=10.0, gt=0)
    tls_interval: float = Field(default=600.0, gt=0)
    tls_timeout: float = Field(default=10.0, gt=0)
    probe: ExporterProbeConfig = Field(default_factory=ExporterProbeConfig)
    _v_listen = field_validator("listen")(_listen)


class JmapLimits(_Section):
    max_size_upload: int = Field(default=50_000_000, ge=1024)
    max_concurrent_upload: int = Field(default=4, ge=1)
    max_size_request: int = Field(default=10_000_000, ge=1024)
    max_concurrent_requests: int = Field(default=4, ge=1)
    max_calls_in_request: int = Field(default=16, ge=1)
    max_objects_in_get: int = Field(default=500, ge=1)
    max_objects_in_set: int = Field(default=500, ge=1)
    max_query_results: int = Field(default=5000, ge=1)
    max_changes_results: int = Field(default=5000, ge=1)
    changes_max_history: int = Field(default=10_000, ge=1)
    upload_ttl: int = Field(default=3600, ge=1)


class MailsrvConfig(_Section):
    data_dir: str = "/var/lib/mailsrv"
    hostname: str = "mail.example.org"
    domains: list[str] = Field(default_factory=lambda: ["example.org"])
    smtp_listen: str = "0.0.0.0:25"
    submission_listen: str = "0.0.0.0:587"
    http_listen: str = "127.0.0.1:8080"
    https_listen: str = ""
    admin_user: str = "admin"
    admin_password_file: str = ""
    master_user: str = ""
    master_password_file: str = ""
    metrics_user: str = ""
    metrics_password_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    max_message_size: int = Field(default=25 * 1024 * 1024, ge=1024)
    smtp_rate_limit: int = Field(default=2000, ge=0)  # messages per client IP per smtp_rate_window; 0 = unlimited
    smtp_rate_window: float = Field(default=60.0, gt=0)
    auth_ban_failures: int = Field(default=10, ge=1)
    auth_ban_window: int = Field(default=600, ge=1)
    auth_ban_duration: int = Field(default=3600, ge=1)
    smarthost: str = ""
    smarthost_user: str = ""
    smarthost_password_file: str = ""
    smarthost_tls: Literal["none", "starttls", "tls"] = "none"
    queue_retry_initial: float = Field(default=60.0, gt=0)
    queue_retry_max: float = Field(default=3600.0, gt=0)
    queue_expire: float = Field(default=5 * 86400.0, gt=0)
    queue_poll_interval: float = Field(default=1.0, gt=0)
    vacation_interval: int = Field(default=7 * 86400, ge=0)
    jmap: JmapLimits = Field(default_factory=JmapLimits)

    _v_listen = field_validator("smtp_listen", "submission_listen", "http_listen")(_listen)

    @field_validator("https_listen", "smarthost")
    @classmethod
    def _optional_listen(cls, value: str) -> str:
        return _listen(value) if value else value

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        cleaned = [d.strip().lower() for d in value]
        for d in cleaned:
            if not d or "@" in d or " " in d:
                raise ValueError(f"not a domain name: {d!r}")
        return cleaned


class Config(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    accounts: AccountsConfig = Field(default_factory=AccountsConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    targets: list[TargetConfig] = Field(default_factory=list)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    exporter: ExporterConfig = Field(default_factory=ExporterConfig)
    mailsrv: MailsrvConfig = Field(default_factory=MailsrvConfig)
    path: str = Field(default="", exclude=True)

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, value: list[TargetConfig]) -> list[TargetConfig]:
        seen: set[str] = set()
        for t in value:
            if t.name in seen:
                raise ValueError(f"target name {t.name!r} is used twice")
            seen.add(t.name)
        return value


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def resolve_config_path(path: str | None) -> str:
    """The config file to use: explicit, then ``$MAILSIDECAR_CONFIG``, then the system default."""
    return path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: str | None = None) -> Config:
    """Read and validate the config file; raise :class:`ConfigError` naming file, key and problem."""
    file = resolve_config_path(path)
    try:
        raw = Path(file).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    return parse_config(data, file)


def parse_config(data: dict[str, Any], file: str = "<config>") -> Config:
    """Validate already-parsed TOML data."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{file}: {_key_path(err['loc'])}: {msg}")
        raise ConfigError("\n".join(problems)) from None
    cfg.path = file
    return cfg


CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
_CREDENTIAL_PREFIXES = ("%d/", "$CREDENTIALS_DIRECTORY/", "${CREDENTIALS_DIRECTORY}/")


def expand_credentials(path: str, what: str) -> str:
    """``%d/NAME`` (or ``$CREDENTIALS_DIRECTORY/NAME``) → the file systemd's ``LoadCredential=NAME:…`` made for this unit.

    One config file then serves every unit, each reading its own copy in ``/run/credentials/<unit>/``.
    Outside systemd, set ``$CREDENTIALS_DIRECTORY`` to the directory holding the secret files.
    """
    prefix = next((p for p in _CREDENTIAL_PREFIXES if path.startswith(p)), None)
    if prefix is None:
        return path
    base = os.environ.get(CREDENTIALS_ENV)
    if not base:
        raise ConfigError(f"{what}: {path} names a systemd credential, but ${CREDENTIALS_ENV} is not set "
                          "(run under the unit with LoadCredential=, or set it to the directory holding the secrets)")
    name = path[len(prefix):]
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"{what}: {path}: expected {prefix}NAME with a plain credential name")
    return str(Path(base) / name)


def read_secret(file_value: str, env_name: str, what: str, *, required: bool = True) -> str | None:
    """Return a secret from the environment variable ``env_name`` or the file named by a ``*_file`` key.

    The environment wins so container secrets can override the file; ``%d/NAME`` reads systemd's
    ``LoadCredential=NAME`` (:func:`expand_credentials`).
    Trailing newlines in the file are stripped. ``what`` names the key in error messages.
    """
    env = os.environ.get(env_name)
    if env:
        return env
    if not file_value:
        if required:
            raise ConfigError(f"{what}: no secret configured (set {what} to a file, or ${env_name})")
        return None
    file_value = expand_credentials(file_value, what)
    try:
        secret = Path(file_value).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read secret file {file_value}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: secret file {file_value} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{what}: secret file {file_value} is empty")
    return secret
