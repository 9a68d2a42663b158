# ruff: noqa: RUF001 - the formulas hold Cyrillic ids and typographic operators on purpose
"""Calculated inputs: a group's input as a formula over meters and tags.

The formula language refuses what it cannot read with the position of the
mistake (and nothing but ``FormulaError`` escapes it, fuzzed); a district fed
by a pump into a tank evaluates to the hand-computed inflow; quality
propagates (a missing term makes the hour missing, an estimated one makes it
estimated); and on a real server the group's balance through the API uses
the formula, tags coming from a running tag client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balans_edge import hookimpl
from balans_edge.core.analytics.data import load_group_data
from balans_edge.core.balance import BalanceTree, compute
from balans_edge.core.calculated import (
    TAG_HOLD_S,
    TagSeries,
    TagSources,
    evaluate,
    hourly_change,
    hourly_mean,
    input_meters,
)
from balans_edge.core.context import Plugin
from balans_edge.core.formula import FormulaError, parse
from balans_edge.core.model import Group, GroupInput, Meter, Quality, RawReading, Resource
from balans_edge.core.registry import RegistryError, check_references, export_registry, import_registry, parse_object
from balans_edge.core.tags import TagRow
from balans_edge.core.times import HOUR, iso
from balans_edge.plugin_manager import load_plugins
from balans_edge.plugins.common.tag_repository import TagRepository
from balans_edge.server import StartupError

from conftest import T0, auth, base_config, small_site

M, E, X = Quality.MEASURED, Quality.ESTIMATED, Quality.MISSING
T = T0 + HOUR  # the first hour of the examples
HOURS = np.arange(T, T + 5 * HOUR, HOUR, dtype=np.int64)
AREA = 150.0  # m2: the tank's floor
TANK = f"tag:PS/flow - {AREA:g} × d(tag:PS/level)/dt"

# A pump's flow in m3/h, stored on change and as heartbeats; None: the link failed.
FLOW = [(T - 600, 100.0), (T + 1800, 140.0), (T + 5400, 140.0), (T + 7200, 80.0), (T + 9000, 80.0),
        (T + 11700, None), (T + 15300, 90.0)]
# The tank's level in m, read at uneven moments (never exactly on an hour).
LEVEL = [(T - 100, 2.00), (T + 3000, 2.05), (T + 3700, 2.30), (T + 9000, 2.10), (T + 12000, 2.10),
         (T + 14000, 2.20), (T + 17000, 2.25)]
# By hand: the flow's time-weighted mean per hour, each sample holding until the next (an hour at most) -
#   h0: 100 for 30 min, 140 for 30 min = 120          h1: 140 all hour = 140 (the heartbeat at +5400 holds on)
#   h2: 80 all hour                                     h3: 80 for 15 min, then the link fails: covered 1/4, missing
#   h4: 90 from +15300 on: covered 3/4, estimated 90
# The level at each hour's edge is the last sample before it: 2.00 2.05 2.30 2.10 2.20 2.25, so the tank
# gained 0.05 0.25 -0.20 0.10 0.05 m per hour, i.e. 7.5 37.5 -30 15 7.5 m3.
FLOW_MEAN = [120.0, 140.0, 80.0, np.nan, 90.0]
FLOW_QUALITY = [M, M, M, X, E]
TANK_GAIN = [7.5, 37.5, -30.0, 15.0, 7.5]
INFLOW = [120.0 - 7.5, 140.0 - 37.5, 80.0 + 30.0, np.nan, 90.0 - 7.5]


def series(samples: list[tuple[int, float | None]]) -> TagSeries:
    return TagSeries.of(samples)


# -- the language --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "position", "message"), [
    ("meter:A +", 10, "expected a number, a term"),
    ("(meter:A + 2", 13, 'expected ")" to close the "(" at character 1'),
    ("meter:W-1-meter:W-2", 16, "put blanks around a minus"),
    ("2 meter:A", 3, "expected an operator or the end"),
    ("pump:P1 * 2", 1, 'unknown kind of term "pump:"'),
    ("flow * 2", 1, 'unknown name "flow"'),
    ("d(meter:A)/dt", 3, "d() takes one tag"),
    ("d(tag:PS/level)", 16, '"/dt" after d(...)'),
    ('tag:"PS/level', 5, "not closed with a quote"),
    ("meter: + 1", 7, "meter: needs an id"),
    ("1 $ 2", 3, 'unexpected character "$"'),
    ("-" * 80 + "1", 62, "nested deeper than"),
    ("1e999", 1, "too large a number"),
])
def test_syntax_errors_name_the_position(text: str, position: int, message: str) -> None:
    with pytest.raises(FormulaError) as info:
        parse(text)
    assert info.value.position == position
    assert message in info.value.message
    assert str(info.value).startswith(f"at character {position}: ")


def test_ids_may_be_cyrillic_and_quoted_with_blanks() -> None:
    f = parse('meter:"Ввод 1" + meter:Ввод-2 − 0.5 × meter:"Транзит ""Юг""" + rate(tag:НС-1/уровень)')
    assert f.meters == ("Ввод 1", "Ввод-2", 'Транзит "Юг"')
    assert f.tags == ("НС-1/уровень",)
    # The direction of each meter: a subtracted or negatively weighted one leaves the group.
    assert f.meter_signs() == {"Ввод 1": 1, "Ввод-2": 1, 'Транзит "Юг"': -1}
    assert [str(t) for t in f.terms][-1] == "d(tag:НС-1/уровень)/dt"


