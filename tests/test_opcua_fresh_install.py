"""A fresh install: the SCADA bridges start with an empty registry, and the
meters and groups come later through the HTTP API. Read over OPC UA (asyncua's
client) and Modbus (mbpoll, libmodbus), as SCADA would, after adding, deleting
and adding again."""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from balans_edge.plugins.modbus.server import ModbusServer
from balans_edge.plugins.opcua.server import OpcuaServer

from conftest import auth, base_config, eventually, peer

HOUR = 3600


async def mbpoll_float64(port: int, address: int) -> float:
    """A float64 register value read by mbpoll (-B: ABCD, the map's default order)."""
    proc = await asyncio.create_subprocess_exec(
        peer("mbpoll"), "-m", "tcp", "-p", str(port), "-a", "1", "-0", "-1", "-o", "2", "-B", "-t", "4:hex",
        "-r", str(address), "-c", "4", "127.0.0.1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    words = [int(w, 16) for w in re.findall(r"^\[\d+\]:\s+0x([0-9A-Fa-f]+)", out.decode(), re.MULTILINE)]
    assert len(words) == 4, out.decode()
    return struct.unpack(">d", b"".join(w.to_bytes(2, "big") for w in words))[0]


@pytest.fixture
async def fresh(tmp_path: Path, make_server: Any, client_for: Any) -> tuple[Any, Any]:
    config = base_config(tmp_path, intervals={"debounce_s": 0.0}, balance={"debounce_s": 0.0}, plugins={
        "opcua": {"server": {"enabled": True, "port": 0, "pki_dir": str(tmp_path / "pki"),
                             "security_policies": ["None"], "anonymous_role": "viewer", "age_interval_s": 1.0}},
        "modbus": {"server": {"enabled": True, "port": 0}}})
    server = await make_server(config)
    assert await server.storage.registry_list("meters") == []
    return server, client_for(server)


async def test_meters_added_after_an_empty_start_are_served_over_opcua_and_modbus(
        fresh: tuple[Any, Any], caplog: pytest.LogCaptureFixture) -> None:
    from asyncua import Client, ua

    caplog.set_level(logging.WARNING)
    server, http = fresh
    opcua = next(c for _, c in server.components if isinstance(c, OpcuaServer))
    modbus = next(c for _, c in server.components if isinstance(c, ModbusServer))
    now = int(time.time())
    install = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 2 * HOUR))

    async def api(method: str, path: str, body: Any = None) -> Any:
        r = await http.request(method, path, json=body, headers=auth("admin"))
        assert r.status_code in (200, 201), r.text
        return r.json()

    await api("POST", "/api/v1/concentrators", {"concentrator_id": 7})
    await api("POST", "/api/v1/modules", {"module_id": 1001, "concentrator_id": 7, "channels": 7})
    meter = {"resource": "water", "unit": "m3", "install_time": install, "module_id": 1001}
    await api("POST", "/api/v1/meters", {**meter, "meter_id": "IN", "pulse_weight": 0.001, "channel": 1})
    await api("POST", "/api/v1/groups", {"group_id": "G", "resource": "water", "unit": "m3", "inputs": ["IN"]})
    await api("POST", "/api/v1/meters", {**meter, "meter_id": "W-1", "pulse_weight": 0.01, "channel": 2,
                                         "group_id": "G"})
    r = await http.post("/api/v1/readings", headers=auth("operator"), json={"readings": [
        {"module_id": 1001, "channel": 1, "ts": now - 60, "counter": 5000},
        {"module_id": 1001, "channel": 2, "ts": now - 60, "counter": 250}]})
    assert r.json()["accepted"] == 2, r.text

    client = Client(f"opc.tcp://127.0.0.1:{opcua.port}/balans-edge/")
    async with client:
        async def value(ident: str) -> ua.DataValue:
            return await client.get_node(ua.NodeId(ident, 2)).read_data_value(raise_on_bad_status=False)

        async def good(ident: str, want: float) -> bool:
            dv = await value(ident)
            return dv.StatusCode.is_good() and dv.Value.Value == pytest.approx(want)

        assert await eventually(lambda: good("Meters/W-1/Value", 2.5), 10.0)
        assert await good("Meters/IN/Value", 5.0)
        assert (await client.get_node(ua.NodeId("Groups/G/Name", 2)).read_browse_name()).Name == "Name"

        # Delete one meter, add another: the refreshes go on working.
        await api("PUT", "/api/v1/meters/W-1", {**meter, "pulse_weight": 0.01, "channel": 2})
        await api("POST", "/api/v1/meters", {**meter, "meter_id": "W-2", "pulse_weight": 0.001, "channel": 3})
        await api("DELETE", "/api/v1/groups/G")
        r = await http.post("/api/v1/readings", headers=auth("operator"), json={"readings": [
            {"module_id": 1001, "channel": 3, "ts": now - 30, "counter": 1234}]})
        assert r.json()["accepted"] == 1, r.text
        assert await eventually(lambda: good("Meters/W-2/Value", 1.234), 10.0)
        gone = await value("Groups/G/Name")
        assert gone.StatusCode.value == ua.StatusCodes.BadNodeIdUnknown
        assert await good("Meters/W-1/Value", 2.5)

    # The same meters over Modbus (the map was built from the empty registry at start).
    def block(meter_id: str) -> int | None:
        rmap = modbus.map
        return next((p.address for p in rmap.meters if p.object_id == meter_id), None) if rmap else None

    assert await eventually(lambda: block("W-2") is not None, 5.0)
    assert await mbpoll_float64(modbus.port, block("W-1")) == pytest.approx(2.5)
    assert await mbpoll_float64(modbus.port, block("IN")) == pytest.approx(5.0)
    assert await mbpoll_float64(modbus.port, block("W-2")) == pytest.approx(1.234)

    assert not opcua.refresh_failed and not modbus.refresh_failed
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == [], [r.getMessage() for r in failures]
    health = (await http.get("/api/v1/health", headers=auth("viewer"))).json()
    assert health["status"] == "ok" and health["plugins"]["opcua"] == "started"
