"""Balance groups: balance per hour, day or month, consumption like a meter's,
monthly allocation (ОДН), and the ranking of losses."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sanic.request import Request

from balans_edge.core import balance_queries as q
from balans_edge.core.balance import points
from balans_edge.core.model import Group, Quality
from balans_edge.core.times import iso
from balans_edge.routes import ApiError, Param, Route, json, parse_month, parse_period, parse_step

if TYPE_CHECKING:
    from balans_edge.server import Server

ORDERS = ("absolute", "relative", "trend")


def routes(server: Server) -> list[Route]:
    storage = server.storage

    async def group_or_404(group_id: str) -> Group:
        group = await storage.registry_get("groups", group_id)
        if group is None:
            raise ApiError(404, "not_found", f"group {group_id!r} is not in the registry")
        return group

    async def fresh() -> None:
        """Read your writes: late readings are folded into consumption, then into balances."""
        await server.intervals.process()
        await server.balance.process()

    async def series_of(request: Request, group_id: str) -> tuple[Group, str, q.GroupPeriods]:
        """The group and its balance over the request's period and step."""
        group = await group_or_404(group_id)
        step = parse_step(request)
        t0, t1 = parse_period(request, step, server.tz)
        await fresh()
        tree = await q.Tree.current(storage)
        return group, step, await q.group_series(storage, tree, [group_id], t0, t1, step, server.tz, int(time.time()))

    async def balance(request: Request, group_id: str) -> Any:
        group, step, periods = await series_of(request, group_id)
        threshold = server.config.balance.completeness_threshold
        resolution = (await q.Tree.current(storage)).resolution(group_id)
        return json({
            "group_id": group_id,
            "name": group.name,
            "level": group.level,
            "unit": group.unit,
            "step": step,
            "loss_norm_pct": group.loss_norm_pct,
            "completeness_threshold": threshold,
            "points": points(periods.series, 0, group, threshold, resolution, periods.coverage),
        })

    async def consumption(request: Request, group_id: str) -> Any:
        """What flowed into the group, in the shape of a meter's consumption."""
        group, step, periods = await series_of(request, group_id)
        s, counted = periods.series, periods.coverage.hours > 0
        out = []
        for i, t in enumerate(s.t.tolist()):
            missing = s.input_missing[0, i] or not counted[i]
            quality = Quality.MISSING if missing else Quality.ESTIMATED if s.input_estimated[0, i] else Quality.MEASURED
            value = None if missing else round(float(s.input[0, i]), 9)
            out.append({"t": iso(t), "value": value, "quality": quality.label})
        return json({"group_id": group_id, "unit": group.unit, "step": step, "points": out})

    async def allocation(request: Request, group_id: str) -> Any:
        group = await group_or_404(group_id)
        month = parse_month(request, server.tz, required=True)
        await fresh()
        tree = await q.Tree.current(storage)
        threshold = server.config.balance.completeness_threshold
        report = await q.allocation(storage, tree, group, month, server.tz, threshold, int(time.time()))
        return json(report.to_json())

    async def losses(request: Request) -> Any:
        t0, t1 = parse_period(request, "day", what="losses")
        level = request.args.get("level") or None
        order = request.args.get("order", "absolute")
        if order not in ORDERS:
            raise ApiError(400, "bad_parameter", f"order: expected one of {', '.join(ORDERS)}, got {order!r}")
        await fresh()
        tree = await q.Tree.current(storage)
        entries = await q.losses(storage, tree, level, t0, t1, server.tz, server.config.balance.completeness_threshold,
                                 int(time.time()), order)  # type: ignore[arg-type]
        return json({"from": iso(t0), "to": iso(t1), "level": level, "order": order,
                     "groups": [e.to_json() for e in entries]})

    group_param = Param("group_id", "path")
    period = (Param("from", required=True, format="date-time"), Param("to", required=True, format="date-time"))
    step = Param("step", enum=("hour", "day", "month"), description="default hour")
    tags = ("groups",)
    return [
        Route("GET", "/api/v1/groups/<group_id>/balance", balance,
              "Balance per hour (UTC), day or month (site timezone): input, consumed, imbalance, loss %, "
              "completeness and flags", params=(group_param, *period, step), tags=tags,
              responses={200: "OK", 404: "no such group"}),
        Route("GET", "/api/v1/groups/<group_id>/consumption", consumption,
              "What flowed into the group, like a meter's consumption", params=(group_param, *period, step),
              tags=tags, responses={200: "OK", 404: "no such group"}),
        Route("GET", "/api/v1/groups/<group_id>/allocation", allocation,
              "Monthly allocation of the imbalance to the group's accounts (ОДН), capped by the norm",
              params=(group_param, Param("month", required=True, description="YYYY-MM (site timezone)")),
              tags=tags, responses={200: "OK", 400: "bad month", 404: "no such group"}),
        Route("GET", "/api/v1/losses", losses,
              "Groups ranked by loss over a period, with trend, money lost per month and where to look first",
              params=(*period, Param("level", description="only groups of this level (house, street, ...)"),
                      Param("order", enum=ORDERS, description="default absolute")),
              tags=tags),
    ]
