"""Valves and pumps on a simulator PLC, commanded through the HTTP API and the
actuation service (audited), confirmed by read-back; a PLC that does not move
is reported, not assumed; a Modbus target never reaches the DMesh actuator."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from modbus_support import Follow, plc
from pymodbus.constants import ExcCodes

from balans_edge.config import parse_config
from balans_edge.core.components import Command, CommandCode
from balans_edge.plugin_manager import config_schemas, load_plugins
from balans_edge.plugins.dmesh.commands import DmeshActuator
from balans_edge.plugins.modbus.actuators import ModbusActuator
from balans_edge.settings import ConfigError

from conftest import auth, base_config, small_site

VALVE = {"target": "W-1", "device": "PS1", "kind": "valve", "write_table": "coil", "write_address": 10,
         "readback_table": "discrete", "readback_address": 10, "confirm_timeout_s": 1.0, "confirm_every_s": 0.02}
PUMP = {"target": "PS1-pump1", "device": "PS1", "kind": "pump", "write_table": "holding", "write_address": 50,
        "on_value": 2, "off_value": 1, "readback_table": "input", "readback_address": 50, "readback_on": 1,
        "readback_off": 0, "confirm_timeout_s": 1.0, "confirm_every_s": 0.02}


def modbus(port: int, *actuators: dict[str, Any]) -> dict[str, Any]:
    device = {"name": "PS1", "port": port, "timeout_s": 0.3, "retries": 0, "reconnect_min_s": 0.05,
              "reconnect_max_s": 0.2}
    return {"devices": [device], "actuators": list(actuators)}


async def with_site(server) -> None:
    site = small_site()
    site["meters"][0] = dataclasses.replace(site["meters"][0], flags=frozenset({"valve", "relay"}))
    site["meters"][1] = dataclasses.replace(site["meters"][1], flags=frozenset({"valve"}))
    await server.storage.registry_apply(site)


async def test_valve_closed_and_opened_through_the_meter_api_with_read_back(make_server, client_for, tmp_path):
    async with plc() as p:
        p.follows[(1, "coil", 10)] = Follow(("discrete", 10), {1: 1, 0: 0}, delay=0.15)
        await p.set(1, "coil", 10, [1])
        await p.set(1, "discrete", 10, [1])  # open
        server = await make_server(base_config(tmp_path, plugins={"modbus": modbus(p.port, VALVE)}))
        await with_site(server)
        http = client_for(server)
        body = {"command": "valve_close", "reason": "burst main at the pumping station"}
        r = await http.post("/api/v1/meters/W-1/commands", json=body, headers=auth("operator"))
        assert r.status_code == 200, r.text
        done = r.json()
        assert done["outcome"] == "done", done["detail"]
        assert done["detail"].startswith("modbus: valve W-1 closed: wrote 0 to coil 10, confirmed after ")
        assert done["detail"].endswith("(discrete 10 = 0)")
        assert float(done["detail"].split("after ")[1].split(" s")[0]) >= 0.1  # it waited for the limit switch
        assert await p.get(1, "coil", 10) == [0] and await p.get(1, "discrete", 10) == [0]
        assert (1, "write:coil", 10, 1) in p.requests

        r = await http.post("/api/v1/meters/W-1/commands", json={"command": "valve_open", "reason": "repaired"},
                            headers=auth("operator"))
        assert r.json()["outcome"] == "done" and await p.get(1, "discrete", 10) == [1]
        journal = await server.storage.journal_list("commands")
        assert [(c["target"], c["code"], c["outcome"], c["requested_by"]) for c in journal] == [
            ("W-1", "valve_open", "done", "api:test-operator"), ("W-1", "valve_close", "done", "api:test-operator")]
        listing = (await http.get("/api/v1/modbus/actuators", headers=auth("viewer"))).json()["actuators"]
        assert [(a["target"], a["kind"], a["state"], a["readback"]) for a in listing] == [("W-1", "valve", "open", 1)]


async def test_pump_started_and_stopped_through_a_holding_register(make_server, client_for, tmp_path):
    async with plc() as p:
        p.follows[(1, "holding", 50)] = Follow(("input", 50), {2: 1, 1: 0}, delay=0.05)
        server = await make_server(base_config(tmp_path, plugins={"modbus": modbus(p.port, PUMP)}))
        http = client_for(server)
        url = "/api/v1/modbus/actuators/PS1-pump1/commands"
        start = {"command": "pump_start", "reason": "tank below 30 %"}
        assert (await http.post(url, json=start, headers=auth("viewer"))).status_code == 403
        assert (await http.post(url, json={"command": "pump_start"}, headers=auth("operator"))).status_code == 400
        assert (await http.post("/api/v1/modbus/actuators/nope/commands", json=start,
                                headers=auth("operator"))).status_code == 404
        r = await http.post(url, json=start, headers=auth("operator"))
        assert r.json()["outcome"] == "done", r.text
        assert "pump PS1-pump1 running: wrote 2 to holding 50, confirmed" in r.json()["detail"]
        assert await p.get(1, "holding", 50) == [2] and await p.get(1, "input", 50) == [1]
        r = await http.post(url, json={"command": "pump_stop", "reason": "night tariff over"}, headers=auth("operator"))
        assert r.json()["outcome"] == "done" and await p.get(1, "holding", 50) == [1]
        wrong = await http.post(url, json={"command": "valve_close", "reason": "typo"}, headers=auth("operator"))
        assert wrong.json()["outcome"] == "refused"
        assert wrong.json()["detail"] == "PS1-pump1 is driven by modbus, which takes no valve_close"
        assert [r[1] for r in p.requests if r[1].startswith("write:")] == ["write:holding", "write:holding"]


async def test_a_plc_that_does_not_move_is_reported_not_confirmed(make_server, tmp_path):
    async with plc() as p:
        stuck = {**VALVE, "target": "V-stuck", "write_address": 11, "readback_address": 11,
                 "confirm_timeout_s": 0.3}
        refused = {**VALVE, "target": "V-missing", "write_address": 4095 + 100}  # outside the PLC's coils
        server = await make_server(base_config(tmp_path, plugins={"modbus": modbus(p.port, stuck, refused)}),
                                   http=False)
        done = await server.actuation.execute(Command("V-stuck", CommandCode.VALVE_OPEN, "policy:night", "fill"))
        assert done.outcome == "failed"
        assert done.detail == ("modbus: valve V-stuck not confirmed open within 0.3 s (wrote 1 to coil 11): "
                               "discrete 11 = 0, expected 1")
        assert await p.get(1, "coil", 11) == [1]  # the write itself arrived
        assert len([r for r in p.requests if r[1] == "discrete"]) >= 5  # it kept looking until the timeout

        done = await server.actuation.execute(Command("V-missing", CommandCode.VALVE_OPEN, "policy:night", "fill"))
        assert done.outcome == "failed"
        assert "PS1 refused writing 1 to coil 4195: exception 2 (illegal data address)" in done.detail

        p.refuse[(1, "discrete", 11)] = ExcCodes.DEVICE_BUSY
        done = await server.actuation.execute(Command("V-stuck", CommandCode.VALVE_CLOSE, "policy:night", "stop"))
        assert done.outcome == "failed" and "last read-back error: exception 6 (server device busy)" in done.detail

        await p.stop()
        done = await server.actuation.execute(Command("V-stuck", CommandCode.VALVE_CLOSE, "policy:night", "stop"))
        assert done.outcome == "failed" and "the write was not delivered: " in done.detail
        outcomes = [c["outcome"] for c in await server.storage.journal_list("commands")]
        assert outcomes == ["failed"] * 4  # every attempt is on record


async def test_a_modbus_target_never_goes_to_the_dmesh_actuator(make_server, tmp_path):
    async with plc() as p:
        p.follows[(1, "coil", 10)] = Follow(("discrete", 10), {1: 1, 0: 0}, delay=0.0)
        plugins = {"modbus": modbus(p.port, VALVE),
                   "dmesh": {"port": 0, "concentrators": [{"id": 7, "key": "k7"}], "backfill": False,
                             "command_timeout_s": 0.5}}
        server = await make_server(base_config(tmp_path, plugins=plugins), http=False)
        await with_site(server)  # W-1 and W-2 are DMesh meters with a valve; W-1's valve is wired to the PLC
        kinds = [type(a) for a in server.actuation.actuators if isinstance(a, DmeshActuator | ModbusActuator)]
        assert kinds == [DmeshActuator, ModbusActuator]  # DMesh comes first and takes W-1 (on a concentrator)
        done = await server.actuation.execute(Command("W-1", CommandCode.VALVE_OPEN, "operator:1", "test"))
        assert done.outcome == "done" and done.detail.startswith("modbus: valve W-1 open")
        relay = await server.actuation.execute(Command("W-1", CommandCode.RELAY_OFF, "operator:1", "test"))
        assert (relay.outcome, relay.detail) == ("refused", "W-1 is driven by modbus, which takes no relay_off")
        other = await server.actuation.execute(Command("W-2", CommandCode.VALVE_CLOSE, "operator:1", "test"))
        assert other.outcome == "failed" and other.detail.startswith("dmesh: ")  # not a Modbus target
        assert [r[1] for r in p.requests if r[1].startswith("write:")] == ["write:coil"]


def test_actuator_config_errors_name_the_actuator():
    schemas = config_schemas(load_plugins())

    def problems(section: dict) -> list[str]:
        with pytest.raises(ConfigError) as info:
            parse_config({"plugins": {"modbus": section}}, schemas)
        return info.value.problems

    assert problems(modbus(502, {**VALVE, "device": "PS9"}, {**PUMP, "target": "W-1"})) == [
        '[plugins.modbus]: actuator "W-1": unknown device "PS9" (devices: PS1); actuator "W-1" is listed more than once'
    ]
    assert problems(modbus(502, {**VALVE, "on_value": 2})) == [
        '[plugins.modbus.actuators[0]]: actuator "W-1": a coil is written 0 or 1']
    assert problems(modbus(502, {**PUMP, "kind": "heater"})) == [
        "[plugins.modbus.actuators[0]] kind: expected one of valve, pump, relay, got \"heater\""]
