"""The night-flow analysis of a group's network: a burst and a growing leak in one
history are two findings with their own alarms, a repaired leak ends its event,
an accepted leak moves the baseline on, a quantised inflow's quiet nights raise
nothing, and each finding's evidence reaches the API."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from balans_edge.core.analytics.data import GroupData, local_calendar
from balans_edge.core.analytics.night_flow import Accepted, NightFlowDetector, accepted_leaks, resolution
from balans_edge.core.analytics.night_flow_settings import resolve
from balans_edge.core.model import Group, GroupInput, Resource

from conftest import auth, base_config

START = 1_704_067_200  # 2024-01-01 00:00 UTC
DAY, HOUR = 86400, 3600
MEAN = 20.0
"""The district's mean inflow, m3/h."""
PROFILE = np.array([9, 8, 7.5, 7.5, 8, 10, 16, 26, 30, 28, 26, 25, 25, 24, 22, 21, 22, 25, 29, 30, 27, 22, 16, 12.0])
"""A district's day: about 8 m3/h at night, 30 in the morning and evening peaks."""


def inflow(days: int, seed: int, leaks: list[np.ndarray] = ()) -> np.ndarray:
    """Hourly inflow: the profile scaled to MEAN, a wobble per night and per hour, and leaks added."""
    rng = np.random.default_rng(seed)
    hours = days * 24
    flow = np.tile(PROFILE / PROFILE.mean() * MEAN, days)
    flow *= np.repeat(1 + rng.normal(0, 0.015, days), 24)  # one night busier than another
    flow += rng.normal(0, 0.2, hours)
    for added in leaks:
        flow = flow + added
    return flow


def step(days: int, at: float, size: float, until: float | None = None) -> np.ndarray:
    h = np.arange(days * 24)
    return np.where((h >= at * 24) & ((h < until * 24) if until is not None else True), size, 0.0)


def ramp(days: int, at: float, per_day: float) -> np.ndarray:
    return np.clip((np.arange(days * 24) - at * 24) / 24, 0, None) * per_day


def quantised(flow: np.ndarray, q: float) -> np.ndarray:
    """Counted in whole steps, as a tank's level recorded to 1 cm gives an inflow."""
    counted = np.floor(np.cumsum(flow) / q)
    return np.diff(np.r_[0.0, counted]) * q


def district(flow: np.ndarray, group_id: str = "DMA") -> GroupData:
    t = START + np.arange(len(flow), dtype=np.int64) * HOUR
    hour, weekday = local_calendar(t, ZoneInfo("UTC"))
    empty = np.zeros((0, len(t)))
    group = Group(group_id, Resource.WATER, "m3", (GroupInput("IN"),), level="district")
    return GroupData(group, t, [], empty, empty.astype(np.int8), empty.astype(np.int64), flow, np.zeros(len(t)),
                     hour, weekday, np.zeros(0))


