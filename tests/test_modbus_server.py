"""The Modbus TCP server for SCADA, end to end: a real balans-edge server with
readings that went through ingest, intervals and balances, read by mbpoll
(libmodbus, an independent client) and by raw sockets for bad input, and
compared with what the HTTP API answers."""

from __future__ import annotations

import asyncio
import math
import re
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from balans_edge.core.balance_figures import BALANCE_FLAGS
from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.model import Concentrator, Group, GroupInput, Meter, RadioModule, Resource, Status
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugins.modbus.regmap import GROUP, METER, METER_QUALITY, SYSTEM
from balans_edge.plugins.modbus.server import ModbusServer
from balans_edge.plugins.modbus.values import decode

from conftest import Valves, auth, base_config, eventually, peer, seed_registry

HOUR = 3600
BASE_W_V = 12.5
PER_HOUR = {1: 3217, 2: 1234, 3: 77}
"""Pulses per hour by channel: IN (1 l), W-V (1 l), W-R (10 l)."""
TZ = "Asia/Kolkata"
"""Half an hour off UTC: "today" starts between two UTC hours."""


def wire_to_big_endian(regs: list[int], order: str) -> bytes:
    """The value's bytes, most significant first, from registers sent in ``order``
    (by hand, not with values.py: every order is a swap, its own inverse)."""
    words = [r.to_bytes(2, "big") for r in regs]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return b"".join(words)


def unpack(regs: list[int], fmt: str, order: str) -> Any:
    return struct.unpack(fmt, wire_to_big_endian(regs, order))[0]


@dataclass
class Site:
    server: Any
    modbus: ModbusServer
    client: Any
    hour: int
    """Start of the hour of the newest readings."""

    @property
    def port(self) -> int:
        return self.modbus.port

    def block(self, object_id: str) -> int:
        rmap = self.modbus.map
        return next(p.address for p in (*rmap.meters, *rmap.groups) if p.object_id == object_id)

    def coil(self, meter_id: str, kind: str) -> int:
        return next(c.address for c in self.modbus.map.coils if c.meter_id == meter_id and c.kind == kind)

    def served(self, address: int, dtype: str, order: str = "ABCD") -> float:
        n = {"float64": 4, "float32": 2, "uint32": 2, "int32": 2}.get(dtype, 1)
        regs = self.modbus.snapshot.image.registers[address : address + n].astype(int).tolist()
        return float(decode(regs, dtype, order)[0])

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        r = await self.client.get(path, params=params, headers=auth("viewer"))
        assert r.status_code == 200, r.text
        return r.json()


def site_registry(install: int) -> dict[str, list]:
    return {
        "concentrators": [Concentrator(7)],
        "modules": [RadioModule(1001, 7, channels=0b111)],
        "meters": [
            Meter("IN", Resource.WATER, "m3", 0.001, install, module_id=1001, channel=1),
            Meter("W-V", Resource.WATER, "m3", 0.001, install, module_id=1001, channel=2, group_id="G",
                  base_reading=BASE_W_V, flags=frozenset({"valve", "relay"})),
            Meter("W-R", Resource.WATER, "m3", 0.01, install, module_id=1001, channel=3, group_id="G",
                  flags=frozenset({"relay"})),
        ],
        "groups": [Group("G", Resource.WATER, "m3", (GroupInput("IN"),), loss_norm_pct=5.0)],
    }


def readings(hour: int, hours: int = 6) -> ReadingBatch:
    """Hourly readings up to ``hour``; the newest of W-V reports its valve closed."""
    rows = []
    for k in range(hours):
        t = hour - (hours - 1 - k) * HOUR
        for channel, rate in PER_HOUR.items():
            status = Status.VALVE_CLOSED if channel == 2 and k == hours - 1 else 0
            rows.append((1001, channel, t, 50_000 + rate * k, int(status)))
    a = np.array(rows, dtype=np.int64)
    return ReadingBatch(*(a[:, i] for i in range(5)))


MakeSite = Callable[..., Awaitable[Site]]


