"""PLC tags: their configuration, the read plan that batches them, and their quality.

A pumping station's PLC is read tag by tag in the integrator's vocabulary (tank
level, pump on/off, discharge pressure, flow totaliser), but on the wire the
cost is per request: a slow RS-485 line at 9600 baud spends most of its time on
request overhead and the slave's turnaround. So the tags of one device and one
poll interval are planned into as few requests as possible: tags whose
registers are adjacent or nearly adjacent (up to ``max_gap`` unused registers
between them) share one read, within the protocol's limits of 125 registers
and 2000 bits per request (``max_registers`` / ``max_bits`` lower them for
devices that accept less).

Every tag carries a quality next to its value, with the vocabulary SCADA
integrators know: ``good`` (a fresh value the device answered), ``stale`` (the
device answered an exception for the tag, or no fresh good value came within
``stale_after`` poll intervals) and ``comm_fail`` (the device is not
reachable); the rules for quality, storage and totalisers are shared with the
OPC UA client (``balans_edge.core.tags``). Nothing here does I/O:
``client.py`` polls, this module decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from balans_edge.plugins.common.client_config import (
    ClientDevice,
    DeviceName,
    StaleAfter,
    StoreEvery,
    devices_problems,
)
from balans_edge.plugins.common.tag_settings import TagSettings
from balans_edge.plugins.modbus.values import ByteOrder, DataType, decode, register_count
from balans_edge.settings import setting

Table = Literal["holding", "input", "coil", "discrete"]

BIT_TABLES = frozenset({"coil", "discrete"})
MAX_REGISTERS = 125
"""Registers one read request may ask for (Modbus application protocol, FC 3 and 4)."""
MAX_BITS = 2000
"""Coils or discrete inputs one read request may ask for (FC 1 and 2)."""
@dataclass(frozen=True, kw_only=True)
class TagConfig(TagSettings):
    """One value read from a PLC: where it is, how it is encoded and scaled, how often it is read."""

    table: Annotated[Table, setting(doc="holding or input (registers), coil or discrete (bits)")] = "holding"
    address: Annotated[int, setting(range=(0, 65535), doc="0-based protocol address (holding register 40001 is 0)")]
    type: Annotated[DataType, setting(doc="the value's encoding (register tables only)")] = "uint16"
    byte_order: Annotated[ByteOrder, setting(doc="byte order of a value in registers (docs/modbus.md)")] = "ABCD"
    interval_s: Annotated[float, setting(range=(0.01, 86400.0), doc="poll interval; tags are grouped by it")] = 1.0

    def problems(self) -> list[str]:
        out = []
        if self.table in BIT_TABLES and self.type != "uint16":
            out.append(f"type {self.type} does not apply to a {self.table} (a single bit)")
        elif self.address + self.count - 1 > 65535:
            out.append(f"{self.type} at address {self.address} runs past address 65535")
        if self.meter_id and self.table in BIT_TABLES:
            return [*out, f"a meter needs a totaliser in registers, not a {self.table}"]
        return out + super().problems()

    @property
    def count(self) -> int:
        """Registers (or bits) the tag occupies."""
        return 1 if self.table in BIT_TABLES else register_count(self.type)


@dataclass(frozen=True, kw_only=True)
class ModbusSettings:
    """The settings of a PLC that are Modbus's own: how it is reached, asked and
    read; ``DeviceConfig`` goes on with those of every protocol's device."""

    name: DeviceName
    transport: Annotated[Literal["tcp", "rtu"], setting(doc="TCP, or RTU on a serial line")] = "tcp"
    host: Annotated[str, setting(doc="tcp: the PLC's (or gateway's) address")] = "127.0.0.1"
    port: Annotated[int, setting(range=(1, 65535), doc="tcp: its port")] = 502
    path: Annotated[str, setting(doc="rtu: serial device path, e.g. /dev/ttyUSB0")] = ""
    baudrate: Annotated[int, setting(range=(50, 4_000_000), doc="rtu: the line's speed, bits per second")] = 9600
    parity: Annotated[Literal["N", "E", "O"], setting(doc="rtu: none, even or odd")] = "N"
    stopbits: Annotated[Literal[1, 2], setting(doc="rtu: stop bits")] = 1
    bytesize: Annotated[Literal[7, 8], setting(doc="rtu: data bits")] = 8
    unit_id: Annotated[int, setting(range=(0, 255), doc="the slave's unit id (RTU address 1..247)")] = 1
    timeout_s: Annotated[float, setting(range=(0.01, 60.0), doc="wait this long for each answer")] = 1.0
    retries: Annotated[int, setting(range=(0, 10), doc="ask again this many times before giving up")] = 1
    pause_s: Annotated[float, setting(range=(0.0, 10.0), doc="quiet time on the line before each request")] = 0.0
    max_gap: Annotated[int, setting(range=(0, 124), doc="unused registers (x16 bits) one read may span")] = 8
    max_registers: Annotated[int, setting(range=(1, MAX_REGISTERS), doc="registers per read")] = MAX_REGISTERS
    max_bits: Annotated[int, setting(range=(1, MAX_BITS), doc="coils or discrete inputs per read")] = MAX_BITS
    stale_after: Annotated[StaleAfter, setting(doc="stale without a good value for this many intervals")] = 2.0
    store_every_s: Annotated[StoreEvery, setting(doc="store unchanged samples this often (0: all)")] = 60.0


