"""Draw a dashboard's panels into one PNG with matplotlib (Agg), on Grafana's 24-column grid and dark theme.

Time series become line (or stacked area) charts with their legend and threshold lines; stat panels show
their values as Grafana does (value mappings, units, threshold colours); bar gauges become horizontal bars.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailsrv.fsio import atomic_write_bytes

from .query import PanelData, Series, TimeRange
from .units import PALETTE, display, format_value, threshold_color

BG, PANEL, BORDER, TEXT, MUTED, ERROR = "#111217", "#181b1f", "#2c3235", "#ccccdc", "#8e8e9f", "#F2495C"
COL_IN, ROW_IN, HEADER_IN, DPI = 0.85, 0.4, 0.75, 100
TITLE_IN = 0.3          # panel title band
MAX_LEGEND_ROWS = 4


def render_png(dashboard: dict[str, Any], panels: Sequence[PanelData], tr: TimeRange, out: Path, subtitle: str) -> None:
    """Draw ``panels`` (in dashboard order, rows included as PanelData without series) into ``out``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid_h = max((p.panel["gridPos"]["y"] + p.panel["gridPos"]["h"] for p in panels), default=1)
    width, height = 24 * COL_IN, grid_h * ROW_IN + HEADER_IN
    fig = Figure(figsize=(width, height), dpi=DPI, facecolor=BG)
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no pyplot state
    canvas = _Canvas(fig, width, height)
    fig.text(0.2 / width, 1 - 0.32 / height, dashboard.get("title", "Dashboard"), color=TEXT, fontsize=17, fontweight="bold", va="center")
    fig.text(0.2 / width, 1 - 0.6 / height, subtitle, color=MUTED, fontsize=9.5, va="center")
    for pd in panels:
        kind = pd.panel.get("type")
        if kind == "row":
            canvas.row(pd.panel)
            continue
        box = canvas.panel_box(pd.panel)
        if pd.errors:
            canvas.message(box, "query error: " + "; ".join(pd.errors), ERROR)
        elif not pd.series:
            no_value = pd.panel.get("fieldConfig", {}).get("defaults", {}).get("noValue") or "No data"
            canvas.message(box, no_value, MUTED)
        elif kind == "timeseries":
            canvas.timeseries(box, pd, tr)
        elif kind == "bargauge":
            canvas.bargauge(box, pd)
        else:  # stat, gauge and anything else with a value
            canvas.stat(box, pd)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI, facecolor=BG)
    atomic_write_bytes(out, png.getvalue())  # a viewer or web server never sees half a picture


Box = tuple[float, float, float, float]  # left, bottom, width, height in inches from the figure's bottom-left