def runs(data: GroupData, first_day: int, accepted: list[Accepted] | None = None, history: int = 84) -> list[Any]:
    """The detector as the server's runs see it: once a day, over the history so far."""
    det = NightFlowDetector(accepted=accepted or ())
    out = []
    for day in range(first_day, data.hours // 24 + 1):
        end = day * 24
        out.append((end, det.detect_group(data.slice(max(0, end - history * 24), end))))
    return out


def day_of(t: int) -> float:
    return (t - START) / DAY


# The analysis --------------------------------------------------------------------


def test_a_burst_is_found_with_its_onset_size_and_volume() -> None:
    data = district(inflow(50, 1, [step(50, 35.4, 0.15 * MEAN)]))
    found = NightFlowDetector().detect_group(data)
    (burst,) = [f for f in found if f.kind == "burst"]
    info = burst.data
    assert info["rate"] == pytest.approx(0.15 * MEAN, rel=0.15)
    assert abs(day_of(info["start"]) - 35.4) <= 0.5
    assert info["ongoing"] is True
    assert info["volume_m3"] == pytest.approx(info["rate"] * info["hours"], rel=0.01)
    assert info["hours"] >= 13 * 24
    assert [f.kind for f in found] == ["burst"]


def test_a_burst_and_a_growing_leak_are_two_findings() -> None:
    days = 75
    data = district(inflow(days, 2, [ramp(days, 20, 0.006 * MEAN), step(days, 60.3, 0.2 * MEAN)]))
    found = {f.kind: f for f in NightFlowDetector().detect_group(data)}
    assert set(found) == {"burst", "background_leak"}
    assert abs(day_of(found["burst"].data["start"]) - 60.3) <= 0.5
    assert found["burst"].data["rate"] == pytest.approx(0.2 * MEAN, rel=0.25)
    growing = found["background_leak"].data
    assert day_of(growing["start"]) < 60  # it was there before the burst
    assert growing["rate"] > 0.1 * MEAN  # grown by 0.12 m3/h a day since day 20


def test_a_repaired_leak_ends() -> None:
    data = district(inflow(60, 3, [step(60, 35.5, 0.2 * MEAN, until=45.5)]))
    (burst,) = NightFlowDetector().detect_group(data)
    info = burst.data
    assert info["ongoing"] is False
    assert 45 <= day_of(info["end"]) <= 46  # the end of the last night it showed
    assert info["hours"] == pytest.approx(10 * 24, abs=24)
    assert "repaired" in burst.message


def test_an_accepted_leak_moves_the_baseline_on() -> None:
    days = 56
    first, second = 0.15 * MEAN, 0.1 * MEAN
    data = district(inflow(days, 4, [step(days, 30.5, first), step(days, 46.5, second)]))
    # Not accepted: one burst since day 30, as big as both.
    (alone,) = NightFlowDetector().detect_group(data)
    assert abs(day_of(alone.data["start"]) - 30.5) <= 0.5
    # The first accepted: it is the new normal, and the second stands on its own.
    known = Accepted(start=START + int(30.5 * DAY), rate=first, since=START + 33 * DAY)
    (found,) = NightFlowDetector(accepted=[known]).detect_group(data)
    assert abs(day_of(found.data["start"]) - 46.5) <= 0.5
    assert found.data["rate"] == pytest.approx(second, rel=0.25)
    # Accepted before the second leak came: nothing until it does.
    before = district(inflow(44, 4, [step(44, 30.5, first)]))
    assert NightFlowDetector(accepted=[known]).detect_group(before) == []
    assert NightFlowDetector().detect_group(before) != []


@pytest.mark.parametrize("seed", range(4))
def test_quiet_nights_of_a_quantised_inflow_raise_nothing(seed: int) -> None:
    flow = quantised(inflow(80, 10 + seed), 0.05 * MEAN)
    data = district(flow)
    assert resolution(flow) == pytest.approx(0.05 * MEAN, rel=1e-6)
    assert [f for _, found in runs(data, 21) for f in found] == []
    # Recorded coarser still: every quiet night at one level, but now and then one step up.
    flat = np.where(np.arange(len(flow)) % 24 < 6, 8.0, flow)
    flat[np.flatnonzero(np.arange(len(flow)) % 24 == 3)[::5]] += 0.05 * MEAN
    assert [f for _, found in runs(district(flat), 21) for f in found] == []


def test_a_quantised_burst_is_found() -> None:
    flow = quantised(inflow(50, 5, [step(50, 35.4, 0.15 * MEAN)]), 0.05 * MEAN)
    first = next(end for end, found in runs(district(flow), 21) if found)
    assert 35.4 * 24 < first <= (35.4 + 5) * 24


def test_settings_are_the_groups_own() -> None:
    data = district(inflow(50, 1, [step(50, 35.4, 0.06 * MEAN)]))
    assert NightFlowDetector().detect_group(data) == []  # 6 % is not above the inlet preset's 6 %
    lax = resolve("district_inlet", {"min_pct": 3.0, "min_lph": 0.0})
    assert [f.kind for f in NightFlowDetector(settings_for=lambda g, m: lax).detect_group(data)] == ["burst"]


# Through the server --------------------------------------------------------------


async def test_findings_alarms_acceptance_and_evidence_through_the_server(tmp_path: Path, make_server: Any,
                                                                          client_for: Any) -> None:
    server = await make_server(base_config(tmp_path, plugins={"analytics": {"interval_s": 0}}))
    client = client_for(server)
    days = 75
    data = district(inflow(days, 2, [ramp(days, 20, 0.006 * MEAN), step(days, 60.3, 0.2 * MEAN)]))
    for _, found in runs(data, 28):
        for f in found:
            await server.report_finding(f)
    stored = {f["kind"]: f for f in await server.storage.findings(group="DMA", limit=100)}
    assert sorted(stored) == ["background_leak", "burst"] and len(await server.storage.findings(limit=100)) == 2
    assert day_of(stored["background_leak"]["started"]) < 50  # seen growing long before the burst
    assert abs(day_of(stored["burst"]["started"]) - 60.3) <= 0.5
    alarms = [a for a in await server.storage.journal_list("alarms", 100) if a["source"] == "group-leak"]
    assert sorted(a["data"]["finding_id"] for a in alarms) == sorted(f["id"] for f in stored.values())

    r = await client.get("/api/v1/findings?kind=burst", headers=auth("viewer"))
    (shown,) = r.json()["findings"]
    evidence = shown["data"]["evidence"]
    nights = evidence["nights"]
    assert len(nights) >= 28 and all(b > a for a, b in itertools.pairwise(nights))
    for series in ("night_flow", "baseline", "threshold"):
        assert len(evidence[series]) == len(nights)
    assert evidence["onset"] == shown["data"]["start"] and evidence["size"] == pytest.approx(shown["rate"])
    last = [v for v in evidence["night_flow"][-5:] if v is not None]
    base = [v for v in evidence["baseline"][-5:] if v is not None]
    assert min(last) > max(evidence["threshold"][-5:]) > max(base)  # the nights judged above the line

    # The operator accepts the burst: the detector reads it back and takes it as normal.
    burst = stored["burst"]
    r = await client.patch(f"/api/v1/findings/{burst['id']}", headers=auth("operator"),
                           json={"status": "accepted", "note": "repair planned"})
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    (known,) = await accepted_leaks(server.storage, "DMA", "group-leak")
    assert known.start == burst["started"] and known.rate == pytest.approx(burst["rate"])
    assert [f.kind for f in NightFlowDetector(accepted=[known]).detect_group(data)] == ["background_leak"]


async def test_night_flow_settings_through_the_api(tmp_path: Path, make_server: Any, client_for: Any) -> None:
    config = base_config(tmp_path, plugins={"analytics": {"interval_s": 0, "night_flow": [
        {"group": "*", "sensitivity": 3.0}, {"group": "B1", "preset": "building", "min_lph": 8.0}]}})
    server = await make_server(config)
    client = client_for(server)
    await server.storage.registry_apply({"groups": [Group("B1", Resource.WATER, "m3", (GroupInput("IN"),))]})
    url = "/api/v1/analytics/night-flow/B1"
    got = (await client.get(url, headers=auth("viewer"))).json()
    assert got["preset"] == "building" and got["set_by_api"] == {}
    assert (got["settings"]["sensitivity"], got["settings"]["min_lph"]) == (3.0, 8.0)
    assert set(got["presets"]) == {"building", "district_inlet", "district_metered"}

    assert (await client.put(url, headers=auth("viewer"), json={"min_pct": 2.0})).status_code == 403
    bad = await client.put(url, headers=auth("operator"), json={"min_pct": 200.0})
    assert bad.status_code == 422 and "min_pct" in bad.text
    assert (await client.put(url, headers=auth("operator"), json={"colour": 1})).status_code == 422
    assert (await client.put(url, headers=auth("operator"),
                             json={"min_nights": 60, "baseline_nights": 21})).status_code == 422
    r = await client.put(url, headers=auth("operator"), json={"preset": "district_metered", "min_pct": 2.0})
    assert r.status_code == 200
    assert r.json()["preset"] == "district_metered" and r.json()["settings"]["min_pct"] == 2.0
    assert r.json()["settings"]["min_lph"] == 8.0  # the configured value still applies

    (detector,) = [d for _, d in server.detection.detectors if d.name == "group-leak"]
    group = await server.storage.registry_get("groups", "B1")
    assert detector.settings_for(group, True).min_pct == 2.0  # what the detector runs with
    plugin = server.plugins.pm.get_plugin("analytics")
    # Kept in the plugin's table: a new source reads it back.
    fresh = type(plugin.source())(plugin.config.night_flow, plugin.context.database)
    await fresh.load()
    assert fresh.stored["B1"] == {"preset": "district_metered", "min_pct": 2.0}

    r = await client.delete(url, headers=auth("operator"))
    assert r.status_code == 200 and r.json()["preset"] == "building" and r.json()["set_by_api"] == {}
    assert (await client.get("/api/v1/analytics/night-flow/NOPE", headers=auth("viewer"))).status_code == 404
