"""Valves on a pumping station's OPC UA server, commanded through the HTTP API
and the actuation service (audited): by a method call with typed arguments,
by a write of an Int16 command node, each confirmed by reading the valve's
state back; a valve that does not follow is reported, not assumed; an OPC UA
target never reaches the DMesh actuator."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from asyncua import ua
from opcua_support import station

from balans_edge.config import parse_config
from balans_edge.core.components import Command, CommandCode
from balans_edge.plugin_manager import config_schemas, load_plugins
from balans_edge.plugins.dmesh.commands import DmeshActuator
from balans_edge.plugins.opcua.actuators import OpcuaActuator
from balans_edge.settings import ConfigError

from conftest import auth, base_config, eventually, small_site

URL = "opc.tcp://10.20.0.7:4840/"
BY_METHOD = {"target": "W-1", "device": "PS2", "kind": "valve", "object_node": "ns=2;s=Valve1",
             "on_method": "ns=2;s=Valve1.Open", "off_method": "ns=2;s=Valve1.Close", "on_args": [5], "off_args": [2],
             "readback_node": "ns=2;s=Valve1.IsOpen", "confirm_timeout_s": 1.0, "confirm_every_s": 0.02}
BY_WRITE = {"target": "PS2-V2", "device": "PS2", "kind": "valve", "write_node": "ns=2;s=Valve2.Command",
            "on_value": 1, "off_value": 0, "readback_node": "ns=2;s=Valve2.IsOpen", "confirm_timeout_s": 1.0,
            "confirm_every_s": 0.02}
STUCK = {**BY_WRITE, "target": "PS2-V3", "write_node": "ns=2;s=Valve3.Command", "on_value": True,
         "off_value": False, "readback_node": "ns=2;s=Valve3.IsOpen", "confirm_timeout_s": 0.3}


def opcua(url: str, *actuators: dict[str, Any]) -> dict[str, Any]:
    device = {"name": "PS2", "endpoint": url, "timeout_s": 0.5, "watchdog_s": 0.2, "reconnect_min_s": 0.05,
              "reconnect_max_s": 0.2}
    return {"devices": [device], "actuators": list(actuators)}


async def connected(server) -> None:
    actuator = next(a for a in server.actuation.actuators if isinstance(a, OpcuaActuator))
    assert await eventually(lambda: actuator.client.devices["PS2"].up)


async def test_valve_closed_and_opened_by_method_call_through_the_meter_api(make_server, client_for, tmp_path):
    async with station(valve_delay=0.15) as s:
        plugins = {"opcua": opcua(s.url, BY_METHOD),
                   "dmesh": {"port": 0, "concentrators": [{"id": 7, "key": "k7"}], "backfill": False,
                             "command_timeout_s": 0.5}}
        server = await make_server(base_config(tmp_path, plugins=plugins))
        site = small_site()  # W-1 and W-2 are DMesh meters with a valve; W-1's valve is the station's
        site["meters"][0] = dataclasses.replace(site["meters"][0], flags=frozenset({"valve", "relay"}))
        site["meters"][1] = dataclasses.replace(site["meters"][1], flags=frozenset({"valve"}))
        await server.storage.registry_apply(site)
        kinds = [type(a) for a in server.actuation.actuators if isinstance(a, DmeshActuator | OpcuaActuator)]
        assert kinds == [DmeshActuator, OpcuaActuator]  # DMesh comes first and takes W-1 (on a concentrator)
        await connected(server)
        http = client_for(server)
        r = await http.post("/api/v1/meters/W-1/commands", json={"command": "valve_close", "reason": "burst main"},
                            headers=auth("operator"))
        assert r.status_code == 200, r.text
        done = r.json()
        assert done["outcome"] == "done", done
        assert done["detail"].startswith("opcua: valve W-1 closed: called ns=2;s=Valve1.Close, confirmed after ")
        assert done["detail"].endswith("(ns=2;s=Valve1.IsOpen = false)")
        assert float(done["detail"].split("after ")[1].split(" s")[0]) >= 0.1  # it waited for the limit switch
        assert await s.get("v1_state") is False
        ((verb, args),) = s.calls
        assert verb == "Close" and [(a.Value, a.VariantType) for a in args] == [(2, ua.VariantType.UInt16)]

        r = await http.post("/api/v1/meters/W-1/commands", json={"command": "valve_open", "reason": "repaired"},
                            headers=auth("operator"))
        assert r.json()["outcome"] == "done" and await s.get("v1_state") is True
        assert [v for v, _ in s.calls] == ["Close", "Open"]
        relay = await server.actuation.execute(Command("W-1", CommandCode.RELAY_OFF, "operator:1", "test"))
        assert (relay.outcome, relay.detail) == ("refused", "W-1 is driven by opcua, which takes no relay_off")
        other = await server.actuation.execute(Command("W-2", CommandCode.VALVE_CLOSE, "operator:1", "test"))
        assert other.outcome == "failed" and other.detail.startswith("dmesh: ")  # not a station target
        journal = await server.storage.journal_list("commands")
        assert [(c["target"], c["code"], c["outcome"], c["requested_by"]) for c in journal] == [
            ("W-2", "valve_close", "failed", "operator:1"), ("W-1", "relay_off", "refused", "operator:1"),
            ("W-1", "valve_open", "done", "api:test-operator"), ("W-1", "valve_close", "done", "api:test-operator")]
        assert len(s.calls) == 2  # neither the refused nor the DMesh command reached the station


async def test_valve_by_node_write_with_read_back(make_server, client_for, tmp_path):
    async with station(valve_delay=0.05) as s:
        server = await make_server(base_config(tmp_path, plugins={"opcua": opcua(s.url, BY_WRITE)}))
        await connected(server)
        http = client_for(server)
        url = "/api/v1/opcua/actuators/PS2-V2/commands"
        close = {"command": "valve_close", "reason": "tank full"}
        assert (await http.post(url, json=close, headers=auth("viewer"))).status_code == 403
        assert (await http.post(url, json={"command": "valve_close"}, headers=auth("operator"))).status_code == 400
        assert (await http.post("/api/v1/opcua/actuators/nope/commands", json=close,
                                headers=auth("operator"))).status_code == 404
        r = await http.post(url, json=close, headers=auth("operator"))
        assert r.json()["outcome"] == "done", r.text
        assert r.json()["detail"].startswith("opcua: valve PS2-V2 closed: wrote 0, confirmed after ")
        assert await s.get("v2_command") == 0 and await s.get("v2_state") is False  # an Int16 0 was accepted
        r = await http.post(url, json={"command": "valve_open", "reason": "refill"}, headers=auth("operator"))
        assert r.json()["outcome"] == "done" and await s.get("v2_command") == 1
        listing = (await http.get("/api/v1/opcua/actuators", headers=auth("viewer"))).json()["actuators"]
        assert [(a["target"], a["kind"], a["state"], a["readback"], a["switch"]) for a in listing] == [
            ("PS2-V2", "valve", "open", True, "write ns=2;s=Valve2.Command")]


async def test_a_valve_that_does_not_follow_is_reported_not_confirmed(make_server, tmp_path):
    async with station() as s:
        refused = {**STUCK, "target": "PS2-V1", "write_node": "ns=2;s=Valve1.IsOpen"}  # a state: not writable
        server = await make_server(base_config(tmp_path, plugins={"opcua": opcua(s.url, STUCK, refused)}),
                                   http=False)
        await connected(server)
        done = await server.actuation.execute(Command("PS2-V3", CommandCode.VALVE_OPEN, "policy:night", "fill"))
        assert done.outcome == "failed"
        assert done.detail == ("opcua: valve PS2-V3 not confirmed open within 0.3 s (wrote true): "
                               "ns=2;s=Valve3.IsOpen = false, expected true")
        assert await s.get("v3_command") is True  # the write itself arrived

        done = await server.actuation.execute(Command("PS2-V1", CommandCode.VALVE_OPEN, "policy:night", "fill"))
        assert done.outcome == "failed"
        # asyncua answers a write to a node without write access so (other servers say BadNotWritable)
        assert done.detail == "opcua: PS2 refused writing true to ns=2;s=Valve1.IsOpen: BadUserAccessDenied"

        await s.stop()
        actuator = next(a for a in server.actuation.actuators if isinstance(a, OpcuaActuator))
        assert await eventually(lambda: not actuator.client.devices["PS2"].up)
        done = await server.actuation.execute(Command("PS2-V3", CommandCode.VALVE_CLOSE, "policy:night", "stop"))
        assert done.outcome == "failed" and done.detail.startswith("opcua: not delivered: PS2 is not connected")
        outcomes = [c["outcome"] for c in await server.storage.journal_list("commands")]
        assert outcomes == ["failed"] * 3  # every attempt is on record


def test_actuator_config_errors_name_the_actuator():
    schemas = config_schemas(load_plugins())

    def problems(section: dict) -> list[str]:
        with pytest.raises(ConfigError) as info:
            parse_config({"plugins": {"opcua": section}}, schemas)
        return info.value.problems

    assert problems(opcua(URL, {**BY_WRITE, "device": "PS9"}, {**BY_METHOD, "target": "PS2-V2"})) == [
        '[plugins.opcua]: actuator "PS2-V2": unknown device "PS9" (devices: PS2); actuator "PS2-V2" is listed more '
        "than once"]
    assert problems(opcua(URL, {**BY_WRITE, **{k: BY_METHOD[k] for k in ("object_node", "on_method")}})) == [
        '[plugins.opcua.actuators[0]]: actuator "PS2-V2": give either write_node or object_node with on_method and '
        "off_method, not both"]
    no_switch = {k: v for k, v in BY_WRITE.items() if k != "write_node"}
    assert problems(opcua(URL, no_switch)) == [
        '[plugins.opcua.actuators[0]]: actuator "PS2-V2": give write_node (a node written) or object_node with '
        "on_method and off_method (methods called)"]
    assert problems(opcua(URL, {**BY_WRITE, "off_value": 1})) == [
        '[plugins.opcua.actuators[0]]: actuator "PS2-V2": on_value and off_value are both 1']
    assert problems(opcua(URL, {**BY_METHOD, "on_args": [{"x": 1}], "readback_node": "Valve1"})) == [
        "[plugins.opcua.actuators[0]] on_args[0]: expected true or false, a number or a string, got a table",
        '[plugins.opcua.actuators[0]] readback_node: "Valve1" is not a node id (expected e.g. "ns=2;s=Tank.Level" '
        'or "nsu=urn:plc:station;s=Tank.Level")']
