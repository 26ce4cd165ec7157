"""``mail-backup schedule``: the daemon that runs the nightly job, the weekly check and the restore drill.

* **Cron** expressions from ``[schedule]`` (``run``, ``check``, ``drill``; ``""`` disables a job) in local time
  or ``[schedule] timezone``. Standard 5-field crontab: weekday 0 and 7 are Sunday (translated for
  APScheduler 3, where 0 is Monday); a leading sixth field for seconds and ``@daily``-style macros are
  accepted. A mistake stops the daemon with exit 1 naming the key.
* **Persistent job store**: APScheduler 3's SQLAlchemyJobStore on SQLite in the state dir
  (``schedule.sqlite``) remembers each job's next start. A start missed while the machine was off or the
  daemon stopped runs **once** at start-up (``coalesce``), if it was missed by less than
  ``misfire_grace`` (default 7 days). A nightly run that was stopped half-way (SIGTERM) also runs again at
  start-up.
* **One job at a time**: every job takes the lock shared with a manual ``mail-backup run`` / ``drill``
  (backup/locking.py) and each job has ``max_instances = 1``. ``jitter`` delays each start randomly.
* **SIGTERM** asks the running job to stop at its next safe point (backup/stopping.py); the daemon waits for
  it, records ``failed: stopped`` and exits 0.
* **Hooks** (backup/hooks.py) fire on start, success and failure of each job.

:func:`run_job` is the wrapper every job goes through, scheduled or typed by hand: lock → start hooks →
body → result hooks, with every failure mapped to its exit code and never hidden by a hook.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailsrv.config import Config, ConfigError

from . import stopping
from .errors import EXIT_CONNECT, EXIT_IO, EXIT_OK, EXIT_PARTIAL, EXIT_UNKNOWN, EXIT_USAGE, BackupError, UsageError
from .hooks import Hooks
from .locking import Holder, LockBusy, job_lock
from .output import Output
from .state import JobResult, StateDir, Status

log = logging.getLogger(__name__)

JOBS = ("run", "check", "drill")
JOBSTORE = "schedule.sqlite"
DAEMON_LOCK = "schedule.lock"
MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
          "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
APS_DOW = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # APScheduler accepts names; numbers would be off by one


# -- cron ------------------------------------------------------------------------------------------------
def _dow_days(field: str) -> set[int]:
    """Cron weekdays (0-7, names; 0 and 7 = Sunday) → the set of days 0 (Sun) … 6 (Sat)."""

    def num(token: str) -> int:
        t = token.lower()
        if t in DOW_NAMES:
            return DOW_NAMES.index(t)
        if not t.isdigit() or int(t) > 7:
            raise ValueError(f"weekday {token!r} is not 0-7 or sun-sat")
        return int(t)

    days: set[int] = set()
    for item in field.split(","):
        rng, _, step_s = item.partition("/")
        if step_s and (not step_s.isdigit() or int(step_s) < 1):
            raise ValueError(f"bad step {step_s!r} in weekday field")
        step = int(step_s) if step_s else 1
        if rng == "*":
            lo, hi = 0, 6
        elif "-" in rng:
            a, _, b = rng.partition("-")
            lo, hi = num(a), num(b)
            if hi < lo:
                raise ValueError(f"weekday range {rng!r} runs backwards")
        else:
            lo = num(rng)
            hi = 6 if step_s else lo
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return days


def cron_trigger(expr: str, *, key: str, timezone: tzinfo, jitter: float = 0.0) -> Any:
    """A CronTrigger for a crontab line; :class:`ConfigError` naming ``key`` when it is not one."""
    from apscheduler.triggers.cron import CronTrigger

    text = MACROS.get(expr.strip().lower(), expr.strip())
    fields = text.split()
    if len(fields) not in (5, 6):
        raise ConfigError(f"{key}: invalid cron expression {expr!r}: expected 5 fields (minute hour day month weekday), "
                          f"got {len(fields)}")
    second = fields.pop(0) if len(fields) == 6 else "0"
    minute, hour, day, month, dow = fields
    try:
        days = _dow_days(dow)
        if day != "*" and dow != "*":
            raise ValueError("both day of month and weekday are restricted (cron would run on either, which is rarely "
                             "meant); restrict only one of them")
        weekday = "*" if len(days) == 7 else ",".join(APS_DOW[d] for d in sorted(days))
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=weekday,
                           timezone=timezone, jitter=int(jitter) or None)
    except ValueError as exc:
        raise ConfigError(f"{key}: invalid cron expression {expr!r}: {exc}") from None


def schedule_timezone(cfg: Config) -> tzinfo:
    if cfg.schedule.timezone:
        try:
            return ZoneInfo(cfg.schedule.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{_file(cfg)}schedule.timezone: unknown time zone {cfg.schedule.timezone!r}") from None
    from tzlocal import get_localzone

    return get_localzone()


def triggers(cfg: Config) -> dict[str, Any]:
    """The enabled jobs and their triggers (every cron expression checked)."""
    tz = schedule_timezone(cfg)
    out = {}
    for job in JOBS:
        expr = getattr(cfg.schedule, job)
        if expr.strip():
            out[job] = cron_trigger(expr, key=f"{_file(cfg)}schedule.{job}", timezone=tz, jitter=cfg.schedule.jitter)
    return out


def _file(cfg: Config) -> str:
    return f"{cfg.path}: " if cfg.path else ""


# -- one job, scheduled or by hand -------------------------------------------------------------------------
@dataclass
class JobOutcome:
    job: str
    exit_code: int
    summary: str
    started: float
    finished: float
    waited: float = 0.0
    completed: bool = True  # False when the job was stopped or never got to start

    @property
    def status(self) -> Status:
        if self.exit_code == EXIT_OK:
            return "success"
        return "partial" if self.exit_code == EXIT_PARTIAL and self.completed else "failed"


Body = Callable[[], tuple[int, str]]
_active = threading.local()  # the job this thread runs under the lock


def exit_code_of(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and one-line message an exception maps to (as ``mail-backup`` prints them), or None."""
    from mailsrv.client.errors import AuthError, ConnectError, InsecureUrlError, UnknownAccount

    if isinstance(exc, BackupError):
        return exc.exit_code, str(exc)
    if isinstance(exc, ConfigError | InsecureUrlError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, ConnectError | AuthError):
        return EXIT_CONNECT, str(exc)
    if isinstance(exc, UnknownAccount):
        return EXIT_UNKNOWN, str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_IO, f"{where}{'disk full' if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))}"
    return None


