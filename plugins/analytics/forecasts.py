"""Forecast questions answered from storage: a meter's month, a group's month,
and the average of a group's member meters to compare a meter with."""

from __future__ import annotations

import asyncio
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.core.analytics.data import local_calendar
from balans_edge.core.analytics.forecast import WEEK_H, MonthForecast, month_forecast
from balans_edge.core.balance_queries import Tree, hourly_balance, month_bounds
from balans_edge.core.model import Group, Meter
from balans_edge.core.storage.views import Queries
from balans_edge.core.times import HOUR, hour_ceil, hour_floor

HISTORY_WEEKS = 4


def _span(month: str, tz: ZoneInfo, now: float) -> tuple[int, int, int, int]:
    """(history start, month start, month end, hours of the month that are over)."""
    t0, t1 = month_bounds(month, tz)
    t0, t1 = hour_floor(t0), hour_ceil(t1)
    last = hour_floor(int(now))
    over = max(0, min(t1, last) - t0) // HOUR
    return t0 - HISTORY_WEEKS * WEEK_H * HOUR, t0, t1, over


def _how(t: np.ndarray, tz: ZoneInfo) -> np.ndarray:
    hour, weekday = local_calendar(t, tz)
    return weekday * 24 + hour


def _forecast(series: np.ndarray, h0: int, t0: int, t1: int, over: int, tz: ZoneInfo) -> MonthForecast:
    """Forecast from one hourly series that starts at ``h0`` (history, then the month)."""
    t = np.arange(h0, t1, HOUR, dtype=np.int64)
    how = _how(t, tz)
    split = (t0 - h0) // HOUR
    month = series[split:].copy()
    month[over:] = np.nan  # hours not over yet are forecast, never taken as measured
    return month_forecast(month, how[split:], over, series[:split], how[:split])


async def meters(queries: Queries, meter_list: list[Meter], month: str, tz: ZoneInfo,
                 now: float) -> list[MonthForecast]:
    h0, t0, t1, over = _span(month, tz, now)
    keys = await queries.meter_keys()
    values, _ = await queries.consumption_matrix([keys[m.meter_id] for m in meter_list], h0, t1)
    # A forecast per member of a large group: numpy work for a worker thread, not the event loop.
    return await asyncio.to_thread(lambda: [_forecast(row, h0, t0, t1, over, tz) for row in values])


async def meter(queries: Queries, m: Meter, month: str, tz: ZoneInfo, now: float) -> MonthForecast:
    return (await meters(queries, [m], month, tz, now))[0]


async def group(queries: Queries, g: Group, month: str, tz: ZoneInfo, now: float) -> MonthForecast:
    """The group's input: what flows into it. An hour whose input is not known (a
    missing input meter, an hour nobody reported, one before the input meter was
    installed) is missing, as a meter's missing hour is: a 0 there would drag the
    baseline down to nothing and the forecast to the month to date."""
    h0, t0, t1, over = _span(month, tz, now)
    tree = await Tree.current(queries)
    series = await hourly_balance(queries, tree, [g.group_id], h0, t1, int(now))
    values = np.where(series.input_known()[0], series.input[0], np.nan)
    return _forecast(values, h0, t0, t1, over, tz)


async def group_average(queries: Queries, group_id: str | None, month: str, tz: ZoneInfo,
                        now: float) -> tuple[float, int] | None:
    """Mean forecast of a group's member meters, and how many there are."""
    if group_id is None:
        return None
    members = [m for m in await queries.registry_list("meters") if m.group_id == group_id]
    if not members:
        return None
    found = await meters(queries, members, month, tz, now)
    return float(np.mean([f.forecast for f in found])), len(found)


def _pct(value: float, reference: float | None) -> float | None:
    return None if not reference else round(100.0 * (value - reference) / reference, 1)


def report(head: dict[str, Any], f: MonthForecast, norm: float | None,
           peers: tuple[float, int] | None) -> dict[str, Any]:
    """JSON of a forecast, with its comparison to the group's average and the norm."""
    average = None if peers is None else peers[0]
    return {
        **head,
        "to_date": round(f.to_date, 6),
        "forecast": round(f.forecast, 6),
        "filled_hours": f.filled_hours,
        "baseline_weeks": f.baseline_weeks,
        "group_average": None if average is None else round(average, 6),
        "group_members": None if peers is None else peers[1],
        "vs_group_pct": None if average is None else _pct(f.forecast, average),
        "norm": norm,
        "vs_norm_pct": _pct(f.forecast, norm),
    }
