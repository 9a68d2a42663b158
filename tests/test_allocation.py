"""Allocation of a house's month imbalance to its accounts (ОДН): rules, caps, fallbacks."""

from __future__ import annotations

import json

import pytest

from balans_edge.core.allocation import AccountUse, AllocationReport, allocate
from balans_edge.core.model import Group, GroupInput, Resource


def house(rule: str = "consumption", norm: float | None = None, price: float | None = 40.0) -> Group:
    return Group("h1", Resource.WATER, "m3", (GroupInput("in1"),), allocation_rule=rule, odn_norm=norm, price=price)


ACCOUNTS = [
    AccountUse("A", "Ivanov", 50.0, 64.0),
    AccountUse("B", "Petrov", 30.0, 32.0),
    AccountUse("C", "Sidorov", 20.0, 32.0),
]
"""Consumption shares 1/2, 1/4, 1/4; area shares 1/2, 3/10, 1/5."""


def allocated(report: AllocationReport) -> list[float]:
    return [line.allocated for line in report.lines]


def test_consumption_rule_shares_the_imbalance_by_volume() -> None:
    r = allocate(house(), "2024-03", 160.0, 128.0, ACCOUNTS)
    assert r.imbalance == 32.0
    assert [line.share for line in r.lines] == [0.5, 0.25, 0.25]
    assert allocated(r) == [16.0, 8.0, 8.0]
    assert [line.amount for line in r.lines] == [640.0, 320.0, 320.0]
    assert [line.cap for line in r.lines] == [None, None, None]
    assert r.allocated == 32.0
    assert r.utility_loss == 0.0
    assert r.flags == []
    assert r.rule == r.applied_rule == "consumption"


def test_area_rule_shares_by_floor_area() -> None:
    r = allocate(house("area"), "2024-03", 138.0, 128.0, ACCOUNTS)
    assert allocated(r) == pytest.approx([5.0, 3.0, 2.0], abs=1e-12)
    assert r.utility_loss == pytest.approx(0.0, abs=1e-12)
    assert r.flags == []


def test_equal_rule_ignores_volume_and_area() -> None:
    r = allocate(house("equal"), "2024-03", 137.0, 128.0, ACCOUNTS)
    assert allocated(r) == pytest.approx([3.0, 3.0, 3.0], abs=1e-12)
    assert r.applied_rule == "equal"


def test_norm_caps_each_account_and_the_excess_stays_with_the_utility() -> None:
    # Caps 0.3 m3/m2 x (50, 30, 20) = 15, 9, 6 against shares 16, 8, 8.
    r = allocate(house(norm=0.3), "2024-03", 160.0, 128.0, ACCOUNTS)
    assert [line.cap for line in r.lines] == pytest.approx([15.0, 9.0, 6.0])
    assert allocated(r) == pytest.approx([15.0, 8.0, 6.0])
    assert r.allocated == pytest.approx(29.0)
    assert r.utility_loss == pytest.approx(3.0)
    assert r.flags == ["capped"]


def test_generous_norm_cuts_nothing() -> None:
    r = allocate(house(norm=0.4), "2024-03", 160.0, 128.0, ACCOUNTS)
    assert allocated(r) == [16.0, 8.0, 8.0]
    assert r.utility_loss == 0.0
    assert r.flags == []


def test_account_without_area_gets_the_cap_of_the_mean_area_of_the_others() -> None:
    accounts = [
        AccountUse("A", "", 50.0, 64.0),
        AccountUse("B", "", None, 32.0),
        AccountUse("C", "", 30.0, 32.0),
    ]
    # Caps 0.1 x (50, mean(50, 30) = 40, 30) = 5, 4, 3 against shares 8, 4, 4.
    r = allocate(house(norm=0.1), "2024-03", 144.0, 128.0, accounts)
    assert [line.cap for line in r.lines] == pytest.approx([5.0, 4.0, 3.0])
    assert allocated(r) == pytest.approx([5.0, 4.0, 3.0])
    assert r.utility_loss == pytest.approx(4.0)
    assert r.flags == ["capped", "missing_area"]
    assert r.missing_area == ["B"]


def test_norm_without_any_area_charges_nobody() -> None:
    accounts = [AccountUse("A", "", None, 10.0), AccountUse("B", "", None, 10.0)]
    r = allocate(house(norm=0.1), "2024-03", 25.0, 20.0, accounts)
    assert [line.cap for line in r.lines] == [0.0, 0.0]
    assert allocated(r) == [0.0, 0.0]
    assert r.utility_loss == 5.0
    assert r.flags == ["capped", "missing_area"]
    assert r.missing_area == ["A", "B"]


def test_area_rule_gives_no_share_to_an_account_without_area() -> None:
    accounts = [
        AccountUse("A", "", 60.0, 1.0),
        AccountUse("B", "", None, 1.0),
        AccountUse("C", "", 20.0, 1.0),
        AccountUse("D", "", 0.0, 1.0),
    ]
    r = allocate(house("area"), "2024-03", 12.0, 4.0, accounts)
    assert [line.share for line in r.lines] == [0.75, 0.0, 0.25, 0.0]
    assert allocated(r) == [6.0, 0.0, 2.0, 0.0]
    assert r.applied_rule == "area"
    assert r.flags == ["missing_area"]
    assert r.missing_area == ["B", "D"]


