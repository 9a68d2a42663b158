"""Periods of a query: UTC hours, or days and months of the site's timezone.

A local day or month holds the UTC hours that start inside it (for a timezone
with a half-hour offset a day therefore starts 30 minutes off; see
docs/ingest.md). ``Periods`` gives both what a period is called (its local
start, which may lie before the query's first hour) and the hour edges that
storage sums between, so that the summing can happen where the rows are
(in SQL, off the event loop) and only one number per period comes back.

``MAX_POINTS`` bounds what one request may ask for: the work of a request
grows with its hours, and a request that asks for a century of months must
be refused, not computed while every other client waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.core.times import HOUR, hour_ceil, hour_floor

Step = Literal["hour", "day", "month"]
STEPS: tuple[Step, ...] = ("hour", "day", "month")
MAX_POINTS: dict[str, int] = {"hour": 8784, "day": 3660, "month": 600}
"""Most periods one request may produce at each step: 366 days of hours, 10 years
of days, 50 years of months (the largest of them reads about 440,000 hours)."""


@dataclass(frozen=True, slots=True)
class Periods:
    """Consecutive periods covering the hours [edges[0], edges[-1])."""

    starts: np.ndarray
    """(P,) the unix start of each period: the local midnight of its day or month,
    or its hour (the first one may lie before the first hour asked for)."""
    edges: np.ndarray
    """(P + 1,) hour-aligned: period i holds the hours edges[i] <= t < edges[i + 1]."""

    @property
    def hours(self) -> np.ndarray:
        """(P,) hours in each period."""
        return np.diff(self.edges) // HOUR


def _local_date(t: int, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(t, tz).date()


def _midnight(d: date, tz: ZoneInfo) -> int:
    # Built with fold=0: a midnight skipped by a DST jump maps to the instant the
    # clock jumped, which is when that local day really began.
    return int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp())


def local_day(t: int, tz: ZoneInfo) -> tuple[int, int]:
    """Start of the local day holding ``t`` and of the next one (unix seconds;
    a day of a DST change is 23 or 25 hours long)."""
    d = _local_date(t, tz)
    return _midnight(d, tz), _midnight(d + timedelta(days=1), tz)


def local_starts(t0: int, t1: int, step: Literal["day", "month"], tz: ZoneInfo) -> np.ndarray:
    """Sorted unix starts of the local days or months holding an hour of [t0, t1)
    (hour-aligned): the first one is at or before t0. The Python loop is over
    periods, never over hours."""
    if step not in ("day", "month"):
        raise ValueError(f"unknown step {step!r}")
    n = count(t0, t1, step, tz)
    if n == 0:
        return np.zeros(0, np.int64)
    first = _local_date(t0, tz)
    if step == "month":
        k = first.year * 12 + first.month - 1
        dates = [date((k + i) // 12, (k + i) % 12 + 1, 1) for i in range(n)]
    else:
        dates = [date.fromordinal(first.toordinal() + i) for i in range(n)]
    return np.array([_midnight(d, tz) for d in dates], np.int64)


def count(t0: int, t1: int, step: Step, tz: ZoneInfo) -> int:
    """How many periods the hours of [t0, t1) fall in, without listing them (so a
    request for a million of them is refused at once)."""
    h0, h1 = hour_floor(t0), hour_ceil(t1)
    if h1 <= h0:
        return 0
    if step == "hour":
        return (h1 - h0) // HOUR
    first, last = _local_date(h0, tz), _local_date(h1 - HOUR, tz)
    if step == "day":
        return last.toordinal() - first.toordinal() + 1
    if step == "month":
        return (last.year - first.year) * 12 + last.month - first.month + 1
    raise ValueError(f"unknown step {step!r}")


def periods(t0: int, t1: int, step: Step, tz: ZoneInfo) -> Periods:
    """The periods of the hours of [t0, t1) (widened to whole hours)."""
    h0, h1 = hour_floor(t0), hour_ceil(t1)
    if h1 <= h0:
        return Periods(np.zeros(0, np.int64), np.array([h0], np.int64))
    if step == "hour":
        return Periods(np.arange(h0, h1, HOUR, dtype=np.int64), np.arange(h0, h1 + HOUR, HOUR, dtype=np.int64))
    starts = local_starts(h0, h1, step, tz)
    # An hour belongs to the period its start lies in: to hour-aligned edges by
    # rounding up (a local midnight at :30 holds the hour from :30 + 30 min on).
    edges = np.concatenate([[h0], hour_ceil(starts[1:]), [h1]]).astype(np.int64)
    return Periods(starts, edges)


def period_ends(starts: np.ndarray, step: Step, tz: ZoneInfo) -> np.ndarray:
    """End of each period that starts at ``starts``: the next hour, local midnight
    or first of the month (the whole period, also where a query cuts it short)."""
    if step == "hour":
        return np.asarray(starts, np.int64) + HOUR
    ends = []
    for start in np.asarray(starts, np.int64).tolist():
        d = _local_date(start, tz)
        d = d + timedelta(days=1) if step == "day" else date(d.year + d.month // 12, d.month % 12 + 1, 1)
        ends.append(_midnight(d, tz))
    return np.array(ends, np.int64)