def run_job(cfg: Config, job: str, out: Output, body: Body, *, hooks: Hooks | None = None, reraise: bool = False) -> JobOutcome:
    """Run ``body`` under the shared job lock with the job's hooks; the outcome never depends on a hook.

    With ``reraise`` (commands typed by hand) an exception from the body propagates after the failure hooks
    ran, so ``mail-backup`` reports it as usual; otherwise (the daemon) it becomes the outcome.
    """
    if getattr(_active, "job", None) == job:  # nested (the daemon's run calls nightly(), which guards itself)
        return _passthrough(job, body)
    hooks = hooks if hooks is not None else Hooks(cfg.schedule.hooks)
    _active.job = job
    try:
        with stopping.handling():
            return _run_job(cfg, job, out, body, hooks, reraise)
    finally:
        _active.job = None


R = TypeVar("R")


def guarded(cfg: Config, job: str, out: Output, action: Callable[[], R], describe: Callable[[R], tuple[int, str]]) -> R:
    """``action()`` as job ``job`` of a command typed by hand: under the shared lock, with the job's hooks.

    ``describe`` turns the action's report into (exit code, one-line summary) for the hooks; exceptions
    propagate after the failure hooks ran, so the command reports them as usual.
    """
    reports: list[R] = []

    def body() -> tuple[int, str]:
        reports.append(action())
        return describe(reports[0])

    run_job(cfg, job, out, body, reraise=True)
    return reports[0]


def _passthrough(job: str, body: Body) -> JobOutcome:
    started = time.time()
    code, summary = body()
    return JobOutcome(job, code, summary, started, time.time())


