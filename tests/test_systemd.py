"""The systemd units in systemd/: ``systemd-analyze verify`` and ``security --offline`` on every unit (in a
temporary root that provides the /usr/local/bin programs), the hardening each one promises, and the two things
the hardening relies on: the Python stack and restic work with W^X memory, and secrets load via LoadCredential.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from mailsrv.config import ConfigError, parse_config, read_secret

UNITS = Path(__file__).resolve().parent.parent / "systemd"
SIDECARS = ["mail-exporter.service", "mail-backup-scheduler.service", "mail-backup.service", "mail-backup-check.service",
            "mail-backup-drill.service"]
TIMERS = {"mail-backup.timer": ("*-*-* 02:45:00", "mail-backup.service"),
          "mail-backup-check.timer": ("Sun *-*-* 04:00:00", "mail-backup-check.service"),
          "mail-backup-drill.timer": ("Sun *-*-* 04:30:00", "mail-backup-drill.service")}
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt-get install systemd)")


def directives(name: str) -> dict[str, list[str]]:
    """KEY → every value of the unit (systemd allows repeating keys, so configparser does not fit)."""
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def one(d: dict[str, list[str]], key: str) -> str:
    values = d.get(key, [])
    assert len(values) == 1, (key, values)
    return values[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file-system root with the distribution's units, our units and stand-ins for the three programs."""
    base = tmp_path_factory.mktemp("sysroot")
    system = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)
    if system is None:
        pytest.skip("no systemd unit directory on this machine")
    shutil.copytree(system, base / "usr/lib/systemd/system", symlinks=True)
    (base / "usr/local/bin").mkdir(parents=True)
    for prog in ("mailsrv", "mail-exporter", "mail-backup"):
        exe = base / "usr/local/bin" / prog
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    (base / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS.glob("*.service"):
        shutil.copy(unit, base / "etc/systemd/system" / unit.name)
    for unit in UNITS.glob("*.timer"):
        shutil.copy(unit, base / "etc/systemd/system" / unit.name)
    return base


def all_units() -> list[str]:
    return sorted(p.name for p in UNITS.iterdir() if p.suffix in (".service", ".timer"))


@needs_analyze
@pytest.mark.parametrize("unit", all_units())
def test_systemd_analyze_verify(root: Path, unit: str) -> None:
    r = subprocess.run([ANALYZE, "verify", f"--root={root}", unit], capture_output=True, text=True, timeout=120)  # type: ignore[list-item]
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (r.returncode, r.stdout, r.stderr)


@needs_analyze
def test_verify_catches_a_missing_program(root: Path) -> None:
    """The harness itself: the same check fails when ExecStart points at a program that is not there."""
    broken = root / "etc/systemd/system/broken-check.service"
    broken.write_text((UNITS / "mail-backup.service").read_text().replace("/usr/local/bin/mail-backup", "/usr/local/bin/not-installed"))
    try:
        r = subprocess.run([ANALYZE, "verify", f"--root={root}", broken.name], capture_output=True, text=True, timeout=120)  # type: ignore[list-item]
        assert r.returncode != 0 and "not-installed" in r.stderr
    finally:
        broken.unlink()


def exposure(root: Path, unit: str) -> float:
    r = subprocess.run([ANALYZE, "security", "--offline=true", f"--root={root}", "--no-pager", unit],  # type: ignore[list-item]
                       capture_output=True, text=True, timeout=120)
    m = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", r.stdout)
    assert m, (r.returncode, r.stdout[-2000:], r.stderr)
    return float(m.group(1))


@needs_analyze
@pytest.mark.parametrize("unit", [*SIDECARS, "mailsrv.service"])
def test_security_exposure_at_most_2(root: Path, unit: str) -> None:
    score = exposure(root, unit)
    assert score <= 2.0, f"{unit}: exposure {score}"
    if unit in SIDECARS:
        assert score <= 1.2, f"{unit}: exposure {score} (measured 1.1 with systemd 252)"


@needs_analyze
def test_security_would_catch_a_weaker_unit(root: Path) -> None:
    weak = root / "etc/systemd/system/weak-check.service"
    text = "\n".join(ln for ln in (UNITS / "mail-backup.service").read_text().splitlines()
                     if not ln.startswith(("ProtectSystem", "SystemCallFilter", "CapabilityBoundingSet", "PrivateUsers")))
    weak.write_text(text + "\n")
    try:
        assert exposure(root, weak.name) > 2.0
    finally:
        weak.unlink()


@pytest.mark.parametrize("unit", SIDECARS)
def test_sidecar_hardening(unit: str) -> None:
    d = directives(unit)
    assert one(d, "User") == "mailsidecar" and one(d, "Group") == "mailsidecar"
    assert one(d, "CapabilityBoundingSet") == "" and one(d, "AmbientCapabilities") == ""
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("PrivateDevices", "yes"), ("PrivateUsers", "yes"), ("MemoryDenyWriteExecute", "yes"), ("LockPersonality", "yes"),
                       ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"), ("ProtectKernelLogs", "yes"),
                       ("ProtectControlGroups", "yes"), ("RestrictNamespaces", "yes"), ("RestrictRealtime", "yes"),
                       ("RestrictSUIDSGID", "yes"), ("UMask", "0077"), ("SystemCallErrorNumber", "EPERM")]:
        assert one(d, key) == value, (unit, key)
    assert one(d, "RestrictAddressFamilies").split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert "@system-service" in d["SystemCallFilter"]
    assert any(v.startswith("admin:/etc/mailsidecar/secrets/") for v in d["LoadCredential"])
    exec_start = one(d, "ExecStart").split()
    assert exec_start[:3] == [f"/usr/local/bin/{'mail-exporter' if 'exporter' in unit else 'mail-backup'}", "--config",
                              "/etc/mailsidecar/config.toml"]
    if unit == "mail-exporter.service":
        from exporters.cli import main as exporter

        assert exec_start[3:] == ["serve"] and "serve" in exporter.commands  # type: ignore[attr-defined]
    else:
        assert one(d, "StateDirectory") == "mailsidecar" and one(d, "CacheDirectory") == "mailsidecar"
        assert "-/srv/backup/mail" in d["ReadWritePaths"]
        from backup.cli import main

        assert len(exec_start) == 4 and main.get_command(click.Context(main), exec_start[3]) is not None, \
            f"{unit} runs `mail-backup {exec_start[3:]}`, which does not exist"