@pytest.fixture
def make_site(tmp_path: Path, make_server: Any, client_for: Any) -> MakeSite:
    async def start(*, seed: bool = True, ingest: bool = True, **options: Any) -> Site:
        now = int(time.time())
        hour = now - now % HOUR
        if seed:
            await seed_registry(tmp_path / "balans.db", site_registry(hour - 12 * HOUR))
        server_options = {"enabled": True, "port": 0, "frame_timeout_s": 0.3, **options}
        config = base_config(tmp_path, site={"timezone": TZ}, intervals={"debounce_s": 0.0},
                             balance={"debounce_s": 0.0}, plugins={"modbus": {"server": server_options}})
        server = await make_server(config)
        modbus = next(c for _, c in server.components if isinstance(c, ModbusServer))
        site = Site(server, modbus, client_for(server), hour)
        if ingest:
            # ... and the readings arrive while it runs: the map follows the bus events.
            await server.ingest.ingest(readings(hour))
            await server.intervals.process()
            await server.balance.process()
            g, order = site.block("G"), site.modbus.map.order
            assert await eventually(lambda: site.served(g, "float32", order("group", "last_hour_input")) > 0
                                    and site.served(site.block("W-R") + 10, "uint32", order("meter", "last_reading_t"))
                                    == hour, 5.0)
        return site

    return start


