"""The Modbus register map: which value sits at which address, in which type
and byte order, for the system, every balance group and every meter.

The map is a contract with a SCADA integrator, who types its addresses into
a tag list once. So it is built from three stable things only: the block
layouts below (fixed fields at fixed offsets, changed only with a new
``LAYOUT_VERSION``), the configuration (base addresses, byte orders,
addresses pinned by hand) and the slots the storage hands out once per
object and never takes back (``BridgeSlotRepository``, ``repository.py``). A meter's
block starts at ``meters_base + slot x METER.size``: adding a meter gives it
the next slot and moves nobody; a removed meter's addresses stay unused.

The server and ``balans-edge modbus map`` build the map with the same
``load_map``, so the document an integrator loads is what the server serves.
``RegisterImage`` holds the served registers as one numpy array: values are
written into it in batches (a column of every meter at once), and a read
request is a slice of it.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from balans_edge.core.model import Group, Meter
from balans_edge.core.spreadsheet import safe_cell
from balans_edge.plugins.modbus.values import encode, register_count

if TYPE_CHECKING:
    from balans_edge.core.storage.views import Queries
    from balans_edge.plugins.modbus.repository import BridgeSlotRepository
    from balans_edge.plugins.modbus.server import ServerConfig

LAYOUT_VERSION = 1
"""Served in the system block: changes only when a block's fields move."""
METER_SLOTS = "modbus:meters"
GROUP_SLOTS = "modbus:groups"
REGISTER_SPACE = 65536
"""Modbus addresses are 16 bits."""
REGISTER_TABLE = "holding/input"
COIL_TABLE = "coil"


class MapError(ValueError):
    """The configuration cannot be laid out (blocks overlap or leave the address space)."""


@dataclass(frozen=True, slots=True)
class Field:
    """One value of a block: its offset in registers from the block's start."""

    name: str
    offset: int
    dtype: str
    unit: str
    """A fixed unit, ``"{unit}"`` for the object's own unit, or ``""``."""
    description: str
    bits: bool = False
    """A bit field: never unknown (0 when nothing is known)."""

    @property
    def count(self) -> int:
        return register_count(self.dtype)

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith("float")

    @property
    def unknown(self) -> float:
        """What the value shows when it is not known: NaN for floats, all bits
        set for unsigned integers, -1 for signed ones. Bit fields are never
        unknown: a bit that is not set is 0."""
        if self.is_float:
            return float("nan")
        if self.bits:
            return 0.0
        if self.dtype.startswith("int"):
            return -1.0
        return float((1 << (16 * self.count)) - 1)


@dataclass(frozen=True, slots=True)
class Block:
    """A fixed layout repeated per object (or once, for the system)."""

    kind: str
    size: int
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.kind} block has no field {name!r}")

    def check(self) -> None:
        """Fields fit the block and do not overlap (the layout's own test)."""
        used = np.zeros(self.size, dtype=int)
        for f in self.fields:
            if f.offset < 0 or f.offset + f.count > self.size:
                raise MapError(f"{self.kind}.{f.name} leaves the block")
            used[f.offset : f.offset + f.count] += 1
        if (used > 1).any():
            raise MapError(f"{self.kind} block: fields overlap at offset {int(np.argmax(used > 1))}")


