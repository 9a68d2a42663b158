"""The DMesh plugin's tables and its repository: what concentrators report
besides readings (module events, topology snapshots, command and firmware
outcomes) and the connection log of their links.

Owner ``dmesh``. Core migrations 0005 and 0013 created these tables before
owners existed; core migration 0016 handed them over, and from then on the
plugin's own migrations (``migrations/<dialect>/``, ``MIGRATIONS``, contributed
through ``register_migrations``) create and change them. They are read and
written only here, through the storage's SQL gateway (``SqlGateway``): the SQL
of each dialect in one place (``SQL``), the rest of the plugin calls methods
whose arguments and results are plain values. Another backend needs its
dialect's entry in ``SQL`` and its migrations, nothing else.

What a TOPOLOGY says of the modules themselves (route, link, battery,
firmware) also goes to the registry's module rows. Those are core's (radio
modules are core registry objects), so they are written through the core
repository (``ReadingRepository.update_module_links``), never by SQL of the
plugin's; so are the modules' health reports that come with readings
(``module_reports``, written by core ingest in the readings' transaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from balans_edge.core.storage.migrations import MigrationSet
from balans_edge.core.storage.readings_repository import ModuleLink

if TYPE_CHECKING:
    from balans_edge.core.storage.gateway import SqlGateway

OWNER = "dmesh"
MIGRATIONS = MigrationSet(OWNER, "balans_edge.plugins.dmesh")
"""``plugins/dmesh/migrations/sqlite/0001_tables.sql``, ..."""

FOREVER = 2**62
"""A time bound that bounds nothing: reads filter ``t <= ?`` always, so that each
read is one fixed statement per dialect."""


@dataclass(frozen=True, slots=True)
class ModuleEvent:
    """An event a radio module reported (magnet, leak, valve, route...)."""

    concentrator_id: int
    module_id: int
    ts: int
    code: int
    value: int = 0
    received_at: int = 0


@dataclass(frozen=True, slots=True)
class ModuleRoute:
    """One module's entry in a topology report: its route and health."""

    module_id: int
    parent_id: int
    """0 when the module talks to the concentrator directly."""
    hops: int
    rssi: int
    battery_mv: int
    fw_version: int
    """major << 8 | minor."""
    channels: int
    state: int
    """0 online, 1 lost."""

    @property
    def firmware(self) -> str:
        return f"{self.fw_version >> 8}.{self.fw_version & 0xFF}"

    def link(self) -> ModuleLink:
        """What the registry's row of the module takes from this entry."""
        return ModuleLink(self.module_id, self.parent_id, self.hops, self.rssi, self.battery_mv, self.firmware)


