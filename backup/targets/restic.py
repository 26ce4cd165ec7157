"""restic repositories (local path, ``s3:``, ``b2:``, ``sftp:``, ``rest:`` …) driven through the ``restic`` binary.

Plain subprocess, no wrapper library. The password reaches restic only through ``RESTIC_PASSWORD_FILE`` /
``RESTIC_PASSWORD_COMMAND`` and the repository through ``RESTIC_REPOSITORY``; cloud credentials from
``env_file`` go into the environment too — never into argv, logs or error messages.

How snapshots record accounts: each snapshot backs up the **absolute** paths of the complete account
directories of the export, so ``paths`` already names every account directory. A directory name *is* the
account name whenever the name is plainly safe (backup/exportdir/layout.py); only accounts stored under a
hashed ``x-…`` directory get one tag ``acct=<base64url(name)>``. So a 5,000-account site carries 5,000
paths (which restic needs anyway) and tags only for the rare hostile names. Every snapshot is tagged
``mailsidecar``; listing and retention only consider those. Retention groups by host only
(``--group-by host``), so adding or removing an account never starts a new retention group, and each
backup names the newest snapshot of the host as ``--parent`` so unchanged files are not re-read.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from mailsrv.config import KeepPolicy

from ..exportdir.layout import account_dir_name, inside
from ..exportdir.manifest import ManifestError, load_manifest
from .base import (
    CheckResult,
    Progress,
    PruneResult,
    ShipResult,
    Snapshot,
    SnapshotNotFound,
    TargetError,
    TargetIOError,
    TargetUnavailable,
    resolve_snapshot,
)

log = logging.getLogger(__name__)

TAG = "mailsidecar"
ACCOUNT_TAG = "acct="
EXCLUDES = (".tmp", ".*.tmp")  # the export's temp dir and atomic-write temp files
INCLUDE_CHUNK = 1000  # --include patterns per `restic restore`
MIN_VERSION = (0, 14, 0)
_HASHED_DIR = re.compile(r"x-[0-9a-f]{24}")
_SIZE = re.compile(r"total prune:\s+\d+ blobs / ([\d.]+) (B|KiB|MiB|GiB|TiB)")
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


@dataclass(frozen=True)
class Features:
    """What the installed restic can do (Debian 12 ships 0.14)."""

    version: tuple[int, int, int]

    @property
    def retry_lock(self) -> bool:  # --retry-lock DURATION (0.16)
        return self.version >= (0, 16, 0)

    @property
    def exit_codes(self) -> bool:  # 10 no repository · 11 lock failed · 12 wrong password (0.17)
        return self.version >= (0, 17, 0)


_VERSIONS: dict[str, Features] = {}


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.search(r"restic (\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise ValueError(text)
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def parse_env_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` prefix, quotes and ``#`` comments allowed)."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            line = line.removeprefix("export ").strip()
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"line {n}: expected KEY=VALUE")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            out[key] = value
    return out


def redact_repository(repo: str) -> str:
    """The repository location without credentials (``rest:https://user:pw@host/`` → ``rest:https://***@host/``)."""
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", repo)


def encode_account_tag(name: str) -> str:
    return ACCOUNT_TAG + base64.urlsafe_b64encode(name.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def decode_account_tag(tag: str) -> str | None:
    if not tag.startswith(ACCOUNT_TAG):
        return None
    raw = tag[len(ACCOUNT_TAG):]
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("utf-8", "surrogatepass")
    except ValueError:
        return None


def accounts_of(paths: Sequence[str], tags: Sequence[str]) -> list[str]:
    """Account names held by a snapshot, from its paths and ``acct=`` tags."""
    hashed = {}
    for tag in tags:
        name = decode_account_tag(tag)
        if name is not None:
            hashed[account_dir_name(name)] = name
    out = []
    for p in paths:
        d = p.rstrip("/").rsplit("/", 1)[-1]
        out.append(hashed.get(d, d))
    return out


def _glob_escape(path: str) -> str:
    return re.sub(r"([*?\[\\])", r"\\\1", path)


@dataclass
class Completed:
    code: int
    stdout: str
    stderr: str
    json_errors: list[dict[str, Any]] = field(default_factory=list)


class ResticTarget:
    """A restic repository; see the module docstring for how accounts map to snapshots."""

    type = "restic"

    def __init__(self, name: str, repository: str, *, password_file: str = "", password_command: str = "",
                 env: dict[str, str] | None = None, init: bool = False, binary: str = "restic", cache_dir: str = "",
                 host: str = "", lock_wait: float = 0.0, keep: KeepPolicy | None = None) -> None:
        if not password_file and not password_command:
            raise ValueError("password_file or password_command is required")
        self.name = name
        self.repository = repository
        self.password_file = password_file
        self.password_command = password_command
        self.extra_env = dict(env or {})
        self.auto_init = init
        self.binary = binary
        self.cache_dir = cache_dir
        self.host = host
        self.lock_wait = lock_wait
        self.keep = keep or KeepPolicy()
        self._snap_cache: dict[str, Snapshot] = {}
        self._paths: dict[str, list[str]] = {}  # snapshot id → its paths (the account directories)
        self._features: Features | None = None
        self._fresh: tuple[float, list[Snapshot]] | None = None  # listing taken right after our own backup

    @classmethod
    def from_options(cls, opts: Any) -> ResticTarget:
        from .registry import host_name

        repository = opts.string("repository", required=True)
        password_file = opts.file_path("password_file")
        password_command = opts.string("password_command")
        if bool(password_file) == bool(password_command):
            raise opts.error("password_file", "set exactly one of password_file or password_command")
        env: dict[str, str] = {}
        env_file = opts.file_path("env_file")
        if env_file:
            try:
                env = parse_env_file(env_file)
            except (OSError, UnicodeDecodeError) as exc:
                raise opts.error("env_file", f"cannot read {env_file}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
            except ValueError as exc:
                raise opts.error("env_file", f"{env_file}: {exc}") from None
        if repository.startswith(("/", ".", "~")) or ":" not in repository.split("/")[0]:
            repository = str(Path(repository).expanduser().absolute())
        return cls(opts.tc.name, repository, password_file=password_file, password_command=password_command, env=env,
                   init=opts.boolean("init", False), binary=opts.string("binary", "restic"), cache_dir=opts.string("cache_dir"),
                   host=host_name(opts), lock_wait=float(opts.number("lock_wait", 0.0, maximum=86400) or 0.0), keep=opts.tc.keep)

    # -- process plumbing --------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_PASSWORD", "RESTIC_REPOSITORY"))}
        env.update(self.extra_env)
        env["RESTIC_REPOSITORY"] = self.repository
        if self.password_file:
            env["RESTIC_PASSWORD_FILE"] = self.password_file
        else:
            env["RESTIC_PASSWORD_COMMAND"] = self.password_command
        if self.cache_dir:
            env["RESTIC_CACHE_DIR"] = self.cache_dir
        env.setdefault("RESTIC_PROGRESS_FPS", "2")
        env["LC_ALL"] = "C"
        return env

    def _redact(self, text: str) -> str:
        for value in self.extra_env.values():
            if len(value) >= 4:
                text = text.replace(value, "***")
        if self.repository != redact_repository(self.repository):
            text = text.replace(self.repository, redact_repository(self.repository))
        return text

    @property
    def where(self) -> str:
        return f"restic target {self.name} ({redact_repository(self.repository)})"

    def features(self) -> Features:
        if self._features is None:
            if self.binary not in _VERSIONS:
                try:
                    out = subprocess.run([self.binary, "version"], capture_output=True, text=True, timeout=30, env=self._env(), check=False)
                except FileNotFoundError:
                    raise TargetError(f"{self.where}: restic binary {self.binary!r} not found (install restic, or set binary)") from None
                try:
                    version = parse_version(out.stdout)
                except ValueError:
                    raise TargetError(f"{self.where}: cannot tell the version of {self.binary!r} ({out.stdout.strip()[:80]!r})") from None
                if version < MIN_VERSION:
                    raise TargetError(f"{self.where}: restic {'.'.join(map(str, version))} is too old (need 0.14 or newer)")
                _VERSIONS[self.binary] = Features(version)
            self._features = _VERSIONS[self.binary]
        return self._features

    def _popen(self, args: Sequence[str], *, on_line: Callable[[dict[str, Any]], None] | None = None) -> Completed:
        """Run ``restic ARGS``; JSON stdout lines go to ``on_line``; stderr is collected (JSON errors parsed)."""
        self.features()
        cmd = [self.binary, *args]
        log.debug("running restic %s", " ".join(args[:3]))
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=self._env(),
                                    text=True, encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise TargetError(f"{self.where}: restic binary {self.binary!r} not found") from None
        err_lines: list[str] = []
        json_errors: list[dict[str, Any]] = []

        def drain(stream: IO[str]) -> None:
            for line in stream:
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        obj = json.loads(line)
                        if isinstance(obj, dict) and obj.get("message_type") == "error":
                            json_errors.append(obj)
                            continue
                err_lines.append(line)

        assert proc.stdout is not None and proc.stderr is not None
        t = threading.Thread(target=drain, args=(proc.stderr,), daemon=True)
        t.start()
        out_lines: list[str] = []
        try:
            for line in proc.stdout:
                if on_line is not None and line.startswith("{"):
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        out_lines.append(line)
                        continue
                    if isinstance(obj, dict) and obj.get("message_type") in ("status", "verbose_status"):
                        on_line(obj)
                        continue
                    if isinstance(obj, dict):
                        on_line(obj)
                out_lines.append(line)
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        t.join(timeout=10)
        return Completed(code, "".join(out_lines), self._redact("".join(err_lines)), json_errors)

    def _classify(self, res: Completed, what: str) -> TargetError:
        """The error a failed restic run means, as one clear line."""
        err = res.stderr
        f = self._features
        low = err.lower()
        fatal = [ln.removeprefix("Fatal: ").strip() for ln in err.splitlines() if ln.strip()]
        first = next((ln for ln in fatal if not ln.startswith(("using temporary cache", "create exclusive lock", "load indexes"))), "")
        if (f and f.exit_codes and res.code == 12) or "wrong password" in low:
            return TargetUnavailable(f"{self.where}: wrong repository password (or no key found)")
        if (f and f.exit_codes and res.code == 10) or _missing_repo(low):
            if "bucket does not exist" in low or "nosuchbucket" in low:
                return TargetUnavailable(f"{self.where}: the bucket does not exist")
            return TargetUnavailable(f"{self.where}: no repository at this location (create it with `init = true` or `restic init`)")
        if (f and f.exit_codes and res.code == 11) or "repository is already locked" in low:
            holder = re.search(r"locked (?:exclusively )?by (PID \d+ on \S+ by [^\n(]+)", err)
            age = re.search(r"lock was created at ([^\n]+)", err)
            return LockedError(f"{self.where}: repository is locked by a running restic process"
                               f"{' (' + holder.group(1).strip() + ')' if holder else ''}"
                               f"{', created ' + age.group(1).strip() if age else ''}; it was not removed — retry later")
        if "no space left on device" in low:
            return TargetIOError(f"{self.where}: {what}: disk full (no space left on device)")
        if any(s in low for s in ("connection refused", "no such host", "i/o timeout", "dial tcp", "timeout", "503", "500 internal",
                                  "access denied", "invalidaccesskeyid", "signaturedoesnotmatch", "forbidden")):
            return TargetUnavailable(f"{self.where}: {what} failed: {first[:300]}")
        return TargetError(f"{self.where}: {what} failed (restic exit {res.code}): {first[:300] or 'no message'}")

    def _run(self, args: Sequence[str], what: str, *, on_line: Callable[[dict[str, Any]], None] | None = None,
             ok_codes: Sequence[int] = (0,), init_missing: bool = True) -> Completed:
        """Run restic, handling a missing repository (``init = true``) and stale locks (unlock, retry once)."""
        unlocked = False
        waited_until = time.monotonic() + self.lock_wait
        lock_args = ["--retry-lock", f"{int(self.lock_wait)}s"] if self.lock_wait and self.features().retry_lock else []
        while True:
            res = self._popen([*lock_args, *args], on_line=on_line)
            if res.code in ok_codes:
                return res
            exc = self._classify(res, what)
            if isinstance(exc, LockedError):
                if not unlocked:
                    self._unlock_stale()
                    unlocked = True
                    continue
                if not lock_args and time.monotonic() < waited_until:
                    time.sleep(min(5.0, max(0.1, waited_until - time.monotonic())))
                    continue
            elif isinstance(exc, TargetUnavailable) and "no repository" in str(exc) and self.auto_init and init_missing:
                self._init()
                init_missing = False
                continue
            raise exc

    def _unlock_stale(self) -> None:
        """``restic unlock`` without ``--remove-all`` removes only stale locks (dead process or 30 min old)."""
        res = self._popen(["unlock"])
        log.info("%s: restic unlock (stale locks only) exit %s", self.where, res.code)

    def _init(self) -> None:
        res = self._popen(["init"])
        if res.code != 0 and "already" not in res.stderr.lower():
            raise self._classify(res, "init")

    # -- Target --------------------------------------------------------------------------------------------
    def init(self) -> None:
        res = self._popen(["cat", "config"])
        if res.code == 0:
            return
        exc = self._classify(res, "open")
        if isinstance(exc, TargetUnavailable) and "no repository" in str(exc):
            self._init()
            return
        raise exc

    def ship(self, export_root: Path, account_dirs: Sequence[Path], *, host: str, progress: Progress | None = None) -> ShipResult:
        started = time.monotonic()
        dirs = [Path(os.path.abspath(d)) for d in account_dirs]
        if not dirs:
            raise TargetError(f"{self.where}: nothing to ship (no complete accounts)")
        names = {d: _account_name(d) for d in dirs}
        listing = self.snapshots(init_missing=True)
        previous = [s for s in listing if s.host == host]
        parent = previous[-1].id if previous else None
        begun = datetime.now(UTC)
        res, summary = self._backup(dirs, names, host, parent, progress)
        skipped: dict[str, str] = {}
        if res.code == 3:
            bad = self._failed_accounts(res, dirs)
            snap = str(summary.get("snapshot_id", ""))
            skipped = {names[d]: why for d, why in bad.items()}
            log.warning("%s: %d account(s) could not be read completely; storing a snapshot without them", self.where, len(bad))
            if snap:
                self._run(["forget", snap], "forget the incomplete snapshot")
            good = [d for d in dirs if d not in bad]
            if not good:
                raise TargetError(f"{self.where}: no account could be read completely: "
                                  + "; ".join(f"{a}: {w}" for a, w in list(skipped.items())[:3]))
            res, summary = self._backup(good, names, host, parent, progress)
            if res.code == 3:
                raise TargetError(f"{self.where}: files kept failing to read; no snapshot stored")
            dirs = good
        short = str(summary.get("snapshot_id", ""))
        full = self._cached_snapshot_id(short)
        if full is None:  # no cache (e.g. --no-cache in restic's environment): ask the repository
            listing = self.snapshots()
            full = next((s.id for s in listing if s.id.startswith(short)), short)
        else:  # one repository open less (each costs restic's key derivation): add the new snapshot ourselves
            listing = [*listing, Snapshot(id=full, short_id=short, time=begun, target=self.name, accounts=[names[d] for d in dirs],
                                          host=host)]
            self._paths[full] = [str(d) for d in dirs]
        self._fresh = (time.monotonic(), listing)  # the ship's caller usually asks for the count right away
        return ShipResult(target=self.name, snapshot_id=full, accounts=[names[d] for d in dirs],
                          bytes_added=int(summary.get("data_added", 0)), files_new=int(summary.get("files_new", 0)),
                          duration=time.monotonic() - started, skipped=skipped)

    def _cached_snapshot_id(self, short: str) -> str | None:
        """The full id of the snapshot restic just wrote, from restic's local cache (it stores new snapshot files)."""
        if not re.fullmatch(r"[0-9a-f]{8,64}", short):
            return None
        env = self._env()
        root = Path(env.get("RESTIC_CACHE_DIR") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "restic")
        recent = time.time() - 3600
        found = {p.name for p in root.glob(f"*/snapshots/{short[:2]}/{short}*") if p.stat().st_mtime > recent}
        return found.pop() if len(found) == 1 else None

    def _backup(self, dirs: Sequence[Path], names: dict[Path, str], host: str, parent: str | None,
                progress: Progress | None) -> tuple[Completed, dict[str, Any]]:
        summary: dict[str, Any] = {}

        def on_line(obj: dict[str, Any]) -> None:
            kind = obj.get("message_type")
            if kind == "summary":
                summary.update(obj)
            elif kind == "status" and progress is not None and "action" not in obj:
                progress(int(obj.get("bytes_done", 0) or 0), int(obj.get("total_bytes", 0) or 0))

        tags = ["--tag", TAG]
        for d in dirs:
            if _HASHED_DIR.fullmatch(d.name):
                tags += ["--tag", encode_account_tag(names[d])]
        with tempfile.NamedTemporaryFile("w", prefix="mail-backup-paths-", suffix=".txt", encoding="utf-8") as f:
            f.write("".join(f"{d}\n" for d in dirs))
            f.flush()
            args = ["backup", "--json", "--host", host, *tags, "--files-from-verbatim", f.name]
            for pattern in EXCLUDES:
                args += ["--exclude", pattern]
            if parent:
                args += ["--parent", parent]
            res = self._run(args, "backup", on_line=on_line, ok_codes=(0, 3))
        if not summary.get("snapshot_id"):
            raise TargetError(f"{self.where}: backup ended without a snapshot: {res.stderr.strip()[:300]}")
        self._snap_cache.clear()
        self._fresh = None
        return res, summary

    @staticmethod
    def _failed_accounts(res: Completed, dirs: Sequence[Path]) -> dict[Path, str]:
        bad: dict[Path, str] = {}
        for err in res.json_errors:
            item = str(err.get("item", ""))
            detail = err.get("error") or {}
            why = f"{detail.get('Op', 'read')} {item}: errno {detail.get('Err')}" if isinstance(detail, dict) else str(detail)
            for d in dirs:
                if item == str(d) or item.startswith(str(d) + "/"):
                    bad.setdefault(d, why)
        if not bad and res.code == 3:  # unknown item: treat every account as suspect rather than hide a failure
            bad = {d: "restic reported unreadable files" for d in dirs}
        return bad

    def snapshots(self, *, init_missing: bool = False) -> list[Snapshot]:
        if self._fresh is not None and time.monotonic() - self._fresh[0] < 5.0:
            listing = self._fresh[1]
            self._fresh = None
            return listing
        try:
            res = self._run(["snapshots", "--json", "--tag", TAG], "list snapshots", init_missing=init_missing)
        except TargetUnavailable as exc:
            if self.auto_init and not init_missing and "no repository" in str(exc):
                return []  # `init = true` creates it on the first ship: nothing shipped yet
            raise
        try:
            items = json.loads(res.stdout or "[]") or []
        except ValueError:
            raise TargetError(f"{self.where}: restic snapshots printed something that is not JSON") from None
        out = []
        for it in items:
            paths = [str(p) for p in it.get("paths") or []]
            tags = [str(t) for t in it.get("tags") or []]
            snap = Snapshot(id=it["id"], short_id=it.get("short_id") or it["id"][:8], time=datetime.fromisoformat(it["time"]),
                            target=self.name, accounts=accounts_of(paths, tags), host=it.get("hostname", ""))
            out.append(snap)
            self._snap_cache[snap.id] = snap
            self._paths[snap.id] = paths
        return sorted(out, key=lambda s: s.time)

    def _snapshot(self, snapshot_id: str) -> Snapshot:
        if snapshot_id in self._snap_cache:
            return self._snap_cache[snapshot_id]
        return resolve_snapshot(self.snapshots(), snapshot_id)

    def fetch(self, snapshot_id: str, account: str, dest: Path, *, paths: Sequence[str] | None = None) -> Path:
        snap = self._snapshot(snapshot_id)
        dirname = account_dir_name(account)
        if snap.id not in self._paths:
            self.snapshots()
        src_paths = [p for p in self._paths.get(snap.id, []) if p.rstrip("/").rsplit("/", 1)[-1] == dirname]
        if not src_paths:
            raise SnapshotNotFound(f"account {account!r} is not in snapshot {snap.short_id} of target {self.name}")
        src = src_paths[0].rstrip("/")
        rel = [inside(Path("/"), p).as_posix()[1:] for p in paths] if paths is not None else None  # refuses ../ and absolute
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        final = dest / dirname
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest))
        try:
            if rel is None:
                self._restore(snap.id, staging, [src])
            else:
                for i in range(0, len(rel), INCLUDE_CHUNK):
                    self._restore(snap.id, staging, [f"{src}/{p}" for p in rel[i:i + INCLUDE_CHUNK]])
            got = staging / src.lstrip("/")
            if rel is None and not got.is_dir():
                raise SnapshotNotFound(f"snapshot {snap.short_id} of target {self.name}: restic restored nothing for account {account!r}")
            missing = [p for p in rel or [] if not (got / p).exists()]
            if missing:
                raise SnapshotNotFound(f"snapshot {snap.short_id} of target {self.name}: account {account!r} has no "
                                       f"{missing[0]!r}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
            if got.is_dir():
                _merge_move(got, final)
            else:
                final.mkdir(parents=True, exist_ok=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final

    def _restore(self, snap_id: str, staging: Path, includes: Sequence[str]) -> None:
        args = ["restore", snap_id, "--target", str(staging)]
        for inc in includes:
            args += ["--include", _glob_escape(inc)]
        try:
            self._run(args, "restore", init_missing=False)
        except TargetIOError as exc:
            raise OSError(errno.ENOSPC, f"disk full while fetching from target {self.name}", str(staging)) from exc

    def forget(self, keep: KeepPolicy, *, dry_run: bool = False) -> PruneResult:
        flags = keep_flags(keep)
        snaps = self.snapshots()
        if not flags:
            return PruneResult(target=self.name, kept=[s.id for s in snaps], removed=[])
        args = ["forget", "--json", "--tag", TAG, "--group-by", "host", *flags, "--dry-run" if dry_run else "--prune"]
        res = self._run(args, "forget")
        first, _, rest = res.stdout.partition("\n")
        try:
            groups = json.loads(first or "[]") or []
        except ValueError:
            raise TargetError(f"{self.where}: restic forget printed something that is not JSON") from None
        kept = [s["id"] for g in groups for s in g.get("keep") or []]
        removed = [s["id"] for g in groups for s in g.get("remove") or []]
        freed = None
        m = _SIZE.search(rest)
        if m:
            freed = int(float(m.group(1)) * _UNITS[m.group(2)])
        self._snap_cache.clear()
        self._fresh = None
        return PruneResult(target=self.name, kept=kept, removed=removed, bytes_freed=freed)

    def check(self, *, read_data_percent: float | None = None) -> CheckResult:
        args = ["check"]
        if read_data_percent:
            args += ["--read-data-subset", f"{read_data_percent:g}%"]
        res = self._popen(args)
        if res.code != 0 and isinstance(self._classify(res, "check"), LockedError):
            self._unlock_stale()
            res = self._popen(args)
        if res.code == 0:
            return CheckResult(target=self.name, ok=True, detail="no errors were found", read_data_percent=read_data_percent)
        if not _integrity_problem(res):
            raise self._classify(res, "check")
        problems = [ln.strip() for ln in (res.stdout + res.stderr).splitlines()
                    if ln.strip() and not ln.startswith(("using temporary cache", "create exclusive lock", "load indexes", "check ", "["))]
        return CheckResult(target=self.name, ok=False, detail="; ".join(problems[:5])[:500] or f"restic check exit {res.code}",
                           read_data_percent=read_data_percent)


class LockedError(TargetError):
    """The repository is locked by another restic process that is still alive (a later rerun succeeds)."""


def _missing_repo(low: str) -> bool:
    return ("is there a repository at the following location" in low or "repository does not exist" in low
            or ("unable to open config file" in low and ("no such file" in low or "does not exist" in low or "not found" in low)))


def _integrity_problem(res: Completed) -> bool:
    text = (res.stdout + res.stderr).lower()
    return any(s in text for s in ("error for tree", "pack ", "fatal: repository contains errors", "errors were found",
                                   "hash does not match", "not referenced in any index", "is damaged"))


def keep_flags(keep: KeepPolicy) -> list[str]:
    flags = []
    for key in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        value = getattr(keep, key, None)
        if value:
            flags += [f"--keep-{key}", str(value)]
    if keep.within:
        flags += ["--keep-within", keep.within]
    return flags


def _account_name(d: Path) -> str:
    if _HASHED_DIR.fullmatch(d.name):
        try:
            return load_manifest(d).account.name
        except ManifestError:
            return d.name
    return d.name


def _merge_move(src: Path, dst: Path) -> None:
    """Move the tree ``src`` into ``dst`` (files replace files; existing directories are merged)."""
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        return
    for path in _walk_files(src):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def _walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            yield Path(dirpath) / f


__all__ = ["Features", "LockedError", "ResticTarget", "accounts_of", "keep_flags", "parse_env_file"]
