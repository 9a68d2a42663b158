"""SQLite storage of the balance: the consumption matrix the balance is computed
from, the hours to recompute, and the stored hourly balance of every group.

A part of ``SqliteStorage`` (a mixin): it uses the storage's reader (``_all``)
and its group-committing writer (``_submit``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from balans_edge.core.balance import BalanceSeries

BALANCE_COLUMNS = ("input", "consumed", "measured", "estimated", "missing",
                   "input_measured", "input_estimated", "input_missing")
MATRIX_CHUNK = 500
"""Meters per consumption query (well under SQLite's limit on bound parameters)."""


class BalanceTables:
    _all: Callable[..., Awaitable[list[Any]]]
    _submit: Callable[..., Awaitable[None]]

    async def consumption_matrix(self, meters: Sequence[int], t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
        hours = max(0, (t1 - t0) // 3600)
        values = np.full((len(meters), hours), np.nan)
        quality = np.full((len(meters), hours), 2, dtype=np.int8)
        keys = np.asarray(meters, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        for i in range(0, len(keys), MATRIX_CHUNK):
            chunk = keys[order[i : i + MATRIX_CHUNK]]
            marks = ", ".join("?" * len(chunk))
            rows = await self._all(
                f"SELECT meter, t, value, quality FROM consumption_hourly "
                f"WHERE meter IN ({marks}) AND t >= ? AND t < ?",
                (*chunk.tolist(), t0, t1),
            )
            if not rows:
                continue
            a = np.array([(r[0], r[1], np.nan if r[2] is None else r[2], r[3]) for r in rows], dtype=np.float64)
            row = order[i + np.searchsorted(chunk, a[:, 0].astype(np.int64))]
            col = ((a[:, 1].astype(np.int64) - t0) // 3600)
            values[row, col] = a[:, 2]
            quality[row, col] = a[:, 3].astype(np.int8)
        return values, quality

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

        hours = np.arange(t0, t1, 3600, dtype=np.int64)
        # Hours never computed come back as zeros; balance_queries.count_unknown says what they mean.
        data = {c: np.zeros((len(group_ids), len(hours)), dtype=np.float64 if i < 2 else np.int64)
                for i, c in enumerate(BALANCE_COLUMNS)}
        index = {g: i for i, g in enumerate(group_ids)}
        for i in range(0, len(group_ids), MATRIX_CHUNK):
            chunk = list(group_ids[i : i + MATRIX_CHUNK])
            marks = ", ".join("?" * len(chunk))
            rows = await self._all(
                f"SELECT group_id, t, {', '.join(BALANCE_COLUMNS)} FROM balance_hourly "
                f"WHERE group_id IN ({marks}) AND t >= ? AND t < ?",
                (*chunk, t0, t1),
            )
            if not rows:
                continue
            g = np.array([index[r[0]] for r in rows])
            h = (np.array([r[1] for r in rows], dtype=np.int64) - t0) // 3600
            values = np.array([tuple(r)[2:] for r in rows], dtype=np.float64)
            for j, c in enumerate(BALANCE_COLUMNS):
                data[c][g, h] = values[:, j]
        return BalanceSeries(list(group_ids), hours, **data)
