"""Balances end to end on a real server: scenario buildings go through the real
ingest path, hourly consumption and balances are computed by the workers,
and the API answers what the ground truth says."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from balans_edge.core.balance import BalanceSeries
from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.model import Group, GroupInput, Meter, Resource
from balans_edge.plugins.dmesh.scenario import LostModule, Magnet, Scenario, ScenarioData, Unmetered, generate

from conftest import auth, base_config

START = 1_704_067_200  # 2024-01-01 00:00 UTC, a Monday
DAYS = 4
SCENARIO = Scenario(buildings=2, apartments=6, start=START, hours=DAYS * 24, seed=3)
PULSE = 0.001


def iso(t: int) -> str:
    from balans_edge.core.times import iso as format_time

    return format_time(t)


async def load(server: Any, data: ScenarioData, upto: int | None = None) -> None:
    """Register the scenario's site and ingest its readings 0..upto."""
    await server.storage.registry_apply(data.registry())
    for k, batch in enumerate(data.all_batches()):
        if upto is None or k <= upto:
            await server.ingest.ingest(batch)


def true_imbalance(data: ScenarioData, building: int) -> np.ndarray:
    """Registered input minus registered apartments, per hour (m3)."""
    rows = np.flatnonzero(data.building == building)
    metered = data.truth.metered_m3[rows]
    inputs = data.is_input[rows]
    return metered[inputs].sum(axis=0) - metered[~inputs].sum(axis=0)


async def get(client: Any, path: str, **params: Any) -> dict[str, Any]:
    r = await client.get(path, params=params, headers=auth("viewer"))
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
async def site(make_server, client_for, tmp_path) -> tuple[Any, ScenarioData]:
    data = generate(SCENARIO, [Unmetered("B2", 20.0, start=24), Magnet("B1-A02", 0.5, start=48),
                               LostModule("B1-A03", start=30, end=33)])
    config = base_config(tmp_path, site={"timezone": "Europe/Moscow"})
    server = await make_server(config)
    await load(server, data)
    return client_for(server), data


async def test_hourly_balance_matches_the_truth(site) -> None:
    client, data = site
    t0, t1 = START, START + DAYS * 24 * 3600
    for b, group_id in enumerate(["B1", "B2"]):
        body = await get(client, f"/api/v1/groups/{group_id}/balance", **{"from": iso(t0), "to": iso(t1)})
        assert (body["group_id"], body["unit"], body["step"]) == (group_id, "m3", "hour")
        points = body["points"]
        assert [p["t"] for p in points] == [iso(t) for t in range(t0, t1, 3600)]
        truth = true_imbalance(data, b)
        # Hours of the lost module are estimated (interpolated across the gap): compare the measured ones.
        full = [i for i, p in enumerate(points) if not p["flags"] and p["completeness"]["measured"] == 1.0]
        assert len(full) == DAYS * 24 - (4 if group_id == "B1" else 0)
        got = np.array([points[i]["imbalance"] for i in full])
        # Counters are whole pulses: at most one pulse of rounding per meter and hour.
        assert np.abs(got - truth[full]).max() <= 7 * PULSE + 1e-9
    b2 = await get(client, "/api/v1/groups/B2/balance", **{"from": iso(t0), "to": iso(t1), "step": "day"})
    daily = [p["imbalance"] for p in b2["points"]]
    # The unmetered tap opens on day 2: the daily imbalance jumps by about 20 l/h x 24 h (shape-weighted).
    assert daily[1] - daily[0] > 0.3


async def test_lost_module_hours_are_flagged_not_hidden(site) -> None:
    client, _ = site
    body = await get(client, "/api/v1/groups/B1/balance",
                     **{"from": iso(START + 28 * 3600), "to": iso(START + 36 * 3600)})
    by_t = {p["t"]: p for p in body["points"]}
    # Readings 31..33 never arrive: hours 30..32 of B1-A03 are not measured (estimated across the gap).
    lost = by_t[iso(START + 31 * 3600)]
    assert lost["completeness"]["measured"] == pytest.approx(5 / 6, abs=1e-4)
    assert by_t[iso(START + 29 * 3600)]["completeness"]["measured"] == 1.0


