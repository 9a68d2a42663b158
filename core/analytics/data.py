"""What the loss detectors see of one balance group over a window of hours.

Detectors are pure functions of a ``GroupData``: numpy arrays of the
members' hourly consumption, quality and module status, the group's input,
consumed volume and imbalance. The server builds it from storage
(``load_group_data``), the scenario generator builds it from its ground
truth for tests and the evaluation benchmark, so a detector is scored on
exactly the arrays it sees in production.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.core.calculated import TagSamples, formula_of
from balans_edge.core.calculated import evaluate as calculated_input
from balans_edge.core.model import Group, Meter, Quality
from balans_edge.core.storage.views import Queries
from balans_edge.core.times import DAY, HOUR, hour_of_day, weekday


@dataclass(slots=True)
class GroupData:
    """One group over hours ``t`` (UTC hour starts); rows of the member arrays are ``meter_ids``."""

    group: Group
    t: np.ndarray
    """(H,) int64 hour starts."""
    meter_ids: list[str]
    """The group's direct member meters."""
    values: np.ndarray
    """(M, H) hourly consumption in the group's unit; NaN where unknown."""
    quality: np.ndarray
    """(M, H) int8 codes: 0 measured, 1 estimated, 2 missing, 3 not installed."""
    status: np.ndarray
    """(M, H) int64: module status flags (``model.Status``) of the readings that close each hour, OR-ed."""
    input: np.ndarray
    """(H,) the group's input; NaN where an input meter (or a term of its formula) is missing."""
    others: np.ndarray
    """(H,) what member groups took (their inputs); 0 without member groups, NaN where unknown."""
    local_hour: np.ndarray
    """(H,) hour of the day in the site's timezone, 0..23."""
    weekday: np.ndarray
    """(H,) local day of the week, Monday 0."""
    pulse_weight: np.ndarray
    """(M,) unit per pulse of each member meter: its resolution."""
    reverse_allowed: frozenset[str] = frozenset()
    """Members whose flow may run backwards (registry flag ``reverse_allowed``)."""
    derived: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    """Results that several detectors need, computed once per window (a window is
    not changed once the detectors look at it; ``slice`` makes a new one)."""

    @property
    def consumed(self) -> np.ndarray:
        """(H,) members' consumption (unknown hours count 0) plus member groups' inputs."""
        return np.nansum(self.values, axis=0) + self.others

    @property
    def blind(self) -> np.ndarray:
        """(M,) members unknown for most of the window (a lost module, a dead battery).
        They are left out of the imbalance altogether: their use then sits in it as a
        steady offset, which the detectors (looking for changes) can live with, where
        counting them would make nearly every hour unknown."""
        known = ~np.isnan(self.values) | (self.quality == Quality.ABSENT)
        return known.mean(axis=1) < 0.5 if self.hours else np.zeros(len(self.meter_ids), bool)

    @property
    def imbalance(self) -> np.ndarray:
        """(H,) input minus consumed; NaN where the input or a member that is not blind is unknown."""
        seen = ~self.blind
        known = ~np.isnan(self.values[seen]) | (self.quality[seen] == Quality.ABSENT)
        consumed = np.nansum(self.values[seen], axis=0) + self.others
        return np.where(known.all(axis=0), self.input - consumed, np.nan)

    @property
    def hours(self) -> int:
        return len(self.t)

    @property
    def local_day(self) -> np.ndarray:
        """(H,) an id of the local calendar day of each hour (consistent within a window),
        derived from the local hour so that the detectors need no timezone."""
        offset = (self.local_hour - hour_of_day(self.t) + 12) % 24 - 12
        return (self.t // HOUR + offset) // 24

    def slice(self, start: int, stop: int) -> GroupData:
        """The hours ``start:stop`` of this window (a shorter window of the same group)."""
        h = slice(start, stop)
        return GroupData(self.group, self.t[h], self.meter_ids, self.values[:, h], self.quality[:, h],
                         self.status[:, h], self.input[h], self.others[h], self.local_hour[h], self.weekday[h],
                         self.pulse_weight, self.reverse_allowed)


def local_calendar(t: np.ndarray, tz: ZoneInfo) -> tuple[np.ndarray, np.ndarray]:
    """(local hour, local weekday) of UTC hour starts, with each distinct UTC day's
    offset looked up once (DST changes at night are taken per day, which is close
    enough for profiles and night windows)."""
    if not len(t):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    days, inverse = np.unique(t // DAY, return_inverse=True)
    offsets = np.array([datetime.fromtimestamp(int(d) * DAY + DAY // 2, tz).utcoffset().total_seconds()
                        for d in days], dtype=np.int64)
    local = t + offsets[inverse]
    return hour_of_day(local), weekday(local)


def status_by_hour(meter: np.ndarray, ts: np.ndarray, status: np.ndarray, rows: dict[int, int], t0: int,
                   hours: int) -> np.ndarray:
    """OR of the status flags of the readings closing each hour: a reading at
    ``ts`` tells about the hour before it (ts exactly on the hour closes hour
    ts - 1 h)."""
    out = np.zeros((len(rows), hours), dtype=np.int64)
    if not len(ts):
        return out
    h = (ts - 1 - t0) // HOUR
    row = np.array([rows.get(int(m), -1) for m in meter], dtype=np.int64)
    ok = (row >= 0) & (h >= 0) & (h < hours) & (status != 0)
    np.bitwise_or.at(out, (row[ok], h[ok]), status[ok])
    return out


async def load_group_data(storage: Queries, group: Group, members: list[Meter], child_inputs: list[tuple[str, int]],
                          keys: dict[str, int], t0: int, t1: int, tz: ZoneInfo, *, tags: TagSamples | None = None,
                          calculated_children: Sequence[Group] = ()) -> GroupData:
    """A group's window from storage: hourly consumption of its members and inputs,
    and the status flags of its members' readings. ``child_inputs`` are the
    (meter_id, sign) inputs of its member groups, ``calculated_children`` its
    member groups whose input is a formula; ``tags`` reads the samples of the
    tags formulas name (``core.calculated``)."""
    t = np.arange(t0, t1, HOUR, dtype=np.int64)
    ids = [m.meter_id for m in members]
    values, quality = await storage.consumption_matrix([keys[i] for i in ids], t0, t1)
    for r, m in enumerate(members):
        absent = (t + HOUR <= m.install_time) | ((t >= m.removed_time) if m.removed_time is not None else False)
        quality[r, absent] = Quality.ABSENT
        values[r, absent] = np.nan
    input_ = await group_input(storage, group, keys, t0, t1, tags)
    others = await _signed_sum(storage, child_inputs, keys, t0, t1) if child_inputs else np.zeros(len(t))
    for child in calculated_children:
        others = others + await group_input(storage, child, keys, t0, t1, tags)
    readings = await storage.readings_of([keys[i] for i in ids], t0 + 1, t1 + 1)
    status = status_by_hour(readings.meter, readings.ts, readings.status, {keys[i]: r for r, i in enumerate(ids)},
                            t0, len(t))
    local_hour, weekday = local_calendar(t, tz)
    weights = np.array([m.pulse_weight for m in members], dtype=np.float64)
    reversible = frozenset(m.meter_id for m in members if "reverse_allowed" in m.flags)
    return GroupData(group, t, ids, values, quality, status, input_, others, local_hour, weekday, weights,
                     reversible)


async def group_input(storage: Queries, group: Group, keys: dict[str, int], t0: int, t1: int,
                      tags: TagSamples | None = None) -> np.ndarray:
    """(H,) the group's input over the hours [t0, t1): the signed sum of its input
    meters or its formula's value; NaN where unknown (a missing meter or term)."""
    if not group.formula:
        return await _signed_sum(storage, [(i.meter_id, i.sign) for i in group.inputs], keys, t0, t1)
    t = np.arange(t0, t1, HOUR, dtype=np.int64)
    formula = formula_of(group)
    if formula is None:
        return np.full(len(t), np.nan)
    ids = [m for m in formula.meters if m in keys]
    values, quality = await storage.consumption_matrix([keys[m] for m in ids], t0, t1)
    series = await tags.read(formula.tags, t0, t1) if formula.tags and tags is not None else {}
    meters = {m: (values[r], quality[r]) for r, m in enumerate(ids)}
    return calculated_input(formula, t, meters, series)[0]


async def _signed_sum(storage: Queries, meters: list[tuple[str, int]], keys: dict[str, int], t0: int,
                      t1: int) -> np.ndarray:
    """Sum of sign x value per hour; NaN where any of the meters is missing."""
    known = [(keys[m], s) for m, s in meters if m in keys]
    values, quality = await storage.consumption_matrix([k for k, _ in known], t0, t1)
    signs = np.array([s for _, s in known], dtype=np.float64)
    total = (signs[:, None] * values).sum(axis=0)
    missing = (quality == Quality.MISSING).any(axis=0) | np.isnan(values).any(axis=0) | (len(known) < len(meters))
    return np.where(missing, np.nan, total)
