"""On a terminal, ``mail-backup export`` and ``restore`` draw a progress bar per account (messages, bytes, rate, ETA);
off a terminal they print none (cron mail and journald stay clean)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
from pathlib import Path

from tests.conftest import start_mailsrv
from tests.test_restore import CLI, backup_config, mailsrv_server

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_a_terminal(config: Path, *args: str, timeout: float = 120) -> tuple[int, str]:
    """Run ``mail-backup`` with stderr on a pseudo-terminal; return its exit code and what the terminal showed."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIDECAR_")} | {"COLUMNS": "160", "TERM": "xterm"}
    proc = subprocess.Popen([*CLI, "--config", str(config), *args], stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    screen = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output for {timeout} s; so far: {screen.decode(errors='replace')[-2000:]}")
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    return proc.wait(timeout), ANSI.sub("", screen.decode(errors="replace"))


def test_export_and_restore_draw_bars_on_a_terminal_only(tmp_path: Path) -> None:
    srv = start_mailsrv(tmp_path / "srv")
    try:
        for name in ("alice", "bob", "empty"):
            srv.add_account(name)
        srv.cli("seed", "--account", "alice", "--account", "bob", "--count", "40", "--random-seed", "5")
        config = backup_config(tmp_path / "backup", mailsrv_server(srv))

        code, screen = on_a_terminal(config, "export")
        assert code == 0, screen
        for name in ("alice", "bob"):
            bar = [ln for ln in screen.splitlines() if ln.strip().startswith(name) and "msgs" in ln]
            assert bar, screen
            assert re.search(r"40/40 msgs\s+[\d.]+/[\d.]+ [kM]B\s+[\d.]+ [kM]?B/s", bar[-1]), bar[-1]

        code, screen = on_a_terminal(config, "restore", "--account", "alice", "--into", "empty", "--objects", "mail")
        assert code == 0, screen
        bar = [ln for ln in screen.splitlines() if "restore alice" in ln and "msgs" in ln]
        assert bar and "40/40 msgs" in bar[-1], screen

        piped = subprocess.run([*CLI, "--config", str(config), "export"], capture_output=True, text=True, timeout=120)
        assert piped.returncode == 0 and "msgs" not in piped.stderr and "\x1b[" not in piped.stderr, piped.stderr
    finally:
        srv.stop()
