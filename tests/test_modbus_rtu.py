"""Modbus RTU over a real pseudo-terminal pair made by socat: several slaves on
one serial line share one connection and one lock, keep the configured pause
between requests, and a dead slave on the line does not stop the others."""

from __future__ import annotations

import numpy as np
from modbus_support import plc, pty_pair

from balans_edge.plugins.modbus.client import ModbusClient

from conftest import base_config, eventually, peer

PAUSE_S = 0.02


def rtu(name: str, unit: int, path: str, tags: list[dict]) -> dict:
    return {"name": name, "transport": "rtu", "path": path, "baudrate": 115200, "parity": "N", "stopbits": 1,
            "unit_id": unit, "timeout_s": 0.2, "retries": 0, "pause_s": PAUSE_S, "reconnect_min_s": 0.3,
            "reconnect_max_s": 1.0, "store_every_s": 0.0, "tags": tags}


async def test_two_slaves_and_a_dead_one_on_one_serial_line(make_server, tmp_path):
    socat = peer("socat")
    async with pty_pair(socat, tmp_path) as (plc_end, host_end), plc(units=(1, 2, 3), serial=plc_end) as p:
        await p.set_value(1, "holding", 0, 21.5, "float32", "CDAB")
        await p.set_value(2, "holding", 0, 42.25, "float32", "CDAB")
        await p.set(2, "discrete", 3, [1])
        p.silent_units.add(3)
        pressure = {"name": "pressure", "address": 0, "type": "float32", "byte_order": "CDAB", "unit": "bar",
                    "interval_s": 0.05}
        devices = [
            rtu("pump1", 1, host_end, [pressure]),
            rtu("pump2", 2, host_end, [pressure, {"name": "running", "table": "discrete", "address": 3,
                                                  "interval_s": 0.05}]),
            rtu("pump3", 3, host_end, [pressure]),
        ]
        server = await make_server(base_config(tmp_path, plugins={"modbus": {"devices": devices}}), http=False)
        client = next(c for _, c in server.components if isinstance(c, ModbusClient))

        def tags() -> dict:
            return {t["tag"]: t for t in client.snapshot()}

        # Until the dead slave's back-off spaces out its timeouts, the line is too busy for 50 ms polls.
        got = await eventually(lambda: tags() if [t["quality"] for t in tags().values()] == [
            "good", "good", "good", "comm_fail"] else None, timeout=5)
        assert got, tags()
        assert got["pump1/pressure"]["value"] == 21.5 and got["pump2/pressure"]["value"] == 42.25
        assert got["pump2/running"]["value"] == 1.0
        assert "unit 3 gave no answer within 0.2 s" in got["pump3/pressure"]["detail"]
        assert len({id(d.link) for d in client.devices.values()}) == 1  # one connection, one lock

        polls = {p_.device.name: p_.polls for p_ in client.pollers}
        await p.set_value(1, "holding", 0, 22.0, "float32", "CDAB")
        assert await eventually(lambda: tags()["pump1/pressure"]["value"] == 22.0)
        asked = {unit: len(p.reads(unit)) for unit in (1, 2, 3)}
        assert await eventually(lambda: min(len(p.reads(u)) - asked[u] for u in (1, 2)) >= 10, timeout=3)
        progress = {p_.device.name: p_.polls - polls[p_.device.name] for p_ in client.pollers}
        # The dead slave is asked again only after its back-off, not on every poll: it costs the line little.
        assert len(p.reads(3)) - asked[3] <= progress["pump3"] / 3, (progress, len(p.reads(3)) - asked[3])
        assert tags()["pump1/pressure"]["quality"] == "good" and tags()["pump3/pressure"]["quality"] == "comm_fail"

        # Requests on the line never overlap and keep the quiet time between them.
        gaps = np.diff(np.array(p.arrivals[-40:]))
        assert gaps.min() >= PAUSE_S * 0.9, gaps.min()
