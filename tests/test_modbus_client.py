"""The Modbus client against a pymodbus simulator PLC on 127.0.0.1: batched
reads counted at the PLC, every data type and byte order, scale and offset,
quality when the PLC stops, stops answering or refuses, reconnection after it
restarts, supervision of one device's loop, tags over HTTP and in storage, and
a flow totaliser that becomes a registry meter with hourly consumption."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from modbus_support import plc
from pymodbus.constants import ExcCodes
from totaliser_support import ReplayedTotaliser

from balans_edge.config import parse_config
from balans_edge.core.bus import TagValues
from balans_edge.core.model import Meter, RadioModule, Resource
from balans_edge.core.tags import counter_of
from balans_edge.plugin_manager import config_schemas, load_plugins
from balans_edge.plugins.common.tag_repository import TagRepository
from balans_edge.plugins.modbus import client as client_module
from balans_edge.plugins.modbus.client import ModbusClient
from balans_edge.plugins.modbus.tags import TagConfig, plan
from balans_edge.plugins.modbus.values import BYTE_ORDERS, DATA_TYPES, register_count
from balans_edge.settings import ConfigError

from conftest import auth, base_config, eventually

BIN = Path(sys.executable).parent
FAST = {"timeout_s": 0.25, "retries": 0, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2, "store_every_s": 0.0}


def device(name: str, port: int, tags: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {"name": name, "port": port, **FAST, **kw, "tags": tags}


async def start(make_server, tmp_path: Path, devices: list[dict], **modbus: Any):
    server = await make_server(base_config(tmp_path, plugins={"modbus": {"devices": devices, **modbus}}))
    client = next(c for _, c in server.components if isinstance(c, ModbusClient))
    return server, client


def tags_of(client: ModbusClient) -> dict[str, dict[str, Any]]:
    return {t["tag"]: t for t in client.snapshot()}


def quality(client: ModbusClient, tag: str) -> str:
    return tags_of(client)[tag]["quality"]


# -- the plan --------------------------------------------------------------------------


def tag(name: str, address: int, table: str = "holding", type: str = "uint16", **kw: Any) -> TagConfig:
    return TagConfig(name=name, table=table, address=address, type=type, **kw)


def test_plan_joins_adjacent_and_near_tags_and_keeps_request_limits():
    tags = [tag("a", 0), tag("b", 1, type="float32"), tag("c", 5, type="int16"), tag("d", 20),
            tag("e", 0, "input", "float64"), tag("f", 3, "coil"), tag("g", 100, "coil"), tag("h", 300, "coil"),
            tag("b_raw", 1, type="uint32")]
    blocks = [(b.table, b.start, b.count, sorted(t.name for t, _ in b.tags)) for b in plan(tags, max_gap=8)]
    assert blocks == [
        ("holding", 0, 6, ["a", "b", "b_raw", "c"]),  # registers 3..4 unused: a gap of 2 <= 8
        ("holding", 20, 1, ["d"]),  # a gap of 14 > 8
        ("input", 0, 4, ["e"]),
        ("coil", 3, 98, ["f", "g"]),  # bits: a gap of 96 <= 8 * 16
        ("coil", 300, 1, ["h"]),
    ]
    assert [b.count for b in plan(tags, max_gap=0)][:3] == [3, 1, 1]  # only adjacent registers join

    many = [tag(f"r{i}", i) for i in range(130)]
    assert [(b.start, b.count) for b in plan(many)] == [(0, 125), (125, 5)]
    assert [(b.start, b.count) for b in plan(many, max_registers=60)] == [(0, 60), (60, 60), (120, 10)]
    floats = [tag(f"f{i}", 2 * i, type="float32") for i in range(63)]  # 126 registers: never split a value
    assert [(b.start, b.count) for b in plan(floats)] == [(0, 124), (124, 2)]
    bits = [tag(f"c{i}", 10 * i, "coil") for i in range(210)]
    assert [(b.start, b.count) for b in plan(bits)] == [(0, 1991), (2000, 91)]


def test_config_errors_name_the_device_and_the_tag():
    schemas = config_schemas(load_plugins())

    def problems(modbus: dict) -> list[str]:
        with pytest.raises(ConfigError) as info:
            parse_config({"plugins": {"modbus": modbus}}, schemas)
        return info.value.problems

    bad = problems({"devices": [{"name": "PS1", "tags": [
        {"name": "level", "table": "coil", "address": 0, "type": "float32"},
        {"name": "flow", "address": 65535, "type": "float32"},
        {"name": "total", "address": 10, "type": "uint32", "meter_id": "PS1-OUT", "unit": "kWh", "resolution": 0.001},
    ]}]})
    assert bad == [
        '[plugins.modbus.devices[0]]: device "PS1" tag "level": type float32 does not apply to a coil (a single bit); '
        'device "PS1" tag "flow": float32 at address 65535 runs past address 65535; '
        'device "PS1" tag "total": meter_id needs module_id, a virtual module number 1..4294967295; '
        'device "PS1" tag "total": unit "kWh" is not a unit of water (allowed: m3)'
    ]
    bad = problems({"devices": [{"name": "PS1", "tags": [{"name": "level", "address": "forty", "byte_order": "XY"}]}]})
    assert '[plugins.modbus.devices[0].tags[0]] address: expected an integer 0..65535, got "forty"' in bad
    assert '[plugins.modbus.devices[0].tags[0]] byte_order: expected one of ABCD, CDAB, BADC, DCBA, got "XY"' in bad
    bad = problems({"devices": [
        {"name": "P1", "transport": "rtu", "path": "/dev/ttyS1", "unit_id": 1},
        {"name": "P2", "transport": "rtu", "path": "/dev/ttyS1", "unit_id": 1, "baudrate": 19200},
    ]})
    assert bad == [
        '[plugins.modbus]: device "P2": rtu /dev/ttyS1 19200 8N1 unit 1 is already device "P1"; device "P2": '
        'baudrate on /dev/ttyS1 differ from device "P1" (slaves on one line share its settings)',
    ]
    assert problems({"devices": [{"name": "P3", "transport": "rtu"}]}) == [
        '[plugins.modbus.devices[0]]: device "P3": transport rtu needs path (the serial port, e.g. /dev/ttyUSB0)']


# -- polling a PLC ------------------------------------------------------------------------


async def test_batched_reads_are_what_the_plc_receives(make_server, tmp_path):
    async with plc() as p:
        tags = [{**t, "interval_s": 0.1} for t in [
            {"name": "level", "address": 0, "type": "float32"}, {"name": "pressure", "address": 2, "type": "int16"},
            {"name": "power", "address": 6, "type": "uint32"},  # after a gap of 3 registers: the same read
            {"name": "setpoint", "address": 40},  # too far: its own read
            {"name": "running", "table": "coil", "address": 0}, {"name": "fault", "table": "coil", "address": 9},
            {"name": "flow", "table": "input", "address": 0, "type": "float32"},
        ]] + [{"name": "slow", "address": 41, "interval_s": 30.0}]  # another interval: another plan
        server, client = await start(make_server, tmp_path, [device("PS1", p.port, tags, max_gap=4)])
        await eventually(lambda: all(t["quality"] == "good" for t in client.snapshot()))
        fast = {(1, "holding", 0, 8), (1, "holding", 40, 1), (1, "coil", 0, 10), (1, "input", 0, 2)}
        assert set(p.reads()[:5]) == fast | {(1, "holding", 41, 1)}  # 8 tags, 5 requests
        polls, reads = client.pollers[0].polls, len(p.reads())
        await asyncio.sleep(0.35)
        fast_polls, fast_reads = client.pollers[0].polls - polls, len(p.reads()) - reads
        assert fast_polls >= 2
        # Every later poll of the 0.1 s group costs its 4 reads (one may be in flight), the 30 s group none yet.
        assert abs(fast_reads - 4 * fast_polls) <= 4, (fast_reads, fast_polls)
        assert set(p.reads()[5:]) == fast
        status = (await _get(server, "/api/v1/modbus/devices"))["devices"][0]
        assert status["reads_per_poll"] == {"0.1s": 4, "30s": 1} and status["up"]


async def _get(server, path: str) -> Any:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http.port}") as http:
        r = await http.get(path, headers=auth("viewer"))
        assert r.status_code == 200, r.text
        return r.json()


async def test_every_type_and_byte_order_with_scale_and_offset(make_server, tmp_path):
    values = {"uint16": 51234, "int16": -1234, "uint32": 3_000_000_123, "int32": -2_000_000_123,
              "float32": 230.5, "float64": -12345.6789012345}
    async with plc() as p:
        tags, expected, address = [], {}, 0
        for dtype in DATA_TYPES:
            for order in BYTE_ORDERS:
                name = f"{dtype}_{order}"
                await p.set_value(1, "holding", address, values[dtype], dtype, order)
                tags.append({"name": name, "address": address, "type": dtype, "byte_order": order,
                             "interval_s": 0.1})
                expected[f"PS1/{name}"] = values[dtype]
                address += register_count(dtype)
        await p.set_value(1, "input", 0, 1234, "int16")
        tags.append({"name": "scaled", "table": "input", "address": 0, "type": "int16", "scale": 0.1,
                     "offset": -20.0, "unit": "bar", "interval_s": 0.1})
        expected["PS1/scaled"] = 103.4
        await p.set_value(1, "holding", 500, 230.5, "float32", "ABCD")
        tags.append({"name": "wrong_order", "address": 500, "type": "float32", "byte_order": "CDAB"})
        _, client = await start(make_server, tmp_path, [device("PS1", p.port, tags)])
        got = await eventually(lambda: tags_of(client) if all(
            t["quality"] == "good" for t in client.snapshot()) else None)
        for name, value in expected.items():
            assert got[name]["value"] == pytest.approx(value, rel=1e-7), name
        assert got["PS1/scaled"]["unit"] == "bar"
        assert got["PS1/wrong_order"]["value"] != pytest.approx(230.5)  # the classic support question
        assert len(p.reads()) < len(tags)  # 25 tags, one batched read (and the slow one)


async def test_quality_goes_stale_then_comm_fail_when_the_plc_stops_answering(make_server, tmp_path):
    async with plc() as p:
        await p.set_value(1, "holding", 0, 4.5, "float32")
        tags = [{"name": "level", "address": 0, "type": "float32", "unit": "m", "interval_s": 0.05}]
        server, client = await start(make_server, tmp_path, [device("PS1", p.port, tags, timeout_s=0.3)])
        sub = server.bus.subscribe(TagValues)
        await eventually(lambda: quality(client, "PS1/level") == "good")
        await asyncio.sleep(1.05)  # storage keeps one sample per second: a second that ended good
        p.answering.clear()  # connected, but the PLC answers nothing
        seen: list[tuple[str, str]] = []
        async with asyncio.timeout(3):
            while not seen or seen[-1][0] != "comm_fail":
                event = await sub.get()
                seen += [(s.quality, s.detail) for s in event.samples if s.tag == "PS1/level"]
        qualities = [q for q, _ in seen]
        first_bad = next(i for i, q in enumerate(qualities) if q != "good")
        assert qualities[first_bad] == "stale"  # no fresh value for 2 intervals, the request still hangs
        assert "no fresh value" in seen[first_bad][1]
        assert "gave no answer within 0.3 s" in seen[-1][1]
        snapshot = tags_of(client)["PS1/level"]
        assert snapshot["value"] is None and snapshot["last_good_value"] == 4.5
        # Published after it was stored: the newest stored sample says so too.
        (latest,) = await TagRepository(server.storage).latest_tag_values()
        assert latest["quality"] == "comm_fail" and latest["value"] is None and latest["last_good_value"] == 4.5
        p.answering.set()
        await eventually(lambda: quality(client, "PS1/level") == "good", timeout=5)
        await server.storage.flush()
        (latest,) = await TagRepository(server.storage).latest_tag_values()
        assert (latest["quality"], latest["value"]) == ("good", 4.5)


async def test_reconnects_after_the_plc_restarts(make_server, tmp_path):
    async with plc() as p:
        await p.set_value(1, "holding", 7, 11)
        tags = [{"name": "pump_speed", "address": 7, "interval_s": 0.05}]
        _, client = await start(make_server, tmp_path, [device("PS1", p.port, tags)])
        await eventually(lambda: tags_of(client)["PS1/pump_speed"]["value"] == 11)
        await p.stop()
        down = await eventually(lambda: quality(client, "PS1/pump_speed") == "comm_fail")
        assert down, tags_of(client)
        await asyncio.sleep(0.4)  # several failed attempts: the back-off grows, polling goes on
        link = client.devices["PS1"].link
        assert link.backoff.failures >= 2 and not link.up
        await p.start()
        await p.set_value(1, "holding", 7, 12)
        back = await eventually(lambda: tags_of(client)["PS1/pump_speed"]["value"] == 12, timeout=5)
        assert back, tags_of(client)
        assert link.connects == 2 and link.backoff.failures == 0
        assert client.pollers[0].restarts == 0  # the loop itself never stopped


async def test_an_exception_answer_makes_only_those_tags_stale(make_server, tmp_path):
    async with plc() as p:
        p.refuse[(1, "holding", 100)] = ExcCodes.DEVICE_FAILURE
        tags = [{"name": "ok", "address": 0, "interval_s": 0.05},
                {"name": "broken", "address": 100, "interval_s": 0.05}]
        _, client = await start(make_server, tmp_path, [device("PS1", p.port, tags)])
        got = await eventually(lambda: tags_of(client) if tags_of(client)["PS1/ok"]["quality"] == "good" and
                               tags_of(client)["PS1/broken"]["t"] else None)
        assert got["PS1/broken"]["quality"] == "stale"
        assert got["PS1/broken"]["detail"] == "exception 4 (server device failure)"
        assert client.devices["PS1"].link.up  # an exception is an answer: the link is fine
        del p.refuse[(1, "holding", 100)]
        assert await eventually(lambda: quality(client, "PS1/broken") == "good")


async def test_an_exception_in_one_device_does_not_stop_another(make_server, tmp_path):
    async with plc() as a, plc() as b:
        tags = [{"name": "level", "address": 0, "interval_s": 0.05}]
        _, client = await start(make_server, tmp_path, [device("A", a.port, tags), device("B", b.port, tags)])
        await eventually(lambda: all(t["quality"] == "good" for t in client.snapshot()))
        poller_a, poller_b = client.pollers
        crashes = 0
        decode = poller_a._decode

        def failing(block, data):  # a fault in A's loop, as a bug or a bad answer would cause
            nonlocal crashes
            if crashes < 3:
                crashes += 1
                raise RuntimeError("decoder broke")
            return decode(block, data)

        poller_a._decode = failing
        polls_b = poller_b.polls
        await a.set_value(1, "holding", 0, 5)
        await b.set_value(1, "holding", 0, 6)
        assert await eventually(lambda: poller_a.restarts >= 1)
        assert quality(client, "A/level") == "stale" and "RuntimeError: decoder broke" in tags_of(client)["A/level"][
            "detail"]
        assert await eventually(lambda: tags_of(client)["B/level"]["value"] == 6)
        assert await eventually(lambda: tags_of(client)["A/level"]["value"] == 5, timeout=5)
        assert poller_a.restarts == 3 and poller_b.restarts == 0 and poller_b.polls > polls_b + 3
        assert poller_a.last_crash == "RuntimeError: decoder broke"


async def test_tags_over_http_and_in_storage(make_server, client_for, tmp_path):
    async with plc() as p:
        await p.set_value(1, "input", 3, 71.25, "float32", "DCBA")
        tags = [{"name": "pressure", "table": "input", "address": 3, "type": "float32", "byte_order": "DCBA",
                 "unit": "bar", "interval_s": 0.05}]
        # stale_after: a stall of a loaded machine must not turn the tag stale and back (a stored change)
        server, client = await start(make_server, tmp_path,
                                     [device("PS1", p.port, tags, store_every_s=3600.0, stale_after=100.0)])
        http = client_for(server)
        assert (await http.get("/api/v1/tags")).status_code == 401
        body = await eventually(lambda: _good_tags(http))
        (row,) = body["tags"]
        assert row["tag"] == "PS1/pressure" and row["value"] == 71.25 and row["unit"] == "bar"
        assert row["t"].endswith("Z") and row["last_good_t"] == row["t"] and row["quality"] == "good"
        assert (await http.get("/api/v1/tags?device=PS2", headers=auth("viewer"))).json() == {"tags": []}
        await asyncio.sleep(0.3)  # several polls of an unchanged value: stored once
        await server.storage.flush()
        history = (await http.get("/api/v1/tags/history?tag=PS1/pressure&from=0&to=4294967295",
                                  headers=auth("viewer"))).json()
        assert [(s["value"], s["quality"]) for s in history["samples"]] == [(71.25, "good")]
        assert client.pollers[0].polls >= 4
        await p.set_value(1, "input", 3, 72.0, "float32", "DCBA")
        assert await eventually(lambda: tags_of(client)["PS1/pressure"]["value"] == 72.0)

        async def stored_change() -> bool:  # the state changes first, its recording follows
            await server.storage.flush()
            history = (await http.get("/api/v1/tags/history?tag=PS1/pressure&from=0&to=4294967295",
                                      headers=auth("viewer"))).json()
            return [s["value"] for s in history["samples"]][-1] == 72.0

        assert await eventually(stored_change)


async def test_command_line_reads_a_device_once_and_lists_stored_tags(make_server, tmp_path):
    async with plc() as p:
        await p.set_value(1, "holding", 0, 3.75, "float32", "CDAB")
        await p.set_value(1, "coil", 4, 1)
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""\
            [storage]
            url = "sqlite:{tmp_path / 'balans.db'}"

            [[plugins.modbus.devices]]
            name = "PS1"
            port = {p.port}
            timeout_s = 0.5
            store_every_s = 0.0

            [[plugins.modbus.devices.tags]]
            name = "level"
            address = 0
            type = "float32"
            byte_order = "CDAB"
            unit = "m"
            interval_s = 0.05

            [[plugins.modbus.devices.tags]]
            name = "pump_running"
            table = "coil"
            address = 4

            [[plugins.modbus.devices.tags]]
            name = "missing"
            address = 2000
            """), encoding="utf-8")
        code, out = await balans_edge("modbus", "read", "--device", "PS1", "-c", str(config))
        lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
        assert lines["level"][:3] == ["3.75", "m", "good"]
        assert lines["pump_running"][:2] == ["1", "good"]
        assert lines["missing"][:2] == ["-", "stale"] and "exception 2 (illegal data address)" in out
        assert code == 1  # not every tag is good
        server = await make_server(tomllib.loads(config.read_text(encoding="utf-8")), http=False)
        client = next(c for _, c in server.components if isinstance(c, ModbusClient))
        assert await eventually(lambda: quality(client, "PS1/level") == "good")
        await server.storage.flush()
        code, out = await balans_edge("modbus", "tags", "-c", str(config))
        assert code == 0, out
        rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[1:]}
        assert rows["PS1/level"] == ["3.75", "good"] and rows["PS1/missing"] == ["-", "stale"]


