"""The live state behind both SCADA bridges (the Modbus register image, the
OPC UA variables), read from storage in batches.

Every meter and group of one registry version is a row of numpy columns:
newest reading, reported and commanded valve and relay state, last hour,
and every group's balance periods. ``LiveState`` keeps what both bridges
need and the rules for it (which reading is a bridge's, the register value
of its pulses, the newer of a command and a reading); each bridge subclasses
it to show the values its way (``Snapshot`` writes registers, ``Values``
hands columns to the OPC UA publisher). The loaders here read storage for a
whole state at once: at start, after the registry changed, and for the
meters and groups that bus events name.

A refresh reads first (awaiting storage) and then writes the state in one
synchronous step, so a request served in between sees the old values or the
new ones, never half of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.core.balance_queries import Tree, hourly_balance
from balans_edge.core.calendar import HOUR
from balans_edge.core.components import Command, CommandCode
from balans_edge.core.model import Group, Meter, Status
from balans_edge.core.periods import RegisterTable
from balans_edge.plugins.common.group_periods import Period, periods

if TYPE_CHECKING:
    from balans_edge.core.storage.views import Queries

KINDS = ("valve", "relay")
"""What a meter may be fitted with and a command may move."""
COMMANDS_SCANNED = 1000
"""Newest audited commands read at start for the valve and relay states they set."""
STATE_OF = {
    CommandCode.VALVE_OPEN: ("valve", 1.0), CommandCode.VALVE_CLOSE: ("valve", 0.0),
    CommandCode.RELAY_ON: ("relay", 1.0), CommandCode.RELAY_OFF: ("relay", 0.0),
}
"""Command -> (what it moves, the state it leaves: 1 open/on, 0 closed/off)."""


def hour_marks(now: float, tz: ZoneInfo) -> tuple[int, int]:
    """(start of the last complete hour, start of today in the site's timezone),
    both as unix UTC times. "Today" counts the complete hours from local midnight."""
    current = int(now) - int(now) % HOUR
    local = datetime.fromtimestamp(current, tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return current - HOUR, int(midnight.timestamp())


class KeyRows:
    """Rows of a bridge's meters for internal meter keys, and which keys are its
    own: a binary search over the sorted keys for a whole batch of readings at once."""

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


class LiveState:
    """The meters (by internal key, ``None`` for one storage does not know) and
    groups of one registry version, and what is known of them now."""

    def __init__(self, meters: Sequence[tuple[int | None, Meter]], groups: Sequence[Group], tz: ZoneInfo,
                 threshold: float, resolution: dict[str, float] | None = None) -> None:
        self.tz = tz
        self.threshold = threshold
        n = len(meters)
        self.keys = [int(k) for k, _ in meters if k is not None]
        self.row_of_key = {int(k): i for i, (k, _) in enumerate(meters) if k is not None}
        self.rows_of = KeyRows(np.array([-1 if k is None else k for k, _ in meters], dtype=np.int64))
        self.row_of_meter = {m.meter_id: i for i, (_, m) in enumerate(meters)}
        self.register = RegisterTable.of_meters((k, m) for k, m in meters if k is not None)
        """Pulses -> register value: the meters' parameter periods once ``load_all`` read them."""
        self.last_ts = np.full(n, np.nan)
        self.fitted = {k: np.array([k in m.flags for _, m in meters], dtype=bool) for k in KINDS}
        self.reported = {k: np.full(n, np.nan) for k in KINDS}
        """valve / relay state from the newest reading's status bits (NaN: no reading)."""
        self.commanded = {k: np.full(n, np.nan) for k in KINDS}
        self.commanded_t = {k: np.full(n, -np.inf) for k in KINDS}
        self.group_ids = [g.group_id for g in groups]
        self.norms = np.array([np.nan if g.loss_norm_pct is None else g.loss_norm_pct for g in groups])
        self.resolution = np.array([(resolution or {}).get(g, 0.0) for g in self.group_ids], dtype=np.float64)
        self.shown_hour: int | None = None
        """Start of the last complete hour read (a new hour reads it and today again)."""

    # filled by the loaders ----------------------------------------------------------

    def readings(self, rows_of: Any) -> None:
        """The newest readings (``ReadingRows``) of this state's meters: register
        value, status and the reported valve and relay states."""
        rows, mine = self.rows_of(rows_of.meter)
        rows = rows[mine]
        if not len(rows):
            return
        ts = rows_of.ts[mine]
        pulses = rows_of.pulses[mine].astype(np.int64)
        status = rows_of.status[mine].astype(np.int64)
        value = self.register.values(rows_of.meter[mine], ts, pulses)
        self.last_ts[rows] = ts
        self.reported["valve"][rows] = np.where(status & Status.VALVE_CLOSED, 0.0, 1.0)
        self.reported["relay"][rows] = np.where(status & Status.RELAY_OFF, 0.0, 1.0)
        self.show_readings(rows, ts, value, pulses, status)

    def last_hour(self, keys: Sequence[int], hour: int, values: np.ndarray, quality: np.ndarray) -> None:
        """Consumption of ``keys`` in the hour starting at ``hour`` (one column of the
        consumption matrix) and its quality (0 measured, 1 estimated, 2 missing)."""
        rows, _ = self.rows_of(np.asarray(keys, dtype=np.int64))
        if len(rows):
            self.show_last_hour(rows, hour, values.reshape(-1), quality.reshape(-1).astype(np.int64))

    def command(self, command: Command) -> None:
        """A valve or relay command done (from any source): its state holds until a newer reading."""
        state = STATE_OF.get(command.code)
        row = self.row_of_meter.get(command.target)
        if state is None or row is None or command.outcome != "done":
            return
        kind, value = state
        self.commanded[kind][row] = value
        self.commanded_t[kind][row] = command.t
        self.show_states(np.array([row]))

    def groups(self, series: Any, hour: int, today: int) -> None:
        """The last complete hour and today of every group, with the API's definitions."""
        if self.group_ids:
            self.show_periods(periods(series, hour, today, self.norms, self.resolution, self.threshold))

    def alarm(self, newest: dict[str, Any] | None) -> None:
        """The newest alarm (a bridge that shows alarms as events ignores it)."""

    def state(self, kind: str, rows: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Valve or relay state of ``rows`` (1 open/on, 0 closed/off, NaN unknown)
        and its time: the newer of the last command done and the newest reading."""
        commanded, when, last = self.commanded[kind][rows], self.commanded_t[kind][rows], self.last_ts[rows]
        newer = np.isfinite(commanded) & (when >= np.nan_to_num(last, nan=-np.inf))
        return np.where(newer, commanded, self.reported[kind][rows]), np.where(newer, when, last)

    # how a bridge shows them -----------------------------------------------------------

    def show_readings(self, rows: np.ndarray, ts: np.ndarray, value: np.ndarray, pulses: np.ndarray,
                      status: np.ndarray) -> None:
        """New readings of ``rows``: time, register value, pulses, status bits."""

    def show_last_hour(self, rows: np.ndarray, hour: int, values: np.ndarray, quality: np.ndarray) -> None:
        """The last hour of ``rows``."""

    def show_states(self, rows: np.ndarray) -> None:
        """Valve and relay states of ``rows`` changed (see ``state``)."""

    def show_periods(self, periods: dict[str, Period]) -> None:
        """New ``last_hour`` and ``today`` of every group."""


async def resolutions(queries: Queries) -> dict[str, float]:
    """Every group's resolution (below it a negative imbalance is noise), as the API's."""
    tree = await Tree.current(queries)
    return {g: tree.resolution(g) for g in tree.groups}


async def load_all(state: LiveState, queries: Queries, now: float) -> None:
    """Everything of a new state from storage (at start and after the registry changed)."""
    state.register = await queries.register_table(state.keys)
    await refresh_readings(state, queries, None)
    hour, today = hour_marks(now, state.tz)
    await refresh_hour(state, queries, None, hour)
    await refresh_groups(state, queries, hour, today)
    state.shown_hour = hour
    commands = await queries.journal_list("commands", COMMANDS_SCANNED)
    for record in reversed(commands):
        try:
            code = CommandCode(record["code"])
        except ValueError:
            continue
        state.command(Command(record["target"], code, record["requested_by"] or "", record["reason"] or "",
                              t=int(record["t"] or 0), outcome=record["outcome"] or ""))
    alarms = await queries.journal_list("alarms", 1)
    state.alarm(alarms[0] if alarms else None)


async def refresh_readings(state: LiveState, queries: Queries, keys: Sequence[int] | None) -> None:
    wanted = state.keys if keys is None else [k for k in keys if k in state.row_of_key]
    if not wanted:
        return
    rows = await queries.latest_readings(wanted)
    state.readings(rows)


async def refresh_hour(state: LiveState, queries: Queries, keys: Sequence[int] | None, hour: int) -> None:
    wanted = state.keys if keys is None else [k for k in keys if k in state.row_of_key]
    if not wanted:
        return
    values, quality = await queries.consumption_matrix(wanted, hour, hour + HOUR)
    state.last_hour(wanted, hour, values, quality)


async def refresh_groups(state: LiveState, queries: Queries, hour: int, today: int) -> None:
    if not state.group_ids:
        return
    # Hour-aligned: a day may start between two UTC hours (a timezone half an hour off).
    # Hours nobody reported count as missing, as in the API (``hourly_balance``).
    first = min(hour, today)
    series = await hourly_balance(queries, await Tree.current(queries), state.group_ids, first - first % HOUR,
                                  hour + HOUR, hour + HOUR)
    state.groups(series, hour, today)


async def refresh_new_hour(state: LiveState, queries: Queries, now: float) -> bool:
    """At a new hour: the last complete hour and today read again. Whether it was one."""
    hour, today = hour_marks(now, state.tz)
    if hour == state.shown_hour:
        return False
    await refresh_hour(state, queries, None, hour)
    await refresh_groups(state, queries, hour, today)
    state.shown_hour = hour
    return True