async def mbpoll(port: int, *args: str, values: tuple[str, ...] = ()) -> tuple[int, dict[int, str], str]:
    """Run mbpoll once: (exit code, {address: printed value}, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        peer("mbpoll"), "-m", "tcp", "-p", str(port), "-a", "1", "-0", "-1", "-o", "2", *args, "127.0.0.1", *values,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    found = dict(re.findall(r"^\[(\d+)\]:\s+(.+?)\s*$", out.decode(), re.MULTILINE))
    return proc.returncode, {int(a): v for a, v in found.items()}, err.decode()


async def read(site: Site, table: int, address: int, count: int, kind: str = "", order: str = "ABCD") -> list[str]:
    """Values as mbpoll prints them; ``-B`` for ABCD (mbpoll's own default is CDAB)."""
    args = ["-t", f"{table}:{kind}" if kind else str(table), "-r", str(address), "-c", str(count)]
    if order == "ABCD":
        args.append("-B")
    code, got, err = await mbpoll(site.port, *args)
    assert code == 0, err
    return list(got.values())


def signed16(printed: str) -> int:
    """mbpoll prints a 16-bit register as unsigned with the signed value in parentheses."""
    match = re.fullmatch(r"(\d+)(?: \((-\d+)\))?", printed)
    return int(match[2] or match[1])


def hex_words(printed: list[str]) -> list[int]:
    return [int(p, 16) for p in printed]


def close(got: float, want: float | None, rel: float = 1e-6) -> bool:
    if want is None:
        return math.isnan(got)
    return math.isclose(got, want, rel_tol=rel, abs_tol=1e-5)


def unix(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


async def newest_reading(site: Site, meter_id: str) -> dict[str, Any]:
    body = await site.get(f"/api/v1/meters/{meter_id}/readings", **{"from": site.hour - 12 * HOUR,
                                                                      "to": site.hour + HOUR})
    return body["readings"][-1]


# every data type, both word orders ---------------------------------------------------


@pytest.mark.parametrize("order", ["ABCD", "CDAB"])
async def test_every_type_in_both_word_orders_matches_the_api(order: str, make_site: MakeSite) -> None:
    peer("mbpoll")
    site = await make_site(byte_order=order)

    for meter_id, base, weight in (("W-V", BASE_W_V, 0.001), ("W-R", 0.0, 0.01)):
        api = await newest_reading(site, meter_id)
        b = site.block(meter_id)
        f64 = unpack(hex_words(await read(site, 3, b, 4, "hex")), ">d", order)       # float64, raw
        f32, last_hour = map(float, await read(site, 4, b + 4, 2, "float", order))   # float32
        pulses, reading_t, age = map(int, await read(site, 3, b + 8, 3, "int", order))  # uint32, uint32, int32
        status, quality, valve, relay = map(signed16, await read(site, 4, b + 14, 4))   # uint16, uint16, int16 x2
        (hour_t,) = map(int, await read(site, 3, b + 18, 1, "int", order))

        assert f64 == pytest.approx(api["value"], abs=1e-9)
        assert close(f32, api["value"], 1e-7)
        assert pulses == round((api["value"] - base) / weight)
        assert reading_t == unix(api["t"])
        assert abs(age - (time.time() - unix(api["t"]))) <= 3
        assert status == api["status"]
        consumption = await site.get(f"/api/v1/meters/{meter_id}/consumption",
                                     **{"from": hour_t, "to": hour_t + HOUR})
        assert close(last_hour, consumption["points"][0]["value"])
        assert last_hour == pytest.approx((PER_HOUR[2] * 0.001) if meter_id == "W-V" else PER_HOUR[3] * 0.01, 1e-6)
        assert quality & (1 << METER_QUALITY["present"]) and quality & (1 << METER_QUALITY["reading"])
        assert quality & (1 << METER_QUALITY["measured"])
        assert not quality & (1 << METER_QUALITY["writable"])  # read-only by default
        if meter_id == "W-V":
            assert api["status"] & Status.VALVE_CLOSED
            assert (valve, relay) == (0, 1)
        else:
            assert (valve, relay) == (-1, 1)

    g = site.block("G")
    floats = [float(v) for v in await read(site, 3, g, 8, "float", order)]
    completeness_h, completeness_d, flags_h, flags_d = map(signed16, await read(site, 3, g + 16, 4))
    hour_t, today_t = map(int, await read(site, 3, g + 20, 2, "int", order))
    (today_hours,) = map(signed16, await read(site, 3, g + 25, 1))
    hourly = (await site.get("/api/v1/groups/G/balance", **{"from": hour_t, "to": hour_t + HOUR}))["points"][0]
    for got, name in zip(floats[:4], ("input", "consumed", "imbalance", "loss_pct"), strict=True):
        assert close(got, hourly[name]), (name, got, hourly[name])
    assert hourly["input"] == pytest.approx(PER_HOUR[1] * 0.001)
    assert completeness_h == round(10000 * (hourly["completeness"]["measured"] + hourly["completeness"]["estimated"]))
    assert flags_h == sum(1 << BALANCE_FLAGS[f] for f in hourly["flags"])
    assert flags_h & (1 << BALANCE_FLAGS["norm_exceeded"])  # 1.213 of 3.217 lost, norm 5 %

    assert datetime.fromtimestamp(today_t, UTC).minute == 30  # local midnight in Kolkata
    days = (await site.get("/api/v1/groups/G/balance", **{"from": today_t, "to": hour_t + HOUR, "step": "day"})
            )["points"] if today_t < hour_t + HOUR else []
    daily = next((p for p in days if unix(p["t"]) == today_t), None)
    if daily is None:  # the first UTC hour of the local day is not over yet
        assert today_hours == 0
    else:
        assert today_hours == (hour_t + HOUR - today_t) // HOUR
        for got, name in zip(floats[4:], ("input", "consumed", "imbalance", "loss_pct"), strict=True):
            assert close(got, daily[name]), (name, got, daily[name])
        # The registers hold the day so far and flag it partial, as the API does (today_hours say how much).
        assert flags_d == sum(1 << BALANCE_FLAGS[f] for f in daily["flags"])
        assert flags_d & (1 << BALANCE_FLAGS["partial"])
        members = daily["completeness"]
        assert completeness_d == (65535 if "no_members" in daily["flags"]
                                  else round(10000 * (members["measured"] + members["estimated"])))

    layout, health, *_ = map(signed16, await read(site, 4, 0, 2))
    uptime, _ = map(int, await read(site, 4, 2, 2, "int", order))
    meters, groups = map(signed16, await read(site, 4, 14, 2))
    assert (layout, health, meters, groups) == (1, 0, 3, 1)
    assert 0 <= uptime < 60


async def test_byte_swapped_orders_and_float64_from_raw_registers(make_site: MakeSite) -> None:
    peer("mbpoll")
    orders = {"meter.register_value": "DCBA", "meter.register_value_f32": "BADC", "meter.last_reading_t": "DCBA",
              "meter.data_age_s": "BADC", "meter.status": "BADC", "meter.valve": "DCBA",
              "group.today_t": "BADC", "group.last_hour_input": "DCBA", "group.last_hour_completeness": "BADC"}
    site = await make_site(byte_order="CDAB", orders=orders)
    api = await newest_reading(site, "W-V")
    b = site.block("W-V")
    regs = hex_words(await read(site, 3, b, 19, "hex"))
    assert unpack(regs[0:4], ">d", "DCBA") == pytest.approx(api["value"], abs=1e-9)
    assert unpack(regs[4:6], ">f", "BADC") == pytest.approx(api["value"], rel=1e-7)
    assert unpack(regs[8:10], ">I", "CDAB") == round((api["value"] - BASE_W_V) / 0.001)  # the map's order
    assert unpack(regs[10:12], ">I", "DCBA") == unix(api["t"])
    assert abs(unpack(regs[12:14], ">i", "BADC") - (time.time() - unix(api["t"]))) <= 3
    assert unpack(regs[14:15], ">H", "BADC") == api["status"] == Status.VALVE_CLOSED
    assert regs[14] == Status.VALVE_CLOSED << 8  # a single register's bytes swapped
    assert unpack(regs[16:17], ">h", "DCBA") == 0 and regs[16] == 0
    assert unpack(regs[17:18], ">h", "ABCD") == 1  # relay on: not overridden, the map's order
    g = hex_words(await read(site, 3, site.block("G"), 24, "hex"))
    hour_t = unpack(g[20:22], ">I", "CDAB")
    hourly = (await site.get("/api/v1/groups/G/balance", **{"from": hour_t, "to": hour_t + HOUR}))["points"][0]
    assert unpack(g[0:2], ">f", "DCBA") == pytest.approx(hourly["input"], rel=1e-6)
    assert unpack(g[2:4], ">f", "CDAB") == pytest.approx(hourly["consumed"], rel=1e-6)
    assert unpack(g[16:17], ">H", "BADC") == 10000
    assert datetime.fromtimestamp(unpack(g[22:24], ">I", "BADC"), UTC).minute == 30


# writes ---------------------------------------------------------------------------------------


async def test_refused_writes_answer_the_right_exception(make_site: MakeSite) -> None:
    peer("mbpoll")
    site = await make_site(writable_coils=["W-V"])
    valves = Valves()
    site.server.actuation.add(valves)
    b = site.block("W-V")
    cases = [
        (("-t", "4", "-r", str(b)), ("5",), "Illegal function"),                 # FC 6: registers are read-only
        (("-t", "4", "-r", str(b)), ("5", "6"), "Illegal function"),             # FC 16
        (("-t", "0", "-r", str(site.coil("W-R", "relay"))), ("0",), "Illegal data address"),  # not writable
        (("-t", "0", "-r", str(site.coil("W-V", "relay"))), ("1", "0", "1"), "Illegal data address"),  # FC 15
        # over W-V's relay (writable), W-R's valve (none) and relay (not writable): nothing is executed
        (("-t", "0", "-r", "60000"), ("1",), "Illegal data address"),          # no coil there
        (("-t", "3", "-r", "65000"), (), "Illegal data address"),              # a read beyond the map
    ]
    for args, values, message in cases:
        code, _, err = await mbpoll(site.port, *args, values=values)
        assert (code, message in err) == (1, True), (args, values, err)
    assert valves.commands == []
    assert await site.server.storage.journal_list("commands") == []


async def test_coil_write_reaches_the_actuation_service_and_is_audited(make_site: MakeSite) -> None:
    peer("mbpoll")
    site = await make_site(writable_coils=["W-V"])
    valves = Valves()
    site.server.actuation.add(valves)
    coil, b = site.coil("W-V", "valve"), site.block("W-V")
    assert (await read(site, 0, coil, 1)) == ["0"]  # the newest reading says closed

    code, _, err = await mbpoll(site.port, "-t", "0", "-r", str(coil), values=("1",))
    assert code == 0, err
    assert [(c.target, str(c.code)) for c in valves.commands] == [("W-V", "valve_open")]
    (record,) = await site.server.storage.journal_list("commands")
    assert re.fullmatch(r"modbus:127\.0\.0\.1:\d+", record["requested_by"])
    assert int(record["requested_by"].rsplit(":", 1)[1]) != site.port  # the client's port, not ours
    assert record["reason"] == f"Modbus coil {coil} (W-V valve) written 1: open"
    assert (record["outcome"], record["target"], record["code"]) == ("done", "W-V", "valve_open")
    # The coil and the meter's valve word read back the new state (coils and discrete inputs alike).
    assert await read(site, 0, coil, 1) == ["1"]
    assert await read(site, 1, coil, 1) == ["1"]
    assert signed16((await read(site, 4, b + 16, 1))[0]) == 1
    quality = signed16((await read(site, 4, b + 15, 1))[0])
    assert quality & (1 << METER_QUALITY["writable"]) and quality & (1 << METER_QUALITY["valve"])

    valves.ok = False
    code, _, err = await mbpoll(site.port, "-t", "0", "-r", str(coil), values=("0",))
    assert code == 1 and "Slave device or server failure" in err
    assert (await site.server.storage.journal_list("commands", 1))[0]["outcome"] == "failed"
    assert await read(site, 0, coil, 1) == ["1"]  # a failed command moves nothing

    valves.ok = True
    code, _, err = await mbpoll(site.port, "-t", "0", "-r", str(coil), values=("0",))
    assert code == 0, err
    assert await read(site, 0, coil, 1) == ["0"]
    # Function 15 over the valve and the relay: two audited commands, both coils read back.
    assert site.coil("W-V", "relay") == coil + 1
    code, _, err = await mbpoll(site.port, "-t", "0", "-r", str(coil), values=("1", "0"))
    assert code == 0, err
    assert await read(site, 0, coil, 2) == ["1", "0"]
    assert [str(c.code) for c in valves.commands] == ["valve_open", "valve_close", "valve_close", "valve_open",
                                                      "relay_off"]
    reasons = [r["reason"] for r in await site.server.storage.journal_list("commands", 2)]
    assert reasons == [f"Modbus coil {coil + 1} (W-V relay) written 0: off",
                       f"Modbus coil {coil} (W-V valve) written 1: open"]
    assert [signed16(v) for v in await read(site, 4, b + 16, 2)] == [1, 0]
    # A command from another source (the HTTP API) shows on the coil the same way.
    r = await site.client.post("/api/v1/meters/W-V/commands", headers=auth("operator"),
                               json={"command": "valve_close", "reason": "night"})
    assert r.status_code == 200 and r.json()["outcome"] == "done", r.text
    assert await read(site, 0, coil, 2) == ["0", "0"]


async def test_a_slow_command_is_acknowledged_and_completes(make_site: MakeSite) -> None:
    site = await make_site(writable_coils=["*"], write_timeout_s=0.2)
    valves = Valves(delay=0.6)
    site.server.actuation.add(valves)
    coil = site.coil("W-R", "relay")
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
    try:
        writer.write(frame(9, 5, struct.pack(">HH", coil, 0x0000)))
        assert await answer(reader) == (9, bytes([0x85, 0x05]))  # 05 ACKNOWLEDGE: still running
        assert await eventually(lambda: valves.commands, 3.0)
        assert await eventually(lambda: site.modbus.snapshot.image.coils[coil] == 0, 2.0)
        assert [r["outcome"] for r in await site.server.storage.journal_list("commands")] == ["done"]
    finally:
        writer.close()


# the map across a restart ----------------------------------------------------------------------


async def test_map_is_stable_across_a_restart_with_a_meter_added(tmp_path: Path, make_site: MakeSite) -> None:
    peer("mbpoll")
    site = await make_site()
    before = {(r.object, r.name): r for r in site.modbus.map.rows()}
    await site.server.stop()

    storage = SqliteStorage(tmp_path / "balans.db")
    await storage.open()
    # Sorts first and is wired to the same module: it must not push anyone along.
    await storage.registry_apply({"meters": [Meter("A-0", Resource.WATER, "m3", 0.001, site.hour - HOUR,
                                                   flags=frozenset({"valve"}))]})
    await storage.close()

    again = await make_site(seed=False, ingest=False)
    after = {(r.object, r.name): r for r in again.modbus.map.rows()}
    assert {k: after[k] for k in before} == before
    new = sorted(v.address for k, v in after.items() if k[0] == "meter:A-0" and v.table != "coil")
    assert new[0] == 10000 + 3 * METER.size and again.coil("A-0", "valve") == 6
    assert after[("system", "meters")] == before[("system", "meters")]
    # Values come back from storage at the old addresses.
    api = await newest_reading(again, "W-V")
    assert float((await read(again, 4, before[("meter:W-V", "register_value_f32")].address, 1, "float"))[0]
                 ) == pytest.approx(api["value"], rel=1e-7)
    assert signed16((await read(again, 4, 14, 1))[0]) == 4  # the system block counts the new meter


# bad input -------------------------------------------------------------------------------------


def frame(tid: int, function: int, data: bytes, unit: int = 1, protocol: int = 0, length: int | None = None) -> bytes:
    pdu = bytes([function]) + data
    return struct.pack(">HHHB", tid, protocol, len(pdu) + 1 if length is None else length, unit) + pdu


async def answer(reader: asyncio.StreamReader, timeout: float = 2.0) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readexactly(7), timeout)
    tid, protocol, length, _ = struct.unpack(">HHHB", head)
    assert protocol == 0
    return tid, await asyncio.wait_for(reader.readexactly(length - 1), timeout)


async def closed(reader: asyncio.StreamReader, timeout: float = 2.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(100), timeout) == b""
    except ConnectionResetError:
        return True


class Healthy:
    """A client reading a meter's block over and over, checking each answer."""

    def __init__(self, site: Site, meter_id: str = "W-V") -> None:
        self.site = site
        self.address = site.block(meter_id)
        self.expected = site.modbus.snapshot.image.registers[self.address : self.address + 10].tobytes()
        self.reads = 0

    async def once(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tid: int) -> None:
        writer.write(frame(tid, 3, struct.pack(">HH", self.address, 10)))
        got_tid, pdu = await answer(reader)
        assert (got_tid, pdu) == (tid, bytes([3, 20]) + self.expected)
        self.reads += 1

    async def run(self, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.site.port)
        try:
            tid = 0
            while not stop.is_set():
                tid = (tid + 1) % 65536
                await self.once(reader, writer, tid)
                await asyncio.sleep(0.002)
        finally:
            writer.close()


EXCEPTIONS = [
    ("unknown function 0x41", frame(1, 0x41, b""), bytes([0xC1, 0x01])),
    ("diagnostics not offered", frame(1, 0x08, b"\x00\x00\x12\x34"), bytes([0x88, 0x01])),
    ("write register", frame(1, 0x06, b"\x27\x10\x00\x05"), bytes([0x86, 0x01])),
    ("device identification", frame(1, 0x2B, b"\x0e\x01\x00"), bytes([0xAB, 0x01])),
    ("zero registers", frame(1, 0x03, b"\x00\x00\x00\x00"), bytes([0x83, 0x03])),
    ("126 registers", frame(1, 0x04, b"\x00\x00\x00\x7e"), bytes([0x84, 0x03])),
    ("read beyond the map", frame(1, 0x03, b"\xff\x00\x00\x01"), bytes([0x83, 0x02])),
    ("short read request", frame(1, 0x03, b"\x00\x00\x01"), bytes([0x83, 0x03])),
    ("coil value 0x1234", frame(1, 0x05, b"\x00\x02\x12\x34"), bytes([0x85, 0x03])),
    ("byte count mismatch", frame(1, 0x0F, b"\x00\x02\x00\x02\x02\x01"), bytes([0x8F, 0x03])),
    ("2001 coils", frame(1, 0x01, b"\x00\x00\x07\xd1"), bytes([0x81, 0x03])),
    ("other unit id", frame(1, 0x03, b"\x00\x00\x00\x01", unit=9), bytes([0x83, 0x0B])),
]
CLOSING = [
    ("protocol id 5", frame(1, 0x03, b"\x00\x00\x00\x01", protocol=5)),
    ("length 0", frame(1, 0x03, b"\x00\x00\x00\x01", length=0)),
    ("length 1", frame(1, 0x03, b"\x00\x00\x00\x01", length=1)),
    ("length 300", frame(1, 0x03, b"\x00\x00\x00\x01", length=300)),
    ("truncated frame, then silence", frame(1, 0x03, b"\x00\x00\x00\x01")[:9]),
    ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
]


async def test_bad_input_is_answered_or_closed_and_others_are_served(make_site: MakeSite) -> None:
    site = await make_site()
    healthy = Healthy(site)
    stop = asyncio.Event()
    task = asyncio.create_task(healthy.run(stop))
    try:
        for name, request, expected in EXCEPTIONS:
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            writer.write(request)
            assert await answer(reader) == (1, expected), name
            # The connection stays usable after an exception.
            writer.write(frame(2, 3, struct.pack(">HH", 0, 1)))
            assert await answer(reader) == (2, b"\x03\x02\x00\x01"), name
            writer.close()
        for name, request in CLOSING:
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            writer.write(request)
            assert await closed(reader), name
            writer.close()
        # A frame that arrives byte by byte, and three requests in one segment.
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        for byte in frame(7, 4, struct.pack(">HH", 0, 1)):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.001)
        assert await answer(reader) == (7, b"\x04\x02\x00\x01")
        writer.write(b"".join(frame(t, 3, struct.pack(">HH", 0, 1)) for t in (10, 11, 12)))
        assert [(await answer(reader))[0] for _ in range(3)] == [10, 11, 12]
        writer.close()
    finally:
        stop.set()
        await task
    assert healthy.reads > 10
    assert site.modbus.stats["closed_bad_frame"] >= 5


