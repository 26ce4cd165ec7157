"""Grafana's value display for the units, thresholds and value mappings the dashboards use."""

from __future__ import annotations

import math
from typing import Any

# Grafana's named colours (dark theme) and its classic series palette
COLORS = {"green": "#73BF69", "yellow": "#FADE2A", "orange": "#FF9830", "red": "#F2495C", "blue": "#5794F2",
          "purple": "#B877D9", "text": "#CCCCDC", "dark-red": "#C4162A", "transparent": "#00000000"}
PALETTE = ["#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0", "#508642", "#CCA300",
           "#447EBC", "#C15C17", "#890F02", "#0A437C", "#6D1F62", "#584477"]


def color(name: str) -> str:
    return COLORS.get(name, name)


def _trim(number: float, decimals: int | None) -> str:
    """Fixed ``decimals``, else three significant digits without trailing zeros."""
    if decimals is not None:
        return f"{number:.{decimals}f}"
    if number == 0:
        return "0"
    digits = min(3, max(0, 2 - math.floor(math.log10(abs(number)))))
    text = f"{number:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _scaled(value: float, steps: list[tuple[float, str]], decimals: int | None, sep: str = " ") -> str:
    for size, suffix in reversed(steps):
        if abs(value) >= size:
            return f"{_trim(value / size, decimals)}{sep}{suffix}".rstrip()
    return f"{_trim(value, decimals)}{sep}{steps[0][1]}".rstrip()


def _duration_words(seconds: float) -> str:
    """Grafana's ``dtdurations``: the two largest parts, e.g. "1 day, 3 hours"."""
    sign = "-" if seconds < 0 else ""
    rest = int(abs(seconds))
    parts = []
    for size, word in ((31536000, "year"), (86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        n, rest = divmod(rest, size)
        if n:
            parts.append(f"{n} {word}{'s' if n != 1 else ''}")
    return sign + (", ".join(parts[:2]) if parts else "0 seconds")


def format_value(value: float | None, unit: str, decimals: int | None = None) -> str:
    """``value`` as Grafana shows it for ``unit`` (short, none, percentunit, bytes, s, dtdurations, d)."""
    if value is None or math.isnan(value):
        return "NaN" if value is not None else "No data"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if unit == "percentunit":
        return f"{_trim(value * 100, decimals)}%"
    if unit == "bytes":
        return _scaled(value, [(1, "B"), (1024, "KiB"), (1024**2, "MiB"), (1024**3, "GiB"), (1024**4, "TiB")], decimals)
    if unit == "s":
        if 0 < abs(value) < 1:
            return f"{_trim(value * 1000, decimals)} ms"
        return _scaled(value, [(1, "s"), (60, "min"), (3600, "hour"), (86400, "day"), (604800, "week")], decimals)
    if unit == "dtdurations":
        return _duration_words(value)
    if unit == "d":
        return f"{_trim(value, decimals if decimals is not None else 1)} days"
    if unit == "none":
        return _trim(value, decimals)
    return _scaled(value, [(1, ""), (1e3, "K"), (1e6, "Mil"), (1e9, "Bil")], decimals, sep=" " if abs(value) >= 1e3 else "")


def threshold_color(value: float | None, defaults: dict[str, Any]) -> str:
    """The colour of the threshold step ``value`` falls into (base colour for no value)."""
    steps = defaults.get("thresholds", {}).get("steps") or [{"value": None, "color": "green"}]
    chosen = steps[0]["color"]
    if value is not None and not math.isnan(value):
        for step in steps[1:]:
            if step.get("value") is not None and value >= step["value"]:
                chosen = step["color"]
    return color(chosen)


def mapped(value: float | None, defaults: dict[str, Any]) -> tuple[str, str] | None:
    """(text, colour) of the first value mapping that matches ``value``."""
    if value is None or math.isnan(value):
        return None
    key = str(int(value)) if float(value).is_integer() else str(value)
    for mapping in defaults.get("mappings", []):
        options = mapping.get("options", {})
        result = None
        if mapping.get("type") == "value":
            result = options.get(key)
        elif mapping.get("type") == "range":
            low, high = options.get("from"), options.get("to")
            if (low is None or value >= low) and (high is None or value <= high):
                result = options.get("result", {})
        if result is not None:
            return result.get("text", key), color(result.get("color", "text"))
    return None


def display(value: float | None, defaults: dict[str, Any]) -> tuple[str, str]:
    """(text, colour) of a single value: mapping first, else unit + thresholds."""
    hit = mapped(value, defaults)
    if hit:
        return hit
    decimals = defaults.get("decimals")
    return format_value(value, defaults.get("unit", "short"), int(decimals) if decimals is not None else None), \
        threshold_color(value, defaults)
