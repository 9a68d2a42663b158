"""SQLite storage of export queues: one durable queue per export target, filled by
triggers in the same transaction as the data, emptied only when the target
accepted the points.

A part of ``SqliteStorage`` (a mixin): it uses the storage's reader (``_all``,
``_scalar``) and its group-committing writer (``_submit``).

Why triggers generated from the configuration (``export_configure``): a point
must be queued in the transaction that stores its data, whatever path stores
it (ingest, the interval and balance workers, a command-line recomputation,
the analytics journal), and the ingest path must stay fast. A trigger per
source table with one insert per target (``INSERT INTO export_queue_<id>``)
and its bound check costs about 2 µs per point and target (bench/export.py);
a generic trigger that looks up the targets in a table, a shared queue with a
per-target index and a depth counter, or triggers on the queue itself
measured two to four times that on the same machine.

A queue entry is a reference, (kind, k1, k2) such as (readings, meter, ts),
not a rendered point: the sender reads the row when it sends, so a row that
changed again before it was sent (an hour's consumption recomputed) goes out
once with its newest value, and queue entries stay small.

Bound: entries get consecutive ids (rowids: a new entry is the highest plus
one, and entries leave oldest first), so "the queue holds more than
``max_queue`` entries" is exactly "entry ``new id - max_queue`` still exists",
one rowid lookup in the trigger. ``block`` then aborts the write (the device is
not acknowledged and sends again); ``drop_oldest`` deletes that entry and
counts it. The depth shown is the id span (``max - min + 1``): exact, except
for the moment between the acknowledgements of two halves of a split batch.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from balans_edge.core.storage.errors import StorageError
from balans_edge.core.storage.export_repository import (
    EXPORT_KINDS,
    EXPORT_POLICIES,
    ExportBatch,
    ExportRepository,
    ExportTarget,
)
from balans_edge.core.storage.sqlite_balance import BALANCE_COLUMNS

KIND_CODES = {kind: i + 1 for i, kind in enumerate(EXPORT_KINDS)}
"""Kind numbers stored in queue entries (part of the on-disk format: never renumber)."""


@dataclass(frozen=True, slots=True)
class Feed:
    """One trigger: a write to ``table`` that queues points of some kinds."""

    name: str
    table: str
    event: str
    when: str
    keys: dict[str, tuple[str, str]]
    """kind -> SQL expressions of the entry's (k1, k2)."""


_BALANCE_KEYS = {"balance_hourly": ("new.group_id", "new.t"), "balance_daily": ("new.group_id", "new.t")}
FEEDS = (
    Feed("readings_inserted", "readings", "INSERT", "", {"readings": ("new.meter", "new.ts")}),
    # A back-filled counter reset re-chains stored readings: their register values change.
    Feed("readings_updated", "readings", "UPDATE OF pulses, flags",
         "old.pulses != new.pulses OR old.flags != new.flags", {"readings": ("new.meter", "new.ts")}),
    Feed("consumption_inserted", "consumption_hourly", "INSERT", "", {"consumption": ("new.meter", "new.t")}),
    # The interval worker rewrites whole ranges; only hours that really changed are sent again.
    Feed("consumption_updated", "consumption_hourly", "UPDATE",
         "old.value IS NOT new.value OR old.quality != new.quality", {"consumption": ("new.meter", "new.t")}),
    Feed("balance_inserted", "balance_hourly", "INSERT", "", _BALANCE_KEYS),
    Feed("balance_updated", "balance_hourly", "UPDATE",
         " OR ".join(f"old.{c} IS NOT new.{c}" for c in BALANCE_COLUMNS), _BALANCE_KEYS),
    Feed("findings_inserted", "findings", "INSERT", "", {"findings": ("new.id", "0")}),
    # A finding seen again or answered by an operator is sent again (same time, newest fields).
    Feed("findings_updated", "findings", "UPDATE", "", {"findings": ("new.id", "0")}),
    Feed("alarms_inserted", "alarms", "INSERT", "", {"alarms": ("new.id", "0")}),
    Feed("network_inserted", "topology_snapshots", "INSERT", "", {"network": ("new.module_id", "new.t")}),
)


