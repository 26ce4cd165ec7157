"""The restic target against Debian's real restic: secrets, locks, partial backups, versions, full disk."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from backup.targets import restic as restic_mod
from backup.targets.base import TargetError, TargetUnavailable
from backup.targets.registry import build_target
from backup.targets.restic import Features, LockedError, ResticTarget, accounts_of, encode_account_tag, keep_flags, parse_env_file
from mailsrv.config import ConfigError, KeepPolicy, TargetConfig
from tests.test_target_contract import HOSTILE, PASSWORD, make_export, message, read_tree

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic not installed (apt-get install restic)")


def target(tmp: Path, **extra: Any) -> ResticTarget:
    pw = tmp / "pw"
    pw.write_text(PASSWORD + "\n")
    item = {"name": "local", "type": "restic", "repository": str(tmp / "repo"), "password_file": str(pw), "init": True,
            "cache_dir": str(tmp / "cache"), **extra}
    t = build_target(TargetConfig.model_validate(item), 0, file="/etc/mailsidecar/config.toml")
    assert isinstance(t, ResticTarget)
    return t


def restic_env(t: ResticTarget) -> dict[str, str]:
    return t._env()


def test_secrets_reach_restic_only_through_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    envf = tmp_path / "cloud.env"
    envf.write_text("# cloud credentials\nexport AWS_ACCESS_KEY_ID=AKIAEXAMPLEKEY\nAWS_SECRET_ACCESS_KEY='sEcReT/with+chars'\n")
    t = target(tmp_path, env_file=str(envf))
    calls: list[tuple[list[str], dict[str, str]]] = []
    real = subprocess.Popen

    def spy(args: Any, *a: Any, **kw: Any) -> Any:
        calls.append((list(args), dict(kw.get("env") or {})))
        return real(args, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", spy)
    exp, dirs = make_export(tmp_path / "export", {"alice@example.org": [message(1)]})
    t.ship(exp.root, dirs, host="h")
    assert calls
    for argv, env in calls:
        joined = " ".join(argv)
        assert PASSWORD not in joined and "sEcReT" not in joined and "AKIAEXAMPLEKEY" not in joined
        assert env["RESTIC_PASSWORD_FILE"] == str(tmp_path / "pw") and "RESTIC_PASSWORD" not in env
        assert env["AWS_SECRET_ACCESS_KEY"] == "sEcReT/with+chars" and env["RESTIC_REPOSITORY"] == str(tmp_path / "repo")


def test_password_command_works_and_a_wrong_password_is_exit_2_material(tmp_path: Path) -> None:
    t = target(tmp_path)
    exp, dirs = make_export(tmp_path / "export", {"alice@example.org": [message(1)]})
    t.ship(exp.root, dirs, host="h")
    script = tmp_path / "pw.sh"
    script.write_text(f"#!/bin/sh\necho '{PASSWORD}'\n")
    script.chmod(0o700)
    cmd = ResticTarget("cmd", str(tmp_path / "repo"), password_command=str(script), cache_dir=str(tmp_path / "cache"))
    assert len(cmd.snapshots()) == 1
    wrong = ResticTarget("wrong", str(tmp_path / "repo"), password_command="echo nope", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(TargetUnavailable, match="wrong repository password"):
        wrong.snapshots()


def test_config_errors_name_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.toml: targets\[0\]\.password_file: no such file"):
        target(tmp_path, password_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"targets\[0\]\.password_file: set exactly one"):
        target(tmp_path, password_command="echo x")
    bad = tmp_path / "bad.env"
    bad.write_text("AWS_ACCESS_KEY_ID\n")
    with pytest.raises(ConfigError, match=r"targets\[0\]\.env_file: .*line 1: expected KEY=VALUE"):
        target(tmp_path, env_file=str(bad))
    with pytest.raises(ConfigError, match=r"targets\[0\]\.init: expected true or false"):
        target(tmp_path, init="yes")


def test_accounts_are_paths_plus_tags_only_for_hashed_names(tmp_path: Path) -> None:
    t = target(tmp_path)
    exp, dirs = make_export(tmp_path / "export", {"alice@example.org": [message(1)], HOSTILE: [message(2)]})
    t.ship(exp.root, dirs, host="h")
    raw = json.loads(subprocess.run(["restic", "snapshots", "--json"], env=restic_env(t), capture_output=True, text=True,
                                    check=True).stdout)
    assert len(raw) == 1
    assert sorted(raw[0]["paths"]) == sorted(str(d) for d in dirs)  # absolute account directories
    assert all(p.startswith("/") for p in raw[0]["paths"])
    assert sorted(raw[0]["tags"]) == sorted(["mailsidecar", encode_account_tag(HOSTILE)])
    assert sorted(t.snapshots()[0].accounts) == sorted(["alice@example.org", HOSTILE])
    assert accounts_of(["/x/alice", "/x/x-0123456789abcdef01234567"], []) == ["alice", "x-0123456789abcdef01234567"]


def test_foreign_snapshots_in_the_repository_are_ignored_and_kept(tmp_path: Path) -> None:
    t = target(tmp_path)
    t.init()
    other = tmp_path / "other"
    other.mkdir()
    (other / "f").write_text("not mail")
    subprocess.run(["restic", "backup", "-q", "--host", "h", str(other)], env=restic_env(t), check=True)
    exp, dirs = make_export(tmp_path / "export", {"alice@example.org": [message(1)]})
    t.ship(exp.root, dirs, host="h")
    t.ship(exp.root, dirs, host="h")
    assert len(t.snapshots()) == 2
    t.forget(KeepPolicy(last=1))
    assert len(t.snapshots()) == 1
    every = json.loads(subprocess.run(["restic", "snapshots", "--json"], env=restic_env(t), capture_output=True, text=True,
                                      check=True).stdout)
    assert len(every) == 2  # ours (1 kept) + the operator's own snapshot, untouched


def _hold_lock(t: ResticTarget) -> subprocess.Popen[bytes]:
    """A live restic process holding a (shared) lock: `backup --stdin` waiting for input."""
    p = subprocess.Popen(["restic", "backup", "--stdin", "--stdin-filename", "held", "--host", "other"], env=restic_env(t),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not lock_files(t):
        time.sleep(0.1)
    assert lock_files(t), "restic did not take its lock"
    return p


def lock_files(t: ResticTarget) -> list[str]:
    """Lock objects in the repository (not restic's own temp files while it writes one)."""
    return sorted(p.name for p in (Path(t.repository) / "locks").iterdir() if "-tmp-" not in p.name)


def test_a_live_lock_is_reported_and_never_broken(tmp_path: Path) -> None:
    t = target(tmp_path)
    exp, dirs = make_export(tmp_path / "export", {"alice@example.org": [message(1)]})
    t.ship(exp.root, dirs, host="h")
    t.ship(exp.root, dirs, host="h")
    holder = _hold_lock(t)
    try:
        held = lock_files(t)
        # a backup takes a shared lock too: shipping alongside another backup works
        t.ship(exp.root, dirs, host="h")
        with pytest.raises(LockedError, match=r"locked by a running restic process \(PID \d+"):
            t.forget(KeepPolicy(last=1))
        assert lock_files(t) == held  # `restic unlock` left the live lock alone
        assert len(t.snapshots()) == 3
    finally:
        _, err = holder.communicate(b"the held backup completes", timeout=60)
    assert holder.returncode == 0, err
    assert t.forget(KeepPolicy(last=1)).removed


def test_lock_wait_waits_for_a_live_lock_to_go_away(tmp_path: Path) -> None:
    t = target(tmp_path, lock_wait=60)
    assert not t.features().retry_lock  # Debian's 0.14: the wait is ours, not --retry-lock
    exp, dirs = make_export(tmp_path / "export", {"alice@example.org": [message(1)]})
    t.ship(exp.root, dirs, host="h")
    holder = _hold_lock(t)
    import threading

    threading.Timer(2.0, lambda: holder.communicate(b"done", timeout=60)).start()
    started = time.monotonic()
    t.forget(KeepPolicy(last=1))
    assert time.monotonic() - started >= 1.5
    holder.wait(timeout=30)


def test_a_stale_lock_is_removed_and_the_operation_retried(tmp_path: Path) -> None:
    t = target(tmp_path)
    exp, dirs = make_export(tmp_path / "export", {"alice@example.org": [message(1)]})
    t.ship(exp.root, dirs, host="h")
    t.ship(exp.root, dirs, host="h")
    holder = _hold_lock(t)
    holder.kill()  # kill -9: the lock file stays, its process is gone
    holder.wait()
    assert lock_files(t)
    res = t.forget(KeepPolicy(last=1))
    assert len(res.removed) == 1
    assert not lock_files(t)


def _wrapper_without_root_powers(tmp_path: Path) -> str:
    """As root, restic reads chmod-000 files anyway; drop the capabilities that allow it."""
    if os.geteuid() != 0:
        return "restic"
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop root's file-reading capabilities")
    w = tmp_path / "restic-nocaps"
    w.write_text('#!/bin/sh\nexec setpriv --inh-caps=-dac_override,-dac_read_search '
                 '--bounding-set=-dac_override,-dac_read_search restic "$@"\n')
    w.chmod(0o755)
    return str(w)


def test_exit_3_partial_backup_stores_only_complete_accounts(tmp_path: Path) -> None:
    t = target(tmp_path, binary=_wrapper_without_root_powers(tmp_path))
    exp, dirs = make_export(tmp_path / "export", {"alice@example.org": [message(1), message(2)], "bob@example.org": [message(3)]})
    unreadable = next(p for p in (dirs[1] / "blobs").rglob("*") if p.is_file())
    unreadable.chmod(0)
    try:
        res = t.ship(exp.root, dirs, host="h")
    finally:
        unreadable.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert res.accounts == ["alice@example.org"]
    assert list(res.skipped) == ["bob@example.org"] and unreadable.name in res.skipped["bob@example.org"]
    snaps = t.snapshots()
    assert len(snaps) == 1 and snaps[0].accounts == ["alice@example.org"]  # the incomplete snapshot is gone
    assert read_tree(t.fetch(snaps[0].id, "alice@example.org", tmp_path / "f")) == read_tree(dirs[0])


def test_version_detection_and_feature_gates(tmp_path: Path) -> None:
    t = target(tmp_path)
    f = t.features()
    assert f.version >= (0, 14, 0)
    assert Features((0, 14, 0)).retry_lock is False and Features((0, 16, 4)).retry_lock is True
    assert Features((0, 17, 1)).exit_codes is True and Features((0, 16, 0)).exit_codes is False
    old = tmp_path / "old-restic"
    old.write_text("#!/bin/sh\necho 'restic 0.9.6 compiled with go1.13 on linux/amd64'\n")
    old.chmod(0o755)
    with pytest.raises(TargetError, match=r"restic 0\.9\.6 is too old"):
        target(tmp_path, binary=str(old)).snapshots()
    with pytest.raises(TargetError, match="not found"):
        target(tmp_path, binary=str(tmp_path / "no-such-restic")).snapshots()
    restic_mod._VERSIONS.pop(str(old), None)


def test_keep_policy_maps_to_forget_flags() -> None:
    assert keep_flags(KeepPolicy(daily=7, weekly=4, monthly=12, yearly=2, last=3, within="30d")) == [
        "--keep-last", "3", "--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12", "--keep-yearly", "2",
        "--keep-within", "30d"]
    assert keep_flags(KeepPolicy()) == []


def test_env_file_parsing(tmp_path: Path) -> None:
    p = tmp_path / "e"
    p.write_text('A=1\n\n# c\nexport B="two words"\nC=\'x=y\'\n')
    assert parse_env_file(str(p)) == {"A": "1", "B": "two words", "C": "x=y"}


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux) for a private tmpfs")
def test_full_disk_is_exit_7_and_leaves_no_snapshot(tmp_path: Path) -> None:
    """A local repository on a 1 MB tmpfs (private mount namespace) fills up during the ship."""
    repo = tmp_path / "repo"
    repo.mkdir()
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    exp, _ = make_export(tmp_path / "export", {"alice@example.org": [os.urandom(500_000) for _ in range(6)]})
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[export]\ndir = "{exp.root}"\n[state]\ndir = "{tmp_path / "state"}"\n'
                   f'[[targets]]\nname = "usb"\ntype = "restic"\nrepository = "{repo}"\npassword_file = "{pw}"\ninit = true\n'
                   f'cache_dir = "{tmp_path / "cache"}"\n')
    cli = f"{sys.executable} -m backup --config {cfg}" if (Path(__file__).parents[1] / "backup" / "__main__.py").exists() else (
        f"{sys.executable} -c 'from backup.cli import main; main()' --config {cfg}")
    script = (f"mount -t tmpfs -o size=1m none {repo} || exit 99\n"
              f"{cli} ship; echo \"ship-rc=$?\"\n"
              f"{cli} snapshots --json; echo \"snap-rc=$?\"\n")
    flags = ["-m"] if os.geteuid() == 0 else ["-rm"]
    res = subprocess.run(["unshare", *flags, "sh", "-c", script], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    if "ship-rc" not in res.stdout:
        pytest.skip(f"cannot mount a private tmpfs here: {res.stderr.strip()[:200]}")
    assert "ship-rc=7" in res.stdout, res.stdout + res.stderr
    assert "disk full" in res.stderr and "usb" in res.stderr
    assert "Traceback" not in res.stderr
    listing = res.stdout.split("ship-rc=7", 1)[1]
    assert "[]" in listing and "snap-rc=0" in listing
    state = json.loads((tmp_path / "state" / "ship" / "usb.json").read_text())
    assert state["status"] == "failed" and "disk full" in state["detail"]


def test_native_retention_decides_exactly_like_restic_forget(tmp_path: Path) -> None:
    """The b2/s3 targets' keep policy (backup/targets/retention.py) against restic's own `forget --dry-run`."""
    from datetime import UTC, datetime, timedelta

    from backup.targets.retention import apply_policy

    t = target(tmp_path)
    t.init()
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    at = lambda y, m, d, h=2, mi=45: datetime(y, m, d, h, mi, tzinfo=UTC).astimezone()  # noqa: E731
    times = [at(2024, 12, 20), at(2024, 12, 31, 23, 30)]
    times += [at(2025, m, 15) for m in range(1, 12)]
    times += [at(2025, 11, 30), at(2025, 11, 30, 3, 0)]  # the `within` cut-off falls exactly on the first
    times += [at(2025, 12, 26) + timedelta(days=i) for i in range(16)]  # daily across the ISO-year change (2026-W01)
    env = restic_env(t)
    for when in times:
        stamp = when.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        subprocess.run(["restic", "backup", "-q", "--host", "h", "--time", stamp, str(src)], env=env, check=True)
    listed = json.loads(subprocess.run(["restic", "snapshots", "--json"], env=env, capture_output=True, text=True, check=True).stdout)
    by_id = {s["id"]: datetime.fromisoformat(s["time"]) for s in listed}
    policies = [KeepPolicy(daily=5, weekly=3, monthly=4), KeepPolicy(last=2, yearly=2), KeepPolicy(within="1m10d", weekly=2),
                KeepPolicy(weekly=4), KeepPolicy(monthly=100), KeepPolicy(within="1y"), KeepPolicy(last=3, daily=2)]
    for keep in policies:
        r = subprocess.run(["restic", "forget", "--dry-run", "--json", "--group-by", "", *keep_flags(keep)], env=env,
                           capture_output=True, text=True, check=True)
        restic_keep = {s["id"] for g in json.loads(r.stdout.splitlines()[0]) for s in g.get("keep") or []}
        ours, _ = apply_policy(list(by_id), lambda i: by_id[i], keep)
        assert set(ours) == restic_keep, keep
