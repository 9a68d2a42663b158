"""DMesh network monitoring against a real server: a test concentrator sends
TOPOLOGY, READINGS and EVENT frames to the driver; the network API, the
``dmesh-network`` detector and the commissioning report read what was stored."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_dmesh_driver import Client

from balans_edge.config import parse_config
from balans_edge.core.model import Concentrator, Meter, RadioModule, Resource
from balans_edge.core.storage import ConnectionEvent, ModuleRoute
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugin_manager import config_schemas, load_plugins
from balans_edge.plugins.dmesh.codec import (
    Ack,
    AckStatus,
    Event,
    EventCode,
    ModuleEntry,
    ReadingRecord,
    Readings,
    Topology,
    decode_payload,
)
from balans_edge.plugins.dmesh.network import battery_days_left
from balans_edge.settings import ConfigError

from conftest import T0, auth, base_config

CID, OTHER = 7, 8
KEY = "key-of-concentrator-7"
DAY, HOUR = 86400, 3600
FW = 0x0104  # 1.4


def site() -> dict[str, list]:
    """Concentrator 7 with modules 1001..1008 (one water meter each, input 1)."""
    modules = [RadioModule(m, CID, channels=0b001) for m in range(1001, 1009)]
    meters = [
        Meter(f"W-{m}", Resource.WATER, "m3", 0.001, T0, module_id=m, channel=1, group_id="G-1")
        for m in range(1001, 1009)
    ]
    return {"concentrators": [Concentrator(CID, name="C7")], "modules": modules, "accounts": [], "meters": meters}


def entry(module_id: int, parent: int, hops: int, rssi: int, battery: int = 3600, state: int = 0) -> ModuleEntry:
    return ModuleEntry(module_id, parent, hops, rssi, battery, FW, 0b001, state)


def route(module_id: int, parent: int, hops: int, rssi: int, battery: int, state: int = 0) -> ModuleRoute:
    return ModuleRoute(module_id, parent, hops, rssi, battery, FW, 0b001, state)


async def send_acked(client: Client, payload: Any) -> None:
    """Send a data frame and wait for its ACK OK (host requests in between are not the point here)."""
    seq = await client.send(payload)
    while not isinstance(ack := decode_payload(await client.frame()), Ack):
        pass
    assert (ack.acked_seq, ack.status) == (seq, AckStatus.OK)


@pytest.fixture
async def network(tmp_path: Path, make_server, client_for):
    """A running server with the driver; concentrator 7 connected and reporting:

    1001 healthy (direct), 1002 healthy (under 1001), 1003 weak link, 1004 22 hops,
    1005 lost (online two hours ago), 1006 silent (last reading four hours ago, no
    route), 1007 battery falling 50 mV a day to 2950 mV, 1008 low battery (one report);
    concentrator 8 configured, last disconnected 2000 s ago."""
    dmesh = {
        "port": 0,
        "concentrators": [{"id": CID, "key": KEY}, {"id": OTHER, "key": "key-of-8"}],
        "network": {
            "report_interval_s": 3600,
            "silent_periods": 3,
            "weak_rssi_dbm": -95,
            "max_hops": 20,
            "offline_after_s": 900,
        },
    }
    server = await make_server(base_config(tmp_path, plugins={"dmesh": dmesh}))
    await server.storage.registry_apply(site())
    driver = next(c for _, c in server.components if c.name == "dmesh-driver")
    now = int(time.time())
    storage = server.storage
    # History that a live link cannot backdate goes straight to storage.
    await storage.store_topology(CID, now - 2 * HOUR, [route(1005, 1001, 2, -75, 3400)])
    for i, mv in enumerate((3100, 3050, 3000, 2950)):
        await storage.store_topology(CID, now - 60 - (3 - i) * DAY, [route(1007, 1001, 2, -72, mv)])
    await storage.log_connection(ConnectionEvent(OTHER, "connect", now - 5000, "10.0.0.8:4000"))
    await storage.log_connection(ConnectionEvent(OTHER, "disconnect", now - 2000, "10.0.0.8:4000", "closed"))

    client = await Client.connect(driver.port)
    await client.login(cid=CID, key=KEY)
    await send_acked(
        client,
        Topology(
            (
                entry(1001, 0, 1, -70),
                entry(1002, 1001, 2, -80, 3500),
                entry(1003, 1002, 3, -100),
                entry(1004, 1003, 22, -80),
                entry(1005, 1001, 2, -90, 3400, state=1),
                entry(1008, 1002, 3, -85, 2900),
            )
        ),
    )
    fresh = now - 600
    # Each module reports with its reading what the TOPOLOGY says of it (battery, RSSI, hops).
    health = {1001: (3600, -70, 1), 1002: (3500, -80, 2), 1003: (3600, -100, 3), 1004: (3600, -80, 22),
              1008: (2900, -85, 3)}
    records = [ReadingRecord(m, fresh, 0, *health[m], 0b001, (1000 + m,)) for m in health]
    records.append(ReadingRecord(1006, now - 4 * HOUR, 0, 3300, -80, 2, 0b001, (500,)))
    await send_acked(client, Readings(tuple(records)))
    await send_acked(client, Event(1005, now - 100, EventCode.MODULE_LOST, 0))
    await send_acked(client, Event(1003, now - 200, EventCode.ROUTE_CHANGED, 3))
    http = client_for(server)
    yield server, http, now
    await client.close()


async def test_concentrators_and_tree(network) -> None:
    _, http, now = network
    r = await http.get("/api/v1/network/concentrators", headers=auth("viewer"))
    assert r.status_code == 200, r.text
    c7, c8 = r.json()["concentrators"]
    assert (c7["id"], c7["name"], c7["registered"], c7["configured"], c7["connected"]) == (CID, "C7", True, True, True)
    assert c7["peer"].startswith("127.0.0.1:") and c7["last_connect"] and c7["last_disconnect"] is None
    assert c7["modules"] == {"total": 8, "online": 6, "lost": 1, "silent": 1}
    assert (c8["id"], c8["registered"], c8["configured"], c8["connected"]) == (OTHER, False, True, False)
    assert c8["peer"] == "10.0.0.8:4000"
    assert c8["modules"] == {"total": 0, "online": 0, "lost": 0, "silent": 0}
    assert time.time() - 2100 < _unix(c8["last_disconnect"]) < time.time() - 1900

    r = await http.get(f"/api/v1/network/concentrators/{CID}/topology", headers=auth("viewer"))
    assert r.status_code == 200, r.text
    tree = r.json()
    assert (tree["concentrator_id"], tree["roots"], tree["unplaced"]) == (CID, [1001], [1006])
    modules = {m["module_id"]: m for m in tree["modules"]}
    assert {m: v["children"] for m, v in modules.items()} == {
        1001: [1002, 1005, 1007],
        1002: [1003, 1008],
        1003: [1004],
        1004: [],
        1005: [],
        1006: [],
        1007: [],
        1008: [],
    }
    assert {m: v["state"] for m, v in modules.items()} == {
        1001: "online",
        1002: "online",
        1003: "online",
        1004: "online",
        1005: "lost",
        1006: "silent",
        1007: "online",
        1008: "online",
    }
    m = modules[1003]
    assert (m["parent_id"], m["hops"], m["rssi"], m["battery_mv"], m["firmware"]) == (1002, 3, -100, 3600, "1.4")
    assert _unix(m["last_seen"]) >= now - 5  # the topology report
    assert _unix(modules[1006]["last_seen"]) == now - 4 * HOUR  # its reading
    # No TOPOLOGY placed 1006, but its reading told its battery, link and hops.
    m = modules[1006]
    assert (m["parent_id"], m["hops"], m["rssi"], m["battery_mv"]) == (None, 2, -80, 3300)
    assert _unix(modules[1005]["last_seen"]) == now - 2 * HOUR  # its last report as online
    assert modules[1007]["battery_mv"] == 2950

    r = await http.get(f"/api/v1/network/concentrators/{OTHER}/topology", headers=auth("viewer"))
    assert r.json() == {"concentrator_id": OTHER, "roots": [], "unplaced": [], "modules": []}


async def test_module_detail_and_errors(network) -> None:
    _, http, now = network
    r = await http.get("/api/v1/network/modules/1005", headers=auth("viewer"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["module"]["state"] == "lost" and body["module"]["concentrator_id"] == CID
    assert [m["meter_id"] for m in body["meters"]] == ["W-1005"]
    assert body["meters"][0]["group_id"] == "G-1"
    assert [(e["name"], e["value"]) for e in body["events"]] == [("MODULE_LOST", 0)]
    assert [(h["state"], h["hops"], h["rssi"]) for h in body["topology_history"]] == [
        ("lost", 2, -90),
        ("online", 2, -75),
    ]
    assert _unix(body["topology_history"][1]["t"]) == now - 2 * HOUR

    r = await http.get("/api/v1/network/modules/1007?limit=2", headers=auth("viewer"))
    assert [h["battery_mv"] for h in r.json()["topology_history"]] == [2950, 3000]

    for path in (
        "/api/v1/network/modules/4242",
        "/api/v1/network/modules/abc",
        "/api/v1/network/concentrators/99/topology",
    ):
        r = await http.get(path, headers=auth("viewer"))
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"
    r = await http.get("/api/v1/network/modules/1001?limit=0", headers=auth("viewer"))
    assert r.status_code == 400
    assert (await http.get("/api/v1/network/concentrators")).status_code == 401


async def test_findings(network) -> None:
    server, _, now = network
    assert [d.name for _, d in server.detection.detectors if d.name == "dmesh-network"] == ["dmesh-network"]
    found = [f for f in await server.run_detectors() if f.detector == "dmesh-network"]
    by = {(f.subject, f.kind): f for f in found}
    assert sorted(by) == [
        ("concentrator:8", "concentrator_offline"),
        ("module:1003", "weak_link"),
        ("module:1004", "too_many_hops"),
        ("module:1006", "silent"),
        ("module:1007", "low_battery"),
        ("module:1008", "low_battery"),
    ]  # 1001 and 1002 are healthy; 1005 is lost but was online two hours ago
    assert all(f.id is not None for f in found)

    silent = by[("module:1006", "silent")]
    assert (silent.severity, silent.data["last_seen"]) == ("warning", now - 4 * HOUR)
    assert 4 * HOUR <= silent.data["silent_s"] <= 4 * HOUR + 10
    falling = by[("module:1007", "low_battery")]
    assert falling.severity == "critical"
    assert falling.data == {"battery_mv": 2950, "days_left": 5.0, "slope_mv_per_day": -50.0, "points": 4}
    assert "days left: 5.0" in falling.message
    single = by[("module:1008", "low_battery")]
    assert single.severity == "warning"
    # Its TOPOLOGY entry and the hourly report of its reading: two points, no fall.
    assert single.data == {"battery_mv": 2900, "days_left": None, "slope_mv_per_day": 0.0, "points": 2}
    assert "days left: unknown" in single.message
    assert by[("module:1003", "weak_link")].data == {"rssi_dbm": -100, "limit_dbm": -95}
    assert by[("module:1004", "too_many_hops")].data == {"hops": 22, "limit": 20}
    offline = by[("concentrator:8", "concentrator_offline")]
    assert offline.severity == "critical" and offline.data["last_event_t"] == now - 2000
    assert 2000 <= offline.data["offline_s"] <= 2010
    stored = await server.storage.journal_list("findings")
    assert {(r["subject"], r["kind"]) for r in stored if r["detector"] == "dmesh-network"} == set(by)


@pytest.fixture
async def readings_only(tmp_path: Path, make_server, client_for):
    """A server whose concentrator 7 sends READINGS and never TOPOLOGY."""
    dmesh = {"port": 0, "backfill": False, "concentrators": [{"id": CID, "key": KEY}]}
    server = await make_server(base_config(tmp_path, plugins={"dmesh": dmesh}))
    await server.storage.registry_apply(site())
    driver = next(c for _, c in server.components if c.name == "dmesh-driver")
    client = await Client.connect(driver.port)
    await client.login(cid=CID, key=KEY)
    yield server, client_for(server), client, tmp_path / "balans.db"
    await client.close()


async def test_readings_keep_battery_link_and_hops_current(readings_only) -> None:
    """READINGS carry each module's battery, RSSI and hops: they reach the
    registry row (committed before the ACK), the network API and the detector
    with no TOPOLOGY at all; an older report does not overwrite a newer one."""
    server, http, client, db = readings_only
    now = int(time.time())
    # Module 1003: 22 hops on a weak link with a battery falling 50 mV a day.
    for days, mv in ((3, 3100), (2, 3050), (1, 3000)):
        await send_acked(client, Readings((ReadingRecord(1003, now - days * DAY, 0, mv, -70, 4, 1, (days,)),)))
    await send_acked(client, Readings((
        ReadingRecord(1003, now - 60, 0, 2950, -101, 22, 1, (10,)),
        ReadingRecord(1004, now - 60, 0, 3600, -60, 0, 1, (10,)),  # hops 0 is out of range: not stored
        ReadingRecord(9999, now - 60, 0, 3600, -60, 1, 1, (10,)),  # not registered: quarantined, no module row
    )))
    # Acknowledged means committed: another connection to the file sees it.
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT battery_mv, rssi, hops, last_seen FROM modules WHERE module_id = 1003").fetchone()
        assert row == (2950, -101, 22, now - 60)
        assert conn.execute("SELECT battery_mv, rssi, hops FROM modules WHERE module_id = 1004").fetchone() == (
            3600, -60, None)
        reports = conn.execute("SELECT module_id, t, battery_mv FROM module_reports ORDER BY module_id, t").fetchall()
    hour = (now - 60) // HOUR * HOUR
    assert [r for r in reports if r[0] == 1003] == [
        (1003, (now - d * DAY) // HOUR * HOUR, mv) for d, mv in ((3, 3100), (2, 3050), (1, 3000))
    ] + [(1003, hour, 2950)]
    assert {r[0] for r in reports} == {1003, 1004}

    # A retransmission of an older report changes nothing that is newer.
    await send_acked(client, Readings((ReadingRecord(1003, now - 2 * DAY, 0, 3050, -70, 4, 1, (2,)),)))
    module = await server.storage.registry_get("modules", 1003)
    assert (module.battery_mv, module.rssi, module.hops) == (2950, -101, 22)

    r = await http.get("/api/v1/network/modules/1003", headers=auth("viewer"))
    body = r.json()
    assert {k: body["module"][k] for k in ("battery_mv", "rssi", "hops", "state")} == {
        "battery_mv": 2950, "rssi": -101, "hops": 22, "state": "online"}
    assert [(_unix(h["t"]), h["battery_mv"], h["rssi"], h["hops"]) for h in body["reports"]][:2] == [
        (hour, 2950, -101, 22), ((now - DAY) // HOUR * HOUR, 3000, -70, 4)]
    assert body["topology_history"] == []

    found = {(f.subject, f.kind): f for f in await server.run_detectors() if f.detector == "dmesh-network"}
    assert found[("module:1003", "weak_link")].data == {"rssi_dbm": -101, "limit_dbm": -95}
    assert found[("module:1003", "too_many_hops")].data == {"hops": 22, "limit": 20}
    falling = found[("module:1003", "low_battery")]
    assert (falling.data["battery_mv"], falling.data["points"], falling.data["days_left"]) == (2950, 4, 5.0)


async def test_battery_link_and_hops_share_the_readings_transaction(readings_only, monkeypatch) -> None:
    """When the readings cannot be committed, neither is the module's health
    (the frame is asked for again and stored whole the second time)."""
    from balans_edge.core.storage import StorageError

    server, _, client, _ = readings_only
    real = server.storage.commit_ingest
    failures = [StorageError("disk unavailable")]

    async def failing_once(write):
        # Fault injection: the first commit fails as if storage were momentarily unavailable.
        assert [h.module_id for h in write.module_health] == [1001]
        if failures:
            raise failures.pop()
        return await real(write)

    monkeypatch.setattr(server.storage, "commit_ingest", failing_once)
    now = int(time.time())
    frame = Readings((ReadingRecord(1001, now - 60, 0, 2800, -99, 7, 1, (5,)),))
    seq = await client.send(frame)
    assert decode_payload(await client.frame()) == Ack(seq, AckStatus.RETRY)
    module = await server.storage.registry_get("modules", 1001)
    assert (module.battery_mv, module.rssi, module.hops, module.last_seen) == (None, None, None, None)
    assert await server.storage.module_reports(1001) == []
    await send_acked(client, frame)
    module = await server.storage.registry_get("modules", 1001)
    assert (module.battery_mv, module.rssi, module.hops, module.last_seen) == (2800, -99, 7, now - 60)


def test_battery_trend() -> None:
    assert battery_days_left([], 2700) == (None, None)
    assert battery_days_left([(0, 2900)], 2700) == (None, None)
    days, slope = battery_days_left([(0, 3000), (DAY, 2900)], 2700)
    assert (round(days, 6), round(slope, 6)) == (2.0, -100.0)
    assert battery_days_left([(0, 2900), (DAY, 2950)], 2700) == (None, pytest.approx(50.0))
    # A new battery starts a new trend: only the points after the rise count.
    days, slope = battery_days_left([(0, 2800), (DAY, 2750), (2 * DAY, 3300), (3 * DAY, 3200)], 2700)
    assert (round(days, 6), round(slope, 6)) == (5.0, -100.0)


def test_network_config() -> None:
    schemas = config_schemas(load_plugins())
    config = parse_config({"plugins": {"dmesh": {}}}, schemas).plugins["dmesh"].network
    assert (
        config.report_interval_s,
        config.silent_periods,
        config.low_battery_mv,
        config.weak_rssi_dbm,
        config.max_hops,
        config.offline_after_s,
    ) == (3600, 3, 3000, -95, 20, 900)
    with pytest.raises(ConfigError) as err:
        parse_config({"plugins": {"dmesh": {"network": {"max_hops": 31, "weak_rsi_dbm": -90}}}}, schemas)
    assert "[plugins.dmesh.network] max_hops: expected an integer 1..30, got 31" in err.value.problems
    assert any("weak_rsi_dbm: unknown key" in p for p in err.value.problems)


# commissioning ---------------------------------------------------------------------

END = T0 + 48 * HOUR  # the window is [T0, END)


async def commissioning_db(path: Path) -> None:
    storage = SqliteStorage(path)
    await storage.open()
    try:
        meters = [
            Meter(m, Resource.WATER, "m3", 0.001, T0 - DAY, module_id=1001, channel=c, group_id=g)
            for m, c, g in (("W-A", 1, "G-1"), ("W-B", 2, "G-1"), ("W-C", 3, "G-1"), ("W-X", 1, "G-2"))
        ]
        meters[3] = Meter("W-X", Resource.WATER, "m3", 0.001, T0 - DAY, module_id=1002, channel=1, group_id="G-2")
        await storage.registry_apply(
            {
                "concentrators": [Concentrator(CID)],
                "modules": [RadioModule(1001, CID, channels=0b111), RadioModule(1002, CID)],
                "meters": meters,
            }
        )
        keys = await storage.meter_keys()
        rows = []
        for h in range(-2, 50):  # hours outside the window do not count
            t = T0 + h * HOUR
            rows.append((keys["W-A"], t, 1.0, 1 if h == 5 else 0))  # complete, one estimated hour
            if h not in (10, 11):  # W-B: no rows at 10, 11 and a missing one at 30
                rows.append((keys["W-B"], t, None if h == 30 else 1.0, 2 if h == 30 else 0))
            if h < 47:  # W-C: its last hour has not arrived
                rows.append((keys["W-C"], t, 1.0, 0))
            rows.append((keys["W-X"], t, 1.0, 0))
        await storage.save_intervals(rows, [])
    finally:
        await storage.close()


def run_commissioning(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "balans-edge"), "dmesh", "commissioning", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_commissioning_report(tmp_path: Path) -> None:
    db = tmp_path / "site.db"
    asyncio.run(commissioning_db(db))
    config = tmp_path / "site.toml"
    config.write_text(f'[storage]\nurl = "sqlite:{db}"\n', encoding="utf-8")

    result = run_commissioning(config, "--group", "G-1", "--hours", "48", "--end", "2014-01-22T00:30:00Z")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "group G-1: 2014-01-20T00:00:00Z .. 2014-01-22T00:00:00Z (48 h)"
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert rows["W-A"] == ["W-A", "member", "1001", "1", "48/48", "0", "-", "complete"]
    assert rows["W-B"] == ["W-B", "member", "1001", "2", "45/48", "3", "2014-01-20T10:00:00Z", "INCOMPLETE"]
    assert rows["W-C"] == ["W-C", "member", "1001", "3", "47/48", "1", "2014-01-21T23:00:00Z", "INCOMPLETE"]
    assert lines[-1] == "1 of 3 meters complete, 2 incomplete"

    result = run_commissioning(config, "--group", "G-2", "--hours", "48", "--end", "2014-01-22T00:00:00Z")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "W-X" in result.stdout and result.stdout.splitlines()[-1] == "1 of 1 meters complete, 0 incomplete"
    # W-C's missing hour is outside a window that ends an hour earlier.
    result = run_commissioning(config, "--group", "G-1", "--hours", "12", "--end", "2014-01-21T23:00:00Z")
    assert result.returncode == 0, result.stdout
    result = run_commissioning(config, "--group", "nope")
    assert result.returncode == 1 and "no meters in group 'nope'" in result.stdout


def _unix(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