CONNECTION_EVENTS = frozenset({"connect", "auth_failed", "disconnect", "replaced"})


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A device link coming up, failing authentication, going down or being replaced."""

    concentrator_id: int | None
    event: str
    t: int
    peer: str = ""
    detail: str = ""


SQL: dict[str, dict[str, str]] = {
    "sqlite": {
        # writes: an event already stored (module, ts, code) is kept; a repeated
        # topology entry, command or firmware result replaces the stored one (a
        # firmware result without target and version keeps those stored).
        "store_events": "INSERT OR IGNORE INTO module_events "
                        "(module_id, ts, code, concentrator_id, value, received_at) VALUES (?, ?, ?, ?, ?, ?)",
        "store_topology": "INSERT OR REPLACE INTO topology_snapshots (module_id, t, concentrator_id, parent_id, hops, "
                          "rssi, battery_mv, fw_version, channels, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        "store_command_result": "INSERT OR REPLACE INTO command_results "
                                "(concentrator_id, command_id, result, status, received_at) VALUES (?, ?, ?, ?, ?)",
        "store_firmware_result": "INSERT INTO firmware_results "
                                 "(concentrator_id, image_id, result, received_at, target, version) "
                                 "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (concentrator_id, image_id) DO UPDATE SET "
                                 "result = excluded.result, received_at = excluded.received_at, "
                                 "target = coalesce(excluded.target, target), "
                                 "version = coalesce(excluded.version, version)",
        "log_connection": "INSERT INTO connection_log (concentrator_id, event, t, peer, detail) VALUES (?, ?, ?, ?, ?)",
        # reads, newest first; "_of": of one module or concentrator.
        "module_events": "SELECT module_id, ts, code, concentrator_id, value, received_at FROM module_events "
                         "ORDER BY received_at DESC, ts DESC, module_id LIMIT ?",
        "module_events_of": "SELECT module_id, ts, code, concentrator_id, value, received_at FROM module_events "
                            "WHERE module_id = ? ORDER BY received_at DESC, ts DESC, module_id LIMIT ?",
        "topology_history": "SELECT module_id, t, concentrator_id, parent_id, hops, rssi, battery_mv, fw_version, "
                            "channels, state FROM topology_snapshots WHERE t <= ? ORDER BY t DESC, module_id LIMIT ?",
        "topology_history_of": "SELECT module_id, t, concentrator_id, parent_id, hops, rssi, battery_mv, fw_version, "
                               "channels, state FROM topology_snapshots WHERE module_id = ? AND t <= ? "
                               "ORDER BY t DESC, module_id LIMIT ?",
        # The newest entry of each module with the time of its newest entry online
        # (should two concentrators report a module at one time, the method keeps
        # the entry of the higher id).
        "latest_topology": "SELECT s.module_id, s.t, s.concentrator_id, s.parent_id, s.hops, s.rssi, s.battery_mv, "
                           "s.fw_version, s.channels, s.state, (SELECT max(o.t) FROM topology_snapshots o "
                           "WHERE o.module_id = s.module_id AND o.state = 0 AND o.t <= ?) AS online_t "
                           "FROM topology_snapshots s JOIN (SELECT module_id, max(t) AS t FROM topology_snapshots "
                           "WHERE t <= ? GROUP BY module_id) m ON s.module_id = m.module_id AND s.t = m.t "
                           "ORDER BY s.module_id, s.concentrator_id",
        "command_results": "SELECT concentrator_id, command_id, result, status, received_at FROM command_results "
                           "ORDER BY received_at DESC, command_id DESC LIMIT ?",
        "firmware_results": "SELECT concentrator_id, image_id, result, received_at, target, version "
                            "FROM firmware_results ORDER BY received_at DESC, image_id DESC LIMIT ?",
        "firmware_results_of": "SELECT concentrator_id, image_id, result, received_at, target, version "
                               "FROM firmware_results WHERE concentrator_id = ? "
                               "ORDER BY received_at DESC, image_id DESC LIMIT ?",
        "connection_log": "SELECT id, concentrator_id, event, t, peer, detail FROM connection_log WHERE t <= ? "
                          "ORDER BY id DESC LIMIT ?",
        "connection_log_of": "SELECT id, concentrator_id, event, t, peer, detail FROM connection_log "
                             "WHERE concentrator_id = ? AND t <= ? ORDER BY id DESC LIMIT ?",
    },
}
"""Every statement of the repository, by dialect (``SqlGateway.dialect``) and name;
each dialect names the same statements with the same parameters in the same order."""


class ModuleLinkSink(Protocol):
    """Where the modules' reported links go: the ingest sink (or, for a command, the storage)."""

    async def update_module_links(self, t: int, links: Sequence[ModuleLink]) -> None: ...