SYSTEM = Block("system", 32, (
    Field("map_layout", 0, "uint16", "", f"layout version of this map ({LAYOUT_VERSION}); changes only when "
                                         "fields move"),
    Field("health", 1, "uint16", "", "bits: 0 a plugin failed, 1 the last refresh from storage failed "
                                     "(values may be old); 0 = healthy", bits=True),
    Field("uptime_s", 2, "uint32", "s", "seconds since the server started"),
    Field("server_time", 4, "uint32", "s", "unix time (UTC) of the newest refresh; a frozen value means the "
                                           "refresh stopped"),
    Field("alarms_total", 6, "uint32", "", "alarms raised since the database was created (id of the newest)"),
    Field("last_alarm_code", 8, "uint16", "", "code of the most recent alarm (see the alarm code table); 0 = none"),
    Field("last_alarm_severity", 9, "uint16", "", "0 none, 1 info, 2 warning, 3 critical"),
    Field("last_alarm_t", 10, "uint32", "s", "unix time (UTC) of the most recent alarm; unknown: 4294967295"),
    Field("last_alarm_id", 12, "uint32", "", "id of the most recent alarm in the alarms journal; 0 = none"),
    Field("meters", 14, "uint16", "", "meters in this map"),
    Field("groups", 15, "uint16", "", "balance groups in this map"),
    Field("connections", 16, "uint16", "", "Modbus TCP connections open now"),
))
GROUP = Block("group", 32, (
    Field("last_hour_input", 0, "float32", "{unit}", "what flowed in during the last complete hour (UTC); "
                                                     "NaN when an input meter is missing"),
    Field("last_hour_consumed", 2, "float32", "{unit}", "what the members consumed in that hour"),
    Field("last_hour_imbalance", 4, "float32", "{unit}", "input - consumed in that hour; NaN when the input is"
                                                         " unknown"),
    Field("last_hour_loss_pct", 6, "float32", "%", "imbalance as a share of the input; NaN when the input is"
                                                   " unknown or not positive"),
    Field("today_input", 8, "float32", "{unit}", "input over today's complete hours (site timezone)"),
    Field("today_consumed", 10, "float32", "{unit}", "consumed over today's complete hours"),
    Field("today_imbalance", 12, "float32", "{unit}", "input - consumed over today's complete hours"),
    Field("today_loss_pct", 14, "float32", "%", "today's imbalance as a share of today's input"),
    Field("last_hour_completeness", 16, "uint16", "0.01 %", "members measured or estimated in the last hour; "
                                                            "unknown (no members): 65535"),
    Field("today_completeness", 17, "uint16", "0.01 %", "members measured or estimated over today's hours"),
    Field("last_hour_flags", 18, "uint16", "", "bits: 0 incomplete, 1 input_missing, 2 input_estimated, "
                                               "3 norm_exceeded, 4 negative_imbalance, 5 no_members, "
                                               "6 partial (the period is not over: always set for today)", bits=True),
    Field("today_flags", 19, "uint16", "", "the same bits for today's total", bits=True),
    Field("last_hour_t", 20, "uint32", "s", "unix time (UTC) of the start of the last complete hour"),
    Field("today_t", 22, "uint32", "s", "unix time (UTC) of the start of today (site timezone)"),
    Field("quality", 24, "uint16", "", "bits: 0 present (the group is in the registry)", bits=True),
    Field("today_hours", 25, "uint16", "h", "complete hours in today's totals"),
))
METER = Block("meter", 24, (
    Field("register_value", 0, "float64", "{unit}", "register (dial) reading of the newest stored reading"),
    Field("register_value_f32", 4, "float32", "{unit}", "the same as float32 (about 7 significant digits)"),
    Field("last_hour", 6, "float32", "{unit}", "consumption in the last complete hour (UTC); NaN when missing"),
    Field("pulses", 8, "uint32", "pulses", "pulses since installation, modulo 2^32 (bit 1 of quality tells "
                                           "whether there is a reading)"),
    Field("last_reading_t", 10, "uint32", "s", "unix time (UTC) of the newest stored reading"),
    Field("data_age_s", 12, "int32", "s", "seconds since the newest stored reading (updated every second)"),
    Field("status", 14, "uint16", "", "module status bits of the newest reading: 0 magnet, 1 tamper, 2 reverse, "
                                      "3 leak, 4 low battery, 5 valve closed, 6 cable cut, 7 counter reset, "
                                      "8 relay off; 0 without a reading", bits=True),
    Field("quality", 15, "uint16", "", "bits: 0 present, 1 has a reading, 2 stale (older than stale_after_s), "
                                       "3 last hour measured, 4 last hour estimated, 5 removed, 6 valve fitted, "
                                       "7 relay fitted, 8 coils writable over Modbus", bits=True),
    Field("valve", 16, "int16", "", "1 open, 0 closed; unknown or no valve: -1"),
    Field("relay", 17, "int16", "", "1 on, 0 off; unknown or no relay: -1"),
    Field("last_hour_t", 18, "uint32", "s", "unix time (UTC) of the start of the hour of last_hour"),
))
BLOCKS = {b.kind: b for b in (SYSTEM, GROUP, METER)}
COILS_PER_METER = 2
COIL_KINDS = ("valve", "relay")
"""Coil offset within a meter's pair: 0 the valve (1 open), 1 the relay (1 on)."""

METER_QUALITY = {"present": 0, "reading": 1, "stale": 2, "measured": 3, "estimated": 4, "removed": 5,
                 "valve": 6, "relay": 7, "writable": 8}
