"""Ingest of readings that arrive out of order, late or in pieces: the result never depends on arrival."""

from __future__ import annotations

import asyncio
import math
import tempfile
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balans_edge.core.intervals import IntervalWorker, consumption
from balans_edge.core.model import (
    COUNTER_MODULUS,
    Quality,
    RawReading,
)
from balans_edge.core.storage.sqlite import SqliteStorage

from ingest_support import (
    EPOCH,
    ESTIMATED,
    IMPLICIT,
    MEASURED,
    MISSING,
    RESET,
    T0,
    WEIGHT,
    H,
    RecordingStorage,
    approx_hours,
    hours,
    key,
    meter,
    new_ingest,
    open_storage,
    r,
    stored,
    table,
    two_meters,
)


@pytest.fixture
async def storage(tmp_path: Path):
    s = await two_meters(tmp_path)
    yield s
    await s.close()


# order ----------------------------------------------------------------------


async def test_out_of_order_within_a_batch(storage: RecordingStorage) -> None:
    readings = [r(T0, 100), r(T0 + H, 400), r(T0 + 2 * H, 2, RESET), r(T0 + 3 * H, 50)]
    res = await new_ingest(storage).ingest([readings[i] for i in (3, 1, 0, 2)])
    assert (res.accepted, res.resets) == (4, 1)
    assert await stored(storage) == [
        (T0, 100, 100, 0, 0),
        (T0 + H, 400, 400, 0, 0),
        (T0 + 2 * H, 2, 402, RESET, EPOCH),
        (T0 + 3 * H, 50, 450, 0, 0),
    ]


async def test_out_of_order_across_batches(storage: RecordingStorage) -> None:
    ingest = new_ingest(storage)
    await ingest.ingest([r(T0 + 2 * H, 300), r(T0 + 4 * H, 520)])
    await ingest.ingest([r(T0 + 3 * H, 410), r(T0, 100)])
    await ingest.ingest([r(T0 + H, 180), r(T0 + 5 * H, 600)])
    assert [(ts, p) for ts, _, p, _, _ in await stored(storage)] == [
        (T0, 100),
        (T0 + H, 180),
        (T0 + 2 * H, 300),
        (T0 + 3 * H, 410),
        (T0 + 4 * H, 520),
        (T0 + 5 * H, 600),
    ]
    # The in-order continuation still chains from the newest reading.
    await ingest.ingest([r(T0 + 6 * H, 650)])
    assert (await stored(storage))[-1] == (T0 + 6 * H, 650, 650, 0, 0)
    await IntervalWorker(storage).process()
    assert await hours(storage, T0, T0 + 6 * H) == approx_hours(
        [
            (T0, 0.08, MEASURED),
            (T0 + H, 0.12, MEASURED),
            (T0 + 2 * H, 0.11, MEASURED),
            (T0 + 3 * H, 0.11, MEASURED),
            (T0 + 4 * H, 0.08, MEASURED),
            (T0 + 5 * H, 0.05, MEASURED),
        ]
    )


async def test_back_fill_in_the_middle_of_history(storage: RecordingStorage) -> None:
    ingest = new_ingest(storage)
    worker = IntervalWorker(storage)
    await ingest.ingest([r(T0, 0), r(T0 + H, 100), r(T0 + 2 * H, 200), r(T0 + 5 * H, 800), r(T0 + 6 * H, 900)])
    await worker.process()
    assert await hours(storage, T0, T0 + 6 * H) == approx_hours(
        [
            (T0, 0.1, MEASURED),
            (T0 + H, 0.1, MEASURED),
            (T0 + 2 * H, 0.2, ESTIMATED),  # 600 pulses over 3 hours, linear share
            (T0 + 3 * H, 0.2, ESTIMATED),
            (T0 + 4 * H, 0.2, ESTIMATED),
            (T0 + 5 * H, 0.1, MEASURED),
        ]
    )
    before = await stored(storage)

    storage.writes.clear()
    res = await ingest.ingest([r(T0 + 4 * H, 750), r(T0 + 3 * H, 250)])
    assert (res.accepted, res.duplicates) == (2, 0)
    (write,) = storage.writes
    assert len(write.updates) == 0  # later readings keep their pulses
    assert write.dirty == [(await key(storage), T0 + 2 * H, T0 + 5 * H)]
    after = await stored(storage)
    assert [x for x in after if x[0] not in (T0 + 3 * H, T0 + 4 * H)] == before
    assert (T0 + 3 * H, 250, 250, 0, 0) in after and (T0 + 4 * H, 750, 750, 0, 0) in after

    await worker.process()
    assert await hours(storage, T0, T0 + 6 * H) == approx_hours(
        [
            (T0, 0.1, MEASURED),
            (T0 + H, 0.1, MEASURED),
            (T0 + 2 * H, 0.05, MEASURED),
            (T0 + 3 * H, 0.5, MEASURED),
            (T0 + 4 * H, 0.05, MEASURED),
            (T0 + 5 * H, 0.1, MEASURED),
        ]
    )


