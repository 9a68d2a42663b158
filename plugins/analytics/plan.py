"""The verification plan from storage: every meter's health, judged by its open
findings and by how its group balanced over the last ``plan_days``."""

from __future__ import annotations

from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from balans_edge.core import balance_queries as q
from balans_edge.core.analytics.health import GroupState, MeterHealth, meter_health
from balans_edge.core.storage.views import Queries
from balans_edge.core.times import DAY

if TYPE_CHECKING:
    from balans_edge.plugins.analytics.plugin import AnalyticsConfig

FINDINGS_READ = 100_000


async def verification_plan(queries: Queries, config: AnalyticsConfig, tz: ZoneInfo, now: float,
                            threshold: float) -> list[MeterHealth]:
    tree = await q.Tree.current(queries)
    t1 = int(now)
    entries = await q.losses(queries, tree, None, t1 - config.plan_days * DAY, t1, tz, threshold, t1)
    groups = {e.group_id: GroupState(e.loss_pct, e.norm, e.completeness, e.price) for e in entries}
    findings = await queries.findings(None, None, None, None, FINDINGS_READ)
    return meter_health(list(tree.meters.values()), findings, groups, now,
                        interval_years=config.verification_interval_years, verification_cost=config.verification_cost,
                        threshold=threshold, balanced_pct=config.balanced_loss_pct)
