"""What the Modbus server shows: the register image of one map, written from
the live state both SCADA bridges keep (``plugins.common.live``: what it
reads from storage, and when).

Every refresh reads first (awaiting storage) and then writes the image in
one synchronous step, column by column with numpy: a request served in
between sees the old values or the new ones, never half of a value. Nothing
here runs per request; a read request is answered from the image alone.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.plugins.common.group_periods import DERIVED, Period, bits
from balans_edge.plugins.common.live import KINDS, LiveState
from balans_edge.plugins.modbus.regmap import (
    ALARM_CODES,
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
    from balans_edge.plugins.modbus.server import ServerConfig


class Snapshot(LiveState):
    """The register image of one map and the per-meter state behind it."""

    def __init__(self, rmap: RegisterMap, config: ServerConfig, tz: ZoneInfo, threshold: float,
                 resolution: dict[str, float] | None = None) -> None:
        super().__init__([(p.key, p.meter) for p in rmap.meters], [p.group for p in rmap.groups], tz, threshold,
                         resolution)
        self.map = rmap
        self.config = config
        self.image = RegisterImage(rmap.register_count, rmap.coil_count)
        self.alarm_codes = {**ALARM_CODES, **config.alarm_codes}
        meters = rmap.meters
        n = len(meters)
        self.meter_addr = np.array([p.address for p in meters], dtype=np.int64)
        self.hour_bits = np.zeros(n, dtype=np.int64)
        self.coil_addr = {k: np.full(n, -1, dtype=np.int64) for k in KINDS}
        writable = np.zeros(n, dtype=bool)
        for c in rmap.coils:
            self.coil_addr[c.kind][self.row_of_meter[c.meter_id]] = c.address
            writable[self.row_of_meter[c.meter_id]] |= c.writable
        now = time.time()
        removed = np.array([p.meter.removed_time is not None and p.meter.removed_time <= now for p in meters])
        self.static_bits = bits(np.ones(n, dtype=bool), removed, self.fitted["valve"], self.fitted["relay"],
                                writable, names=("present", "removed", "valve", "relay", "writable"),
                                table=METER_QUALITY)
        self.group_addr = np.array([p.address for p in rmap.groups], dtype=np.int64)
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
        for kind in KINDS:
            state, _ = self.state(kind, rows)
            state = np.where(self.fitted[kind][rows], state, np.nan)
            self._meter(kind, rows, state)
            coils = self.coil_addr[kind][rows]
            has = coils >= 0
            self.image.coils[coils[has]] = (state[has] == 1.0).astype(np.uint8)

    # what the live state shows (called by plugins.common.live) ------------------

    def show_readings(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray, pulses: np.ndarray,
                      status: np.ndarray) -> None:
        """Newest readings into register value, pulses, status, states."""
        self._meter("register_value", rows, value)
        self._meter("register_value_f32", rows, value)
        self._meter("pulses", rows, pulses % (1 << 32))
        self._meter("last_reading_t", rows, ts)
        self._meter("status", rows, status & 0xFFFF)
        self._write_states(rows)

    def show_last_hour(self, rows: np.ndarray, hour: int, values: np.ndarray, quality: np.ndarray) -> None:
        self.hour_bits[rows] = bits(quality == 0, quality == 1, names=("measured", "estimated"), table=METER_QUALITY)
        self._meter("last_hour", rows, np.where(quality == 2, np.nan, values))
        self._meter("last_hour_t", rows, np.full(len(rows), hour))

    def show_states(self, rows: np.ndarray) -> None:
        self._write_states(rows)

    def show_periods(self, periods: dict[str, Period]) -> None:
        n = len(self.group_ids)
        for prefix, period in periods.items():
            for name in DERIVED:
                self._group(f"{prefix}_{name}", getattr(period.values, name))
        self._group("last_hour_t", np.full(n, periods["last_hour"].start))
        self._group("today_t", np.full(n, periods["today"].start))
        self._group("today_hours", np.full(n, periods["today"].hours))

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
        quality = self.static_bits | bits(has, stale, names=("reading", "stale"), table=METER_QUALITY)
        self._meter("quality", slice(None), quality | self.hour_bits)
        self._system("uptime_s", math.floor(uptime))
        self._system("server_time", math.floor(now))
        self._system("health", health)
        self._system("connections", connections)
