"""SQLite storage of what radio modules report about themselves: the health
that comes with their readings (``module_reports``, written in the ingest
transaction) and their place in the network (the registry's module rows).

A part of ``SqliteStorage`` (a mixin): it uses the storage's reader (``_all``)
and its group-committing writer (``_submit``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from balans_edge.core.calendar import HOUR
from balans_edge.core.storage.readings_repository import ModuleHealth, ModuleLink

FOREVER = 2**62
"""``t <= FOREVER``: no bound in time."""


def module_health_statements(health: Sequence[ModuleHealth]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The statements that store modules' health reports with their readings
    (part of the ingest transaction; run before ``last_seen`` moves on, so that
    a retransmitted older report does not overwrite newer values)."""
    return [
        (
            "UPDATE modules SET battery_mv = ?, rssi = ?, hops = coalesce(?, hops) "
            "WHERE module_id = ? AND coalesce(last_seen, 0) <= ?",
            [(h.battery_mv, h.rssi, h.hops, h.module_id, h.ts) for h in health],
        ),
        (
            "INSERT OR IGNORE INTO module_reports (module_id, t, battery_mv, rssi, hops) "
            "SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM modules WHERE module_id = ?)",
            [(h.module_id, h.ts - h.ts % HOUR, h.battery_mv, h.rssi, h.hops, h.module_id) for h in health],
        ),
    ]


class ModuleReports:
    """``ReadingRepository``'s methods on what modules report (besides readings)."""

    _all: Callable[..., Awaitable[list[Any]]]
    _submit: Callable[..., Awaitable[None]]

    async def update_module_links(self, t: int, links: Sequence[ModuleLink]) -> None:
        if not links:
            return
        await self._submit(
            [
                (
                    "UPDATE modules SET parent_id = ?, hops = ?, rssi = ?, battery_mv = ?, firmware = ?, "
                    "last_seen = max(coalesce(last_seen, 0), ?) WHERE module_id = ?",
                    [(k.parent_id, k.hops, k.rssi, k.battery_mv, k.firmware, t, k.module_id) for k in links],
                ),
            ]
        )

    async def module_reports(self, module_id: int, limit: int = 1000,
                             before: int | None = None) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT module_id, t, battery_mv, rssi, hops FROM module_reports WHERE module_id = ? AND t <= ? "
            "ORDER BY t DESC LIMIT ?",
            (module_id, FOREVER if before is None else before, limit),
        )
        return [dict(r) for r in rows]

    async def latest_module_reports(self, before: int) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT r.module_id, r.t, r.battery_mv, r.rssi, r.hops FROM module_reports r "
            "JOIN (SELECT module_id, max(t) AS t FROM module_reports "
            "WHERE t <= ? GROUP BY module_id) m ON r.module_id = m.module_id AND r.t = m.t ORDER BY r.module_id",
            (before,),
        )
        return [dict(r) for r in rows]
