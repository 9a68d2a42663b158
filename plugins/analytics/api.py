"""Running the detectors on demand: ``POST /api/v1/analytics/run`` and
``balans-edge analytics run``, which asks the running server to do it (the
server holds the detectors, the findings journal and the notifiers)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct
from sanic.request import Request

from balans_edge.core.analytics.base import Scope
from balans_edge.core.analytics.health import ACTIONS
from balans_edge.core.times import DAY, iso
from balans_edge.http_schema import Id, Month, Time
from balans_edge.plugins.analytics import forecasts
from balans_edge.routes import ApiError, Param, Route, json, month_value

if TYPE_CHECKING:
    import click

    from balans_edge.core.context import PluginContext

PATH = "/api/v1/analytics/run"
MAX_DAYS = 366
Action = Literal[ACTIONS]  # type: ignore[valid-type]


class RunBody(Struct):
    """What to run the detectors over (all optional): a group (default: all) and a
    period (default: the last window_days), at most 366 days."""

    group: Annotated[Id | None, Meta(description="a balance group's id (default: all)")] = None
    from_: Time | None = msgspec.field(default=None, name="from")
    to: Time | None = None


class ForecastQuery(Struct):
    month: Annotated[Month | None, Meta(description="YYYY-MM in the site's timezone (default: the current "
                                                    "month)")] = None


class PlanQuery(Struct):
    action: Annotated[Action | None, Meta(description="only meters with this action")] = None


class Forecast(Struct):
    """Month to date and end-of-month forecast, next to the group's average and the norm."""

    unit: str
    month: str
    to_date: float
    forecast: float
    filled_hours: int
    baseline_weeks: int
    group_average: float | None
    group_members: int | None
    vs_group_pct: float | None
    norm: float | None
    vs_norm_pct: float | None
    meter_id: str | None = None
    group_id: str | None = None


class MeterHealth(Struct):
    meter_id: str
    group_id: str | None
    score: int
    open_findings: list[str]
    loss_per_year: float | None
    money_per_year: float | None
    age_years: float
    calendar_due: bool
    action: Action


class Plan(Struct):
    meters: list[MeterHealth]


class RunFinding(Struct):
    id: int | None
    detector: str
    kind: str
    subject: str
    severity: str
    message: str


class Run(Struct):
    from_: str = msgspec.field(name="from")
    to: str
    group: str | None
    findings: list[RunFinding]


