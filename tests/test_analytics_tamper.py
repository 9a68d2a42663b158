"""Registration moved between hours (attacks that keep the daily total): found by the
hourly balance, and not confused with households that change their habits."""

from __future__ import annotations

import pytest

from balans_edge.core.analytics.profile_tamper import ProfileTamperDetector
from balans_edge.plugins.dmesh.scenario import BehaviourChange, Scenario, Theft, generate

DAYS = 18
SCENARIO = Scenario(apartments=20, hours=DAYS * 24, seed=11, event_litres=8.0, utc_offset_h=3)


def heavy(data) -> str:
    """The apartment that uses most: its moved flow stands out of the noise."""
    use = data.truth.consumption_m3[1:].sum(axis=1)
    return data.meters[1 + int(use.argmax())].meter_id


@pytest.mark.parametrize("seed", [11, 12])
def test_a_meter_reversing_its_days_is_found(seed: int) -> None:
    scenario = Scenario(apartments=20, hours=DAYS * 24, seed=seed, event_litres=8.0, utc_offset_h=3)
    meter = heavy(generate(scenario))
    data = generate(scenario, [Theft(meter, "h6", start=(DAYS - 4) * 24)])
    moved = data.truth.faults[0].hourly_m3[(DAYS - 4) * 24 :]
    assert abs(moved.sum()) < 1e-9 and abs(moved).max() > 0  # hours moved, daily totals kept
    (finding,) = ProfileTamperDetector().detect_group(data.group_data(0, "Europe/Moscow"))
    assert (finding.subject, finding.kind) == (meter, "profile_tamper")
    assert finding.data["start"] == data.ts[(DAYS - 4) * 24] and finding.data["moved_lph"] > 3.0


def test_habits_that_change_and_clean_groups_are_not_findings() -> None:
    meter = heavy(generate(SCENARIO))
    for faults in ([], [BehaviourChange(meter, 0.3, start=(DAYS - 4) * 24)]):
        data = generate(SCENARIO, faults)
        assert ProfileTamperDetector().detect_group(data.group_data(0, "Europe/Moscow")) == []


def test_too_little_history_says_nothing() -> None:
    data = generate(Scenario(apartments=10, hours=8 * 24, seed=3, event_litres=8.0))
    assert ProfileTamperDetector().detect_group(data.group_data(0)) == []