def test_mailsrv_keeps_only_the_bind_capability() -> None:
    d = directives("mailsrv.service")
    assert one(d, "User") == "mailsrv" and one(d, "StateDirectory") == "mailsrv"
    assert one(d, "AmbientCapabilities") == "CAP_NET_BIND_SERVICE" and one(d, "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one(d, "NoNewPrivileges") == "yes" and one(d, "ProtectSystem") == "strict" and one(d, "MemoryDenyWriteExecute") == "yes"
    from mailsrv.cli import main as mailsrv

    assert one(d, "ExecStart").split()[-1] == "serve" and "serve" in mailsrv.commands  # type: ignore[attr-defined]
    assert "mailsrv-admin:/etc/mailsidecar/secrets/mailsrv-admin" in d["LoadCredential"]
    assert "PrivateUsers" not in d  # a user namespace would take CAP_NET_BIND_SERVICE away on the host network


@pytest.mark.parametrize("timer", sorted(TIMERS))
def test_timers_are_persistent_and_randomised(timer: str) -> None:
    d = directives(timer)
    calendar, unit = TIMERS[timer]
    assert one(d, "OnCalendar") == calendar and one(d, "Unit") == unit
    assert one(d, "Persistent") == "true" and one(d, "RandomizedDelaySec")
    service = directives(unit)
    assert one(service, "Type") == "oneshot" and one(service, "TimeoutStartSec") not in ("", "90s")  # a night's run outlasts 90 s
    if ANALYZE:
        r = subprocess.run([ANALYZE, "calendar", calendar], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "Next elapse" in r.stdout


def test_sysusers_file() -> None:
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        pytest.skip("systemd-sysusers is not installed (Debian: apt-get install systemd)")
    r = subprocess.run([tool, "--dry-run", "--root=/nonexistent-root", str(UNITS / "mailsidecar.sysusers")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Creating user 'mailsidecar'" in r.stderr and "Creating user 'mailsrv'" in r.stderr


# -- what the hardening relies on ----------------------------------------------------------------------------
PR_SET_MDWE, MDWE_REFUSE_EXEC_GAIN = 65, 1
STACK = r'''
import ssl, sqlite3, ctypes
ssl.create_default_context()
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
ec.generate_private_key(ec.SECP256R1()).sign(b"x", ec.ECDSA(hashes.SHA256()))
import aiohttp, aiosmtpd, requests, pydantic, rich, prometheus_client, sqlalchemy
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
import backup.cli, backup.schedule, exporters.cli, mailsrv.cli, mailsrv.server.app
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda v: v + 1)
assert callback(1) == 2
print("stack ok")
'''


def _with_mdwe(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with the kernel refusing writable+executable memory (what MemoryDenyWriteExecute= enforces)."""
    def deny_write_execute() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_MDWE, MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_MDWE")

    return subprocess.run(argv, capture_output=True, text=True, timeout=120, preexec_fn=deny_write_execute)


def test_python_stack_and_restic_run_without_writable_executable_memory() -> None:
    probe = subprocess.run([sys.executable, "-c", "import ctypes,sys; sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)"], timeout=60)
    if probe.returncode != 0:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3) to test W^X with")
    r = _with_mdwe([sys.executable, "-c", STACK])
    assert r.returncode == 0 and "stack ok" in r.stdout, r.stderr[-3000:]
    # the check itself bites: a writable+executable mapping is refused
    r = _with_mdwe([sys.executable, "-c", "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"])
    assert r.returncode != 0 and "PermissionError" in r.stderr
    if shutil.which("restic"):
        r = _with_mdwe(["restic", "version"])
        assert r.returncode == 0 and r.stdout.startswith("restic ")


def test_secrets_from_load_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "admin").write_text("s3cret-admin\n")
    (creds / "restic").write_text("s3cret-restic\n")
    cfg = parse_config({"server": {"admin_password_file": "%d/admin"}, "state": {"dir": str(tmp_path / "state")},
                        "targets": [{"name": "local", "type": "restic", "repository": str(tmp_path / "repo"), "password_file": "%d/restic",
                                     "init": True}]}, "c.toml")
    monkeypatch.delenv("MAILSIDECAR_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match=r"server.admin_password_file: %d/admin names a systemd credential, but \$CREDENTIALS_DIRECTORY"):
        read_secret(cfg.server.admin_password_file, "MAILSIDECAR_ADMIN_PASSWORD", "server.admin_password_file")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_secret(cfg.server.admin_password_file, "MAILSIDECAR_ADMIN_PASSWORD", "server.admin_password_file") == "s3cret-admin"
    assert read_secret("${CREDENTIALS_DIRECTORY}/admin", "X_UNSET", "k") == "s3cret-admin"
    with pytest.raises(ConfigError, match="plain credential name"):
        read_secret("%d/../admin", "X_UNSET", "k")
    if shutil.which("restic"):
        from backup.targets.registry import open_targets

        (target,) = open_targets(cfg)
        assert getattr(target, "password_file", "") == str(creds / "restic")
        target.init()  # restic reads the password from the credential file
        assert target.snapshots() == []