def scope_of(body: RunBody, now: float, window_days: int) -> Scope:
    """The run's scope from a request body (times already checked against the valid range)."""
    recent = Scope.recent(now, window_days)
    t0 = recent.t0 if body.from_ is None else body.from_
    t1 = recent.t1 if body.to is None else body.to
    t0, t1 = t0 - t0 % 3600, -(-t1 // 3600) * 3600
    if t1 <= t0:
        raise ApiError(400, "bad_body", "to must be later than from")
    if t1 - t0 > MAX_DAYS * DAY:
        raise ApiError(400, "bad_body", f"at most {MAX_DAYS} days at once")
    group = body.group
    return Scope(t0, t1, None if group is None else [group], live=body.to is None)


def routes(context: PluginContext) -> list[Route]:
    from balans_edge.plugins.analytics.plugin import run_analytics

    async def run(request: Request, body: RunBody) -> Any:
        config = context.config
        scope = scope_of(body, time.time(), config.window_days)
        if scope.group_ids and await context.registry.registry_get("groups", scope.group_ids[0]) is None:
            raise ApiError(404, "not_found", f"group {scope.group_ids[0]!r} is not in the registry")
        found = await run_analytics(context, scope)
        return json({
            "from": iso(scope.t0), "to": iso(scope.t1), "group": scope.group_ids[0] if scope.group_ids else None,
            "findings": [{"id": f.id, "detector": f.detector, "kind": f.kind, "subject": f.subject,
                          "severity": str(f.severity), "message": f.message} for f in found],
        })

    async def meter_forecast(request: Request, meter_id: str, query: ForecastQuery) -> Any:
        meter = await context.registry.registry_get("meters", meter_id)
        if meter is None:
            raise ApiError(404, "not_found", f"meter {meter_id!r} is not in the registry")
        month = month_value(query.month, context.tz)
        await context.detection.settle()
        f = await forecasts.meter(context.queries, meter, month, context.tz, time.time())
        norm = context.config.monthly_norms.get(str(meter.resource))
        peers = await forecasts.group_average(context.queries, meter.group_id, month, context.tz, time.time())
        return json(forecasts.report({"meter_id": meter_id, "unit": meter.unit, "month": month}, f, norm, peers))

    async def group_forecast(request: Request, group_id: str, query: ForecastQuery) -> Any:
        group = await context.registry.registry_get("groups", group_id)
        if group is None:
            raise ApiError(404, "not_found", f"group {group_id!r} is not in the registry")
        month = month_value(query.month, context.tz)
        await context.detection.settle()
        f = await forecasts.group(context.queries, group, month, context.tz, time.time())
        return json(forecasts.report({"group_id": group_id, "unit": group.unit, "month": month}, f, None, None))

    async def plan(request: Request, query: PlanQuery) -> Any:
        from balans_edge.plugins.analytics.plan import verification_plan

        action = query.action
        await context.detection.settle()
        found = await verification_plan(context.queries, context.config, context.tz, time.time(),
                                        context.site.completeness_threshold)
        return json({"meters": [h.to_json() for h in found if action is None or h.action == action]})

    return [
        Route("GET", "/api/v1/meters/<meter_id>/forecast", meter_forecast,
              "Month to date and end-of-month forecast of a meter, next to its group's average and the norm",
              params=(Param("meter_id", description="a meter's id"),), query=ForecastQuery, response=Forecast,
              tags=("analytics",), responses={200: "OK", 400: "bad month", 404: "no such meter"}),
        Route("GET", "/api/v1/groups/<group_id>/forecast", group_forecast,
              "Month to date and end-of-month forecast of what flows into a group",
              params=(Param("group_id", description="a balance group's id"),), query=ForecastQuery, response=Forecast,
              tags=("analytics",), responses={200: "OK", 400: "bad month", 404: "no such group"}),
        Route("GET", "/api/v1/analytics/verification-plan", plan,
              "Every meter's health and what to do: verify (a critical meter fault, or its expected loss costs "
              "more than a check), inspect the premises (the meter is right, the flat leaks), due by calendar, "
              "may stay in service (its group balances), or ok",
              query=PlanQuery, response=Plan, tags=("analytics",), responses={200: "OK", 400: "bad action"}),
        Route("POST", PATH, run, "Run every detector now over a group (or all) and a period (default: the "
              "last window_days); findings are stored and deduplicated as in a scheduled run",
              role="operator", tags=("analytics",), body=RunBody, response=Run,
              responses={200: "the findings of the run", 400: "bad body", 404: "no such group"}),
    ]


def add_commands(group: click.Group) -> None:
    import click

    from balans_edge import cli as _cli

    @group.command("verification-plan")
    @_cli.CONFIG_OPTION
    @click.option("--all", "show_all", is_flag=True, help="Also list the meters that need nothing.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def plan_command(config_path: Any, show_all: bool, as_json: bool) -> None:
        """Meters to verify now (expected loss costs more than a verification), due by calendar,
        and those that may stay in service because their group balances."""
        import json as _json
        from zoneinfo import ZoneInfo

        from balans_edge.plugins.analytics.plan import verification_plan
        from balans_edge.plugins.analytics.plugin import NAME

        _, config = _cli.prepare(config_path)
        settings = config.plugins[NAME]

        async def build(queries: Any) -> list[Any]:
            return await verification_plan(queries, settings, ZoneInfo(config.site.timezone), time.time(),
                                           config.balance.completeness_threshold)

        found = [h for h in _cli.run_async(lambda: _cli.with_storage(config, build)) if show_all or h.action != "ok"]
        if as_json:
            click.echo(_json.dumps([h.to_json() for h in found], indent=2))
            return
        click.echo(f"{'meter':<16} {'action':<9} {'score':>5} {'loss/yr':>9} {'money/yr':>10} {'age':>5}  findings")
        for h in found:
            money = "—" if h.money_per_year is None else f"{h.money_per_year:,.0f}"
            loss = "?" if h.loss_per_year is None else f"{h.loss_per_year:.2f}"
            click.echo(f"{h.meter_id:<16} {h.action:<9} {h.score:>5} {loss:>9} {money:>10} "
                       f"{h.age_years:>5.1f}  {', '.join(h.open_findings)}")
        count = {a: sum(h.action == a for h in found) for a in ACTIONS}
        click.echo(f"{count['verify']} to verify, {count['inspect']} premises to inspect, {count['due']} due, "
                   f"{count['may_stay']} may stay in service")

    @group.command("run")
    @click.option("--group", "group_id", default=None, help="Only this balance group (default: all).")
    @click.option("--from", "t_from", default=None, help="ISO-8601 start (default: the analytics window).")
    @click.option("--to", "t_to", default=None, help="ISO-8601 end (default: the last full hour).")
    @click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="The running server.")
    @click.option("--token", default=None, help=f"Bearer token of an operator (default: ${_cli.BEARER_ENV}).")
    def run_command(group_id: str | None, t_from: str | None, t_to: str | None, url: str, token: str | None) -> None:
        """Run the detectors now, through the running server, and list the findings."""
        import httpx

        token = token or os.environ.get(_cli.BEARER_ENV)
        if not token:
            raise click.ClickException(f"no token: give --token or set {_cli.BEARER_ENV}")
        body = {"group": group_id, "from": t_from, "to": t_to}
        try:
            r = httpx.post(url.rstrip("/") + PATH, json=body, headers={"Authorization": f"Bearer {token}"},
                           timeout=httpx.Timeout(30.0, read=None))
        except httpx.HTTPError as exc:
            raise click.ClickException(f"{url}: {exc}") from None
        answer = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != 200:
            raise click.ClickException(answer.get("error", {}).get("message", r.text))
        click.echo(f"{answer['from']} .. {answer['to']}: {len(answer['findings'])} findings")
        for f in answer["findings"]:
            click.echo(f"  #{f['id']} {f['severity']:<8} {f['kind']:<22} {f['subject']:<14} {f['message']}")

    from balans_edge.plugins.analytics.backtest_cli import add_backtest_command

    add_backtest_command(group)
