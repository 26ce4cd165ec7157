"""restic's ``forget`` policy (keep last/hourly/daily/weekly/monthly/yearly/within) for the native b2/s3 targets.

Same semantics as ``restic forget``: snapshots are walked newest first; each ``keep-X n`` keeps the newest
snapshot of each of the last ``n`` distinct periods that have snapshots; ``within`` keeps everything newer
than the newest snapshot minus the duration. No policy at all keeps everything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from mailsrv.config import KeepPolicy

T = TypeVar("T")
_WITHIN = re.compile(r"(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?")

_BUCKETS: list[tuple[str, Callable[[datetime, int], object]]] = [
    ("last", lambda t, i: i),
    ("hourly", lambda t, i: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t, i: (t.year, t.month, t.day)),
    ("weekly", lambda t, i: t.isocalendar()[:2]),
    ("monthly", lambda t, i: (t.year, t.month)),
    ("yearly", lambda t, i: t.year),
]


def parse_within(text: str) -> tuple[int, int, int, int]:
    """``1y5m7d2h`` → (years, months, days, hours); raises ValueError for anything else."""
    m = _WITHIN.fullmatch(text.strip())
    if not text.strip() or not m or not any(m.groups()):
        raise ValueError(f"invalid duration {text!r} (expected e.g. 30d, 6m, 1y5m7d2h)")
    y, mo, d, h = (int(g or 0) for g in m.groups())
    return y, mo, d, h


def _subtract(t: datetime, y: int, mo: int, d: int, h: int) -> datetime:
    month_index = t.year * 12 + (t.month - 1) - (y * 12 + mo)
    year, month = divmod(month_index, 12)
    day = min(t.day, [31, 29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28, 31, 30, 31, 30,
                      31, 31, 30, 31, 30, 31][month])
    return t.replace(year=year, month=month + 1, day=day) - timedelta(days=d, hours=h)


def is_empty(keep: KeepPolicy) -> bool:
    return not keep.within and not any(getattr(keep, name, None) for name, _ in _BUCKETS)


def apply_policy(items: Sequence[T], time_of: Callable[[T], datetime], keep: KeepPolicy) -> tuple[list[T], list[T]]:
    """Split ``items`` into (keep, remove) by ``keep``; both lists newest first."""
    ordered = sorted(items, key=time_of, reverse=True)
    if is_empty(keep):
        return ordered, []
    counts = {name: int(getattr(keep, name, None) or 0) for name, _ in _BUCKETS}
    last_seen: dict[str, object] = {}
    cutoff = None
    if keep.within and ordered:
        cutoff = _subtract(time_of(ordered[0]).astimezone(), *parse_within(keep.within))
    kept: list[T] = []
    removed: list[T] = []
    for i, item in enumerate(ordered):
        t = time_of(item).astimezone()
        keep_it = cutoff is not None and t > cutoff
        for name, bucket in _BUCKETS:
            if counts[name] <= 0:
                continue
            value = bucket(t, i)
            if last_seen.get(name, object()) != value:
                last_seen[name] = value
                counts[name] -= 1
                keep_it = True
        (kept if keep_it else removed).append(item)
    return kept, removed
