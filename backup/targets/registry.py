"""``[[targets]]`` config → :class:`~backup.targets.base.Target` objects.

Each target type checks its own keys here (``TargetConfig`` allows extra keys); a mistake becomes a
:class:`~mailsrv.config.ConfigError` naming ``FILE: targets[N].key`` and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailsrv.config import Config, ConfigError, TargetConfig, expand_credentials

from .base import Target

COMMON_KEYS = {"name", "type", "keep", "host"}


class Options:
    """Typed access to one ``[[targets]]`` item's keys; every getter marks its key as known."""

    def __init__(self, tc: TargetConfig, index: int, file: str = "") -> None:
        self.tc = tc
        self.index = index
        self.file = file
        self.raw: dict[str, Any] = dict(tc.model_extra or {})
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.file + ': ' if self.file else ''}targets[{self.index}].{key}"

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {problem} (target {self.tc.name!r})")

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.raw.get(key)

    def has(self, key: str) -> bool:
        self.used.add(key)
        value = self.raw.get(key)
        return value is not None and value != ""

    def string(self, key: str, default: str = "", *, required: bool = False, choices: Sequence[str] = ()) -> str:
        value = self._get(key)
        if value is None or value == "":
            if required:
                raise self.error(key, "required")
            return default
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {type(value).__name__}")
        if choices and value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def number(self, key: str, default: float | None = None, *, minimum: float = 0, maximum: float | None = None,
               integer: bool = False) -> float | None:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
            raise self.error(key, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            raise self.error(key, f"must be between {minimum} and {maximum}" if maximum is not None else f"must be at least {minimum}")
        return value

    def integer(self, key: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.number(key, default, minimum=minimum, maximum=maximum, integer=True)
        return int(value if value is not None else default)

    def file_path(self, key: str, *, required: bool = False) -> str:
        """A path to a readable file (checked now, read later by whoever needs the secret)."""
        value = self.string(key, required=required)
        if value:
            value = expand_credentials(value, self.where(key))  # %d/NAME: systemd LoadCredential=
        if value and not os.access(value, os.R_OK):
            problem = "no such file" if not Path(value).exists() else "file is not readable"
            raise self.error(key, f"{problem}: {value}")
        return value

    def read_file(self, key: str, *, required: bool = False, env: str = "") -> str:
        """The secret held by the file named by ``key`` (or the environment variable ``env``)."""
        if env and os.environ.get(env):
            self.used.add(key)
            return os.environ[env]
        path = self.file_path(key, required=required)
        if not path:
            return ""
        try:
            secret = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(key, f"cannot read {path}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
        if not secret:
            raise self.error(key, f"{path} is empty")
        return secret

    def finish(self, allowed_extra: Sequence[str] = ()) -> None:
        """Refuse keys no getter asked for (typos would otherwise be ignored silently)."""
        unknown = sorted(set(self.raw) - self.used - set(allowed_extra) - COMMON_KEYS)
        if unknown:
            raise self.error(unknown[0], f"unknown key for a {self.tc.type} target")


def host_name(opts: Options) -> str:
    import socket

    return opts.string("host", socket.gethostname())


def build_target(tc: TargetConfig, index: int, *, file: str = "", b2_api: Any = None) -> Target:
    """The target described by ``targets[index]``; ``b2_api`` injects a B2Api (tests use b2sdk's simulator)."""
    opts = Options(tc, index, file)
    target: Target
    if tc.type == "restic":
        from .restic import ResticTarget

        target = ResticTarget.from_options(opts)
    elif tc.type == "s3":
        from .s3 import build_s3_target

        target = build_s3_target(opts)
    else:
        from .b2 import build_b2_target

        target = build_b2_target(opts, api=b2_api)
    opts.finish()
    return target


def target_configs(cfg: Config, names: Sequence[str] | None = None) -> list[tuple[int, TargetConfig]]:
    """The configured targets (all, or those named), with their index in ``[[targets]]``."""
    indexed = list(enumerate(cfg.targets))
    if not names:
        return indexed
    known = {t.name: (i, t) for i, t in indexed}
    missing = [n for n in names if n not in known]
    if missing:
        listing = ", ".join(known) or "none configured"
        raise ConfigError(f"--target {missing[0]!r}: no such target in {cfg.path or 'the config'} (configured: {listing})")
    return [known[n] for n in dict.fromkeys(names)]


def open_target(cfg: Config, name: str, *, b2_api: Any = None) -> Target:
    """The configured target called ``name``."""
    ((index, tc),) = target_configs(cfg, [name])
    return build_target(tc, index, file=cfg.path, b2_api=b2_api)


def open_targets(cfg: Config, names: Sequence[str] | None = None, *, b2_api: Any = None) -> list[Target]:
    return [build_target(tc, i, file=cfg.path, b2_api=b2_api) for i, tc in target_configs(cfg, names)]


def host_of(target: Target) -> str:
    """The host name a target records in its snapshots (``host`` key, else this machine's name)."""
    import socket

    return str(getattr(target, "host", "") or socket.gethostname())
