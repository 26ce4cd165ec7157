"""``mail-backup schedule`` and the job lock, against mailsrv and a real restic repository.

Times are injected through the daemon's own persistent job store (the state a machine switched off for three
nights leaves behind), so the tests never wait for a real 02:45; one test runs a 2-second cron for real.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from backup.exportdir.account import AccountReader
from backup.locking import job_lock
from backup.schedule import cron_trigger
from backup.state import JobResult, StateDir
from tests.conftest import MailsrvProc, start_mailsrv
from tests.test_drill import mail_backup, make_setup, one_line
from tests.test_export import to_toml

CODE = "import sys; from backup.cli import main; sys.exit(main())"


# -- helpers ---------------------------------------------------------------------------------------------------
def hook_recorder(path: Path, *, sleep_on_start: float = 0) -> dict[str, Any]:
    """A command hook appending "<time> <pid of mail-backup> <event> <job> <status> <exit code>" to ``path``."""
    line = f'echo "$(date +%s.%N) $PPID $MAILSIDECAR_HOOK_EVENT $MAILSIDECAR_JOB $MAILSIDECAR_STATUS $MAILSIDECAR_EXIT_CODE" >> {path}'
    start = f"{line}; sleep {sleep_on_start}" if sleep_on_start else line
    return {"name": "recorder", "on_start": ["/bin/sh", "-c", start], "on_success": ["/bin/sh", "-c", line],
            "on_failure": ["/bin/sh", "-c", line], "timeout": 60}


@dataclass
class HookLine:
    time: float
    pid: int
    event: str
    job: str
    status: str
    exit_code: str


def hook_lines(path: Path) -> list[HookLine]:
    if not path.exists():
        return []
    out = []
    for ln in path.read_text().splitlines():
        parts = ln.split()
        if len(parts) >= 5:
            out.append(HookLine(float(parts[0]), int(parts[1]), parts[2], parts[3], parts[4], parts[5] if len(parts) > 5 else ""))
    return out


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_daemon_left_behind() -> Iterator[None]:
    """A failed test must not leave its scheduler running."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclass
class Daemon:
    """``mail-backup schedule`` as systemd runs it."""

    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    runs: list[float] = field(default_factory=list)

    def start(self) -> Daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIDECAR_")}
        self.started = time.time()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", CODE, "--config", str(self.config), "-v", "schedule"],
                                         stdout=log, stderr=subprocess.STDOUT, env=env)
        _STARTED.append(self.proc)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 90) -> None:
        assert self.proc is not None
        proc = self.proc
        wait_until(lambda: needle in self.text() or proc.poll() is not None, timeout, f"{needle!r} in the scheduler log")
        assert needle in self.text(), self.text()[-4000:]

    def stop(self, timeout: float = 120) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the scheduler did not stop after SIGTERM:\n{self.text()[-4000:]}") from None


class _StoreOwner:
    """What APScheduler's job store needs of a scheduler to load a job (no scheduler thread: nothing runs)."""

    def __init__(self) -> None:
        from tzlocal import get_localzone

        self.timezone = get_localzone()


def _store(state_dir: Path) -> Any:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    store = SQLAlchemyJobStore(url=f"sqlite:///{state_dir / 'schedule.sqlite'}")
    store.start(_StoreOwner(), "default")
    return store


def set_next_run(state_dir: Path, job: str, when: datetime) -> None:
    """Rewrite a job's next start in the daemon's job store (as if the machine had been off since ``when``)."""
    store = _store(state_dir)
    try:
        stored = store.lookup_job(job)
        stored._modify(next_run_time=when)
        store.update_job(stored)
    finally:
        store.shutdown()


def next_run(state_dir: Path, job: str) -> datetime | None:
    store = _store(state_dir)
    try:
        stored = store.lookup_job(job)
        return stored.next_run_time if stored else None
    finally:
        store.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailsrvProc]:
    srv = start_mailsrv(tmp_path_factory.mktemp("schedule") / "srv")
    try:
        srv.add_account("alice")
        srv.cli("seed", "--account", "alice", "--count", "20", "--random-seed", "3")
        yield srv
    finally:
        srv.stop()


