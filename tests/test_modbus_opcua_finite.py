"""Numbers out of the SCADA bridges are finite and fit their type, whatever
the registry holds: a register shows its type's unknown marker (NaN, all bits
set, -1) and an OPC UA variable Bad_OutOfRange, never infinity, a wrapped or a
clipped number. Read by mbpoll (libmodbus) and asyncua's client."""

from __future__ import annotations

import asyncio
import math
import re
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.model import Concentrator, Meter, RadioModule, Resource
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugins.modbus.regmap import GROUP, METER, SYSTEM, RegisterImage
from balans_edge.plugins.modbus.server import ModbusServer
from balans_edge.plugins.modbus.values import decode
from balans_edge.plugins.opcua.server import OpcuaServer
from balans_edge.plugins.opcua.space import RANGES, data_value

from conftest import base_config, eventually, peer

NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70).map(float),
                    st.sampled_from([3.5e38, -3.5e38, 4294967295.0, 4294967296.0, 65535.4, 65535.6, -0.6]))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([(b, f) for b in (SYSTEM, GROUP, METER) for f in b.fields]),
       st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"]), NUMBERS)
def test_a_register_shows_the_value_or_its_unknown_marker(field: Any, order: str, value: float) -> None:
    block, f = field
    image = RegisterImage(block.size, 0)
    image.put(np.array([0]), f, order, [value])
    shown = float(decode(image.registers[f.offset: f.offset + f.count].astype(int), f.dtype, order)[0])
    unknown = f.unknown
    if f.is_float:
        fits = math.isfinite(value) and abs(value) <= float(np.finfo(f.dtype).max)
        assert math.isnan(shown) != fits
        if f.dtype == "float32":
            assert not fits or math.isclose(shown, value, rel_tol=1e-7, abs_tol=2e-38)  # near 0: float32 underflows
        else:
            assert not fits or shown == value
        return
    info = np.iinfo(f.dtype)
    fits = math.isfinite(value) and info.min <= round(value) <= info.max
    assert shown == (round(value) if fits else unknown)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(RANGES)), NUMBERS, st.sampled_from([0, 1]))
def test_an_opcua_value_is_in_range_or_bad_out_of_range(kind: str, value: float, status: int) -> None:
    from datetime import UTC, datetime

    from asyncua import ua

    dv = data_value(kind, value, status, value, datetime.now(UTC))
    if dv.StatusCode.value == ua.StatusCodes.BadOutOfRange:
        assert dv.Value.Value is None
        return
    shown = dv.Value.Value
    assert dv.StatusCode.is_good() or dv.StatusCode.is_uncertain()
    if kind == "double":
        assert math.isfinite(shown) and shown == value
    elif kind in ("uint16", "uint32"):
        assert 0 <= shown <= RANGES[kind][1] and shown == int(value)
    elif kind == "datetime":
        assert 1601 <= shown.year <= 9999


async def mbpoll(port: int, table: str, address: int, count: int) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        peer("mbpoll"), "-m", "tcp", "-p", str(port), "-a", "1", "-0", "-1", "-o", "2", "-B", "-t", table,
        "-r", str(address), "-c", str(count), "127.0.0.1", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    return re.findall(r"^\[\d+\]:\s+(\S+)", out.decode(), re.MULTILINE)


async def test_overflowing_register_values_over_modbus_and_opcua(tmp_path: Path, make_server: Any) -> None:
    """A registry from before registry numbers were bounded: a pulse weight of
    1e300 makes a register value overflow to infinity; 1e30 one that fits a
    float64 but not a float32."""
    from asyncua import Client, ua

    now = int(time.time())
    storage = SqliteStorage(tmp_path / "balans.db")
    await storage.open()
    await storage.registry_apply({
        "concentrators": [Concentrator(7)], "modules": [RadioModule(1001, 7, channels=7)],
        "meters": [Meter(mid, Resource.WATER, "m3", weight, now - 86400, module_id=1001, channel=ch)
                   for mid, weight, ch in (("HUGE", 1e300, 1), ("BIG", 1e30, 2), ("OK", 0.001, 3))]})
    await storage.close()
    config = base_config(tmp_path, plugins={
        "opcua": {"server": {"enabled": True, "port": 0, "pki_dir": str(tmp_path / "pki"),
                             "security_policies": ["None"], "anonymous_role": "viewer"}},
        "modbus": {"server": {"enabled": True, "port": 0}}})
    server = await make_server(config)
    modbus = next(c for _, c in server.components if isinstance(c, ModbusServer))
    opcua = next(c for _, c in server.components if isinstance(c, OpcuaServer))
    rows = np.array([(1001, ch, now - 60, 2_000_000_000, 0) for ch in (1, 2, 3)], dtype=np.int64)
    await server.ingest.ingest(ReadingBatch(*(rows[:, i] for i in range(5))))
    assert await eventually(lambda: opcua.values is not None and np.isfinite(opcua.values.last_ts).all()
                            and modbus.snapshot is not None and np.isfinite(modbus.snapshot.last_ts).all(), 5.0)

    def block(meter_id: str) -> int:
        return next(p.address for p in modbus.map.meters if p.object_id == meter_id)

    async def register(meter_id: str, name: str) -> float:
        f = METER.field(name)
        words = await mbpoll(modbus.port, "4:hex", block(meter_id) + f.offset, f.count)
        raw = b"".join(int(w, 16).to_bytes(2, "big") for w in words)
        return struct.unpack(">d" if f.dtype == "float64" else ">f", raw)[0]

    assert math.isnan(await register("HUGE", "register_value"))
    assert math.isnan(await register("HUGE", "register_value_f32"))
    assert await register("BIG", "register_value") == pytest.approx(2e39)
    assert math.isnan(await register("BIG", "register_value_f32"))  # beyond float32: unknown, not infinity
    assert math.isclose(await register("OK", "register_value_f32"), 2e6, rel_tol=1e-7)

    client = Client(f"opc.tcp://127.0.0.1:{opcua.port}/balans-edge/")
    async with client:
        async def read(ident: str) -> ua.DataValue:
            return await client.get_node(ua.NodeId(ident, 2)).read_data_value(raise_on_bad_status=False)

        huge = await read("Meters/HUGE/Value")
        assert huge.StatusCode.value == ua.StatusCodes.BadOutOfRange and huge.Value.Value is None
        assert (await read("Meters/BIG/Value")).Value.Value == pytest.approx(2e39)
        assert (await read("Meters/OK/Value")).Value.Value == pytest.approx(2e6)
        assert (await read("Meters/HUGE/LastReadingTime")).StatusCode.is_good()