async def test_days_sum_hours_in_the_site_timezone(site) -> None:
    client, _ = site
    t0, t1 = START - 3 * 3600, START + 3 * 86400 - 3 * 3600  # whole days in Moscow (UTC+3)
    hours = await get(client, "/api/v1/groups/B1/balance", **{"from": iso(t0), "to": iso(t1)})
    days = await get(client, "/api/v1/groups/B1/balance", **{"from": iso(t0), "to": iso(t1), "step": "day"})
    assert [p["t"] for p in days["points"]] == [iso(t0 + d * 86400) for d in range(3)]
    for d, day in enumerate(days["points"]):
        own = hours["points"][d * 24 : (d + 1) * 24]
        assert day["consumed"] == pytest.approx(sum(p["consumed"] for p in own), abs=1e-6)


async def test_group_consumption_is_its_input_meter(site) -> None:
    client, _ = site
    span = {"from": iso(START), "to": iso(START + 86400), "step": "day"}
    group = await get(client, "/api/v1/groups/B1/consumption", **span)
    meter = await get(client, "/api/v1/meters/B1-IN/consumption", **span)
    assert [p["value"] for p in group["points"]] == pytest.approx([p["value"] for p in meter["points"]])
    assert group["points"][0]["quality"] == "measured"


async def test_late_data_is_folded_in(make_server, client_for, tmp_path) -> None:
    """Hours computed before their readings arrived are recomputed when they do."""
    data = generate(Scenario(buildings=1, apartments=3, start=START, hours=10, seed=1))
    server = await make_server(base_config(tmp_path))
    late = data.row("B1-A01")
    await server.storage.registry_apply(data.registry())
    for batch in data.all_batches():
        keep = batch.module != data.module[late]
        await server.ingest.ingest(ReadingBatch(*(getattr(batch, c)[keep] for c in
                                                  ("module", "channel", "ts", "counter", "status"))))
    client = client_for(server)
    span = {"from": iso(START), "to": iso(START + 10 * 3600)}
    before = (await get(client, "/api/v1/groups/B1/balance", **span))["points"]
    assert all("incomplete" in p["flags"] for p in before)
    for batch in data.all_batches():
        mine = batch.module == data.module[late]
        await server.ingest.ingest(ReadingBatch(*(getattr(batch, c)[mine] for c in
                                                  ("module", "channel", "ts", "counter", "status"))))
    after = (await get(client, "/api/v1/groups/B1/balance", **span))["points"]
    # Whole pulses alone put an hour up to a pulse per meter below zero: not flagged as a deficit.
    assert all(p["flags"] == [] and p["completeness"]["measured"] == 1.0 for p in after)
    assert sum(p["consumed"] for p in after) > sum(p["consumed"] for p in before)
    truth = true_imbalance(data, 0)
    assert np.abs(np.array([p["imbalance"] for p in after]) - truth).max() <= 4 * PULSE + 1e-9


async def test_nested_groups_and_a_missing_input(make_server, client_for, tmp_path) -> None:
    """A street over the two buildings: its consumed is their inputs, and its own input meter is absent."""
    data = generate(Scenario(buildings=2, apartments=2, start=START, hours=6, seed=2, noise=0.0))
    server = await make_server(base_config(tmp_path))
    registry = data.registry()
    street_in = Meter("STREET-IN", Resource.WATER, "m3", 0.001, START)
    registry["meters"].append(street_in)
    registry["groups"] = [Group("S", Resource.WATER, "m3", (GroupInput("STREET-IN"),), level="street"),
                          *(Group(g.group_id, g.resource, g.unit, g.inputs, parent_id="S") for g in registry["groups"])]
    await server.storage.registry_apply(registry)
    for batch in data.all_batches():
        await server.ingest.ingest(batch)
    client = client_for(server)
    span = {"from": iso(START), "to": iso(START + 6 * 3600)}
    street = (await get(client, "/api/v1/groups/S/balance", **span))["points"]
    houses = [(await get(client, f"/api/v1/groups/{g}/balance", **span))["points"] for g in ("B1", "B2")]
    for h, p in enumerate(street):
        assert p["consumed"] == pytest.approx(houses[0][h]["input"] + houses[1][h]["input"], abs=1e-9)
        assert p["input"] is None and p["imbalance"] is None and "input_missing" in p["flags"]
    r = await client.get("/api/v1/groups/NOPE/balance", params=span, headers=auth("viewer"))
    assert r.status_code == 404
    r = await client.get("/api/v1/groups/S/balance", params={**span, "step": "week"}, headers=auth("viewer"))
    assert r.status_code == 400 and "step" in r.json()["error"]["message"]