async def test_hours_between_in_order_batches_are_recomputed(storage: RecordingStorage) -> None:
    # One reading per batch, 100 minutes apart, 1 pulse a minute; hours are
    # recomputed after every batch, as the running server does.
    ingest = new_ingest(storage)
    worker = IntervalWorker(storage)
    for i in range(5):
        await ingest.ingest([r(T0 + 600 + i * 6000, 100 * i)])
        await worker.process()
    assert await hours(storage, T0, T0 + 7 * H) == approx_hours(
        [(T0, None, MISSING)] + [(T0 + h * H, 0.06, ESTIMATED) for h in range(1, 6)] + [(T0 + 6 * H, None, MISSING)]
    )


async def test_back_fill_before_a_reset_shifts_later_epochs(storage: RecordingStorage) -> None:
    ingest = new_ingest(storage)
    worker = IntervalWorker(storage)
    await ingest.ingest([r(T0, 100), r(T0 + 2 * H, 5, RESET), r(T0 + 3 * H, 10)])
    assert [p for _, _, p, _, _ in await stored(storage)] == [100, 105, 110]
    await worker.process()
    assert await hours(storage, T0, T0 + 3 * H) == approx_hours(
        [(T0, None, MISSING), (T0 + H, None, MISSING), (T0 + 2 * H, 0.005, MEASURED)]
    )

    storage.writes.clear()
    res = await ingest.ingest([r(T0 + H, 150)])
    assert res.accepted == 1
    (write,) = storage.writes
    k = await key(storage)
    u = write.updates
    assert list(zip(u.meter.tolist(), u.ts.tolist(), u.pulses.tolist(), u.flags.tolist(), strict=True)) == [
        (k, T0 + 2 * H, 155, EPOCH),
        (k, T0 + 3 * H, 160, 0),
    ]
    assert write.dirty == [(k, T0, T0 + 3 * H)]
    assert await stored(storage) == [
        (T0, 100, 100, 0, 0),
        (T0 + H, 150, 150, 0, 0),
        (T0 + 2 * H, 5, 155, RESET, EPOCH),
        (T0 + 3 * H, 10, 160, 0, 0),
    ]
    # The chain continues from the shifted head.
    await ingest.ingest([r(T0 + 4 * H, 12)])
    assert (await stored(storage))[-1] == (T0 + 4 * H, 12, 162, 0, 0)

    await worker.process()
    assert await hours(storage, T0, T0 + 4 * H) == approx_hours(
        [(T0, 0.05, MEASURED), (T0 + H, None, MISSING), (T0 + 2 * H, 0.005, MEASURED), (T0 + 3 * H, 0.002, MEASURED)]
    )


async def test_back_filled_reset_shifts_later_readings(storage: RecordingStorage) -> None:
    ingest = new_ingest(storage)
    await ingest.ingest([r(T0, 100), r(T0 + 2 * H, 300), r(T0 + 3 * H, 400)])
    storage.writes.clear()
    res = await ingest.ingest([r(T0 + H, 50, RESET)])
    assert (res.accepted, res.resets) == (1, 1)
    (write,) = storage.writes
    assert list(zip(write.updates.ts.tolist(), write.updates.pulses.tolist(), strict=True)) == [
        (T0 + 2 * H, 400),
        (T0 + 3 * H, 500),
    ]
    assert [(p, f) for _, _, p, _, f in await stored(storage)] == [(100, 0), (150, EPOCH), (400, 0), (500, 0)]


