"""``mail-exporter`` command line: user mistakes give one clear line and the documented exit code, ``check``
reports each source against a live mailsrv, and secrets never show up in output."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from click.testing import CliRunner

from exporters.cli import main
from tests.conftest import ADMIN_PASSWORD, MailsrvProc, free_port
from tests.test_exporter_support import CannedServer, exporter_config, run_cli


def cli(*args: str) -> tuple[int, str]:
    """Run the CLI in-process (config mistakes exit before anything starts); ``(exit code, stderr)``."""
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stderr


def one_line_error(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("mail-exporter: "), stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_config_mistakes_exit_1(tmp_path: Path) -> None:
    done = run_cli("--config", str(tmp_path / "missing.toml"), "serve")  # once as a real process
    assert done.returncode == 1
    one_line_error(done.stderr, "config file not found")

    cfg = exporter_config(tmp_path / "a", {"exporter": {"listen": "127.0.0.1:1", "colour": "blue"}})
    code, err = cli("--config", str(cfg), "serve")
    assert code == 1
    one_line_error(err, "exporter.colour", "unknown key")

    cfg = exporter_config(tmp_path / "b", {"exporter": {"tls_endpoints": ["ftp://mail.example.org"], "sources": ["tls"]}})
    code, err = cli("--config", str(cfg), "serve")
    assert code == 1
    one_line_error(err, "exporter.tls_endpoints[0]", "unknown scheme")

    cfg = exporter_config(tmp_path / "c", {"server": {"admin_password_file": str(tmp_path / "nope.pw")},
                                           "exporter": {"sources": ["queue"]}})
    code, err = cli("--config", str(cfg), "serve")
    assert code == 1
    one_line_error(err, "server.admin_password_file", "nope.pw")

    cfg = exporter_config(tmp_path / "d", {"exporter": {"sources": ["backups"], "tls_cert_file": str(tmp_path / "x.crt")}})
    code, err = cli("--config", str(cfg), "serve")
    assert code == 1
    one_line_error(err, "tls_key_file")

    assert cli("--config", str(cfg), "frobnicate")[0] == 1


def test_listen_address_in_use_exits_7(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        cfg = exporter_config(tmp_path, {"state": {"dir": str(tmp_path)},
                                         "exporter": {"listen": f"127.0.0.1:{port}", "sources": ["backups"]}})
        done = run_cli("--config", str(cfg), "serve")
    assert done.returncode == 7
    assert "Traceback" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{port} (exporter.listen)" in done.stderr


def test_check_against_a_live_server(mailsrv: MailsrvProc, tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    base = {"server": {"profile": "embedded", "url": mailsrv.url, "admin_password_file": str(mailsrv.dir / "admin.pw")},
            "state": {"dir": str(tmp_path / "state")}}
    cfg = exporter_config(tmp_path / "ok", {**base, "exporter": {"tls_endpoints": [f"smtp://127.0.0.1:{mailsrv.smtp_port}"]}})
    done = run_cli("--config", str(cfg), "check", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["source"]: r for r in json.loads(done.stdout)}
    assert set(rows) == {"mailserver", "queue", "backups", "tls"} and all(r["ok"] for r in rows.values())
    assert any("not trusted" in p for p in rows["tls"]["problems"])  # mailsrv's self-signed cert: a warning only

    (tmp_path / "wrong.pw").write_text("not-the-admin-password\n")
    cfg = exporter_config(tmp_path / "auth", {**base, "server": {**base["server"], "admin_password_file": str(tmp_path / "wrong.pw")}})
    done = run_cli("--config", str(cfg), "check")
    assert done.returncode == 2
    assert "FAIL queue" in done.stdout and "rejected the credentials of user 'admin'" in done.stdout
    assert "not-the-admin-password" not in done.stdout + done.stderr and ADMIN_PASSWORD not in done.stdout + done.stderr

    cfg = exporter_config(tmp_path / "down", {**base, "server": {**base["server"], "url": f"http://127.0.0.1:{free_port()}"},
                                              "exporter": {"sources": ["mailserver"]}})
    done = run_cli("--config", str(cfg), "check")
    assert done.returncode == 2 and "FAIL mailserver" in done.stdout and "cannot reach" in done.stdout

    cfg = exporter_config(tmp_path / "io", {"state": {"dir": str(tmp_path / "no-state")}, "exporter": {"sources": ["backups"]}})
    done = run_cli("--config", str(cfg), "check")
    assert done.returncode == 7 and "FAIL backups" in done.stdout


def test_check_with_a_hanging_server_exits_2(tmp_path: Path) -> None:
    hanging = CannedServer()
    hanging.hang.set()
    try:
        cfg = exporter_config(tmp_path, {"server": {"profile": "stalwart-0.15", "url": hanging.url},
                                         "exporter": {"sources": ["mailserver"], "mailserver_timeout": 1}})
        done = run_cli("--config", str(cfg), "check", "--json")
    finally:
        hanging.close()
    assert done.returncode == 2, done.stdout + done.stderr
    (row,) = json.loads(done.stdout)
    assert row["source"] == "mailserver" and not row["ok"] and row["kind"] in ("timeout", "connect")
