"""Meter health and the verification plan: verify when the data says so."""

from __future__ import annotations

import pytest

from balans_edge.core.analytics.health import GroupState, balanced, meter_health
from balans_edge.core.model import Meter, Resource

NOW = 1_800_000_000
YEAR = 365 * 86400


def meter(meter_id: str, years: float, group: str = "H") -> Meter:
    return Meter(meter_id, Resource.WATER, "m3", 0.001, int(NOW - years * YEAR), group_id=group)


def finding(subject: str, volume: float, days: float, severity: str = "warning", status: str = "open") -> dict:
    return {"subject": subject, "kind": "slowed_meter", "severity": severity, "status": status,
            "first_seen": NOW - days * 86400, "last_seen": NOW, "data": {"volume_m3": volume}}


GOOD = GroupState(loss_pct=2.0, norm_pct=3.0, completeness=0.99, price=50.0)
LOSSY = GroupState(loss_pct=12.0, norm_pct=3.0, completeness=0.99, price=50.0)


def test_a_meter_whose_loss_costs_more_than_a_check_is_verified_first() -> None:
    found = [finding("A", volume=10.0, days=14)]  # 10 m3 in 2 weeks: 260 m3 a year, 13,036 a year at 50
    plan = meter_health([meter("A", 1), meter("B", 1)], found, {"H": LOSSY}, NOW, verification_cost=1500)
    assert [(h.meter_id, h.action) for h in plan] == [("A", "verify"), ("B", "ok")]
    a = plan[0]
    assert a.loss_per_year == pytest.approx(10.0 * 365 / 14)
    assert a.money_per_year == pytest.approx(a.loss_per_year * 50)
    assert a.open_findings == ["slowed_meter"] and a.score == 100 - 20 - 15


def test_old_meters_of_a_balanced_group_may_stay() -> None:
    plan = meter_health([meter("OLD", 7), meter("NEW", 2)], [], {"H": GOOD}, NOW, interval_years=6)
    assert {h.meter_id: h.action for h in plan} == {"OLD": "may_stay", "NEW": "ok"}
    assert all(h.score == 100 for h in plan)


def test_old_meters_are_due_when_the_data_cannot_vouch_for_them() -> None:
    incomplete = GroupState(loss_pct=1.0, norm_pct=3.0, completeness=0.5, price=None)
    for state in (LOSSY, incomplete):
        (h,) = meter_health([meter("OLD", 7)], [], {"H": state}, NOW)
        assert (h.action, h.calendar_due) == ("due", True)
    small = [finding("OLD", volume=0.01, days=30)]  # pointed at, but cheap to lose: still no verdict of "fine"
    (h,) = meter_health([meter("OLD", 7)], small, {"H": GOOD}, NOW)
    assert h.action == "due"


def test_closed_findings_do_not_count() -> None:
    found = [finding("A", 10.0, 14, status="false_alarm"), finding("A", 10.0, 14, status="resolved")]
    (h,) = meter_health([meter("A", 1)], found, {"H": GOOD}, NOW)
    assert (h.action, h.score, h.loss_per_year, h.open_findings) == ("ok", 100, 0.0, [])


def test_balanced_uses_the_norm_or_a_default_share() -> None:
    assert balanced(GOOD, 0.95, 5.0)
    assert not balanced(LOSSY, 0.95, 5.0)
    no_norm = GroupState(loss_pct=4.0, norm_pct=None, completeness=1.0, price=None)
    assert balanced(no_norm, 0.95, 5.0) and not balanced(no_norm, 0.95, 3.0)
    assert not balanced(None, 0.95, 5.0)


def test_a_critical_magnet_is_verified_and_its_loss_is_unknown_not_zero() -> None:
    magnet = {**finding("M", 0, 3, severity="critical"), "kind": "magnet", "data": {"hours": 30}}
    plan = meter_health([meter("M", 1), meter("B", 1)], [magnet], {"H": GOOD}, NOW)
    assert [(h.meter_id, h.action) for h in plan] == [("M", "verify"), ("B", "ok")]
    assert plan[0].loss_per_year is None and plan[0].money_per_year is None
    assert plan[0].to_json()["loss_per_year"] is None
    warning = {**magnet, "severity": "warning"}  # a single glitch: scored, not verified for itself
    (h,) = meter_health([meter("M", 1)], [warning], {"H": GOOD}, NOW)
    assert (h.action, h.score) == ("ok", 80)


def test_a_leak_in_the_flat_sends_someone_to_the_flat_not_to_the_meter() -> None:
    leak = {**finding("F", volume=30.0, days=7, severity="critical"), "kind": "consumer_leak"}
    (h,) = meter_health([meter("F", 1)], [leak], {"H": LOSSY}, NOW, verification_cost=1500)
    assert h.action == "inspect"
    assert h.loss_per_year == 0 and h.money_per_year == 0  # the water went through the meter: it was registered
    slowed = finding("F", volume=10.0, days=14)
    (h,) = meter_health([meter("F", 1)], [leak, slowed], {"H": LOSSY}, NOW, verification_cost=1500)
    assert h.action == "verify" and h.loss_per_year == pytest.approx(10.0 * 365 / 14)


def test_without_a_price_meters_losing_water_are_verified_biggest_volume_first() -> None:
    unpriced = GroupState(loss_pct=12.0, norm_pct=3.0, completeness=0.99, price=None)
    found = [finding("SMALL", volume=1.0, days=14), finding("BIG", volume=5.0, days=14)]
    plan = meter_health([meter("SMALL", 1), meter("BIG", 1), meter("FINE", 1)], found, {"H": unpriced}, NOW)
    assert [(h.meter_id, h.action) for h in plan] == [("BIG", "verify"), ("SMALL", "verify"), ("FINE", "ok")]
    assert plan[0].money_per_year is None and plan[0].loss_per_year == pytest.approx(5.0 * 365 / 14)
