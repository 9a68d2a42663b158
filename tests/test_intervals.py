"""Hourly consumption with qualities, day and month totals, and the recomputing worker."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balans_edge.core.bus import EventBus, IntervalsUpdated
from balans_edge.core.ingest import Ingest, IngestSettings
from balans_edge.core.intervals import (
    IntervalSettings,
    IntervalWorker,
    consumption,
    hourly,
)
from balans_edge.core.model import IntervalValue, Meter, Quality, RadioModule, RawReading, ReadingFlag, Resource, Status
from balans_edge.core.storage import ReadingRows
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.core.times import hour_ceil, hour_floor

H = 3600
M = 60
T0 = 1_705_276_800  # 2024-01-15 00:00:00 UTC
MEASURED, ESTIMATED, MISSING = Quality.MEASURED, Quality.ESTIMATED, Quality.MISSING
SETTINGS = IntervalSettings(tolerance_s=300, max_gap_s=6 * H)
EPOCH = int(ReadingFlag.EPOCH_START)
MOSCOW = ZoneInfo("Europe/Moscow")
UTC_ZONE = ZoneInfo("UTC")


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
    assert hour_floor(T0 + 1) == T0 and hour_floor(T0) == T0
    assert hour_ceil(T0 + 1) == T0 + H and hour_ceil(T0) == T0


def test_quality_codes_are_the_stored_integers_worst_largest() -> None:
    """The codes are stored in consumption_hourly and exported as quality_code:
    they never change. The quality of a span is the max of its hours'."""
    assert [(q.label, int(q)) for q in Quality] == [("measured", 0), ("estimated", 1), ("missing", 2), ("absent", 3)]
    assert max(Quality.MEASURED, Quality.MISSING) is Quality.MISSING
    assert Quality(np.int8(1)) is Quality.ESTIMATED


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


# consumption(): hours summed into local days and months by storage ------------


async def stored_consumption(storage: SqliteStorage, hours: list[tuple[int, float | None, int]], t0: int, t1: int,
                             step: str, tz: ZoneInfo = UTC_ZONE) -> list[IntervalValue]:
    """W1's consumption per ``step`` after storing its hourly rows ``hours`` (t, value, quality code)."""
    key = (await storage.meter_keys())["W1"]
    await storage.save_intervals([(key, t, v, q) for t, v, q in hours], [])
    return await consumption(storage, key, t0, t1, step, tz)


def as_rows(points: list[IntervalValue]) -> list[tuple[int, float | None, int]]:
    return [(p.t, p.value, p.quality) for p in points]


async def test_hours_never_computed_are_missing(storage: SqliteStorage) -> None:
    stored = [(T0 + H, 0.5, MEASURED), (T0 + 3 * H, None, MISSING)]
    assert await stored_consumption(storage, stored, T0 + 10 * M, T0 + 4 * H, "hour") == [
        IntervalValue(T0, None, Quality.MISSING),
        IntervalValue(T0 + H, 0.5, Quality.MEASURED),
        IntervalValue(T0 + 2 * H, None, Quality.MISSING),
        IntervalValue(T0 + 3 * H, None, Quality.MISSING),
    ]


async def test_days_in_moscow(storage: SqliteStorage) -> None:
    # 2024-01-15 00:00 in Moscow (UTC+3) is 2024-01-14 21:00 UTC.
    day1 = int(datetime(2024, 1, 15, tzinfo=MOSCOW).timestamp())
    assert day1 == T0 - 3 * H
    points = [IntervalValue(day1 + h * H, 1.0, Quality.MEASURED) for h in range(48)]
    points[5] = IntervalValue(day1 + 5 * H, 0.5, Quality.ESTIMATED)
    points[30] = IntervalValue(day1 + 30 * H, None, Quality.MISSING)
    assert await stored_consumption(storage, as_rows(points), day1, day1 + 48 * H, "day", MOSCOW) == [
        IntervalValue(day1, 23.5, Quality.ESTIMATED),
        IntervalValue(day1 + 24 * H, 23.0, Quality.MISSING),  # known volume, flagged incomplete
    ]


async def test_utc_day_splits_into_two_moscow_days(storage: SqliteStorage) -> None:
    points = [IntervalValue(T0 + h * H, float(h), Quality.MEASURED) for h in range(24)]
    assert await stored_consumption(storage, as_rows(points), T0, T0 + 24 * H, "day", MOSCOW) == [
        IntervalValue(T0 - 3 * H, float(sum(range(21))), Quality.MEASURED),
        IntervalValue(T0 + 21 * H, 21.0 + 22.0 + 23.0, Quality.MEASURED),
    ]