async def test_a_thousand_connections_and_the_connection_limit(make_site: MakeSite) -> None:
    peer("mbpoll")
    site = await make_site(max_connections=64)
    healthy = Healthy(site)
    stop = asyncio.Event()
    task = asyncio.create_task(healthy.run(stop))
    await eventually(lambda: healthy.reads > 0)

    async def hit(i: int) -> None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", site.port)
        except OSError:
            return
        if i % 3 == 1:
            writer.write(frame(1, 3, b"\x00"))  # half a frame, then gone
        elif i % 3 == 2:
            writer.transport.abort()  # reset
            return
        writer.close()

    try:
        for start in range(0, 1000, 50):
            await asyncio.gather(*(hit(i) for i in range(start, start + 50)))
        # Hold the server at its limit: the next connection is closed at once, the healthy one goes on.
        assert await eventually(lambda: len(site.modbus.connections) == 1)
        held = [await asyncio.open_connection("127.0.0.1", site.port) for _ in range(63)]
        assert await eventually(lambda: len(site.modbus.connections) == 64)
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        assert await closed(reader, 1.0)
        writer.close()
        reads = healthy.reads
        assert await eventually(lambda: healthy.reads > reads + 5)
        for _, w in held:
            w.close()
    finally:
        stop.set()
        await task
    assert site.modbus.stats["accepted"] + site.modbus.stats["refused"] >= 1000 + 64
    assert site.modbus.stats["accepted"] >= 900
    assert site.modbus.stats["refused"] >= 1
    assert await eventually(lambda: len(site.modbus.connections) == 0)
    # An independent client reads the right value after the flood.
    api = await newest_reading(site, "W-V")
    value = float((await read(site, 4, site.block("W-V") + 4, 1, "float"))[0])
    assert value == pytest.approx(api["value"], rel=1e-7)


