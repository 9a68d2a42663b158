"""The simulated DMesh site: its mesh, frames, events, profiles and command
answers as a pure model, its configuration errors, and the site reporting to a
real server (in-process over ingest and TCP, and as ``balans-edge dmesh
simulate`` in its own process)."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from balans_edge.config import load_config, parse_config
from balans_edge.core.model import COUNTER_MODULUS, RadioModule
from balans_edge.core.times import HOUR
from balans_edge.plugin_manager import config_schemas, load_plugins
from balans_edge.plugins.dmesh.codec import (
    MAX_PAYLOAD,
    CommandCode,
    CommandResultCode,
    Event,
    EventCode,
    Payload,
    Readings,
    Topology,
)
from balans_edge.plugins.dmesh.plugin import utc_offset_h
from balans_edge.plugins.dmesh.scenario import BATTERY_DEAD_MV, BATTERY_LOW_MV
from balans_edge.plugins.dmesh.simulator import PER_READINGS, FaultConfig, SimulatorConfig, SiteModel
from balans_edge.settings import ConfigError

from conftest import auth, base_config, dmesh_repository, eventually
from conftest import stored_readings as stored

BIN = Path(sys.executable).parent
INSTALL = 1_704_067_200  # 2024-01-01 00:00 UTC
KEYS = [{"id": 900001, "key": "key-900001-abcdef"}, {"id": 900002, "key": "key-900002-abcdef"}]
VALVE_CLOSED = 1 << 5
RELAY_OFF = 1 << 8


# helpers ------------------------------------------------------------------------------




def flatten(frames: dict[int, list[Payload]]) -> list[tuple[int, Any]]:
    """(concentrator, payload) pairs of frames grouped per concentrator."""
    return [(cid, p) for cid, payloads in frames.items() for p in payloads]


def events_of(site: SiteModel, k: int) -> list[tuple[int, int, int, int]]:
    """(concentrator, module, code, value) of the EVENT frames for reading ``k``."""
    out = []
    for cid, e in flatten(site.events(k)):
        assert isinstance(e, Event)
        assert e.ts == site.install_time + k * HOUR
        out.append((cid, e.module_id, e.code, e.value))
    return out


def faulty_config(**overrides: Any) -> SimulatorConfig:
    """Two buildings on two concentrators, with a magnet, a failing battery and a lost module."""
    params: dict[str, Any] = dict(buildings=2, apartments=30, concentrators=2, faults=[
        FaultConfig(kind="magnet", meter="B1-A07", fraction=0.5, flag_share=1.0, start_hour=5, end_hour=10),
        FaultConfig(kind="low_battery", meter="B2-A03", days=1, start_hour=2),
        FaultConfig(kind="lost_module", meter="B1-A02", start_hour=3, end_hour=6),
    ])
    params.update(overrides)
    return SimulatorConfig(**params)


@pytest.fixture(scope="module")
def site() -> SiteModel:
    return SiteModel(faulty_config(), install_time=INSTALL)


@pytest.fixture(scope="module")
def big_site() -> SiteModel:
    """One building of 999 apartments: more records than fit one frame, and the 30-hop limit."""
    return SiteModel(SimulatorConfig(buildings=1, apartments=999, concentrators=1), install_time=INSTALL)


def module_of(site: SiteModel, meter_id: str) -> int:
    return int(site.data.module[site.data.row(meter_id)])


# the site model -----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["site", "big_site"])
def test_mesh_relays_towards_the_concentrator_one_hop_at_a_time(which: str, request: pytest.FixtureRequest) -> None:
    """A route must end at the concentrator: each parent is one hop nearer, in the same building."""
    s: SiteModel = request.getfixturevalue(which)
    hops_of = {int(m): int(h) for m, h in zip(s.data.module, s.hops, strict=True)}
    for m, parent, hops, rssi in zip(s.data.module.tolist(), s.parent.tolist(), s.hops.tolist(), s.rssi.tolist(),
                                     strict=True):
        assert 1 <= hops <= 30
        assert -92 <= rssi <= -58
        assert (parent == 0) == (hops == 1), m
        if parent:
            assert parent in hops_of and parent // 1000 == m // 1000, (m, parent)
            assert hops_of[parent] == hops - 1, (m, parent)
    assert max(hops_of.values()) == (30 if which == "big_site" else 3)


def test_readings_are_split_per_concentrator_and_carry_the_batch(site: SiteModel) -> None:
    """Each building reports through its own concentrator, with the scenario's counters and battery."""
    d = site.data
    for k in (5, 20):  # during the lost module's outage (one meter fewer), and once the battery is low
        batch = d.batch(k)
        frames = site.readings(batch)
        assert set(frames) == {900001, 900002}
        expected = {int(m): (int(c), int(st)) for m, c, st in zip(batch.module, batch.counter, batch.status,
                                                                     strict=True)}
        seen = {}
        for cid, frame in flatten(frames):
            assert isinstance(frame, Readings)
            assert len(frame.encode()) <= MAX_PAYLOAD and frame.frame(1)
            for r in frame.records:
                assert cid == (900001 if r.module_id // 1000 == 2000 else 900002)
                row = int((d.module == r.module_id).nonzero()[0][0])
                assert r.ts == d.ts[k] and r.channel_mask == 1
                assert (r.counters[0], r.status) == expected[r.module_id]
                assert r.battery_mv == d.battery_mv[row, k]
                assert (r.hops, r.rssi) == (site.hops[row], site.rssi[row])
                seen[r.module_id] = r
        assert seen.keys() == expected.keys()
    assert module_of(site, "B1-A02") not in {r.module_id for _, f in flatten(site.readings(d.batch(5)))
                                             for r in f.records}
    low = next(r for _, f in flatten(site.readings(d.batch(20))) for r in f.records
               if r.module_id == module_of(site, "B2-A03"))
    assert low.battery_mv < BATTERY_LOW_MV


def test_readings_of_a_large_building_fit_the_payload(big_site: SiteModel) -> None:
    frames = big_site.readings(big_site.data.batch(1))
    assert list(frames) == [900001]
    (payloads,) = frames.values()
    assert len(payloads) == math.ceil(1000 / PER_READINGS)
    assert sum(len(p.records) for p in payloads) == 1000
    for p in payloads:
        assert len(p.encode()) <= MAX_PAYLOAD
        assert p.frame(1)


def test_events_follow_the_status_changes(site: SiteModel) -> None:
    """MAGNET_ON/OFF, MODULE_LOST/JOINED and LOW_BATTERY at exactly the readings where they change."""
    magnet, lost, battery = (module_of(site, m) for m in ("B1-A07", "B1-A02", "B2-A03"))
    assert (900001, magnet, EventCode.MAGNET_ON, 0) in events_of(site, 6)
    assert (900001, magnet, EventCode.MAGNET_OFF, 0) in events_of(site, 11)
    assert not [e for k in range(7, 11) for e in events_of(site, k) if e[1] == magnet]
    assert (900001, lost, EventCode.MODULE_LOST, 0) in events_of(site, 4)
    hops = int(site.hops[site.data.row("B1-A02")])
    assert (900001, lost, EventCode.MODULE_JOINED, hops) in events_of(site, 7)

    row = site.data.row("B2-A03")
    mv = site.data.battery_mv[row]
    low_k = next(k for k in range(len(mv)) if mv[k] < BATTERY_LOW_MV)
    dead_k = next(k for k in range(len(mv)) if mv[k] <= BATTERY_DEAD_MV)
    assert 2 < low_k < dead_k
    assert events_of(site, low_k) == [(900002, battery, EventCode.LOW_BATTERY, int(mv[low_k]))]
    assert events_of(site, dead_k) == [(900002, battery, EventCode.MODULE_LOST, 0)]
    assert not [e for k in range(low_k + 1, dead_k) for e in events_of(site, k)]
    assert events_of(site, 8) == []
    assert site.events(0) == {}


def test_topology_shows_the_outage_and_the_draining_battery(site: SiteModel, big_site: SiteModel) -> None:
    def entry(t: int, module: int) -> Any:
        return next(e for _, f in flatten(site.topology(t)) for e in f.modules if e.module_id == module)

    lost = module_of(site, "B1-A02")
    states = {h: entry(INSTALL + h * HOUR + 1800, lost).state for h in range(0, 9)}
    assert states == {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 6: 0, 7: 0, 8: 0}
    assert entry(INSTALL + 3 * HOUR + 1800, module_of(site, "B1-A03")).state == 0
    battery = module_of(site, "B2-A03")
    volts = [entry(INSTALL + h * HOUR, battery).battery_mv for h in (2, 8, 14, 20)]
    assert volts == sorted(volts, reverse=True) and len(set(volts)) == 4
    frames = big_site.topology(INSTALL + 5 * HOUR)
    assert [len(f.modules) for f in frames[900001]] == [240] * 4 + [1000 - 4 * 240]  # the protocol's 240 at most
    for _, f in flatten(frames):
        assert isinstance(f, Topology) and len(f.encode()) <= MAX_PAYLOAD


def test_profile_answers_what_the_module_recorded(site: SiteModel) -> None:
    d = site.data
    lost = module_of(site, "B1-A02")
    row = d.row("B1-A02")
    now = INSTALL + 8 * HOUR + 100
    got = site.profile(lost, 1, INSTALL, INSTALL + 10 * HOUR, now)
    expected = [int(d.counter[row, k]) if k <= 8 and k not in (4, 5, 6) else None for k in range(10)]
    assert got == expected
    healthy = module_of(site, "B1-A05")
    assert site.profile(healthy, 1, INSTALL + HOUR, INSTALL + 4 * HOUR, now) == [
        int(d.counter[d.row("B1-A05"), k]) for k in (1, 2, 3)]
    assert site.profile(healthy, 2, INSTALL, INSTALL + 3 * HOUR, now) == [None, None, None]
    assert site.profile(1234, 1, INSTALL, INSTALL + 3 * HOUR, now) == [None, None, None]


def test_command_answers(site: SiteModel) -> None:
    """The answer depends on whether the module is the site's and reachable; the delay on its hops."""
    hop = site.config.hop_delay_s
    assert site.answer(1234, CommandCode.PING_MODULE, INSTALL) == (CommandResultCode.UNKNOWN_MODULE, 0, hop)
    lost = module_of(site, "B1-A02")
    result, _, _ = site.answer(lost, CommandCode.PING_MODULE, INSTALL + 4 * HOUR + 100)
    assert result == CommandResultCode.NO_ROUTE
    assert site.answer(lost, CommandCode.PING_MODULE, INSTALL + 7 * HOUR)[0] == CommandResultCode.DONE
    far = module_of(site, "B1-A27")
    hops = int(site.hops[site.data.row("B1-A27")])
    assert hops == 3
    assert site.answer(far, CommandCode.VALVE_CLOSE, INSTALL + HOUR) == (
        CommandResultCode.DONE, VALVE_CLOSED, pytest.approx(2 * hop * hops))
    assert site.answer(far, CommandCode.PING_MODULE, INSTALL + HOUR)[:2] == (CommandResultCode.DONE, 0)


def test_a_closed_valve_stops_the_meter_until_it_is_opened_again() -> None:
    site = SiteModel(faulty_config(), install_time=INSTALL)  # its own: switching changes it
    module, i = module_of(site, "B1-A05"), site.data.row("B1-A05")
    closed, opened = INSTALL + 3 * HOUR + 600, INSTALL + 6 * HOUR + 1200

    def reported(t: int) -> tuple[int, int]:
        (record,) = [r for _, rs in site.records(site.ensure(t).batch_at(t)).items() for r in rs
                     if r.module_id == module]
        return record.counters[0], record.status & (VALVE_CLOSED | RELAY_OFF)

    def model(t: int) -> int:
        return site.data.counter_at(i, t)

    site.switch(module, CommandCode.VALVE_CLOSE, closed)
    assert reported(INSTALL + 2 * HOUR) == (model(INSTALL + 2 * HOUR), 0)  # the past is as it was
    assert reported(INSTALL + 4 * HOUR) == reported(INSTALL + 5 * HOUR + 300) == (model(closed), VALVE_CLOSED)
    site.switch(module, CommandCode.RELAY_OFF, INSTALL + 5 * HOUR)  # both off: still nothing flows
    assert reported(INSTALL + 5 * HOUR + 600)[1] == VALVE_CLOSED | RELAY_OFF
    site.switch(module, CommandCode.RELAY_ON, INSTALL + 5 * HOUR + 900)
    site.switch(module, CommandCode.VALVE_OPEN, opened)
    held = model(opened) - model(closed)
    assert held > 0  # the household drew water meanwhile
    after = INSTALL + 8 * HOUR
    assert reported(after) == ((model(after) - held) % COUNTER_MODULUS, 0)  # on from where it stopped
    assert site.profile(module, 1, INSTALL + HOUR, INSTALL + 9 * HOUR, after + HOUR) == [
        reported(INSTALL + k * HOUR)[0] for k in range(1, 9)]
    other = module_of(site, "B1-A06")
    (record,) = [r for _, rs in site.records(site.ensure(after).batch_at(after)).items() for r in rs
                 if r.module_id == other]
    assert record.counters[0] == site.data.counter_at(site.data.row("B1-A06"), after)  # the neighbours flow on


def test_ensure_extends_the_horizon_without_changing_the_past() -> None:
    s = SiteModel(faulty_config(), install_time=INSTALL)
    before = s.data
    t = int(before.ts[-1]) + 50 * HOUR
    after = s.ensure(t)
    assert after is s.data and after.ts[-1] >= t > before.ts[-1]
    n = len(before.ts)
    assert (after.counter[:, :n] == before.counter).all()
    assert (after.status[:, :n] == before.status).all()
    assert (after.present[:, :n] == before.present).all()
    assert s.ensure(t) is after  # within the horizon nothing is regenerated


# configuration ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schemas() -> dict[str, type]:
    return config_schemas(load_plugins())


@pytest.mark.parametrize(("fault", "message"), [
    ({"kind": "magnet", "meter": "B9-A01", "fraction": 0.5},
     "[plugins.dmesh.simulator]: faults[0] (magnet): unknown meter 'B9-A01'"),
    ({"kind": "stuck", "meter": "B1-A01", "fraction": 0.5},
     "[plugins.dmesh.simulator.faults[0]]: stuck: fraction does not apply (it takes end_hour, meter, start_hour)"),
    ({"kind": "leak", "litres_per_hour": 5.0}, "[plugins.dmesh.simulator.faults[0]]: leak: meter is required"),
    ({"kind": "magnet", "meter": "B1-A01", "fraction": 0.5, "start_hour": 10, "end_hour": 5},
     "[plugins.dmesh.simulator]: faults[0] (magnet): hour window [10, 5) is empty"),
])
def test_fault_errors_name_the_fault(fault: dict[str, Any], message: str, schemas: dict[str, type]) -> None:
    """A misconfigured fault must be found at load time, with the entry that is wrong."""
    with pytest.raises(ConfigError) as info:
        parse_config({"plugins": {"dmesh": {"simulator": {"faults": [fault]}}}}, schemas)
    (problem,) = info.value.problems
    assert problem.startswith(message), problem


def test_check_config_refuses_a_fault_on_an_unknown_meter(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[plugins.dmesh.simulator]\nbuildings = 1\napartments = 3\n'
                    'faults = [{ kind = "stuck", meter = "B1-A04" }]\n')
    r = subprocess.run([BIN / "balans-edge", "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "faults[0] (stuck): unknown meter 'B1-A04'" in r.stderr + r.stdout


# against a server -----------------------------------------------------------------------


async def test_live_readings_between_hour_marks_interpolate_the_model(make_server: Any, tmp_path: Path) -> None:
    """Between hour marks the site reports counters moved on in proportion to the hour."""
    dmesh = {"port": 0, "simulator": {"enabled": True, "transport": "ingest", "buildings": 1, "apartments": 3,
                                      "history_hours": 2, "interval_s": 1}}
    server = await make_server(base_config(tmp_path, plugins={"dmesh": dmesh}))
    sim = next(c for _, c in server.components if c.name == "dmesh-simulator")

    async def between() -> dict[str, list[tuple[int, int, int]]]:
        rows = {m: [r for r in rs if r[0] % HOUR] for m, rs in (await stored(server)).items()}
        return rows if sum(map(len, rows.values())) >= 4 else {}

    live = await eventually(between)
    assert live, "no reading between hour marks within 6 s"
    d = sim.site.data
    for meter_id, rows in live.items():
        i = d.row(meter_id)
        for ts, counter, _ in rows:
            k = (ts - int(d.ts[0])) // HOUR
            lo, hi = int(d.counter[i, k]), int(d.counter[i, k + 1])
            assert (counter - lo) % COUNTER_MODULUS <= (hi - lo) % COUNTER_MODULUS
            batch = d.batch_at(ts)
            (j,) = (batch.module == d.module[i]).nonzero()[0]
            assert counter == int(batch.counter[j])
    hourly = {m: [r for r in rs if r[0] % HOUR == 0] for m, rs in (await stored(server)).items()}
    assert all(len(rs) >= 3 for rs in hourly.values())  # the fast-forwarded history: 2 hours back and now


def count_rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as c:
        return c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


async def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the command in its own process without blocking the loop the server runs in."""
    proc = await asyncio.create_subprocess_exec(BIN / "balans-edge", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_simulate_command_fills_a_running_server(make_server: Any, tmp_path: Path) -> None:
    """The standalone simulator delivers exactly the model's history, events, topology and truth;
    a rerun adds nothing."""
    db = tmp_path / "balans.db"
    server = await make_server(base_config(tmp_path, plugins={"dmesh": {"port": 0, "concentrators": KEYS}}))
    driver = next(c for _, c in server.components if c.name == "dmesh-driver")
    config = tmp_path / "simulate.toml"
    config.write_text(
        f'[storage]\nurl = "sqlite:{db}"\n'
        f'[plugins.dmesh]\nport = {driver.port}\nconcentrators = [\n'
        + "".join(f'  {{ id = {k["id"]}, key = "{k["key"]}" }},\n' for k in KEYS) + "]\n"
        '[plugins.dmesh.simulator]\nenabled = false\nconcentrators = 2\nbuildings = 2\napartments = 5\n'
        'faults = [\n'
        '  { kind = "magnet", meter = "B1-A03", fraction = 0.5, flag_share = 1.0, start_hour = 2, end_hour = 10 },\n'
        '  { kind = "lost_module", meter = "B2-A02", start_hour = 3, end_hour = 6 },\n'
        ']\n'
    )
    truth = tmp_path / "truth.json"
    code, out, err = await run_cli("dmesh", "simulate", "-c", str(config), "--hours", "30", "--no-live",
                                   "--truth", str(truth))
    assert code == 0, err
    assert "history: 31 hours, 369 readings of 12 meters stored" in out  # 12 x 31 less the 3 lost

    install = int((await server.storage.registry_get("meters", "B1-IN")).install_time)
    loaded = load_config(config, config_schemas(load_plugins()))
    site = SiteModel(loaded.plugins["dmesh"].simulator, install, utc_offset_h(loaded.site.timezone))
    d = site.data
    first = await stored(server)
    assert sorted(first) == sorted(m.meter_id for m in d.meters)
    last = max(ts for rows in first.values() for ts, _, _ in rows)
    k_last = (last - install) // HOUR
    assert k_last >= 30
    for meter_id, rows in first.items():
        i = d.row(meter_id)
        ks = [k for k in range(k_last - 30, k_last + 1) if d.present[i, k]]
        assert rows == [(int(d.ts[k]), int(d.counter[i, k]), int(d.status[i, k])) for k in ks], meter_id
        assert len(rows) == (28 if meter_id == "B2-A02" else 31)

    with sqlite3.connect(db) as c:
        magnet = module_of(site, "B1-A03")
        events = c.execute("SELECT module_id, code, ts FROM module_events").fetchall()
        assert (magnet, EventCode.MAGNET_ON, install + 3 * HOUR) in events
        assert (module_of(site, "B2-A02"), EventCode.MODULE_LOST, install + 4 * HOUR) in events
        modules = {m for (m,) in c.execute("SELECT DISTINCT module_id FROM topology_snapshots")}
    assert modules == {int(m) for m in d.module} and len(modules) == 12

    doc = json.loads(truth.read_text())
    faults = {f["kind"]: f for f in doc["faults"]}
    assert set(faults) == {"Magnet", "LostModule"}
    assert (faults["Magnet"]["meter_id"], faults["LostModule"]["meter_id"]) == ("B1-A03", "B2-A02")
    # Half of what flowed through B1-A03 in hours 2..10 (at night it may be nothing: the
    # site's hours depend on when the test runs).
    lost = 0.5 * float(d.truth.consumption_m3[d.row("B1-A03"), 2:10].sum())
    assert faults["Magnet"]["volume_m3"] == pytest.approx(lost, abs=1e-6)
    assert doc["install_time"] == install

    readings_before = count_rows(db, "readings")
    events_before = count_rows(db, "module_events")
    code, out, err = await run_cli("dmesh", "simulate", "-c", str(config), "--hours", "30", "--no-live")
    assert code == 0, err
    again = await stored(server)
    new_hours = (max(ts for rows in again.values() for ts, _, _ in rows) - last) // HOUR
    assert {m: [r for r in rows if r[0] <= last] for m, rows in again.items()} == first
    assert count_rows(db, "readings") == readings_before + 12 * new_hours
    assert count_rows(db, "module_events") == events_before


async def test_commands_reach_simulated_modules_over_tcp(make_server: Any, client_for: Any, tmp_path: Path) -> None:
    """A command takes its route's hops there and back; a module the site does not have is UNKNOWN_MODULE."""
    dmesh = {"port": 0, "concentrators": KEYS[:1], "backfill": False,
             "simulator": {"enabled": True, "transport": "tcp", "buildings": 1, "apartments": 25,
                           "history_hours": 1, "interval_s": 3600, "hop_delay_s": 0.05}}
    server = await make_server(base_config(tmp_path, plugins={"dmesh": dmesh}))
    sim = next(c for _, c in server.components if c.name == "dmesh-simulator")
    async with asyncio.timeout(10):
        await sim.tcp.drained()
    far = module_of(sim.site, "B1-A25")
    hops = int(sim.site.hops[sim.site.data.row("B1-A25")])
    assert hops == 3
    http = client_for(server)

    started = time.monotonic()
    r = await http.post(f"/api/v1/dmesh/modules/{far}/commands", json={"command": "ping", "reason": "route test"},
                        headers=auth("operator"))
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert (r.json()["outcome"], r.json()["target"]) == ("done", f"module:{far}")
    assert took >= 2 * 0.05 * hops
    (journal,) = await server.storage.journal_list("commands")
    assert (journal["id"], journal["outcome"]) == (r.json()["id"], "done")

    stranger = 2_000_500
    await server.storage.registry_apply({"modules": [RadioModule(stranger, 900001, channels=1)]})
    r = await http.post(f"/api/v1/dmesh/modules/{stranger}/commands",
                        json={"command": "ping", "reason": "not on this site"}, headers=auth("operator"))
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "failed" and "UNKNOWN_MODULE" in r.json()["detail"]
    results = {x["command_id"]: x["result"] for x in await dmesh_repository(server).command_results()}
    assert results == {journal["id"]: CommandResultCode.DONE, r.json()["id"]: CommandResultCode.UNKNOWN_MODULE}


async def test_a_valve_closed_over_tcp_stops_the_simulated_meter_also_after_a_restart(
        make_server: Any, client_for: Any, tmp_path: Path) -> None:
    dmesh = {"port": 0, "concentrators": KEYS[:1], "backfill": False,
             "simulator": {"enabled": True, "transport": "tcp", "buildings": 1, "apartments": 8,
                           "history_hours": 1, "interval_s": 3600, "hop_delay_s": 0.01}}
    config = base_config(tmp_path, plugins={"dmesh": dmesh})
    server = await make_server(config)
    sim = next(c for _, c in server.components if c.name == "dmesh-simulator")
    async with asyncio.timeout(10):
        await sim.tcp.drained()
    assert (await server.storage.registry_get("meters", "B1-A05")).flags == {"valve"}
    assert not (await server.storage.registry_get("meters", "B1-IN")).flags
    r = await client_for(server).post("/api/v1/meters/B1-A05/commands", headers=auth("operator"),
                                      json={"command": "valve_close", "reason": "unpaid bills"})
    assert r.json()["outcome"] == "done", r.json()
    module, later = module_of(sim.site, "B1-A05"), int(time.time()) + 12 * HOUR

    def reported(site: SiteModel) -> tuple[int, int]:
        (record,) = [x for _, rs in site.records(site.ensure(later).batch_at(later)).items() for x in rs
                     if x.module_id == module]
        return record.counters[0], record.status & VALVE_CLOSED

    before = reported(sim.site)
    assert before[1] == VALVE_CLOSED
    await server.stop()

    # The new run's site starts open; the audited command closes it again, at the same time.
    server = await make_server(config)
    again = next(c for _, c in server.components if c.name == "dmesh-simulator")
    assert again.site is not sim.site and reported(again.site) == before