async def test_back_fill_removes_an_implicit_reset(storage: RecordingStorage) -> None:
    # 3e9 -> 1e9 looks like a counter that restarted from 0 (it lost more than it
    # holds); the reading between shows two forward steps of 1,147,483,648 (through the wrap).
    step = 1_147_483_648
    await storage.registry_apply({"meters": [meter("W1", base_counter=3_000_000_000)]})
    ingest = new_ingest(storage)
    await ingest.ingest([r(T0, 3_000_000_000), r(T0 + 2 * H, 1_000_000_000)])
    assert [f for *_, f in await stored(storage)] == [0, EPOCH | IMPLICIT]
    storage.writes.clear()
    await ingest.ingest([r(T0 + H, 3_000_000_000 + step)])
    (write,) = storage.writes
    assert list(zip(write.updates.ts.tolist(), write.updates.flags.tolist(), strict=True)) == [(T0 + 2 * H, 0)]
    assert await stored(storage) == [
        (T0, 3_000_000_000, 0, 0, 0),
        (T0 + H, 3_000_000_000 + step, step, 0, 0),
        (T0 + 2 * H, 1_000_000_000, 2 * step, 0, 0),
    ]


async def test_back_fill_before_the_first_reading(storage: RecordingStorage) -> None:
    await storage.registry_apply({"meters": [meter("W1", base_counter=50)]})
    ingest = new_ingest(storage)
    await ingest.ingest([r(T0 + 2 * H, 300), r(T0 + 3 * H, 330)])
    await ingest.ingest([r(T0, 100), r(T0 + H, 200)])
    assert [(ts, p) for ts, _, p, _, _ in await stored(storage)] == [
        (T0, 50),
        (T0 + H, 150),
        (T0 + 2 * H, 250),
        (T0 + 3 * H, 280),
    ]


# order independence ---------------------------------------------------------


@st.composite
def scenarios(draw):
    """One meter's readings in time order, and the same readings as they arrive."""
    n = draw(st.integers(2, 24))
    # Typical reporting periods, gaps that are estimated and gaps beyond max_gap_s.
    gap = st.sampled_from([300, 900, 1800, H, H + 600, 2 * H, 3 * H, 7 * H]) | st.integers(60, 8 * H)
    gaps = draw(st.lists(gap, min_size=n - 1, max_size=n - 1))
    ts = [T0 + draw(st.integers(0, H - 1))]
    for g in gaps:
        ts.append(ts[-1] + g)
    counter = draw(st.integers(0, COUNTER_MODULUS - 1))
    base_counter = (counter - draw(st.integers(0, 10_000))) % COUNTER_MODULUS
    readings = []
    for i, t in enumerate(ts):
        if i:
            kind = draw(st.sampled_from(["small", "small", "large", "reset"]))
            if kind == "reset":
                counter = draw(st.integers(0, 1000))
                readings.append(r(t, counter, RESET))
                continue
            step = draw(st.integers(0, 5000) if kind == "small" else st.integers(0, 2**31 - 1))
            counter = (counter + step) % COUNTER_MODULUS
        readings.append(r(t, counter))
    if draw(st.booleans()):
        arrival = draw(st.permutations(readings))
    else:  # mostly in time order, some readings late (a module that was out of reach)
        delay = draw(st.lists(st.just(0) | st.integers(1, n), min_size=n, max_size=n))
        arrival = [readings[i] for i in sorted(range(n), key=lambda i: (i + delay[i], i))]
    dups = draw(st.lists(st.sampled_from(readings), max_size=3))
    for d in dups:
        arrival.insert(draw(st.integers(0, len(arrival))), d)
    cuts = sorted(draw(st.sets(st.integers(1, len(arrival) - 1), max_size=len(arrival) - 1)))
    batches = [arrival[a:b] for a, b in zip([0, *cuts], [*cuts, len(arrival)], strict=True)]
    return base_counter, readings, batches


# a re-sent day with a backlog stored after it ----------------------------------


class CountingStorage(RecordingStorage):
    """Counts the stored readings ingest reads back (every read of readings goes
    through ``_reading_rows``)."""

    rows_read = 0

    async def _reading_rows(self, sql, args):
        rows = await super()._reading_rows(sql, args)
        self.rows_read += len(rows)
        return rows


