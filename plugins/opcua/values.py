"""What the live variables show: every meter's and group's values as numpy
columns, read from storage in batches.

The storage reads, the rules for a reading, a command and a balance period
are the Modbus server's too (``plugins.common.live``, ``LiveState``), so both
bridges show the same numbers from the same reads. ``Values`` keeps them in
the form the address space needs: ``columns()`` hands each live variable to
the publisher as arrays of value, status and source time; nothing here knows
OPC UA beyond the names of the variables.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.core.balance_figures import BALANCE_FLAGS
from balans_edge.core.model import Group, Meter, Quality
from balans_edge.plugins.common.group_periods import Period
from balans_edge.plugins.common.live import KINDS, LiveState
from balans_edge.plugins.opcua.model import PERIOD_VARIABLES, group_id, meter_id

GOOD, UNCERTAIN, NO_DATA, WAITING = 0, 1, 2, 3
"""Status of a value: Good, Uncertain_SubstituteValue (estimated), Bad_NoData
(not defined for this period), Bad_WaitingForInitialData (nothing read yet)."""
INPUT_ESTIMATED = 1 << BALANCE_FLAGS["input_estimated"]
PERIODS = {"last_hour": "LastHour", "today": "Today"}
"""A period of the live state -> its object under a group."""


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


class Values(LiveState):
    """Live values of the meters and groups of one registry version."""

    def __init__(self, meters: Sequence[tuple[int, Meter]], groups: Sequence[Group], tz: ZoneInfo,
                 threshold: float, resolution: dict[str, float] | None = None) -> None:
        super().__init__(meters, groups, tz, threshold, resolution)
        n = len(meters)
        self.meter_ids = [meter_id(m.meter_id) for _, m in meters]
        self.value = np.full(n, np.nan)
        self.status = np.full(n, np.nan)
        self.hour_value = np.full(n, np.nan)
        self.hour_quality = np.full(n, -1, dtype=np.int64)
        self.hour_t = np.full(n, np.nan)
        self.age = np.full(n, np.nan)
        self.group_nodes = [group_id(g.group_id) for g in groups]
        self.periods: dict[str, dict[str, np.ndarray]] = {}

    # what the live state shows (called by plugins.common.live) ---------------------------

    def show_readings(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray, pulses: np.ndarray,
                      status: np.ndarray) -> None:
        self.value[rows] = value
        # The age of a new reading now; every age only every age_interval_s (see ages).
        self.age[rows] = np.floor(time.time() - self.last_ts[rows])
        self.status[rows] = status & 0xFFFF

    def show_last_hour(self, rows: np.ndarray, hour: int, values: np.ndarray, quality: np.ndarray) -> None:
        self.hour_quality[rows] = quality
        self.hour_value[rows] = values
        self.hour_t[rows] = hour

    def show_periods(self, periods: dict[str, Period]) -> None:
        n = len(self.group_ids)
        for key, period in periods.items():
            d = period.values
            self.periods[PERIODS[key]] = {
                "Input": d.input, "Consumed": d.consumed, "Imbalance": d.imbalance, "LossPercent": d.loss_pct,
                "Completeness": d.completeness / 100.0, "Flags": d.flags.astype(np.float64),
                "Start": np.full(n, float(period.start)), "Hours": np.full(n, float(period.hours))}

    def ages(self, now: float) -> None:
        """Every meter's data age as of ``now`` (called every ``age_interval_s``:
        rewriting ten thousand ages at every refresh would be most of the work)."""
        self.age = np.floor(now - self.last_ts)

    # what the publisher writes ----------------------------------------------------------------

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
        for kind, name in zip(KINDS, ("Valve", "Relay"), strict=True):
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
