"""``analytics run --group G --from --to`` over a past period: the network detector
judges the radio modules as they were at the period's end (silence measured from
there, batteries of the reports up to then) and only those of the group's meters;
the run answers only the group's findings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.model import Concentrator, Group, GroupInput, Meter, RadioModule, Resource
from balans_edge.plugins.dmesh.repository import ConnectionEvent, ModuleRoute

from conftest import TOKENS, auth, base_config, dmesh_repository

BIN = Path(sys.executable).parent
DAY, HOUR = 86400, 3600
START = 1_704_067_200  # 2024-01-01 00:00 UTC
CID = 7
SILENT_FROM = {1002: 6, 1004: 3}
"""Day from which a module sends nothing until day 15 (after the period asked about)."""
PERIOD = (3, 10)
"""Days of the run."""


def registry() -> dict[str, list]:
    meters = [Meter(f"W-{m}", Resource.WATER, "m3", 0.001, START, module_id=m, channel=1,
                    group_id="G1" if m <= 1002 else "G2") for m in (1001, 1002, 1003, 1004)]
    meters += [Meter(f"IN-{g}", Resource.WATER, "m3", 0.001, START, module_id=m, channel=2)
               for g, m in (("G1", 1001), ("G2", 1003))]
    return {"concentrators": [Concentrator(CID)],
            "modules": [RadioModule(m, CID, channels=0b011) for m in (1001, 1002, 1003, 1004)],
            "meters": meters,
            "groups": [Group(g, Resource.WATER, "m3", (GroupInput(f"IN-{g}"),)) for g in ("G1", "G2")]}


def route(module_id: int, battery: int, rssi: int = -70) -> ModuleRoute:
    return ModuleRoute(module_id, 0, 1, rssi, battery, 0x0104, 0b011, 0)


@pytest.fixture
async def history(tmp_path: Path, make_server: Any, client_for: Any) -> tuple[Any, Any]:
    """Twenty days of a concentrator's history, back-filled today."""
    dmesh = {"port": 0, "concentrators": [{"id": CID, "key": "key-of-concentrator-7"}],
             "network": {"report_interval_s": 3600, "silent_periods": 3, "low_battery_mv": 3000}}
    server = await make_server(base_config(tmp_path, plugins={"dmesh": dmesh, "analytics": {"interval_s": 0}}))
    storage, dmesh = server.storage, dmesh_repository(server)
    await storage.registry_apply(registry())
    rows = []
    for h in range(1, 20 * 24 + 1):
        t = START + h * HOUR
        for m in (1001, 1002, 1003, 1004):
            if SILENT_FROM[m] * 24 <= h < 15 * 24 if m in SILENT_FROM else False:
                continue
            rows += [(m, 1, t, 10 * h, 0)] + ([(m, 2, t, 25 * h, 0)] if m in (1001, 1003) else [])
    a = np.array(rows, dtype=np.int64)
    await server.ingest.ingest(ReadingBatch(*(a[:, i] for i in range(5))))
    # Module 1001's battery ran low before the period's end and was replaced after it.
    for day, mv in ((1, 3400), (5, 3150), (9, 2950), (18, 3600)):
        await dmesh.store_topology(CID, START + day * DAY, [route(1001, mv), route(1003, 3600, rssi=-110)])
    # The concentrator went away on day 8 and came back on day 12.
    for day, event in ((0, "connect"), (8, "disconnect"), (12, "connect")):
        await dmesh.log_connection(ConnectionEvent(CID, event, START + day * DAY, "10.0.0.7:4000"))
    await server.intervals.process()
    await server.balance.process()
    return server, client_for(server)


def iso(day: int) -> str:
    return f"2024-01-{1 + day:02d}T00:00:00Z"


