"""A PLC for the Modbus client and actuator tests: pymodbus's own simulator
(``SimDevice``) serving four tables per unit id over TCP on 127.0.0.1 or over a
serial line, counting the requests it receives, able to fall silent, to
answer exceptions for chosen addresses, and to move a read-back after a
write the way a valve's limit switch does."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from balans_edge.plugins.modbus.values import encode

FC_READ = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
FC_WRITE = {5: "coil", 15: "coil", 6: "holding", 16: "holding"}
SET_FC = {"coil": 5, "discrete": 2, "holding": 16, "input": 4}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Follow:
    """After a write to ``write`` (table, address), set ``readback`` to ``mapping[value]`` after ``delay`` s."""

    readback: tuple[str, int]
    mapping: dict[int, int]
    delay: float = 0.05


@dataclass
class Plc:
    units: tuple[int, ...] = (1,)
    port: int = field(default_factory=free_port)
    serial: str | None = None
    """Serve RTU on this serial device instead of TCP."""
    requests: list[tuple[int, str, int, int]] = field(default_factory=list)
    """(unit, table, address, count) of every read request received; writes as table 'write:<table>'."""
    refuse: dict[tuple[int, str, int], ExcCodes] = field(default_factory=dict)
    """(unit, table, address) -> exception answered to a read covering that address."""
    follows: dict[tuple[int, str, int], Follow] = field(default_factory=dict)
    arrivals: list[float] = field(default_factory=list)
    """time.monotonic() of each request's arrival, in the order of ``requests``."""
    silent_units: set[int] = field(default_factory=set)
    """Unit ids that never answer (a dead slave on a serial line)."""
    answering: asyncio.Event = field(default_factory=asyncio.Event)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    server: Any = None
    _setting: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.answering.set()

    def _device(self, unit: int) -> SimDevice:
        return SimDevice(
            id=unit,
            simdata=(
                [SimData(0, count=4096, values=False, datatype=DataType.BITS)],
                [SimData(0, count=4096, values=False, datatype=DataType.BITS)],
                [SimData(0, count=1000, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=1000, values=0, datatype=DataType.REGISTERS)],
            ),
            action=partial(self._action, unit),
        )

    async def _action(self, unit: int, fc: int, start: int, address: int, count: int, registers: list[int],
                      values: Any) -> ExcCodes | None:
        if self._setting:
            return None  # the test itself reading or changing the memory
        if unit in self.silent_units:
            await self.closing.wait()
        if fc in FC_READ and values is None:
            table = FC_READ[fc]
            await self.answering.wait()
            for (u, t, a), code in self.refuse.items():
                if u == unit and t == table and address <= a < address + count:
                    return code
        elif fc in FC_WRITE and values is not None:  # (pymodbus also reads a register before writing it)
            table = FC_WRITE[fc]
            await self.answering.wait()
            follow = self.follows.get((unit, table, address))
            if follow is not None:
                value = int(values[0])
                asyncio.get_running_loop().call_later(
                    follow.delay, lambda: asyncio.ensure_future(
                        self.set(unit, follow.readback[0], follow.readback[1], [follow.mapping[value]])))
        return None

    def _trace(self, sending: bool, pdu: Any) -> Any:
        """Count each request as it arrives (bit reads as asked: the simulator's own
        callback sees them rounded up to whole registers)."""
        if not sending:
            self.arrivals.append(time.monotonic())
            fc = pdu.function_code
            if fc in FC_READ:
                self.requests.append((pdu.dev_id, FC_READ[fc], pdu.address, pdu.count))
            elif fc in FC_WRITE:
                self.requests.append((pdu.dev_id, f"write:{FC_WRITE[fc]}", pdu.address,
                                      len(pdu.bits or pdu.registers)))
        return pdu

    async def start(self) -> Plc:
        self.closing.clear()
        devices = [self._device(u) for u in self.units]
        if self.serial:
            self.server = ModbusSerialServer(devices, port=self.serial, baudrate=115200, trace_pdu=self._trace)
        else:
            self.server = ModbusTcpServer(devices, address=("127.0.0.1", self.port), trace_pdu=self._trace)
        await self.server.serve_forever(background=True)
        return self

    async def stop(self) -> None:
        self.closing.set()
        if self.server is not None:
            await self.server.shutdown()
            self.server = None
            await asyncio.sleep(0.05)

    async def set(self, unit: int, table: str, address: int, values: list[int]) -> None:
        """Change the PLC's memory (registers, or bits as 0/1) from the test, like its program does."""
        data: list[Any] = [bool(v) for v in values] if table in ("coil", "discrete") else list(values)
        self._setting = True
        try:
            await self.server.context.async_setValues(unit, SET_FC[table], address, data)
        finally:
            self._setting = False

    async def set_value(self, unit: int, table: str, address: int, value: float, dtype: str = "uint16",
                        order: str = "ABCD") -> None:
        await self.set(unit, table, address, encode([value], dtype, order))

    async def get(self, unit: int, table: str, address: int, count: int = 1) -> list[int]:
        fc = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}[table]
        self._setting = True
        try:
            return [int(v) for v in await self.server.context.async_getValues(unit, fc, address, count)]
        finally:
            self._setting = False

    def reads(self, unit: int | None = None) -> list[tuple[int, str, int, int]]:
        return [r for r in self.requests if (unit is None or r[0] == unit) and not r[1].startswith("write:")]


@asynccontextmanager
async def plc(**kwargs: Any) -> AsyncIterator[Plc]:
    p = await Plc(**kwargs).start()
    try:
        yield p
    finally:
        p.answering.set()
        await p.stop()


@asynccontextmanager
async def pty_pair(socat: str, folder: Path) -> AsyncIterator[tuple[str, str]]:
    """A connected pair of pseudo-terminals made by socat; stopped by its PID."""
    a, b = folder / "ttyA", folder / "ttyB"
    proc = subprocess.Popen([socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(250):
            if a.exists() and b.exists():
                break
            await asyncio.sleep(0.02)
        else:
            raise RuntimeError("socat made no pseudo-terminals")
        yield os.fspath(a), os.fspath(b)
    finally:
        proc.terminate()
        proc.wait(5)