SEVERITIES = {"info": 1, "warning": 2, "critical": 3}
ALARM_CODES: dict[str, int] = {
    "slowed_meter": 1, "unmetered_connection": 2, "consumer_leak": 3, "burst": 4, "background_leak": 5,
    "stuck_meter": 6, "reverse_meter": 7, "magnet": 8, "tamper": 9, "cable_cut": 10, "counter_reset": 11,
    "consumption_drop": 12, "profile_tamper": 13,
    "silent": 20, "low_battery": 21, "weak_link": 22, "too_many_hops": 23, "concentrator_offline": 24,
}
"""Alarm code by finding kind; ``alarm_codes`` in the configuration adds more."""
OTHER_ALARM = 999
"""The code of an alarm whose kind has no code."""


def order_keys() -> list[str]:
    """Names a per-value byte order may be given for: ``meter.register_value`` ..."""
    return [f"{b.kind}.{f.name}" for b in BLOCKS.values() for f in b.fields]


@dataclass(frozen=True, slots=True)
class Placed:
    """A group or meter with its block's address."""

    object_id: str
    slot: int
    address: int
    unit: str
    key: int | None = None
    """The meter's internal key (readings and intervals use it)."""
    meter: Meter | None = None
    group: Group | None = None
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class Coil:
    address: int
    meter_id: str
    kind: str
    """valve | relay"""
    writable: bool


@dataclass(frozen=True, slots=True)
class MapRow:
    """A line of the map document."""

    address: int
    table: str
    object: str
    name: str
    type: str
    byte_order: str
    registers: int
    unit: str
    writable: str
    description: str

    COLUMNS = ("address", "table", "object", "name", "type", "byte_order", "registers", "unit", "writable",
               "description")


@dataclass(frozen=True)
class RegisterMap:
    system_address: int
    meters: tuple[Placed, ...]
    groups: tuple[Placed, ...]
    coils: tuple[Coil, ...]
    byte_order: str
    orders: dict[str, str] = field(default_factory=dict)
    unplaced: tuple[str, ...] = ()
    """Objects left out because their block would leave the address space."""
    coils_base: int = 0

    @property
    def register_count(self) -> int:
        ends = [self.system_address + SYSTEM.size]
        ends += [p.address + GROUP.size for p in self.groups] + [p.address + METER.size for p in self.meters]
        return max(ends)

    @property
    def coil_count(self) -> int:
        """Coils served: a pair per slot up to the highest mapped meter's, so a
        range read across meters never fails on a meter without valve or relay
        (its coils read 0)."""
        if not self.meters:
            return 0
        end = self.coils_base + (max(p.slot for p in self.meters) + 1) * COILS_PER_METER
        return min(end, REGISTER_SPACE)

    def order(self, kind: str, name: str) -> str:
        return self.orders.get(f"{kind}.{name}", self.byte_order)

    def coil_at(self, address: int) -> Coil | None:
        return self._coils_by_address().get(address)

    def _coils_by_address(self) -> dict[int, Coil]:
        cached = self.__dict__.get("_coil_index")
        if cached is None:
            cached = self.__dict__["_coil_index"] = {c.address: c for c in self.coils}
        return cached

    def rows(self) -> list[MapRow]:
        """The document: every value with its address, type and byte order."""
        out = [self._row(SYSTEM, f, self.system_address, "system", "") for f in SYSTEM.fields]
        for block, placed in ((GROUP, self.groups), (METER, self.meters)):
            for p in placed:
                prefix = f"{block.kind}:{p.object_id}"
                out += [self._row(block, f, p.address, prefix, p.unit) for f in block.fields]
        for c in self.coils:
            what = "1 open, 0 closed" if c.kind == "valve" else "1 on, 0 off"
            verb = "writing opens/closes through the actuation service (audited)" if c.writable else "read-only"
            out.append(MapRow(c.address, COIL_TABLE, f"meter:{c.meter_id}", c.kind, "bit", "", 1, "",
                              "yes" if c.writable else "no", f"{c.kind} state: {what}; {verb}"))
        return out

    def _row(self, block: Block, f: Field, base: int, obj: str, unit: str) -> MapRow:
        return MapRow(base + f.offset, REGISTER_TABLE, obj, f.name, f.dtype, self.order(block.kind, f.name),
                      f.count, f.unit.replace("{unit}", unit), "no", f.description)


# building -------------------------------------------------------------------


def _span(address: int, size: int, what: str) -> tuple[int, int, str]:
    if address < 0 or address + size > REGISTER_SPACE:
        raise MapError(f"{what}: registers {address}..{address + size - 1} leave the address space 0..65535")
    return address, address + size, what


def _check_overlaps(spans: list[tuple[int, int, str]]) -> None:
    spans = sorted(spans)
    for (a0, a1, a), (b0, _, b) in itertools.pairwise(spans):
        if b0 < a1:
            raise MapError(f"{a} (registers {a0}..{a1 - 1}) overlaps {b} (from {b0})")