# -- cron ------------------------------------------------------------------------------------------------------
def test_cron_follows_crontab_weekdays() -> None:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Europe/Berlin")
    monday = datetime(2026, 11, 23, 12, 0, tzinfo=tz)
    assert monday.weekday() == 0

    def nxt(expr: str) -> datetime:
        return cron_trigger(expr, key="k", timezone=tz).get_next_fire_time(None, monday)

    assert nxt("0 4 * * 0") == datetime(2026, 11, 29, 4, 0, tzinfo=tz)  # Sunday, as in crontab (APScheduler's 0 is Monday)
    assert nxt("0 4 * * 7") == datetime(2026, 11, 29, 4, 0, tzinfo=tz)
    assert nxt("30 4 * * sun") == datetime(2026, 11, 29, 4, 30, tzinfo=tz)
    assert nxt("45 2 * * 1-5") == datetime(2026, 11, 24, 2, 45, tzinfo=tz)  # Tuesday: Monday's 02:45 has passed
    assert nxt("0 3 * * 6") == datetime(2026, 11, 28, 3, 0, tzinfo=tz)  # Saturday
    assert nxt("0 0 * * 0-6/2") == datetime(2026, 11, 24, 0, 0, tzinfo=tz)  # Sun, Tue, Thu, Sat
    assert nxt("@weekly") == datetime(2026, 11, 29, 0, 0, tzinfo=tz)
    assert nxt("45 2 * * *") == datetime(2026, 11, 24, 2, 45, tzinfo=tz)
    assert nxt("*/20 5 12 * * *") == datetime(2026, 11, 23, 12, 5, 0, tzinfo=tz)  # six fields: seconds first
    assert cron_trigger("45 2 * * *", key="k", timezone=tz, jitter=600).jitter == 600


