"""The consumer-leak detector on households that draw water in uses of a few litres:
a small constant leak is found by the first daily run a day after its onset, and a
new habit that keeps the meter turning without a constant floor is not a leak."""

from __future__ import annotations

import numpy as np
import pytest

from balans_edge.core.analytics.consumer_leak import ConsumerLeakDetector
from balans_edge.core.analytics.data import GroupData
from balans_edge.core.times import HOUR
from balans_edge.plugins.dmesh.scenario import Leak, Scenario, generate

USE_LITRES = 8.0
"""Households draw water in uses of about this many litres (a flush, a wash)."""
ONSET = 10 * 24 + 7
"""The fault begins on the 11th day at 07:00: ten days of the household as it was before."""


def member_by_use(scenario: Scenario, pick: object) -> tuple[str, float]:
    """(the apartment ``pick`` (np.argmin or np.argmax) chooses by its use, its mean use in l/h)."""
    use = generate(scenario).truth.consumption_m3.sum(axis=1)[1:]
    a = int(pick(use))
    return f"B1-A{a + 1:02d}", float(use[a]) * 1000 / scenario.hours


@pytest.mark.parametrize(("seed", "lph"), [(1, 6.0), (5, 10.0), (8, 10.0)])
def test_small_leak_on_a_low_use_meter_found_a_day_after_it_began(seed, lph):
    """A leak of 6-10 l/h behind the meter of the building's smallest user (under 5 l/h
    on average, 1-2 % of the building's use): the run 25 h after its onset reports it,
    so a daily run meets 48 h however the onset falls between runs."""
    scenario = Scenario(buildings=1, apartments=60, hours=ONSET + 25, seed=seed, event_litres=USE_LITRES)
    meter, mean_lph = member_by_use(scenario, np.argmin)
    assert mean_lph < 5.0
    sd = generate(scenario, [Leak(meter, lph, start=ONSET)])
    findings = ConsumerLeakDetector().detect_group(sd.group_data(0))
    assert [(f.subject, f.kind) for f in findings] == [(meter, "consumer_leak")]
    info = findings[0].data
    assert info["leak_lph"] == pytest.approx(lph, rel=0.2)
    assert -3 <= (info["start"] - int(sd.ts[ONSET])) / HOUR <= 0


def night_habit(data: GroupData, meter: str, seed: int) -> None:
    """From ONSET the household draws water in every hour of the night (22-07): one to
    three uses of 5-15 litres, never the same volume twice; and someone is at home by
    day, so its meter no longer stands still at all."""
    rng = np.random.default_rng([seed, 9])
    r = data.meter_ids.index(meter)
    since = np.arange(data.hours) >= ONSET
    night = since & ((data.local_hour >= 22) | (data.local_hour < 7))
    draws = np.array([rng.uniform(5.0, 15.0, k).sum() for k in rng.integers(1, 4, data.hours)])
    idle = since & ~night & (data.values[r] == 0)
    added = np.round(np.where(night, draws, np.where(idle, rng.uniform(5.0, 15.0, data.hours), 0.0))) / 1000
    data.values[r] += added
    data.input += added


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_new_night_habit_is_no_leak(seed):
    scenario = Scenario(buildings=1, apartments=30, hours=14 * 24, seed=seed, event_litres=USE_LITRES)
    meter, _ = member_by_use(scenario, np.argmax)
    data = generate(scenario).group_data(0)
    night_habit(data, meter, seed)
    flow = data.values[data.meter_ids.index(meter)] * 1000
    # The meter has not stood still (nor shown under 5 l) for the last two days, and its
    # nights were quiet before: continuity alone would call this a leak.
    assert flow[-48:].min() >= 5.0
    assert ConsumerLeakDetector().detect_group(data) == []
    # The same household with a constant leak of 8 l/h from the same hour is reported.
    leaking = generate(scenario, [Leak(meter, 8.0, start=ONSET)]).group_data(0)
    assert [f.subject for f in ConsumerLeakDetector().detect_group(leaking)] == [meter]