def _run_job(cfg: Config, job: str, out: Output, body: Body, hooks: Hooks, reraise: bool) -> JobOutcome:
    started = time.time()
    outcome = JobOutcome(job, EXIT_OK, "", started, started)
    pending: BaseException | None = None

    def waiting(holder: Holder) -> None:
        limit = cfg.schedule.lock_wait
        out.info(f"{job}: waiting for {holder.describe()} to finish (up to {limit:.0f} s, [schedule] lock_wait)")
        out.event("lock.waiting", job=job, holder_pid=holder.pid, holder_job=holder.job, holder_since=holder.since)

    try:
        with job_lock(cfg.state.dir, job, wait=cfg.schedule.lock_wait, on_wait=waiting) as waited:
            outcome.waited = waited
            outcome.started = time.time()
            hooks.fire("start", job, status="running", started=outcome.started)
            try:
                outcome.exit_code, outcome.summary = body()
            except BaseException as exc:
                mapped = exit_code_of(exc)
                if mapped is None and not isinstance(exc, Exception):
                    outcome.exit_code, outcome.summary = EXIT_PARTIAL, f"interrupted ({type(exc).__name__})"
                    pending = exc
                elif mapped is None:
                    log.exception("%s: unexpected error", job)
                    outcome.exit_code, outcome.summary = EXIT_PARTIAL, f"unexpected error: {type(exc).__name__}: {exc}"
                    pending = exc
                else:
                    outcome.exit_code, outcome.summary = mapped
                    pending = exc
                if isinstance(exc, stopping.Stopped | KeyboardInterrupt):
                    outcome.completed = False
                    how = f"stopped ({stopping.reason() or 'stop requested'})" if isinstance(exc, stopping.Stopped) else "interrupted"
                    outcome.summary = f"{how}; a rerun resumes"
                    _record_interrupted(cfg, job, outcome, out)
    except (LockBusy, stopping.Stopped) as exc:  # never got the lock
        outcome.exit_code, outcome.summary = exc.exit_code, (str(exc) if isinstance(exc, LockBusy)
                                                            else f"stopped while waiting for the lock ({stopping.reason()})")
        outcome.completed = False
        _record_not_started(cfg, job, outcome, out)
        pending = exc
    except BackupError as exc:  # the lock file cannot be opened
        outcome.exit_code, outcome.summary = exc.exit_code, str(exc)
        pending = exc
    outcome.finished = time.time()
    hooks.fire("success" if outcome.exit_code == EXIT_OK else "failure", job, status=outcome.status, exit_code=outcome.exit_code,
               summary=outcome.summary, started=outcome.started, finished=outcome.finished)
    out.event("job.finished", job=job, status=outcome.status, exit_code=outcome.exit_code, summary=outcome.summary,
              started=outcome.started, finished=outcome.finished, waited=round(outcome.waited, 3))
    if pending is not None and (reraise or not isinstance(pending, Exception)):
        raise pending
    return outcome


def _record_interrupted(cfg: Config, job: str, outcome: JobOutcome, out: Output) -> None:
    """A job stopped half-way: the nightly run leaves ``run.json`` = failed: stopped (drill records its own)."""
    if job == "run":
        _write(cfg, JobResult(job="run", subject="all", status="failed", started=outcome.started, finished=time.time(),
                              errors=1, detail=outcome.summary, **{"interrupted": True}), out)


def _record_not_started(cfg: Config, job: str, outcome: JobOutcome, out: Output) -> None:
    """A job that could not start (lock busy, stopped while waiting) is a failed result for the exporter's alerts."""
    now = time.time()
    if job == "run":
        _write(cfg, JobResult(job="run", subject="all", status="failed", started=outcome.started, finished=now, errors=1,
                              detail=outcome.summary), out)
        return
    for t in cfg.targets:
        _write(cfg, JobResult(job=job, subject=t.name, status="failed", started=outcome.started, finished=now, errors=1,  # type: ignore[arg-type]
                              detail=outcome.summary), out)


def _write(cfg: Config, result: JobResult, out: Output) -> None:
    try:
        StateDir(cfg.state.dir).write(result)
    except OSError as exc:
        out.warn(f"cannot write the {result.job} result to the state directory {cfg.state.dir}: {exc.strerror or exc}")


# -- the jobs' bodies -------------------------------------------------------------------------------------
def run_summary(report: Any) -> str:
    """One line about a nightly run (``backup.actions.run.RunReport``) for hooks and logs."""
    accounts = report.export.get("accounts") or []
    ok = sum(1 for a in accounts if isinstance(a, dict) and a.get("status") == "success")
    parts = [f"export: {ok}/{len(accounts)} account(s) complete" + (f" (exit {report.export_exit})" if report.export_exit else "")]
    if report.ship is not None:
        shipped = [t for t in report.ship.targets if t.status != "failed"]
        parts.append(f"ship: {len(shipped)}/{len(report.ship.targets)} target(s)")
        if report.ship.exit_code:
            parts.append(report.ship.failure_message())
    if report.prune is not None and report.prune.exit_code:
        parts.append(report.prune.failure_message())
    parts += report.errors
    return "; ".join(parts)[:500]