class DmeshRepository:
    """The DMesh plugin's device reports: written by the driver's sessions, read
    by the network monitor, the firmware pusher and the HTTP API.

    Built from the storage's SQL gateway (``context.database``) and where module
    state goes (``context.ingest``); a command that opens the storage passes the
    storage object for both."""

    def __init__(self, database: SqlGateway, modules: ModuleLinkSink) -> None:
        if database.dialect not in SQL:
            raise RuntimeError(f"the dmesh plugin has no SQL for the {database.dialect} dialect")
        self.database = database
        self.modules = modules
        self.sql = SQL[database.dialect]

    async def _rows(self, name: str, *args: Any) -> list[dict[str, Any]]:
        return await self.database.sql_read(self.sql[name], args)

    # writes ---------------------------------------------------------------------

    async def store_module_events(self, events: list[ModuleEvent]) -> None:
        """Store module events durably; an event already stored (same module,
        ts and code) is kept as it is."""
        if events:
            await self.database.sql_write([(self.sql["store_events"], [
                (e.module_id, e.ts, e.code, e.concentrator_id, e.value, e.received_at) for e in events])])

    async def store_topology(self, concentrator_id: int, t: int, routes: list[ModuleRoute]) -> None:
        """Store a topology report received at ``t``: the registry rows of the
        modules that exist take their route, link, battery and firmware (last
        seen moves to ``t``; modules that are not registered are not created),
        then the entries are appended to the route history. Two durable writes in
        that order: should the second fail, the report is stored again whole when
        the concentrator sends it again (the first changes nothing more)."""
        if not routes:
            return
        await self.modules.update_module_links(t, [r.link() for r in routes])
        await self.database.sql_write([(self.sql["store_topology"], [
            (r.module_id, t, concentrator_id, r.parent_id, r.hops, r.rssi, r.battery_mv, r.fw_version, r.channels,
             r.state) for r in routes])])  # fmt: skip

    async def store_command_result(
        self, concentrator_id: int, command_id: int, result: int, status: int, received_at: int
    ) -> None:
        """Store the outcome of a device command durably (a repeated report replaces it)."""
        await self.database.sql_write([(self.sql["store_command_result"], [
            (concentrator_id, command_id, result, status, received_at)])])

    async def store_firmware_result(self, concentrator_id: int, image_id: int, result: int, received_at: int,
                                    target: int | None = None, version: str | None = None) -> None:
        """Store the outcome of a firmware transfer durably (a repeated report
        replaces it), with the pushed image's target and version when known (a
        repeated report without them keeps those stored)."""
        await self.database.sql_write([(self.sql["store_firmware_result"], [
            (concentrator_id, image_id, result, received_at, target, version)])])

    async def log_connection(self, event: ConnectionEvent) -> None:
        """Append an event to the connection log durably."""
        if event.event not in CONNECTION_EVENTS:
            raise ValueError(f"unknown connection event {event.event!r}")
        await self.database.sql_write([(self.sql["log_connection"], [
            (event.concentrator_id, event.event, event.t, event.peer, event.detail)])])

    # reads ----------------------------------------------------------------------

    async def module_events(self, module_id: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Stored module events (of one module or all), newest received first."""
        if module_id is None:
            return await self._rows("module_events", limit)
        return await self._rows("module_events_of", module_id, limit)

    async def topology_history(self, module_id: int | None = None, limit: int = 1000,
                               before: int | None = None) -> list[dict[str, Any]]:
        """Stored topology entries (of one module or all; only those with t <=
        ``before`` when given), newest first."""
        until = FOREVER if before is None else before
        if module_id is None:
            return await self._rows("topology_history", until, limit)
        return await self._rows("topology_history_of", module_id, until, limit)

    async def latest_topology(self, before: int | None = None) -> list[dict[str, Any]]:
        """The newest topology entry of every module (columns of ``topology_history``;
        of the entries with t <= ``before`` when given) with ``online_t``: the time
        of its newest entry in state online (None if none), by module."""
        until = FOREVER if before is None else before
        rows = await self._rows("latest_topology", until, until)
        return list({r["module_id"]: r for r in rows}.values())

    async def command_results(self, limit: int = 100) -> list[dict[str, Any]]:
        """Stored command outcomes, newest first."""
        return await self._rows("command_results", limit)

    async def firmware_results(self, limit: int = 100, concentrator_id: int | None = None) -> list[dict[str, Any]]:
        """Stored firmware outcomes (of one concentrator or all), newest first."""
        if concentrator_id is None:
            return await self._rows("firmware_results", limit)
        return await self._rows("firmware_results_of", concentrator_id, limit)

    async def connection_log(self, concentrator_id: int | None = None, limit: int = 100,
                             before: int | None = None) -> list[dict[str, Any]]:
        """The connection log (of one concentrator or all; only events with t <=
        ``before`` when given), newest first."""
        until = FOREVER if before is None else before
        if concentrator_id is None:
            return await self._rows("connection_log", until, limit)
        return await self._rows("connection_log_of", concentrator_id, until, limit)