@dataclass(frozen=True, slots=True)
class Source:
    """Where the points of a kind are stored: for back-fill and for reading them back."""

    table: str
    k1: str
    k2: str
    """Column of the entry's k2, or '0' when the kind has a one-column key."""
    time: str
    """SQL expression of the point's time, for back-fill ranges."""
    columns: str
    """The columns sent (the sender's input), as selected from alias ``s``."""


SOURCES = {
    "readings": Source("readings", "meter", "ts", "ts", "s.meter, s.ts, s.counter, s.pulses, s.status, s.flags"),
    "consumption": Source("consumption_hourly", "meter", "t", "t", "s.meter, s.t, s.value, s.quality"),
    "balance_hourly": Source("balance_hourly", "group_id", "t", "t",
                             "s.group_id, s.t, " + ", ".join(f"s.{c}" for c in BALANCE_COLUMNS)),
    # A day's point is computed by the sender from the stored hours of the day that
    # holds the entry's hour; the entry needs only its group to still exist.
    "balance_daily": Source("balance_hourly", "group_id", "t", "t", "q.k1 AS group_id, q.k2 AS t"),
    "findings": Source("findings", "id", "0", "coalesce(first_seen, t)", "s.*"),
    "alarms": Source("alarms", "id", "0", "t", "s.*"),
    "network": Source("topology_snapshots", "module_id", "t", "t", "s.*"),
}


def queue_table(target_id: int) -> str:
    return f"export_queue_{int(target_id)}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _bound(target_id: int, name: str, max_queue: int, when_full: str) -> str:
    """Statements after an insert into a queue that keep it within ``max_queue``."""
    q = queue_table(target_id)
    over = f"EXISTS (SELECT 1 FROM {q} WHERE id = last_insert_rowid() - {int(max_queue)})"
    if when_full == "block":
        return f"SELECT RAISE(ABORT, {_quote(f'export queue full: {name}')}) WHERE {over};\n"
    return (f"UPDATE export_targets SET dropped = dropped + 1 WHERE id = {int(target_id)} AND {over};\n"
            f"DELETE FROM {q} WHERE id = last_insert_rowid() - {int(max_queue)};\n")


def _source_join(kind: str, source: Source) -> str:
    """How the queue entries of a kind (alias ``q``) find their stored rows (alias ``s``)."""
    if kind == "balance_daily":
        return "JOIN groups s ON s.group_id = q.k1"
    if source.k2 == "0":
        return f"JOIN {source.table} s ON s.{source.k1} = q.k1"
    return f"JOIN {source.table} s ON s.{source.k1} = q.k1 AND s.{source.k2} = q.k2"


@dataclass(frozen=True, slots=True)
class _Row:
    """A target as stored: its id names its queue."""

    id: int
    name: str
    kinds: tuple[str, ...]
    max_queue: int
    when_full: str


def _trigger_statements(rows: Sequence[_Row], existing: set[str]) -> list[str]:
    """Drop the ``existing`` export triggers and create those the targets need.

    (No ``IF [NOT] EXISTS``: a statement that turns out to change nothing is
    read-only, and the writer runs statements with executemany, which refuses those.)"""
    statements = [f"DROP TRIGGER export_{feed.name}" for feed in FEEDS if f"export_{feed.name}" in existing]
    for feed in FEEDS:
        body = ""
        for row in rows:
            for kind, (k1, k2) in feed.keys.items():
                if kind in row.kinds:
                    body += (f"INSERT INTO {queue_table(row.id)} (kind, k1, k2, t) "
                             f"VALUES ({KIND_CODES[kind]}, {k1}, {k2}, unixepoch());\n")
                    body += _bound(row.id, row.name, row.max_queue, row.when_full)
        if body:
            when = f" WHEN {feed.when}" if feed.when else ""
            statements.append(f"CREATE TRIGGER export_{feed.name} AFTER {feed.event} ON {feed.table}{when}\n"
                              f"BEGIN\n{body}END")
    return statements


