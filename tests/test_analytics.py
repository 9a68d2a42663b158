"""The analytics plugin on a real server: scenario buildings through the real
ingest path, the detectors run on demand and on schedule, findings stored
once across runs, forecasts and the verification plan from stored data."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from balans_edge.config import parse_config
from balans_edge.core.analytics.base import GroupDetector, Scope
from balans_edge.core.analytics.data import GroupData
from balans_edge.core.detection import DetectionRun
from balans_edge.plugin_manager import config_schemas, load_plugins
from balans_edge.plugins.dmesh.scenario import Leak, LostModule, Scenario, Stuck, generate
from balans_edge.settings import ConfigError

from conftest import TOKENS, auth, base_config

START = 1_704_067_200  # 2024-01-01 00:00 UTC, a Monday
DAYS = 21
BIN = Path(sys.executable).parent


def iso(t: int) -> str:
    from balans_edge.core.times import iso as format_time

    return format_time(t)


@pytest.fixture
async def site(make_server, client_for, tmp_path) -> tuple[Any, Any]:
    data = generate(Scenario(buildings=1, apartments=30, start=START, hours=DAYS * 24, seed=4),
                    [Leak("B1-A05", 20.0, start=10 * 24), Stuck("B1-A09", start=12 * 24)])
    config = base_config(tmp_path, plugins={"analytics": {"interval_s": 0}})
    server = await make_server(config)
    await server.storage.registry_apply(data.registry())
    for batch in data.all_batches():
        await server.ingest.ingest(batch)
    return server, client_for(server)


async def run(client: Any, **body: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/analytics/run", json=body, headers=auth("operator"))
    assert r.status_code == 200, r.text
    return r.json()


async def test_run_finds_the_leak_and_the_stuck_meter_once(site) -> None:
    server, client = site
    span = {"group": "B1", "from": iso(START + 7 * 86400), "to": iso(START + DAYS * 86400)}
    first = await run(client, **span)
    found = {(f["kind"], f["subject"]) for f in first["findings"]}
    assert {("consumer_leak", "B1-A05"), ("stuck_meter", "B1-A09")} <= found
    assert all(subject in ("B1-A05", "B1-A09", "B1") for _, subject in found), found
    again = await run(client, **span)
    assert {f["id"] for f in again["findings"]} == {f["id"] for f in first["findings"]}  # the same findings
    listed = (await client.get("/api/v1/findings", params={"group": "B1", "kind": "consumer_leak"},
                               headers=auth("viewer"))).json()["findings"]
    (leak,) = listed
    assert (leak["subject"], leak["status"], leak["seen"]) == ("B1-A05", "open", 2)
    assert leak["data"]["leak_lph"] == pytest.approx(20.0, rel=0.25)
    alarms = await server.storage.journal_list("alarms", 100)
    assert sum(a["source"] == "consumer-leak" for a in alarms) == 1  # raised once, when new


async def test_run_refuses_bad_requests(site) -> None:
    _, client = site
    r = await client.post("/api/v1/analytics/run", json={"group": "NOPE"}, headers=auth("operator"))
    assert r.status_code == 404
    r = await client.post("/api/v1/analytics/run", json={"from": "yesterday"}, headers=auth("operator"))
    assert r.status_code == 400 and "from" in r.json()["error"]["message"]
    r = await client.post("/api/v1/analytics/run", json={"from": iso(START), "to": iso(START)},
                          headers=auth("operator"))
    assert r.status_code == 400
    r = await client.post("/api/v1/analytics/run", json={}, headers=auth("viewer"))
    assert r.status_code == 403


async def test_the_command_runs_through_the_server(site) -> None:
    server, _ = site
    proc = await asyncio.create_subprocess_exec(
        BIN / "balans-edge", "analytics", "run", "--group", "B1", "--from", iso(START + 7 * 86400),
        "--to", iso(START + DAYS * 86400), "--url", f"http://127.0.0.1:{server.http.port}",
        "--token", TOKENS["operator"], stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "consumer_leak" in text and "B1-A05" in text and "stuck_meter" in text


async def test_scheduled_runs(make_server, tmp_path) -> None:
    """The scheduler runs every detector over the recent window on its own."""
    server = await make_server(base_config(tmp_path, plugins={"analytics": {"interval_s": 1}}))
    scheduler = next(c for _, c in server.components if c.name == "analytics-scheduler")
    async with asyncio.timeout(10):
        while scheduler.runs < 2:
            await asyncio.sleep(0.05)
    assert not server.detection._lock.locked()  # no run left holding the detectors


async def test_group_detectors_compute_off_the_event_loop(site) -> None:
    """A run's numeric work leaves the loop free: concentrators are answered meanwhile."""
    server, _ = site
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int]] = []

    class Slow(GroupDetector):
        name = "slow"

        def detect_group(self, data: GroupData) -> list:
            ticks = len(beats)
            time.sleep(0.3)  # a long fit
            seen.append((threading.get_ident(), len(beats) - ticks))
            return []

    beats: list[float] = []

    async def heartbeat() -> None:
        while True:
            beats.append(time.monotonic())
            await asyncio.sleep(0.01)

    beating = asyncio.create_task(heartbeat())
    try:
        run = DetectionRun(Scope(START, START + DAYS * 86400), server.queries, server.tz)
        assert await Slow().detect(run) == []
    finally:
        beating.cancel()
    assert len(seen) == 1
    thread, beats_meanwhile = seen[0]
    assert thread != loop_thread
    assert beats_meanwhile >= 5  # the loop went on beating while the detector worked