async def test_months_in_moscow(storage: SqliteStorage) -> None:
    feb = int(datetime(2024, 2, 1, tzinfo=MOSCOW).timestamp())
    jan = int(datetime(2024, 1, 1, tzinfo=MOSCOW).timestamp())
    assert feb == int(datetime(2024, 1, 31, 21, tzinfo=UTC).timestamp())
    points = [IntervalValue(feb - 3 * H + h * H, 2.0, Quality.MEASURED) for h in range(6)]
    points[4] = IntervalValue(feb + H, 2.0, Quality.ESTIMATED)
    assert await stored_consumption(storage, as_rows(points), feb - 3 * H, feb + 3 * H, "month", MOSCOW) == [
        IntervalValue(jan, 6.0, Quality.MEASURED),
        IntervalValue(feb, 6.0, Quality.ESTIMATED),
    ]


async def test_day_with_nothing_known(storage: SqliteStorage) -> None:
    assert await stored_consumption(storage, [], T0 - 3 * H, T0 + 21 * H, "day", MOSCOW) == [
        IntervalValue(T0 - 3 * H, None, Quality.MISSING)]


async def test_a_day_with_hours_never_computed_is_missing_with_what_is_known(storage: SqliteStorage) -> None:
    stored = [(T0 + h * H, 1.0, MEASURED) for h in range(20)]
    assert await stored_consumption(storage, stored, T0, T0 + 48 * H, "day") == [
        IntervalValue(T0, 20.0, Quality.MISSING), IntervalValue(T0 + 24 * H, None, Quality.MISSING)]


async def test_day_of_a_dst_change_has_23_hours(storage: SqliteStorage) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = int(datetime(2024, 3, 31, tzinfo=berlin).timestamp())  # 2024-03-30 23:00 UTC
    end = int(datetime(2024, 4, 1, tzinfo=berlin).timestamp())
    assert end - start == 23 * H
    points = [IntervalValue(start - H + h * H, 1.0, Quality.MEASURED) for h in range(25)]
    assert await stored_consumption(storage, as_rows(points), start - H, start + 24 * H, "day", berlin) == [
        IntervalValue(start - 24 * H, 1.0, Quality.MEASURED),
        IntervalValue(start, 23.0, Quality.MEASURED),
        IntervalValue(end, 1.0, Quality.MEASURED),
    ]


def reference(t0: int, t1: int, stored: list[tuple[int, float | None, int]], step: str,
              tz: ZoneInfo) -> list[tuple[int, float | None, int]]:
    """Hour by hour in plain Python, the way the API once computed it on the event
    loop: every hour of [t0, t1), missing where never computed, summed into the
    local period its start lies in."""
    by_t = {t: (v, q) for t, v, q in stored}
    buckets: dict[int, list[tuple[float | None, int]]] = {}
    for t in range(hour_floor(t0), hour_ceil(t1), H):
        local = datetime.fromtimestamp(t, tz)
        if step == "hour":
            start = t
        else:
            day = local.date() if step == "day" else local.date().replace(day=1)
            start = int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())
        buckets.setdefault(start, []).append(by_t.get(t, (None, MISSING)))
    out = []
    for start, hours in sorted(buckets.items()):
        known = [v for v, _ in hours if v is not None]
        out.append((start, sum(known) if known else None, max(q for _, q in hours)))
    return out


ZONES = [ZoneInfo(z) for z in ("UTC", "Europe/Moscow", "Europe/Berlin", "Asia/Kolkata", "America/St_Johns")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(-40 * 24, 400 * 24),
    hours=st.lists(st.tuples(st.integers(0, 24 * 70), st.one_of(st.none(), st.integers(0, 1000)),
                             st.sampled_from([MEASURED, ESTIMATED])), max_size=200),
    span=st.integers(1, 24 * 80),
    offset=st.integers(0, H - 1),
    step=st.sampled_from(["hour", "day", "month"]),
    zone=st.sampled_from(ZONES),
)
def test_storage_sums_periods_as_the_hours_add_up(tmp_path: Path, start: int, hours: list, span: int, offset: int,
                                                  step: str, zone: ZoneInfo) -> None:
    """The sums storage makes per local period are what adding up the hours one by
    one gives, across DST changes, half-hour offsets and month ends."""
    base = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp()) + start * H
    stored = {base + h * H: (None if v is None else v / 8, MISSING if v is None else q) for h, v, q in hours}
    rows = [(t, v, q) for t, (v, q) in sorted(stored.items())]
    t0, t1 = base + offset, base + offset + span * H // 2

    async def check() -> None:
        s = SqliteStorage(tmp_path / f"{uuid.uuid4().hex}.db")
        await s.open()
        try:
            await s.save_intervals([(1, t, v, q) for t, v, q in rows], [])
            got = await consumption(s, 1, t0, t1, step, zone)
        finally:
            await s.close()
        want = reference(t0, t1, rows, step, zone)
        assert [(p.t, p.quality) for p in got] == [(t, q) for t, _, q in want]
        assert [p.value for p in got] == [None if v is None else pytest.approx(v, abs=1e-9) for _, v, _ in want]

    asyncio.run(check())


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
