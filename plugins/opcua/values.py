"""What the live variables show: every meter's and group's values as numpy
columns, read from storage in batches.

The storage reads are the Modbus server's (``plugins/modbus/snapshot.py``:
``load_all``, ``refresh_readings``, ``refresh_hour``, ``refresh_groups``,
``hour_marks``) and so is the state a valve or relay command leaves
(``STATE_OF``); a balance period's values are the HTTP API's
(``core.balance_figures``, for all groups at once). ``Values`` offers the
interface those functions fill (``keys``, ``row_of_key``, ``readings``,
``last_hour``, ``groups``, ``command``, ...), so both bridges show the same
numbers from the same reads. ``columns()`` hands each live variable to the
publisher as arrays of value, status and source time; nothing here knows
OPC UA beyond the names of the variables.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.core.balance_figures import BALANCE_FLAGS, balance_figures
from balans_edge.core.components import Command
from balans_edge.core.model import Group, Meter, Quality, Status
from balans_edge.core.periods import RegisterTable
from balans_edge.plugins.modbus import snapshot as snap
from balans_edge.plugins.opcua.model import PERIOD_VARIABLES, group_id, meter_id

GOOD, UNCERTAIN, NO_DATA, WAITING = 0, 1, 2, 3
"""Status of a value: Good, Uncertain_SubstituteValue (estimated), Bad_NoData
(not defined for this period), Bad_WaitingForInitialData (nothing read yet)."""
KINDS = ("valve", "relay")
INPUT_ESTIMATED = 1 << BALANCE_FLAGS["input_estimated"]


@dataclass
class Column:
    """One live variable of every meter (or of every group's period)."""

    ids: list[str]
    """Object node ids (``Meters/W-1``), one per row; the variable is ``<id>/<path>``."""
    path: str
    variant: str
    """double | uint16 | uint32 | datetime | bool"""
    value: np.ndarray
    status: np.ndarray
    source: np.ndarray
    """Unix time the value is about (the reading's, the hour's start, ...)."""
    present: np.ndarray | None = None
    """Rows that have this variable (valve and relay only on meters fitted with one)."""


class Values:
    """Live values of the meters and groups of one registry version."""

    def __init__(self, meters: Sequence[tuple[int, Meter]], groups: Sequence[Group], tz: ZoneInfo,
                 threshold: float, resolution: dict[str, float] | None = None) -> None:
        self.tz = tz
        self.threshold = threshold
        n = len(meters)
        self.keys = [int(k) for k, _ in meters]
        self.row_of_key = {k: i for i, k in enumerate(self.keys)}
        self.meter_ids = [meter_id(m.meter_id) for _, m in meters]
        self.row_of_meter = {m.meter_id: i for i, (_, m) in enumerate(meters)}
        keys = np.array(self.keys, dtype=np.int64)
        self.rows_of = snap.KeyRows(keys)
        self.register = RegisterTable.of_meters(meters)
        """Pulses -> register value: the meters' parameter periods once ``load_all`` read them."""
        self.value = np.full(n, np.nan)
        self.last_ts = np.full(n, np.nan)
        self.status = np.full(n, np.nan)
        self.hour_value = np.full(n, np.nan)
        self.hour_quality = np.full(n, -1, dtype=np.int64)
        self.hour_t = np.full(n, np.nan)
        self.age = np.full(n, np.nan)
        self.fitted = {k: np.array([k in m.flags for _, m in meters], dtype=bool) for k in KINDS}
        self.reported = {k: np.full(n, np.nan) for k in KINDS}
        self.commanded = {k: np.full(n, np.nan) for k in KINDS}
        self.commanded_t = {k: np.full(n, -np.inf) for k in KINDS}
        self.group_ids = [g.group_id for g in groups]
        self.group_nodes = [group_id(g.group_id) for g in groups]
        self.norms = np.array([np.nan if g.loss_norm_pct is None else g.loss_norm_pct for g in groups])
        self.resolution = np.array([(resolution or {}).get(g.group_id, 0.0) for g in groups], dtype=np.float64)
        self.periods: dict[str, dict[str, np.ndarray]] = {}

    # filled by the snapshot functions -------------------------------------------------------

    def readings(self, rows_of: Any) -> None:
        """The newest readings (``ReadingRows``): register value, status, reported valve and relay."""
        rows, mine = self.rows_of(rows_of.meter)
        rows = rows[mine]
        if not len(rows):
            return
        pulses = rows_of.pulses[mine].astype(np.int64)
        status = rows_of.status[mine].astype(np.int64)
        self.value[rows] = self.register.values(rows_of.meter[mine], rows_of.ts[mine], pulses)
        self.last_ts[rows] = rows_of.ts[mine]
        # The age of a new reading now; every age only every age_interval_s (see ages).
        self.age[rows] = np.floor(time.time() - self.last_ts[rows])
        self.status[rows] = status & 0xFFFF
        self.reported["valve"][rows] = np.where(status & Status.VALVE_CLOSED, 0.0, 1.0)
        self.reported["relay"][rows] = np.where(status & Status.RELAY_OFF, 0.0, 1.0)

    def last_hour(self, keys: Sequence[int], hour: int, values: np.ndarray, quality: np.ndarray) -> None:
        rows, _ = self.rows_of(np.asarray(keys, dtype=np.int64))
        if not len(rows):
            return
        self.hour_quality[rows] = quality.reshape(-1).astype(np.int64)
        self.hour_value[rows] = values.reshape(-1)
        self.hour_t[rows] = hour

    def command(self, command: Command) -> None:
        """A valve or relay command done: its state holds until a newer reading."""
        state = snap.STATE_OF.get(command.code)
        row = self.row_of_meter.get(command.target)
        if state is None or row is None or command.outcome != "done":
            return
        kind, value = state
        self.commanded[kind][row] = value
        self.commanded_t[kind][row] = command.t

    def groups(self, series: Any, hour: int, today: int) -> None:
        """The last complete hour and today of every group, with the API's definitions."""
        if not self.group_ids:
            return
        n = len(self.group_ids)
        cols = {c: np.asarray(getattr(series, c), dtype=np.float64) for c in series.COLUMNS}
        last = np.flatnonzero(series.t == hour)
        in_today = series.t >= today
        spans = {"LastHour": ({c: (a[:, last[0]] if len(last) else np.zeros(n)) for c, a in cols.items()},
                              hour, int(len(last) > 0)),
                 "Today": ({c: a[:, in_today].sum(axis=1) for c, a in cols.items()}, today, int(in_today.sum()))}
        for name, (period, start, hours) in spans.items():
            d = balance_figures(period, self.norms, self.resolution, self.threshold, partial=name == "Today")
            self.periods[name] = {"Input": d.input, "Consumed": d.consumed, "Imbalance": d.imbalance,
                                  "LossPercent": d.loss_pct, "Completeness": d.completeness / 100.0,
                                  "Flags": d.flags.astype(np.float64), "Start": np.full(n, float(start)),
                                  "Hours": np.full(n, float(hours))}

    def alarm(self, newest: dict[str, Any] | None) -> None:
        """Alarms are events here (``observe_alarms``), not values."""

    def ages(self, now: float) -> None:
        """Every meter's data age as of ``now`` (called every ``age_interval_s``:
        rewriting ten thousand ages at every refresh would be most of the work)."""
        self.age = np.floor(now - self.last_ts)

    # what the publisher writes ----------------------------------------------------------------

    def state(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Valve or relay state (1 open/on, 0 closed/off, NaN unknown) and its time:
        the newer of the last command done and the newest reading."""
        commanded, when = self.commanded[kind], self.commanded_t[kind]
        newer = np.isfinite(commanded) & (when >= np.nan_to_num(self.last_ts, nan=-np.inf))
        return (np.where(newer, commanded, self.reported[kind]),
                np.where(newer, when, self.last_ts))

    def columns(self) -> Iterator[Column]:
        ids = self.meter_ids
        have = np.isfinite(self.last_ts)
        reading_status = np.where(have, GOOD, WAITING)
        yield Column(ids, "Value", "double", self.value, reading_status, self.last_ts)
        yield Column(ids, "Status", "uint16", self.status, reading_status, self.last_ts)
        yield Column(ids, "LastReadingTime", "datetime", self.last_ts, reading_status, self.last_ts)
        yield Column(ids, "DataAge", "uint32", np.maximum(self.age, 0), reading_status, self.last_ts + self.age)
        q = self.hour_quality
        hour_status = np.select([q == Quality.MEASURED, q == Quality.ESTIMATED, q == Quality.MISSING],
                                [GOOD, UNCERTAIN, NO_DATA], WAITING)
        yield Column(ids, "LastHour", "double", self.hour_value, hour_status, self.hour_t)
        yield Column(ids, "LastHourStart", "datetime", self.hour_t, np.where(q >= 0, GOOD, WAITING), self.hour_t)
        for kind, name in (("valve", "Valve"), ("relay", "Relay")):
            state, when = self.state(kind)
            yield Column(ids, name, "bool", state, np.where(np.isfinite(state), GOOD, WAITING), when,
                         present=self.fitted[kind])
        for period, values in self.periods.items():
            yield from self._period_columns(period, values)

    def _period_columns(self, period: str, v: dict[str, np.ndarray]) -> Iterator[Column]:
        ids = self.group_nodes
        start = v["Start"]
        empty = v["Hours"] == 0
        estimated = (v["Flags"].astype(np.int64) & INPUT_ESTIMATED) != 0
        for name in PERIOD_VARIABLES:
            values = v[name]
            if name in ("Flags", "Start", "Hours"):
                status = np.full(len(ids), GOOD)
            else:
                status = np.where(empty | ~np.isfinite(values), NO_DATA,
                                  np.where(estimated & (name in ("Input", "Imbalance", "LossPercent")), UNCERTAIN,
                                           GOOD))
            variant = {"Flags": "uint16", "Hours": "uint16", "Start": "datetime"}.get(name, "double")
            yield Column(ids, f"{period}/{name}", variant, values, status, start)
