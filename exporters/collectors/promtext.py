"""Reading a Stalwart-style scrape: unlabelled counters, gauges and non-cumulative histograms.

Stalwart's histograms count each observation only in the first bucket whose bound exceeds it and end with
``le="inf"`` (Rust's spelling) instead of ``+Inf``; :func:`cumulative` turns either shape into Prometheus'
cumulative buckets. :class:`Monotonic` keeps totals rising across server restarts (counters restart at 0
and vanish until their next event).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class RawHistogram:
    bounds: list[float]  # ascending, last is +inf
    buckets: list[float]  # as the server reports them (cumulative or not)
    sum: float
    count: float


@dataclass
class Scrape:
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, RawHistogram] = field(default_factory=dict)


def _le(value: str) -> float:
    v = value.strip().lower()
    if v in ("inf", "+inf", "infinity", "+infinity"):
        return math.inf
    return float(v)


def parse(text: str) -> Scrape:
    """Split a text-format scrape by type; labelled series (not Stalwart's) are ignored.

    Raises ``ValueError`` for text that is not the Prometheus format.
    """
    out = Scrape()
    for fam in text_string_to_metric_families(text):
        if fam.type == "histogram":
            pairs: list[tuple[float, float]] = []
            total = count = 0.0
            for s in fam.samples:
                if s.name.endswith("_bucket") and set(s.labels) == {"le"}:
                    pairs.append((_le(s.labels["le"]), float(s.value)))
                elif s.name.endswith("_sum") and not s.labels:
                    total = float(s.value)
                elif s.name.endswith("_count") and not s.labels:
                    count = float(s.value)
            pairs.sort()
            if pairs and pairs[-1][0] != math.inf:
                pairs.append((math.inf, count if _is_cumulative([v for _, v in pairs], count) else 0.0))
            if pairs:
                out.histograms[fam.name] = RawHistogram([b for b, _ in pairs], [v for _, v in pairs], total, count)
            continue
        for s in fam.samples:
            if s.labels:
                continue
            if fam.type == "counter" or (fam.type == "unknown" and s.name == fam.name):
                out.counters[fam.name] = float(s.value)
            elif fam.type == "gauge":
                out.gauges[fam.name] = float(s.value)
    return out


def _is_cumulative(values: list[float], count: float) -> bool:
    """Cumulative buckets never decrease and the last one holds every observation."""
    return all(b >= a for a, b in itertools.pairwise(values)) and bool(values) and values[-1] == count


def cumulative(h: RawHistogram) -> list[float]:
    """Cumulative bucket counts whether the server sent per-bucket (Stalwart) or cumulative counts."""
    if _is_cumulative(h.buckets, h.count):
        return list(h.buckets)
    out, running = [], 0.0
    for v in h.buckets:
        running += v
        out.append(running)
    return out


class Monotonic:
    """Totals that keep rising across counter resets: a value below the previous one adds the previous to
    an offset (the server restarted; a counter absent from the scrape counts as 0)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._offset: dict[str, float] = {}
        self.resets = 0

    def update(self, key: str, raw: float) -> float:
        last = self._last.get(key)
        if last is not None and raw < last:
            self._offset[key] = self._offset.get(key, 0.0) + last
            self.resets += 1
        self._last[key] = raw
        return raw + self._offset.get(key, 0.0)


@dataclass
class _HistState:
    bounds: list[float]
    last: list[float]
    last_sum: float
    last_count: float
    offset: list[float]
    offset_sum: float = 0.0
    offset_count: float = 0.0


class MonotonicHistograms:
    """Cumulative histograms that keep rising across resets (detected by a falling ``_count``)."""

    def __init__(self) -> None:
        self._state: dict[str, _HistState] = {}

    def known_bounds(self, key: str) -> list[float] | None:
        st = self._state.get(key)
        return list(st.bounds) if st else None

    def update(self, key: str, bounds: list[float], cum: list[float], total: float, count: float) -> tuple[list[float], float, float]:
        st = self._state.get(key)
        if st is None or st.bounds != bounds:
            st = _HistState(bounds, [0.0] * len(bounds), 0.0, 0.0, [0.0] * len(bounds))
            self._state[key] = st
        if count < st.last_count:
            st.offset = [o + v for o, v in zip(st.offset, st.last, strict=True)]
            st.offset_sum += st.last_sum
            st.offset_count += st.last_count
        st.last, st.last_sum, st.last_count = list(cum), total, count
        return [c + o for c, o in zip(cum, st.offset, strict=True)], total + st.offset_sum, count + st.offset_count
