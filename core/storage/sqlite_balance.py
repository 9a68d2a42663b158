"""SQLite storage of the balance: the consumption matrix the balance is computed
from, the hours to recompute, and the stored hourly balance of every group.

A part of ``SqliteStorage`` (a mixin): it uses the storage's group-committing
writer (``_submit``), its reader (``_all``) for small reads, and its bulk
reader (``_bulk``) for everything that returns or scans many rows: those
queries and the numpy work on their rows run in the bulk reader's thread,
never on the event loop (see ``sqlite_bulk``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from balans_edge.core.model import Quality
from balans_edge.core.storage.base import BalanceSums, PeriodSums
from balans_edge.core.times import HOUR

if TYPE_CHECKING:
    from balans_edge.core.balance import BalanceSeries
    from balans_edge.core.storage.sqlite_bulk import BulkReader

BALANCE_COLUMNS = ("input", "consumed", "measured", "estimated", "missing",
                   "input_measured", "input_estimated", "input_missing")
MATRIX_CHUNK = 500
"""Meters per consumption query (well under SQLite's limit on bound parameters)."""

_PERIODS = "e(k, lo, hi) AS (SELECT key, value, lead(value) OVER (ORDER BY key) FROM json_each(?))"
"""The periods between consecutive edges (a JSON array). Each period's rows are
summed by a correlated subquery over one range of the primary key: a join with
GROUP BY would push every hour through a temporary sort first (measured twice as
slow on 440,000 hours), and SQLite has no lateral join to return several sums
per range, so the subquery returns them as one text row of numbers."""
_REAL = "%!.17g"
"""A float as text with every digit it has (read back, it is the same double)."""


def _numbers(rows: list[Any], width: int) -> np.ndarray:
    """(len(rows), width) float64 from one-column rows of space-separated numbers."""
    return np.array([r[0].split() for r in rows], dtype=np.float64).reshape(len(rows), width)


def _columns(rows: list[Any], width: int) -> np.ndarray:
    """Rows of numbers (None for NULL) as a (len(rows), width) float64 array (None: NaN)."""
    return np.array(rows, dtype=np.float64).reshape(len(rows), width)


class BalanceTables:
    _all: Callable[..., Awaitable[list[Any]]]
    _submit: Callable[..., Awaitable[None]]
    _bulk: BulkReader

    async def consumption_matrix(self, meters: Sequence[int], t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
        keys = np.asarray(meters, dtype=np.int64)

        def read(conn: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray]:
            hours = max(0, (t1 - t0) // HOUR)
            values = np.full((len(keys), hours), np.nan)
            quality = np.full((len(keys), hours), Quality.MISSING, dtype=np.int8)
            order = np.argsort(keys, kind="stable")
            for i in range(0, len(keys), MATRIX_CHUNK):
                chunk = keys[order[i : i + MATRIX_CHUNK]]
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT meter, t, value, quality FROM consumption_hourly "
                    f"WHERE meter IN ({marks}) AND t >= ? AND t < ?",
                    (*chunk.tolist(), t0, t1),
                ).fetchall()
                if not rows:
                    continue
                a = _columns(rows, 4)
                row = order[i + np.searchsorted(chunk, a[:, 0].astype(np.int64))]
                col = (a[:, 1].astype(np.int64) - t0) // HOUR
                values[row, col] = a[:, 2]
                quality[row, col] = a[:, 3].astype(np.int8)
            return values, quality

        return await self._bulk.run(read)

    async def consumption_periods(self, meter: int, edges: np.ndarray) -> PeriodSums:
        def read(conn: sqlite3.Connection) -> PeriodSums:
            rows = conn.execute(
                f"WITH {_PERIODS} SELECT (SELECT printf('{_REAL} %d %d %d', total(c.value), count(c.value), "
                "count(*), coalesce(max(c.quality), 0)) FROM consumption_hourly c "
                "WHERE c.meter = ? AND c.t >= e.lo AND c.t < e.hi) FROM e WHERE e.hi IS NOT NULL ORDER BY e.k",
                (json.dumps(np.asarray(edges).tolist()), meter),
            ).fetchall()
            a = _numbers(rows, 4)
            return PeriodSums(a[:, 0].copy(), *(a[:, j].astype(np.int64) for j in (1, 2, 3)))

        return await self._bulk.run(read)

    async def take_balance_dirty(self, limit: int = 10000) -> list[tuple[int, int, int]]:
        rows = await self._all("SELECT id, lo, hi FROM balance_dirty ORDER BY id LIMIT ?", (limit,))
        return [tuple(r) for r in rows]

    async def save_balance(self, series: BalanceSeries, done: list[int]) -> None:
        hours = len(series.t)
        rows = list(zip(
            np.repeat(np.array(series.group_ids, dtype=object), hours).tolist(),
            np.tile(series.t, len(series.group_ids)).tolist(),
            *(getattr(series, c).ravel().tolist() for c in BALANCE_COLUMNS),
            strict=True,
        ))
        statements: list[tuple[str, Any]] = []
        if rows:
            names = ", ".join(BALANCE_COLUMNS)
            updates = ", ".join(f"{c} = excluded.{c}" for c in BALANCE_COLUMNS)
            statements.append((
                f"INSERT INTO balance_hourly (group_id, t, {names}) VALUES (?, ?{', ?' * len(BALANCE_COLUMNS)}) "
                f"ON CONFLICT (group_id, t) DO UPDATE SET {updates}",
                rows,
            ))
        if done:
            statements.append(("DELETE FROM balance_dirty WHERE id = ?", [(i,) for i in done]))
        if statements:
            await self._submit(statements)

    async def balance(self, group_ids: Sequence[str], t0: int, t1: int) -> BalanceSeries:
        from balans_edge.core.balance import BalanceSeries

        groups = list(group_ids)

        def read(conn: sqlite3.Connection) -> BalanceSeries:
            hours = np.arange(t0, t1, HOUR, dtype=np.int64)
            # Hours never computed come back as zeros; balance_queries.count_unknown says what they mean.
            data = {c: np.zeros((len(groups), len(hours)), dtype=np.float64 if i < 2 else np.int64)
                    for i, c in enumerate(BALANCE_COLUMNS)}
            index = {g: i for i, g in enumerate(groups)}
            for i in range(0, len(groups), MATRIX_CHUNK):
                chunk = groups[i : i + MATRIX_CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT group_id, t, {', '.join(BALANCE_COLUMNS)} FROM balance_hourly "
                    f"WHERE group_id IN ({marks}) AND t >= ? AND t < ?",
                    (*chunk, t0, t1),
                ).fetchall()
                if not rows:
                    continue
                g = np.array([index[r[0]] for r in rows], dtype=np.int64)
                values = _columns([r[1:] for r in rows], 1 + len(BALANCE_COLUMNS))
                h = (values[:, 0].astype(np.int64) - t0) // HOUR
                for j, c in enumerate(BALANCE_COLUMNS):
                    data[c][g, h] = values[:, j + 1]
            return BalanceSeries(groups, hours, **data)

        return await self._bulk.run(read)

    async def balance_periods(self, group_ids: Sequence[str], edges: np.ndarray) -> BalanceSums:
        from balans_edge.core.balance import BalanceSeries

        groups = list(group_ids)
        edges = np.asarray(edges, dtype=np.int64)
        members = "b.measured + b.estimated + b.missing"
        inputs = "b.input_measured + b.input_estimated + b.input_missing"
        sums = [f"total(b.{c})" if i < 2 else f"coalesce(sum(b.{c}), 0)" for i, c in enumerate(BALANCE_COLUMNS)]
        # What storage cannot tell from a sum: how many hours counted any meter at all,
        # and how many counted members but no input meter (balance_queries decides
        # what the others mean).
        sums += [f"coalesce(sum({members} + {inputs} > 0), 0)", f"coalesce(sum({members} > 0 AND {inputs} = 0), 0)"]
        formats = " ".join(_REAL if i < 2 else "%d" for i in range(len(sums)))

        def read(conn: sqlite3.Connection) -> BalanceSums:
            rows = conn.execute(
                f"WITH {_PERIODS} SELECT (SELECT printf('{formats}', {', '.join(sums)}) FROM balance_hourly b "
                "WHERE b.group_id = g.value AND b.t >= e.lo AND b.t < e.hi) "
                "FROM json_each(?) g, e WHERE e.hi IS NOT NULL ORDER BY g.key, e.k",
                (json.dumps(edges.tolist()), json.dumps(groups, ensure_ascii=False)),
            ).fetchall()
            a = _numbers(rows, len(sums)).reshape(len(groups), max(len(edges) - 1, 0), len(sums))
            data = {c: a[:, :, j].copy() if j < 2 else a[:, :, j].astype(np.int64)
                    for j, c in enumerate(BALANCE_COLUMNS)}
            counted, blind = (a[:, :, j].astype(np.int64) for j in (len(BALANCE_COLUMNS), len(BALANCE_COLUMNS) + 1))
            return BalanceSums(BalanceSeries(groups, edges[:-1].copy(), **data), counted, blind)

        return await self._bulk.run(read)
