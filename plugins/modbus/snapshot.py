"""What the Modbus server shows, read from storage in batches and written into
the register image.

Every refresh reads first (awaiting storage) and then writes the image in
one synchronous step, column by column with numpy: a request served in
between sees the old values or the new ones, never half of a value. Nothing
here runs per request; a read request is answered from the image alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.core.balance_figures import balance_figures
from balans_edge.core.balance_queries import Tree, hourly_balance
from balans_edge.core.calendar import local_day
from balans_edge.core.components import Command, CommandCode
from balans_edge.core.model import Quality, Status
from balans_edge.core.periods import RegisterTable
from balans_edge.core.times import HOUR, hour_floor
from balans_edge.plugins.modbus.regmap import (
    ALARM_CODES,
    COIL_KINDS,
    GROUP,
    LAYOUT_VERSION,
    METER,
    METER_QUALITY,
    OTHER_ALARM,
    SEVERITIES,
    SYSTEM,
    RegisterImage,
    RegisterMap,
)

if TYPE_CHECKING:
    from balans_edge.core.storage import Storage
    from balans_edge.plugins.modbus.server import ServerConfig

COMMANDS_SCANNED = 1000
"""Newest audited commands read at start for the valve and relay states they set."""
STATE_OF = {
    CommandCode.VALVE_OPEN: ("valve", 1.0), CommandCode.VALVE_CLOSE: ("valve", 0.0),
    CommandCode.RELAY_ON: ("relay", 1.0), CommandCode.RELAY_OFF: ("relay", 0.0),
}
"""Command -> (what it moves, the state it leaves: 1 open/on, 0 closed/off)."""


def _bits(*flags: np.ndarray | bool, names: Sequence[str], table: dict[str, int]) -> np.ndarray:
    out = np.zeros(np.broadcast(*[np.asarray(f) for f in flags]).shape, dtype=np.int64)
    for flag, name in zip(flags, names, strict=True):
        out |= np.asarray(flag, dtype=np.int64) << table[name]
    return out


def hour_marks(now: float, tz: ZoneInfo) -> tuple[int, int]:
    """(start of the last complete hour, start of today in the site's timezone),
    both as unix UTC times. "Today" counts the complete hours from local midnight."""
    current = hour_floor(int(now))
    return current - HOUR, local_day(current, tz)[0]


class KeyRows:
    """Rows of a bridge's meters for internal meter keys, and which keys are its
    own: a binary search over the sorted keys for a whole batch of readings at
    once (the Modbus map and the OPC UA values both look readings up this way)."""

    def __init__(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        self._order = np.argsort(keys, kind="stable")
        self._sorted = keys[self._order]

    def __call__(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys = np.asarray(keys, dtype=np.int64)
        if not len(self._sorted):
            return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
        return self._order[at], self._sorted[at] == keys


class Snapshot:
    """The register image of one map and the per-meter state behind it."""

    def __init__(self, rmap: RegisterMap, config: ServerConfig, tz: ZoneInfo, threshold: float,
                 resolution: dict[str, float] | None = None) -> None:
        self.map = rmap
        self.config = config
        self.tz = tz
        self.threshold = threshold
        self.image = RegisterImage(rmap.register_count, rmap.coil_count)
        self.alarm_codes = {**ALARM_CODES, **config.alarm_codes}
        meters = rmap.meters
        n = len(meters)
        self.meter_addr = np.array([p.address for p in meters], dtype=np.int64)
        self.row_of_key = {p.key: i for i, p in enumerate(meters)}
        keys = np.array([-1 if p.key is None else p.key for p in meters], dtype=np.int64)
        self.rows_of = KeyRows(keys)
        self.row_of_id = {p.object_id: i for i, p in enumerate(meters)}
        self.keys = [int(p.key) for p in meters if p.key is not None]
        self.register = RegisterTable.of_meters((p.key, p.meter) for p in meters if p.key is not None)
        """Pulses -> register value: the meters' parameter periods once ``load_all`` read them."""
        self.last_ts = np.full(n, np.nan)
        self.hour_bits = np.zeros(n, dtype=np.int64)
        self.fitted = {k: np.array([k in p.meter.flags for p in meters], dtype=bool) for k in COIL_KINDS}
        self.reported = {k: np.full(n, np.nan) for k in COIL_KINDS}
        """valve / relay state from the newest reading's status bits (NaN: no reading)."""
        self.commanded = {k: np.full(n, np.nan) for k in COIL_KINDS}
        self.commanded_t = {k: np.full(n, -np.inf) for k in COIL_KINDS}
        self.coil_addr = {k: np.full(n, -1, dtype=np.int64) for k in COIL_KINDS}
        writable = np.zeros(n, dtype=bool)
        for c in rmap.coils:
            self.coil_addr[c.kind][self.row_of_id[c.meter_id]] = c.address
            writable[self.row_of_id[c.meter_id]] |= c.writable
        now = time.time()
        removed = np.array([p.meter.removed_time is not None and p.meter.removed_time <= now for p in meters])
        self.static_bits = _bits(np.ones(n, dtype=bool), removed, self.fitted["valve"], self.fitted["relay"],
                                 writable, names=("present", "removed", "valve", "relay", "writable"),
                                 table=METER_QUALITY)
        groups = rmap.groups
        self.group_addr = np.array([p.address for p in groups], dtype=np.int64)
        self.group_ids = [p.object_id for p in groups]
        self.norms = np.array([np.nan if p.group.loss_norm_pct is None else p.group.loss_norm_pct for p in groups])
        self.resolution = np.array([(resolution or {}).get(g, 0.0) for g in self.group_ids], dtype=np.float64)
        self.hour_t: int | None = None
        self._initial()

    # writing ----------------------------------------------------------------

    def _meter(self, name: str, rows: np.ndarray | slice, values: Any) -> None:
        f = METER.field(name)
        self.image.put(self.meter_addr[rows], f, self.map.order("meter", name), values)

    def _group(self, name: str, values: Any) -> None:
        f = GROUP.field(name)
        self.image.put(self.group_addr, f, self.map.order("group", name), values)

    def _system(self, name: str, value: float) -> None:
        f = SYSTEM.field(name)
        self.image.put(np.array([self.map.system_address]), f, self.map.order("system", name), [value])

    def _initial(self) -> None:
        """Every value unknown until storage is read; constants written once."""
        everyone = slice(None)
        for f in METER.fields:
            self._meter(f.name, everyone, np.full(len(self.meter_addr), f.unknown))
        for f in GROUP.fields:
            self._group(f.name, np.full(len(self.group_addr), f.unknown))
        for f in SYSTEM.fields:
            self._system(f.name, 0.0)
        self._system("map_layout", LAYOUT_VERSION)
        self._system("meters", len(self.map.meters))
        self._system("groups", len(self.map.groups))
        self._system("last_alarm_t", SYSTEM.field("last_alarm_t").unknown)
        self._group("quality", np.ones(len(self.group_addr)))
        self._meter("quality", everyone, self.static_bits)
        self._write_states(np.arange(len(self.meter_addr)))

    def _write_states(self, rows: np.ndarray) -> None:
        """valve / relay words and coils: the newer of the reported and the commanded state."""
        for kind in COIL_KINDS:
            reported, commanded = self.reported[kind][rows], self.commanded[kind][rows]
            newer = self.commanded_t[kind][rows] >= np.nan_to_num(self.last_ts[rows], nan=-np.inf)
            state = np.where(np.isfinite(commanded) & newer, commanded, reported)
            state = np.where(self.fitted[kind][rows], state, np.nan)
            self._meter(kind, rows, state)
            coils = self.coil_addr[kind][rows]
            has = coils >= 0
            self.image.coils[coils[has]] = (state[has] == 1.0).astype(np.uint8)

    def readings(self, rows_of: Any) -> None:
        """Newest readings (``ReadingRows``) into register value, pulses, status, states."""
        rows, mine = self.rows_of(rows_of.meter)
        rows = rows[mine]
        if not len(rows):
            return
        pulses = rows_of.pulses[mine].astype(np.int64)
        status = rows_of.status[mine].astype(np.int64)
        value = self.register.values(rows_of.meter[mine], rows_of.ts[mine], pulses)
        self.last_ts[rows] = rows_of.ts[mine]
        self._meter("register_value", rows, value)
        self._meter("register_value_f32", rows, value)
        self._meter("pulses", rows, pulses % (1 << 32))
        self._meter("last_reading_t", rows, rows_of.ts[mine])
        self._meter("status", rows, status & 0xFFFF)
        self.reported["valve"][rows] = np.where(status & Status.VALVE_CLOSED, 0.0, 1.0)
        self.reported["relay"][rows] = np.where(status & Status.RELAY_OFF, 0.0, 1.0)
        self._write_states(rows)

    def last_hour(self, keys: Sequence[int], hour: int, values: np.ndarray, quality: np.ndarray) -> None:
        """Consumption of ``keys`` in the hour starting at ``hour`` (one column of the matrix)."""
        rows, _ = self.rows_of(np.asarray(keys, dtype=np.int64))
        if not len(rows):
            return
        q = quality.reshape(-1).astype(np.int64)
        v = np.where(q == Quality.MISSING, np.nan, values.reshape(-1))
        self.hour_bits[rows] = _bits(q == Quality.MEASURED, q == Quality.ESTIMATED, names=("measured", "estimated"),
                                     table=METER_QUALITY)
        self._meter("last_hour", rows, v)
        self._meter("last_hour_t", rows, np.full(len(rows), hour))

    def command(self, command: Command) -> None:
        """An executed valve or relay command: its state holds until a newer reading."""
        state = STATE_OF.get(command.code)
        row = self.row_of_id.get(command.target)
        if state is None or row is None or command.outcome != "done":
            return
        kind, value = state
        self.commanded[kind][row] = value
        self.commanded_t[kind][row] = command.t
        self._write_states(np.array([row]))

    def groups(self, series: Any, hour: int, today: int) -> None:
        """Last hour and today of every group from a stored hourly balance series
        that covers the hour starting at ``hour`` and every hour of today (an hour
        belongs to today when it starts at or after ``today``, as in the API's
        days)."""
        if not self.group_ids:
            return
        cols = {c: np.asarray(getattr(series, c), dtype=np.float64) for c in series.COLUMNS}
        last = np.flatnonzero(series.t == hour)
        in_today = series.t >= today
        periods = {
            "last_hour": {c: (a[:, last[0]] if len(last) else np.zeros(len(self.group_ids))) for c, a in cols.items()},
            "today": {c: a[:, in_today].sum(axis=1) for c, a in cols.items()},
        }
        for prefix, period in periods.items():
            d = balance_figures(period, self.norms, self.resolution, self.threshold, partial=prefix == "today")
            for name in ("input", "consumed", "imbalance", "loss_pct", "completeness", "flags"):
                self._group(f"{prefix}_{name}", getattr(d, name))
        self._group("last_hour_t", np.full(len(self.group_ids), hour))
        self._group("today_t", np.full(len(self.group_ids), today))
        self._group("today_hours", np.full(len(self.group_ids), int(in_today.sum())))

    def alarm(self, newest: dict[str, Any] | None) -> None:
        if newest is None:
            return
        kind = (newest.get("data") or {}).get("kind")
        self._system("alarms_total", int(newest["id"]))
        self._system("last_alarm_id", int(newest["id"]))
        self._system("last_alarm_code", self.alarm_codes.get(kind, OTHER_ALARM) if kind else OTHER_ALARM)
        self._system("last_alarm_severity", SEVERITIES.get(str(newest.get("severity")), 0))
        self._system("last_alarm_t", int(newest.get("t") or 0))

    def tick(self, now: float, uptime: float, health: int, connections: int) -> None:
        """Data age, stale bits and the system block: every second, from memory."""
        age = np.floor(now - self.last_ts)
        self._meter("data_age_s", slice(None), age)
        has = np.isfinite(self.last_ts)
        stale = has & (age > self.config.stale_after_s)
        quality = self.static_bits | _bits(has, stale, names=("reading", "stale"), table=METER_QUALITY)
        self._meter("quality", slice(None), quality | self.hour_bits)
        self._system("uptime_s", math.floor(uptime))
        self._system("server_time", math.floor(now))
        self._system("health", health)
        self._system("connections", connections)


async def load_all(snapshot: Snapshot, storage: Storage, now: float) -> None:
    """Everything of a new snapshot from storage (at start and after the registry changed)."""
    snapshot.register = await storage.register_table(snapshot.keys)
    await refresh_readings(snapshot, storage, None)
    hour, today = hour_marks(now, snapshot.tz)
    await refresh_hour(snapshot, storage, None, hour)
    await refresh_groups(snapshot, storage, hour, today)
    commands = await storage.journal_list("commands", COMMANDS_SCANNED)
    for record in reversed(commands):
        try:
            code = CommandCode(record["code"])
        except ValueError:
            continue
        snapshot.command(Command(record["target"], code, record["requested_by"] or "", record["reason"] or "",
                                 t=int(record["t"] or 0), outcome=record["outcome"] or ""))
    alarms = await storage.journal_list("alarms", 1)
    snapshot.alarm(alarms[0] if alarms else None)


async def refresh_readings(snapshot: Snapshot, storage: Storage, keys: Sequence[int] | None) -> None:
    wanted = snapshot.keys if keys is None else [k for k in keys if k in snapshot.row_of_key]
    if not wanted:
        return
    rows = await storage.latest_readings(wanted)
    snapshot.readings(rows)


async def refresh_hour(snapshot: Snapshot, storage: Storage, keys: Sequence[int] | None, hour: int) -> None:
    wanted = snapshot.keys if keys is None else [k for k in keys if k in snapshot.row_of_key]
    if not wanted:
        return
    values, quality = await storage.consumption_matrix(wanted, hour, hour + HOUR)
    snapshot.last_hour(wanted, hour, values, quality)


async def refresh_groups(snapshot: Snapshot, storage: Storage, hour: int, today: int) -> None:
    if not snapshot.group_ids:
        return
    # Hour-aligned: a day may start between two UTC hours (a timezone half an hour off).
    # Hours nobody reported count as missing, as in the API (``hourly_balance``).
    first = min(hour, today)
    series = await hourly_balance(storage, await Tree.current(storage), snapshot.group_ids, hour_floor(first),
                                  hour + HOUR, hour + HOUR)
    snapshot.groups(series, hour, today)
