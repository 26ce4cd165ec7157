"""``mail-exporter dashboards render``: draw a Grafana dashboard from Prometheus into a PNG, without Grafana.

Every panel's queries run against the Prometheus HTTP API as Grafana would run them (template variables on
"All" unless ``--var`` is given); time series use ``/api/v1/query_range``, stat and bar gauge panels show the
value at the end of the range. Exit codes: 0 written · 1 usage (unknown dashboard, bad duration or variable,
matplotlib missing) · 2 Prometheus unreachable · 7 cannot write the PNG.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path
from typing import NoReturn

import click

EXIT_USAGE, EXIT_CONNECT, EXIT_IO = 1, 2, 7


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"mail-exporter: {message}", err=True)
    sys.exit(code)


@click.group("dashboards")
def dashboards() -> None:
    """Look at the Grafana dashboards (overview, security, backups) without Grafana."""


@dashboards.command("render")
@click.option("--prometheus", "url", required=True, metavar="URL", help="Prometheus base URL, e.g. http://127.0.0.1:9090")
@click.option("--dashboard", "name", required=True, metavar="NAME", help="overview, security, backups, or a dashboard JSON file")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.png", help="PNG to write")
@click.option("--range", "range_", default="1h", show_default=True, metavar="DURATION", help="time range ending now (30m, 6h, 7d)")
@click.option("--end", "end", default=None, metavar="TIME", help="end of the range: Unix time or ISO 8601 [default: now]")
@click.option("--var", "variables", multiple=True, metavar="NAME=VALUE", help="template variable, e.g. instance=mx1:9925 [default: All]")
@click.option("--scrape-interval", default="15s", show_default=True, metavar="DURATION",
              help="Prometheus scrape interval, for $__rate_interval as Grafana computes it")
@click.option("--timeout", default=30.0, show_default=True, type=float, help="seconds per query")
def render(url: str, name: str, out: Path, range_: str, end: str | None, variables: tuple[str, ...], scrape_interval: str,
           timeout: float) -> None:
    """Draw every panel of a dashboard into one PNG (matplotlib, no display needed)."""
    try:
        from dashboards.query import Prometheus, RenderError, fetch_panel, load_dashboard, make_range, parse_duration, variable_values
    except ImportError as exc:
        _fail(f"the dashboards package is not installed with mail-exporter ({exc})", EXIT_USAGE)

    try:
        seconds, scrape = parse_duration(range_), parse_duration(scrape_interval)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    given = {}
    for pair in variables:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--var expects NAME=VALUE, got {pair!r}", EXIT_USAGE)
        given[key] = value
    try:
        board = load_dashboard(name)
        values = variable_values(board, given)
        tr = make_range(_end_time(end), seconds, scrape)
        prom = Prometheus(url, timeout)
        prom.check()
    except RenderError as exc:
        _fail(str(exc), exc.code)
    try:
        import matplotlib  # noqa: F401

        from dashboards.draw import render_png
    except ImportError:
        _fail("drawing needs matplotlib: pip install 'mailsidecar[render]'", EXIT_USAGE)
    try:
        panels = [fetch_panel(prom, p, values, tr) for p in board["panels"]]
    except RenderError as exc:
        _fail(str(exc), exc.code)
    for pd in panels:
        for error in pd.errors:
            click.echo(f"mail-exporter: panel {pd.panel.get('title', '?')!r}: {error}", err=True)
    shown = ", ".join(f"{k}={v}" for k, v in values.items()) or "no variables"
    local = dt.datetime.fromtimestamp(tr.end).astimezone()
    subtitle = f"last {range_} until {local:%Y-%m-%d %H:%M %Z}  ·  {shown}  ·  {url}"
    try:
        render_png(board, panels, tr, out, subtitle)
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror or exc}", EXIT_IO)
    drawn = [p for p in panels if p.panel.get("type") != "row"]
    with_data = sum(1 for p in drawn if p.series)
    click.echo(f"wrote {out}: {len(drawn)} panels, {with_data} with data, {sum(1 for p in drawn if p.errors)} with query errors")


def _end_time(end: str | None) -> float:
    from dashboards.query import RenderError

    if end is None:
        return time.time()
    try:
        return float(end)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(end)
    except ValueError:
        raise RenderError(f"--end: not a Unix time or ISO 8601 time: {end!r}", EXIT_USAGE) from None
    return (parsed if parsed.tzinfo else parsed.astimezone()).timestamp()
