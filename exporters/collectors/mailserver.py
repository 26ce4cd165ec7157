"""Source ``mailserver``: the server's own ``/metrics/prometheus``, re-exposed as a labelled contract.

Each poll GETs the scrape, translates the server's names to canonical ones (:mod:`.stalwart_names`), keeps
counters and histograms monotonic across server restarts, re-accumulates histogram buckets, converts
milliseconds to seconds and builds the families of :mod:`.contract`.
"""

from __future__ import annotations

import math
from typing import cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from mailsrv.client.errors import AuthError, ConnectError, HttpError, MailClientError
from mailsrv.client.transport import Transport

from ..poller import PollResult, SourceError
from . import contract
from .promtext import Monotonic, MonotonicHistograms, RawHistogram, cumulative, parse
from .stalwart_names import Scheme, canonical, detect_016

SETTINGS = {"0.16.12": "stalwart-0.16.12", "0.16.0": "stalwart-0.16.0"}


class NameScheme:
    """Which counter names the server uses: fixed by profile/config, or detected per scrape (stalwart-0.16 auto)."""

    def __init__(self, profile: str, setting: str) -> None:
        self.auto = profile == "stalwart-0.16" and setting == "auto"
        if profile == "stalwart-0.16":
            self.scheme: Scheme = cast(Scheme, SETTINGS.get(setting, "stalwart-0.16.12"))
        else:
            self.scheme = "stalwart-0.15"
        self.how = "assumed" if self.auto else "configured"

    def observe(self, counter_names: set[str]) -> Scheme:
        if self.auto:
            found = detect_016(counter_names)
            if found is not None:
                self.scheme, self.how = found, "detected"
        return self.scheme


def _label(fam_label: str | None) -> list[str]:
    return [fam_label] if fam_label else []


class MailserverSource:
    """Polls the server's Prometheus endpoint."""

    name = "mailserver"

    def __init__(self, url: str, transport: Transport, names: NameScheme, *, interval: float, timeout: float) -> None:
        self.url = url
        self.transport = transport
        self.names = names
        self.interval = interval
        self.timeout = timeout
        self.counters = Monotonic()
        self.histograms = MonotonicHistograms()

    def fetch(self) -> str:
        try:
            resp = self.transport.send("GET", self.url)
            if resp.status_code == 404:
                raise SourceError(f"{self.url}: not found (HTTP 404); is the server's Prometheus endpoint enabled?", "protocol")
            self.transport.raise_for_status(resp, "server metrics")
            return resp.text
        except AuthError as exc:
            raise SourceError(f"{exc} (check [server] metrics_user / metrics_password_file)", "auth") from None
        except ConnectError as exc:
            raise SourceError(str(exc), "connect") from None
        except (HttpError, MailClientError) as exc:
            raise SourceError(str(exc), "protocol") from None

    def poll(self) -> PollResult:
        text = self.fetch()
        try:
            scrape = parse(text)
        except ValueError as exc:
            raise SourceError(f"{self.url}: not Prometheus text: {exc}", "protocol") from None
        return PollResult(self.build(scrape.counters, scrape.gauges, scrape.histograms))

    def build(self, raw_counters: dict[str, float], gauges: dict[str, float], histograms: dict[str, RawHistogram]) -> list[Metric]:
        scheme = self.names.observe(set(raw_counters))
        counters: dict[str, float] = {}
        for name, value in raw_counters.items():
            key = canonical(name, scheme)
            counters[key] = counters.get(key, 0.0) + value
        totals = {key: self.counters.update(key, counters.get(key, 0.0)) for key in contract.all_counters() | set(counters)}

        out: list[Metric] = []
        for fam in contract.COUNTERS:
            family = CounterMetricFamily(fam.name, fam.help, labels=_label(fam.label))
            if fam.label:
                for label, key in fam.series.items():
                    family.add_metric([label], totals[key])
            else:
                family.add_metric([], sum(totals[key] for key in fam.series.values()))
            out.append(family)
        name, help_ = contract.SENDER_CHECK_FAMILY
        checks = CounterMetricFamily(name, help_, labels=["check", "result"])
        for (check, result), key in contract.SENDER_CHECKS.items():
            checks.add_metric([check, result], totals[key])
        out.append(checks)

        for g in contract.GAUGES:
            present = [v for v in g.series.values() if v in gauges]
            if not g.always and not present:
                continue
            gauge = GaugeMetricFamily(g.name, g.help, labels=_label(g.label))
            for label, key in g.series.items():
                gauge.add_metric([label] if g.label else [], gauges.get(key, 0.0))
            out.append(gauge)

        for h in contract.HISTOGRAMS:
            hist = HistogramMetricFamily(h.name, h.help, labels=_label(h.label))
            for label, key in h.series.items():
                bounds, cum, total, _ = self._histogram(key, histograms.get(key), h.default_bounds)
                buckets = [(_fmt(b * h.scale), c) for b, c in zip(bounds, cum, strict=True)]
                hist.add_metric([label] if h.label else [], buckets, round(total * h.scale, 9))
            out.append(hist)

        info = GaugeMetricFamily("mail_exporter_server_metric_names_info",
                                 "Which server metric names the exporter applies, and whether it configured, detected or assumed them.",
                                 labels=["scheme", "how"])
        info.add_metric([scheme, self.names.how], 1.0)
        out.append(info)
        return out

    def _histogram(self, key: str, raw: RawHistogram | None, defaults: tuple[float, ...]) -> tuple[list[float], list[float], float, float]:
        if raw is not None:
            return (raw.bounds, *self.histograms.update(key, raw.bounds, cumulative(raw), raw.sum, raw.count))
        known = self.histograms.known_bounds(key)
        if known is not None:  # the server restarted and has not observed anything yet
            return (known, *self.histograms.update(key, known, [0.0] * len(known), 0.0, 0.0))
        bounds = [*defaults, math.inf]
        return bounds, [0.0] * len(bounds), 0.0, 0.0

    def close(self) -> None:
        self.transport.close()


def _fmt(bound: float) -> str:
    if math.isinf(bound):
        return "+Inf"
    return repr(float(round(bound, 9)))