class _Canvas:
    def __init__(self, fig: Any, width: float, height: float) -> None:
        self.fig, self.width, self.height = fig, width, height

    # -- geometry ---------------------------------------------------------------------------------------
    def _grid(self, gp: dict[str, Any]) -> Box:
        left = gp["x"] * COL_IN
        top = self.height - HEADER_IN - gp["y"] * ROW_IN
        return left, top - gp["h"] * ROW_IN, gp["w"] * COL_IN, gp["h"] * ROW_IN

    def _axes(self, left: float, bottom: float, w: float, h: float, **kw: Any) -> Any:
        return self.fig.add_axes((left / self.width, bottom / self.height, max(w, 0.01) / self.width, max(h, 0.01) / self.height), **kw)

    def _text(self, x: float, y: float, s: str, **kw: Any) -> Any:
        return self.fig.text(x / self.width, y / self.height, s, **kw)

    def row(self, panel: dict[str, Any]) -> None:
        left, bottom, _w, h = self._grid(panel["gridPos"])
        self._text(left + 0.1, bottom + h / 2, panel.get("title", ""), color=TEXT, fontsize=12.5, fontweight="bold", va="center")

    def panel_box(self, panel: dict[str, Any]) -> Box:
        """Draw the panel's frame and title; return the content area."""
        from matplotlib.patches import FancyBboxPatch

        left, bottom, w, h = self._grid(panel["gridPos"])
        pad = 0.05
        left, bottom, w, h = left + pad, bottom + pad, w - 2 * pad, h - 2 * pad
        self.fig.patches.append(FancyBboxPatch((left / self.width, bottom / self.height), w / self.width, h / self.height,
                                               boxstyle="round,pad=0,rounding_size=0.002", transform=self.fig.transFigure,
                                               facecolor=PANEL, edgecolor=BORDER, linewidth=0.8, zorder=-1))
        title = _fit(panel.get("title", ""), w - 0.2, 10.5)
        self._text(left + 0.1, bottom + h - TITLE_IN / 2 - 0.02, title, color=TEXT, fontsize=10.5, fontweight="bold", va="center")
        return left + 0.08, bottom + 0.06, w - 0.16, h - TITLE_IN - 0.1

    def message(self, box: Box, text: str, colour: str) -> None:
        left, bottom, w, h = box
        wrapped = "\n".join(textwrap.wrap(text, max(20, int(w * 72 / 9 / 0.55)))[:4])
        self._text(left + w / 2, bottom + h / 2, wrapped, color=colour, fontsize=9, ha="center", va="center")

    # -- time series -----------------------------------------------------------------------------------
    def timeseries(self, box: Box, pd: PanelData, tr: TimeRange) -> None:
        import matplotlib.dates as mdates
        from matplotlib.lines import Line2D
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        left, bottom, w, h = box
        defaults = pd.panel.get("fieldConfig", {}).get("defaults", {})
        custom = defaults.get("custom", {})
        unit = defaults.get("unit", "short")
        series = sorted(pd.series, key=lambda s: s.name)
        cols = max(1, int(w / 2.3))
        shown = series if len(series) <= cols * MAX_LEGEND_ROWS else series[: cols * MAX_LEGEND_ROWS - 1]
        legend_rows = math.ceil((len(shown) + (len(shown) < len(series))) / cols)
        legend_h = 0.2 * legend_rows + 0.05
        ax = self._axes(left + 0.62, bottom + legend_h + 0.3, w - 0.72, h - legend_h - 0.35, facecolor=PANEL)
        colours = {s.name: PALETTE[i % len(PALETTE)] for i, s in enumerate(series)}
        stacked = custom.get("stacking", {}).get("mode") == "normal"
        if stacked:
            times, stacks = _aligned(series)
            ax.stackplot([_dt(t) for t in times], stacks, colors=[colours[s.name] for s in series], alpha=0.75, linewidth=0)
        else:
            for s in series:
                x = [_dt(t) for t in s.times]
                ax.plot(x, s.values, color=colours[s.name], linewidth=1.6)
                ax.fill_between(x, s.values, color=colours[s.name], alpha=0.08, linewidth=0)
        ax.set_xlim(_dt(tr.start), _dt(tr.end))
        low = defaults.get("min")
        values = [v for s in series for v in s.values if not math.isnan(v)]
        top = max(values, default=0)
        if stacked and series:
            top = max((sum(col) for col in zip(*_aligned(series)[1], strict=True)), default=top)
        if top <= (low or 0):
            top = (low or 0) + 1
        ax.set_ylim(low if low is not None else min(min(values, default=0), 0), top * 1.12)
        for step in defaults.get("thresholds", {}).get("steps", [])[1:]:
            if custom.get("thresholdsStyle", {}).get("mode", "off") != "off" and step.get("value") is not None \
                    and step["value"] <= top * 1.12:
                ax.axhline(step["value"], color=threshold_color(step["value"], defaults), linestyle="--", linewidth=1.1, alpha=0.9)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, unit)))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, min_n_ticks=3))
        locator = mdates.AutoDateLocator(minticks=3, maxticks=max(4, int(w / 0.9)))
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.DateFormatter(
            "%H:%M:%S" if tr.seconds <= 900 else "%H:%M" if tr.seconds <= 2 * 86400 else "%m-%d %H:%M"))
        ax.tick_params(colors=MUTED, labelsize=8, length=0, pad=3)
        ax.grid(True, color=BORDER, linewidth=0.6)
        for spine in ax.spines.values():
            spine.set_visible(False)
        handles = [Line2D([], [], color=colours[s.name], linewidth=3) for s in shown]
        labels = [_fit(s.name, w / cols - 0.35, 8) for s in shown]
        if len(shown) < len(series):
            handles.append(Line2D([], [], color=PANEL))
            labels.append(f"+{len(series) - len(shown)} more")
        if handles:
            anchor = ((left + 0.05) / self.width, (bottom + legend_h) / self.height)
            self.fig.legend(handles, labels, loc="upper left", bbox_to_anchor=anchor,
                            bbox_transform=self.fig.transFigure, ncol=cols, frameon=False, fontsize=8, labelcolor=TEXT,
                            handlelength=1.0, handletextpad=0.4, columnspacing=1.2, borderaxespad=0, borderpad=0)

    # -- single values ---------------------------------------------------------------------------------
    def stat(self, box: Box, pd: PanelData) -> None:
        left, bottom, w, h = box
        defaults = pd.panel.get("fieldConfig", {}).get("defaults", {})
        items = sorted(pd.series, key=lambda s: s.name) if len(pd.series) > 1 else pd.series
        cols, rows = _tiles(len(items), w, h)
        tw, th = w / cols, h / rows
        for i, s in enumerate(items):
            x = left + (i % cols) * tw
            y = bottom + h - (i // cols + 1) * th
            text, colour = display(s.last, defaults)
            self.fig.patches.append(_rect(self, x + 0.03, y + 0.03, tw - 0.06, th - 0.06, colour, 0.85))
            named = len(items) > 1
            size = _font_for(text, tw - 0.2, min(40.0, (th - (0.3 if named else 0)) * 0.55 * 72))
            self._text(x + tw / 2, y + th / 2 - (0.1 if named else 0), text, color="white", fontsize=size, fontweight="bold",
                       ha="center", va="center")
            if named:
                self._text(x + tw / 2, y + th - 0.2, _fit(s.name, tw - 0.15, 8.5), color="white", fontsize=8.5, ha="center",
                           va="center")

    def bargauge(self, box: Box, pd: PanelData) -> None:
        left, bottom, w, h = box
        defaults = pd.panel.get("fieldConfig", {}).get("defaults", {})
        items = sorted(pd.series, key=lambda s: s.name)
        band = h / max(len(items), 1)
        finite = [s.last for s in items if s.last is not None and math.isfinite(s.last)]
        top = defaults.get("max") or max(finite, default=1) or 1
        value_w = min(2.0, w * 0.3)
        for i, s in enumerate(items):
            y = bottom + h - (i + 1) * band
            text, colour = display(s.last, defaults)
            bar_h = min(0.32, band * 0.45)
            self._text(left + 0.02, y + bar_h + 0.1 + min(0.1, band * 0.1), _fit(s.name, w - 0.1, 8.5), color=TEXT, fontsize=8.5,
                       va="center")
            full = w - value_w - 0.1
            frac = 0.0 if s.last is None or not math.isfinite(s.last) else min(1.0, max(0.0, s.last / top))
            self.fig.patches.append(_rect(self, left + 0.02, y + 0.08, full, bar_h, "#22252b", 1))
            self.fig.patches.append(_rect(self, left + 0.02, y + 0.08, max(full * frac, 0.02), bar_h, colour, 0.9))
            self._text(left + w - 0.05, y + 0.08 + bar_h / 2, text, color=colour, fontsize=_font_for(text, value_w, 13),
                       fontweight="bold", ha="right", va="center")


def _rect(canvas: _Canvas, x: float, y: float, w: float, h: float, colour: str, alpha: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x / canvas.width, y / canvas.height), w / canvas.width, h / canvas.height, transform=canvas.fig.transFigure,
                     facecolor=colour, edgecolor="none", alpha=alpha)