def test_area_rule_without_any_area_falls_back_to_equal() -> None:
    accounts = [AccountUse("A", "", None, 3.0), AccountUse("B", "", None, 1.0)]
    r = allocate(house("area"), "2024-03", 10.0, 4.0, accounts)
    assert allocated(r) == [3.0, 3.0]
    assert r.rule == "area"
    assert r.applied_rule == "equal"
    assert r.flags == ["fallback_equal", "missing_area"]


def test_consumption_rule_with_nobody_consuming_falls_back_to_equal() -> None:
    accounts = [AccountUse(a, "", 40.0, 0.0) for a in "ABCD"]
    r = allocate(house(), "2024-03", 8.0, 0.0, accounts)
    assert allocated(r) == [2.0, 2.0, 2.0, 2.0]
    assert r.applied_rule == "equal"
    assert r.flags == ["fallback_equal"]


def test_negative_consumption_earns_no_refund() -> None:
    accounts = [AccountUse("A", "", None, 6.0), AccountUse("B", "", None, -2.0)]
    r = allocate(house(), "2024-03", 8.0, 4.0, accounts)
    assert [line.share for line in r.lines] == [1.0, 0.0]
    assert allocated(r) == [4.0, 0.0]


def test_negative_imbalance_allocates_nothing() -> None:
    r = allocate(house(), "2024-03", 90.0, 100.0, ACCOUNTS, fixable=5.0)
    assert r.imbalance == -10.0
    assert allocated(r) == [0.0, 0.0, 0.0]
    assert [line.amount for line in r.lines] == [0.0, 0.0, 0.0]
    assert r.allocated == 0.0
    assert r.utility_loss == -10.0
    assert r.imbalance_if_fixed == 0.0
    assert r.allocated_if_fixed == 0.0
    assert r.utility_loss_if_fixed == 0.0
    assert r.flags == ["negative_imbalance"]


def test_missing_input_allocates_nothing() -> None:
    r = allocate(house(), "2024-03", None, 100.0, ACCOUNTS, fixable=5.0)
    assert r.imbalance is None
    assert r.allocated == 0.0
    assert allocated(r) == [0.0, 0.0, 0.0]
    assert r.utility_loss is None
    assert r.imbalance_if_fixed is None
    assert r.utility_loss_if_fixed is None
    assert r.flags == ["input_missing"]


def test_fixable_volume_reruns_the_allocation_on_the_smaller_imbalance() -> None:
    # 32 - 12 = 20 -> shares 10, 5, 5, all under the caps 15, 9, 6.
    r = allocate(house(norm=0.3), "2024-03", 160.0, 128.0, ACCOUNTS, fixable=12.0)
    assert r.allocated == pytest.approx(29.0)
    assert r.utility_loss == pytest.approx(3.0)
    assert r.imbalance_if_fixed == 20.0
    assert r.allocated_if_fixed == pytest.approx(20.0)
    assert r.utility_loss_if_fixed == pytest.approx(0.0, abs=1e-12)


def test_fixable_beyond_the_imbalance_leaves_nothing() -> None:
    r = allocate(house(), "2024-03", 160.0, 128.0, ACCOUNTS, fixable=50.0)
    assert r.imbalance_if_fixed == 0.0
    assert r.allocated_if_fixed == 0.0
    assert r.utility_loss_if_fixed == 0.0
    assert r.allocated == 32.0


def test_incomplete_month_is_flagged_by_threshold() -> None:
    assert allocate(house(), "2024-03", 160.0, 128.0, ACCOUNTS, completeness=0.9).flags == ["incomplete"]
    assert allocate(house(), "2024-03", 160.0, 128.0, ACCOUNTS, completeness=0.95).flags == []
    assert allocate(house(), "2024-03", 160.0, 128.0, ACCOUNTS, completeness=0.9, threshold=0.85).flags == []


def test_without_price_there_are_no_amounts() -> None:
    r = allocate(house(price=None), "2024-03", 160.0, 128.0, ACCOUNTS)
    assert [line.amount for line in r.lines] == [None, None, None]
    assert r.to_json()["amount"] is None
    assert r.to_json()["utility_loss_amount"] is None


def test_no_accounts_leaves_the_whole_imbalance_to_the_utility() -> None:
    r = allocate(house(), "2024-03", 10.0, 4.0, [])
    assert r.lines == []
    assert r.allocated == 0.0
    assert r.utility_loss == 6.0
    assert r.flags == ["no_accounts"]


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown allocation rule"):
        allocate(house("per_capita"), "2024-03", 10.0, 4.0, ACCOUNTS)


def test_json_rounds_volumes_to_6_and_money_to_2_decimals() -> None:
    accounts = [AccountUse("A", "Ivanov", 33.3333333, 2.0 / 3.0)]
    r = allocate(house(price=10.0, norm=1.0), "2024-03", 1.0, 2.0 / 3.0, accounts, fixable=0.1, completeness=0.987654)
    out = r.to_json()
    assert json.loads(json.dumps(out)) == out
    assert out["imbalance"] == 0.333333
    assert out["allocated"] == 0.333333
    assert out["amount"] == 3.33
    assert out["utility_loss"] == 0.0
    assert out["utility_loss_amount"] == 0.0
    assert out["imbalance_if_fixed"] == 0.233333
    assert out["completeness"] == 0.9877
    assert out["lines"] == [
        {
            "account_id": "A",
            "consumer": "Ivanov",
            "consumed": 0.666667,
            "area_m2": 33.333333,
            "share": 1.0,
            "cap": 33.333333,
            "allocated": 0.333333,
            "amount": 3.33,
        }
    ]
    assert out["flags"] == []
    assert out["month"] == "2024-03"
    assert out["rule"] == out["applied_rule"] == "consumption"