async def test_disabled_by_default(tmp_path: Path, make_server: Any) -> None:
    server = await make_server(base_config(tmp_path), http=False)
    assert not [c for _, c in server.components if isinstance(c, ModbusServer)]
    assert server.plugins.info["modbus"].state == "started"


async def test_values_follow_new_readings_and_alarms(make_site: MakeSite) -> None:
    site = await make_site()
    b = site.block("W-V")
    before = site.served(b, "float64")
    t = int(time.time())
    rows = np.array([[1001, 2, t, 50_000 + PER_HOUR[2] * 5 + 100, 0]], dtype=np.int64)
    await site.server.ingest.ingest(ReadingBatch(*(rows[:, i] for i in range(5))))
    assert await eventually(lambda: site.served(b, "float64") == pytest.approx(before + 0.1), 3.0)
    assert site.served(b + 16, "int16") == 1  # the new reading says open
    assert site.served(0 + SYSTEM.field("last_alarm_code").offset, "uint16") == 0

    from balans_edge.core.components import Alarm, Severity

    alarm = await site.server.raise_alarm(Alarm("test", "a leak", Severity.CRITICAL, data={"kind": "consumer_leak"}))
    offsets = {f.name: f.offset for f in SYSTEM.fields}
    assert site.served(offsets["last_alarm_code"], "uint16") == 3
    assert site.served(offsets["last_alarm_severity"], "uint16") == 3
    assert site.served(offsets["last_alarm_id"], "uint32") == alarm.id
    assert site.served(offsets["alarms_total"], "uint32") == alarm.id
    await site.server.raise_alarm(Alarm("test", "odd", Severity.INFO, data={"kind": "something-new"}))
    assert site.served(offsets["last_alarm_code"], "uint16") == 999
    assert GROUP.size == 32