def _place(kind: str, object_ids: Sequence[str], slots: dict[str, int], base: int, size: int,
           pinned: dict[str, int], limit: int) -> tuple[list[tuple[str, int, int, bool]], list[str]]:
    """(object id, slot, address, pinned) of every object, and those that do not fit."""
    placed, left_out = [], []
    for object_id in object_ids:
        slot = slots[object_id]
        if object_id in pinned:
            placed.append((object_id, slot, pinned[object_id], True))
            continue
        address = base + slot * size
        if address + size > limit:
            left_out.append(f"{kind}:{object_id}")
            continue
        placed.append((object_id, slot, address, False))
    return placed, left_out


def build_map(config: ServerConfig, meters: Sequence[tuple[int, Meter]], groups: Sequence[Group],
              meter_slots: dict[str, int], group_slots: dict[str, int]) -> RegisterMap:
    """Lay out the map (pure: no storage). Raises MapError when pinned addresses
    or base addresses make blocks overlap; objects whose slot lies beyond the
    end of their area are left out and named in ``unplaced``."""
    by_meter = {m.meter_id: (k, m) for k, m in meters}
    by_group = {g.group_id: g for g in groups}
    for what, pins, known in (("meter", config.meter_addresses, by_meter), ("group", config.group_addresses, by_group)):
        for object_id in pins:
            if object_id not in known:
                raise MapError(f"{what}_addresses: {what} {object_id!r} is not in the registry")
    # Each area ends where the next one starts (or at the end of the address space).
    starts = sorted({config.system_address, config.groups_base, config.meters_base, REGISTER_SPACE})
    limit = {base: next(s for s in starts if s > base) for base in starts[:-1]}
    group_places, left_groups = _place("group", sorted(by_group), group_slots, config.groups_base,
                                       GROUP.size, config.group_addresses, limit[config.groups_base])
    meter_places, left_meters = _place("meter", sorted(by_meter), meter_slots, config.meters_base,
                                       METER.size, config.meter_addresses, limit[config.meters_base])
    spans = [_span(config.system_address, SYSTEM.size, "system block")]
    spans += [_span(a, GROUP.size, f"group {g}") for g, _, a, _ in group_places]
    spans += [_span(a, METER.size, f"meter {m}") for m, _, a, _ in meter_places]
    _check_overlaps(spans)
    writable = set(config.writable_coils)
    placed_meters = []
    coils = []
    for meter_id, slot, address, pinned in sorted(meter_places, key=lambda p: p[2]):
        key, meter = by_meter[meter_id]
        placed_meters.append(Placed(meter_id, slot, address, meter.unit, key=key, meter=meter, pinned=pinned))
        for i, kind in enumerate(COIL_KINDS):
            if kind in meter.flags:
                coil_address = config.coils_base + slot * COILS_PER_METER + i
                if coil_address < REGISTER_SPACE:
                    coils.append(Coil(coil_address, meter_id, kind, "*" in writable or meter_id in writable))
    placed_groups = [Placed(g, slot, a, by_group[g].unit, group=by_group[g], pinned=p)
                     for g, slot, a, p in sorted(group_places, key=lambda p: p[2])]
    return RegisterMap(config.system_address, tuple(placed_meters), tuple(placed_groups),
                       tuple(sorted(coils, key=lambda c: c.address)), config.byte_order, dict(config.orders),
                       tuple(left_groups + left_meters), config.coils_base)


async def load_map(queries: Queries, slots: BridgeSlotRepository, config: ServerConfig, now: int) -> RegisterMap:
    """The map of the registry as it is now: every meter and group gets its slot
    (allocated and stored on first sight, kept for ever), then the layout."""
    meters = await queries.meters_by_key()
    groups = await queries.registry_list("groups")
    meter_slots = await slots.allocate_bridge_slots(METER_SLOTS, sorted(m.meter_id for _, m in meters), now)
    group_slots = await slots.allocate_bridge_slots(GROUP_SLOTS, sorted(g.group_id for g in groups), now)
    return build_map(config, meters, groups, meter_slots, group_slots)


# the served image -------------------------------------------------------------


def representable(values: np.ndarray, dtype: str) -> np.ndarray:
    """Which values a register of ``dtype`` can show: finite, and within the
    type's range (an integer after rounding; a float32 up to about 3.4e38).
    The others show the field's unknown marker: a SCADA must never read
    infinity, nor a clipped or wrapped number that looks like a measurement."""
    with np.errstate(invalid="ignore"):
        if dtype.startswith("float"):
            return np.isfinite(values) & (np.abs(values) <= np.finfo(dtype).max)
        info = np.iinfo(dtype)
        rounded = np.round(values)
        return np.isfinite(values) & (rounded >= info.min) & (rounded <= info.max)


