"""Background polling: every source runs in its own thread on its own interval; a scrape only reads the
families the last successful poll built, so scrape cost never depends on queue size or server latency.

A source is "up" while its last poll succeeded within its timeout. A poll still running past its timeout makes
the source down at once (and counts one error), even if the network call behind it has not given up yet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("mail_exporter")


class SourceError(Exception):
    """A poll failed for a reason the operator can act on; ``kind`` is connect, auth, protocol or local."""

    def __init__(self, message: str, kind: str = "connect") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class PollResult:
    """What one poll produced: the families to serve and problems that did not fail the whole poll
    (``degraded``: some of what the source watches could not be reached, e.g. one TLS endpoint)."""

    families: list[Metric]
    problems: list[str] = field(default_factory=list)
    degraded: bool = False


class Source(Protocol):
    """One thing the exporter watches (mail server metrics, queue, backups, TLS endpoints, probe)."""

    name: str
    interval: float
    timeout: float

    def poll(self) -> PollResult:
        """Gather fresh values (blocking); raise :class:`SourceError` (or any exception) on failure."""
        ...

    def close(self) -> None:
        ...


class Health:
    """Bookkeeping of one source's polls (thread-safe)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self.up = False
        self.running_since: float | None = None
        self.overdue_counted = False
        self.last_success: float | None = None  # Unix time
        self.last_duration = 0.0
        self.polls = 0
        self.errors = 0
        self.last_error = ""
        self.last_error_kind = ""
        self.problems: list[str] = []
        self.degraded = False

    def begin(self) -> None:
        with self._lock:
            self.running_since = time.monotonic()
            self.overdue_counted = False

    def end(self, duration: float, error: str | None, kind: str = "", result: PollResult | None = None) -> None:
        with self._lock:
            self.running_since = None
            self.polls += 1
            self.last_duration = duration
            if error is None:
                self.up = True
                self.last_success = time.time()
                self.last_error, self.last_error_kind = "", ""
                self.problems = list(result.problems) if result else []
                self.degraded = bool(result and result.degraded)
            else:
                self.up = False
                if not self.overdue_counted:
                    self.errors += 1
                self.last_error, self.last_error_kind = error, kind

    def snapshot(self) -> tuple[bool, float | None, float, int, int]:
        """``(up, last_success, last_duration, polls, errors)``; an overdue poll is down and counted once."""
        with self._lock:
            up = self.up
            if self.running_since is not None and time.monotonic() - self.running_since > self.timeout:
                up = False
                if not self.overdue_counted:
                    self.overdue_counted = True
                    self.errors += 1
            return up, self.last_success, self.last_duration, self.polls, self.errors


class PolledCollector(Collector):
    """The prometheus-client collector of one source: serves the last good families; polls in a thread."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.health = Health(source.timeout)
        self._families: list[Metric] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported = ""

    # -- scraping ----------------------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        return []  # names vary with the data; registering must not poll

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)

    # -- polling -----------------------------------------------------------------------------------
    def poll_once(self) -> bool:
        """Run one poll now (blocking) and record it; True on success within the timeout."""
        self.health.begin()
        started = time.monotonic()
        error: str | None = None
        kind = ""
        result: PollResult | None = None
        try:
            result = self.source.poll()
        except SourceError as exc:
            error, kind = str(exc), exc.kind
        except Exception as exc:  # a source bug must not kill its thread; it shows as a poll error
            log.debug("source %s: poll raised", self.source.name, exc_info=True)
            error, kind = f"{type(exc).__name__}: {exc}", "internal"
        duration = time.monotonic() - started
        if error is None and duration > self.source.timeout:
            error, kind = f"poll took {duration:.1f}s, longer than the {self.source.timeout:g}s timeout", "timeout"
        if error is None and result is not None:
            self._families = result.families
        self.health.end(duration, error, kind, result)
        self._report(error, result.problems if result and error is None else [])
        return error is None

    def _report(self, error: str | None, problems: list[str]) -> None:
        """Log state changes only, so a source that stays down does not flood the journal."""
        state = error or "; ".join(problems)
        if state == self._reported:
            return
        if error:
            log.warning("source %s is down: %s", self.source.name, error)
        elif problems:
            log.warning("source %s: %s", self.source.name, "; ".join(problems))
        elif self._reported:
            log.info("source %s is up again", self.source.name)
        self._reported = state

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll_once()
            took = time.monotonic() - started
            # A poll slower than its interval delays the next one by as long as it took (server busy <= 50%).
            self._stop.wait(max(self.source.interval - took, took, 0.05))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"poll-{self.source.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.source.close()


class HealthCollector(Collector):
    """``mail_exporter_source_*`` for every source, plus build info."""

    def __init__(self, polled: list[PolledCollector], version: str) -> None:
        self.polled = polled
        self.version = version

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mail_exporter_source_up", "1 if the source's last poll succeeded within its timeout.", labels=["source"])
        last = GaugeMetricFamily(
            "mail_exporter_source_last_success_timestamp_seconds", "Unix time of the source's last successful poll (0: never).",
            labels=["source"],
        )
        duration = GaugeMetricFamily("mail_exporter_source_poll_duration_seconds", "Duration of the source's last poll.", labels=["source"])
        polls = CounterMetricFamily("mail_exporter_source_polls", "Polls of the source, successful or not.", labels=["source"])
        errors = CounterMetricFamily("mail_exporter_source_poll_errors", "Failed or overdue polls of the source.", labels=["source"])
        interval = GaugeMetricFamily("mail_exporter_source_interval_seconds", "Configured poll interval of the source.", labels=["source"])
        for p in self.polled:
            name = p.source.name
            ok, last_success, took, n, errs = p.health.snapshot()
            up.add_metric([name], 1.0 if ok else 0.0)
            last.add_metric([name], last_success or 0.0)
            duration.add_metric([name], took)
            polls.add_metric([name], n)
            errors.add_metric([name], errs)
            interval.add_metric([name], p.source.interval)
        info = GaugeMetricFamily("mail_exporter_build_info", "mail-exporter version (always 1).", labels=["version"])
        info.add_metric([self.version], 1.0)
        yield from (up, last, duration, polls, errors, interval, info)