@dataclass(frozen=True, kw_only=True)
class DeviceConfig(ClientDevice[TagConfig], ModbusSettings):
    """A PLC (a Modbus slave) reached over TCP or over a serial line (RTU)."""

    def __post_init__(self) -> None:
        if self.transport == "rtu" and not self.path:
            raise ValueError(f'device "{self.name}": transport rtu needs path (the serial port, e.g. /dev/ttyUSB0)')
        super().__post_init__()

    @property
    def link_key(self) -> tuple[str, str, int]:
        """Devices with the same key share one connection, one lock and one pause:
        slaves on one serial line, or unit ids behind one TCP gateway."""
        return ("rtu", self.path, 0) if self.transport == "rtu" else ("tcp", self.host, self.port)

    def describe(self) -> str:
        if self.transport == "rtu":
            return f"rtu {self.path} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits} unit {self.unit_id}"
        return f"tcp {self.host}:{self.port} unit {self.unit_id}"


SERIAL_SETTINGS = ("baudrate", "parity", "stopbits", "bytesize")


def check_devices(devices: Sequence[DeviceConfig]) -> list[str]:
    """Problems across devices: duplicate names, meters that collide, two slaves on
    one address, slaves on one serial line with different line settings."""
    problems = devices_problems(devices)
    slaves: dict[tuple, str] = {}
    lines: dict[str, DeviceConfig] = {}
    for d in devices:
        slave = (*d.link_key, d.unit_id)
        if slave in slaves and slaves[slave] != d.name:
            problems.append(f'device "{d.name}": {d.describe()} is already device "{slaves[slave]}"')
        slaves.setdefault(slave, d.name)
        if d.transport == "rtu":
            first = lines.setdefault(d.path, d)
            differ = [s for s in SERIAL_SETTINGS if getattr(first, s) != getattr(d, s)]
            if differ:
                problems.append(f'device "{d.name}": {", ".join(differ)} on {d.path} differ from device '
                                f'"{first.name}" (slaves on one line share its settings)')
    return problems


# -- read plan ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: ``count`` registers or bits of ``table`` from ``start``,
    and the tags it serves with each one's offset in the answer."""

    table: str
    start: int
    count: int
    tags: tuple[tuple[TagConfig, int], ...]


def plan(tags: Iterable[TagConfig], max_gap: int = 8, max_registers: int = MAX_REGISTERS,
         max_bits: int = MAX_BITS) -> list[Block]:
    """The fewest reads (greedy, in address order) that cover ``tags``: a tag joins
    the current read when the gap before it is at most ``max_gap`` registers
    (``max_gap * 16`` bits) and the read stays within the request limit.
    Tags that overlap (one register read two ways) share a read."""
    blocks: list[Block] = []
    by_table: dict[str, list[TagConfig]] = {}
    for t in tags:
        by_table.setdefault(t.table, []).append(t)
    for table in ("holding", "input", "coil", "discrete"):
        members = sorted(by_table.get(table, []), key=lambda t: (t.address, t.count))
        bits = table in BIT_TABLES
        limit, gap = (max_bits, max_gap * 16) if bits else (max_registers, max_gap)
        current: list[TagConfig] = []
        start = end = 0
        for t in members:
            t_end = t.address + t.count
            if current and t.address - end <= gap and max(end, t_end) - start <= limit:
                current.append(t)
                end = max(end, t_end)
                continue
            if current:
                blocks.append(_block(table, start, end, current))
            current, start, end = [t], t.address, t_end
        if current:
            blocks.append(_block(table, start, end, current))
    return blocks


def _block(table: str, start: int, end: int, tags: list[TagConfig]) -> Block:
    return Block(table, start, end - start, tuple((t, t.address - start) for t in tags))


def tag_value(tag: TagConfig, data: Sequence[int] | Sequence[bool], offset: int) -> float:
    """The engineering value of ``tag`` from a block's answer: decoded with its
    type and byte order, then scaled."""
    if tag.table in BIT_TABLES:
        raw = float(bool(data[offset]))
    else:
        raw = float(decode(data[offset : offset + tag.count], tag.type, tag.byte_order)[0])
    return tag.scaled(raw)


def groups(tags: Iterable[TagConfig]) -> dict[float, list[TagConfig]]:
    """Tags by poll interval (each interval is one group, planned on its own)."""
    out: dict[float, list[TagConfig]] = {}
    for t in tags:
        out.setdefault(t.interval_s, []).append(t)
    return dict(sorted(out.items()))


# -- device exceptions ---------------------------------------------------------------


EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
GATEWAY_UNREACHABLE = frozenset({10, 11})
"""Exceptions a TCP gateway answers when the serial slave behind it is silent:
the device is not reachable (comm_fail), it did not refuse the tag (stale)."""


def describe_exception(code: int) -> str:
    return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
