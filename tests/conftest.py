"""Shared fixtures: real mailsrv processes on 127.0.0.1 with ports picked at run time, in temp dirs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

ADMIN_PASSWORD = "admin-secret-pw"
MASTER_PASSWORD = "master-secret-pw"
USER_PASSWORD = "user-secret-pw"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines: list[str] = []
    for name, values in sections.items():
        nested = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
        for sub, subvalues in nested.items():
            lines.append(f"[{name}.{sub}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in subvalues.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class MailsrvProc:
    """A running ``mailsrv serve`` process and how to reach it."""

    dir: Path
    config: Path
    http_port: int
    smtp_port: int
    submission_port: int
    proc: subprocess.Popen[bytes]
    settings: dict[str, Any]
    log: Path
    accounts: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def cert(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    @property
    def admin(self) -> tuple[str, str]:
        return ("admin", ADMIN_PASSWORD)

    def cli(self, *args: str, password: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        if password is not None:
            env["MAILSRV_ACCOUNT_PASSWORD"] = password
        return subprocess.run(
            [sys.executable, "-m", "mailsrv", "--config", str(self.config), *args],
            capture_output=True, text=True, env=env, check=check, timeout=60,
        )

    def add_account(self, name: str, password: str = USER_PASSWORD, *extra: str) -> str:
        self.cli("account", "add", name, *extra, password=password)
        self.accounts[name] = password
        return name

    def session(self, user: str, password: str | None = None) -> dict[str, Any]:
        r = requests.get(f"{self.url}/jmap/session", auth=(user, password or self.accounts.get(user, USER_PASSWORD)), timeout=10)
        r.raise_for_status()
        return dict(r.json())

    def jmap(self, user: str | tuple[str, str], calls: list[list[Any]], using: list[str] | None = None) -> list[list[Any]]:
        auth = user if isinstance(user, tuple) else (user, self.accounts.get(user, USER_PASSWORD))
        body = {"using": using or ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"], "methodCalls": calls}
        r = requests.post(f"{self.url}/jmap/", json=body, auth=auth, timeout=30)
        r.raise_for_status()
        return list(r.json()["methodResponses"])

    def stop(self, sig: int = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def start(self) -> None:
        """(Re)start the process on the same ports and data."""
        self.proc = _spawn(self.config, self.log)
        _wait_ready(self)


def _spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mailsrv", "--config", str(config), "serve"],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT,
    )


def _wait_ready(srv: MailsrvProc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"mailsrv exited with {srv.proc.returncode}:\n{srv.log.read_text()[-4000:]}")
        try:
            if requests.get(f"{srv.url}/healthz/ready", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"mailsrv not ready after {timeout}s:\n{srv.log.read_text()[-4000:]}")


def start_mailsrv(base: Path, **overrides: Any) -> MailsrvProc:
    """Start mailsrv in ``base`` with run-time ports; ``overrides`` are [mailsrv] keys (``jmap`` = dict)."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "admin.pw").write_text(ADMIN_PASSWORD + "\n")
    (base / "master.pw").write_text(MASTER_PASSWORD + "\n")
    http, smtp, sub = free_port(), free_port(), free_port()
    settings: dict[str, Any] = {
        "data_dir": str(base / "data"),
        "hostname": "mail.example.org",
        "domains": ["example.org"],
        "smtp_listen": f"127.0.0.1:{smtp}",
        "submission_listen": f"127.0.0.1:{sub}",
        "http_listen": f"127.0.0.1:{http}",
        "admin_user": "admin",
        "admin_password_file": str(base / "admin.pw"),
        "master_user": "master",
        "master_password_file": str(base / "master.pw"),
        "queue_retry_initial": 0.5,
        "queue_poll_interval": 0.2,
    }
    settings.update(overrides)
    config = base / "config.toml"
    write_toml(config, {"mailsrv": settings})
    log = base / "mailsrv.log"
    srv = MailsrvProc(base, config, http, smtp, sub, _spawn(config, log), settings, log)
    _wait_ready(srv)
    return srv


@pytest.fixture
def mailsrv_factory(tmp_path: Path) -> Iterator[Callable[..., MailsrvProc]]:
    """Start one or more mailsrv processes with overrides; all are stopped afterwards."""
    started: list[MailsrvProc] = []

    def make(name: str = "srv", **overrides: Any) -> MailsrvProc:
        srv = start_mailsrv(tmp_path / name, **overrides)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def mailsrv(mailsrv_factory: Callable[..., MailsrvProc]) -> MailsrvProc:
    """A fresh mailsrv with accounts alice and bob (password USER_PASSWORD)."""
    srv = mailsrv_factory()
    srv.add_account("alice")
    srv.add_account("bob")
    return srv