@pytest.mark.parametrize(("key", "expr", "problem"), [
    ("run", "45 2 * *", "expected 5 fields"),
    ("check", "0 25 * * 0", "25"),
    ("drill", "30 4 * * 8", "weekday"),
    ("run", "0 0 1 * 1", "restrict only one"),
])
def test_invalid_cron_exits_1_naming_the_key(tmp_path: Path, key: str, expr: str, problem: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(to_toml({"state": {"dir": str(tmp_path / "state")}, "schedule": {key: expr}}))
    from backup.cli import main

    res = CliRunner().invoke(main, ["--config", str(config), "schedule", "--dry-run"])
    assert res.exit_code == 1, res.output
    line = res.stderr.strip()
    assert "\n" not in line and f"{config}: schedule.{key}: invalid cron expression {expr!r}" in line and problem in line, line
    assert not (tmp_path / "state").exists()


def test_dry_run_shows_the_next_starts(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(to_toml({"state": {"dir": str(tmp_path / "state")},
                               "schedule": {"timezone": "Europe/Berlin", "drill": "", "check": "0 4 * * 0"}}))
    from backup.cli import main

    res = CliRunner().invoke(main, ["--config", str(config), "schedule", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    import json

    doc = json.loads(res.stdout.strip().splitlines()[-1])
    jobs = {j["job"]: j for j in doc["jobs"]}
    assert set(jobs) == {"run", "check"}  # drill = "" disables it
    assert all(datetime.fromisoformat(t).weekday() == 6 and t[11:16] == "04:00" for t in jobs["check"]["next"])
    assert all(t[11:16] == "02:45" for t in jobs["run"]["next"]) and len(jobs["run"]["next"]) == 3
    bad = tmp_path / "bad.toml"
    bad.write_text(to_toml({"schedule": {"timezone": "Mars/Olympus"}}))
    res = CliRunner().invoke(main, ["--config", str(bad), "schedule", "--dry-run"])
    assert res.exit_code == 1 and "schedule.timezone: unknown time zone 'Mars/Olympus'" in res.stderr


# -- the daemon --------------------------------------------------------------------------------------------------
def test_a_short_cron_fires_for_real_and_never_overlaps(tmp_path: Path) -> None:
    """A 2-second cron really starts the job; a start that comes while it still runs is skipped, not stacked."""
    hooks = tmp_path / "hooks.log"
    config = tmp_path / "c.toml"
    config.write_text(to_toml({"state": {"dir": str(tmp_path / "state")},
                               "schedule": {"run": "", "check": "", "drill": "*/2 * * * * *",
                                            "hooks": [hook_recorder(hooks, sleep_on_start=2.5)]}}))
    daemon = Daemon(config, tmp_path / "daemon.log").start()
    try:
        wait_until(lambda: len([h for h in hook_lines(hooks) if h.event == "failure"]) >= 2, 90, "two drill runs")
    finally:
        assert daemon.stop() == 0
    lines = hook_lines(hooks)
    starts = [h for h in lines if h.event == "start"]
    ends = [h for h in lines if h.event == "failure"]
    assert all(h.job == "drill" and h.exit_code == "1" for h in ends), lines  # no [[targets]]: exit 1, failure hooks
    beats = re.findall(r'Running job "mail-backup drill[^\n]*\(scheduled at \d{4}-\d\d-\d\d \d\d:\d\d:(\d\d)', daemon.text())
    assert len(beats) == len(starts) and all(int(sec) % 2 == 0 for sec in beats), daemon.text()[-3000:]  # on the cron's beat
    for i in range(1, len(starts)):
        assert starts[i].time > ends[i - 1].time, lines  # each run ended before the next began (2.5 s > 2 s period)
    assert "still running from its previous start" in daemon.text() or "skipped" in daemon.text()


def test_missed_nights_run_once_at_start_up(server: MailsrvProc, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks.log"
    setup = make_setup(tmp_path / "b", server, schedule={"run": "45 2 * * *", "check": "", "drill": "", "hooks": [hook_recorder(hooks)]})
    state_dir = setup.state.root
    daemon = Daemon(setup.config, tmp_path / "daemon.log").start()
    daemon.wait_for("run: '45 2 * * *', next start")
    second = mail_backup(setup.config, "schedule")  # one scheduler per state dir
    one_line(second, 1, "another mail-backup schedule is already running", str(state_dir))
    assert daemon.stop() == 0
    assert hook_lines(hooks) == [] and setup.state.read("run", "all") is None

    # the machine was off for three nights: the stored start is 02:45 three days ago
    stored = next_run(state_dir, "run")
    assert stored is not None and stored.tzinfo is not None
    tz = stored.tzinfo
    three_nights = cron_trigger("45 2 * * *", key="k", timezone=tz).get_next_fire_time(None, datetime.now(tz) - timedelta(days=3))
    set_next_run(state_dir, "run", three_nights)
    daemon.start()
    wait_until(lambda: any(h.event in ("success", "failure") for h in hook_lines(hooks)), 180, "the catch-up run")
    time.sleep(3)  # room for (wrong) further catch-up runs
    assert daemon.stop() == 0
    lines = hook_lines(hooks)
    assert [(h.event, h.job, h.status) for h in lines] == [("start", "run", "running"), ("success", "run", "success")], lines
    assert lines[0].time - daemon.started < 60
    run = setup.state.read("run", "all")
    assert run is not None and run.status == "success" and run.started >= daemon.started
    assert "missed its start at" in daemon.text() and "runs now, once" in daemon.text()
    nxt = next_run(state_dir, "run")
    assert nxt is not None and datetime.now(tz) < nxt <= datetime.now(tz) + timedelta(days=1)  # back on the nightly beat

    # with a short misfire_grace, nights missed by more than it are skipped (and said so), not run
    setup.rewrite(misfire_grace=3600)
    set_next_run(state_dir, "run", three_nights)
    daemon.start()
    daemon.wait_for("misfire_grace")
    time.sleep(2)
    assert daemon.stop() == 0
    assert len(hook_lines(hooks)) == 2


def test_manual_run_and_scheduled_run_never_overlap(server: MailsrvProc, tmp_path: Path) -> None:
    """The daemon's run waits for a manual run holding the lock (timestamps prove it), then runs."""
    hooks = tmp_path / "hooks.log"
    release = tmp_path / "release"
    recorder = hook_recorder(hooks)
    recorder["on_start"] = ["/bin/sh", "-c", recorder["on_start"][2] + f"; while [ ! -e {release} ]; do sleep 0.1; done"]
    recorder["timeout"] = 600
    setup = make_setup(tmp_path / "b", server, schedule={"run": "45 2 * * *", "check": "", "drill": "", "hooks": [recorder]})
    # a nightly run the daemon must redo at start-up (a previous one was stopped half-way)
    StateDir(setup.state.root).write(JobResult(job="run", subject="all", status="failed", started=time.time() - 60,
                                               finished=time.time() - 50, detail="stopped", **{"interrupted": True}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSIDECAR_")}
    manual = subprocess.Popen([sys.executable, "-c", CODE, "--config", str(setup.config), "run"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    daemon = Daemon(setup.config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: any(h.event == "start" for h in hook_lines(hooks)), 120, "the manual run to start")
        daemon.start()  # the manual run holds the lock (its start hook waits for the release file)
        daemon.wait_for(f"run: waiting for mail-backup run (pid {manual.pid}", 180)
        release.touch()
        _, err = manual.communicate(timeout=300)
        assert manual.returncode == 0, err
        wait_until(lambda: len([h for h in hook_lines(hooks) if h.event != "start"]) >= 2, 300, "the scheduled run")
    finally:
        release.touch()
        if manual.poll() is None:
            manual.kill()
        if daemon.proc is not None:
            assert daemon.stop() == 0
    lines = hook_lines(hooks)
    assert [(h.event, h.pid) for h in lines] == [("start", manual.pid), ("success", manual.pid),
                                                 ("start", daemon.proc.pid), ("success", daemon.proc.pid)], lines  # type: ignore[union-attr]
    assert lines[2].time >= lines[1].time  # the scheduled run began only after the manual one had ended
    assert "was stopped half-way; runs again now" in daemon.text()


def test_lock_wait_zero_refuses_and_a_deadline_gives_up(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(to_toml({"state": {"dir": str(tmp_path / "state")}, "schedule": {"lock_wait": 0},
                               "targets": [{"name": "local", "type": "restic", "repository": str(tmp_path / "repo"),
                                            "password_file": str(config)}]}))
    with job_lock(tmp_path / "state", "run", wait=0):
        r = mail_backup(config, "drill")
        one_line(r, 4, "another job is running: mail-backup run", f"pid {os.getpid()}", "lock_wait = 0")
        r = mail_backup(config, "check")  # the weekly check typed by hand (or started by its timer) shares the lock too
        one_line(r, 4, "another job is running: mail-backup run", f"pid {os.getpid()}")
        config.write_text(config.read_text().replace("lock_wait = 0", "lock_wait = 2"))
        t0 = time.monotonic()
        r = mail_backup(config, "drill")
        one_line(r, 4, "another job is running: mail-backup run", "gave up after waiting 2 s")
        assert time.monotonic() - t0 >= 2
    res = StateDir(tmp_path / "state").read("drill", "local")
    assert res is not None and res.status == "failed" and "gave up after waiting" in res.detail


def test_sigterm_mid_export_leaves_a_consistent_export_and_a_stopped_result(tmp_path: Path) -> None:
    srv = start_mailsrv(tmp_path / "srv")
    try:
        srv.add_account("alice")
        srv.cli("seed", "--account", "alice", "--count", "10", "--random-seed", "5")
        setup = make_setup(tmp_path / "b", srv, schedule={"run": "45 2 * * *", "check": "", "drill": ""}, export={"concurrency": 1})
        r = mail_backup(setup.config, "run")
        assert r.returncode == 0, r.stderr
        before = AccountReader(setup.export_dir / "alice").manifest
        export_before = setup.state.read("export", "alice")
        srv.cli("seed", "--account", "alice", "--count", "600", "--random-seed", "6")

        StateDir(setup.state.root).write(JobResult(job="run", subject="all", status="failed", started=time.time() - 9, finished=time.time(),
                                                   detail="stopped", **{"interrupted": True}))
        daemon = Daemon(setup.config, tmp_path / "daemon.log").start()
        journal = setup.export_dir / "alice" / ".tmp" / "journal.tsv"
        wait_until(lambda: journal.exists() and journal.read_text().count("\n") >= 20, 180, "the export to be downloading")
        assert daemon.stop() == 0
        assert "SIGTERM received" in daemon.text()

        reader = AccountReader(setup.export_dir / "alice")  # the previous complete export, untouched
        assert reader.manifest.run.id == before.run.id and reader.check_files() == []
        assert all(reader.blob_path(e.sha256).is_file() for e in reader.emails())
        run = setup.state.read("run", "all")
        assert run is not None and run.status == "failed" and "stopped" in run.detail and (run.model_extra or {}).get("interrupted")
        stopped = setup.state.read("export", "alice")  # a complete "failed: stopped" result, the last success kept
        assert export_before is not None and stopped is not None and stopped.status == "failed" and "stopped" in stopped.detail
        assert stopped.last_success == export_before.last_success
        assert not list(setup.state.root.rglob(".*.tmp"))

        daemon.start()  # the stopped run runs again at start-up and resumes the download
        wait_until(lambda: (x := setup.state.read("run", "all")) is not None and x.status == "success", 300, "the resumed run")
        assert daemon.stop() == 0
        after = AccountReader(setup.export_dir / "alice")
        assert after.manifest.counts.emails == before.counts.emails + 600 and after.check_files() == []
        redo = setup.state.read("export", "alice")
        assert redo is not None and (redo.model_extra or {}).get("fetched_messages", 600) < 600  # kept what it had downloaded
    finally:
        srv.stop()


def test_every_job_disabled_or_second_scheduler(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(to_toml({"state": {"dir": str(tmp_path / "state")}, "schedule": {"run": "", "check": "", "drill": ""}}))
    r = mail_backup(config, "schedule")
    one_line(r, 1, "schedule: run, check and drill are all disabled")
