"""Hooks: commands and HTTP pings on start, success and failure of the run, check and drill jobs.

Configured as ``[[schedule.hooks]]`` items (``mailsrv.config.HookConfig``). Each item may have

* ``ping_url`` (or ``ping_url_file``): healthchecks.io-style pings — ``<url>/start`` when the job starts,
  ``<url>`` on success, ``<url>/fail`` on failure; ``on_start_url`` / ``on_success_url`` / ``on_failure_url``
  name explicit URLs per event instead. Each ping is a POST with a small JSON body (job, event, status,
  exit code, one-line summary, host, times).
* ``on_start`` / ``on_success`` / ``on_failure``: a command as an argv list, run **without a shell**, with the
  same JSON on stdin and ``MAILSIDECAR_HOOK_EVENT``, ``MAILSIDECAR_JOB``, ``MAILSIDECAR_STATUS``,
  ``MAILSIDECAR_EXIT_CODE``, ``MAILSIDECAR_SUMMARY``, ``MAILSIDECAR_HOST`` in a minimal environment (PATH,
  LANG, TZ, HOME — never the job's own secrets).

"failure" means any exit code other than 0, a partial failure included (``status`` tells which). Every hook
runs with its ``timeout``: a command still running then is killed with its whole process group, a ping is
abandoned. A failing or hanging hook is logged as a warning and never changes the job's result or exit code.
Log lines name the hook and the URL's host only: a ping URL's path is its secret.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import requests

from mailsrv import __version__
from mailsrv.config import ConfigError, HookConfig, read_secret

log = logging.getLogger(__name__)

Event = Literal["start", "success", "failure"]
KEEP_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "TMPDIR")
SUMMARY_MAX = 500


@dataclass
class HookCall:
    """What one hook did for one event (for logs and tests)."""

    hook: str
    kind: Literal["command", "ping"]
    ok: bool
    detail: str
    seconds: float


def where(url: str) -> str:
    """A URL for log lines: scheme and host only (the path of a ping URL is its secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}{':' + str(parts.port) if parts.port else ''}/…"


class Hook:
    def __init__(self, cfg: HookConfig, index: int) -> None:
        self.cfg = cfg
        self.label = cfg.name or f"hook {index + 1}"
        self.key = f"schedule.hooks[{index}]"
        base = cfg.ping_url
        if cfg.ping_url_file:
            if base:
                raise ConfigError(f"{self.key}: set ping_url or ping_url_file, not both")
            base = read_secret(cfg.ping_url_file, "", f"{self.key}.ping_url_file") or ""
            if not base.startswith(("http://", "https://")):
                raise ConfigError(f"{self.key}.ping_url_file: {cfg.ping_url_file} does not hold an http:// or https:// URL")
        base = base.rstrip("/")
        self.urls: dict[Event, str] = {}
        if base:
            self.urls = {"start": base + "/start", "success": base, "failure": base + "/fail"}
        explicit: list[tuple[Event, str]] = [("start", cfg.on_start_url), ("success", cfg.on_success_url),
                                             ("failure", cfg.on_failure_url)]
        for event, url in explicit:
            if url:
                self.urls[event] = url
        pairs: list[tuple[Event, list[str]]] = [("start", cfg.on_start), ("success", cfg.on_success), ("failure", cfg.on_failure)]
        self.commands: dict[Event, list[str]] = {e: c for e, c in pairs if c}
        for event, argv in self.commands.items():
            if not argv[0]:
                raise ConfigError(f"{self.key}.on_{event}: the command is empty")

    def wants(self, job: str, event: Event) -> bool:
        return job in self.cfg.jobs and (event in self.urls or event in self.commands)


