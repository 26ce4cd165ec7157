"""A real Cyrus IMAP 3.6 JMAP server for interop tests (the shared ``cyrus-testbed`` script).

Use the module-scoped fixture in a test module::

    if TYPE_CHECKING:
        from tests.cyrus import CyrusTestbed

    pytest_plugins = ("tests.cyrus",)  # provides the ``cyrus`` fixture

    def test_something(cyrus: CyrusTestbed) -> None:
        token = cyrus.token("alice")

The testbed runs in a temporary directory with every port picked at run time, users ``alice``, ``bob`` and
``carol`` (password :attr:`CyrusTestbed.password`) in a directory under /tmp (Cyrus runs as the ``cyrus``
user, so not under pytest's private tmp dirs), and is stopped and removed afterwards. When it cannot start (not
root, no apt, packages missing …) the tests are skipped with the reason. ``CYRUS_TESTBED_SCRIPT`` overrides
where the script is; ``start_cyrus(dir, users=..., nonstandard=True)`` starts extra testbeds.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port

SCRIPT = Path(os.environ.get("CYRUS_TESTBED_SCRIPT", Path(__file__).resolve().parents[2] / "shared/testbed/cyrus/cyrus-testbed"))
USERS = ("alice", "bob", "carol")


class CyrusUnavailable(RuntimeError):
    """The testbed cannot run here; the message says why."""


@dataclass
class CyrusTestbed:
    """A running testbed: its directory, ports, users and helpers."""

    dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def http_port(self) -> int:
        return int(self.env["JMAP_PORT"])

    @property
    def https_port(self) -> int:
        return int(self.env["JMAP_HTTPS_PORT"])

    @property
    def lmtp_port(self) -> int:
        return int(self.env["LMTP_PORT"])

    @property
    def url(self) -> str:
        """Plain-http base URL (``/.well-known/jmap`` answers 301 → ``/jmap``)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def ca_file(self) -> Path:
        """The self-signed certificate of the HTTPS listener."""
        return Path(self.env["TLS_CA_FILE"])

    @property
    def users(self) -> list[str]:
        return self.env.get("USERS", "").split()

    @property
    def password(self) -> str:
        return self.env["PASSWORD"]

    @property
    def domain(self) -> str:
        return self.env["MAIL_DOMAIN"]

    def run(self, *args: str, timeout: float = 120) -> str:
        """Run ``cyrus-testbed ARGS... DIR`` and return its stdout."""
        proc = subprocess.run([str(SCRIPT), *args, str(self.dir)], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"cyrus-testbed {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
        return proc.stdout

    def token(self, user: str) -> str:
        """A Bearer JWT for ``user``."""
        return self.run("token", user).strip()

    def bulk(self, user: str, count: int, timeout: float = 120) -> None:
        """``count`` generated messages into ``user``'s INBOX (fast, for paging tests and benchmarks)."""
        self.run("bulk", user, str(count), timeout=timeout)

    def deliver(self, user: str, raw: bytes) -> None:
        """Deliver one message to ``user``'s INBOX over LMTP."""
        with smtplib.LMTP("127.0.0.1", self.lmtp_port, timeout=30) as lmtp:
            lmtp.sendmail(f"sender@{self.domain}", [f"{user}@{self.domain}"], raw)

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop", str(self.dir)], capture_output=True, timeout=60, check=False)


def _parse_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip('"')
    return env


def start_cyrus(base: Path, *, users: tuple[str, ...] = USERS, nonstandard: bool = False, timeout: float = 900,
                password: str | None = None, attempts: int = 1) -> CyrusTestbed:
    """Start a testbed in ``base`` on free ports; raise :class:`CyrusUnavailable` with the reason if it cannot.

    ``attempts`` > 1 tries again (on fresh ports) when a start fails: a loaded machine can miss the testbed's
    start-up wait. ``password`` replaces the testbed's default password of every user."""
    if not sys.platform.startswith("linux"):
        raise CyrusUnavailable("the Cyrus testbed needs Debian/Linux")
    if os.geteuid() != 0:
        raise CyrusUnavailable("the Cyrus testbed needs root (it installs Debian packages and runs Cyrus as 'cyrus')")
    if not SCRIPT.is_file():
        raise CyrusUnavailable(f"testbed script not found at {SCRIPT} (set CYRUS_TESTBED_SCRIPT)")
    base.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        env = dict(os.environ)
        for name in ("HTTP", "HTTPS", "IMAP", "LMTP", "SIEVE"):
            env[f"CYRUS_TESTBED_{name}_PORT"] = str(free_port())
        env["CYRUS_TESTBED_USERS"] = " ".join(users)
        env["CYRUS_TESTBED_NONSTANDARD"] = "1" if nonstandard else "0"
        env.setdefault("CYRUS_TESTBED_SYSLOG", "0")  # leave /dev/log alone; other testbeds may share the machine
        if password is not None:
            env["CYRUS_TESTBED_PASSWORD"] = password
        started = time.monotonic()
        try:
            proc = subprocess.run([str(SCRIPT), "start", str(base)], capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CyrusUnavailable(f"cyrus-testbed start took more than {timeout:.0f}s") from None
        if proc.returncode == 0:
            break
        subprocess.run([str(SCRIPT), "wipe", str(base)], capture_output=True, timeout=120, check=False)
        if attempt == attempts:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise CyrusUnavailable(f"cyrus-testbed start failed after {time.monotonic() - started:.0f}s: {tail}")
    bed = CyrusTestbed(base, _parse_env((base / "testbed.env").read_text()))
    return bed


def temp_dir() -> Path:
    """A fresh directory the ``cyrus`` user can reach (pytest's tmp dirs sit under a 0700 parent)."""
    return Path(tempfile.mkdtemp(prefix="cyrus-testbed-", dir="/tmp"))


@pytest.fixture(scope="module")
def cyrus() -> Iterator[CyrusTestbed]:
    """A Cyrus testbed for the test module (skipped with the reason when it cannot start); wiped afterwards."""
    base = temp_dir()
    try:
        bed = start_cyrus(base)
    except CyrusUnavailable as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"Cyrus testbed unavailable: {exc}")
    try:
        yield bed
    finally:
        bed.stop()
        shutil.rmtree(base, ignore_errors=True)
