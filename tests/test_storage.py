"""SQLite storage: migrations, PRAGMAs, group commit, isolation of failing writes, durability."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import aiosqlite
import numpy as np
import pytest

from balans_edge.core.model import Account, Concentrator, Meter, RadioModule, Resource
from balans_edge.core.storage import IngestWrite, ReadingRows, StorageError
from balans_edge.core.storage import sqlite as backend
from balans_edge.core.storage.migrations import LATEST, available
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.core.storage.sqlite_migrations import migrate

T0 = 1_705_276_800  # 2024-01-15 00:00:00 UTC

# Rows that are valid once the schema has reached the given version. Migrating
# a database that holds them to the latest version must keep every one.
ROWS_BY_VERSION: dict[int, list[tuple[str, str, tuple]]] = {
    1: [
        ("concentrators", "INSERT INTO concentrators (concentrator_id, name) VALUES (?, ?)", (7, "north")),
        (
            "modules",
            "INSERT INTO modules (module_id, concentrator_id, channels, last_seen) VALUES (?, ?, ?, ?)",
            (1001, 7, 0b011, T0),
        ),
        ("accounts", "INSERT INTO accounts (account_id, consumer) VALUES (?, ?)", ("A-1", "Flat 1")),
        (
            "meters",
            "INSERT INTO meters (meter_id, resource, unit, pulse_weight, install_time, module_id, channel, "
            "account_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("W-1", "water", "m3", 0.001, T0 - 86400, 1001, 1, "A-1"),
        ),
        (
            "readings",
            "INSERT INTO readings (meter, ts, counter, pulses, status, flags) VALUES (?, ?, ?, ?, ?, ?)",
            (1, T0, 1234, 1234, 0, 0),
        ),
        (
            "quarantine",
            "INSERT INTO quarantine (module_id, channel, ts, counter, status, reason, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (9999, 1, T0, 5, 0, "unknown_channel", T0),
        ),
    ],
    2: [
        ("interval_dirty", "INSERT INTO interval_dirty (meter, lo, hi) VALUES (?, ?, ?)", (1, T0, T0 + 3600)),
        (
            "consumption_hourly",
            "INSERT INTO consumption_hourly (meter, t, value, quality) VALUES (?, ?, ?, ?)",
            (1, T0, 0.25, 0),
        ),
    ],
}


def meter(meter_id: str, channel: int = 1, **kw) -> Meter:
    return Meter(
        meter_id=meter_id,
        resource=Resource.WATER,
        unit=kw.pop("unit", "m3"),
        pulse_weight=0.001,
        install_time=T0 - 86400,
        module_id=1001,
        channel=channel,
        **kw,
    )


def rows(meter_key: int, start: int, n: int) -> IngestWrite:
    """An ingest write of ``n`` hourly readings of one meter from ``start``."""
    ts = np.arange(start, start + n * 3600, 3600, dtype=np.int64)
    counter = np.arange(n, dtype=np.int64) * 10
    zero = np.zeros(n, dtype=np.int64)
    return IngestWrite(inserts=ReadingRows(np.full(n, meter_key, dtype=np.int64), ts, counter, counter, zero, zero))


def schema(path: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall())


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture
async def storage(tmp_path: Path):
    s = SqliteStorage(tmp_path / "edge.db")
    await s.open()
    yield s
    await s.close()


async def registered(storage: SqliteStorage, n: int = 3) -> dict[str, int]:
    await storage.registry_apply(
        {
            "modules": [RadioModule(1001, channels=0b111)],
            "meters": [meter(f"W-{i}", channel=i) for i in range(1, n + 1)],
        }
    )
    return await storage.meter_keys()


# migrations ---------------------------------------------------------------


def test_migrations_are_numbered_from_one() -> None:
    versions = [v for v, _, _ in available()]
    assert versions == list(range(1, LATEST + 1))
    assert LATEST >= 2


async def test_migrate_empty_database_to_latest(tmp_path: Path) -> None:
    s = SqliteStorage(tmp_path / "fresh.db")
    await s.open()
    try:
        assert await s.schema_version() == LATEST
        assert await s.registry_version() == 0
        for kind in ("concentrators", "modules", "accounts", "meters"):
            assert await s.registry_list(kind) == []
    finally:
        await s.close()
    tables = {name for kind, name, _, _ in schema(tmp_path / "fresh.db") if kind == "table"}
    # Later migrations may add tables; these are the ones ingest and intervals rely on.
    assert tables >= {
        "concentrators",
        "modules",
        "accounts",
        "meters",
        "readings",
        "quarantine",
        "interval_dirty",
        "consumption_hourly",
        "registry_state",
    }


async def test_migrating_twice_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    async with aiosqlite.connect(path, isolation_level=None) as db:
        assert await migrate(db) == LATEST
        assert await migrate(db) == LATEST
    assert count(path, "registry_state") == 1


@pytest.mark.parametrize("start", range(LATEST))
async def test_migrate_from_each_earlier_version(tmp_path: Path, start: int) -> None:
    fresh = tmp_path / "fresh.db"
    s = SqliteStorage(fresh)
    await s.open()
    await s.close()

    path = tmp_path / "old.db"
    inserted: dict[str, int] = {}
    async with aiosqlite.connect(path, isolation_level=None) as db:
        assert await migrate(db, target=start) == start
        async with db.execute("PRAGMA user_version") as cur:
            assert (await cur.fetchone())[0] == start
        for version in range(1, start + 1):
            for table, sql, values in ROWS_BY_VERSION.get(version, []):
                await db.execute(sql, values)
                inserted[table] = inserted.get(table, 0) + 1

    s = SqliteStorage(path)
    await s.open()
    try:
        assert await s.schema_version() == LATEST
        if start >= 1:
            (m,) = await s.registry_list("meters")
            assert (m.meter_id, m.module_id, m.channel, m.account_id) == ("W-1", 1001, 1, "A-1")
            assert m.resource is Resource.WATER
            assert await s.registry_list("concentrators") == [Concentrator(7, "north")]
            assert await s.registry_list("accounts") == [Account("A-1", "Flat 1")]
            r = await s.readings(1, 0, 2**40)
            assert (r.ts.tolist(), r.counter.tolist(), r.pulses.tolist()) == ([T0], [1234], [1234])
            (q,) = await s.quarantine()
            assert (q["module_id"], q["reason"]) == (9999, "unknown_channel")
    finally:
        await s.close()

    for table, n in inserted.items():
        assert count(path, table) == n, table
    assert count(path, "registry_state") == 1
    assert schema(path) == schema(fresh)


async def test_refuses_database_newer_than_software(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE from_the_future (x)")
        db.execute(f"PRAGMA user_version = {LATEST + 1}")

    async with aiosqlite.connect(path, isolation_level=None) as db:
        with pytest.raises(RuntimeError, match="newer than this software"):
            await migrate(db)

    s = SqliteStorage(path)
    with pytest.raises(RuntimeError, match="newer than this software"):
        await s.open()
    with pytest.raises(StorageError):
        await s.flush()
    await s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST + 1
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["from_the_future"]


# connection settings ---------------------------------------------------------


async def test_writer_pragmas(storage: SqliteStorage) -> None:
    writer = storage._writer
    assert writer is not None
    expected = {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1}
    for pragma, value in expected.items():
        async with writer.execute(f"PRAGMA {pragma}") as cur:
            assert (await cur.fetchone())[0] == value, pragma
    reader = storage._reader
    assert reader is not None
    async with reader.execute("PRAGMA query_only") as cur:
        assert (await cur.fetchone())[0] == 1


# group commit ---------------------------------------------------------------


async def test_group_commit_groups_concurrent_writes(storage: SqliteStorage) -> None:
    keys = await registered(storage)
    jobs = 200
    commits_before = storage.commits
    await asyncio.gather(*(storage.commit_ingest(rows(keys["W-1"], T0 + i * 10 * 3600, 10)) for i in range(jobs)))
    commits = storage.commits - commits_before
    assert 1 <= commits <= 5, commits
    assert count(storage.path, "readings") == jobs * 10
    r = await storage.readings(keys["W-1"], 0, 2**40)
    assert len(r) == jobs * 10
    assert np.all(np.diff(r.ts) == 3600)


async def test_group_size_is_bounded(tmp_path: Path) -> None:
    s = SqliteStorage(tmp_path / "edge.db", max_group=16)
    await s.open()
    try:
        keys = await registered(s)
        before = s.commits
        await asyncio.gather(*(s.commit_ingest(rows(keys["W-1"], T0 + i * 3600, 1)) for i in range(100)))
        assert s.commits - before >= 100 // 16
        assert len(await s.readings(keys["W-1"], 0, 2**40)) == 100
    finally:
        await s.close()


async def test_failing_job_fails_only_itself(storage: SqliteStorage) -> None:
    keys = await registered(storage)
    version = await storage.registry_version()

    ingest_jobs = [storage.commit_ingest(rows(keys[f"W-{1 + i % 3}"], T0 + i * 100 * 3600, 5)) for i in range(20)]
    bad = storage.registry_apply({"meters": [meter("BROKEN", unit=None)]})  # NOT NULL unit
    good_registry = storage.registry_apply({"accounts": [Account("A-9", "Shop")]})
    commits_before = storage.commits
    results = await asyncio.gather(*ingest_jobs[:10], bad, *ingest_jobs[10:], good_registry, return_exceptions=True)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    assert isinstance(results[10], StorageError)
    assert "NOT NULL" in str(results[10])
    # The group failed as a whole, then every job was retried alone.
    assert storage.commits - commits_before == 21

    assert count(storage.path, "readings") == 20 * 5
    for key in keys.values():
        assert len(await storage.readings(key, 0, 2**40)) in (30, 35)
    assert await storage.registry_get("meters", "BROKEN") is None
    assert await storage.registry_get("accounts", "A-9") == Account("A-9", "Shop")
    assert await storage.registry_version() == version + 1


async def test_registry_apply_is_all_or_nothing(storage: SqliteStorage) -> None:
    await registered(storage)
    version = await storage.registry_version()
    with pytest.raises(StorageError):
        await storage.registry_apply({"accounts": [Account("A-2")], "meters": [meter("X", unit=None)]})
    assert await storage.registry_get("accounts", "A-2") is None
    assert await storage.registry_version() == version


# durability ---------------------------------------------------------------


async def test_committed_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    s = SqliteStorage(path)
    await s.open()
    keys = await registered(s)
    write = rows(keys["W-2"], T0, 4)
    write.quarantine = [(4242, 2, T0, 77, 0, "unknown_channel")]
    write.dirty = [(keys["W-2"], T0, T0 + 3 * 3600)]
    write.received_at = T0 + 60
    await s.commit_ingest(write)
    await s.save_intervals([(keys["W-2"], T0, 0.01, 0), (keys["W-2"], T0 + 3600, None, 2)], [])
    await s.close()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0

    s = SqliteStorage(path)
    await s.open()
    try:
        assert await s.meter_keys() == keys
        r = await s.readings(keys["W-2"], 0, 2**40)
        assert r.ts.tolist() == [T0 + i * 3600 for i in range(4)]
        assert r.pulses.tolist() == [0, 10, 20, 30]
        assert await s.quarantine() == [
            {
                "module_id": 4242,
                "channel": 2,
                "ts": T0,
                "counter": 77,
                "status": 0,
                "reason": "unknown_channel",
                "received_at": T0 + 60,
            }
        ]
        assert [(d.meter, d.lo, d.hi) for d in await s.take_dirty()] == [(keys["W-2"], T0, T0 + 3 * 3600)]
        assert await s.hourly(keys["W-2"], T0, T0 + 7200) == [(T0, 0.01, 0), (T0 + 3600, None, 2)]
        heads = await s.load_heads()
        assert [(h.meter, h.ts, h.counter, h.pulses) for h in heads] == [(keys["W-2"], T0 + 3 * 3600, 30, 30)]
    finally:
        await s.close()


async def test_close_waits_for_pending_writes(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    s = SqliteStorage(path)
    await s.open()
    keys = await registered(s)
    tasks = [asyncio.create_task(s.commit_ingest(rows(keys["W-1"], T0 + i * 50 * 3600, 50))) for i in range(40)]
    await asyncio.sleep(0)  # every write is submitted, none is committed yet
    assert not any(t.done() for t in tasks)
    await s.close()
    assert all(t.done() and t.exception() is None for t in tasks)
    assert count(path, "readings") == 40 * 50
    with pytest.raises(StorageError):
        await s.commit_ingest(rows(keys["W-1"], T0 - 3600, 1))


async def test_write_racing_close_is_committed(tmp_path: Path) -> None:
    """A write submitted while close() is committing the last group must settle, not hang."""
    path = tmp_path / "edge.db"
    s = SqliteStorage(path)
    await s.open()
    keys = await registered(s)
    first = asyncio.create_task(s.commit_ingest(rows(keys["W-1"], T0, 50_000)))
    await asyncio.sleep(0)  # the committer is busy with the first write
    second = asyncio.create_task(s.commit_ingest(rows(keys["W-2"], T0, 50_000)))
    closing = asyncio.create_task(s.close())
    while s._pending:  # wait until the group holding the second write is being committed
        await asyncio.sleep(0.001)
    late = asyncio.create_task(s.commit_ingest(rows(keys["W-3"], T0, 10)))
    done, _ = await asyncio.wait([first, second, closing, late], timeout=20)
    assert len(done) == 4, "a write or close() never finished"
    assert [t.exception() for t in (first, second, closing, late)] == [None] * 4
    with sqlite3.connect(path) as db:
        per_meter = dict(db.execute("SELECT meter, count(*) FROM readings GROUP BY meter").fetchall())
    assert per_meter == {keys["W-1"]: 50_000, keys["W-2"]: 50_000, keys["W-3"]: 10}
    with pytest.raises(StorageError, match="not open"):
        await s.commit_ingest(rows(keys["W-3"], T0 - 3600, 1))


async def test_failed_open_releases_the_database(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {LATEST + 1}")
    s = SqliteStorage(path)
    with pytest.raises(RuntimeError):
        await s.open()
    assert s._writer is None and s._reader is None
    await s.close()  # nothing to release: a no-op
    # Fix the version by hand; the same object opens cleanly afterwards.
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 0")
    await s.open()
    assert await s.schema_version() == LATEST
    await s.close()


async def test_reader_never_sees_a_half_written_batch(storage: SqliteStorage) -> None:
    keys = await registered(storage)
    write = rows(keys["W-1"], T0, 2000)
    task = asyncio.create_task(storage.commit_ingest(write))
    seen = set()
    while not task.done():
        seen.add(len(await storage.readings(keys["W-1"], 0, 2**40)))
        await asyncio.sleep(0)
    await task
    seen.add(len(await storage.readings(keys["W-1"], 0, 2**40)))
    assert seen <= {0, 2000}
    assert 2000 in seen


async def test_many_registry_rows_become_objects_off_the_event_loop(storage: SqliteStorage, monkeypatch) -> None:
    meters = [Meter(f"M{i:04d}", Resource.WATER, "m3", 0.001, 1_700_000_000, flags=frozenset({"valve"}))
              for i in range(50)]
    await storage.registry_apply({"meters": meters})
    inline = await storage.registry_list("meters")
    made_in: set[int] = set()
    original = backend._from_row

    def spy(kind: str, row: aiosqlite.Row) -> object:
        made_in.add(threading.get_ident())
        return original(kind, row)

    monkeypatch.setattr(backend, "_from_row", spy)
    monkeypatch.setattr(backend, "OFF_LOOP_ROWS", 10)  # 50 rows count as many here
    assert await storage.registry_list("meters") == inline == meters
    assert [m for _, m in await storage.meters_by_key()] == meters
    assert made_in and threading.get_ident() not in made_in
