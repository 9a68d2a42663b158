"""Valve, relay and module commands through the real DMesh driver over TCP,
answered by the simulated concentrator; the audit in the commands journal;
back-fill of missing hours after a concentrator logs in."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np

from balans_edge.core.model import Meter, RawReading, Resource
from balans_edge.plugins.dmesh.codec import Command, CommandCode, CommandResult, CommandResultCode
from balans_edge.plugins.dmesh.commands import hour_ranges, missing_hours
from balans_edge.plugins.dmesh.concentrator import ConcentratorSettings, SimulatedConcentrator

from conftest import T0, auth, base_config, eventually, small_site

CID = 7
KEY = "key-of-concentrator-7"
HOUR = 3600


async def start(make_server, tmp_path, **dmesh):
    """A real server with the DMesh driver on a free port; meter W-1 has a valve and a relay."""
    table = {"port": 0, "concentrators": [{"id": CID, "key": KEY}], "backfill": False, **dmesh}
    server = await make_server(base_config(tmp_path, plugins={"dmesh": table}))
    site = small_site()
    site["meters"][0] = dataclasses.replace(site["meters"][0], flags=frozenset({"valve", "relay"}))
    await server.storage.registry_apply(site)
    driver = next(c for _, c in server.components if c.name == "dmesh-driver")
    return server, driver


async def connected(port: int, **kw) -> SimulatedConcentrator:
    c = SimulatedConcentrator(ConcentratorSettings(CID, KEY.encode(), port=port, reconnect_s=0.1), **kw)
    c.start()
    async with asyncio.timeout(5):
        await c.connected.wait()
    return c


def commands_sent(c: SimulatedConcentrator) -> list[Command]:
    return [p for p in c.received if isinstance(p, Command)]


async def test_valve_close_over_http_is_done_and_audited(make_server, client_for, tmp_path):
    server, driver = await start(make_server, tmp_path)
    c = await connected(driver.port)
    try:
        http = client_for(server)
        body = {"command": "valve_close", "reason": "leak in flat 1"}
        assert (await http.post("/api/v1/meters/W-1/commands", json=body, headers=auth("viewer"))).status_code == 403
        no_reason = await http.post("/api/v1/meters/W-1/commands", json={"command": "valve_close", "reason": " "},
                                    headers=auth("operator"))
        assert no_reason.status_code == 400
        r = await http.post("/api/v1/meters/W-1/commands", json=body, headers=auth("operator"))
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["outcome"] == "done" and "DONE (VALVE_CLOSED)" in answer["detail"]
        (sent,) = commands_sent(c)
        assert (sent.command_id, sent.module_id, sent.code) == (answer["id"], 1001, CommandCode.VALVE_CLOSE)
        record = (await server.storage.journal_list("commands"))[0]
        assert record["id"] == answer["id"]
        assert record["requested_by"] == "api:test-operator"
        assert (record["reason"], record["outcome"], record["code"]) == ("leak in flat 1", "done", "valve_close")
        (result,) = await server.storage.command_results()
        assert (result["concentrator_id"], result["command_id"], result["status"]) == (CID, answer["id"], 1 << 5)
    finally:
        await c.stop()


async def test_meter_without_the_flag_fails_with_a_clear_detail(make_server, client_for, tmp_path):
    server, driver = await start(make_server, tmp_path)
    c = await connected(driver.port)
    try:
        r = await client_for(server).post("/api/v1/meters/W-2/commands", headers=auth("operator"),
                                          json={"command": "relay_off", "reason": "debt"})
        assert r.json()["outcome"] == "failed"
        assert "meter W-2 has no relay" in r.json()["detail"]
        assert not commands_sent(c)
    finally:
        await c.stop()


async def test_unanswered_command_times_out_on_the_host(make_server, client_for, tmp_path):
    server, driver = await start(make_server, tmp_path, command_timeout_s=0.5)
    c = await connected(driver.port, on_command=lambda command: None)
    try:
        pending = asyncio.create_task(client_for(server).post(
            "/api/v1/meters/W-1/commands", headers=auth("operator"), json={"command": "valve_open", "reason": "fixed"}
        ))
        await asyncio.sleep(0.25)
        assert (await server.storage.journal_list("commands"))[0]["outcome"] == "pending"
        answer = (await pending).json()
        assert answer["outcome"] == "failed" and "timeout after 0.5 s" in answer["detail"]
        assert (await server.storage.journal_list("commands"))[0]["outcome"] == "failed"
        assert len(commands_sent(c)) == 1  # acknowledged, never answered
    finally:
        await c.stop()


async def test_a_late_result_corrects_the_audit_of_a_timed_out_command(make_server, client_for, tmp_path):
    server, driver = await start(make_server, tmp_path, command_timeout_s=0.3)
    c = await connected(driver.port, on_command=lambda command: (CommandResultCode.DONE, 1 << 5, 0.8))
    try:
        answer = (await client_for(server).post("/api/v1/meters/W-1/commands", headers=auth("operator"),
                                                json={"command": "valve_close", "reason": "burst"})).json()
        assert answer["outcome"] == "failed" and "timeout after 0.3 s" in answer["detail"]

        async def corrected() -> dict | None:
            record = await server.storage.journal_get("commands", answer["id"])
            return record if record["outcome"] == "done" else None

        record = await eventually(corrected, timeout=5)
        assert record["detail"] == ("dmesh: module 1001: timeout after 0.3 s; "
                                    "a late result arrived: DONE (VALVE_CLOSED)")
        # The same result again changes nothing; a result from another concentrator is not taken.
        driver.commands.result_arrived(CID, CommandResult(answer["id"], CommandResultCode.DONE, 1 << 5))
        failed = await server.storage.command_append({
            "t": int(time.time()), "target": "W-1", "code": "valve_open", "requested_by": "test", "reason": "r",
            "outcome": "failed", "detail": "dmesh: module 1001: timeout after 0.3 s"})
        driver.commands.result_arrived(CID + 1, CommandResult(failed, CommandResultCode.DONE, 0))
        await asyncio.sleep(0.2)
        assert (await server.storage.journal_get("commands", answer["id"]))["detail"] == record["detail"]
        assert (await server.storage.journal_get("commands", failed))["outcome"] == "failed"
    finally:
        await c.stop()


async def test_a_command_interrupted_by_a_stop_is_failed_at_the_next_start(make_server, client_for, tmp_path):
    server, driver = await start(make_server, tmp_path, command_timeout_s=30)
    c = await connected(driver.port, on_command=lambda command: None)  # never answered
    try:
        asking = asyncio.create_task(client_for(server).post(
            "/api/v1/meters/W-1/commands", headers=auth("operator"), json={"command": "valve_open", "reason": "x"}))
        await eventually(lambda: _pending(server), timeout=5)
        await server.stop()
        asking.cancel()
    finally:
        await c.stop()
    server, _ = await start(make_server, tmp_path)
    (record,) = await server.storage.journal_list("commands")
    assert record["outcome"] == "failed"
    assert record["detail"] == "interrupted: the server stopped before the outcome was known"


async def _pending(server) -> bool:
    records = await server.storage.journal_list("commands")
    return bool(records) and records[0]["outcome"] == "pending"


async def test_a_valve_not_on_a_concentrator_is_left_to_the_actuator_that_drives_it(make_server, tmp_path):
    from balans_edge.core.components import Command as Cmd
    from balans_edge.core.components import CommandCode as Code
    from balans_edge.core.components import CommandOutcome

    server, _ = await start(make_server, tmp_path)
    await server.storage.registry_apply({"meters": [Meter("V-9", Resource.WATER, "m3", 0.001, T0,
                                                          flags=frozenset({"valve"}))]})

    class StationValves:  # a partner's actuator without owns(): it takes any valve command it is given
        name = "station"

        def handles(self, command: Cmd) -> bool:
            return command.code in (Code.VALVE_CLOSE, Code.VALVE_OPEN)

        async def execute(self, command: Cmd) -> CommandOutcome:
            return CommandOutcome(True, f"closed {command.target}")

    server.actuation.add(StationValves())
    on_module = await server.actuation.route(Cmd("W-1", Code.VALVE_CLOSE, "test", "r"))
    assert on_module is not None and on_module.name == "dmesh"
    done = await server.actuation.execute(Cmd("V-9", Code.VALVE_CLOSE, "policy:test", "burst"))
    assert (done.outcome, done.detail) == ("done", "station: closed V-9")


async def test_result_codes_map_to_failures(make_server, tmp_path):
    server, driver = await start(make_server, tmp_path)
    c = await connected(driver.port, on_command=lambda command: (CommandResultCode.NO_ROUTE, 0, 0.01))
    try:
        from balans_edge.core.components import Command as Cmd
        from balans_edge.core.components import CommandCode as Code

        done = await server.actuation.execute(Cmd("W-1", Code.RELAY_OFF, "policy:test", "load shedding"))
        assert done.outcome == "failed" and done.detail == "dmesh: module 1001: NO_ROUTE"
    finally:
        await c.stop()


async def test_disconnected_concentrator_fails_immediately(make_server, client_for, tmp_path):
    server, _ = await start(make_server, tmp_path)
    t = time.monotonic()
    r = await client_for(server).post("/api/v1/meters/W-1/commands", headers=auth("operator"),
                                      json={"command": "valve_close", "reason": "leak"})
    assert time.monotonic() - t < 2
    assert r.json()["outcome"] == "failed"
    assert "concentrator 7 is not connected" in r.json()["detail"]


async def test_ping_and_interval_through_the_module_commands_api(make_server, client_for, tmp_path):
    server, driver = await start(make_server, tmp_path)
    c = await connected(driver.port)
    try:
        http = client_for(server)
        url = "/api/v1/dmesh/modules/1001/commands"
        assert (await http.post(url, json={"command": "ping"}, headers=auth("operator"))).status_code == 400
        denied = await http.post(url, json={"command": "ping", "reason": "x"}, headers=auth("viewer"))
        assert denied.status_code == 403
        bad = await http.post(url, json={"command": "set_interval", "seconds": 10, "reason": "x"},
                              headers=auth("operator"))
        assert bad.status_code == 400
        r = await http.post(url, json={"command": "ping", "reason": "is it alive"}, headers=auth("operator"))
        assert r.status_code == 200, r.text
        assert (r.json()["outcome"], r.json()["code"], r.json()["target"]) == ("done", "ping", "module:1001")
        r = await http.post(url, json={"command": "set_interval", "seconds": 900, "reason": "save battery"},
                            headers=auth("operator"))
        assert r.json()["outcome"] == "done" and r.json()["detail"].startswith("dmesh: 900 s")
        codes = [(p.code, p.args) for p in commands_sent(c)]
        assert codes == [(CommandCode.PING_MODULE, ()), (CommandCode.SET_INTERVAL, (900,))]
        journal = await server.storage.journal_list("commands")
        assert [(j["code"], j["requested_by"], j["outcome"]) for j in journal] == [
            ("set_interval", "api:test-operator", "done"), ("ping", "api:test-operator", "done")
        ]
    finally:
        await c.stop()


def test_missing_hours_and_ranges():
    hours = np.arange(0, 10 * HOUR, HOUR)
    ts = np.array([0, HOUR + 200, 2 * HOUR - 100, 5 * HOUR + 400, 9 * HOUR])
    assert missing_hours(ts, 0, 9 * HOUR, 300).tolist() == [3 * HOUR, 4 * HOUR, 5 * HOUR, 6 * HOUR, 7 * HOUR, 8 * HOUR]
    assert missing_hours(np.array([], dtype=np.int64), 0, 2 * HOUR, 300).tolist() == [0, HOUR, 2 * HOUR]
    assert hour_ranges(hours[[1, 2, 3, 6]]) == [(HOUR, 4 * HOUR), (6 * HOUR, 7 * HOUR)]
    long = np.arange(0, 200 * HOUR, HOUR)
    assert hour_ranges(long) == [(0, 168 * HOUR), (168 * HOUR, 200 * HOUR)]


def counter(module: int, channel: int, h: int) -> int:
    return (h - T0) // HOUR * (module % 10 + channel)


async def test_backfill_requests_exactly_the_missing_hours(make_server, tmp_path):
    server, driver = await start(make_server, tmp_path, backfill=True, backfill_delay_s=0.0)
    now = time.time()
    end = (int(now) - 300) // HOUR * HOUR
    start_ = end - 7 * 24 * HOUR
    gap_w1 = set(range(start_ + 10 * HOUR, start_ + 15 * HOUR, HOUR))
    gap_w3 = {start_ + 100 * HOUR}
    rows = []
    for module, channel, gap in ((1001, 1, gap_w1), (1001, 2, set()), (1002, 3, gap_w3)):
        rows += [RawReading(module, channel, h, counter(module, channel, h))
                 for h in range(start_ - 2 * HOUR, end + HOUR, HOUR) if h not in gap and h <= now]
    await server.ingest.ingest(rows)

    c = await connected(driver.port, profile=lambda m, ch, t0, t1: [counter(m, ch, h) for h in range(t0, t1, HOUR)])
    try:
        async with asyncio.timeout(10):
            while True:
                journal = await server.storage.journal_list("commands")
                if len(journal) >= 2 and all(j["outcome"] != "pending" for j in journal):
                    break
                await asyncio.sleep(0.05)
        requested = {(p.module_id, *p.args) for p in commands_sent(c)}
        assert requested == {
            (1001, 1, start_ + 10 * HOUR, start_ + 15 * HOUR),
            (1002, 3, start_ + 100 * HOUR, start_ + 101 * HOUR),
        }
        assert {j["outcome"] for j in journal} == {"done"}
        assert {j["requested_by"] for j in journal} == {"dmesh:backfill"}
        keys = await server.storage.meter_keys()
        w1 = await server.storage.readings(keys["W-1"], start_ + 10 * HOUR, start_ + 15 * HOUR)
        assert w1.ts.tolist() == sorted(gap_w1)
        assert w1.counter.tolist() == [counter(1001, 1, h) for h in sorted(gap_w1)]
        w3 = await server.storage.readings(keys["W-3"], start_ + 100 * HOUR, start_ + 100 * HOUR + 1)
        assert w3.counter.tolist() == [counter(1002, 3, start_ + 100 * HOUR)]
    finally:
        await c.stop()