def _tiles(n: int, w: float, h: float) -> tuple[int, int]:
    """Columns and rows for ``n`` value tiles, keeping tiles roughly wider than tall."""
    best = (n, 1)
    for rows in range(1, n + 1):
        cols = math.ceil(n / rows)
        if (w / cols) / (h / rows) >= 1.2:
            return cols, rows
        best = (cols, rows)
    return best


def _font_for(text: str, width_in: float, max_size: float) -> float:
    """A font size at which ``text`` fits ``width_in`` (DejaVu Sans bold ≈ 0.62 em per character)."""
    return max(6.0, min(max_size, width_in * 72 / (max(len(text), 1) * 0.62)))


def _fit(text: str, width_in: float, size: float) -> str:
    """``text`` shortened with … so that it fits ``width_in`` at ``size`` points."""
    limit = max(4, int(width_in * 72 / (size * 0.55)))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _dt(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t)


def _aligned(series: Sequence[Series]) -> tuple[list[float], list[list[float]]]:
    """Series on one common time axis (missing points as 0), for stacking."""
    times = sorted({t for s in series for t in s.times})
    stacks = []
    for s in series:
        by_time = dict(zip(s.times, s.values, strict=True))
        stacks.append([0.0 if math.isnan(v := by_time.get(t, 0.0)) else v for t in times])
    return times, stacks
