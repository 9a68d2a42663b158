"""SQLite storage of the command audit (the ``commands`` journal).

A part of ``SqliteStorage`` (a mixin). The journal is written only through
``command_append`` and ``command_update``, which only the actuation service
calls; the generic ``journal_append``/``journal_update`` refuse ``commands``
(``writable``), so no plugin can put a command on record that was not routed
and observed like the others."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


def writable(kind: str) -> str:
    """``kind`` if the generic journal methods may write it."""
    if kind == "commands":
        raise ValueError("the commands journal is written by the actuation service only (core.actuation)")
    return kind


class CommandJournal:
    _all: Callable[..., Awaitable[list[Any]]]
    _submit: Callable[..., Awaitable[None]]
    _append: Callable[[str, dict[str, Any]], Awaitable[int]]
    _update: Callable[[str, int, dict[str, Any]], Awaitable[None]]

    async def command_append(self, record: dict[str, Any]) -> int:
        return await self._append("commands", record)

    async def command_update(self, record_id: int, changes: dict[str, Any]) -> None:
        await self._update("commands", record_id, changes)

    async def commands(
        self,
        target: str | None = None,
        outcome: str | None = None,
        code: str | None = None,
        requested_by: str | None = None,
        t0: int | None = None,
        t1: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        where, args = ["1"], []
        for condition, value in (("target = ?", target), ("outcome = ?", outcome), ("code = ?", code),
                                 ("requested_by = ?", requested_by), ("t >= ?", t0), ("t < ?", t1)):
            if value is not None:
                where.append(condition)
                args.append(value)
        rows = await self._all(f"SELECT * FROM commands WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
                               (*args, limit))
        return [dict(r) for r in rows]

    async def settle_pending_commands(self, note: str) -> list[dict[str, Any]]:
        pending = [r[0] for r in await self._all("SELECT id FROM commands WHERE outcome = 'pending'")]
        if not pending:
            return []
        await self._submit([(
            "UPDATE commands SET outcome = 'failed', detail = CASE WHEN detail = '' THEN ? ELSE detail || '; ' || ? "
            "END WHERE id = ? AND outcome = 'pending'", [(note, note, i) for i in pending])])
        marks = ", ".join("?" * len(pending))
        return [dict(r) for r in await self._all(f"SELECT * FROM commands WHERE id IN ({marks}) ORDER BY id", pending)]
