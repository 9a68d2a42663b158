"""Meter checks and the group's night-flow leak detector on generated buildings with known faults."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from balans_edge.core.analytics.consumer_leak import ConsumerLeakDetector
from balans_edge.core.analytics.data import GroupData
from balans_edge.core.analytics.meter_checks import (
    ConsumptionDropDetector,
    ModuleStatusDetector,
    ReverseMeterDetector,
    StuckMeterDetector,
    cusum_down,
)
from balans_edge.core.analytics.night_flow import GroupLeakDetector
from balans_edge.core.components import Severity
from balans_edge.core.model import Status
from balans_edge.core.times import HOUR
from balans_edge.plugins.dmesh.scenario import (
    BehaviourChange,
    ClockDrift,
    CounterReset,
    Dripping,
    Leak,
    LostModule,
    Magnet,
    NetworkLeak,
    Reversed,
    Scenario,
    ScenarioData,
    Stuck,
    generate,
)

DAYS = 14
HOURS = 24 * DAYS
CLEAN_SEEDS = range(5)
DETECTORS = [ConsumerLeakDetector, GroupLeakDetector, StuckMeterDetector, ReverseMeterDetector, ModuleStatusDetector,
             ConsumptionDropDetector]


def scenario(seed: int, faults: list, apartments: int = 30, hours: int = HOURS) -> tuple[ScenarioData, GroupData]:
    sd = generate(Scenario(buildings=1, apartments=apartments, hours=hours, seed=seed), faults)
    return sd, sd.group_data(0)


def only(findings: list, kind: str) -> dict:
    """The single finding of a kind, as subject -> finding."""
    found = {f.subject: f for f in findings if f.kind == kind}
    assert len(found) == len([f for f in findings if f.kind == kind]), "one finding per subject and kind"
    return found


def hours_off(sd: ScenarioData, t: int, hour: int) -> float:
    return (t - int(sd.ts[hour])) / HOUR


def change_usage(data: GroupData, meter: str, start: int, keep: float, balanced: bool) -> None:
    """Scale a member's consumption from ``start`` by ``keep``; ``balanced``: the input
    drops by the same volume (the water really was not used), else it does not
    (the meter stopped registering what still flows)."""
    r = data.meter_ids.index(meter)
    removed = data.values[r, start:] * (1.0 - keep)
    data.values[r, start:] -= removed
    if balanced:
        data.input[start:] -= removed


@pytest.mark.parametrize("seed", CLEAN_SEEDS)
def test_no_findings_without_faults(seed):
    _, data = scenario(seed, [])
    for detector in DETECTORS:
        assert detector().detect_group(data) == [], detector.__name__


def test_unrelated_faults_raise_no_loss_findings():
    faults = [LostModule(start=100, end=130, apartment="B1-A03"),
              ClockDrift(start=50, apartment="B1-A04", seconds_per_day=300)]
    _, data = scenario(11, faults)
    for detector in DETECTORS:
        assert detector().detect_group(data) == [], detector.__name__


# Consumer leak ---------------------------------------------------------------


@pytest.mark.parametrize(("seed", "meter", "lph", "start"), [(1, "B1-A07", 10.0, 150), (2, "B1-A15", 25.0, 30),
                                                             (3, "B1-A22", 12.0, 200)])
def test_consumer_leak_found_within_two_days(seed, meter, lph, start):
    sd, data = scenario(seed, [Leak(start=start, apartment=meter, litres_per_hour=lph)], hours=start + 48)
    found = only(ConsumerLeakDetector().detect_group(data), "consumer_leak")
    assert list(found) == [meter]
    info = found[meter].data
    assert info["leak_lph"] == pytest.approx(lph, rel=0.2)
    assert -14 <= hours_off(sd, info["start"], start) <= 1
    assert info["group_id"] == "B1" and info["money"] is None and 0 < info["confidence"] <= 1
    assert info["volume_m3"] == pytest.approx(lph / 1000 * 48, rel=0.4)
    assert meter in found[meter].message


def test_consumer_leak_sensor_flag_and_money():
    _, data = scenario(4, [Leak(start=100, apartment="B1-A05", litres_per_hour=2.0, sensor=True)])
    data.group = replace(data.group, price=100.0)
    found = only(ConsumerLeakDetector().detect_group(data), "consumer_leak")
    info = found["B1-A05"].data
    assert info["sensor"] is True and list(found) == ["B1-A05"]
    assert info["money"] == pytest.approx(info["volume_m3"] * 100.0, abs=0.01)


# Group leak ------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "lph", "start"), [(5, 30.0, 24 * 6 + 10), (6, 25.0, 24 * 9 + 3)])
def test_burst_step_of_the_night_flow(seed, lph, start):
    """Bursts above the allowance (5 % of the mean input, a real network's night-to-night wobble)."""
    sd, data = scenario(seed, [NetworkLeak(start=start, building="B1", litres_per_hour=lph)])
    found = only(GroupLeakDetector().detect_group(data), "burst")
    info = found["B1"].data
    assert info["rate_lph"] == pytest.approx(lph, rel=0.2)
    assert abs(hours_off(sd, info["start"], start)) <= 3
    assert found["B1"].severity == Severity.CRITICAL


def test_background_leak_grows_slowly():
    _, data = scenario(7, [])
    ramp = np.clip(np.arange(HOURS) - 48, 0, None) * 0.030 / (HOURS - 48)  # 0 -> 30 l/h over the window
    data.input[:] += ramp
    found = GroupLeakDetector().detect_group(data)
    assert [f.kind for f in found] == ["background_leak"]
    assert found[0].data["rate_lph"] == pytest.approx(30.0 * (HOURS - 72) / (HOURS - 48), rel=0.2)


# Stuck meter -----------------------------------------------------------------


@pytest.mark.parametrize(("seed", "meter", "start"), [(8, "B1-A03", 24 * 5), (9, "B1-A18", 24 * 9 + 13)])
def test_stuck_meter_found_within_three_days(seed, meter, start):
    sd, data = scenario(seed, [Stuck(start=start, apartment=meter)], hours=start + 72)
    found = only(StuckMeterDetector().detect_group(data), "stuck_meter")
    assert list(found) == [meter]
    info = found[meter].data
    assert abs(hours_off(sd, info["start"], start)) <= 3
    r = sd.row(meter)
    usual = sd.truth.consumption_m3[r, :start].mean() * 1000
    assert info["usual_lph"] == pytest.approx(usual, rel=0.2)
    assert info["volume_m3"] == pytest.approx(sd.truth.faults[0].volume_m3, rel=0.35)


@pytest.mark.parametrize("seed", [10, 12])
def test_vacant_apartment_is_not_stuck(seed):
    _, data = scenario(seed, [])
    change_usage(data, "B1-A09", 24 * 7, keep=0.0, balanced=True)
    assert StuckMeterDetector().detect_group(data) == []
    assert ConsumptionDropDetector().detect_group(data) == []


# Reversed meter --------------------------------------------------------------


def test_reversed_meter():
    sd, data = scenario(13, [Reversed(start=24 * 4, apartment="B1-A11")])
    found = only(ReverseMeterDetector().detect_group(data), "reverse_meter")
    assert list(found) == ["B1-A11"]
    info = found["B1-A11"].data
    assert info["start"] == int(sd.ts[24 * 4])
    assert info["volume_m3"] == pytest.approx(sd.truth.faults[0].volume_m3 / 2, rel=0.05)
    assert info["confidence"] > 0.9
    allowed = replace(data, reverse_allowed=frozenset({"B1-A11"}))  # registry flag reverse_allowed
    assert ReverseMeterDetector().detect_group(allowed) == []


# Module status ---------------------------------------------------------------


def test_module_status_flags():
    faults = [Magnet(start=24 * 3, apartment="B1-A02", fraction=0.5, flag_share=0.3),
              CounterReset(apartment="B1-A04", hour=100)]
    sd, data = scenario(14, faults)
    r = data.meter_ids.index("B1-A06")
    data.status[r, [30, 31]] |= int(Status.TAMPER)
    found = ModuleStatusDetector().detect_group(data)
    kinds = {(f.subject, f.kind): f for f in found}
    assert set(kinds) == {("B1-A02", "magnet"), ("B1-A04", "counter_reset"), ("B1-A06", "tamper")}
    magnet = kinds["B1-A02", "magnet"]
    assert magnet.severity == Severity.CRITICAL and magnet.data["hours"] > 10
    assert magnet.data["first"] >= int(sd.ts[24 * 3])
    assert kinds["B1-A06", "tamper"].severity == Severity.WARNING
    # The event: from the first flagged hour to the end of the last one.
    assert kinds["B1-A06", "tamper"].data == {"group_id": "B1", "hours": 2, "first": int(sd.ts[30]),
                                              "last": int(sd.ts[31]), "start": int(sd.ts[30]),
                                              "end": int(sd.ts[31]) + 3600}


# Consumption drop ------------------------------------------------------------


def test_cusum_closed_form_matches_the_recursion():
    r = np.random.default_rng(0).normal(0, 1, (3, 200))
    s, _ = cusum_down(r, 0.2)
    expected = np.zeros_like(r)
    for row in range(3):
        level = 0.0
        for h in range(200):
            level = max(0.0, level + r[row, h] - 0.2)
            expected[row, h] = level
    np.testing.assert_allclose(s, expected, atol=1e-9)


@pytest.mark.parametrize(("seed", "meter", "fraction", "start"), [(15, "B1-A08", 0.5, 24 * 7 + 5),
                                                                  (16, "B1-A20", 0.7, 24 * 8 + 17)])
def test_drop_with_imbalance_rise_is_a_finding(seed, meter, fraction, start):
    sd, data = scenario(seed, [Magnet(start=start, apartment=meter, fraction=fraction)])
    found = only(ConsumptionDropDetector().detect_group(data), "consumption_drop")
    assert list(found) == [meter]
    info = found[meter].data
    assert info["drop_pct"] == pytest.approx(fraction * 100, rel=0.2)
    assert -36 <= hours_off(sd, info["start"], start) <= 12
    assert info["volume_m3"] == pytest.approx(sd.truth.faults[0].volume_m3, rel=0.4)


@pytest.mark.parametrize("seed", [17, 18])
def test_halved_consumption_with_unchanged_balance_is_no_finding(seed):
    _, data = scenario(seed, [])
    change_usage(data, "B1-A12", 24 * 7, keep=0.5, balanced=True)
    assert ConsumptionDropDetector().detect_group(data) == []


@pytest.mark.parametrize("seed", [17, 18])
def test_halved_consumption_with_unchanged_input_is_a_finding(seed):
    _, data = scenario(seed, [])
    change_usage(data, "B1-A12", 24 * 7, keep=0.5, balanced=False)
    found = only(ConsumptionDropDetector().detect_group(data), "consumption_drop")
    assert list(found) == ["B1-A12"]
    assert found["B1-A12"].data["drop_pct"] == pytest.approx(50, rel=0.2)


@pytest.mark.parametrize("seed", [1, 3])
def test_a_household_using_less_when_drips_begin_is_not_blamed(seed: int) -> None:
    """Drips raise the imbalance at night; a family using less by day at the same time
    matches the rise in size and time, not in the hours of the day it happens."""
    base = Scenario(apartments=30, hours=HOURS, seed=seed, utc_offset_h=3, event_litres=8.0)
    use = generate(base).truth.consumption_m3[1:].sum(axis=1)
    heavy = f"B1-A{int(np.argmax(use)) + 1:02d}"
    faults = [Dripping("B1", 0.5, 3.0, start=7 * 24), BehaviourChange(heavy, 0.4, start=7 * 24)]
    data = generate(base, faults).group_data(0, "Europe/Moscow")
    assert [f.subject for f in ConsumptionDropDetector(min_profile_correlation=-1.0).detect_group(data)] == [heavy]
    assert ConsumptionDropDetector().detect_group(data) == []
