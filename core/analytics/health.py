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

from balans_edge.core.losses import finding_rate
from balans_edge.core.model import Meter
from balans_edge.core.times import DAY

YEAR_S = 365 * DAY
PENALTY = {"critical": 40, "warning": 20, "info": 5}
"""Health points an open finding of each severity costs."""
OPEN = ("open", "acknowledged")
PREMISES = frozenset({"consumer_leak"})
"""Kinds about what happens behind a meter that registers rightly (a leak in the flat):
the premises are to be inspected, not the meter, and the water is paid for."""
RECORDING = frozenset({"counter_reset", "clock_drift"})
"""Kinds about how the radio module recorded a sound meter (a restart, a clock off):
neither the meter nor the premises are at fault."""
ACTIONS = ("verify", "inspect", "due", "may_stay", "ok")
"""What to do about a meter, most urgent first."""


def meter_fault(kind: str) -> bool:
    """A finding of this kind puts the meter's registration in doubt (slowed, stuck,
    reversed, a magnet, tampering, ...); kinds no rule knows, partners' included, do too."""
    return kind not in PREMISES and kind not in RECORDING


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
    loss_per_year: float | None
    """Volume its meter-fault findings say it fails to register per year, in its unit;
    None when such a finding states no volume (a magnet: the loss is unknown, not 0)."""
    money_per_year: float | None
    age_years: float
    calendar_due: bool
    action: str
    """One of ``ACTIONS``: ``verify`` (a critical meter-fault finding, or the meter's expected
    loss costs more than a verification; without a price, any stated loss), ``inspect`` (the
    meter is right but the premises behind it leak), ``due`` (due by calendar, data cannot
    vouch for it), ``may_stay`` (due by calendar, but the data says it is fine), or ``ok``."""

    def to_json(self) -> dict[str, Any]:
        return {
            "meter_id": self.meter_id, "group_id": self.group_id, "score": self.score,
            "open_findings": self.open_findings,
            "loss_per_year": None if self.loss_per_year is None else round(self.loss_per_year, 3),
            "money_per_year": None if self.money_per_year is None else round(self.money_per_year, 2),
            "age_years": round(self.age_years, 1), "calendar_due": self.calendar_due, "action": self.action,
        }


def _yearly(finding: Mapping[str, Any]) -> float | None:
    """A finding's volume per year (its rate over its span); None when it states no volume."""
    rate = finding_rate(finding)
    return None if rate is None else rate * YEAR_S


def _loss(faults: Sequence[Mapping[str, Any]]) -> float | None:
    """Yearly volume the meter-fault findings state; None when there are some and none states one."""
    stated = [v for v in (_yearly(f) for f in faults) if v is not None]
    return sum(stated) if stated or not faults else None


def _action(faults: Sequence[Mapping[str, Any]], premises: bool, loss: float | None, money: float | None,
            due: bool, ok_group: bool, verification_cost: float) -> str:
    """What to do, most urgent first. A critical meter fault (a magnet that recurs, a stopped
    meter) is verified whatever it costs; otherwise the loss must be worth a verification at
    the group's price, and without a price any stated loss is (the plan then ranks by volume)."""
    critical = any(f.get("severity") == "critical" for f in faults)
    worth = money > verification_cost if money is not None else bool(loss)
    if critical or worth:
        return "verify"
    if premises:
        return "inspect"
    if due:
        return "may_stay" if ok_group and not faults else "due"
    return "ok"


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
    """Health of every meter and what to do about it: the most urgent action first, then
    the biggest money (priced groups), then the biggest volume, then the lowest score."""
    about: dict[str, list[Mapping[str, Any]]] = {}
    for f in findings:
        if f.get("status", "open") in OPEN:
            about.setdefault(str(f.get("subject")), []).append(f)
    out = []
    for m in meters:
        own = about.get(m.meter_id, [])
        faults = [f for f in own if meter_fault(str(f.get("kind")))]
        state = groups.get(m.group_id) if m.group_id else None
        ok_group = balanced(state, threshold, balanced_pct)
        score = 100 - sum(PENALTY.get(str(f.get("severity")), 10) for f in own)
        score -= 0 if ok_group else 15
        loss = _loss(faults)
        price = state.price if state is not None else None
        money = None if price is None or loss is None else loss * price
        age = (now - m.install_time) / YEAR_S
        due = age >= interval_years
        premises = any(str(f.get("kind")) in PREMISES for f in own)
        action = _action(faults, premises, loss, money, due, ok_group, verification_cost)
        out.append(MeterHealth(m.meter_id, m.group_id, max(0, min(100, score)), sorted({str(f.get("kind"))
                                                                                      for f in own}),
                               loss, money, age, due, action))
    return sorted(out, key=lambda h: (ACTIONS.index(h.action), h.money_per_year is None, -(h.money_per_year or 0.0),
                                      -(h.loss_per_year or 0.0), h.score, h.meter_id))
