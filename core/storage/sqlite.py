"""SQLite backend: aiosqlite, WAL, synchronous=FULL, group commit.

Every write goes through one writer connection and a committer task. Writes
submitted while a transaction is being committed wait for the next one and are
committed together: one transaction, one fsync for all of them. So an
acknowledgement still means "on disk" (WAL with synchronous=FULL survives power
loss) while fsyncs do not cap throughput. Reads use a second connection and
see the last committed state, never a half-written batch; reads of many rows
(consumption and balance matrices, sums over long periods) use a third one in
a thread of its own, where their rows also become numpy arrays
(``sqlite_bulk``), so they hold neither the event loop nor the short reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import stat
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import numpy as np

from balans_edge.core.model import GroupInput, Meter, Resource
from balans_edge.core.storage.base import (
    REGISTRY_KINDS,
    DirtyRange,
    IngestWrite,
    MeterHead,
    ReadingRows,
    Storage,
    StorageError,
)
from balans_edge.core.storage.gateway import SqlGateway, Write
from balans_edge.core.storage.migrations import CORE, MigrationSet, trigger_owner
from balans_edge.core.storage.sqlite_balance import BalanceTables
from balans_edge.core.storage.sqlite_bulk import BulkReader
from balans_edge.core.storage.sqlite_journal import JournalTables
from balans_edge.core.storage.sqlite_migrations import migrate_all, owner_versions
from balans_edge.core.storage.sqlite_modules import ModuleReports, module_health_statements
from balans_edge.core.storage.sqlite_registry_history import RegistryHistory
from balans_edge.core.times import HOUR

log = logging.getLogger(__name__)

Statement = tuple[str, Iterable[Sequence[Any]]]

KEYS = {
    "concentrators": "concentrator_id",
    "modules": "module_id",
    "accounts": "account_id",
    "meters": "meter_id",
    "groups": "group_id",
}
READING_COLUMNS = "meter, ts, counter, pulses, status, flags"
_READING_COLUMNS_R = ", ".join(f"r.{c.strip()}" for c in READING_COLUMNS.split(","))
def _from_row(kind: str, row: aiosqlite.Row) -> Any:
    cls = REGISTRY_KINDS[kind]
    # An audit row written before a column existed (a group's formula) lacks it: the default holds.
    values = {f.name: row[f.name] for f in dataclasses.fields(cls) if not isinstance(row, dict) or f.name in row}
    if kind in ("meters", "groups"):
        values["resource"] = Resource(values["resource"])
    if kind == "meters":
        values["flags"] = frozenset(f for f in values["flags"].split(",") if f)
    if kind == "groups":
        values["inputs"] = tuple(
            GroupInput(i[1:], -1) if i.startswith("-") else GroupInput(i) for i in values["inputs"].split(",") if i
        )
    return cls(**values)


# The newest reading of each meter: one index probe per meter on the primary
# key (meter, ts) instead of a scan of every reading for ``GROUP BY meter``
# (CROSS JOIN keeps the meters as the outer loop: SQLite does not reorder it).
LATEST = (
    "SELECT r.meter, r.ts, r.counter, r.pulses, r.status, r.flags FROM meters m CROSS "
    "JOIN readings r ON r.meter = m.id AND r.ts = (SELECT max(ts) FROM readings WHERE meter = m.id)"
)
IN_CHUNK = 500
"""Meters per ``IN (...)`` list (well under SQLite's limit on bound parameters)."""

T = TypeVar("T")
OFF_LOOP_ROWS = 2000
"""Rows turned into registry objects in a worker thread from this many on."""


async def _objects(rows: list[aiosqlite.Row], make: Callable[[aiosqlite.Row], T]) -> list[T]:
    """Registry rows as objects; many of them in a worker thread, since 100,000
    meters take a second and a half of Python that would hold the event loop
    (and every concentrator waiting for its ACK) meanwhile."""
    if len(rows) < OFF_LOOP_ROWS:
        return [make(r) for r in rows]
    return await asyncio.to_thread(lambda: [make(r) for r in rows])


async def _pragma(db: aiosqlite.Connection, pragma: str) -> None:
    """Run a PRAGMA and close its cursor (an unfinished statement can pin a read snapshot)."""
    async with db.execute(f"PRAGMA {pragma}") as cursor:
        await cursor.fetchall()


def _private_file(path: Path) -> None:
    """Create the database file readable by its owner only (0600): it holds
    consumers' names, addresses and phones. SQLite gives the -wal and -shm files
    the database file's permissions, so creating it first covers them too (and
    needs no umask change, which would be process-wide). An existing file open
    to others is left as it is, with a warning."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("database %s is readable by others (mode %04o); it holds consumers' personal data: "
                    "chmod 600 it", path, mode)


@dataclass
class _Job:
    statements: list[Statement]
    future: asyncio.Future[None]


class SqliteStorage(RegistryHistory, BalanceTables, JournalTables, ModuleReports, Storage, SqlGateway):
    """Every core repository (``Storage``) and the SQL gateway for plugins' own tables."""

    dialect = "sqlite"

    def __init__(self, path: str | Path, *, max_group: int = 256) -> None:
        self.path = Path(path)
        self.max_group = max_group
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._bulk = BulkReader(self.path)
        """Reads of many rows, off the event loop and off ``_reader``'s queue."""
        self._pending: list[_Job] = []
        self._wakeup = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0
        """Transactions committed (fewer than jobs when group commit works)."""
        self.jobs = 0
        self._journal_ids: dict[str, int] = {}
        self._journal_lock = asyncio.Lock()

    # lifecycle -----------------------------------------------------------

    async def open(self, migrations: Sequence[MigrationSet] = ()) -> None:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _private_file(self.path)
        self._writer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=10000"):
                await _pragma(self._writer, pragma)
            await migrate_all(self._writer, migrations)
        except BaseException:
            # A refused or failed migration must not leak the connection (its
            # worker thread would keep the process alive).
            await self._writer.close()
            self._writer = None
            raise
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        self._reader.row_factory = aiosqlite.Row
        for pragma in ("busy_timeout=10000", "query_only=ON"):
            await _pragma(self._reader, pragma)
        await self._bulk.open()
        self._closing = False
        self._committer = asyncio.create_task(self._commit_loop(), name="sqlite-committer")

    async def close(self) -> None:
        if self._writer is None:
            return
        # The committer commits everything submitted, including writes that
        # arrive while closing, then exits; later writes get StorageError.
        self._closing = True
        self._wakeup.set()
        if self._committer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
        # Close our reader first: a read transaction it still holds would make the
        # checkpoint wait out the busy timeout.
        await self._reader.close()
        await self._bulk.close()
        await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await self._writer.close()
        self._writer = self._reader = None

    async def flush(self) -> None:
        await self._submit([])

    async def schema_version(self) -> int:
        return await self._scalar("PRAGMA user_version")

    async def schema_versions(self) -> dict[str, int]:
        return await owner_versions(self._read())

    async def drop_owner_triggers(self, running: Collection[str]) -> list[str]:
        keep = {CORE, *running}
        names = [r[0] for r in await self._all("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name")]
        gone = [n for n in names if trigger_owner(n) not in (None, *keep)]
        if gone:
            await self._submit([(f'DROP TRIGGER IF EXISTS "{n.replace(chr(34), chr(34) * 2)}"', [()]) for n in gone])
        return gone

    # group commit --------------------------------------------------------

    async def _submit(self, statements: list[Statement]) -> None:
        if self._writer is None or self._committer is None or self._committer.done():
            raise StorageError("storage is not open")
        # Materialise row iterators: a job may run twice (alone, after its group failed).
        statements = [(sql, rows if isinstance(rows, list) else list(rows)) for sql, rows in statements]
        job = _Job(statements, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._wakeup.set()
        await job.future

    async def _commit_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                jobs, self._pending = self._pending[: self.max_group], self._pending[self.max_group :]
                await self._commit_group(jobs)
            if self._closing:
                return

    async def _commit_group(self, jobs: list[_Job]) -> None:
        try:
            await self._transaction([s for job in jobs for s in job.statements])
        except Exception as exc:
            if len(jobs) == 1:
                self._settle(jobs[0], exc)
                return
            # One bad job must not fail the others that happened to share its
            # transaction: retry each alone.
            for job in jobs:
                try:
                    await self._transaction(job.statements)
                except Exception as single:
                    self._settle(job, single)
                else:
                    self._settle(job, None)
            return
        for job in jobs:
            self._settle(job, None)

    def _settle(self, job: _Job, exc: BaseException | None) -> None:
        self.jobs += 1
        if job.future.done():
            return
        if exc is None:
            job.future.set_result(None)
        else:
            log.warning("storage write failed: %s", exc)
            job.future.set_exception(StorageError(f"write failed: {exc}"))

    async def _transaction(self, statements: list[Statement]) -> None:
        db = self._writer
        if db is None:
            raise StorageError("storage is not open")
        if not statements:
            return
        await db.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in statements:
                if len(rows) == 1 and not rows[0]:
                    # Once, as it is: executemany refuses a statement that turns out to
                    # change nothing (DROP TRIGGER IF EXISTS of one that does not exist).
                    await db.execute(sql)
                else:
                    await db.executemany(sql, rows)
            await db.execute("COMMIT")
            self.commits += 1
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    # helpers ------------------------------------------------------------

    def _read(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StorageError("storage is not open")
        return self._reader

    async def _scalar(self, sql: str, args: Sequence[Any] = ()) -> Any:
        async with self._read().execute(sql, args) as cur:
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self._read().execute(sql, args) as cur:
            return list(await cur.fetchall())

    # plugins' own tables (SqlGateway) ----------------------------------------

    async def sql_write(self, statements: Sequence[Write]) -> None:
        await self._submit([(sql, [tuple(r) for r in rows]) for sql, rows in statements])

    async def sql_read(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._all(sql, args)]

    async def _reading_rows(self, sql: str, args: Sequence[Any]) -> ReadingRows:
        rows = await self._all(sql, args)
        return ReadingRows.from_tuples([tuple(r) for r in rows])

    # registry ------------------------------------------------------------

    async def registry_version(self) -> int:
        return await self._scalar("SELECT version FROM registry_state WHERE id = 1")

    async def registry_list(self, kind: str) -> list[Any]:
        key = KEYS[kind]
        rows = await self._all(f"SELECT * FROM {kind} ORDER BY {key}")
        return await _objects(rows, lambda r: _from_row(kind, r))

    async def registry_get(self, kind: str, key: str | int) -> Any | None:
        rows = await self._all(f"SELECT * FROM {kind} WHERE {KEYS[kind]} = ?", (key,))
        return _from_row(kind, rows[0]) if rows else None

    async def meter_keys(self) -> dict[str, int]:
        return {r[0]: r[1] for r in await self._all("SELECT meter_id, id FROM meters")}

    async def meters_by_key(self) -> list[tuple[int, Meter]]:
        rows = await self._all("SELECT * FROM meters ORDER BY id")
        return await _objects(rows, lambda r: (r["id"], _from_row("meters", r)))

    # ingest --------------------------------------------------------------

    async def load_heads(self) -> list[MeterHead]:
        rows = await self._all(
            "SELECT r.meter, r.ts, r.counter, r.pulses FROM readings r "
            "JOIN (SELECT meter, max(ts) AS ts FROM readings GROUP BY meter) m "
            "ON r.meter = m.meter AND r.ts = m.ts"
        )
        return [MeterHead(*r) for r in rows]

    async def reading_times(self, before: int) -> dict[int, int]:
        rows = await self._all(
            "SELECT m.id, (SELECT max(r.ts) FROM readings r WHERE r.meter = m.id AND r.ts <= ?) FROM meters m",
            (before,))
        return {r[0]: r[1] for r in rows if r[1] is not None}

    async def readings_around(self, meter: int, ts: int) -> ReadingRows:
        return await self._reading_rows(
            f"SELECT {READING_COLUMNS} FROM readings WHERE meter = ? AND ts >= "
            "coalesce((SELECT max(ts) FROM readings WHERE meter = ? AND ts < ?), ?) ORDER BY ts",
            (meter, meter, ts, ts),
        )

    async def readings_at(self, meters: np.ndarray, ts: np.ndarray) -> ReadingRows:
        if not len(ts):
            return ReadingRows.empty()
        return await self._reading_rows(
            "WITH s(meter, ts) AS (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') "
            f"FROM json_each(?)) SELECT {_READING_COLUMNS_R} FROM s JOIN readings r "
            "ON r.meter = s.meter AND r.ts = s.ts ORDER BY r.meter, r.ts",
            (json.dumps(np.stack([meters, ts], axis=1).tolist()),),
        )

    async def readings_spanning(self, spans: Sequence[tuple[int, int, int]]) -> ReadingRows:
        if not spans:
            return ReadingRows.empty()
        return await self._reading_rows(
            "WITH s(meter, lo, hi) AS (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
            "json_extract(value, '$[2]') FROM json_each(?)) "
            f"SELECT {_READING_COLUMNS_R} FROM s JOIN readings r ON r.meter = s.meter "
            "AND r.ts >= coalesce((SELECT max(p.ts) FROM readings p WHERE p.meter = s.meter AND p.ts < s.lo), s.lo) "
            "AND r.ts <= coalesce((SELECT min(n.ts) FROM readings n WHERE n.meter = s.meter AND n.ts > s.hi), s.hi) "
            "ORDER BY r.meter, r.ts",
            (json.dumps([[int(m), int(lo), int(hi)] for m, lo, hi in spans]),),
        )

    async def commit_ingest(self, write: IngestWrite) -> None:
        statements: list[Statement] = []
        if len(write.inserts):
            r = write.inserts
            statements.append(
                (
                    f"INSERT OR IGNORE INTO readings ({READING_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    zip(
                        r.meter.tolist(),
                        r.ts.tolist(),
                        r.counter.tolist(),
                        r.pulses.tolist(),
                        r.status.tolist(),
                        r.flags.tolist(),
                        strict=True,
                    ),
                )
            )
        if len(write.updates):
            u = write.updates
            statements.append(
                (
                    "UPDATE readings SET pulses = ?, flags = ? WHERE meter = ? AND ts = ?",
                    zip(u.pulses.tolist(), u.flags.tolist(), u.meter.tolist(), u.ts.tolist(), strict=True),
                )
            )
        if write.quarantine:
            statements.append(
                (
                    "INSERT OR IGNORE INTO quarantine (module_id, channel, ts, counter, status, reason, "
                    "received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(*q, write.received_at) for q in write.quarantine],
                )
            )
        if write.released:
            statements.append(
                ("DELETE FROM quarantine WHERE module_id = ? AND channel = ? AND ts = ?", write.released)
            )
        if write.dirty:
            statements.append(("INSERT INTO interval_dirty (meter, lo, hi) VALUES (?, ?, ?)", write.dirty))
        if write.module_health:
            statements += module_health_statements(write.module_health)
        if write.module_seen:
            statements.append(
                (
                    # Only rows that change: a re-sent batch then writes no page and needs no fsync.
                    "UPDATE modules SET last_seen = ? WHERE module_id = ? AND coalesce(last_seen, 0) < ?",
                    [(ts, m, ts) for m, ts in write.module_seen],
                )
            )
        await self._submit(statements)

    async def quarantine(self, limit: int = 1000) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT module_id, channel, ts, counter, status, reason, received_at FROM quarantine "
            "ORDER BY received_at DESC, module_id, channel, ts LIMIT ?",
            (limit,),
        )
        return [dict(r) for r in rows]

    async def quarantine_page(self, after: tuple[int, int, int] | None, limit: int) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT module_id, channel, ts, counter, status, reason, received_at FROM quarantine "
            "WHERE (module_id, channel, ts) > (?, ?, ?) ORDER BY module_id, channel, ts LIMIT ?",
            (*(after or (-1, -1, -1)), limit),
        )
        return [dict(r) for r in rows]

    async def quarantine_stats(self) -> dict[str, Any]:
        rows, oldest = (await self._all("SELECT count(*), min(received_at) FROM quarantine"))[0]
        dropped = {r[0]: r[1] for r in await self._all("SELECT reason, count FROM quarantine_dropped")}
        return {"rows": rows, "oldest_received_at": oldest, "dropped": dropped}

    async def prune_quarantine(self, max_rows: int, received_before: int) -> None:
        beyond = "max(0, (SELECT count(*) FROM quarantine) - ?)"
        await self._submit([
            ("UPDATE quarantine_dropped SET count = count + "
             "(SELECT count(*) FROM quarantine WHERE received_at < ?) WHERE reason = 'age'", [(received_before,)]),
            ("DELETE FROM quarantine WHERE received_at < ?", [(received_before,)]),
            (f"UPDATE quarantine_dropped SET count = count + {beyond} WHERE reason = 'size'", [(max_rows,)]),
            ("DELETE FROM quarantine WHERE (module_id, channel, ts) IN (SELECT module_id, channel, ts FROM quarantine "
             f"ORDER BY received_at, module_id, channel, ts LIMIT {beyond})", [(max_rows,)]),
        ])

    # readings and intervals ---------------------------------------------

    async def readings(self, meter: int, t0: int, t1: int) -> ReadingRows:
        return await self._reading_rows(
            f"SELECT {READING_COLUMNS} FROM readings WHERE meter = ? AND ts >= ? AND ts < ? ORDER BY ts",
            (meter, t0, t1),
        )

    async def readings_of(self, meters: list[int], t0: int, t1: int) -> ReadingRows:
        marks = ", ".join("?" * len(meters))
        return await self._reading_rows(
            f"SELECT {READING_COLUMNS} FROM readings WHERE meter IN ({marks}) AND ts >= ? AND ts < ? "
            "ORDER BY meter, ts",
            (*meters, t0, t1),
        )

    async def latest_readings(self, meters: Sequence[int] | None = None) -> ReadingRows:
        if meters is None:
            return ReadingRows.from_tuples([tuple(r) for r in await self._all(f"{LATEST} ORDER BY r.meter")])
        keys = sorted(set(int(m) for m in meters))
        out: list[tuple] = []
        for i in range(0, len(keys), IN_CHUNK):
            chunk = keys[i : i + IN_CHUNK]
            rows = await self._all(f"{LATEST} WHERE m.id IN ({', '.join('?' * len(chunk))}) ORDER BY r.meter", chunk)
            out += [tuple(r) for r in rows]
        return ReadingRows.from_tuples(out)

    async def has_readings(self, meter: int) -> bool:
        return bool(await self._scalar("SELECT EXISTS (SELECT 1 FROM readings WHERE meter = ?)", (meter,)))

    async def take_dirty(self, limit: int = 10000) -> list[DirtyRange]:
        rows = await self._all("SELECT id, meter, lo, hi FROM interval_dirty ORDER BY id LIMIT ?", (limit,))
        return [DirtyRange(*r) for r in rows]

    async def save_intervals(
        self, meter_rows: list[tuple[int, int, float | None, int]], done: list[int]
    ) -> None:
        statements: list[Statement] = []
        if meter_rows:
            statements.append(
                (
                    "INSERT INTO consumption_hourly (meter, t, value, quality) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (meter, t) DO UPDATE SET value = excluded.value, quality = excluded.quality",
                    meter_rows,
                )
            )
            # The balance of these hours changes with them (same transaction: nothing is lost in a crash).
            hours = [r[1] for r in meter_rows]
            statements.append(("INSERT INTO balance_dirty (lo, hi) VALUES (?, ?)", [(min(hours), max(hours) + HOUR)]))
        if done:
            statements.append(("DELETE FROM interval_dirty WHERE id = ?", [(i,) for i in done]))
        await self._submit(statements)

    async def hourly(self, meter: int, t0: int, t1: int) -> list[tuple[int, float | None, int]]:
        rows = await self._all(
            "SELECT t, value, quality FROM consumption_hourly WHERE meter = ? AND t >= ? AND t < ? ORDER BY t",
            (meter, t0, t1),
        )
        return [tuple(r) for r in rows]