def nightly_body(cfg: Config, out: Output) -> Body:
    """export → ship → prune (``backup.actions.run.nightly``, which takes the job lock itself: see :func:`run_job`)."""

    def body() -> tuple[int, str]:
        from .actions.run import nightly

        report = nightly(cfg, out)
        return report.exit_code, run_summary(report)

    return body


def check_body(cfg: Config, out: Output) -> Body:
    """The repository check of every target (``backup.actions.check``), reading ``check_read_data`` percent of the data."""

    def body() -> tuple[int, str]:
        from .actions.check import check

        return check_summary(check(cfg, out, read_data_percent=cfg.schedule.check_read_data or None))

    return body


def check_summary(report: Any) -> tuple[int, str]:
    """Exit code and one line of a ``backup.actions.check.CheckReport`` for hooks and logs."""
    return report.exit_code, (report.failure_message() if report.exit_code else f"{len(report.targets)} target(s) ok")


def drill_body(cfg: Config, out: Output, **options: Any) -> Body:
    """The restore drill of every target (``backup.actions.drill``)."""

    def body() -> tuple[int, str]:
        from .actions.drill import run_drill

        result = run_drill(cfg, out, **options)
        summary = "; ".join(f"{t.target}: {t.status} ({t.messages} messages, {len(t.mismatches)} mismatches)"
                            + (f": {t.detail}" if t.status != "success" else "") for t in result.targets)
        return result.exit_code, summary

    return body


BODIES: dict[str, Callable[[Config, Output], Body]] = {"run": nightly_body, "check": check_body, "drill": drill_body}


# -- the daemon -------------------------------------------------------------------------------------------
class Daemon:
    """What a scheduled start needs; one per process (APScheduler stores only ``scheduled`` and the job name)."""

    current: Daemon | None = None

    def __init__(self, cfg: Config, out: Output, hooks: Hooks) -> None:
        self.cfg = cfg
        self.out = out
        self.hooks = hooks

    def execute(self, job: str) -> None:
        if stopping.requested():
            log.warning("%s: not starting, the scheduler is stopping", job)
            return
        self.out.info(f"{job}: starting")
        outcome = run_job(self.cfg, job, self.out, BODIES[job](self.cfg, self.out), hooks=self.hooks)
        line = f"{job}: {outcome.status} (exit {outcome.exit_code}) in {outcome.finished - outcome.started:.1f} s"
        (self.out.info if outcome.exit_code == EXIT_OK else self.out.warn)(line + (f": {outcome.summary}" if outcome.summary else ""))


def scheduled(job: str) -> None:
    """The function APScheduler's job store refers to (``backup.schedule:scheduled``)."""
    daemon = Daemon.current
    if daemon is None:
        log.error("%s: no scheduler context in this process", job)
        return
    daemon.execute(job)