def frames(first_hour: int, hours_: int, skip: frozenset[int] = frozenset()) -> list[list]:
    """One frame per hour with every meter of the module (channels 1..3), as a concentrator sends them."""
    return [[r(T0 + h * H, 100 * h + 7 * c, channel=c) for c in (1, 2, 3)]
            for h in range(first_hour, first_hour + hours_) if h not in skip]


async def test_a_resent_day_reads_what_it_duplicates_not_the_week_after_it(tmp_path: Path) -> None:
    s = await open_storage(tmp_path / "r.db", CountingStorage, [meter(f"W{c}", channel=c) for c in (1, 2, 3)])
    try:
        ingest = new_ingest(s)
        for frame in frames(0, 24, skip=frozenset({5})) + frames(24, 7 * 24):
            await ingest.ingest(frame)
        before = table(s.path, "readings")
        s.rows_read = 0
        day = frames(0, 24, skip=frozenset({5}))
        for frame in day:
            res = await ingest.ingest(frame)
            assert (res.accepted, res.duplicates, res.conflicts) == (0, 3, 0)
        # Each re-sent reading reads back itself, not the week stored after it.
        assert s.rows_read == sum(len(f) for f in day)
        assert table(s.path, "readings") == before

        # The hour missing from the first delivery comes with a re-sent one: the
        # duplicates and the readings around the new ones are read, nothing more.
        s.rows_read = 0
        res = await ingest.ingest(frames(4, 2)[0] + frames(5, 1)[0])
        assert (res.accepted, res.duplicates, res.conflicts) == (3, 3, 0)
        assert s.rows_read == 3 + 3 * 2
        res = await ingest.ingest([r(T0 + 6 * H, 1, channel=1)])
        assert (res.accepted, res.duplicates, res.conflicts) == (0, 0, 1)
        in_order = await open_storage(tmp_path / "o.db", SqliteStorage, [meter(f"W{c}", channel=c) for c in (1, 2, 3)])
        try:
            await new_ingest(in_order).ingest([x for f in frames(0, 8 * 24) for x in f])
            for c in (1, 2, 3):
                assert await stored(s, f"W{c}") == await stored(in_order, f"W{c}")
        finally:
            await in_order.close()
    finally:
        await s.close()


async def _run(path: Path, base_counter: int, batches: list[list[RawReading]], process_each: bool):
    s = await open_storage(path, meters=[meter("W1", base_counter=base_counter)])
    try:
        ingest = new_ingest(s)
        worker = IntervalWorker(s)
        for b in batches:
            await ingest.ingest(b)
            if process_each:
                await worker.process()
        await worker.process()
        rows = await stored(s)
        k = await key(s)
        t0, t1 = rows[0][0] - rows[0][0] % H - H, rows[-1][0] + 3 * H
        points = await consumption(s, k, t0, t1, "hour", ZoneInfo("UTC"))
        return rows, points, ingest.totals
    finally:
        await s.close()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_order_independence(scenario) -> None:
    base_counter, readings, batches = scenario
    with tempfile.TemporaryDirectory() as d:
        expected, expected_points, _ = asyncio.run(_run(Path(d) / "a.db", base_counter, [readings], False))
        got, points, totals = asyncio.run(_run(Path(d) / "b.db", base_counter, batches, True))

    assert got == expected
    assert totals.accepted == len(readings)
    assert totals.duplicates == sum(len(b) for b in batches) - len(readings)
    assert totals.conflicts == 0

    # Hourly values after late data equal the ones computed from all data at once.
    assert [(p.t, p.quality) for p in points] == [(p.t, p.quality) for p in expected_points]
    for p, e in zip(points, expected_points, strict=True):
        assert (p.value is None) == (e.value is None)
        if p.value is not None:
            assert p.value == pytest.approx(e.value, rel=1e-9, abs=1e-9)

    # Known hours never add up to more than was counted.
    pulses = [p for _, _, p, _, _ in got]
    assert pulses == sorted(pulses)
    known = sum(p.value for p in points if p.quality is not Quality.MISSING)
    assert all(p.value is not None and p.value >= -1e-9 for p in points if p.quality is not Quality.MISSING)
    assert known <= (pulses[-1] - pulses[0]) * WEIGHT + 1e-6
    assert known <= pulses[-1] * WEIGHT + 1e-6
    assert not any(p.value is not None and math.isnan(p.value) for p in points)
