"""Slowed-meter and unmetered-connection detectors on scenarios with known faults."""

from __future__ import annotations

import re

import numpy as np
import pytest

from balans_edge.core.analytics.imbalance_fit import SlowedMeterDetector, UnmeteredDetector
from balans_edge.core.components import Severity
from balans_edge.plugins.dmesh.scenario import Leak, Magnet, Scenario, ScenarioData, Stuck, Unmetered, generate

HOURS = 24 * 21
START = 24 * 10


def scenario(seed: int) -> Scenario:
    return Scenario(buildings=1, apartments=40, hours=HOURS, seed=seed)


def heavy_apartment(seed: int) -> tuple[str, float]:
    """The apartment with the largest true consumption and its share of the input."""
    base = generate(scenario(seed))
    true = base.truth.consumption_m3
    shares = true[1:].sum(axis=1) / true[0].sum()
    i = int(np.argmax(shares))
    return base.meters[i + 1].meter_id, float(shares[i])


def run(data: ScenarioData) -> tuple[list, list]:
    group = data.group_data(0)
    return SlowedMeterDetector().detect_group(group), UnmeteredDetector().detect_group(group)


@pytest.mark.parametrize("seed", [1, 2])
def test_magnet_is_found_with_its_size_start_and_volume(seed: int) -> None:
    meter, share = heavy_apartment(seed)
    assert share >= 0.04
    data = generate(scenario(seed), [Magnet(meter, 0.4, start=START)])
    slowed, unmetered = run(data)
    assert [f.subject for f in slowed] == [meter]
    f = slowed[0]
    assert f.kind == "slowed_meter" and f.detector == "slowed-meter"
    assert f.severity == Severity.WARNING
    assert abs(f.data["under_registration_pct"] - 40) <= 10
    truth_start = int(data.ts[START])
    assert abs(f.data["start"] - truth_start) <= 2 * 86400
    hourly = data.truth.faults[0].hourly_m3
    detected = hourly[(data.ts[:-1] >= f.data["start"])].sum()
    assert f.data["volume_m3"] == pytest.approx(detected, rel=0.3)
    assert f.data["group_id"] == "B1" and f.data["money"] is None
    assert 0 < f.data["confidence"] <= 1
    evidence = f.data["evidence"]
    assert len(evidence["t"]) == len(evidence["imbalance"]) == len(evidence["scaled_profile"]) == 168
    said = re.search(rf"meter {meter} under-registers about (\d+) % since \d{{4}}-\d\d-\d\d", f.message)
    assert said is not None and abs(int(said.group(1)) - 40) <= 10
    assert unmetered == []


def test_strong_magnet_is_critical() -> None:
    meter, _ = heavy_apartment(3)
    slowed, _ = run(generate(scenario(3), [Magnet(meter, 0.6, start=START)]))
    assert [f.subject for f in slowed] == [meter]
    assert slowed[0].severity == Severity.CRITICAL
    assert abs(slowed[0].data["under_registration_pct"] - 60) <= 10


@pytest.mark.parametrize("seed", [4, 5])
def test_unmetered_draw_is_found_for_the_group_not_as_a_slowed_meter(seed: int) -> None:
    base = generate(scenario(seed))
    lph = 0.08 * base.truth.consumption_m3[0].sum() / HOURS * 1000
    data = generate(scenario(seed), [Unmetered("B1", lph, start=START)])
    slowed, unmetered = run(data)
    assert slowed == []
    assert [(f.subject, f.kind) for f in unmetered] == [("B1", "unmetered_connection")]
    f = unmetered[0]
    assert abs(f.data["start"] - int(data.ts[START])) <= 2 * 86400
    truth = data.truth.faults[0].volume_m3
    assert f.data["volume_m3"] == pytest.approx(truth, rel=0.35)
    assert 5 <= f.data["share_of_input_pct"] <= 12
    assert np.corrcoef(f.data["evidence"]["residual_profile"], f.data["evidence"]["consumption_profile"])[0, 1] > 0.6


def test_magnet_and_unmetered_in_one_group_are_told_apart() -> None:
    meter, _ = heavy_apartment(1)
    base = generate(scenario(1))
    lph = 0.08 * base.truth.consumption_m3[0].sum() / HOURS * 1000
    slowed, unmetered = run(generate(scenario(1), [Magnet(meter, 0.4, start=START),
                                                   Unmetered("B1", lph, start=START + 48)]))
    assert [f.subject for f in slowed] == [meter]
    assert [f.subject for f in unmetered] == ["B1"]


@pytest.mark.parametrize("seed", [0, 6, 7, 8])
def test_fault_free_groups_give_no_finding(seed: int) -> None:
    assert run(generate(scenario(seed))) == ([], [])


def test_metered_leak_gives_no_finding() -> None:
    meter, _ = heavy_apartment(9)
    assert run(generate(scenario(9), [Leak(meter, 30.0, start=START)])) == ([], [])


def test_price_gives_money() -> None:
    from dataclasses import replace

    meter, _ = heavy_apartment(1)
    group = generate(scenario(1), [Magnet(meter, 0.4, start=START)]).group_data(0)
    group.group = replace(group.group, price=2.5)
    [f] = SlowedMeterDetector().detect_group(group)
    assert f.data["money"] == pytest.approx(f.data["volume_m3"] * 2.5, abs=0.01)


def test_a_meter_that_stopped_just_before_the_rise_explains_it() -> None:
    """The biggest household's meter stops a day into the window; the draw the scan
    finds starts a little later. The meter stopped registering what the group lost:
    the stuck-meter detector's finding, not an unmetered connection."""
    base = Scenario(apartments=30, hours=14 * 24, seed=5, utc_offset_h=3, event_litres=8.0)
    heavy = f"B1-A{int(np.argmax(generate(base).truth.consumption_m3[1:].sum(axis=1))) + 1:02d}"
    data = generate(base, [Stuck(heavy, start=26)]).group_data(0, "Europe/Moscow")
    assert UnmeteredDetector().detect_group(data) == []
    # The same rise with the meter still registering is a draw past every meter.
    drawn = generate(base, [Unmetered("B1", 20.0, start=26)]).group_data(0, "Europe/Moscow")
    assert [f.kind for f in UnmeteredDetector().detect_group(drawn)] == ["unmetered_connection"]