async def test_forecasts_and_the_verification_plan(site) -> None:
    _, client = site
    r = await client.get("/api/v1/meters/B1-A03/forecast", params={"month": "2024-01"}, headers=auth("viewer"))
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["baseline_weeks"] == 0 and f["to_date"] > 0  # no history before the site was installed
    assert f["forecast"] >= f["to_date"] and f["group_members"] == 30
    g = (await client.get("/api/v1/groups/B1/forecast", params={"month": "2024-01"}, headers=auth("viewer"))).json()
    assert g["to_date"] > 30 * f["to_date"] / 10  # the building takes far more than one flat
    bad = await client.get("/api/v1/groups/B1/forecast", params={"month": "24-1"}, headers=auth("viewer"))
    assert bad.status_code == 400
    await run(client, group="B1", **{"from": iso(START + 7 * 86400), "to": iso(START + DAYS * 86400)})
    plan = (await client.get("/api/v1/analytics/verification-plan", headers=auth("viewer"))).json()["meters"]
    by_id = {m["meter_id"]: m for m in plan}
    assert by_id["B1-A05"]["open_findings"] == ["consumer_leak"] and by_id["B1-A05"]["score"] < 100
    assert by_id["B1-A05"]["action"] == "inspect"  # the flat leaks: its meter registers it all
    assert by_id["B1-A01"]["open_findings"] == []
    only = (await client.get("/api/v1/analytics/verification-plan", params={"action": "due"},
                             headers=auth("viewer"))).json()["meters"]
    assert only == []  # installed in 2024: nothing is due by calendar yet


def test_config_names_detectors_and_norms() -> None:
    schemas = config_schemas(load_plugins())
    with pytest.raises(ConfigError, match=r"unknown detectors \['slow-meter'\]"):
        parse_config({"plugins": {"analytics": {"detectors": ["slow-meter"]}}}, schemas)
    with pytest.raises(ConfigError, match="monthly_norms: unknown resource 'steam'"):
        parse_config({"plugins": {"analytics": {"monthly_norms": {"steam": 1.0}}}}, schemas)
    ok = parse_config({"plugins": {"analytics": {"detectors": ["stuck-meter"], "monthly_norms": {"water": 6}}}},
                      schemas)
    assert ok.plugins["analytics"].detectors == ["stuck-meter"]


def test_a_member_lost_for_the_whole_window_does_not_blind_the_group() -> None:
    data = generate(Scenario(apartments=10, hours=7 * 24, seed=2), [LostModule("B1-A04", start=0)])
    window: GroupData = data.group_data(0)
    assert window.blind.tolist() == [m == "B1-A04" for m in window.meter_ids]
    known = ~np.isnan(window.imbalance)
    assert known.mean() > 0.95
    row = window.meter_ids.index("B1-A04")
    lost = data.truth.metered_m3[data.row("B1-A04")]
    # Its use sits in the imbalance as an offset: the imbalance exceeds the truth by exactly its consumption.
    truth = data.truth.metered_m3[0] - np.delete(data.truth.metered_m3[1:], row, axis=0).sum(axis=0) - lost
    assert np.abs(window.imbalance[known] - (truth[known] + lost[known])).max() < 0.02


async def test_group_forecast_agrees_with_its_members(site) -> None:
    """No history before the site, and the month's last ten days never reported: the group's input
    is forecast like its meters (unknown hours filled), not taken as 0 (forecast = month to date)."""
    server, client = site
    g = (await client.get("/api/v1/groups/B1/forecast", params={"month": "2024-01"}, headers=auth("viewer"))).json()
    members = [m for m in await server.storage.registry_list("meters") if m.group_id == "B1"]
    forecasts = []
    for m in members:
        r = await client.get(f"/api/v1/meters/{m.meter_id}/forecast", params={"month": "2024-01"},
                             headers=auth("viewer"))
        forecasts.append(r.json())
    to_date = sum(f["to_date"] for f in forecasts)
    total = sum(f["forecast"] for f in forecasts)
    assert g["filled_hours"] >= 10 * 24
    assert g["forecast"] > 1.3 * g["to_date"]  # ten days of 31 are still to fill
    # The input exceeds the members by the imbalance (network loss, a stuck meter): the same share both ways.
    assert g["forecast"] / total == pytest.approx(g["to_date"] / to_date, rel=0.05)
