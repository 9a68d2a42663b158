"""Meter health and the verification plan: verify a meter when the data says so.

Meters are verified by calendar (every six years for a water meter) although
most are fine and a few fail long before. A meter's open findings say how
much it is expected to lose per year; when that costs more than a
verification, verify it now. A meter past its calendar interval whose group
balances (small, steady imbalance, complete data) and that nothing points at
may stay in service. The health score sums up both for a list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from balans_edge.core.losses import finding_volume
from balans_edge.core.model import Meter

YEAR_S = 365 * 86400
PENALTY = {"critical": 40, "warning": 20, "info": 5}
"""Health points an open finding of each severity costs."""
OPEN = ("open", "acknowledged")


@dataclass(frozen=True, slots=True)
class GroupState:
    """How a group balanced over the recent period."""

    loss_pct: float | None
    norm_pct: float | None
    completeness: float
    price: float | None


@dataclass(frozen=True, slots=True)
class MeterHealth:
    meter_id: str
    group_id: str | None
    score: int
    """0..100: 100 is a meter nothing points at in a balanced, well-read group."""
    open_findings: list[str]
    """Kinds of the findings about it that are open or acknowledged."""
    loss_per_year: float
    """Volume its findings say it loses per year, in its unit."""
    money_per_year: float | None
    age_years: float
    calendar_due: bool
    action: str
    """``verify`` (expected loss exceeds the cost), ``may_stay`` (due by calendar, but the data
    says it is fine), ``due`` (due by calendar, data cannot vouch for it), or ``ok``."""

    def to_json(self) -> dict[str, Any]:
        return {
            "meter_id": self.meter_id, "group_id": self.group_id, "score": self.score,
            "open_findings": self.open_findings, "loss_per_year": round(self.loss_per_year, 3),
            "money_per_year": None if self.money_per_year is None else round(self.money_per_year, 2),
            "age_years": round(self.age_years, 1), "calendar_due": self.calendar_due, "action": self.action,
        }


def _yearly(finding: Mapping[str, Any], now: float) -> float:
    """A finding's volume per year: its volume over the time since its start (at least a day)."""
    data = finding.get("data") or {}
    volume = finding_volume(finding)
    if volume is None or volume <= 0:
        return 0.0
    start = data.get("start") if isinstance(data.get("start"), int | float) else finding.get("first_seen")
    seen = finding.get("last_seen") or now
    span = max(float(seen) - float(start or seen), 86400.0)
    return float(volume) * YEAR_S / span


def balanced(state: GroupState | None, threshold: float, balanced_pct: float) -> bool:
    """The group's data vouch for its meters: complete, and the loss within its norm (or a small share)."""
    if state is None or state.loss_pct is None or state.completeness < threshold:
        return False
    limit = state.norm_pct if state.norm_pct is not None else balanced_pct
    return abs(state.loss_pct) <= limit


def meter_health(meters: Sequence[Meter], findings: Sequence[Mapping[str, Any]],
                 groups: Mapping[str, GroupState], now: float, *, interval_years: float = 6.0,
                 verification_cost: float = 1500.0, threshold: float = 0.95,
                 balanced_pct: float = 5.0) -> list[MeterHealth]:
    """Health of every meter and what to do about it, worst first."""
    about: dict[str, list[Mapping[str, Any]]] = {}
    for f in findings:
        if f.get("status", "open") in OPEN:
            about.setdefault(str(f.get("subject")), []).append(f)
    out = []
    for m in meters:
        own = about.get(m.meter_id, [])
        state = groups.get(m.group_id) if m.group_id else None
        ok_group = balanced(state, threshold, balanced_pct)
        score = 100 - sum(PENALTY.get(str(f.get("severity")), 10) for f in own)
        score -= 0 if ok_group else 15
        loss = sum(_yearly(f, now) for f in own)
        price = state.price if state is not None else None
        money = None if price is None else loss * price
        age = (now - m.install_time) / YEAR_S
        due = age >= interval_years
        if money is not None and money > verification_cost:
            action = "verify"
        elif due:
            action = "may_stay" if ok_group and not own else "due"
        else:
            action = "ok"
        out.append(MeterHealth(m.meter_id, m.group_id, max(0, min(100, score)), sorted({str(f.get("kind"))
                                                                                      for f in own}),
                               loss, money, age, due, action))
    order = {"verify": 0, "due": 1, "may_stay": 2, "ok": 3}
    return sorted(out, key=lambda h: (order[h.action], h.score, h.meter_id))