async def test_a_past_period_of_one_group(history: Any) -> None:
    server, client = history
    r = await client.post("/api/v1/analytics/run", headers=auth("operator"),
                          json={"group": "G1", "from": iso(PERIOD[0]), "to": iso(PERIOD[1])})
    assert r.status_code == 200, r.text
    found = r.json()["findings"]
    in_scope = {"G1", "W-1001", "W-1002", "IN-G1", "module:1001", "module:1002", f"concentrator:{CID}"}
    assert {f["subject"] for f in found} <= in_scope, found
    network = {(f["subject"], f["kind"]): f for f in found if f["detector"] == "dmesh-network"}
    assert set(network) == {("module:1002", "silent"), ("module:1001", "low_battery"),
                            (f"concentrator:{CID}", "concentrator_offline")}
    stored = {f["id"]: f for f in await server.storage.findings(limit=1000)}
    silent = stored[network["module:1002", "silent"]["id"]]
    # Silent from its last reading before day 6 to the period's end: 4 days, not years.
    assert silent["data"]["silent_s"] == (PERIOD[1] - SILENT_FROM[1002]) * DAY + HOUR
    assert "silent for 97.0 h" in silent["message"]
    assert silent["t"] == START + PERIOD[1] * DAY
    battery = stored[network["module:1001", "low_battery"]["id"]]
    assert battery["data"]["battery_mv"] == 2950 and battery["data"]["points"] == 3
    offline = stored[network[f"concentrator:{CID}", "concentrator_offline"]["id"]]
    assert offline["data"]["offline_s"] == 2 * DAY
    # Nothing was stored about the other group's modules either.
    assert not any(f["subject"] in ("module:1003", "module:1004") for f in stored.values())


async def test_the_command_answers_the_scope_only(history: Any) -> None:
    import asyncio

    server, _ = history
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "balans-edge"), "analytics", "run", "--group", "G2", "--from", iso(PERIOD[0]),
        "--to", iso(PERIOD[1]), "--url", f"http://127.0.0.1:{server.http.port}", "--token", TOKENS["operator"],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "module:1004" in text and "silent for 169.0 h" in text and "weak_link" in text
    assert "module:1001" not in text and "module:1002" not in text


async def test_a_past_period_sees_the_health_reported_with_readings(history: Any) -> None:
    """A concentrator that sends no TOPOLOGY: module 1002's battery, link and hops come
    only with its READINGS (module_reports). A run over a past period judges them as the
    module reported them by the period's end, not as today's registry row has them."""
    from balans_edge.core.storage import IngestWrite, ModuleHealth

    server, client = history
    falling = [(day, 3200 - 60 * day) for day in range(1, 6)]  # 3140 .. 2900 mV, weak link, long route
    replaced = [(21, 3600), (22, 3590)]  # long after the period: a new battery, a good link
    for day, mv in falling + replaced:
        weak = day < 15
        await server.storage.commit_ingest(IngestWrite(
            module_health=[ModuleHealth(1002, START + day * DAY, mv, -101 if weak else -60, 22 if weak else 3)]))
    module = await server.storage.registry_get("modules", 1002)
    assert (module.battery_mv, module.rssi, module.hops) == (3590, -60, 3)  # today's
    r = await client.post("/api/v1/analytics/run", headers=auth("operator"),
                          json={"group": "G1", "from": iso(PERIOD[0]), "to": iso(PERIOD[1])})
    assert r.status_code == 200, r.text
    network = {f["kind"]: f for f in r.json()["findings"] if f["subject"] == "module:1002"}
    assert set(network) == {"silent", "low_battery", "weak_link", "too_many_hops"}
    stored = {f["id"]: f for f in await server.storage.findings(subject="module:1002", limit=100)}
    battery = stored[network["low_battery"]["id"]]["data"]
    assert (battery["battery_mv"], battery["points"], battery["slope_mv_per_day"]) == (2900, 5, -60.0)
    assert stored[network["weak_link"]["id"]]["data"]["rssi_dbm"] == -101
    assert stored[network["too_many_hops"]["id"]]["data"]["hops"] == 22
