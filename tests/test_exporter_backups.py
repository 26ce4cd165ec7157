"""The backups source from a state dir written with ``backup.state`` (what mail-backup leaves after its jobs)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from backup.exportdir import load_manifest
from backup.state import JobResult, StateDir
from exporters.app import Exporter
from mailsrv.config import load_config, parse_config
from tests.conftest import start_mailsrv
from tests.test_export import mail_backup, to_toml
from tests.test_exporter_support import parse_samples, val


def exporter(state: Path) -> Exporter:
    return Exporter(parse_config({"state": {"dir": str(state)}, "exporter": {"sources": ["backups"]}}))


def scrape(exp: Exporter) -> dict:  # type: ignore[type-arg]
    exp.poll_all_once()
    return parse_samples(generate_latest(exp.registry).decode())


def test_job_results_become_backup_metrics(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.write(JobResult(job="export", subject="alice", status="success", started=1000.0, finished=1060.0, messages=120, bytes=5_000_000))
    state.write(JobResult(job="export", subject="bob@example.org", status="success", started=1000.0, finished=1010.0, messages=4))
    # bob's next export fails: last_success survives, status flips
    state.write(JobResult(job="export", subject="bob@example.org", status="failed", started=2000.0, finished=2003.0, errors=2,
                          detail="cannot connect"))
    state.write(JobResult(job="ship", subject="local", status="partial", started=1100.0, finished=1400.0, bytes=4_000_000, errors=1,
                          snapshots=12))  # type: ignore[call-arg]  # extra keys are allowed
    state.write(JobResult(job="check", subject="local", status="success", started=1500.0, finished=1600.0, snapshots=13))  # type: ignore[call-arg]
    state.write(JobResult(job="drill", subject="local", status="failed", started=1700.0, finished=1800.0, errors=1))
    state.write(JobResult(job="run", subject="all", status="partial", started=900.0, finished=1900.0))

    exp = exporter(tmp_path)
    s = scrape(exp)
    assert val(s, "mail_exporter_source_up", source="backups") == 1
    assert val(s, "mail_backup_last_success_timestamp_seconds", job="export", subject="alice") == 1060.0
    assert val(s, "mail_backup_last_duration_seconds", job="export", subject="alice") == 60.0
    assert val(s, "mail_backup_last_messages", job="export", subject="alice") == 120
    assert val(s, "mail_backup_last_bytes", job="export", subject="alice") == 5_000_000
    assert val(s, "mail_backup_last_status", job="export", subject="alice", status="success") == 1
    assert val(s, "mail_backup_last_success_timestamp_seconds", job="export", subject="bob@example.org") == 1010.0
    assert val(s, "mail_backup_last_run_timestamp_seconds", job="export", subject="bob@example.org") == 2003.0
    assert val(s, "mail_backup_last_status", job="export", subject="bob@example.org", status="failed") == 1
    assert val(s, "mail_backup_last_status", job="export", subject="bob@example.org", status="success") == 0
    assert val(s, "mail_backup_last_errors", job="export", subject="bob@example.org") == 2
    assert val(s, "mail_backup_last_bytes", job="export", subject="bob@example.org") is None  # not reported, not invented
    assert val(s, "mail_backup_last_status", job="ship", subject="local", status="partial") == 1
    assert val(s, "mail_backup_snapshots", target="local") == 13  # the newest of ship / check
    assert val(s, "mail_backup_last_status", job="check", subject="local", status="success") == 1
    assert val(s, "mail_backup_last_status", job="drill", subject="local", status="failed") == 1
    assert val(s, "mail_backup_last_success_timestamp_seconds", job="drill", subject="local") == 0  # never succeeded
    assert val(s, "mail_backup_last_status", job="run", subject="all", status="partial") == 1
    assert val(s, "mail_backup_state_unreadable_files") == 0

    # a torn or foreign file is counted, the rest still served
    (tmp_path / "export" / "broken.json").write_text("{not json")
    s = scrape(exp)
    assert val(s, "mail_backup_state_unreadable_files") == 1
    assert val(s, "mail_backup_last_messages", job="export", subject="alice") == 120
    assert exp.polled[0].health.problems == [f"1 unreadable job result file(s) in {tmp_path}"]


def test_missing_state_dir_is_a_down_source(tmp_path: Path) -> None:
    exp = exporter(tmp_path / "nope")
    s = scrape(exp)
    assert val(s, "mail_exporter_source_up", source="backups") == 0
    assert exp.polled[0].health.last_error_kind == "local"
    assert "does not exist" in exp.polled[0].health.last_error


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (Debian: apt-get install restic)")
def test_metrics_after_real_mail_backup_runs(tmp_path: Path) -> None:
    """``mail-backup run`` and ``drill`` against a live mailsrv and a real restic repository, then a failed night:
    the exporter serves what the jobs recorded, and a failure keeps the last success time."""
    srv = start_mailsrv(tmp_path / "srv")
    try:
        for name, count in (("alice", 12), ("bob", 5)):
            srv.add_account(name)
            srv.cli("seed", "--account", name, "--count", str(count), "--random-seed", "7")
        (tmp_path / "restic.pw").write_text("metrics-test-password\n")
        sections: dict[str, Any] = {
            "server": {"profile": "embedded", "url": srv.url, "admin_user": "admin", "admin_password_file": str(srv.dir / "admin.pw"),
                       "master_user": "master", "master_password_file": str(srv.dir / "master.pw")},
            "export": {"dir": str(tmp_path / "export")}, "state": {"dir": str(tmp_path / "state")},
            "exporter": {"sources": ["backups"]},
            "targets": [{"name": "local", "type": "restic", "repository": str(tmp_path / "repo"),
                         "password_file": str(tmp_path / "restic.pw"), "init": True, "cache_dir": str(tmp_path / "cache")}]}
        cfg = tmp_path / "config.toml"
        cfg.write_text(to_toml(sections))
        r = mail_backup(cfg, "run")
        assert r.returncode == 0, r.stderr[-2000:]
        r = mail_backup(cfg, "drill")
        assert r.returncode == 0, r.stderr[-2000:]

        exp = Exporter(load_config(str(cfg)))
        s = scrape(exp)
        assert val(s, "mail_exporter_source_up", source="backups") == 1
        for name, count in (("alice", 12), ("bob", 5)):
            manifest = load_manifest(tmp_path / "export" / name)
            assert val(s, "mail_backup_last_status", job="export", subject=name, status="success") == 1
            assert val(s, "mail_backup_last_messages", job="export", subject=name) == count == manifest.counts.emails
            assert val(s, "mail_backup_last_bytes", job="export", subject=name) == manifest.counts.bytes > 0
            assert val(s, "mail_backup_last_errors", job="export", subject=name) == 0
        exported = val(s, "mail_backup_last_success_timestamp_seconds", job="export", subject="alice")
        assert exported and exported > 1.7e9
        assert val(s, "mail_backup_last_status", job="ship", subject="local", status="success") == 1
        assert val(s, "mail_backup_snapshots", target="local") == 1
        assert (val(s, "mail_backup_last_bytes", job="ship", subject="local") or 0) > 0
        assert val(s, "mail_backup_last_status", job="drill", subject="local", status="success") == 1
        assert val(s, "mail_backup_last_status", job="run", subject="all", status="success") == 1
    finally:
        srv.stop()

    # the next night the mail server is down: the export fails, the last complete export is shipped again, so the
    # run is partial (MailBackupFailed fires) and the export's last success stays where it was (MailBackupStale ages)
    r = mail_backup(cfg, "run")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    s = scrape(exp)
    assert val(s, "mail_backup_last_status", job="run", subject="all", status="partial") == 1
    assert val(s, "mail_backup_last_status", job="run", subject="all", status="success") == 0
    assert val(s, "mail_backup_last_errors", job="run", subject="all") == 1
    assert val(s, "mail_backup_snapshots", target="local") == 2
    assert val(s, "mail_backup_last_success_timestamp_seconds", job="export", subject="alice") == exported