def _check(target: ExportTarget) -> None:
    unknown = sorted(set(target.kinds) - set(EXPORT_KINDS))
    if unknown:
        raise ValueError(f"export target {target.name}: unknown kind {unknown[0]!r}")
    if target.when_full not in EXPORT_POLICIES:
        raise ValueError(f"export target {target.name}: unknown policy {target.when_full!r}")
    if target.max_queue < 1:
        raise ValueError(f"export target {target.name}: max_queue must be at least 1")


class ExportQueues(ExportRepository):
    _all: Callable[..., Awaitable[list[Any]]]
    _scalar: Callable[..., Awaitable[Any]]
    _submit: Callable[..., Awaitable[None]]

    async def _export_rows(self) -> list[_Row]:
        rows = await self._all("SELECT id, name, kinds, max_queue, when_full FROM export_targets ORDER BY id")
        return [_Row(r[0], r[1], tuple(k for k in r[2].split(",") if k), r[3], r[4]) for r in rows]

    async def _schema_names(self, kind: str) -> set[str]:
        return {r[0] for r in await self._all("SELECT name FROM sqlite_master WHERE type = ?", (kind,))}

    async def _export_id(self, target: str) -> int:
        target_id = await self._scalar("SELECT id FROM export_targets WHERE name = ?", (target,))
        if target_id is None:
            raise StorageError(f"no export target {target!r} (start the server with it configured first)")
        return target_id

    async def export_configure(self, targets: Sequence[ExportTarget]) -> None:
        for target in targets:
            _check(target)
        existing = {r.name: r for r in await self._export_rows()}
        next_id = max((r.id for r in existing.values()), default=0) + 1
        wanted: list[_Row] = []
        for target in targets:
            row_id = existing[target.name].id if target.name in existing else next_id
            next_id += target.name not in existing
            wanted.append(_Row(row_id, target.name, tuple(target.kinds), target.max_queue, target.when_full))
        names = {r.name for r in wanted}
        statements: list[tuple[str, Any]] = [(
            "INSERT INTO export_targets (id, name, kinds, max_queue, when_full) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET kinds = excluded.kinds, max_queue = excluded.max_queue, "
            "when_full = excluded.when_full",
            [(r.id, r.name, ",".join(r.kinds), r.max_queue, r.when_full) for r in wanted],
        )]
        stale = [(name,) for name in existing if name not in names]
        if stale:
            statements.append(("UPDATE export_targets SET kinds = '' WHERE name = ?", stale))
        tables = await self._schema_names("table")
        for r in wanted:
            q = queue_table(r.id)
            if q not in tables:
                statements.append((f"CREATE TABLE {q} (id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, "
                                   "k1 NOT NULL, k2 INTEGER NOT NULL, t INTEGER NOT NULL)", [()]))
            elif r.when_full == "drop_oldest":
                # A smaller bound than before: drop the excess now, as a full queue would.
                statements.append((f"UPDATE export_targets SET dropped = dropped + (SELECT count(*) FROM {q} "
                                   f"WHERE id <= (SELECT max(id) FROM {q}) - ?) WHERE id = ?", [(r.max_queue, r.id)]))
                statements.append((f"DELETE FROM {q} WHERE id <= (SELECT max(id) FROM {q}) - ?", [(r.max_queue,)]))
        statements += [(sql, [()]) for sql in _trigger_statements(wanted, await self._schema_names("trigger"))]
        await self._submit(statements)

    async def export_take(self, target: str, limit: int, after: int = 0) -> ExportBatch:
        q = queue_table(await self._export_id(target))
        entries = await self._all(f"SELECT id, kind FROM {q} WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
        if not entries:
            return ExportBatch([], {})
        ids = [e[0] for e in entries]
        lo, hi = ids[0], ids[-1]
        present = {e[1] for e in entries}
        rows: dict[str, list[dict[str, Any]]] = {}
        for kind, code in KIND_CODES.items():
            if code not in present:
                continue
            source = SOURCES[kind]
            found = await self._all(
                f"SELECT q.id AS qid, {source.columns} FROM {q} q {_source_join(kind, source)} "
                "WHERE q.id BETWEEN ? AND ? AND q.kind = ? ORDER BY q.id", (lo, hi, code))
            rows[kind] = [dict(r) for r in found]
        return ExportBatch(ids, rows)

    async def export_ack(self, target: str, ids: Sequence[int], sent: int) -> None:
        target_id = await self._export_id(target)
        statements: list[tuple[str, Any]] = [
            (f"DELETE FROM {queue_table(target_id)} WHERE id BETWEEN ? AND ?", _runs(ids)),
            ("UPDATE export_targets SET sent = sent + ?, last_sent_at = ? WHERE id = ?",
             [(sent, int(time.time()), target_id)]),
        ]
        await self._submit(statements)

    async def export_dead_letter(self, target: str, ids: Sequence[int], status: int, message: str,
                                 lines: str, points: int) -> None:
        target_id = await self._export_id(target)
        now = int(time.time())
        await self._submit([
            ("INSERT INTO export_dead (target, t, status, message, points, lines) VALUES (?, ?, ?, ?, ?, ?)",
             [(target_id, now, status, message, points, lines)]),
            (f"DELETE FROM {queue_table(target_id)} WHERE id BETWEEN ? AND ?", _runs(ids)),
            ("UPDATE export_targets SET dead = dead + ?, last_error = ?, last_error_at = ? WHERE id = ?",
             [(points, f"HTTP {status}: {message}", now, target_id)]),
        ])

    async def export_resend(self, target: str | None = None, ids: Sequence[int] | None = None) -> int:
        where, args = ["d.resend = 0"], []
        if target is not None:
            where.append("d.target = ?")
            args.append(await self._export_id(target))
        if ids is not None:
            where.append(f"d.id IN ({', '.join('?' * len(ids))})" if ids else "0")
            args += list(ids)
        chosen = [r[0] for r in await self._all(f"SELECT d.id FROM export_dead d WHERE {' AND '.join(where)}",
                                                tuple(args))]
        if chosen:
            await self._submit([("UPDATE export_dead SET resend = 1 WHERE id = ?", [(i,) for i in chosen])])
        return len(chosen)

    async def export_resend_next(self, target: str) -> dict[str, Any] | None:
        rows = await self._all(
            "SELECT d.id, d.points, d.lines FROM export_dead d JOIN export_targets t ON t.id = d.target "
            "WHERE t.name = ? AND d.resend = 1 ORDER BY d.id LIMIT 1", (target,))
        return dict(rows[0]) if rows else None

    async def export_resent(self, target: str, dead_id: int, status: int, message: str) -> None:
        target_id = await self._export_id(target)
        now = int(time.time())
        if 200 <= status < 300:
            await self._submit([
                ("UPDATE export_targets SET sent = sent + (SELECT points FROM export_dead WHERE id = ?), "
                 "last_sent_at = ? WHERE id = ?", [(dead_id, now, target_id)]),
                ("DELETE FROM export_dead WHERE id = ?", [(dead_id,)]),
            ])
        else:
            await self._submit([
                ("UPDATE export_dead SET resend = 0, t = ?, status = ?, message = ? WHERE id = ?",
                 [(now, status, message, dead_id)]),
                ("UPDATE export_targets SET last_error = ?, last_error_at = ? WHERE id = ?",
                 [(f"HTTP {status}: {message}", now, target_id)]),
            ])

    async def export_note_failure(self, target: str, error: str, retries: int = 1) -> None:
        await self._submit([(
            "UPDATE export_targets SET retries = retries + ?, last_error = ?, last_error_at = ? WHERE name = ?",
            [(retries, error, int(time.time()), target)],
        )])

    async def export_state(self, target: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE name = ?", (target,)) if target is not None else ("", ())
        rows = [dict(r) for r in await self._all(f"SELECT * FROM export_targets {where} ORDER BY name", args)]
        tables = await self._schema_names("table")
        for row in rows:
            q = queue_table(row["id"])
            span = (await self._all(f"SELECT min(id), max(id) FROM {q}"))[0] if q in tables else (None, None)
            row["kinds"] = [k for k in row["kinds"].split(",") if k]
            row["depth"] = 0 if span[0] is None else span[1] - span[0] + 1
            row["oldest_t"] = None if span[0] is None else await self._scalar(f"SELECT t FROM {q} WHERE id = ?",
                                                                             (span[0],))
            row["dead_letters"] = await self._scalar("SELECT count(*) FROM export_dead WHERE target = ?",
                                                     (row["id"],))
        return rows

    async def export_dead_letters(self, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, args = ("WHERE t.name = ?", (target,)) if target is not None else ("", ())
        rows = await self._all(
            f"SELECT d.id, t.name AS target, d.t, d.status, d.message, d.points, d.lines, d.resend "
            f"FROM export_dead d JOIN export_targets t ON t.id = d.target {where} ORDER BY d.id DESC LIMIT ?",
            (*args, limit))
        return [{**dict(r), "resend": bool(r["resend"])} for r in rows]

    def _backfill_query(self, kind: str, after: tuple[Any, Any] | None, times: Sequence[int] | None,
                        ) -> tuple[str, list[Any]]:
        """Keys of stored points of a kind in a time range, after a key, in key order."""
        source = SOURCES[kind]
        k2 = source.k2
        where = [f"{source.time} >= ?", f"{source.time} < ?"]
        args: list[Any] = []
        if after is not None:
            where.append(f"{source.k1} > ?" if k2 == "0" else f"({source.k1}, {k2}) > (?, ?)")
            args += [after[0]] if k2 == "0" else list(after)
        if times is not None:
            where.append(f"{source.time} IN ({', '.join('?' * len(times))})")
            args += list(times)
        order = source.k1 if k2 == "0" else f"{source.k1}, {k2}"
        sql = f"SELECT DISTINCT {source.k1}, {k2} FROM {source.table} WHERE {' AND '.join(where)} ORDER BY {order}"
        return sql, args

    async def export_backfill(self, target: str, kind: str, t0: int, t1: int, after: tuple[Any, Any] | None,
                              limit: int, times: Sequence[int] | None = None) -> tuple[int, tuple[Any, Any] | None]:
        if kind not in SOURCES:
            raise ValueError(f"unknown export kind {kind!r}")
        target_id = await self._export_id(target)
        sql, args = self._backfill_query(kind, after, times)
        where_args = [t0, t1, *args]
        keys = [tuple(r) for r in await self._all(f"{sql} LIMIT ?", (*where_args, limit))]
        if not keys:
            return 0, None
        await self._submit([(f"INSERT INTO {queue_table(target_id)} (kind, k1, k2, t) VALUES (?, ?, ?, unixepoch())",
                             [(KIND_CODES[kind], k1, k2) for k1, k2 in keys])])
        return len(keys), keys[-1]

    async def export_backfill_count(self, kind: str, t0: int, t1: int, times: Sequence[int] | None = None) -> int:
        sql, args = self._backfill_query(kind, None, times)
        return await self._scalar(f"SELECT count(*) FROM ({sql})", (t0, t1, *args))

    async def export_remove(self, target: str) -> int:
        target_id = await self._export_id(target)
        depth = (await self.export_state(target))[0]["depth"]
        keep = [r for r in await self._export_rows() if r.name != target and r.kinds]
        triggers = _trigger_statements(keep, await self._schema_names("trigger"))
        statements: list[tuple[str, Any]] = [(sql, [()]) for sql in triggers]
        if queue_table(target_id) in await self._schema_names("table"):
            statements.append((f"DROP TABLE {queue_table(target_id)}", [()]))
        statements += [
            ("DELETE FROM export_dead WHERE target = ?", [(target_id,)]),
            ("DELETE FROM export_targets WHERE id = ?", [(target_id,)]),
        ]
        await self._submit(statements)
        return depth


def _runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted ids as (first, last) runs of consecutive ids: one range delete per run
    instead of one statement per entry (a batch is usually a single run)."""
    out: list[tuple[int, int]] = []
    for i in sorted(ids):
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out