async def priced(server: Any, **changes: Any) -> Group:
    """Give building B1 a price, a norm and an allocation rule."""
    import dataclasses

    group = dataclasses.replace(await server.storage.registry_get("groups", "B1"), **changes)
    await server.storage.registry_apply({"groups": [group]})
    return group


@pytest.fixture
async def served(make_server, client_for, tmp_path) -> tuple[Any, Any, ScenarioData]:
    data = generate(SCENARIO, [Unmetered("B2", 20.0, start=24), Magnet("B1-A02", 0.5, start=48)])
    server = await make_server(base_config(tmp_path, site={"timezone": "Europe/Moscow"}))
    await load(server, data)
    return server, client_for(server), data


async def test_allocation_by_area_with_a_cap_and_a_finding(served) -> None:
    from balans_edge.core.components import Finding

    server, client, data = served
    await priced(server, price=50.0, allocation_rule="area", odn_norm=0.004, loss_norm_pct=2.0)
    await server.report_finding(Finding("test", "B1-A02", "slowed_meter", "magnet", t=START + 50 * 3600,
                                        data={"volume_m3": 0.2}))
    # The site reported four days of January only: the month's input is not known, nothing is allocated.
    whole = await get(client, "/api/v1/groups/B1/allocation", month="2024-01")
    assert whole["input"] is None and whole["imbalance"] is None and "input_missing" in whole["flags"]
    assert whole["allocated"] == 0
    # The month to date at the end of the data (the route asks the same function with the wall clock).
    from zoneinfo import ZoneInfo

    from balans_edge.core import balance_queries as q

    tree = await q.Tree.load(server.storage)
    report = (await q.allocation(server.storage, tree, tree.groups["B1"], "2024-01", ZoneInfo("Europe/Moscow"),
                                 0.95, START + DAYS * 86400)).to_json()
    rows = np.flatnonzero(data.building == 0)
    registered = data.truth.metered_m3[rows].sum(axis=1)
    imbalance = registered[0] - registered[1:].sum()
    assert report["imbalance"] == pytest.approx(imbalance, abs=7 * PULSE)
    assert (report["rule"], report["unit"], report["price"]) == ("area", "m3", 50.0)
    areas = {a.account_id: a.area_m2 for a in data.accounts}
    lines = {line["account_id"]: line for line in report["lines"]}
    assert set(lines) == {m for m in areas if m.startswith("B1-")}
    for account, line in lines.items():
        assert line["cap"] == pytest.approx(0.004 * areas[account], abs=1e-6)
        share = areas[account] / sum(areas[a] for a in lines)
        assert line["allocated"] == pytest.approx(min(share * report["imbalance"], line["cap"]), abs=1e-6)
        assert line["amount"] == pytest.approx(line["allocated"] * 50.0, abs=0.01)
    assert report["allocated"] + report["utility_loss"] == pytest.approx(report["imbalance"], abs=1e-6)
    assert report["fixable"] == pytest.approx(0.2)
    assert report["imbalance_if_fixed"] == pytest.approx(max(report["imbalance"] - 0.2, 0), abs=1e-6)
    r = await client.get("/api/v1/groups/B1/allocation", params={"month": "2024-13"}, headers=auth("viewer"))
    assert r.status_code == 400 and "YYYY-MM" in r.json()["error"]["message"]


