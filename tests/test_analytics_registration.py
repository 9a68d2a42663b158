"""Flow below the meters' starting flow and clock drift, on generated buildings with known faults."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from balans_edge.core.analytics.data import GroupData
from balans_edge.core.analytics.registration import (
    ClockDriftDetector,
    StartingFlowDetector,
    least_squares,
    offset_share,
)
from balans_edge.core.components import Severity
from balans_edge.plugins.dmesh.scenario import (
    ClockDrift,
    Dripping,
    Magnet,
    NetworkLeak,
    Scenario,
    ScenarioData,
    Unmetered,
    generate,
)

HOURS = 14 * 24
WEEK = 7 * 24


def site(seed: int, faults: list) -> tuple[ScenarioData, GroupData]:
    """A building whose households draw water in uses, so night hours have meters at rest."""
    sd = generate(Scenario(apartments=40, hours=HOURS, seed=seed, utc_offset_h=3, event_litres=8.0), faults)
    return sd, sd.group_data(0, "Europe/Moscow")


def test_dripping_loses_only_the_idle_hours_drips() -> None:
    sd, _ = site(1, [Dripping("B1", 0.3, 3.0, start=WEEK)])
    truth = sd.truth.faults[0]
    flats = ~sd.is_input
    unregistered = (sd.truth.consumption_m3[flats] - sd.truth.metered_m3[flats]).sum(axis=0)
    assert truth.meter_id == "B1-IN"
    assert np.allclose(truth.hourly_m3, unregistered)
    assert truth.hourly_m3[:WEEK].sum() == 0
    # 12 flats dripping 1.5-4.5 l/h: lost only in the hours a household draws nothing.
    lost_lph = truth.hourly_m3[WEEK:].mean() * 1000
    assert 5 < lost_lph < 12 * 4.5
    with pytest.raises(ValueError, match="event_litres"):
        generate(Scenario(hours=48), [Dripping("B1", 0.3, 3.0)])


@pytest.mark.parametrize("seed", [1, 2])
def test_drips_below_starting_flow_are_found_and_sized(seed: int) -> None:
    sd, data = site(seed, [Dripping("B1", 0.3, 3.0, start=WEEK)])
    (found,) = StartingFlowDetector().detect_group(data)
    assert (found.subject, found.kind) == ("B1", "below_starting_flow")
    lost = sd.truth.faults[0].hourly_m3[WEEK:].sum()
    assert found.data["volume_m3"] == pytest.approx(lost, rel=0.5)
    assert found.data["start"] == int(sd.ts[WEEK])


@pytest.mark.parametrize("faults", [
    [],
    [NetworkLeak("B1", 40.0, start=WEEK)],
    [Unmetered("B1", 40.0, start=WEEK)],
    [Magnet("B1-A05", 0.5, start=WEEK)],
], ids=["clean", "network-leak", "unmetered", "magnet"])
def test_other_losses_are_not_taken_for_drips(faults: list) -> None:
    for seed in (1, 2, 3):
        _, data = site(seed, faults)
        assert StartingFlowDetector().detect_group(data) == []


def test_coarse_pulse_meters_are_left_out() -> None:
    """A 10-litre pulse meter at zero may hide a pulse of use: no conclusion from it."""
    _, data = site(1, [Dripping("B1", 0.3, 3.0, start=WEEK)])
    coarse = replace(data, pulse_weight=np.full(len(data.meter_ids), 0.01))
    assert StartingFlowDetector().detect_group(coarse) == []
    assert ClockDriftDetector().detect_group(coarse) == []


@pytest.mark.parametrize(("seconds_per_day", "way"), [(300.0, "fast"), (-120.0, "slow")])
def test_a_drifting_clock_is_named_with_its_direction(seconds_per_day: float, way: str) -> None:
    _, data = site(3, [ClockDrift("B1-A05", seconds_per_day, start=72)])
    found = ClockDriftDetector().detect_group(data)
    assert [(f.subject, f.kind) for f in found] == [("B1-A05", "clock_drift")]
    (f,) = found
    assert f.severity == Severity.INFO and way in f.message
    # Mean offset over the last week: 4 to 11 days of drift; 30 min is the most reported.
    true_offset = seconds_per_day * 7.5
    assert np.sign(f.data["offset_s"]) == np.sign(seconds_per_day)
    assert min(abs(true_offset), 1800) * 0.6 <= abs(f.data["offset_s"]) <= min(abs(true_offset) * 1.5, 1800)
    assert np.sign(f.data["drift_s_per_day"]) == np.sign(seconds_per_day)


@pytest.mark.parametrize("faults", [[], [Magnet("B1-A05", 0.5, start=WEEK)], [Unmetered("B1", 40.0, start=WEEK)]],
                         ids=["clean", "magnet", "unmetered"])
def test_no_clock_is_blamed_without_drift(faults: list) -> None:
    for seed in (3, 4, 5):
        _, data = site(seed, faults)
        assert ClockDriftDetector().detect_group(data) == []


def test_offset_share_inverts_the_fit_of_shifted_volumes() -> None:
    """The coefficient a fit finds for a shift f of independent hourly uses, turned back into f."""
    rng = np.random.default_rng(0)
    use = rng.gamma(1.0, 10.0, 100_000)
    for f in (0.05, 0.15, 0.3):
        registered = (1 - f) * use + f * np.roll(use, 1)
        back = registered - np.roll(registered, 1)
        coef, _ = least_squares(np.stack([np.ones(len(use)), back], axis=1)[2:], (use - registered)[2:])
        assert offset_share(coef[1:2])[0] == pytest.approx(f, abs=0.01)
    assert offset_share(np.array([-0.7]))[0] == -0.5


def test_least_squares_marks_a_regressor_without_variation() -> None:
    x = np.stack([np.ones(50), np.zeros(50)], axis=1)
    coef, cov = least_squares(x, np.arange(50.0))
    assert np.isnan(coef).all() and np.isnan(cov).all()
