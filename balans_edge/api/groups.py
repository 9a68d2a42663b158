"""Balance groups: balance per hour, day or month, consumption like a meter's,
monthly allocation (ОДН), and the ranking of losses."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct
from sanic.request import Request

from balans_edge.api.meters import ConsumptionPoint
from balans_edge.core import balance_queries as q
from balans_edge.core.balance import iso, points
from balans_edge.core.calendar import Step
from balans_edge.core.model import Group, Quality
from balans_edge.http_schema import Month, Period, StepPeriod
from balans_edge.routes import ApiError, Param, Route, checked_period, json, month_value

if TYPE_CHECKING:
    from balans_edge.server import Server

ORDERS = ("absolute", "relative", "trend")
Order = Literal[ORDERS]  # type: ignore[valid-type]


class MonthQuery(Struct):
    month: Month


class LossesQuery(Period):
    level: Annotated[str | None, Meta(description="only groups of this level (house, street, ...)")] = None
    order: Annotated[Order, Meta(description="default absolute")] = "absolute"


class Completeness(Struct):
    measured: Annotated[float, Meta(ge=0, le=1)]
    estimated: Annotated[float, Meta(ge=0, le=1)]
    missing: Annotated[float, Meta(ge=0, le=1)]


class BalancePoint(Struct):
    t: str
    input: float | None
    consumed: float
    imbalance: float | None
    loss_pct: float | None
    completeness: Completeness
    flags: list[str]


class Balance(Struct):
    group_id: str
    name: str
    level: str
    unit: str
    step: Step
    loss_norm_pct: float | None
    completeness_threshold: float
    points: list[BalancePoint]


class GroupConsumption(Struct):
    group_id: str
    unit: str
    step: Step
    points: list[ConsumptionPoint]


class AllocationLine(Struct):
    account_id: str
    consumer: str | None
    consumed: float | None
    area_m2: float | None
    share: float | None
    cap: float | None
    allocated: float | None
    amount: float | None


class Allocation(Struct):
    """A group's month: its imbalance, who takes how much of it (ОДН) and what the utility keeps."""

    group_id: str
    month: str
    unit: str
    rule: str
    applied_rule: str | None
    input: float | None
    consumed: float | None
    imbalance: float | None
    allocated: float | None
    utility_loss: float | None
    price: float | None
    lines: list[AllocationLine]
    completeness: float
    flags: list[str]
    missing_area: list[str]


class Recommendation(Struct):
    kind: str
    message: str
    subject: str


class GroupLoss(Struct):
    group_id: str
    name: str
    unit: str
    days: float
    input: float | None
    consumed: float | None
    imbalance: float | None
    loss_pct: float | None
    money_per_month: float | None
    growing: bool
    recommendations: list[Recommendation]


class Losses(Struct):
    from_: str = msgspec.field(name="from")
    to: str
    level: str | None
    order: Order
    groups: list[GroupLoss]


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

    async def series_of(group_id: str, query: StepPeriod) -> tuple[Group, str, q.GroupPeriods]:
        """The group and its balance over the request's period and step."""
        group = await group_or_404(group_id)
        step = query.step
        t0, t1 = checked_period(query.from_, query.to, step, server.tz)
        await fresh()
        tree = await q.Tree.current(storage)
        return group, step, await q.group_series(storage, tree, [group_id], t0, t1, step, server.tz, int(time.time()))

    async def balance(request: Request, group_id: str, query: StepPeriod) -> Any:
        group, step, periods = await series_of(group_id, query)
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

    async def consumption(request: Request, group_id: str, query: StepPeriod) -> Any:
        """What flowed into the group, in the shape of a meter's consumption."""
        group, step, periods = await series_of(group_id, query)
        s, counted = periods.series, periods.coverage.hours > 0
        out = []
        for i, t in enumerate(s.t.tolist()):
            missing = s.input_missing[0, i] or not counted[i]
            quality = Quality.MISSING if missing else Quality.ESTIMATED if s.input_estimated[0, i] else Quality.MEASURED
            value = None if missing else round(float(s.input[0, i]), 9)
            out.append({"t": iso(t), "value": value, "quality": quality.label})
        return json({"group_id": group_id, "unit": group.unit, "step": step, "points": out})

    async def allocation(request: Request, group_id: str, query: MonthQuery) -> Any:
        group = await group_or_404(group_id)
        month = month_value(query.month, server.tz)
        await fresh()
        tree = await q.Tree.current(storage)
        threshold = server.config.balance.completeness_threshold
        report = await q.allocation(storage, tree, group, month, server.tz, threshold, int(time.time()))
        return json(report.to_json())

    async def losses(request: Request, query: LossesQuery) -> Any:
        t0, t1 = checked_period(query.from_, query.to, "day", what="losses")
        level, order = query.level, query.order
        await fresh()
        tree = await q.Tree.current(storage)
        entries = await q.losses(storage, tree, level, t0, t1, server.tz, server.config.balance.completeness_threshold,
                                 int(time.time()), order)  # type: ignore[arg-type]
        return json({"from": iso(t0), "to": iso(t1), "level": level, "order": order,
                     "groups": [e.to_json() for e in entries]})

    group_param = Param("group_id", description="a balance group's id")
    tags = ("groups",)
    return [
        Route("GET", "/api/v1/groups/<group_id>/balance", balance,
              "Balance per hour (UTC), day or month (site timezone): input, consumed, imbalance, loss %, "
              "completeness and flags", params=(group_param,), query=StepPeriod, response=Balance, tags=tags,
              responses={200: "OK", 404: "no such group"}),
        Route("GET", "/api/v1/groups/<group_id>/consumption", consumption,
              "What flowed into the group, like a meter's consumption", params=(group_param,), query=StepPeriod,
              response=GroupConsumption, tags=tags, responses={200: "OK", 404: "no such group"}),
        Route("GET", "/api/v1/groups/<group_id>/allocation", allocation,
              "Monthly allocation of the imbalance to the group's accounts (ОДН), capped by the norm",
              params=(group_param,), query=MonthQuery, response=Allocation,
              tags=tags, responses={200: "OK", 400: "bad month", 404: "no such group"}),
        Route("GET", "/api/v1/losses", losses,
              "Groups ranked by loss over a period, with trend, money lost per month and where to look first",
              query=LossesQuery, response=Losses, tags=tags),
    ]
