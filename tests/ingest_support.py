"""Helpers shared by the ingest tests: storages with recording and fault injection, readings, lookups."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from balans_edge.core.bus import EventBus
from balans_edge.core.ingest import Ingest, IngestSettings
from balans_edge.core.model import (
    Meter,
    Quality,
    RadioModule,
    RawReading,
    ReadingFlag,
    Resource,
    Status,
)
from balans_edge.core.storage import IngestWrite, StorageError
from balans_edge.core.storage.sqlite import SqliteStorage

H = 3600
T0 = 1_705_276_800  # 2024-01-15 00:00:00 UTC
NOW = T0 + 30 * 86400
MODULE = 1001
WEIGHT = 0.001  # 1 pulse per litre, in m3
RESET = int(Status.COUNTER_RESET)
EPOCH = int(ReadingFlag.EPOCH_START)
IMPLICIT = int(ReadingFlag.IMPLICIT_RESET)
BACK = int(ReadingFlag.BACKWARDS)
MEASURED, ESTIMATED, MISSING = Quality.MEASURED, Quality.ESTIMATED, Quality.MISSING


def meter(meter_id: str, channel: int = 1, module: int = MODULE, install: int = T0 - 86400, **kw) -> Meter:
    return Meter(
        meter_id=meter_id,
        resource=Resource.WATER,
        unit="m3",
        pulse_weight=WEIGHT,
        install_time=install,
        module_id=module,
        channel=channel,
        **kw,
    )


def r(ts: int, counter: int, status: int = 0, channel: int = 1, module: int = MODULE) -> RawReading:
    return RawReading(module_id=module, channel=channel, ts=ts, counter=counter, status=status)


def new_ingest(storage: SqliteStorage, bus: EventBus | None = None, now: int = NOW) -> Ingest:
    # registry_check_s=0: registry changes made by a test are seen by the next batch.
    return Ingest(storage, IngestSettings(registry_check_s=0), bus=bus, clock=lambda: now)


class RecordingStorage(SqliteStorage):
    """Keeps every IngestWrite so tests can check updates and dirty ranges."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes: list[IngestWrite] = []

    async def commit_ingest(self, write: IngestWrite) -> None:
        self.writes.append(write)
        await super().commit_ingest(write)


class FaultyStorage(SqliteStorage):
    """Fault injection: the next commit_ingest fails.

    ``mode`` "refuse": commit_ingest raises StorageError before anything is
    submitted (the database is unavailable). ``mode`` "midway": the batch's
    statements run inside the real transaction, then the disk fails before
    COMMIT, so the rollback path is exercised.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail_next: str | None = None
        self._fail_transaction = False

    async def commit_ingest(self, write: IngestWrite) -> None:
        mode, self.fail_next = self.fail_next, None
        if mode == "refuse":
            raise StorageError("database unavailable (injected)")
        self._fail_transaction = mode == "midway"
        await super().commit_ingest(write)

    async def _transaction(self, statements) -> None:
        if not self._fail_transaction or not statements:
            return await super()._transaction(statements)
        self._fail_transaction = False
        db = self._writer
        await db.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in statements:
                await db.executemany(sql, rows)
            raise sqlite3.OperationalError("disk I/O error (injected)")
        except BaseException:
            await db.execute("ROLLBACK")
            raise


async def open_storage(path: Path, cls: type[SqliteStorage] = SqliteStorage, meters: list[Meter] | None = None):
    s = cls(path)
    await s.open()
    modules = sorted({m.module_id for m in meters or [] if m.module_id is not None})
    await s.registry_apply({"modules": [RadioModule(mod, channels=0b111) for mod in modules], "meters": meters or []})
    return s


async def two_meters(tmp_path: Path) -> RecordingStorage:
    """The tests' usual storage: meters W1 and W2 on channels 1 and 2 of one module."""
    return await open_storage(tmp_path / "edge.db", RecordingStorage, [meter("W1"), meter("W2", channel=2)])


async def key(storage: SqliteStorage, meter_id: str = "W1") -> int:
    return (await storage.meter_keys())[meter_id]


async def stored(storage: SqliteStorage, meter_id: str = "W1") -> list[tuple[int, int, int, int, int]]:
    """(ts, counter, pulses, status, flags) of every stored reading of a meter."""
    rows = await storage.readings(await key(storage, meter_id), 0, 2**40)
    return list(
        zip(
            rows.ts.tolist(),
            rows.counter.tolist(),
            rows.pulses.tolist(),
            rows.status.tolist(),
            rows.flags.tolist(),
            strict=True,
        )
    )


def table(path: Path, name: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT * FROM {name} ORDER BY 1, 2, 3").fetchall()


async def hours(storage: SqliteStorage, t0: int, t1: int, meter_id: str = "W1") -> list[tuple[int, float | None, int]]:
    return await storage.hourly(await key(storage, meter_id), t0, t1)


def approx_hours(rows: list[tuple[int, float | None, int]]) -> list[tuple[int, object, int]]:
    return [(t, None if v is None else pytest.approx(v, abs=1e-12), q) for t, v, q in rows]