def _daemon_lock(state_dir: Path) -> int:
    """Refuse a second daemon on the same state dir (the job store must have one owner)."""
    path = state_dir / DAEMON_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise UsageError(f"another mail-backup schedule is already running on {state_dir}"
                         f"{f' (pid {other})' if other.isdigit() else ''}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _sync_jobs(scheduler: Any, wanted: dict[str, Any], grace: float, now: datetime) -> dict[str, str]:
    """Make the stored jobs match the config, keeping a missed start so it runs once; returns notes per job."""
    notes: dict[str, str] = {}
    stored = {j.id: j for j in scheduler.get_jobs()}
    for job_id in set(stored) - set(wanted):
        scheduler.remove_job(job_id)
    for job, trigger in wanted.items():
        opts: dict[str, Any] = {"misfire_grace_time": int(grace), "coalesce": True, "max_instances": 1}
        existing = stored.get(job)
        if existing is None:
            scheduler.add_job(scheduled, trigger, args=[job], id=job, name=f"mail-backup {job}", replace_existing=True, **opts)
            continue
        nrt = existing.next_run_time
        missed = nrt is not None and nrt <= now
        if repr(existing.trigger) != repr(trigger) and not missed:
            nrt = trigger.get_next_fire_time(None, now)
        if missed:
            notes[job] = f"missed its start at {nrt:%Y-%m-%d %H:%M}" + ("; runs now, once" if now - nrt <= _td(grace)
                                                                       else f"; more than misfire_grace ({grace:.0f} s) ago, skipped")
        scheduler.modify_job(job, func=scheduled, args=[job], trigger=trigger, next_run_time=nrt, name=f"mail-backup {job}", **opts)
    return notes


def _td(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


def _resume_interrupted(cfg: Config, scheduler: Any, now: datetime, notes: dict[str, str]) -> None:
    """A nightly run that was stopped half-way (``run.json`` marked interrupted) runs again at start-up."""
    if scheduler.get_job("run") is None:
        return
    last = StateDir(cfg.state.dir).read("run", "all")
    if last is None or not (last.model_extra or {}).get("interrupted"):
        return
    job = scheduler.get_job("run")
    if job.next_run_time is not None and job.next_run_time <= now:
        return  # already due
    scheduler.modify_job("run", next_run_time=now)
    notes["run"] = "was stopped half-way; runs again now"


def serve(cfg: Config, out: Output, *, dry_run: bool = False) -> int:
    """Run the scheduler until SIGTERM/SIGINT; returns the exit code (0 after a clean stop)."""
    wanted = triggers(cfg)
    hooks = Hooks(cfg.schedule.hooks)
    if not wanted:
        raise UsageError(f"{_file(cfg)}schedule: run, check and drill are all disabled; nothing to schedule")
    tz = schedule_timezone(cfg)
    now = datetime.now(tz)
    if dry_run:
        return _preview(cfg, wanted, now, out)
    state_dir = Path(cfg.state.dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _daemon_lock(state_dir)
    except OSError as exc:
        raise BackupError(f"state.dir {state_dir}: {exc.strerror or exc}", EXIT_IO) from None
    try:
        return _serve(cfg, out, hooks, wanted, tz, state_dir)
    finally:
        os.close(lock_fd)


def _serve(cfg: Config, out: Output, hooks: Hooks, wanted: dict[str, Any], tz: tzinfo, state_dir: Path) -> int:
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    Daemon.current = Daemon(cfg, out, hooks)
    stopping.install()
    grace = cfg.schedule.misfire_grace
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{state_dir / JOBSTORE}")},
        executors={"default": ThreadPoolExecutor(len(JOBS))},
        job_defaults={"coalesce": True, "misfire_grace_time": int(grace), "max_instances": 1},
        timezone=tz,
    )

    def on_event(event: JobEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            out.warn(f"{event.job_id}: start at {getattr(event, 'scheduled_run_time', '?')} was missed by more than "
                     f"misfire_grace ({grace:.0f} s); skipped")
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            out.warn(f"{event.job_id}: still running from its previous start; this start is skipped")

    scheduler.add_listener(on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    try:
        scheduler.start(paused=True)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy errors: the job store cannot be opened
        raise BackupError(f"state.dir: cannot open the job store {state_dir / JOBSTORE}: {exc}", EXIT_IO) from None
    try:
        now = datetime.now(tz)
        notes = _sync_jobs(scheduler, wanted, grace, now)
        _resume_interrupted(cfg, scheduler, now, notes)
        for job in scheduler.get_jobs():
            expr = getattr(cfg.schedule, job.id)
            when = f"{job.next_run_time:%Y-%m-%d %H:%M:%S %Z}" if job.next_run_time else "never"
            out.info(f"{job.id}: {expr!r}, next start {when}" + (f" ({notes[job.id]})" if job.id in notes else ""))
            out.event("schedule.job", job=job.id, cron=expr, next_run=job.next_run_time, note=notes.get(job.id, ""))
        scheduler.resume()
        while not stopping.requested():
            stopping.sleep(3600)
        out.info(f"stopping ({stopping.reason()}): waiting for the running job to reach a safe point")
    finally:
        scheduler.shutdown(wait=True)
        Daemon.current = None
    out.info("scheduler stopped")
    return EXIT_OK


def _preview(cfg: Config, wanted: dict[str, Any], now: datetime, out: Output) -> int:
    """``--dry-run``: the next starts of each job, computed from the config alone."""
    rows = []
    for job, trigger in wanted.items():
        times = []
        prev = None
        for _ in range(3):
            nxt = trigger.get_next_fire_time(prev, now if prev is None else prev + _td(1))
            if nxt is None:
                break
            times.append(nxt)
            prev = nxt
        rows.append({"job": job, "cron": getattr(cfg.schedule, job), "next": [t.isoformat() for t in times]})
    human = "\n".join(f"{r['job']:<6} {r['cron']!r:<16} next: {', '.join(r['next'])}" for r in rows)
    out.result({"event": "schedule.preview", "timezone": str(now.tzinfo), "jobs": rows}, human=human)
    return EXIT_OK


__all__ = ["JOBS", "Daemon", "JobOutcome", "check_summary", "cron_trigger", "exit_code_of", "guarded", "run_job", "run_summary",
           "scheduled", "serve", "triggers"]
