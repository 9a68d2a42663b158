"""Validity periods of a meter's parameters, and the register value they give.

A meter's pulse weight, base reading and counter, module and channel and
balance group hold from a time on (``valid_from``) until the next period
starts. A registry edit starts a new period; the readings taken before it keep
the parameters they were taken under, so closed history is never rewritten by
an edit. Correcting the past is a separate, audited operation (``corrected``).

The register value of a reading with cumulative pulses ``p`` at time ``ts``,
in the period k that holds at ``ts`` (``valid_from[k] <= ts < valid_from[k+1]``)::

    value = start[k] + (p - anchor[k]) * pulse_weight[k]

where ``anchor[k]`` is the meter's pulses at its last reading at or before
``valid_from[k]`` (0 for the first period) and ``start[k]``, the register at
the change, is ``base_reading[0]`` for the first period and then

    start[k] = start[k-1] + (anchor[k] - anchor[k-1]) * pulse_weight[k-1]

so the register is continuous across a change: the value at the change plus
the new pulses times the new weight. A period whose ``base_reading`` differs
from the previous one's restarts the register from it instead (the dial was
read anew); that jump is not consumption.

Consumption between two readings is their pulse difference times the weight of
the period holding at the later reading's time, taken right-closed
(``valid_from[k] < ts <= valid_from[k+1]``): the pulses up to a reading made
exactly at a change are the old period's. It equals the register's difference
(without restarts) and needs no anchor, so hourly consumption is computed from
the readings alone. Every formula here is the one domain rule: the API, the
exporters and the protocol bridges call ``RegisterTable``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from balans_edge.core.model import Meter
from balans_edge.core.times import iso

PARAMETERS = ("pulse_weight", "base_reading", "base_counter", "module_id", "channel", "group_id")
"""A meter's parameters that hold by period: changing one starts a new period."""
CORRECTABLE = ("pulse_weight", "base_reading", "group_id")
"""Parameters a correction may change in the past. Module, channel and base
counter decide which readings are the meter's and how they chain: changing
them in the past would re-route stored readings, so they only change forward."""

_SPAN = 1 << 34
"""Composite lookup key ``meter * _SPAN + time`` (times clipped to 0 .. 2^34 s, about 544 years)."""


@dataclass(frozen=True, slots=True)
class MeterPeriod:
    """One period of a meter's parameters, from ``valid_from`` until the next one."""

    valid_from: int
    pulse_weight: float
    base_reading: float = 0.0
    base_counter: int = 0
    module_id: int | None = None
    channel: int | None = None
    group_id: str | None = None
    anchor_pulses: int = 0
    """The meter's pulses at its last reading at or before ``valid_from`` (kept by storage)."""

    def same_parameters(self, other: MeterPeriod) -> bool:
        return all(getattr(self, n) == getattr(other, n) for n in PARAMETERS)


def first_period(meter: Meter) -> MeterPeriod:
    """The one period of a meter whose parameters never changed."""
    return MeterPeriod(meter.install_time, **{n: getattr(meter, n) for n in PARAMETERS})


def period_json(p: MeterPeriod) -> dict[str, Any]:
    """A period as the API and the audit show it."""
    out = {f.name: getattr(p, f.name) for f in fields(p)}
    out["valid_from"] = iso(p.valid_from)
    return out


