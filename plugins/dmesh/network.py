"""DMesh network monitoring: the radio tree of each concentrator and its health.

The tree is built from what is stored already: the registry's module rows
(parent, hops, RSSI, battery, firmware and last seen, kept current by TOPOLOGY
reports and by the battery, RSSI and hops every READINGS record carries), the
newest topology entry of every module (its state as the concentrator reported
it; the plugin's own table, through its ``repository``) and the newest reading
of every meter. A module is

- ``lost`` when its newest topology entry says so and no reading of it is
  newer than that entry,
- ``silent`` when it has not been heard from (a reading, or a topology entry in
  state online) for more than ``silent_periods`` reporting periods,
- ``online`` otherwise.

``NetworkMonitor`` is also the ``dmesh-network`` detector: silent modules, low
batteries with the days left from the battery trend, weak links, long routes
and concentrators that stay offline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np

from balans_edge.core.analytics.base import Scope
from balans_edge.core.components import Finding, Severity
from balans_edge.core.model import MAX_HOPS
from balans_edge.core.times import DAY, HOUR, iso
from balans_edge.settings import setting

if TYPE_CHECKING:
    from collections.abc import Callable

    from balans_edge.core.context import PluginContext
    from balans_edge.core.detection import DetectionRun
    from balans_edge.core.storage.views import Queries
    from balans_edge.plugins.dmesh.repository import DmeshRepository

DETECTOR = "dmesh-network"
BATTERY_REPLACED_MV = 100
"""A rise of the battery voltage larger than this starts a new battery (trend)."""
BATTERY_POINTS = 1000
"""Newest topology entries of a module used for its battery trend."""


@dataclass(frozen=True)
class NetworkConfig:
    """``[plugins.dmesh.network]``: limits of the network health findings."""

    report_interval_s: Annotated[int, setting(range=(60, 7 * DAY), doc="the modules' reporting period")] = HOUR
    silent_periods: Annotated[int, setting(range=(1, 10000), doc="silent after this many periods without news")] = 3
    low_battery_mv: Annotated[int, setting(range=(0, 65535), doc="battery below this is low")] = 3000
    battery_empty_mv: Annotated[int, setting(range=(0, 65535), doc=(
        "battery at which a module stops (days left)"))] = 2700
    weak_rssi_dbm: Annotated[int, setting(range=(-128, 0), doc="a link to the parent below this is weak")] = -95
    max_hops: Annotated[int, setting(range=(1, MAX_HOPS), doc="a route longer than this is too long")] = 20
    offline_after_s: Annotated[int, setting(range=(0, 30 * DAY), doc="a configured concentrator away this long")] = 900


@dataclass(slots=True)
class ModuleView:
    """One module as the network monitor sees it."""

    module_id: int
    concentrator_id: int | None
    registered: bool
    parent_id: int | None
    """0: the concentrator itself; None: route unknown (no topology report yet)."""
    hops: int | None
    rssi: int | None
    battery_mv: int | None
    firmware: str
    last_seen: int | None
    """Newest news of the module: a reading, or a topology entry in state online."""
    state: str
    """online, lost or silent."""
    reported_t: int | None = None
    """Time of its newest topology entry."""


def _firmware(fw_version: int) -> str:
    return f"{fw_version >> 8}.{fw_version & 0xFF}"


async def newest_readings(queries: Queries, before: int | None = None) -> dict[int, int]:
    """module_id -> time of the newest stored reading of any of its meters (of those
    at or before ``before`` when given)."""
    modules = {key: m.module_id for key, m in await queries.meters_by_key() if m.module_id is not None}
    if before is None:
        times = {head.meter: head.ts for head in await queries.load_heads()}
    else:
        times = await queries.reading_times(before)
    newest: dict[int, int] = {}
    for meter, ts in times.items():
        module_id = modules.get(meter)
        if module_id is not None and ts > newest.get(module_id, -1):
            newest[module_id] = ts
    return newest


async def module_views(queries: Queries, repository: DmeshRepository, config: NetworkConfig, now: float, *,
                       past: bool = False, keep: set[int] | None = None,
                       unregistered: bool = True) -> dict[int, ModuleView]:
    """Every module known to the registry or to a topology report, by id.

    ``past``: as things were at ``now`` (a run over a past period): only readings
    and topology reports up to then count, and a module's route, link and battery
    are those of its newest report by then (the registry holds today's): a
    topology entry, or the health the module reported with its readings when
    that is newer (a concentrator may send TOPOLOGY rarely). ``keep``:
    only these registered modules (None: all); ``unregistered``: also modules only
    a topology report knows."""
    registry = {m.module_id: m for m in await queries.registry_list("modules")
                if keep is None or m.module_id in keep}
    latest = {r["module_id"]: r for r in await repository.latest_topology(int(now) if past else None)
              if r["module_id"] in registry or unregistered}
    readings = await newest_readings(queries, int(now) if past else None)
    reports = {r["module_id"]: r for r in await queries.latest_module_reports(int(now))} if past else {}
    silent_after = config.silent_periods * config.report_interval_s
    views: dict[int, ModuleView] = {}
    for module_id in sorted(set(registry) | set(latest)):
        reg, snap, read_t = registry.get(module_id), latest.get(module_id), readings.get(module_id)
        lost = snap is not None and snap["state"] != 0 and (read_t is None or read_t <= snap["t"])
        if lost or reg is None or past:
            heard = [t for t in (read_t, snap and snap["online_t"]) if t is not None]
            last_seen = max(heard) if heard else None
        else:
            last_seen = reg.last_seen
        if lost:
            state = "lost"
        elif last_seen is None or now - last_seen > silent_after:
            state = "silent"
        else:
            state = "online"
        if reg is not None and (not past or snap is None):
            # Today's values from the registry; for a past time without a report
            # by then the route, link and battery are unknown.
            known = not past
            view = ModuleView(
                module_id,
                snap["concentrator_id"] if snap else reg.concentrator_id,
                True,
                reg.parent_id if known else None,
                reg.hops if known else None,
                reg.rssi if known else None,
                reg.battery_mv if known else None,
                reg.firmware,
                last_seen,
                state,
            )
        else:
            view = ModuleView(
                module_id,
                snap["concentrator_id"],
                reg is not None,
                snap["parent_id"],
                snap["hops"],
                snap["rssi"],
                snap["battery_mv"],
                _firmware(snap["fw_version"]),
                last_seen,
                state,
            )
        view.reported_t = snap["t"] if snap else None
        own = reports.get(module_id)
        if own is not None and (snap is None or own["t"] >= snap["t"]):
            view.battery_mv, view.rssi = own["battery_mv"], own["rssi"]
            view.hops = own["hops"] if own["hops"] is not None else view.hops  # None: out of range, not reported
        views[module_id] = view
    return views


async def battery_points(queries: Queries, repository: DmeshRepository, module_id: int,
                         before: int | None = None) -> list[tuple[int, int]]:
    """(t, mV) of a module's battery in time order: its TOPOLOGY entries and the
    hourly reports that come with its readings (a concentrator may send
    TOPOLOGY rarely), the newest BATTERY_POINTS of each (of those at or before
    ``before`` when given)."""
    topology = await repository.topology_history(module_id, limit=BATTERY_POINTS, before=before)
    reports = await queries.module_reports(module_id, limit=BATTERY_POINTS, before=before)
    return sorted({(r["t"], r["battery_mv"]) for r in [*topology, *reports]})


def battery_days_left(points: list[tuple[int, int]], empty_mv: int) -> tuple[float | None, float | None]:
    """(days left until ``empty_mv``, slope in mV per day) from (t, mV) points in
    time order, fitted with a straight line since the last battery change.
    Days left count from the newest point; None when fewer than two points or
    the battery is not falling."""
    start = 0
    for i in range(1, len(points)):
        if points[i][1] - points[i - 1][1] > BATTERY_REPLACED_MV:
            start = i
    points = points[start:]
    if len({t for t, _ in points}) < 2:
        return None, None
    t = np.array([p[0] for p in points], dtype=np.float64)
    mv = np.array([p[1] for p in points], dtype=np.float64)
    slope_per_s = float(np.polyfit(t - t[-1], mv, 1)[0])
    slope = slope_per_s * DAY
    if slope >= 0:
        return None, slope
    return max(0.0, (mv[-1] - empty_mv) / -slope), slope


class NetworkMonitor:
    """The DMesh network's state for the API and its health as a detector."""

    name = DETECTOR

    def __init__(self, context: PluginContext, repository: DmeshRepository, sessions: Callable[[], dict[int, Any]],
                 clock: Callable[[], float] = time.time) -> None:
        self.context = context
        self.repository = repository
        self.sessions = sessions
        """The connected concentrators' sessions by id (the driver's, or none)."""
        self.clock = clock

    @property
    def dmesh(self) -> Any:
        return self.context.config

    @property
    def config(self) -> NetworkConfig:
        return self.dmesh.network

    def connected(self) -> dict[int, Any]:
        """Sessions of the connected concentrators, by id."""
        return self.sessions()

    async def modules(self) -> dict[int, ModuleView]:
        return await module_views(self.context.queries, self.repository, self.config, self.clock())

    async def concentrators(self) -> list[dict[str, Any]]:
        """Registered, configured and connected concentrators with their link and module counts."""
        queries = self.context.queries
        registry = {c.concentrator_id: c for c in await queries.registry_list("concentrators")}
        configured = {c.id for c in self.dmesh.concentrators}
        sessions = self.connected()
        views = await self.modules()
        out = []
        for cid in sorted(set(registry) | configured | set(sessions)):
            log = await self.repository.connection_log(cid, limit=1000)
            last = {event: next((r for r in log if r["event"] == event), None) for event in ("connect", "disconnect")}
            session = sessions.get(cid)
            mine = [v for v in views.values() if v.concentrator_id == cid]
            counts = {state: sum(v.state == state for v in mine) for state in ("online", "lost", "silent")}
            out.append(
                {
                    "id": cid,
                    "name": registry[cid].name if cid in registry else "",
                    "registered": cid in registry,
                    "configured": cid in configured,
                    "connected": session is not None,
                    "peer": session.peer if session is not None else (last["connect"] or {}).get("peer"),
                    "last_connect": iso(last["connect"]["t"]) if last["connect"] else None,
                    "last_disconnect": iso(last["disconnect"]["t"]) if last["disconnect"] else None,
                    "modules": {"total": len(mine), **counts},
                }
            )
        return out

    # detector -----------------------------------------------------------------

    async def detect(self, run: DetectionRun | None = None) -> list[Finding]:
        """The network's health as of the run's end (``Scope``): now for a run that
        ends now, the end of the period for a run over a past one (a module is
        silent for the hours before that end, not until today); only the modules of
        the scope's groups and their concentrators when the run names groups."""
        config = self.config
        scope = run.scope if run is not None else Scope.recent(self.clock())
        now = int(self.clock()) if scope.live else scope.t1
        past = not scope.live
        keep: set[int] | None = None
        if past or scope.group_ids is not None:
            meters = await scope.meters(self.context.queries)
            if meters is None:
                meters = await self.context.registry.registry_list("meters")
            keep = {m.module_id for m in meters if m.module_id is not None and (not past or m.install_time <= now)}
        views = await module_views(self.context.queries, self.repository, config, now, past=past, keep=keep,
                                   unregistered=scope.group_ids is None)
        findings: list[Finding] = []
        silent_after = config.silent_periods * config.report_interval_s
        for view in views.values():
            findings += await self._module_findings(view, config, now, silent_after, past)
        concentrators = None if scope.group_ids is None else {v.concentrator_id for v in views.values()}
        findings += await self._offline_concentrators(config, now, past, concentrators)
        return findings

    async def _module_findings(
        self, v: ModuleView, config: NetworkConfig, now: int, silent_after: int, past: bool
    ) -> list[Finding]:
        subject = f"module:{v.module_id}"
        out = []

        def finding(kind: str, message: str, severity: Severity, **data: Any) -> None:
            out.append(Finding(DETECTOR, subject, kind, message, severity, now, data))

        if v.last_seen is None or now - v.last_seen > silent_after:
            if v.last_seen is None:
                message = f"module {v.module_id} has never been heard from"
                silent_s = None
            else:
                silent_s = now - v.last_seen
                message = (
                    f"module {v.module_id} silent for {silent_s / HOUR:.1f} h "
                    f"({silent_s / config.report_interval_s:.1f} reporting periods)"
                )
            finding(
                "silent",
                message,
                Severity.WARNING,
                silent_s=silent_s,
                last_seen=v.last_seen,
                report_interval_s=config.report_interval_s,
                periods=config.silent_periods,
            )
        if v.battery_mv is not None and v.battery_mv < config.low_battery_mv:
            points = await battery_points(self.context.queries, self.repository, v.module_id,
                                          before=now if past else None)
            if not points:
                points = [(v.last_seen or now, v.battery_mv)]
            days_left, slope = battery_days_left(points, config.battery_empty_mv)
            mv = points[-1][1]
            left = "unknown" if days_left is None else f"{days_left:.1f}"
            critical = mv <= config.battery_empty_mv or (days_left is not None and days_left < 7)
            finding(
                "low_battery",
                f"module {v.module_id}: battery {mv} mV, days left: {left}",
                Severity.CRITICAL if critical else Severity.WARNING,
                battery_mv=mv,
                days_left=None if days_left is None else round(days_left, 1),
                slope_mv_per_day=None if slope is None else round(slope, 3),
                points=len(points),
            )
        if v.state == "lost":
            return out  # its last route is stale
        if v.rssi is not None and v.rssi < config.weak_rssi_dbm:
            finding(
                "weak_link",
                f"module {v.module_id}: link to its parent at {v.rssi} dBm",
                Severity.WARNING,
                rssi_dbm=v.rssi,
                limit_dbm=config.weak_rssi_dbm,
            )
        if v.hops is not None and v.hops > config.max_hops:
            finding(
                "too_many_hops",
                f"module {v.module_id}: {v.hops} hops to the concentrator",
                Severity.WARNING,
                hops=v.hops,
                limit=config.max_hops,
            )
        return out

    async def _offline_concentrators(self, config: NetworkConfig, now: int, past: bool,
                                     only: set[int | None] | None) -> list[Finding]:
        """Configured concentrators away longer than ``offline_after_s`` at ``now``: by
        their sessions now, or, for a past time, by the connection log up to it."""
        sessions = {} if past else self.connected()
        out = []
        for c in self.dmesh.concentrators:
            if c.id in sessions or (only is not None and c.id not in only):
                continue
            log = await self.repository.connection_log(c.id, limit=1000, before=now if past else None)
            last = next((r for r in log if r["event"] in ("connect", "disconnect", "replaced")), None)
            if past and (last is None or last["event"] == "connect"):
                continue  # connected then, or nothing known of it by then
            since = last["t"] if last else (self.context.health.started_at or now)
            offline_s = int(now - since)
            if offline_s <= config.offline_after_s:
                continue
            what = f"since {iso(last['t'])}" if last else "since the server started, never connected"
            out.append(
                Finding(
                    DETECTOR,
                    f"concentrator:{c.id}",
                    "concentrator_offline",
                    f"concentrator {c.id} is not connected ({what})",
                    Severity.CRITICAL,
                    now,
                    {
                        "offline_s": offline_s,
                        "last_event_t": last["t"] if last else None,
                        "limit_s": config.offline_after_s,
                    },
                )
            )
        return out