async def test_losses_rank_groups_and_point_at_the_suspect(served) -> None:
    from balans_edge.core.components import Finding

    server, client, data = served
    await priced(server, price=50.0)
    await server.report_finding(Finding("test", "B1-A02", "slowed_meter", "magnet", t=START + 50 * 3600,
                                        data={"volume_m3": 0.2}))
    span = {"from": iso(START), "to": iso(START + DAYS * 86400), "level": "house"}
    body = await get(client, "/api/v1/losses", **span)
    entries = {e["group_id"]: e for e in body["groups"]}
    assert [e["group_id"] for e in body["groups"]] == ["B2", "B1"]  # the unmetered tap loses most
    for b, group_id in enumerate(["B1", "B2"]):
        assert entries[group_id]["imbalance"] == pytest.approx(true_imbalance(data, b).sum(), abs=7 * PULSE)
    assert entries["B1"]["money_per_month"] == pytest.approx(entries["B1"]["imbalance"] * 50.0 * 30 / DAYS, rel=1e-3)
    assert entries["B2"]["money_per_month"] is None  # no price
    kinds = {(r["kind"], r["subject"]) for r in entries["B1"]["recommendations"]}
    assert ("suspect_meter", "B1-A02") in kinds
    streets = await get(client, "/api/v1/losses", **{**span, "level": "street"})
    assert streets["groups"] == []
    r = await client.get("/api/v1/losses", params={**span, "order": "loudest"}, headers=auth("viewer"))
    assert r.status_code == 400


async def test_balance_report_command(served, tmp_path) -> None:
    import asyncio
    import sys
    from pathlib import Path

    server, _, _ = served
    await priced(server, price=50.0, allocation_rule="area")
    config = tmp_path / "report.toml"
    config.write_text(f'[site]\ntimezone = "Europe/Moscow"\n[storage]\nurl = "sqlite:{tmp_path / "balans.db"}"\n')
    proc = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "balans-edge", "balance", "report", "-c", str(config), "--group", "B1",
        "--month", "2024-01", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "B1 — 2024-01 (Europe/Moscow)" in text
    assert "2024-01-01" in text and "2024-01-04" in text and "allocation (area)" in text and "to pay" in text
    proc = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "balans-edge", "balance", "report", "-c", str(config), "--group", "NOPE",
        "--month", "2024-01", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and "group 'NOPE' is not in the registry" in err.decode()


async def test_the_running_month_counts_the_hours_that_are_over(served) -> None:
    """Month to date: the running hour has no closing reading yet and must not make the input 'missing'."""
    from zoneinfo import ZoneInfo

    from balans_edge.core import balance_queries as q

    server, _, data = served
    await server.intervals.process()
    await server.balance.process()
    tree = await q.Tree.load(server.storage)
    now = START + 50 * 3600 + 1800
    report = await q.allocation(server.storage, tree, tree.groups["B1"], "2024-01", ZoneInfo("Europe/Moscow"),
                                0.95, now)
    assert "input_missing" not in report.flags
    rows = np.flatnonzero(data.building == 0)
    metered = data.truth.metered_m3[rows, :50]
    assert report.input == pytest.approx(metered[0].sum(), abs=2 * PULSE)
    assert report.consumed == pytest.approx(metered[1:].sum(), abs=7 * PULSE)


@pytest.fixture
async def short_site(make_server, client_for, tmp_path) -> tuple[Any, Any]:
    """One house that reported its first ten hours (UTC site timezone) and nothing since."""
    data = generate(Scenario(buildings=1, apartments=2, start=START, hours=10, seed=4))
    server = await make_server(base_config(tmp_path))
    await load(server, data)
    return server, client_for(server)


async def test_hours_nobody_reported_are_missing_not_zero(short_site) -> None:
    """After the last reading the input is not 0: it is unknown, and so are the members."""
    _, client = short_site
    hours = (await get(client, "/api/v1/groups/B1/balance",
                       **{"from": iso(START + 8 * 3600), "to": iso(START + 14 * 3600)}))["points"]
    assert [p["input"] is None for p in hours] == [False, False, True, True, True, True]
    for p in hours[2:]:
        assert p["imbalance"] is None and p["loss_pct"] is None
        assert p["flags"] == ["incomplete", "input_missing"]
        assert p["completeness"] == {"measured": 0.0, "estimated": 0.0, "missing": 1.0}
    meter = await get(client, "/api/v1/meters/B1-IN/consumption",
                      **{"from": iso(START + 10 * 3600), "to": iso(START + 11 * 3600)})
    group = await get(client, "/api/v1/groups/B1/consumption",
                      **{"from": iso(START + 10 * 3600), "to": iso(START + 11 * 3600)})
    assert meter["points"][0]["quality"] == group["points"][0]["quality"] == "missing"
    assert group["points"][0]["value"] is None


