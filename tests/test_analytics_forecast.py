"""Month-to-date and end-of-month forecasts: exact on weekly patterns, robust
to outliers in the history, and honest about gaps."""

from __future__ import annotations

import numpy as np
import pytest

from balans_edge.core.analytics.forecast import WEEK_H, hour_of_week, month_forecast

MONDAY = 1_704_067_200  # 2024-01-01 00:00 UTC


def weekly(hours: int, start: int = MONDAY) -> tuple[np.ndarray, np.ndarray]:
    """A pattern that depends only on the hour of the week: value = hour of week / 100."""
    t = start + np.arange(hours, dtype=np.int64) * 3600
    how = hour_of_week(t)
    return how / 100.0, how


def test_hour_of_week_counts_from_monday_midnight_local() -> None:
    t = MONDAY + np.array([0, 3600, 24 * 3600, 6 * 86400 + 23 * 3600])
    assert hour_of_week(t).tolist() == [0, 1, 24, WEEK_H - 1]
    assert hour_of_week(np.array([MONDAY - 3 * 3600]), 3 * 3600).tolist() == [0]  # UTC+3: local Monday 00:00


def test_forecast_continues_the_weekly_pattern_exactly() -> None:
    history, history_how = weekly(4 * WEEK_H, MONDAY - 4 * WEEK_H * 3600)
    month, how = weekly(31 * 24)
    over = 10 * 24
    observed = month.copy()
    observed[over:] = np.nan
    f = month_forecast(observed, how, over, history, history_how)
    assert f.to_date == pytest.approx(month[:over].sum())
    assert f.forecast == pytest.approx(month.sum())
    assert (f.filled_hours, f.baseline_weeks) == (21 * 24, 4)


def test_outliers_in_the_history_do_not_move_the_forecast() -> None:
    history, history_how = weekly(4 * WEEK_H, MONDAY - 4 * WEEK_H * 3600)
    history[:WEEK_H] *= 50  # a burst pipe in the first week
    month, how = weekly(WEEK_H)
    observed = np.full(WEEK_H, np.nan)
    f = month_forecast(observed, how, 0, history, history_how)
    assert f.forecast == pytest.approx(month.sum())  # the median of 4 weeks ignores one bad week


def test_missing_hours_are_filled_from_the_baseline() -> None:
    history, history_how = weekly(2 * WEEK_H, MONDAY - 2 * WEEK_H * 3600)
    month, how = weekly(48)
    observed = month.copy()
    observed[5:9] = np.nan
    f = month_forecast(observed, how, 48, history, history_how)
    assert f.to_date == pytest.approx(month.sum() - month[5:9].sum())
    assert f.forecast == pytest.approx(month.sum())
    assert f.filled_hours == 4


def test_without_history_the_months_own_rate_is_used() -> None:
    month = np.array([1.0, 3.0, np.nan, np.nan])
    f = month_forecast(month, np.arange(4), 2, np.full(0, np.nan), np.zeros(0, np.int64))
    assert (f.to_date, f.forecast, f.baseline_weeks) == (4.0, 8.0, 0)
    empty = month_forecast(np.full(3, np.nan), np.arange(3), 0, np.full(0, np.nan), np.zeros(0, np.int64))
    assert (empty.to_date, empty.forecast) == (0.0, 0.0)