class RegisterImage:
    """The registers and coils as served: a read is a slice of these arrays.

    Registers are stored big-endian (``>u2``), so a slice's bytes are the
    response's bytes. Writers put whole columns (one field of many objects)
    at once; a value is never half-written, because nothing awaits between
    the first and last register of a ``put``.
    """

    def __init__(self, register_count: int, coil_count: int) -> None:
        self.registers = np.zeros(register_count, dtype=">u2")
        self.coils = np.zeros(coil_count, dtype=np.uint8)

    def put(self, addresses: np.ndarray, f: Field, order: str, values: Iterable[float] | np.ndarray) -> None:
        """Write ``values`` of field ``f`` of the blocks at ``addresses``."""
        addresses = np.asarray(addresses, dtype=np.int64)
        if not len(addresses):
            return
        v = np.asarray(values, dtype=np.float64).reshape(len(addresses))
        v = np.where(representable(v, f.dtype), v if f.is_float else np.round(v), f.unknown)
        regs = np.asarray(encode(v, f.dtype, order), dtype=np.int64).reshape(len(v), f.count)
        self.registers[addresses[:, None] + f.offset + np.arange(f.count)] = regs

    def read_registers(self, address: int, count: int) -> bytes | None:
        if address + count > len(self.registers):
            return None
        return self.registers[address : address + count].tobytes()

    def read_coils(self, address: int, count: int) -> bytes | None:
        if address + count > len(self.coils):
            return None
        return np.packbits(self.coils[address : address + count], bitorder="little").tobytes()


# the document -------------------------------------------------------------------


def to_csv(rows: Sequence[MapRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MapRow.COLUMNS)
    for r in rows:
        writer.writerow([_csv_cell(getattr(r, c)) for c in MapRow.COLUMNS])
    return buf.getvalue()


def _csv_cell(value: object) -> object:
    """Text a spreadsheet would run as a formula (a meter id "=..." in a tag name) is escaped."""
    return safe_cell(value) if isinstance(value, str) else value


def to_markdown(m: RegisterMap, rows: Sequence[MapRow], config: ServerConfig) -> str:
    """The map as a document: conventions first, then every value."""
    codes = {**ALARM_CODES, **config.alarm_codes}
    lines = [
        "# Modbus register map",
        "",
        f"Layout version {LAYOUT_VERSION}; unit id {config.unit_id}; meters: {len(m.meters)}, "
        f"groups: {len(m.groups)}; default byte order {m.byte_order}.",
        "",
        "- Addresses are 0-based protocol addresses (a 1-based tool shows address + 1; "
        "in 4x notation 400001 + address).",
        "- Registers (`holding/input`) answer function 3 and function 4 alike; coils answer functions 1 and 2, "
        "and functions 5 and 15 write the coils marked writable. Registers are read-only: "
        "functions 6, 16, 22 and 23 answer exception 01.",
        "- Byte order names the bytes A (most significant) .. D of a 32-bit value as they are sent: "
        "ABCD big-endian, CDAB word-swapped, BADC byte-swapped, DCBA little-endian; "
        "a 64-bit value follows the same rule over its four words.",
        "- Unknown values: floats NaN; unsigned integers all bits set (65535, 4294967295); "
        "signed integers -1; bit fields 0. A value that is not a finite number or does not fit its type "
        "(beyond float32's range, an integer out of range) shows the same marker, never infinity or a clipped "
        "number.",
        "- Reserved registers inside a block read 0. A removed meter keeps its addresses; they are never "
        "given to another meter.",
        "",
        "| " + " | ".join(MapRow.COLUMNS) + " |",
        "|" + "---|" * len(MapRow.COLUMNS),
    ]
    lines += ["| " + " | ".join(str(getattr(r, c)).replace("|", "\\|") for c in MapRow.COLUMNS) + " |" for r in rows]
    lines += ["", "## Alarm codes", "", "| code | finding kind |", "|---|---|"]
    lines += [f"| {c} | {k} |" for k, c in sorted(codes.items(), key=lambda kv: kv[1])]
    lines += [f"| {OTHER_ALARM} | any other kind |"]
    if m.unplaced:
        lines += ["", "Not in the map (their area is full): " + ", ".join(m.unplaced)]
    return "\n".join(lines) + "\n"


for _block in BLOCKS.values():
    _block.check()