def meter_time_key(meter: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(meter key, time) as one sortable int64, for binary searches over many
    meters at once (times clipped to 0 .. 2^34 s; meter keys stay below 2^29)."""
    return np.asarray(meter, np.int64) * _SPAN + np.clip(np.asarray(t, np.int64), 0, _SPAN - 1)


class RegisterTable:
    """Every period of many meters as arrays, for vectorised register values and weights."""

    def __init__(self, periods: Mapping[int, Sequence[MeterPeriod]]) -> None:
        rows = [(k, p) for k in sorted(periods) for p in sorted(periods[k], key=lambda p: p.valid_from)]
        self.meter = np.array([k for k, _ in rows], dtype=np.int64)
        self.valid_from = np.array([p.valid_from for _, p in rows], dtype=np.int64)
        self.weight = np.array([p.pulse_weight for _, p in rows], dtype=np.float64)
        self.anchor = np.array([p.anchor_pulses for _, p in rows], dtype=np.int64)
        base = np.array([p.base_reading for _, p in rows], dtype=np.float64)
        # start[k]: the base reading where the register (re)starts (a meter's first
        # period, a new base reading), else start[k-1] plus the pulses between the
        # anchors at the previous weight: a running sum within each restarted run.
        n = len(rows)
        restart = np.ones(n, dtype=bool)
        restart[1:] = (self.meter[1:] != self.meter[:-1]) | (base[1:] != base[:-1])
        step = np.zeros(n)
        step[1:] = (self.anchor[1:] - self.anchor[:-1]) * self.weight[:-1]
        step[restart] = 0.0
        run = np.cumsum(restart) - 1
        total = np.cumsum(step)
        first = np.flatnonzero(restart)
        self.start = base[first][run] + total - total[first][run] if n else np.zeros(0)
        self._keys = meter_time_key(self.meter, self.valid_from)
        self.changed = frozenset(k for k in periods if len(periods[k]) > 1)
        """Meters with more than one period."""

    @classmethod
    def of_meters(cls, meters: Iterable[tuple[int, Meter]]) -> RegisterTable:
        """One period per meter from its current parameters (no history known)."""
        return cls({k: [first_period(m)] for k, m in meters})

    def _period(self, meter: np.ndarray, ts: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
        """Index of the period holding at ``ts`` and whether the meter has periods."""
        meter = np.asarray(meter, np.int64)
        if not len(self._keys):
            return np.zeros(len(meter), np.int64), np.zeros(len(meter), bool)
        idx = np.searchsorted(self._keys, meter_time_key(meter, ts), side=side) - 1
        first = np.searchsorted(self.meter, meter, side="left")
        known = (first < len(self.meter)) & (self.meter[np.minimum(first, len(self.meter) - 1)] == meter)
        # Before the first period (a time before installation): the first period's parameters.
        idx = np.where(known, np.maximum(idx, first), 0)
        return idx, known

    def values(self, meter: np.ndarray, ts: np.ndarray, pulses: np.ndarray) -> np.ndarray:
        """Register values of readings (meter key, time, cumulative pulses), all at once:
        ``start[k] + (pulses - anchor[k]) * pulse_weight[k]`` with k the meter's period
        holding at the reading's time (one starting exactly then included; before the
        first period, the first one), which for a meter never edited is
        ``base_reading + pulses * pulse_weight``. NaN for an unknown meter.

        ``pulses`` are the meter's pulses since installation, chained by ingest
        across counter restarts and wraps (the counter and its base never enter)."""
        idx, known = self._period(meter, ts, "right")
        if not len(self.start):  # no meter has periods: every one is unknown
            return np.full(len(idx), np.nan)
        p = np.asarray(pulses, np.int64)
        # A weight stored before the registry's bounds may overflow to inf: every
        # path out (export, Modbus, OPC UA) checks finiteness, so no warning here.
        with np.errstate(over="ignore", invalid="ignore"):
            value = self.start[idx] + (p - self.anchor[idx]) * self.weight[idx]
        return np.where(known, value, np.nan)

    def value(self, meter: int, ts: int, pulses: int) -> float:
        """One reading's register value (see ``values``)."""
        return float(self.values(np.array([meter]), np.array([ts]), np.array([pulses]))[0])

    def increment_weights(self, meter: int, ts: np.ndarray) -> np.ndarray:
        """Per reading of one meter, the weight of the pulses counted since its
        previous reading: the period holding at the reading, right-closed."""
        idx, _ = self._period(np.full(len(ts), meter, np.int64), ts, "left")
        return self.weight[idx] if len(self.weight) else np.zeros(len(ts))

    def _latest(self, meter: int) -> int | None:
        """Index of the meter's latest period, None for an unknown meter."""
        at = int(np.searchsorted(self.meter, meter, side="right")) - 1
        return at if at >= 0 and self.meter[at] == meter else None

    def last_start(self, meter: int) -> int:
        """When the meter's latest period started (-1 for an unknown meter)."""
        at = self._latest(meter)
        return -1 if at is None else int(self.valid_from[at])

    def current_weight(self, meter: int) -> float:
        """The weight of the meter's latest period (0 for an unknown meter)."""
        at = self._latest(meter)
        return 0.0 if at is None else float(self.weight[at])


def corrected(periods: Sequence[MeterPeriod], changes: Mapping[str, Any], t0: int,
              t1: int | None = None) -> list[MeterPeriod]:
    """The periods after a correction that gives ``changes`` (parameter -> value)
    to the time [t0, t1) (t1 None: from t0 on). Periods are split at t0 and t1
    and neighbours left with equal parameters merged. Raises ValueError when
    the correction is not possible."""
    unknown = sorted(set(changes) - set(CORRECTABLE))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: cannot be corrected in the past (correctable: "
                         f"{', '.join(CORRECTABLE)})")
    if not changes:
        raise ValueError("nothing to correct: give at least one of " + ", ".join(CORRECTABLE))
    ordered = sorted(periods, key=lambda p: p.valid_from)
    if not ordered:
        raise ValueError("the meter has no periods")
    if t0 < ordered[0].valid_from:
        raise ValueError("a correction cannot start before the meter's installation")
    if t1 is not None and t1 <= t0:
        raise ValueError("the correction's end must be later than its start")
    split = _split(_split(ordered, t0), t1) if t1 is not None else _split(ordered, t0)
    out = [replace(p, **changes) if p.valid_from >= t0 and (t1 is None or p.valid_from < t1) else p for p in split]
    merged = [out[0]]
    for p in out[1:]:
        if not p.same_parameters(merged[-1]):
            merged.append(p)
    return merged


def _split(periods: list[MeterPeriod], t: int) -> list[MeterPeriod]:
    """Periods with one starting at ``t`` (a copy of the one holding there)."""
    if any(p.valid_from == t for p in periods):
        return periods
    holding = [p for p in periods if p.valid_from < t]
    if not holding:
        return periods
    return sorted([*periods, replace(holding[-1], valid_from=t)], key=lambda p: p.valid_from)
