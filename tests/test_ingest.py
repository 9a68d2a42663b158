"""The ingest path over real SQLite files: every rule of core/ingest.py with exact numbers."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from balans_edge.core.bus import EventBus, ReadingsCommitted
from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.intervals import IntervalWorker
from balans_edge.core.model import (
    COUNTER_MODULUS,
    RadioModule,
)
from balans_edge.core.storage import StorageError
from balans_edge.core.storage.sqlite import SqliteStorage

from ingest_support import (
    BACK,
    EPOCH,
    IMPLICIT,
    MEASURED,
    MISSING,
    MODULE,
    NOW,
    RESET,
    T0,
    FaultyStorage,
    H,
    RecordingStorage,
    approx_hours,
    hours,
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


# counters -----------------------------------------------------------------


async def test_counter_wrap(storage: RecordingStorage) -> None:
    await storage.registry_apply({"meters": [meter("W1", base_counter=4294967000)]})
    ingest = new_ingest(storage)
    res = await ingest.ingest([r(T0, 4294967290), r(T0 + H, 5), r(T0 + 2 * H, 105)])
    assert (res.accepted, res.resets, res.duplicates, res.conflicts) == (3, 0, 0, 0)
    assert await stored(storage) == [
        (T0, 4294967290, 290, 0, 0),
        (T0 + H, 5, 301, 0, 0),  # 4294967290 -> 5 is 11 pulses across the wrap
        (T0 + 2 * H, 105, 401, 0, 0),
    ]
    await IntervalWorker(storage).process()
    assert await hours(storage, T0, T0 + 2 * H) == approx_hours([(T0, 0.011, MEASURED), (T0 + H, 0.1, MEASURED)])


async def test_counter_wrap_across_batches(storage: RecordingStorage) -> None:
    await storage.registry_apply({"meters": [meter("W1", base_counter=COUNTER_MODULUS - 100)]})
    ingest = new_ingest(storage)
    await ingest.ingest([r(T0, COUNTER_MODULUS - 6)])
    # A fresh instance continues from the stored head, not from memory.
    await new_ingest(storage).ingest([r(T0 + H, 5)])
    assert [p for _, _, p, _, _ in await stored(storage)] == [94, 105]


async def test_explicit_counter_reset_starts_new_epoch(storage: RecordingStorage) -> None:
    ingest = new_ingest(storage)
    res = await ingest.ingest(
        [r(T0, 1000), r(T0 + H, 1500), r(T0 + 4 * H, 7, RESET), r(T0 + 5 * H, 20), r(T0 + 6 * H, 20)]
    )
    assert (res.accepted, res.resets) == (5, 1)
    assert await stored(storage) == [
        (T0, 1000, 1000, 0, 0),
        (T0 + H, 1500, 1500, 0, 0),
        (T0 + 4 * H, 7, 1507, RESET, EPOCH),  # previous pulses + the new epoch's counter
        (T0 + 5 * H, 20, 1520, 0, 0),
        (T0 + 6 * H, 20, 1520, 0, 0),
    ]
    await IntervalWorker(storage).process()
    assert await hours(storage, T0, T0 + 6 * H) == approx_hours(
        [
            (T0, 0.5, MEASURED),
            (T0 + H, None, MISSING),  # the pulses before the restart are unknown
            (T0 + 2 * H, None, MISSING),
            (T0 + 3 * H, None, MISSING),
            (T0 + 4 * H, 0.013, MEASURED),
            (T0 + 5 * H, 0.0, MEASURED),
        ]
    )


async def test_reset_flag_on_a_counter_that_did_not_go_backwards(storage: RecordingStorage) -> None:
    # The module restarted and counted past the old value before reporting:
    # the flag, not the arithmetic, decides.
    await new_ingest(storage).ingest([r(T0, 100), r(T0 + H, 300, RESET)])
    assert await stored(storage) == [(T0, 100, 100, 0, 0), (T0 + H, 300, 400, RESET, EPOCH)]


async def test_implicit_backwards_counter(storage: RecordingStorage) -> None:
    res = await new_ingest(storage).ingest([r(T0, 5000), r(T0 + H, 5100), r(T0 + 2 * H, 30), r(T0 + 3 * H, 80)])
    assert res.resets == 1
    assert await stored(storage) == [
        (T0, 5000, 5000, 0, 0),
        (T0 + H, 5100, 5100, 0, 0),
        (T0 + 2 * H, 30, 5130, 0, EPOCH | IMPLICIT),
        (T0 + 3 * H, 80, 5180, 0, 0),
    ]
    await IntervalWorker(storage).process()
    assert await hours(storage, T0, T0 + 3 * H) == approx_hours(
        [(T0, 0.1, MEASURED), (T0 + H, None, MISSING), (T0 + 2 * H, 0.05, MEASURED)]
    )


async def test_a_counter_running_backwards_gives_negative_pulses(storage: RecordingStorage) -> None:
    # 5000 -> 4930 lost less than it still holds: a meter mounted the wrong way
    # round (or a net totaliser), not a restart from 0. Its hours are negative,
    # measured, and the readings say so; nothing is reset or left unknown.
    res = await new_ingest(storage).ingest([r(T0, 5000), r(T0 + H, 4930), r(T0 + 2 * H, 4900), r(T0 + 3 * H, 4950)])
    assert res.resets == 0
    assert await stored(storage) == [
        (T0, 5000, 5000, 0, 0),
        (T0 + H, 4930, 4930, 0, BACK),
        (T0 + 2 * H, 4900, 4900, 0, BACK),
        (T0 + 3 * H, 4950, 4950, 0, 0),
    ]
    await IntervalWorker(storage).process()
    assert await hours(storage, T0, T0 + 3 * H) == approx_hours(
        [(T0, -0.07, MEASURED), (T0 + H, -0.03, MEASURED), (T0 + 2 * H, 0.05, MEASURED)]
    )
    # Running back past 0 wraps to the top of the range: still backwards.
    await new_ingest(storage).ingest([r(T0, 20, channel=2), r(T0 + H, COUNTER_MODULUS - 30, channel=2)])
    assert [(p, f) for *_, p, _, f in await stored(storage, "W2")] == [(20, 0), (-30, BACK)]


async def test_a_meter_allowed_to_run_backwards_never_resets_silently(storage: RecordingStorage) -> None:
    # 5000 -> 1000 would be a restart from 0 on another meter (it lost more than it holds).
    await storage.registry_apply({"meters": [meter("W1", flags=frozenset({"reverse_allowed"}))]})
    res = await new_ingest(storage).ingest([r(T0, 5000), r(T0 + H, 1000), r(T0 + 2 * H, 300, RESET)])
    assert res.resets == 1  # the flagged restart only
    assert [(p, f) for *_, p, _, f in await stored(storage)] == [(5000, 0), (1000, BACK), (1300, EPOCH)]


async def test_jump_of_half_the_counter_range_is_backwards(storage: RecordingStorage) -> None:
    half = COUNTER_MODULUS // 2
    res = await new_ingest(storage).ingest([r(T0, 10), r(T0 + H, 9 + half), r(T0 + 2 * H, 9)])
    assert (res.accepted, res.rejected) == (3, {})
    # +2^31-1 is a forward step; the next step of +2^31 (mod 2^32) is a counter
    # that went backwards, and its value starts the new epoch.
    assert [(p, f) for *_, p, _, f in await stored(storage)] == [(10, 0), (9 + half, 0), (18 + half, EPOCH | IMPLICIT)]


async def test_meter_base_counter_is_the_origin(storage: RecordingStorage) -> None:
    await storage.registry_apply({"meters": [meter("W1", base_counter=900)]})
    await new_ingest(storage).ingest([r(T0, 1000), r(T0 + H, 1200)])
    assert [p for _, _, p, _, _ in await stored(storage)] == [100, 300]


# duplicates and conflicts -------------------------------------------------


async def test_duplicates_are_idempotent(storage: RecordingStorage) -> None:
    batch = [r(T0 + i * H, 100 * i) for i in range(5)] + [r(T0 + i * H, 7 * i, channel=2) for i in range(5)]
    ingest = new_ingest(storage)
    first = await ingest.ingest(batch)
    assert (first.accepted, first.duplicates) == (10, 0)
    before = table(storage.path, "readings")

    again = await ingest.ingest(batch)
    assert (again.accepted, again.duplicates, again.conflicts, again.quarantined) == (0, 10, 0, 0)
    # After a restart (heads read back from the database) too.
    fresh = await new_ingest(storage).ingest(list(reversed(batch)))
    assert (fresh.accepted, fresh.duplicates, fresh.conflicts) == (0, 10, 0)
    assert table(storage.path, "readings") == before
    assert ingest.totals.as_dict() == {
        "accepted": 10,
        "duplicates": 10,
        "conflicts": 0,
        "quarantined": 0,
        "rejected": {},
        "resets": 0,
    }


async def test_duplicates_inside_one_batch(storage: RecordingStorage) -> None:
    res = await new_ingest(storage).ingest([r(T0, 10), r(T0 + H, 20), r(T0, 10), r(T0 + H, 20), r(T0 + H, 20)])
    assert (res.accepted, res.duplicates, res.conflicts) == (2, 3, 0)
    assert await stored(storage) == [(T0, 10, 10, 0, 0), (T0 + H, 20, 20, 0, 0)]


async def test_conflicting_duplicate_keeps_stored_value(storage: RecordingStorage) -> None:
    ingest = new_ingest(storage)
    await ingest.ingest([r(T0, 1000), r(T0 + H, 1500), r(T0 + 2 * H, 1600)])
    before = table(storage.path, "readings")
    res = await ingest.ingest([r(T0 + H, 1550), r(T0 + 2 * H, 1600)])
    assert (res.accepted, res.duplicates, res.conflicts) == (0, 1, 1)
    assert table(storage.path, "readings") == before
    # A conflict next to a new reading: the new one is accepted, the stored value kept.
    res = await ingest.ingest([r(T0 + 2 * H, 1), r(T0 + 3 * H, 1700)])
    assert (res.accepted, res.duplicates, res.conflicts) == (1, 0, 1)
    assert [(ts, c, p) for ts, c, p, _, _ in await stored(storage)] == [
        (T0, 1000, 1000),
        (T0 + H, 1500, 1500),
        (T0 + 2 * H, 1600, 1600),
        (T0 + 3 * H, 1700, 1700),
    ]


async def test_conflict_inside_one_batch_keeps_the_first(storage: RecordingStorage) -> None:
    res = await new_ingest(storage).ingest([r(T0, 10), r(T0 + H, 25), r(T0 + H, 20)])
    assert (res.accepted, res.duplicates, res.conflicts) == (2, 0, 1)
    assert await stored(storage) == [(T0, 10, 10, 0, 0), (T0 + H, 25, 25, 0, 0)]


# the registry ---------------------------------------------------------------


async def test_quarantine(storage: RecordingStorage) -> None:
    await storage.registry_apply(
        {
            "modules": [RadioModule(2002, channels=0b001)],
            "meters": [meter("W3", module=2002, install=T0 - 10 * H, removed_time=T0 + 5 * H)],
        }
    )
    ingest = new_ingest(storage, now=NOW)
    res = await ingest.ingest(
        [
            r(T0, 10, module=9999),  # unknown module
            r(T0, 10, channel=3),  # known module, no meter on input 3
            r(T0 - 2 * 86400, 10),  # before W1 was installed
            r(T0 + 6 * H, 10, module=2002),  # after W3 was removed (and nobody replaced it)
            r(T0 + 4 * H, 10, module=2002),  # still W3's
        ]
    )
    assert (res.accepted, res.quarantined) == (1, 4)
    q = await storage.quarantine()
    assert {(x["module_id"], x["channel"], x["ts"], x["reason"]) for x in q} == {
        (9999, 1, T0, "unknown_channel"),
        (MODULE, 3, T0, "unknown_channel"),
        (MODULE, 1, T0 - 2 * 86400, "before_install"),
        (2002, 1, T0 + 6 * H, "meter_removed"),
    }
    assert all(x["received_at"] == NOW and x["counter"] == 10 for x in q)
    assert len(await stored(storage, "W3")) == 1
    # Retransmitted quarantined readings are kept once.
    await ingest.ingest([r(T0, 10, module=9999)])
    assert len(await storage.quarantine()) == 4


async def test_modules_last_seen(storage: RecordingStorage) -> None:
    await new_ingest(storage).ingest([r(T0 + H, 1), r(T0, 0), r(T0 + 3 * H, 1, channel=3)])
    (module,) = await storage.registry_list("modules")
    assert module.last_seen == T0 + 3 * H
    await new_ingest(storage).ingest([r(T0 - H, 0, channel=2)])  # an older report does not go back
    assert (await storage.registry_get("modules", MODULE)).last_seen == T0 + 3 * H


async def test_readings_from_the_future_are_rejected(storage: RecordingStorage) -> None:
    ingest = new_ingest(storage, now=NOW)
    res = await ingest.ingest([r(NOW - H, 10), r(NOW + 300, 20), r(NOW + 301, 30), r(NOW + 86400, 40)])
    assert res.rejected == {"future": 2}
    assert res.accepted == 2
    assert [ts for ts, *_ in await stored(storage)] == [NOW - H, NOW + 300]
    assert await storage.quarantine() == []
    assert ingest.totals.rejected["future"] == 2


async def test_invalid_values_are_rejected(storage: RecordingStorage) -> None:
    ingest = new_ingest(storage)
    batch = ReadingBatch(
        module=np.array([MODULE, MODULE, MODULE, MODULE, MODULE, -1, MODULE], dtype=np.int64),
        channel=np.array([0, 4, 1, 1, 1, 1, 1], dtype=np.int64),
        ts=np.array([T0, T0, T0, T0, 0, T0, T0 + H], dtype=np.int64),
        counter=np.array([1, 1, -1, COUNTER_MODULUS, 1, 1, COUNTER_MODULUS - 1], dtype=np.int64),
        status=np.zeros(7, dtype=np.int64),
    )
    res = await ingest.ingest(batch)
    assert res.rejected == {"invalid": 6}
    assert (res.accepted, res.quarantined) == (1, 0)
    assert [(ts, c) for ts, c, *_ in await stored(storage)] == [(T0 + H, COUNTER_MODULUS - 1)]
    assert await storage.quarantine() == []


async def test_meter_replacement(storage: RecordingStorage) -> None:
    swap = T0 + 2 * H + 1800
    await storage.registry_apply(
        {
            "meters": [
                meter("W1", install=T0 - 86400, removed_time=swap),
                meter("W1-new", install=swap, base_counter=1250),
            ]
        }
    )
    readings = [r(T0 + i * H, 1000 + 100 * i) for i in range(7)]  # the module keeps counting
    res = await new_ingest(storage).ingest(readings[::-1])
    assert (res.accepted, res.quarantined) == (7, 0)
    assert [(ts, p) for ts, _, p, _, _ in await stored(storage, "W1")] == [
        (T0, 1000),
        (T0 + H, 1100),
        (T0 + 2 * H, 1200),
    ]
    assert [(ts, p) for ts, _, p, _, _ in await stored(storage, "W1-new")] == [
        (T0 + 3 * H, 50),
        (T0 + 4 * H, 150),
        (T0 + 5 * H, 250),
        (T0 + 6 * H, 350),
    ]
    # A late reading from before the swap still goes to the old meter, one at
    # the swap itself to the new one.
    res = await new_ingest(storage).ingest([r(T0 + 2 * H + 900, 1225), r(swap, 1250)])
    assert res.accepted == 2
    assert (await stored(storage, "W1"))[-1] == (T0 + 2 * H + 900, 1225, 1225, 0, 0)
    assert (await stored(storage, "W1-new"))[0] == (swap, 1250, 0, 0, 0)


async def test_replacement_registered_while_running(storage: RecordingStorage) -> None:
    ingest = new_ingest(storage)
    await ingest.ingest([r(T0, 1000), r(T0 + H, 1100)])
    await storage.registry_apply(
        {
            "meters": [
                meter("W1", removed_time=T0 + 2 * H),
                meter("W1-new", install=T0 + 2 * H, base_counter=7),
            ]
        }
    )
    res = await ingest.ingest([r(T0 + 3 * H, 57, RESET)])  # new meter, module restarted
    assert res.accepted == 1
    assert [p for _, _, p, _, _ in await stored(storage, "W1")] == [1000, 1100]
    assert await stored(storage, "W1-new") == [(T0 + 3 * H, 57, 57, RESET, EPOCH)]


# events and failures --------------------------------------------------------


class CheckingBus(EventBus):
    """Reads the storage when an event is published: it must already be committed."""

    def __init__(self, storage: SqliteStorage) -> None:
        super().__init__()
        self.storage = storage
        self.seen: list[tuple[ReadingsCommitted, int]] = []

    def publish(self, event) -> None:
        if isinstance(event, ReadingsCommitted):
            with sqlite3.connect(self.storage.path) as db:
                (n,) = db.execute("SELECT count(*) FROM readings").fetchone()
            self.seen.append((event, n))
        super().publish(event)


async def test_readings_committed_event(storage: RecordingStorage) -> None:
    bus = CheckingBus(storage)
    sub = bus.subscribe(ReadingsCommitted)
    ingest = new_ingest(storage, bus=bus)
    await ingest.ingest([r(T0 + H, 20), r(T0, 10), r(T0 + 2 * H, 5, channel=2), r(T0, 1, module=9999)])
    event = sub.queue.get_nowait()
    keys = await storage.meter_keys()
    assert event == ReadingsCommitted(
        meters=tuple(sorted((keys["W1"], keys["W2"]))), count=3, t_min=T0, t_max=T0 + 2 * H
    )
    assert bus.seen == [(event, 3)]  # visible to another connection when published

    # Nothing new, nothing published.
    await ingest.ingest([r(T0, 10), r(T0, 1, module=9999)])
    assert sub.queue.empty()


@pytest.mark.parametrize("mode", ["refuse", "midway"])
async def test_failed_commit_leaves_nothing_and_chaining_recovers(tmp_path: Path, mode: str) -> None:
    s = await open_storage(tmp_path / "edge.db", FaultyStorage, [meter("W1")])
    try:
        bus = EventBus()
        sub = bus.subscribe(ReadingsCommitted)
        ingest = new_ingest(s, bus=bus)
        await ingest.ingest([r(T0, 1000), r(T0 + H, 1100)])
        sub.queue.get_nowait()
        snapshot = {t: table(s.path, t) for t in ("readings", "quarantine", "interval_dirty", "modules")}

        failing = [r(T0 + 2 * H, 10, RESET), r(T0 + 2 * H, 3, module=9999)]
        s.fail_next = mode
        with pytest.raises(StorageError):
            await ingest.ingest(failing)
        assert {t: table(s.path, t) for t in snapshot} == snapshot
        assert sub.queue.empty()
        assert ingest.totals.accepted == 2

        # The storage is back. The next batch chains from what was committed:
        # 1100 -> 1300 is 200 pulses, not a continuation of the lost reset.
        res = await ingest.ingest([r(T0 + 3 * H, 1300)])
        assert res.accepted == 1
        assert await stored(s) == [
            (T0, 1000, 1000, 0, 0),
            (T0 + H, 1100, 1100, 0, 0),
            (T0 + 3 * H, 1300, 1300, 0, 0),
        ]

        # The device sends the failed batch again: it is back-filled and the
        # reading after it re-chained (1300 after a restart at 10 is 1290 pulses).
        res = await ingest.ingest(failing)
        assert (res.accepted, res.quarantined, res.resets) == (1, 1, 1)
        assert await stored(s) == [
            (T0, 1000, 1000, 0, 0),
            (T0 + H, 1100, 1100, 0, 0),
            (T0 + 2 * H, 10, 1110, RESET, EPOCH),
            (T0 + 3 * H, 1300, 2400, 0, 0),
        ]
        assert len(await s.quarantine()) == 1
    finally:
        await s.close()


async def test_concurrent_ingests_share_commits(tmp_path: Path) -> None:
    meters = [meter(f"M{m}-{c}", channel=c, module=m) for m in range(1, 21) for c in (1, 2, 3)]
    s = await open_storage(tmp_path / "edge.db", meters=meters)
    try:
        ingest = new_ingest(s)
        batches = [
            [r(T0 + h * H, 10 * h, channel=c, module=m) for c in (1, 2, 3)] for h in range(10) for m in range(1, 21)
        ]
        before = s.commits
        results = await asyncio.gather(*(ingest.ingest(b) for b in batches))
        assert sum(x.accepted for x in results) == 600
        assert s.commits - before < len(batches)
        for m in meters[:3]:
            assert [p for _, _, p, _, _ in await stored(s, m.meter_id)] == [10 * h for h in range(10)]
    finally:
        await s.close()