async def test_a_day_with_missing_hours_or_cut_short_says_so(short_site) -> None:
    _, client = short_site
    day = {"from": iso(START), "to": iso(START + 86400), "step": "day"}
    (whole,) = (await get(client, "/api/v1/groups/B1/balance", **day))["points"]
    assert whole["input"] is None and whole["imbalance"] is None
    assert "input_missing" in whole["flags"] and "partial" not in whole["flags"]
    # Cut by `to` after the data: the ten reported hours are all the day holds, and they are known.
    (cut,) = (await get(client, "/api/v1/groups/B1/balance",
                        **{**day, "to": iso(START + 10 * 3600)}))["points"]
    assert cut["flags"] == ["partial"] and cut["input"] is not None
    hours = (await get(client, "/api/v1/groups/B1/balance", **{**day, "step": "hour",
                                                                "to": iso(START + 10 * 3600)}))["points"]
    assert cut["input"] == pytest.approx(sum(p["input"] for p in hours), abs=1e-6)


async def test_a_day_that_has_not_begun_is_partial_and_empty(short_site) -> None:
    import time

    _, client = short_site
    today = int(time.time()) // 86400 * 86400
    body = await get(client, "/api/v1/groups/B1/balance",
                     **{"from": iso(today + 2 * 86400), "to": iso(today + 3 * 86400), "step": "day"})
    (future,) = body["points"]
    assert future["flags"] == ["partial"]
    assert future["input"] is None and future["imbalance"] is None


async def test_a_running_day_counts_its_hours_that_are_over(short_site) -> None:
    """The core function with its clock in the data: the day is partial, its closed hours known."""
    from zoneinfo import ZoneInfo

    from balans_edge.core import balance_queries as q
    from balans_edge.core.balance import points

    server, _ = short_site
    await server.intervals.process()
    await server.balance.process()
    tree = await q.Tree.load(server.storage)
    now = START + 7 * 3600 + 1800  # 07:30: hours 0..6 are over
    tz = ZoneInfo("UTC")
    days = await q.group_series(server.storage, tree, ["B1"], START, START + 86400, "day", tz, now)
    hours = await q.group_series(server.storage, tree, ["B1"], START, START + 7 * 3600, "hour", tz, now)
    (day,) = points(days.series, 0, tree.groups["B1"], 0.95, coverage=days.coverage)
    assert days.coverage.hours.tolist() == [7] and days.coverage.length.tolist() == [24]
    assert day["flags"] == ["partial"]
    assert day["input"] == pytest.approx(float(hours.series.input.sum()), abs=1e-9)
    assert day["completeness"]["measured"] == 1.0


def test_count_unknown_fills_what_storage_never_computed() -> None:
    """Hours never computed count every installed meter missing; an hour with members but no
    input meter counted has its input missing; an hour with nothing installed stays empty."""
    from balans_edge.core.balance_queries import count_unknown

    t = START + 3600 * np.arange(4, dtype=np.int64)
    zero = np.zeros((1, 4), np.int64)
    stored = BalanceSeries(["G"], t, np.zeros((1, 4)), np.array([[0.0, 1.0, 0.0, 0.0]]), zero.copy(),
                           np.array([[0, 2, 0, 0]]), zero.copy(), zero.copy(), zero.copy(), zero.copy())
    members = np.array([[3, 3, 0, 3]])
    inputs = np.array([[1, 0, 0, 1]])
    s = count_unknown(stored, lambda: (members, inputs), now=int(t[-1]))  # the last hour is still running
    assert s.missing.tolist() == [[3, 0, 0, 0]]
    assert s.input_missing.tolist() == [[1, 1, 0, 0]]
    assert s.input_known().tolist() == [[False, False, False, False]]