async def balans_edge(*args: str) -> tuple[int, str]:
    """The command line as a user runs it; the PLC keeps serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(BIN / "balans-edge", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def _good_tags(http) -> Any:
    body = (await http.get("/api/v1/tags", headers=auth("viewer"))).json()
    return body if body["tags"] and body["tags"][0]["quality"] == "good" else None


# -- totalisers as meters ---------------------------------------------------------------------


async def test_totaliser_becomes_a_meter_with_readings_and_hourly_consumption(make_server, client_for, tmp_path,
                                                                               monkeypatch):
    station = ReplayedTotaliser()
    monkeypatch.setattr(client_module, "wall_clock", station.clock)
    async with plc() as p:

        async def show(at: float, litres: int) -> None:  # the PLC's flow totaliser, in litres
            await p.set_value(1, "holding", 20, litres, "uint32", "CDAB")

        running = asyncio.create_task(station.run(show))
        await asyncio.sleep(0.02)
        tags = [{"name": "outflow", "address": 20, "type": "uint32", "byte_order": "CDAB", "scale": 0.001,
                 "unit": "m3", "interval_s": 0.05, "meter_id": "PS1-OUT", "module_id": 900001,
                 "resolution": 0.001, "reading_every_s": 60.0}]
        data = base_config(tmp_path, plugins={"modbus": {"devices": [device("PS1", p.port, tags)]}},
                           intervals={"debounce_s": 0.0})
        server = await make_server(data)
        try:
            meter = await server.storage.registry_get("meters", "PS1-OUT")
            assert meter == Meter("PS1-OUT", Resource.WATER, "m3", 0.001, meter.install_time, module_id=900001,
                                  channel=1)
            assert meter.install_time == station.t0  # made at start, in the station's time
            assert await server.storage.registry_get("modules", 900001) == RadioModule(900001, None, channels=1)
            http = client_for(server)
            await station.start(http, "PS1-OUT")
            await asyncio.sleep(2.6)
        finally:
            running.cancel()
    await station.check(http, "PS1-OUT", min_readings=30)
    assert server.ingest.totals.quarantined == 0 and not server.ingest.totals.rejected


def test_counter_is_the_totaliser_in_resolution_units_modulo_2_32():
    assert counter_of(1234.567, 0.001) == 1_234_567
    assert counter_of(5_000_000.0, 0.001) == 5_000_000_000 % 2**32
    assert counter_of(0.0, 0.01) == 0


async def test_a_different_existing_meter_is_not_overwritten(make_server, tmp_path):
    async with plc() as p:
        await (await make_server(base_config(tmp_path), http=False)).storage.registry_apply({
            "modules": [RadioModule(900001, None)],
            "meters": [Meter("PS1-OUT", Resource.WATER, "m3", 0.01, 1_390_000_000, module_id=900001, channel=1)],
        })
        tags = [{"name": "outflow", "address": 20, "type": "uint32", "unit": "m3", "meter_id": "PS1-OUT",
                 "module_id": 900001, "resolution": 0.001}]
        modbus = {"devices": [device("PS1", p.port, tags)]}
        server = await make_server(base_config(tmp_path, plugins={"modbus": modbus}))
        info = server.plugins.info["modbus"]
        assert info.state == "failed"
        assert 'device "PS1" tag "outflow": meter "PS1-OUT" is in the registry with pulse_weight 0.01' in info.error
        meter = await server.storage.registry_get("meters", "PS1-OUT")
        assert meter.pulse_weight == 0.01  # untouched
        assert p.requests == []  # and nothing was polled
