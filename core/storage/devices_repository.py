"""What DMesh concentrators report besides readings: module events, topology
(route) snapshots, command and firmware outcomes, the connection log and the
modules' health history.

Belongs to the DMesh plugin (owner ``dmesh``): its tables were handed over by
core migration 0016, and this interface moves into the plugin's folder with
them. ``SqliteStorage`` implements it until then; ``Storage`` does not
declare it, so a second backend need not implement it for core.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar


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


CONNECTION_EVENTS = frozenset({"connect", "auth_failed", "disconnect", "replaced"})


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A device link coming up, failing authentication, going down or being replaced."""

    concentrator_id: int | None
    event: str
    t: int
    peer: str = ""
    detail: str = ""


class DeviceRepository(ABC):
    """The DMesh plugin's device reports."""

    OWNER: ClassVar[str] = "dmesh"
    """The owner of the tables behind this interface (``MigrationSet.owner``)."""

    @abstractmethod
    async def store_module_events(self, events: list[ModuleEvent]) -> None:
        """Store module events durably; an event already stored (same module,
        ts and code) is kept as it is."""

    @abstractmethod
    async def store_topology(self, concentrator_id: int, t: int, routes: list[ModuleRoute]) -> None:
        """Append a topology snapshot taken at ``t`` to the route history and,
        in the same transaction, update the registry rows of the modules that
        exist (parent, hops, RSSI, battery, firmware, last seen). Modules that
        are not registered are not created."""

    @abstractmethod
    async def store_command_result(
        self, concentrator_id: int, command_id: int, result: int, status: int, received_at: int
    ) -> None:
        """Store the outcome of a device command durably (a repeated report replaces it)."""

    @abstractmethod
    async def store_firmware_result(self, concentrator_id: int, image_id: int, result: int, received_at: int,
                                    target: int | None = None, version: str | None = None) -> None:
        """Store the outcome of a firmware transfer durably (a repeated report
        replaces it), with the pushed image's target and version when known (a
        repeated report without them keeps those stored)."""

    @abstractmethod
    async def log_connection(self, event: ConnectionEvent) -> None:
        """Append an event to the device connection log durably."""

    @abstractmethod
    async def module_events(self, module_id: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Stored module events (of one module or all), newest first."""

    @abstractmethod
    async def topology_history(self, module_id: int | None = None, limit: int = 1000,
                               before: int | None = None) -> list[dict[str, Any]]:
        """Stored topology entries (of one module or all; only those with t <= ``before``
        when given), newest first."""

    @abstractmethod
    async def module_reports(self, module_id: int, limit: int = 1000,
                             before: int | None = None) -> list[dict[str, Any]]:
        """The health history of a module from its readings (only the hours with
        t <= ``before`` when given), newest first: one entry per hour (the first
        report in it) with ``t`` (the hour), ``battery_mv``, ``rssi`` and ``hops``."""

    @abstractmethod
    async def latest_module_reports(self, before: int) -> list[dict[str, Any]]:
        """The newest health report (columns of ``module_reports``) of every module
        that has one at or before ``before``: how the modules reported themselves
        at a past time."""

    async def latest_topology(self, before: int | None = None) -> list[dict[str, Any]]:
        """The newest topology entry of every module (columns of ``topology_history``;
        of the entries with t <= ``before`` when given) with ``online_t``: the time of
        its newest entry in state online (None if none). Backends should override
        this scan of the whole history with one query."""
        latest: dict[int, dict[str, Any]] = {}
        for row in reversed(await self.topology_history(None, limit=2**31, before=before)):
            online_t = row["t"] if row["state"] == 0 else latest.get(row["module_id"], {}).get("online_t")
            latest[row["module_id"]] = {**row, "online_t": online_t}
        return [latest[m] for m in sorted(latest)]

    @abstractmethod
    async def command_results(self, limit: int = 100) -> list[dict[str, Any]]:
        """Stored command outcomes, newest first."""

    @abstractmethod
    async def firmware_results(self, limit: int = 100, concentrator_id: int | None = None) -> list[dict[str, Any]]:
        """Stored firmware outcomes (of one concentrator or all), newest first."""

    @abstractmethod
    async def connection_log(self, concentrator_id: int | None = None, limit: int = 100,
                             before: int | None = None) -> list[dict[str, Any]]:
        """The device connection log (of one concentrator or all; only events with
        t <= ``before`` when given), newest first."""
