"""A group's balance per hour, day or month is summed in SQLite (``group_series``),
never hour by hour in Python, and must say what the hourly balance says summed:
hours nobody reported count every installed meter missing, an hour with members but
no input meter has its input missing, hours not over are not counted. Compared on
random stored hours of a street and its house whose meters come and go mid-hour,
in timezones with a DST change and a half-hour offset."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from balans_edge.core import balance_queries as q
from balans_edge.core.balance import BalanceSeries, aggregate
from balans_edge.core.calendar import local_day
from balans_edge.core.model import Group, GroupInput, Meter, Resource
from balans_edge.core.storage.sqlite import SqliteStorage

HOUR, DAY = 3600, 86400
START = 1_711_497_600  # 2024-03-27 00:00 UTC: Berlin moves its clocks on the 31st, a month ends
DAYS = 8
GROUPS = ["S", "H"]


def registry() -> dict[str, list]:
    def meter(meter_id: str, installed: int, removed: int | None = None, group: str | None = None) -> Meter:
        return Meter(meter_id, Resource.WATER, "m3", 0.001, START + installed, group_id=group, removed_time=removed
                     and START + removed)

    return {
        "meters": [meter("IN-S", 0), meter("IN-H", 2 * DAY + 1234), meter("A1", 0, group="H"),
                   meter("A2", DAY + 1800, 5 * DAY + 1200, group="H"), meter("A3", 3 * DAY + 7000, group="H")],
        "groups": [Group("S", Resource.WATER, "m3", (GroupInput("IN-S"),), level="street"),
                   Group("H", Resource.WATER, "m3", (GroupInput("IN-H"),), level="house", parent_id="S")],
    }


def stored_hours(rng: np.random.Generator, group: str) -> BalanceSeries:
    """Some hours of a group as the balance worker might have stored them: many never
    computed, some with nothing counted, some with members but no input meter."""
    t = START + HOUR * np.flatnonzero(rng.random(DAYS * 24) < 0.7).astype(np.int64)
    n = len(t)
    kind = rng.choice(4, size=n, p=[0.05, 0.15, 0.1, 0.7])  # empty, blind, inputs only, both
    members, inputs = (kind == 1) | (kind == 3), (kind == 2) | (kind == 3)

    def counts(on: np.ndarray) -> np.ndarray:
        return np.where(on, rng.integers(0, 3, n), 0)[None, :]

    measured = np.where(members, rng.integers(1, 3, n), 0)[None, :]
    input_measured = np.where(inputs, rng.integers(1, 2, n), 0)[None, :]
    return BalanceSeries([group], t, np.where(inputs, rng.random(n), 0.0)[None, :],
                         np.where(members, rng.random(n), 0.0)[None, :], measured, counts(members), counts(members),
                         input_measured, counts(inputs), counts(inputs))


@pytest.fixture
async def storage(tmp_path: Path) -> SqliteStorage:
    s = SqliteStorage(tmp_path / "balans.db")
    await s.open()
    await s.registry_apply(registry())
    yield s
    await s.close()


@pytest.mark.parametrize("seed", range(4))
async def test_sums_per_period_say_what_the_hours_say(storage: SqliteStorage, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for group in GROUPS:
        await storage.save_balance(stored_hours(rng, group), [])
    tree = await q.Tree.load(storage)
    for _ in range(12):
        tz = ZoneInfo(str(rng.choice(["UTC", "Europe/Berlin", "Asia/Kolkata"])))
        step = str(rng.choice(["hour", "day", "month"]))
        t0 = START - DAY + int(rng.integers(0, (DAYS + 1) * DAY))
        t1 = t0 + int(rng.integers(1, (DAYS + 2) * DAY))
        now = START + int(rng.integers(-DAY, (DAYS + 3) * DAY))
        got = await q.group_series(storage, tree, GROUPS, t0, t1, step, tz, now)
        h0, h1 = q.hour_span(t0, t1)
        want = aggregate(await q.hourly_balance(storage, tree, GROUPS, h0, h1, now), step, tz)
        case = f"{step} {tz} from {t0} to {t1} at {now}"
        assert got.series.t.tolist() == want.t.tolist(), case
        for name in BalanceSeries.COLUMNS:
            assert getattr(got.series, name) == pytest.approx(getattr(want, name), abs=1e-9), f"{name}: {case}"
        assert got.coverage.hours.tolist() == q.coverage(want.t, step, tz, h0, h1, now).hours.tolist()


async def test_missing_hours_are_counted_for_the_meters_installed_then(storage: SqliteStorage) -> None:
    """Nothing stored at all: a day's missing member-hours are those of the meters
    installed in each of its hours, not of today's meters all day long."""
    tree = await q.Tree.load(storage)
    days = await q.group_series(storage, tree, ["H"], START, START + DAYS * DAY, "day", ZoneInfo("UTC"),
                                START + 10 * DAY)
    # A1 every hour; A2 from day 1's first hour (installed 00:30) to day 5's first hour
    # (removed 00:20: counted in it); A3 from day 3's second hour (installed 01:56).
    assert days.series.missing[0].tolist() == [24, 48, 48, 48 + 23, 72, 24 + 1 + 24, 48, 48]
    # IN-H from hour 48 (installed 00:20); before it the members have no input meter: one missing.
    assert days.series.input_missing[0].tolist() == [24] * DAYS
    assert not days.series.input_known()[0].any()


@pytest.mark.parametrize(("zone", "t", "day"), [
    ("Asia/Kolkata", 1_705_276_800, (1_705_257_000, 1_705_343_400)),  # 2024-01-15: midnight at 18:30 UTC
    ("Europe/Berlin", 1_711_846_800, (1_711_839_600, 1_711_922_400)),  # 2024-03-31: 23 hours (DST begins)
    ("Europe/Berlin", 1_729_980_000, (1_729_980_000, 1_730_070_000)),  # 2024-10-27 at its midnight: 25 hours
])
def test_local_day_is_the_calendar_day_of_the_site(zone: str, t: int, day: tuple[int, int]) -> None:
    start, end = local_day(t, ZoneInfo(zone))
    assert (start, end) == day and start <= t < end
