"""The analytics plugin: contributes the built-in loss detectors of ``core/analytics``
through the detector hook (as a partner's plugin would), runs every detector on a
schedule, and lets an operator run them on demand for a group and a period."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from balans_edge import hookimpl
from balans_edge.core.analytics.base import DEFAULT_WINDOW_DAYS, GroupDetector, Scope
from balans_edge.core.analytics.night_flow_settings import GroupNightFlow, check_entries
from balans_edge.core.components import Finding
from balans_edge.core.context import Plugin, PluginContext
from balans_edge.core.model import Resource
from balans_edge.core.tasks import cancel
from balans_edge.settings import setting

if TYPE_CHECKING:
    import click

    from balans_edge.plugins.analytics.night_flow import NightFlowSource


log = logging.getLogger(__name__)

NAME = "analytics"


DETECTOR_NAMES = ("slowed-meter", "unmetered-connection", "consumer-leak", "group-leak", "stuck-meter",
                  "reverse-meter", "module-status", "consumption-drop", "profile-tamper", "starting-flow",
                  "clock-drift")


def _known_detectors(names: list[str]) -> str | None:
    unknown = sorted(set(names) - set(DETECTOR_NAMES))
    return f"unknown detectors {unknown} (known: {', '.join(DETECTOR_NAMES)})" if unknown else None


@dataclass(frozen=True)
class AnalyticsConfig:
    """``[plugins.analytics]``: the detectors of losses, theft and broken meters, and the
    verification plan (plugins/analytics/README.md)."""

    interval_s: Annotated[int, setting(range=(0, 7 * 86400), doc=(
        "run every detector this often (0: only on demand)"))] = 3600
    first_run_s: Annotated[int, setting(range=(0, 86400), doc=(
        "the first scheduled run this long after start (at most interval_s)"))] = 60
    window_days: Annotated[int, setting(range=(2, 120), doc="days of history each run looks at")] = DEFAULT_WINDOW_DAYS
    detectors: Annotated[list[str], setting(doc="built-in group detectors to run (empty: all)")] = \
        field(default_factory=list)
    verification_cost: Annotated[float, setting(range=(0.0, 1e9), doc="money a meter's verification costs")] = 1500.0
    verification_interval_years: Annotated[float, setting(range=(0.1, 50.0), doc=(
        "the calendar interval of verification"))] = 6.0
    balanced_loss_pct: Annotated[float, setting(range=(0.0, 100.0), doc=(
        "a group without a loss norm balances when its loss is within this"))] = 5.0
    plan_days: Annotated[int, setting(range=(7, 730), doc=(
        "days of balances the verification plan judges groups by"))] = 90
    monthly_norms: Annotated[dict[str, float], setting(doc=(
        "normal consumption of one meter in a month, per resource (e.g. `{ water = 6.0 }`, m3), that forecasts are "
        "compared with"))] = field(default_factory=dict)
    night_flow: Annotated[list[GroupNightFlow], setting(doc=(  # type: ignore[valid-type]
        "`[[plugins.analytics.night_flow]]`: the group-leak detector's night-flow preset and values per group "
        "(`group = \"*\"`: every group)"))] = field(default_factory=list)

    def __post_init__(self) -> None:
        problem = _known_detectors(self.detectors)
        if problem:
            raise ValueError(f"detectors: {problem}")
        try:
            check_entries(self.night_flow)
        except ValueError as exc:
            raise ValueError(f"night_flow: {exc}") from None
        resources = {r.value for r in Resource}
        for key, value in self.monthly_norms.items():
            if key not in resources:
                raise ValueError(f"monthly_norms: unknown resource {key!r} (known: {', '.join(sorted(resources))})")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"monthly_norms.{key}: expected a number >= 0, got {value!r}")


def detector_classes() -> dict[str, type[GroupDetector]]:
    """The built-in group detectors by name (imported when the plugin registers them:
    they bring scipy, which the rest of the server does not need)."""
    from balans_edge.core.analytics import (
        consumer_leak,
        imbalance_fit,
        meter_checks,
        night_flow,
        profile_tamper,
        registration,
    )

    classes: list[type[GroupDetector]] = [
        imbalance_fit.SlowedMeterDetector, imbalance_fit.UnmeteredDetector,
        consumer_leak.ConsumerLeakDetector, night_flow.NightFlowDetector, meter_checks.StuckMeterDetector,
        meter_checks.ReverseMeterDetector, meter_checks.ModuleStatusDetector, meter_checks.ConsumptionDropDetector,
        profile_tamper.ProfileTamperDetector, registration.StartingFlowDetector, registration.ClockDriftDetector,
    ]
    return {c.name: c for c in classes}


def build_detectors(config: AnalyticsConfig, names: list[str] | None = None, *,
                    source: NightFlowSource | None = None) -> list[GroupDetector]:
    """The detectors the plugin runs (``names``, else the configured ones, else all),
    in the order they run: the scheduler's and a backtest's. ``source``: the groups'
    night-flow settings (configuration and API-set values); without it, the
    configured ones."""
    from balans_edge.core.analytics.night_flow import NightFlowDetector
    from balans_edge.plugins.analytics.night_flow import NightFlowSource

    problem = _known_detectors(names or [])
    if problem:
        raise ValueError(problem)
    if source is None:
        source = NightFlowSource(config.night_flow, None)
    classes = detector_classes()
    return [NightFlowDetector(settings_for=source.settings, before_run=source.load) if n == "group-leak"
            else classes[n]() for n in names or config.detectors or DETECTOR_NAMES]


async def run_analytics(context: PluginContext, scope: Scope) -> list[Finding]:
    """Run every detector over ``scope`` (``DetectionService.run``: one run at a
    time, stored readings folded into consumption and balances first). The
    findings returned are the scope's: about its groups, their meters and the
    modules and concentrators of those (a detector that looks wider still has
    its findings stored)."""
    found = await context.detection.run(scope)
    subjects = await scope.subjects(context.queries)
    return found if subjects is None else [f for f in found if f.subject in subjects]


class Scheduler:
    """Component: every ``interval_s``, run the detectors over the last ``window_days``."""

    name = "analytics-scheduler"

    def __init__(self, context: PluginContext) -> None:
        self.context = context
        self.config: AnalyticsConfig = context.config
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    async def _loop(self) -> None:
        # The first run soon after start (data delivered at start-up is looked at
        # within first_run_s), then every interval.
        wait = min(self.config.interval_s, self.config.first_run_s)
        while True:
            await asyncio.sleep(wait)
            wait = self.config.interval_s
            try:
                await run_analytics(self.context, Scope.recent(time.time(), self.config.window_days))
                self.runs += 1
            except Exception:
                log.exception("analytics run failed")

    async def start(self) -> None:
        if self.config.interval_s:
            self._task = self.context.health.supervise(self, asyncio.create_task(self._loop(), name=self.name))

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None


class AnalyticsPlugin(Plugin):
    night_flow: NightFlowSource | None = None

    def source(self) -> NightFlowSource:
        """The groups' night-flow settings (configuration and API-set values)."""
        if self.night_flow is None:
            from balans_edge.plugins.analytics.night_flow import NightFlowSource

            self.night_flow = NightFlowSource(self.config.night_flow, self.context.database)
        return self.night_flow

    @hookimpl
    def config_schema(self) -> dict[str, type]:
        return {NAME: AnalyticsConfig}

    @hookimpl
    def register_migrations(self) -> list:
        from balans_edge.plugins.analytics.night_flow import MIGRATIONS

        return [MIGRATIONS]

    @hookimpl
    def register_detectors(self) -> list:
        return build_detectors(self.config, source=self.source())

    @hookimpl
    def register_components(self) -> list:
        return [Scheduler(self.context)]

    @hookimpl
    def register_routes(self) -> list:
        from balans_edge.plugins.analytics import night_flow
        from balans_edge.plugins.analytics.api import routes

        return [*routes(self.context), *night_flow.routes(self.context, self.source())]

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        from balans_edge.plugins.analytics.api import add_commands

        group: Any = cli.commands.get("analytics")
        if group is not None:
            add_commands(group)
