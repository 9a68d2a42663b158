"""Hourly consumption with qualities, day and month totals, and the recomputing worker."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from balans_edge.core.bus import EventBus, IntervalsUpdated
from balans_edge.core.ingest import Ingest, IngestSettings
from balans_edge.core.intervals import (
    CODE,
    IntervalSettings,
    IntervalWorker,
    aggregate,
    ceil_hour,
    floor_hour,
    hourly,
    to_points,
)
from balans_edge.core.model import IntervalValue, Meter, Quality, RadioModule, RawReading, ReadingFlag, Resource, Status
from balans_edge.core.storage import ReadingRows
from balans_edge.core.storage.sqlite import SqliteStorage

H = 3600
M = 60
T0 = 1_705_276_800  # 2024-01-15 00:00:00 UTC
MEASURED, ESTIMATED, MISSING = CODE[Quality.MEASURED], CODE[Quality.ESTIMATED], CODE[Quality.MISSING]
SETTINGS = IntervalSettings(tolerance_s=300, max_gap_s=6 * H)
EPOCH = int(ReadingFlag.EPOCH_START)
MOSCOW = ZoneInfo("Europe/Moscow")


def rows(*readings: tuple) -> ReadingRows:
    """ReadingRows of (ts, pulses) or (ts, pulses, flags)."""
    ts = np.array([x[0] for x in readings], dtype=np.int64)
    pulses = np.array([x[1] for x in readings], dtype=np.int64)
    flags = np.array([x[2] if len(x) > 2 else 0 for x in readings], dtype=np.int64)
    zero = np.zeros(len(readings), dtype=np.int64)
    return ReadingRows(zero, ts, pulses, pulses, zero, flags)


def run(rr: ReadingRows, t0: int, t1: int, weight: float = 1.0, settings: IntervalSettings = SETTINGS):
    """hourly() as a list of (t, value or None, quality code)."""
    t, v, q = hourly(rr, weight, t0, t1, settings)
    assert t.dtype == np.int64 and q.dtype == np.int8
    return [
        (int(a), None if np.isnan(b) else float(b), int(c))
        for a, b, c in zip(t.tolist(), v.tolist(), q.tolist(), strict=True)
    ]


def approx(expected: list[tuple[int, float | None, int]]) -> list[tuple[int, object, int]]:
    return [(t, None if v is None else pytest.approx(v, abs=1e-9), q) for t, v, q in expected]


# hourly() -------------------------------------------------------------------


def test_hour_helpers() -> None:
    assert floor_hour(T0 + 1) == T0 and floor_hour(T0) == T0
    assert ceil_hour(T0 + 1) == T0 + H and ceil_hour(T0) == T0


def test_readings_every_15_minutes_are_measured() -> None:
    # Pulses per quarter: 10, 20, 30, 40 | 5, 5, 5, 5 | 0, 0, 0, 100
    steps = [10, 20, 30, 40, 5, 5, 5, 5, 0, 0, 0, 100]
    pulses = np.concatenate([[1000], 1000 + np.cumsum(steps)])
    rr = rows(*((T0 + i * 15 * M, int(p)) for i, p in enumerate(pulses)))
    assert run(rr, T0, T0 + 3 * H, weight=0.01) == approx(
        [(T0, 1.0, MEASURED), (T0 + H, 0.2, MEASURED), (T0 + 2 * H, 1.0, MEASURED)]
    )


def test_reading_within_tolerance_is_measured_and_interpolated() -> None:
    # Readings 4 minutes off the hour: within tolerance (300 s), the value at
    # the boundary is still interpolated between the readings around it.
    rr = rows((T0 - 4 * M, 0), (T0 + 4 * M, 80), (T0 + H - 4 * M, 560), (T0 + H + 4 * M, 640))
    assert run(rr, T0, T0 + H) == approx([(T0, 600.0 - 40.0, MEASURED)])
    # 6 minutes off: estimated.
    rr = rows((T0 - 6 * M, 0), (T0 + 6 * M, 120), (T0 + H - 6 * M, 600), (T0 + H + 6 * M, 720))
    assert run(rr, T0, T0 + H) == approx([(T0, 600.0, ESTIMATED)])


def test_three_hour_gap_is_estimated_with_linear_share() -> None:
    rr = rows(
        (T0, 0),
        (T0 + 30 * M, 50),
        (T0 + H, 100),
        # 3 hours without readings: 600 pulses shared linearly
        (T0 + 4 * H, 700),
        (T0 + 4 * H + 30 * M, 725),
        (T0 + 5 * H, 750),
    )
    assert run(rr, T0, T0 + 5 * H, weight=0.01) == approx(
        [
            (T0, 1.0, MEASURED),
            (T0 + H, 2.0, ESTIMATED),
            (T0 + 2 * H, 2.0, ESTIMATED),
            (T0 + 3 * H, 2.0, ESTIMATED),
            (T0 + 4 * H, 0.5, MEASURED),
        ]
    )


def test_gap_off_the_hour_is_shared_by_time() -> None:
    # 300 pulses between 01:20 and 03:20; boundaries at 40 and 100 minutes into the gap.
    rr = rows((T0 + H - 20 * M, 0), (T0 + H + 20 * M, 100), (T0 + 3 * H + 20 * M, 400), (T0 + 4 * H, 460))
    assert run(rr, T0 + H, T0 + 4 * H) == approx(
        # boundary values 50 (between 00:40 and 01:20), 200, 350 and 460
        [(T0 + H, 150.0, ESTIMATED), (T0 + 2 * H, 150.0, ESTIMATED), (T0 + 3 * H, 110.0, ESTIMATED)]
    )


def test_gap_beyond_max_gap_is_missing() -> None:
    rr = rows((T0, 0), (T0 + H, 100), (T0 + 8 * H, 800), (T0 + 9 * H, 900))
    assert run(rr, T0, T0 + 9 * H) == (
        [(T0, 100.0, MEASURED)] + [(T0 + h * H, None, MISSING) for h in range(1, 8)] + [(T0 + 8 * H, 100.0, MEASURED)]
    )
    # Exactly max_gap_s is still estimated (an hour takes its worse boundary).
    rr = rows((T0, 0), (T0 + 6 * H, 600))
    assert run(rr, T0, T0 + 6 * H) == approx([(T0 + h * H, 100.0, ESTIMATED) for h in range(6)])
    assert run(rr, T0, T0 + 6 * H, settings=IntervalSettings(max_gap_s=6 * H - 1))[1] == (T0 + H, None, MISSING)


def test_reset_gap_is_missing() -> None:
    rr = rows((T0, 0), (T0 + H, 100), (T0 + 3 * H, 130, EPOCH), (T0 + 4 * H, 230))
    assert run(rr, T0, T0 + 4 * H) == [
        (T0, 100.0, MEASURED),
        (T0 + H, None, MISSING),
        (T0 + 2 * H, None, MISSING),
        (T0 + 3 * H, 100.0, MEASURED),
    ]


def test_reset_off_the_hour_makes_every_overlapping_hour_missing() -> None:
    rr = rows(*((T0 + i * 15 * M, 10 * i) for i in range(6)), (T0 + 2 * H + 30 * M, 5, EPOCH), (T0 + 4 * H, 50))
    # Readings up to 01:15, the restart reported at 02:30: 01:00-02:00 and
    # 02:00-03:00 overlap the unknown stretch.
    assert run(rr, T0, T0 + 4 * H) == approx(
        [(T0, 40.0, MEASURED), (T0 + H, None, MISSING), (T0 + 2 * H, None, MISSING), (T0 + 3 * H, 30.0, ESTIMATED)]
    )


def test_no_reading_on_one_side_is_missing() -> None:
    rr = rows((T0 + H, 0), (T0 + 2 * H, 100), (T0 + 3 * H, 250))
    assert run(rr, T0, T0 + 5 * H) == [
        (T0, None, MISSING),
        (T0 + H, 100.0, MEASURED),
        (T0 + 2 * H, 150.0, MEASURED),
        (T0 + 3 * H, None, MISSING),
        (T0 + 4 * H, None, MISSING),
    ]
    # A reading just before the last boundary but none after it: no extrapolation.
    rr = rows((T0, 0), (T0 + H - 2 * M, 100))
    assert run(rr, T0, T0 + H) == [(T0, None, MISSING)]


def test_no_readings_at_all() -> None:
    assert run(rows(), T0, T0 + 2 * H) == [(T0, None, MISSING), (T0 + H, None, MISSING)]
    t, v, q = hourly(rows((T0, 1)), 1.0, T0, T0, SETTINGS)
    assert len(t) == len(v) == len(q) == 0


# to_points() and aggregate() --------------------------------------------------


def test_to_points_fills_hours_never_computed() -> None:
    stored = [(T0 + H, 0.5, MEASURED), (T0 + 3 * H, None, MISSING)]
    assert to_points(T0 + 10 * M, T0 + 4 * H, stored) == [
        IntervalValue(T0, None, Quality.MISSING),
        IntervalValue(T0 + H, 0.5, Quality.MEASURED),
        IntervalValue(T0 + 2 * H, None, Quality.MISSING),
        IntervalValue(T0 + 3 * H, None, Quality.MISSING),
    ]


def test_days_in_moscow() -> None:
    # 2024-01-15 00:00 in Moscow (UTC+3) is 2024-01-14 21:00 UTC.
    day1 = int(datetime(2024, 1, 15, tzinfo=MOSCOW).timestamp())
    assert day1 == T0 - 3 * H
    points = [IntervalValue(day1 + h * H, 1.0, Quality.MEASURED) for h in range(48)]
    points[5] = IntervalValue(day1 + 5 * H, 0.5, Quality.ESTIMATED)
    points[30] = IntervalValue(day1 + 30 * H, None, Quality.MISSING)
    assert aggregate(points, "day", MOSCOW) == [
        IntervalValue(day1, 23.5, Quality.ESTIMATED),
        IntervalValue(day1 + 24 * H, 23.0, Quality.MISSING),  # known volume, flagged incomplete
    ]


def test_utc_day_splits_into_two_moscow_days() -> None:
    points = [IntervalValue(T0 + h * H, float(h), Quality.MEASURED) for h in range(24)]
    assert aggregate(points, "day", MOSCOW) == [
        IntervalValue(T0 - 3 * H, float(sum(range(21))), Quality.MEASURED),
        IntervalValue(T0 + 21 * H, 21.0 + 22.0 + 23.0, Quality.MEASURED),
    ]


def test_months_in_moscow() -> None:
    feb = int(datetime(2024, 2, 1, tzinfo=MOSCOW).timestamp())
    jan = int(datetime(2024, 1, 1, tzinfo=MOSCOW).timestamp())
    assert feb == int(datetime(2024, 1, 31, 21, tzinfo=UTC).timestamp())
    points = [IntervalValue(feb - 3 * H + h * H, 2.0, Quality.MEASURED) for h in range(6)]
    points[4] = IntervalValue(feb + H, 2.0, Quality.ESTIMATED)
    assert aggregate(points, "month", MOSCOW) == [
        IntervalValue(jan, 6.0, Quality.MEASURED),
        IntervalValue(feb, 6.0, Quality.ESTIMATED),
    ]


def test_day_with_nothing_known() -> None:
    points = to_points(T0 - 3 * H, T0 + 21 * H, [])
    assert aggregate(points, "day", MOSCOW) == [IntervalValue(T0 - 3 * H, None, Quality.MISSING)]


def test_hour_step_returns_the_points() -> None:
    points = [IntervalValue(T0, 1.0, Quality.MEASURED)]
    assert aggregate(points, "hour", MOSCOW) is points


def test_day_of_a_dst_change_has_23_hours() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = int(datetime(2024, 3, 31, tzinfo=berlin).timestamp())  # 2024-03-30 23:00 UTC
    end = int(datetime(2024, 4, 1, tzinfo=berlin).timestamp())
    assert end - start == 23 * H
    points = [IntervalValue(start - H + h * H, 1.0, Quality.MEASURED) for h in range(25)]
    assert aggregate(points, "day", berlin) == [
        IntervalValue(start - 24 * H, 1.0, Quality.MEASURED),
        IntervalValue(start, 23.0, Quality.MEASURED),
        IntervalValue(end, 1.0, Quality.MEASURED),
    ]


# IntervalWorker -------------------------------------------------------------


@pytest.fixture
async def storage(tmp_path: Path):
    s = SqliteStorage(tmp_path / "edge.db")
    await s.open()
    await s.registry_apply(
        {
            "modules": [RadioModule(1001, channels=0b011)],
            "meters": [
                Meter("W1", Resource.WATER, "m3", 0.01, T0 - 86400, module_id=1001, channel=1),
                Meter("E1", Resource.ELECTRICITY, "kWh", 0.5, T0 - 86400, module_id=1001, channel=2),
            ],
        }
    )
    yield s
    await s.close()


def reading(ts: int, counter: int, channel: int = 1, status: int = 0) -> RawReading:
    return RawReading(1001, channel, ts, counter, status)


async def test_worker_recomputes_when_late_data_arrives(storage: SqliteStorage) -> None:
    bus = EventBus()
    updates = bus.subscribe(IntervalsUpdated)
    ingest = Ingest(storage, IngestSettings(), clock=lambda: T0 + 86400)
    worker = IntervalWorker(storage, bus=bus)
    keys = await storage.meter_keys()
    w1 = keys["W1"]

    await ingest.ingest([reading(T0, 0), reading(T0 + H, 100), reading(T0 + 4 * H, 400), reading(T0 + 5 * H, 500)])
    assert await worker.process() == 1
    assert await storage.hourly(w1, T0, T0 + 5 * H) == approx(
        [
            (T0, 1.0, MEASURED),
            (T0 + H, 1.0, ESTIMATED),
            (T0 + 2 * H, 1.0, ESTIMATED),
            (T0 + 3 * H, 1.0, ESTIMATED),
            (T0 + 4 * H, 1.0, MEASURED),
        ]
    )
    assert updates.queue.get_nowait() == IntervalsUpdated(meters=(w1,), t_min=T0, t_max=T0 + 5 * H)
    assert await storage.take_dirty() == []

    # The module's buffered readings arrive late: estimated hours become measured.
    await ingest.ingest([reading(T0 + 3 * H + 2 * M, 390), reading(T0 + 2 * H, 120)])
    assert await worker.process() == 1
    got = await storage.hourly(w1, T0, T0 + 5 * H)
    assert got == approx(
        [
            (T0, 1.0, MEASURED),
            (T0 + H, 0.2, MEASURED),
            # 03:02 is within tolerance of 03:00, where the register is 120 + 270 * 60 / 62
            (T0 + 2 * H, (120 + 270 * 60 / 62 - 120) * 0.01, MEASURED),
            (T0 + 3 * H, (400 - 120 - 270 * 60 / 62) * 0.01, MEASURED),
            (T0 + 4 * H, 1.0, MEASURED),
        ]
    )
    assert sum(v for _, v, _ in got) == pytest.approx(5.0)
    # Only the hours between the readings around the late ones were recomputed.
    assert worker.recomputed_hours == 5 + 3
    assert await worker.process() == 0


async def test_worker_weights_and_missing_hours_over_sqlite(storage: SqliteStorage) -> None:
    ingest = Ingest(storage, IngestSettings(), clock=lambda: T0 + 86400)
    worker = IntervalWorker(storage)
    keys = await storage.meter_keys()
    reset = int(Status.COUNTER_RESET)
    await ingest.ingest(
        [reading(T0 + i * 15 * M, 4 * i, channel=2) for i in range(9)]
        + [reading(T0 + 3 * H, 2, channel=2, status=reset), reading(T0 + 4 * H, 10, channel=2)]
    )
    await worker.process()
    assert await storage.hourly(keys["E1"], T0, T0 + 4 * H) == [
        (T0, 8.0, MEASURED),  # 16 pulses x 0.5 kWh
        (T0 + H, 8.0, MEASURED),
        (T0 + 2 * H, None, MISSING),  # restart between 02:00 and 03:00
        (T0 + 3 * H, 4.0, MEASURED),
    ]
    assert await storage.hourly(keys["W1"], T0, T0 + 4 * H) == []


async def test_a_pulse_weight_change_keeps_past_hours_and_values_new_ones(storage: SqliteStorage) -> None:
    ingest = Ingest(storage, IngestSettings(registry_check_s=0), clock=lambda: T0 + 86400)
    worker = IntervalWorker(storage)
    w1 = (await storage.meter_keys())["W1"]
    await ingest.ingest([reading(T0 + i * H, 100 * i) for i in range(4)])
    await worker.process()
    assert [v for _, v, _ in await storage.hourly(w1, T0, T0 + 3 * H)] == pytest.approx([1.0, 1.0, 1.0])

    meter = await storage.registry_get("meters", "W1")
    await storage.registry_apply({"meters": [dataclasses.replace(meter, pulse_weight=0.001)]},
                                 effective_from={"W1": T0 + 3 * H + 1})
    assert await worker.process() == 0  # nothing stored changes
    await ingest.ingest([reading(T0 + i * H, 100 * i) for i in range(4, 6)])
    await worker.process()
    # Hours before the change keep 0.01 m3 per pulse; the new hours count 100 pulses x 0.001.
    assert [v for _, v, _ in await storage.hourly(w1, T0, T0 + 5 * H)] == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1])


async def test_worker_runs_on_readings_committed(storage: SqliteStorage) -> None:
    bus = EventBus()
    updates = bus.subscribe(IntervalsUpdated)
    ingest = Ingest(storage, IngestSettings(), bus=bus, clock=lambda: T0 + 86400)
    worker = IntervalWorker(storage, IntervalSettings(debounce_s=0.05), bus=bus)
    await worker.start()
    try:
        await ingest.ingest([reading(T0, 0), reading(T0 + H, 30)])
        event = await asyncio.wait_for(updates.get(), timeout=10)
        assert event.t_min == T0
    finally:
        await worker.stop()
    assert await storage.hourly((await storage.meter_keys())["W1"], T0, T0 + H) == [(T0, pytest.approx(0.3), MEASURED)]