def test_a_group_names_its_formula_in_its_problems() -> None:
    row = {"group_id": "Район-1", "resource": "water", "unit": "m3", "formula": "tag:PS/flow -"}
    with pytest.raises(RegistryError) as info:
        parse_object("groups", row)
    assert 'column "formula": group "Район-1": at character 14: expected a number' in str(info.value)
    both = {**row, "formula": "meter:A", "inputs": "A"}
    with pytest.raises(RegistryError, match="give input meters or a formula, not both"):
        parse_object("groups", both)


def test_unknown_meters_and_tags_are_refused_with_the_group_and_position() -> None:
    site = small_site()
    group = Group("D", Resource.WATER, "m3", formula="tag:PS/flow - meter:W-3 - meter:W-9 + d(tag:PS/lvl)/dt")
    problems = [str(p) for p in check_references(site, [(group, "PUT /api/v1/groups/D")], tags={"PS/flow"})]
    assert problems == [
        'PUT /api/v1/groups/D: column "formula": group "D": at character 27 (meter:W-9): unknown meter "W-9"',
        'PUT /api/v1/groups/D: column "formula": group "D": at character 39 (d(tag:PS/lvl)/dt): unknown tag '
        '"PS/lvl" (tags read now: PS/flow)',
    ]
    # Without the tags read now (a file import outside the server), tags are not checked; meters are.
    assert len(check_references(site, [(group, "groups.csv:2")])) == 1


def test_a_formula_meter_counts_as_an_input_meter_of_its_direction() -> None:
    group = Group("D", Resource.WATER, "m3", formula="meter:IN - 0.9 * meter:OUT + tag:PS/flow")
    assert input_meters(group) == (GroupInput("IN"), GroupInput("OUT", -1))


ALPHABET = st.sampled_from([*"meter:tag/d()rate+-*/×−·÷ \"'0123456789.eEАб_,:$\t", "meter:", "tag:", "d(", ")/dt",
                            "rate(", "meter:W-1", "tag:PS/x", "1e308", "(((", ")))"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=60), st.lists(ALPHABET, max_size=30).map("".join)))
def test_the_parser_raises_nothing_but_formula_errors(text: str) -> None:
    try:
        f = parse(text)
    except FormulaError as exc:
        assert exc.position is None or 1 <= exc.position <= len(text) + 1
        return
    # What parses evaluates to a value or a missing hour, whatever its terms hold.
    terms = {t.key: (np.array([1.0, 0.0, np.nan]), np.array([M, E, M], np.int8)) for t in f.terms}
    values, quality = f.evaluate(terms, 3)
    assert values.shape == quality.shape == (3,)
    assert np.array_equal(np.isnan(values), quality == X)
    f.meter_signs()


# -- evaluation ------------------------------------------------------------------------------------


def test_tag_means_and_level_changes_by_hand() -> None:
    mean, quality = hourly_mean(series(FLOW), HOURS)
    np.testing.assert_allclose(mean, FLOW_MEAN)
    assert quality.tolist() == FLOW_QUALITY
    gain, gain_quality = hourly_change(series(LEVEL), HOURS)
    np.testing.assert_allclose(gain * AREA, TANK_GAIN)
    assert gain_quality.tolist() == [M] * 5


def test_district_inflow_is_pump_flow_less_what_the_tank_stored() -> None:
    values, quality = evaluate(parse(TANK), HOURS, {}, {"PS/flow": series(FLOW), "PS/level": series(LEVEL)})
    np.testing.assert_allclose(values, INFLOW)
    assert quality.tolist() == [M, M, M, X, E]
    # Over the hours it knows, the level's changes add up to its whole change (no volume smeared or lost).
    gain, _ = hourly_change(series(LEVEL), HOURS)
    assert gain.sum() == pytest.approx(2.25 - 2.00)


