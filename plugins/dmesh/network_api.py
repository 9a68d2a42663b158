"""HTTP routes of the DMesh network monitor: concentrators, their radio trees,
one module with its meters, events and route history."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from msgspec import Meta, Struct
from sanic.request import Request

from balans_edge.core.times import iso
from balans_edge.plugins.dmesh.codec import EventCode
from balans_edge.plugins.dmesh.network import ModuleView, NetworkMonitor
from balans_edge.routes import ApiError, Param, Route, json

if TYPE_CHECKING:
    from balans_edge.core.context import PluginContext
    from balans_edge.plugins.dmesh.repository import DmeshRepository

TAGS = ("network",)
MAX_LIMIT = 10000


def _int_id(raw: str, what: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(404, "not_found", f"{what} {raw!r} is not known") from None
    if not 0 < value < 2**32:
        raise ApiError(404, "not_found", f"{what} {raw!r} is not known")
    return value


class ModuleQuery(Struct):
    limit: Annotated[int, Meta(ge=1, le=MAX_LIMIT, description="events, history entries and reports")] = 100


class ModuleState(Struct):
    module_id: int
    concentrator_id: int | None
    registered: bool
    parent_id: int | None
    hops: int | None
    rssi: int | None
    battery_mv: int | None
    firmware: str | None
    last_seen: str | None
    reported: str | None
    state: str
    children: list[int] | None = None


class Concentrators(Struct):
    concentrators: list[dict[str, Any]]


class Topology(Struct):
    concentrator_id: int
    roots: list[int]
    unplaced: list[int]
    modules: list[ModuleState]


class ModuleMeter(Struct):
    meter_id: str
    channel: int | None
    resource: str
    unit: str
    group_id: str | None
    removed: bool


class ModuleEvent(Struct):
    t: str
    code: int
    name: str
    value: int | None
    concentrator_id: int | None
    received_at: str


class RouteEntry(Struct):
    t: str
    concentrator_id: int | None
    parent_id: int | None
    hops: int | None
    rssi: int | None
    battery_mv: int | None
    firmware: str
    state: str


class Report(Struct):
    t: str
    battery_mv: int | None
    rssi: int | None
    hops: int | None


class Module(Struct):
    module: ModuleState
    meters: list[ModuleMeter]
    events: list[ModuleEvent]
    topology_history: list[RouteEntry]
    reports: list[Report]


def _module_json(v: ModuleView, children: list[int] | None = None) -> dict[str, Any]:
    out = {
        "module_id": v.module_id,
        "concentrator_id": v.concentrator_id,
        "registered": v.registered,
        "parent_id": v.parent_id,
        "hops": v.hops,
        "rssi": v.rssi,
        "battery_mv": v.battery_mv,
        "firmware": v.firmware,
        "last_seen": iso(v.last_seen) if v.last_seen is not None else None,
        "reported": iso(v.reported_t) if v.reported_t is not None else None,
        "state": v.state,
    }
    if children is not None:
        out["children"] = children
    return out


def _event_name(code: int) -> str:
    try:
        return EventCode(code).name
    except ValueError:
        return f"CODE_{code}"


def routes(context: PluginContext, monitor: NetworkMonitor, repository: DmeshRepository) -> list[Route]:
    async def concentrators(request: Request) -> Any:
        return json({"concentrators": await monitor.concentrators()})

    async def topology(request: Request, concentrator_id: str) -> Any:
        cid = _int_id(concentrator_id, "concentrator")
        known = {c["id"] for c in await monitor.concentrators()}
        if cid not in known:
            raise ApiError(404, "not_found", f"concentrator {cid} is not known")
        mine = {m: v for m, v in (await monitor.modules()).items() if v.concentrator_id == cid}
        children: dict[int, list[int]] = {m: [] for m in mine}
        roots, unplaced = [], []
        for m, v in mine.items():
            if v.parent_id == 0:
                roots.append(m)
            elif v.parent_id in children:
                children[v.parent_id].append(m)
            else:
                unplaced.append(m)
        return json(
            {
                "concentrator_id": cid,
                "roots": roots,
                "unplaced": unplaced,
                "modules": [_module_json(v, children[m]) for m, v in mine.items()],
            }
        )

    async def module(request: Request, module_id: str, query: ModuleQuery) -> Any:
        mid = _int_id(module_id, "module")
        limit = query.limit
        view = (await monitor.modules()).get(mid)
        if view is None:
            raise ApiError(404, "not_found", f"module {mid} is not known")
        meters = [m for _, m in await context.registry.meters_by_key() if m.module_id == mid]
        events = await repository.module_events(mid, limit)
        history = await repository.topology_history(mid, limit)
        reports = await context.queries.module_reports(mid, limit)
        return json(
            {
                "module": _module_json(view),
                "meters": [
                    {
                        "meter_id": m.meter_id,
                        "channel": m.channel,
                        "resource": str(m.resource),
                        "unit": m.unit,
                        "group_id": m.group_id,
                        "removed": m.removed_time is not None,
                    }
                    for m in sorted(meters, key=lambda m: (m.channel or 0, m.meter_id))
                ],
                "events": [
                    {
                        "t": iso(e["ts"]),
                        "code": e["code"],
                        "name": _event_name(e["code"]),
                        "value": e["value"],
                        "concentrator_id": e["concentrator_id"],
                        "received_at": iso(e["received_at"]),
                    }
                    for e in events
                ],
                "topology_history": [
                    {
                        "t": iso(r["t"]),
                        "concentrator_id": r["concentrator_id"],
                        "parent_id": r["parent_id"],
                        "hops": r["hops"],
                        "rssi": r["rssi"],
                        "battery_mv": r["battery_mv"],
                        "firmware": f"{r['fw_version'] >> 8}.{r['fw_version'] & 0xFF}",
                        "state": "online" if r["state"] == 0 else "lost",
                    }
                    for r in history
                ],
                "reports": [
                    {"t": iso(r["t"]), "battery_mv": r["battery_mv"], "rssi": r["rssi"], "hops": r["hops"]}
                    for r in reports
                ],
            }
        )

    not_found = {200: "OK", 404: "unknown id"}
    return [
        Route(
            "GET",
            "/api/v1/network/concentrators",
            concentrators,
            "DMesh concentrators: link state and module counts (online, lost, silent)",
            response=Concentrators,
            tags=TAGS,
        ),
        Route(
            "GET",
            "/api/v1/network/concentrators/<concentrator_id>/topology",
            topology,
            "The radio tree of a concentrator: modules with parent, children, route and health",
            params=(Param("concentrator_id", type="integer", description="404 unless a known concentrator"),),
            response=Topology,
            tags=TAGS,
            responses=not_found,
        ),
        Route(
            "GET",
            "/api/v1/network/modules/<module_id>",
            module,
            "A radio module: its state, meters, newest events, topology history and hourly health reports",
            params=(Param("module_id", type="integer", description="404 unless a known module"),),
            query=ModuleQuery,
            response=Module,
            tags=TAGS,
            responses=not_found,
        ),
    ]