class Hooks:
    """Every configured hook; :meth:`fire` runs the ones that want an event, all at once, each with its timeout."""

    def __init__(self, configs: list[HookConfig]) -> None:
        self.hooks = [Hook(c, i) for i, c in enumerate(configs)]

    def fire(self, event: Event, job: str, *, status: str, exit_code: int | None = None, summary: str = "",
             started: float | None = None, finished: float | None = None) -> list[HookCall]:
        chosen = [h for h in self.hooks if h.wants(job, event)]
        if not chosen:
            return []
        payload: dict[str, Any] = {"job": job, "event": event, "status": status, "exit_code": exit_code,
                                   "summary": " ".join(summary.split())[:SUMMARY_MAX], "host": socket.gethostname(),
                                   "started": started, "finished": finished, "time": time.time()}
        calls: list[HookCall] = []
        lock = threading.Lock()
        threads = []
        deadline = 0.0
        for hook in chosen:
            deadline = max(deadline, hook.cfg.timeout)
            if event in hook.commands:
                threads.append(threading.Thread(target=self._run_command, args=(hook, hook.commands[event], payload, calls, lock),
                                                daemon=True, name=f"hook-{hook.label}"))
            if event in hook.urls:
                threads.append(threading.Thread(target=self._ping, args=(hook, hook.urls[event], payload, calls, lock),
                                                daemon=True, name=f"hook-{hook.label}"))
        for t in threads:
            t.start()
        end = time.monotonic() + deadline + 2.0
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        with lock:
            done = list(calls)
        if len(done) < len(threads):  # a ping that outlived its own timeout (a server trickling bytes)
            log.warning("%d %s hook(s) of job %s still running after their timeout; not waiting for them",
                        len(threads) - len(done), event, job)
        return done

    @staticmethod
    def _record(calls: list[HookCall], lock: threading.Lock, call: HookCall) -> None:
        with lock:
            calls.append(call)
        if call.ok:
            log.info("%s: %s %s", call.hook, call.kind, call.detail)
        else:
            log.warning("%s: %s failed: %s (the job's result is unchanged)", call.hook, call.kind, call.detail)

    def _run_command(self, hook: Hook, argv: list[str], payload: dict[str, Any], calls: list[HookCall], lock: threading.Lock) -> None:
        started = time.monotonic()
        env = {k: v for k, v in os.environ.items() if k in KEEP_ENV}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update({"MAILSIDECAR_HOOK_EVENT": payload["event"], "MAILSIDECAR_JOB": payload["job"], "MAILSIDECAR_STATUS": payload["status"],
                    "MAILSIDECAR_EXIT_CODE": "" if payload["exit_code"] is None else str(payload["exit_code"]),
                    "MAILSIDECAR_SUMMARY": payload["summary"], "MAILSIDECAR_HOST": payload["host"]})
        name = Path(argv[0]).name
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            self._record(calls, lock, HookCall(hook.label, "command", False, f"{name}: cannot start: {exc.strerror or exc}",
                                               time.monotonic() - started))
            return
        try:
            _, err = proc.communicate(json.dumps(payload).encode() + b"\n", timeout=hook.cfg.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            self._record(calls, lock, HookCall(hook.label, "command", False, f"{name}: killed after its timeout of {hook.cfg.timeout:g} s",
                                               time.monotonic() - started))
            return
        tail = (err or b"").decode("utf-8", "replace").strip().splitlines()
        if proc.returncode == 0:
            self._record(calls, lock, HookCall(hook.label, "command", True, f"{name}: exit 0", time.monotonic() - started))
        else:
            why = f"{name}: exit {proc.returncode}" + (f": {tail[-1][:200]}" if tail else "")
            self._record(calls, lock, HookCall(hook.label, "command", False, why, time.monotonic() - started))

    def _ping(self, hook: Hook, url: str, payload: dict[str, Any], calls: list[HookCall], lock: threading.Lock) -> None:
        started = time.monotonic()
        try:
            r = requests.post(url, data=json.dumps(payload), timeout=(hook.cfg.timeout, hook.cfg.timeout),
                              headers={"Content-Type": "application/json", "User-Agent": f"mail-backup/{__version__}"})
            ok = r.status_code < 400
            detail = f"{where(url)} HTTP {r.status_code}"
        except requests.RequestException as exc:
            ok, detail = False, f"{where(url)}: {type(exc).__name__}"
        self._record(calls, lock, HookCall(hook.label, "ping", ok, detail, time.monotonic() - started))



def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        pass


__all__ = ["Hook", "HookCall", "Hooks", "where"]
