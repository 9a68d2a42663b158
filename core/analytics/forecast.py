"""Month-to-date and end-of-month forecasts of consumption, for people.

A consumer or a building manager asks: how much have we used this month, how
much will it be by its end, and is that a lot? The forecast is what was
measured so far plus, for every hour still to come (and every hour whose
value is missing), the median of the same hour of the week over the weeks
before: robust to a holiday or a burst pipe in the history, and following the
weekly rhythm of a household.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from balans_edge.core.times import hour_of_day, weekday

WEEK_H = 7 * 24


@dataclass(frozen=True, slots=True)
class MonthForecast:
    """Month to date and the forecast to the month's end, in the series' unit."""

    to_date: float
    """Known consumption of the month's hours that are over."""
    forecast: float
    """Expected total of the whole month."""
    filled_hours: int
    """Hours of the month estimated from the baseline (still to come, or missing)."""
    baseline_weeks: int
    """Weeks of history the hour-of-week baseline stands on (0: no history, forecast = to date)."""


def hour_of_week(t: np.ndarray, offset_s: np.ndarray | int = 0) -> np.ndarray:
    """Local hour of the week (Monday 00:00 = 0) of UTC hour starts."""
    local = np.asarray(t) + offset_s
    return weekday(local) * 24 + hour_of_day(local)


def baseline(history: np.ndarray, how: np.ndarray) -> tuple[np.ndarray, int]:
    """(168,) median per hour of the week of the history's known values (NaN
    where never seen), and how many weeks of known values that is."""
    out = np.full(WEEK_H, np.nan)
    known = ~np.isnan(history)
    if known.any():
        order = np.argsort(how[known], kind="stable")
        keys, values = how[known][order], history[known][order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        for a, b in zip(starts, [*starts[1:], len(keys)], strict=True):  # 168 groups at most
            out[keys[a]] = np.median(values[a:b])
    return out, int(known.sum()) // WEEK_H


def month_forecast(values: np.ndarray, how: np.ndarray, over: int, history: np.ndarray,
                   history_how: np.ndarray) -> MonthForecast:
    """Forecast of a month from its hourly ``values`` (NaN: missing or not over
    yet; the first ``over`` hours are over), with the hour-of-week ``how`` of each,
    and the ``history`` before the month for the baseline. An hour of the week
    never seen in the history takes the history's median hour, and without any
    history the month's own mean hour so far."""
    base, weeks = baseline(history, history_how)
    past = values[:over]
    if np.any(~np.isnan(history)):
        fallback = float(np.nanmedian(history))
    else:
        fallback = float(np.nanmean(past)) if np.any(~np.isnan(past)) else 0.0
    expected = np.where(np.isnan(base[how]), fallback, base[how])
    gaps = np.isnan(past)
    to_date = float(np.nansum(past))
    filled = float(expected[:over][gaps].sum()) + float(expected[over:].sum())
    return MonthForecast(to_date, to_date + filled, int(gaps.sum()) + len(values) - over, weeks)
