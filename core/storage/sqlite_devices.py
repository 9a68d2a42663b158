"""SQLite storage of what concentrators report besides readings: module events,
topology snapshots, command and firmware results, and the connection log.

A part of ``SqliteStorage`` (a mixin): it uses the storage's reader (``_all``)
and its group-committing writer (``_submit``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from balans_edge.core.storage.devices_repository import (
    CONNECTION_EVENTS,
    ConnectionEvent,
    DeviceRepository,
    ModuleEvent,
    ModuleRoute,
)
from balans_edge.core.storage.readings_repository import ModuleHealth
from balans_edge.core.times import hour_floor

SNAPSHOT_COLUMNS = "module_id, t, concentrator_id, parent_id, hops, rssi, battery_mv, fw_version, channels, state"


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
            [(h.module_id, hour_floor(h.ts), h.battery_mv, h.rssi, h.hops, h.module_id) for h in health],
        ),
    ]


def _snapshot_row(concentrator_id: int, t: int, r: ModuleRoute) -> tuple[int, ...]:
    return (r.module_id, t, concentrator_id, r.parent_id, r.hops, r.rssi, r.battery_mv, r.fw_version, r.channels,
            r.state)  # fmt: skip


def _where(filters: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause of the filters whose value is given, and its arguments."""
    used = {c: v for c, v in filters.items() if v is not None}
    return ("WHERE " + " AND ".join(used) if used else ""), tuple(used.values())


class DeviceReports(DeviceRepository):
    _all: Callable[..., Awaitable[list[Any]]]
    _submit: Callable[..., Awaitable[None]]

    async def store_module_events(self, events: list[ModuleEvent]) -> None:
        if not events:
            return
        await self._submit(
            [
                (
                    "INSERT OR IGNORE INTO module_events (module_id, ts, code, concentrator_id, value, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(e.module_id, e.ts, e.code, e.concentrator_id, e.value, e.received_at) for e in events],
                )
            ]
        )

    async def store_topology(self, concentrator_id: int, t: int, routes: list[ModuleRoute]) -> None:
        if not routes:
            return
        await self._submit(
            [
                (
                    f"INSERT OR REPLACE INTO topology_snapshots ({SNAPSHOT_COLUMNS}) VALUES ({', '.join('?' * 10)})",
                    [_snapshot_row(concentrator_id, t, r) for r in routes],
                ),
                (
                    "UPDATE modules SET parent_id = ?, hops = ?, rssi = ?, battery_mv = ?, firmware = ?, "
                    "last_seen = max(coalesce(last_seen, 0), ?) WHERE module_id = ?",
                    [(r.parent_id, r.hops, r.rssi, r.battery_mv, r.firmware, t, r.module_id) for r in routes],
                ),
            ]
        )

    async def store_command_result(
        self, concentrator_id: int, command_id: int, result: int, status: int, received_at: int
    ) -> None:
        await self._submit(
            [
                (
                    "INSERT OR REPLACE INTO command_results (concentrator_id, command_id, result, status, "
                    "received_at) VALUES (?, ?, ?, ?, ?)",
                    [(concentrator_id, command_id, result, status, received_at)],
                )
            ]
        )

    async def store_firmware_result(self, concentrator_id: int, image_id: int, result: int, received_at: int,
                                    target: int | None = None, version: str | None = None) -> None:
        await self._submit(
            [
                (
                    "INSERT INTO firmware_results (concentrator_id, image_id, result, received_at, target, version) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (concentrator_id, image_id) DO UPDATE SET "
                    "result = excluded.result, received_at = excluded.received_at, "
                    "target = coalesce(excluded.target, target), version = coalesce(excluded.version, version)",
                    [(concentrator_id, image_id, result, received_at, target, version)],
                )
            ]
        )

    async def log_connection(self, event: ConnectionEvent) -> None:
        if event.event not in CONNECTION_EVENTS:
            raise ValueError(f"unknown connection event {event.event!r}")
        await self._submit(
            [
                (
                    "INSERT INTO connection_log (concentrator_id, event, t, peer, detail) VALUES (?, ?, ?, ?, ?)",
                    [(event.concentrator_id, event.event, event.t, event.peer, event.detail)],
                )
            ]
        )

    async def _device_rows(self, table: str, order: str, where: str, args: tuple, limit: int) -> list[dict[str, Any]]:
        rows = await self._all(f"SELECT * FROM {table} {where} ORDER BY {order} LIMIT ?", (*args, limit))
        return [dict(r) for r in rows]

    async def module_events(self, module_id: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        where, args = ("WHERE module_id = ?", (module_id,)) if module_id is not None else ("", ())
        return await self._device_rows("module_events", "received_at DESC, ts DESC, module_id", where, args, limit)

    async def topology_history(self, module_id: int | None = None, limit: int = 1000,
                               before: int | None = None) -> list[dict[str, Any]]:
        where, args = _where({"module_id = ?": module_id, "t <= ?": before})
        return await self._device_rows("topology_snapshots", "t DESC, module_id", where, args, limit)

    async def module_reports(self, module_id: int, limit: int = 1000,
                             before: int | None = None) -> list[dict[str, Any]]:
        where, args = _where({"module_id = ?": module_id, "t <= ?": before})
        return await self._device_rows("module_reports", "t DESC", where, args, limit)

    async def latest_module_reports(self, before: int) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT r.* FROM module_reports r JOIN (SELECT module_id, max(t) AS t FROM module_reports "
            "WHERE t <= ? GROUP BY module_id) m ON r.module_id = m.module_id AND r.t = m.t ORDER BY r.module_id",
            (before,),
        )
        return [dict(r) for r in rows]

    async def latest_topology(self, before: int | None = None) -> list[dict[str, Any]]:
        until = 2**62 if before is None else before
        rows = await self._all(
            "SELECT s.*, (SELECT max(o.t) FROM topology_snapshots o WHERE o.module_id = s.module_id "
            "AND o.state = 0 AND o.t <= ?) AS online_t FROM topology_snapshots s "
            "JOIN (SELECT module_id, max(t) AS t FROM topology_snapshots WHERE t <= ? GROUP BY module_id) m "
            "ON s.module_id = m.module_id AND s.t = m.t ORDER BY s.module_id, s.concentrator_id",
            (until, until),
        )
        return list({r["module_id"]: dict(r) for r in rows}.values())

    async def command_results(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._device_rows("command_results", "received_at DESC, command_id DESC", "", (), limit)

    async def firmware_results(self, limit: int = 100, concentrator_id: int | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE concentrator_id = ?", (concentrator_id,)) if concentrator_id is not None else ("", ())
        return await self._device_rows("firmware_results", "received_at DESC, image_id DESC", where, args, limit)

    async def connection_log(self, concentrator_id: int | None = None, limit: int = 100,
                             before: int | None = None) -> list[dict[str, Any]]:
        where, args = _where({"concentrator_id = ?": concentrator_id, "t <= ?": before})
        return await self._device_rows("connection_log", "id DESC", where, args, limit)