def test_a_missing_term_makes_the_hour_missing_an_estimated_one_estimated() -> None:
    formula = parse("meter:A + meter:B - meter:C")
    a = (np.array([1.0, 1.0, 1.0, 1.0]), np.array([M, E, M, M], np.int8))
    b = (np.array([2.0, 2.0, np.nan, 2.0]), np.array([M, M, M, Quality.ABSENT], np.int8))
    c = (np.array([0.5, 0.5, 0.5, 0.5]), np.array([M, M, M, M], np.int8))
    values, quality = evaluate(formula, HOURS[:4], {"A": a, "B": b, "C": c}, {})
    # Estimated A -> estimated; a NaN value counts missing whatever its code; a meter not installed is missing.
    assert quality.tolist() == [M, E, X, X]
    np.testing.assert_allclose(values, [2.5, 2.5, np.nan, np.nan])
    # A term nobody gives (a meter without data, a tag no client reads) is missing every hour.
    values, quality = evaluate(formula, HOURS[:4], {"A": a, "B": b}, {})
    assert quality.tolist() == [X] * 4 and np.isnan(values).all()


def test_a_level_edge_without_a_good_sample_is_interpolated_or_missing() -> None:
    # The level's last sample before the first hour's end is bad: that edge is interpolated between the
    # good ones around it (estimated); the next good sample after the second edge is further than a
    # sample holds, so that edge (and the third) is missing.
    samples = [(T - 60, 1.0), (T + 1000, 1.5), (T + 3000, None), (T + 4200, 2.0), (T + 6000, None),
               (T + 7200 + TAG_HOLD_S + 1, 3.0)]
    change, quality = hourly_change(series(samples), HOURS[:3])
    edge = 1.5 + (3600 - 1000) / (4200 - 1000) * (2.0 - 1.5)
    assert change[0] == pytest.approx(edge - 1.0) and np.isnan(change[1:]).all()
    assert quality.tolist() == [E, X, X]


def test_a_division_by_zero_is_a_missing_hour() -> None:
    values, quality = parse("meter:A / meter:B").evaluate(
        {("meter", "A"): (np.ones(2), np.zeros(2, np.int8)), ("meter", "B"): (np.array([2.0, 0.0]),
                                                                              np.zeros(2, np.int8))}, 2)
    assert values[0] == 0.5 and np.isnan(values[1]) and quality.tolist() == [M, X]


async def test_the_tag_polling_repository_reads_series(storage: Any) -> None:
    repo = TagRepository(storage)
    await repo.store_tag_values([TagRow("PS/level", T, 2.0, "good"), TagRow("PS/level", T + 60, None, "comm_fail"),
                                 TagRow("PS/level", T + 120, 2.5, "good"), TagRow("PS/flow", T, 1.0, "good")])
    got = await repo.tag_series("PS/level", T, T + 120)
    assert got.ts.tolist() == [T, T + 60]
    assert got.value[0] == 2.0 and np.isnan(got.value[1])


# -- through the server ------------------------------------------------------------------------------


class PumpStation:
    """A running tag client whose stored samples are ``FLOW`` and ``LEVEL``."""

    name = "pump-station"
    protocol = "test"
    samples = {"PS/flow": FLOW, "PS/level": LEVEL}

    def __init__(self, sources: TagSources | None = None) -> None:
        self.sources = sources

    async def start(self) -> None:
        if self.sources is not None:
            self.sources.add(self)  # offered while it runs, as the protocol plugins' tag clients are

    async def stop(self) -> None:
        if self.sources is not None:
            self.sources.discard(self)

    def tag_snapshot(self) -> list[dict[str, Any]]:
        return [{"tag": tag, "device": "PS", "name": tag[3:], "quality": "good", "t": None, "last_good_t": None,
                 "protocol": self.protocol} for tag in self.samples]

    async def tag_history(self, tag: str, t0: int, t1: int, limit: int) -> list[dict[str, Any]]:
        return [{"tag": tag, "ts": ts, "value": v, "quality": "good" if v is not None else "comm_fail"}
                for ts, v in self.samples.get(tag, []) if t0 <= ts < t1][:limit]

    async def tag_series(self, tag: str, t0: int, t1: int) -> TagSeries:
        return TagSeries.of((ts, v) for ts, v in self.samples.get(tag, []) if t0 <= ts < t1)


