"""Run a dashboard's queries against Prometheus's HTTP API, the way Grafana would.

Template variables are filled in like Grafana does with "All" selected (``.*``) unless given; ``$__rate_interval``,
``$__interval`` and ``$__range`` follow Grafana's definitions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from . import DASHBOARD_DIR, DASHBOARDS

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class RenderError(Exception):
    """A user mistake or an unreachable Prometheus; ``code`` is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def parse_duration(text: str) -> float:
    """``"1h30m"`` → 5400.0 (Prometheus duration syntax); ValueError when it is not one."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (examples: 30m, 6h, 7d)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def prom_duration(seconds: float) -> str:
    """Seconds as a Prometheus duration (whole seconds, at least 1s)."""
    return f"{max(1, round(seconds))}s"


def load_dashboard(name: str) -> dict[str, Any]:
    """A shipped dashboard by short name (overview), file name (mail-overview) or uid, or a dashboard JSON file."""
    key = name.strip().removesuffix(".json")
    for short, filename in DASHBOARDS.items():
        path = DASHBOARD_DIR / filename
        if key in (short, filename.removesuffix(".json"), f"mailsidecar-{short}"):
            return _read(path)
    path = Path(name)
    if path.is_file():
        return _read(path)
    raise RenderError(f"unknown dashboard {name!r}: use {', '.join(DASHBOARDS)} or the path of a dashboard JSON file", 1)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RenderError(f"{path}: {exc.strerror or exc}", 7) from None
    except ValueError as exc:
        raise RenderError(f"{path}: not JSON ({exc})", 1) from None
    if not isinstance(data, dict) or not isinstance(data.get("panels"), list):
        raise RenderError(f"{path}: not a Grafana dashboard (no panels)", 1)
    return data


@dataclass
class TimeRange:
    start: float
    end: float
    step: float              # seconds between points of range queries ($__interval)
    scrape_interval: float   # the data source's scrape interval (Grafana's "timeInterval")

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def rate_interval(self) -> float:
        """Grafana's ``$__rate_interval``: max($__interval + scrape interval, 4 * scrape interval)."""
        return max(self.step + self.scrape_interval, 4 * self.scrape_interval)


def make_range(end: float, seconds: float, scrape_interval: float, points: int = 240) -> TimeRange:
    step = max(scrape_interval, seconds / points)
    return TimeRange(end - seconds, end, step, scrape_interval)


def variable_values(dashboard: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    """Values of the dashboard's template variables: the given ones, else "All" (``.*``)."""
    values: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name = var.get("name", "")
        if var.get("type") == "datasource":
            continue
        values[name] = given.get(name, var.get("allValue") or ".*")
    unknown = set(given) - set(values)
    if unknown:
        raise RenderError(f"the dashboard has no variable {', '.join(sorted(unknown))} (it has: {', '.join(values) or 'none'})", 1)
    return values


def substitute(expr: str, values: dict[str, str], tr: TimeRange) -> str:
    builtin = {
        "__rate_interval": prom_duration(tr.rate_interval),
        "__interval": prom_duration(tr.step),
        "__range": prom_duration(tr.seconds),
        "__range_s": str(round(tr.seconds)),
    }

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return builtin.get(name, values.get(name, m.group(0)))

    return _VAR.sub(repl, expr)


def legend(fmt: str, labels: dict[str, str], fallback: str) -> str:
    """Grafana's legendFormat: ``{{label}}`` placeholders; auto = the labels, or ``fallback`` without labels."""
    if fmt and fmt != "__auto":
        return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt)
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    if not shown:
        return fallback
    return labels.get("__name__", "") + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items())) + "}"


@dataclass
class Series:
    name: str
    labels: dict[str, str]
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    @property
    def last(self) -> float | None:
        return self.values[-1] if self.values else None


class Prometheus:
    """The few Prometheus HTTP API calls the renderer needs."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        try:
            r = self.http.get(self.url + path, params=params, timeout=self.timeout)
        except requests.Timeout:
            raise RenderError(f"Prometheus at {self.url} did not answer within {self.timeout:g}s", 2) from None
        except requests.ConnectionError as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else str(exc).splitlines()[0][:200]
            raise RenderError(f"cannot reach Prometheus at {self.url}: {reason}", 2) from None
        except requests.RequestException as exc:
            raise RenderError(f"cannot query Prometheus at {self.url}: {exc}", 2) from None
        try:
            body = r.json()
        except ValueError:
            raise RenderError(f"{self.url} did not answer like Prometheus (HTTP {r.status_code} on {path})", 2) from None
        if body.get("status") != "success":
            raise QueryError(body.get("error") or f"HTTP {r.status_code}")
        return body["data"]

    def check(self) -> None:
        """Raise RenderError unless the URL is a reachable Prometheus API."""
        try:
            self._get("/api/v1/query", {"query": "1"})
        except QueryError as exc:
            raise RenderError(f"{self.url} refused a trivial query: {exc}", 2) from None

    def range(self, expr: str, tr: TimeRange) -> list[tuple[dict[str, str], list[float], list[float]]]:
        data = self._get("/api/v1/query_range", {"query": expr, "start": tr.start, "end": tr.end, "step": tr.step})
        return [(s["metric"], [float(t) for t, _ in s["values"]], [float(v) for _, v in s["values"]]) for s in data["result"]]

    def instant(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        data = self._get("/api/v1/query", {"query": expr, "time": at})
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]


class QueryError(Exception):
    """Prometheus rejected a query (the message is Prometheus's)."""


@dataclass
class PanelData:
    panel: dict[str, Any]
    series: list[Series] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def fetch_panel(prom: Prometheus, panel: dict[str, Any], values: dict[str, str], tr: TimeRange) -> PanelData:
    """Run every visible target of ``panel``: range queries for time series, instant queries otherwise."""
    out = PanelData(panel)
    for target in panel.get("targets", []):
        if target.get("hide") or not target.get("expr"):
            continue
        expr = substitute(target["expr"], values, tr)
        fmt = target.get("legendFormat", "")
        try:
            if panel.get("type") == "timeseries":
                for labels, times, vals in prom.range(expr, tr):
                    out.series.append(Series(legend(fmt, labels, panel.get("title", "")), labels, times, vals))
            else:
                for labels, value in prom.instant(expr, tr.end):
                    out.series.append(Series(legend(fmt, labels, panel.get("title", "")), labels, [tr.end], [value]))
        except QueryError as exc:
            out.errors.append(f"{target.get('refId', '?')}: {exc}")
    return out
