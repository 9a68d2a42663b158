"""The durable export queues in SQLite: filled in the same transaction as the
data, one per target with its own kinds, bounded with drop_oldest or block,
emptied only by acknowledgement, back-filled from history."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from balans_edge.core.balance_worker import BalanceWorker
from balans_edge.core.ingest import Ingest
from balans_edge.core.intervals import IntervalSettings, IntervalWorker
from balans_edge.core.model import Group, GroupInput, RawReading, Resource
from balans_edge.core.storage.base import StorageError
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugins.dmesh.repository import DmeshRepository, ModuleRoute
from balans_edge.plugins.export.feeds import EXPORT_KINDS, FEEDS, SOURCES
from balans_edge.plugins.export.plugin import MIGRATIONS
from balans_edge.plugins.export.records import ExportTarget
from balans_edge.plugins.export.repository import ExportRepository

from conftest import T0, small_site

NOW = T0 + 30 * 86400
KEYS = {"readings": "meter", "consumption": "meter", "balance_hourly": "group_id", "balance_daily": "group_id",
        "network": "module_id"}


def target(name: str = "t", kinds: tuple[str, ...] = ("readings",), max_queue: int = 1000,
           when_full: str = "drop_oldest") -> ExportTarget:
    return ExportTarget(name, kinds, max_queue, when_full)


def readings(n: int, start: int = 0, channel: int = 1) -> list[RawReading]:
    return [RawReading(1001, channel, T0 + i * 600, i * 10) for i in range(start, start + n)]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    storage = SqliteStorage(tmp_path / "balans.db")
    await storage.open(migrations=[MIGRATIONS])
    await storage.registry_apply(small_site())
    yield storage
    await storage.close()


@pytest.fixture
def queues(site: SqliteStorage) -> ExportRepository:
    """The export plugin's repository, on the storage's SQL gateway as the plugin has it."""
    return ExportRepository(site)


def ingest_of(storage: SqliteStorage) -> Ingest:
    return Ingest(storage, clock=lambda: NOW)


async def queued(queues: ExportRepository, name: str) -> list[tuple[str, int, int]]:
    """(kind, key, time) of every queued entry whose source row exists, oldest first."""
    batch = await queues.take(name, 10**6)
    out = []
    for kind, rows in batch.rows.items():
        for r in rows:
            key = r[KEYS.get(kind, "id")]
            out.append((r["qid"], kind, key, r.get("ts", r.get("t"))))
    return [x[1:] for x in sorted(out)]


async def depth(queues: ExportRepository, name: str) -> int:
    return (await queues.state(name))[0]["depth"]


async def test_points_are_queued_in_the_transaction_that_stores_them(
    site: SqliteStorage, queues: ExportRepository, tmp_path: Path
) -> None:
    await queues.configure([target()])
    await ingest_of(site).ingest(readings(3))
    assert await queued(queues, "t") == [("readings", 1, T0 + i * 600) for i in range(3)]

    # A write that fails as a whole leaves neither the readings nor their queue entries.
    rows = [(1, T0 + 90_000, 5, 5, 0, 0)]
    with pytest.raises(StorageError):
        await site._submit([("INSERT INTO readings (meter, ts, counter, pulses, status, flags) "
                             "VALUES (?, ?, ?, ?, ?, ?)", rows), ("INSERT INTO no_such_table VALUES (?)", [(1,)])])
    assert len(await site.readings(1, 0, 2**40)) == 3
    assert await depth(queues, "t") == 3

    # Another process writing the same database (a command-line recomputation) queues too.
    db = sqlite3.connect(tmp_path / "balans.db", isolation_level=None)
    db.execute("INSERT INTO readings (meter, ts, counter, pulses, status, flags) VALUES (2, ?, 1, 1, 0, 0)", (T0,))
    db.close()
    assert (await queued(queues, "t"))[-1] == ("readings", 2, T0)


async def test_each_target_has_its_own_queue_with_its_kinds(site: SqliteStorage, queues: ExportRepository) -> None:
    await queues.configure([target("raw", ("readings",)),
                                 target("hours", ("consumption", "balance_hourly", "balance_daily"))])
    await site.registry_apply({"groups": [Group("H-1", Resource.WATER, "m3", (GroupInput("W-1"),), level="house")]})
    await ingest_of(site).ingest([RawReading(1001, 2, T0 + i * 3600, i * 100) for i in range(4)])
    await IntervalWorker(site, IntervalSettings(debounce_s=0)).process()
    await BalanceWorker(site).process()

    raw = await queued(queues, "raw")
    assert [k for k, _, _ in raw] == ["readings"] * 4
    hours = await queued(queues, "hours")
    assert {k for k, _, _ in hours} == {"consumption", "balance_hourly", "balance_daily"}
    assert sorted(t for k, key, t in hours if k == "consumption") == [T0 + i * 3600 for i in range(3)]

    # Acknowledging one target's entries leaves the other's queue as it was.
    batch = await queues.take("raw", 2)
    await queues.ack("raw", batch.ids, sent=2)
    assert await depth(queues, "raw") == 2
    assert await queued(queues, "hours") == hours
    assert (await queues.state("raw"))[0]["sent"] == 2


async def test_a_recomputation_that_changes_nothing_queues_nothing(
    site: SqliteStorage, queues: ExportRepository
) -> None:
    await queues.configure([target(kinds=("consumption",))])
    rows = [(1, T0, 1.5, 0), (1, T0 + 3600, None, 2)]
    await site.save_intervals(rows, [])
    assert await depth(queues, "t") == 2
    await site.save_intervals(rows, [])  # the same values again
    assert await depth(queues, "t") == 2
    await site.save_intervals([(1, T0 + 3600, 2.0, 1)], [])  # a missing hour became known
    assert await depth(queues, "t") == 3
    batch = await queues.take("t", 10)
    assert [(r["t"], r["value"], r["quality"]) for r in batch.rows["consumption"]][-1] == (T0 + 3600, 2.0, 1)


async def test_a_full_drop_oldest_queue_keeps_the_newest_and_counts_the_dropped(
    site: SqliteStorage, queues: ExportRepository
) -> None:
    await queues.configure([target(max_queue=5)])
    ingest = ingest_of(site)
    for k in range(4):
        await ingest.ingest(readings(3, start=3 * k))
    state = (await queues.state("t"))[0]
    assert (state["depth"], state["dropped"]) == (5, 7)
    assert [t for _, _, t in await queued(queues, "t")] == [T0 + i * 600 for i in range(7, 12)]

    # Lowering the bound drops the excess at once.
    await queues.configure([target(max_queue=2)])
    state = (await queues.state("t"))[0]
    assert (state["depth"], state["dropped"]) == (2, 10)


async def test_a_full_block_queue_refuses_the_whole_write_until_it_drains(
    site: SqliteStorage, queues: ExportRepository
) -> None:
    await queues.configure([target(max_queue=4, when_full="block"), target("other", max_queue=100)])
    ingest = ingest_of(site)
    await ingest.ingest(readings(3))
    with pytest.raises(StorageError, match="export queue full: t"):
        await ingest.ingest(readings(2, start=3))  # the second one would not fit
    # Nothing of the refused batch is stored or queued anywhere: the device sends it again.
    assert len(await site.readings(1, 0, 2**40)) == 3
    assert (await depth(queues, "t"), await depth(queues, "other")) == (3, 3)

    batch = await queues.take("t", 2)
    await queues.ack("t", batch.ids, sent=2)
    result = await ingest.ingest(readings(2, start=3))
    assert result.accepted == 2
    assert (await depth(queues, "t"), await depth(queues, "other")) == (3, 5)


async def test_findings_alarms_and_network_reports_are_queued(site: SqliteStorage, queues: ExportRepository) -> None:
    await queues.configure([target(kinds=("findings", "alarms", "network"))])
    finding_id, _ = await site.record_finding({"detector": "d", "subject": "W-1", "kind": "leak", "severity": "warning",
                                               "message": "m", "t": T0, "data": {}})
    await site.record_finding({"detector": "d", "subject": "W-1", "kind": "leak", "severity": "critical",
                               "message": "m2", "t": T0 + 60, "data": {}})  # seen again: sent again
    alarm_id = await site.journal_append("alarms", {"t": T0, "source": "d", "severity": "warning", "message": "a",
                                                    "data": {}})
    await DmeshRepository(site, site).store_topology(7, T0, [ModuleRoute(1001, 0, 1, -70, 3600, 0x0102, 3, 0)])
    got = await queued(queues, "t")
    assert got == [("findings", finding_id, T0), ("findings", finding_id, T0), ("alarms", alarm_id, T0),
                   ("network", 1001, T0)]


async def test_entries_whose_rows_are_gone_are_taken_without_rows(
    site: SqliteStorage, queues: ExportRepository
) -> None:
    await queues.configure([target(kinds=("balance_hourly",))])
    await site._submit([("INSERT INTO balance_hourly VALUES ('G', ?, 1, 1, 1, 0, 0, 1, 0, 0)", [(T0,)])])
    await site._submit([("DELETE FROM balance_hourly WHERE group_id = 'G'", [()])])
    batch = await queues.take("t", 10)
    assert len(batch.ids) == 1
    assert batch.rows["balance_hourly"] == []


async def test_backfill_pages_through_history_in_key_order(site: SqliteStorage, queues: ExportRepository) -> None:
    await ingest_of(site).ingest(readings(5) + readings(4, channel=2))
    await queues.configure([target()])
    assert await depth(queues, "t") == 0
    t0, t1 = T0 + 600, T0 + 7 * 600
    assert await queues.backfill_count("readings", t0, t1) == 4 + 3
    n, after = await queues.backfill("t", "readings", t0, t1, None, 4)
    assert (n, after) == (4, (1, T0 + 4 * 600))
    n, after = await queues.backfill("t", "readings", t0, t1, after, 4)
    assert (n, after) == (3, (2, T0 + 3 * 600))
    assert await queues.backfill("t", "readings", t0, t1, after, 4) == (0, None)
    assert [(key, t) for _, key, t in await queued(queues, "t")] == [
        *((1, T0 + i * 600) for i in range(1, 5)), *((2, T0 + i * 600) for i in range(1, 4))]


async def test_targets_no_longer_configured_stop_collecting_and_can_be_removed(
    site: SqliteStorage, queues: ExportRepository
) -> None:
    await queues.configure([target("a"), target("b")])
    ingest = ingest_of(site)
    await ingest.ingest(readings(2))
    await queues.configure([target("a")])  # b left the configuration: its queue is kept
    await ingest.ingest(readings(2, start=2))
    assert (await depth(queues, "a"), await depth(queues, "b")) == (4, 2)
    assert (await queues.state("b"))[0]["kinds"] == []

    await queues.dead_letter("a", (await queues.take("a", 1)).ids, 400, "bad", "x y=1 1", 1)
    assert await queues.remove("a") == 3
    assert [r["name"] for r in await queues.state()] == ["b"]
    assert await queues.dead_letters() == []
    await ingest.ingest(readings(2, start=4))  # no trigger refers to the removed queue
    assert len(await site.readings(1, 0, 2**40)) == 6
    assert np.array_equal((await site.readings(1, 0, 2**40)).counter, np.arange(6) * 10)


async def test_the_plugins_description_of_cores_tables_matches_cores_schema(site: SqliteStorage) -> None:
    """The feeds and sources (feeds.py) are the one place the plugin names core's tables
    and columns: each must exist as core's migrations make them."""
    columns: dict[str, set[str]] = {}
    for table in {f.table for f in FEEDS} | {s.table for s in SOURCES.values()} | {"groups"}:
        rows = await site.sql_read(f"SELECT name FROM pragma_table_info('{table}')")
        columns[table] = {r["name"] for r in rows}
        assert columns[table], f"no table {table}"
    for feed in FEEDS:
        named = {c for k1, k2 in feed.keys.values() for c in (k1, k2) if c} | set(feed.changed)
        assert named <= columns[feed.table], feed.name
    for kind, source in SOURCES.items():
        named = {source.k1, source.k2, *source.time, *(source.columns or ())} - {None}
        assert named <= columns[source.table], kind
        assert source.exists_in is None or source.k1 in columns[source.exists_in]
    assert {k for f in FEEDS for k in f.keys} == set(SOURCES) == set(EXPORT_KINDS)


async def test_entries_acknowledged_out_of_order_leave_gaps_that_are_taken_exactly(
    site: SqliteStorage, queues: ExportRepository
) -> None:
    await queues.configure([target()])
    await ingest_of(site).ingest(readings(6))
    first = await queues.take("t", 6)
    await queues.ack("t", first.ids[1:3], sent=2)  # the second half of a split batch went first
    batch = await queues.take("t", 3)
    assert batch.ids == [first.ids[0], *first.ids[3:5]]
    assert [r["qid"] for r in batch.rows["readings"]] == batch.ids
    assert (await queues.take("t", 10, after=batch.ids[-1])).ids == first.ids[5:]
    assert await depth(queues, "t") == first.ids[-1] - first.ids[0] + 1  # the id span (docs/export.md)