class Station(Plugin):
    @hookimpl
    def register_components(self) -> list[Any]:
        return [PumpStation(self.context.tag_sources)]


# Hourly consumption (m3) of the small site's meters: W-1 and W-2 are the district's consumers,
# W-3 an export to a neighbour that the formula subtracts.
W1 = [5.0, 5.0, 10.0, 10.0, 10.0]
W2 = [100.0, 100.0, 100.0, 100.0, 100.0]
W3 = [1.0, 0.5, 0.0, 0.5, 0.6]


def readings() -> list[RawReading]:
    out = []
    for (module, channel, weight), hourly in zip([(1001, 1, 0.001), (1001, 2, 0.001), (1002, 3, 0.01)],
                                                 [W1, W2, W3], strict=True):
        counters = np.r_[0, np.cumsum(np.round(np.array(hourly) / weight))].astype(int)
        out += [RawReading(module, channel, int(T + i * HOUR), int(c)) for i, c in enumerate(counters)]
    return out


async def test_the_balance_of_a_district_with_a_tank_through_the_api(tmp_path: Path, make_server: Any,
                                                                   client_for: Any) -> None:
    plugins = load_plugins()
    plugins.register(Station(), "station")
    server = await make_server(base_config(tmp_path), plugins_=plugins)
    client = client_for(server)
    await server.storage.registry_apply(small_site())
    admin = auth("admin")

    body = {"group_id": "Район", "resource": "water", "unit": "m3", "level": "district",
            "formula": f"{TANK} - meter:W-9"}
    r = await client.post("/api/v1/groups", json=body, headers=admin)
    assert r.status_code == 422
    assert 'group "Район": at character 42 (meter:W-9): unknown meter "W-9"' in r.json()["error"]["message"]
    r = await client.post("/api/v1/groups", json={**body, "formula": f"{TANK} - meter:W-3 + tag:PS/pressure"},
                          headers=admin)
    assert r.status_code == 422 and 'unknown tag "PS/pressure"' in r.json()["error"]["message"]
    r = await client.post("/api/v1/groups", json={**body, "formula": f"{TANK} - meter:W-3"}, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["formula"] == f"{TANK} - meter:W-3" and r.json()["inputs"] == []
    for meter_id in ("W-1", "W-2"):
        meter = (await client.get(f"/api/v1/meters/{meter_id}", headers=admin)).json()
        r = await client.put(f"/api/v1/meters/{meter_id}", json={**meter, "group_id": "Район"}, headers=admin)
        assert r.status_code == 200, r.text
    # The export meter is the group's (outgoing) input meter: it cannot be deleted while the formula names it.
    r = await client.delete("/api/v1/meters/W-3", headers=admin)
    assert r.status_code == 409 and "Район" in r.text

    result = await server.ingest.ingest(readings())
    assert result.as_dict()["accepted"] == 18
    await server.detection.settle()
    r = await client.get("/api/v1/groups/Район/balance", params={"from": iso(T), "to": iso(T + 5 * HOUR)},
                         headers=auth("viewer"))
    assert r.status_code == 200, r.text
    points = r.json()["points"]
    expected = np.array(INFLOW) - np.array(W3)
    for i, p in enumerate(points):
        if i == 3:  # the pump's link failed for most of the hour: no input
            assert p["input"] is None and p["imbalance"] is None and "input_missing" in p["flags"]
            continue
        assert p["input"] == pytest.approx(expected[i])
        assert p["consumed"] == pytest.approx(W1[i] + W2[i])
        assert p["imbalance"] == pytest.approx(expected[i] - W1[i] - W2[i])
        assert ("input_estimated" in p["flags"]) == (i == 4)  # the flow covered three quarters of the hour

    # The edit is audited like every registry edit, the formula with it; a changed formula recomputes the hours.
    audit = (await client.get("/api/v1/registry/audit", params={"kind": "groups"}, headers=admin)).json()["audit"]
    assert audit[0]["after"]["formula"] == f"{TANK} - meter:W-3" and audit[0]["who"] == "api:test-admin"
    r = await client.put("/api/v1/groups/Район", json={**body, "formula": f"{TANK} - 2 * meter:W-3"}, headers=admin)
    assert r.status_code == 200, r.text
    await server.balance.process()
    r = await client.get("/api/v1/groups/Район/balance", params={"from": iso(T), "to": iso(T + HOUR)},
                         headers=auth("viewer"))
    assert r.json()["points"][0]["input"] == pytest.approx(INFLOW[0] - 2 * W3[0])


async def test_the_openapi_schema_shows_the_formula(tmp_path: Path, make_server: Any, client_for: Any) -> None:
    server = await make_server(base_config(tmp_path))
    doc = (await client_for(server).get("/api/v1/openapi.json")).json()
    for method in ("post", "put"):
        path = "/api/v1/groups" if method == "post" else "/api/v1/groups/{ident}"
        schema = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        assert "d(tag:" in schema["properties"]["formula"]["description"]
        assert "formula" in schema["properties"]["inputs"]["description"]
        assert "inputs" not in schema["required"]


async def test_a_formula_group_goes_through_export_and_import_unchanged(storage: Any, tmp_path: Path) -> None:
    site = small_site()
    group = Group("Район", Resource.WATER, "m3", level="district", formula=f"-meter:W-3 + {TANK}")
    await storage.registry_apply({**site, "groups": [group]})
    for fmt in ("csv", "json"):
        folder = tmp_path / fmt
        folder.mkdir()
        await export_registry(storage, folder, fmt)
        report = await import_registry(storage, [folder])
        assert report.kinds["groups"].unchanged == 1, fmt
    assert await storage.registry_get("groups", "Район") == group


async def test_configured_groups_with_formulas_are_checked_at_start(tmp_path: Path, make_server: Any) -> None:
    plugins = load_plugins()
    plugins.register(Station(), "station")
    district = {"group_id": "D", "resource": "water", "unit": "m3", "formula": "tag:PS/flow - tag:PS/nothing"}

    def config(group: dict[str, Any]) -> dict[str, Any]:
        return {**base_config(tmp_path), "groups": [group]}

    with pytest.raises(StartupError, match=r'group "D": at character 15 .*unknown tag "PS/nothing"'):
        await make_server(config(district), plugins_=plugins)
    server = await make_server(config({**district, "formula": TANK}), plugins_=plugins)
    assert (await server.storage.registry_get("groups", "D")).formula == TANK


def test_a_member_group_counts_in_its_parent_with_its_calculated_input() -> None:
    meters = [(1, Meter("IN", Resource.WATER, "m3", 0.001, 0)), (2, Meter("X", Resource.WATER, "m3", 0.001, 0)),
              (3, Meter("Y", Resource.WATER, "m3", 0.001, 0, group_id="C"))]
    groups = [Group("P", Resource.WATER, "m3", (GroupInput("IN"),)),
              Group("C", Resource.WATER, "m3", parent_id="P", formula="0.5 * meter:X + tag:PS/flow")]
    tree = BalanceTree.compile(groups, meters)
    rows = {int(k): i for i, k in enumerate(tree.meter_keys)}
    values = np.zeros((len(rows), 3))
    quality = np.zeros((len(rows), 3), np.int8)
    values[rows[1]], values[rows[2]], values[rows[3]] = [300.0] * 3, [10.0, 10.0, 10.0], [50.0] * 3
    quality[rows[2]] = [M, E, M]
    flow = series([(T, 200.0), (T + HOUR, 200.0), (T + 2 * HOUR, None)])  # the link fails in the third hour
    out = compute(tree, HOURS[:3], values, quality, {"PS/flow": flow})
    c, p = out.group_ids.index("C"), out.group_ids.index("P")
    assert out.input[c].tolist() == [205.0, 205.0, 0.0]  # missing: not summed, counted
    assert [out.input_measured[c].tolist(), out.input_estimated[c].tolist(), out.input_missing[c].tolist()] == [
        [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert out.consumed[p].tolist() == [205.0, 205.0, 0.0]
    assert (out.measured[p] + out.estimated[p] + out.missing[p]).tolist() == [1, 1, 1]
    assert out.missing[p].tolist() == [0, 0, 1]


async def test_analytics_sees_the_calculated_input(storage: Any) -> None:
    await storage.registry_apply(small_site())
    keys = await storage.meter_keys()
    hourly = [(keys["W-3"], int(t), v, int(M)) for t, v in zip(HOURS, W3, strict=True)]
    await storage.save_intervals(hourly, [])
    group = Group("D", Resource.WATER, "m3", formula=f"{TANK} - meter:W-3")
    data = await load_group_data(storage, group, [], [], keys, T, T + 5 * HOUR, ZoneInfo("UTC"),
                                 tags=TagSources([PumpStation()]))
    np.testing.assert_allclose(data.input, np.array(INFLOW) - np.array(W3))
    # Without a tag client, the tag terms (and so the input) are missing.
    alone = await load_group_data(storage, group, [], [], keys, T, T + 5 * HOUR, ZoneInfo("UTC"),
                                  tags=TagSources())
    assert np.isnan(alone.input).all()
