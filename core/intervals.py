"""Hourly consumption per meter from its register values, and its totals.

Hour boundaries are in UTC. The register value at a boundary is interpolated
linearly between the readings around it. A boundary is *measured* when a
reading lies within ``tolerance_s`` of it, *estimated* when it is interpolated
across a gap of at most ``max_gap_s``, *missing* otherwise (no reading on one
side, a longer gap, or a counter-reset gap whose pulses are unknown). An hour
takes the worse quality of its two boundaries; an hour that overlaps a reset
gap is missing, since part of its volume is unknown. Missing hours carry no
value: a number there would be invented.

Days and months are in the site's timezone and sum the UTC hours that start
inside them (for timezones with a half-hour offset a local day therefore
starts 30 minutes off; documented in docs/intervals.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Annotated
from zoneinfo import ZoneInfo

import numpy as np
from msgspec import Meta

from balans_edge.core.bus import EventBus, IntervalsUpdated, ReadingsCommitted
from balans_edge.core.calendar import Periods, Step, periods
from balans_edge.core.model import IntervalValue, Quality, ReadingFlag
from balans_edge.core.periods import RegisterTable
from balans_edge.core.storage import PeriodSums, ReadingRows, Storage
from balans_edge.core.tasks import cancel, rerun
from balans_edge.core.times import HOUR, hour_ceil, hour_floor

log = logging.getLogger(__name__)

READ_CHUNK = 500
"""Meters read per query (SQLite's default limit on bound parameters is far higher)."""


@dataclass(frozen=True, slots=True)
class IntervalSettings:
    """``[intervals]``: how readings become hourly consumption."""

    tolerance_s: Annotated[int, Meta(ge=0, le=1800, description="a reading this close to an hour boundary makes the "
                                                                "boundary *measured*")] = 300
    max_gap_s: Annotated[int, Meta(ge=HOUR, le=31 * 24 * HOUR, description=(
        "longest gap between readings that is interpolated (*estimated*); longer gaps are *missing*"))] = 6 * HOUR
    debounce_s: Annotated[float, Meta(ge=0.0, le=3600.0, description=(
        "after new readings, wait this long before recomputing hours, so that many commits share one pass instead "
        "of competing with ingest for the event loop (the API folds pending ranges in before it answers)"))] = 5.0


def hourly(
    rows: ReadingRows, weight: float | np.ndarray, t0: int, t1: int, settings: IntervalSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hours starting at t0, t0+3600, ... < t1 (both hour-aligned): (t, value, quality code).

    ``rows`` are one meter's readings sorted by time, including those just
    outside [t0, t1] so that the boundaries can be interpolated. ``weight`` is
    the meter's pulse weight, or per reading the weight of the pulses counted
    since the reading before it (``RegisterTable.increment_weights``: a meter
    whose weight changed). Missing values are NaN.
    """
    hours = np.arange(t0, t1, HOUR, dtype=np.int64)
    bounds = np.arange(t0, t1 + HOUR, HOUR, dtype=np.int64)
    n = len(rows)
    if n == 0 or not len(hours):
        return hours, np.full(len(hours), np.nan), np.full(len(hours), Quality.MISSING, dtype=np.int8)
    ts = rows.ts
    epoch_start = (rows.flags & ReadingFlag.EPOCH_START) != 0

    i = np.searchsorted(ts, bounds, side="right") - 1  # last reading at or before the boundary
    j = i + 1  # first reading after it
    has_left = i >= 0
    has_right = j < n
    il, jr = np.clip(i, 0, n - 1), np.clip(j, 0, n - 1)
    exact = has_left & (ts[il] == bounds)
    inside = has_left & has_right
    gap = np.where(inside, ts[jr] - ts[il], np.iinfo(np.int64).max)
    near = np.minimum(np.where(has_left, bounds - ts[il], gap), np.where(has_right, ts[jr] - bounds, gap))
    in_reset_gap = inside & epoch_start[jr]
    bq = np.full(len(bounds), Quality.MISSING, dtype=np.int8)
    estimable = inside & (gap <= settings.max_gap_s) & ~in_reset_gap
    bq[estimable] = Quality.ESTIMATED
    bq[estimable & (near <= settings.tolerance_s)] = Quality.MEASURED
    bq[exact] = Quality.MEASURED

    values = np.interp(bounds, ts, _quantity(rows.pulses, weight))
    quality = np.maximum(bq[:-1], bq[1:])

    # Hours overlapping a reset gap (previous reading, first reading of the new epoch).
    for k in np.flatnonzero(epoch_start[1:]) + 1:
        lo, hi = ts[k - 1], ts[k]
        quality[(hours < hi) & (hours + HOUR > lo)] = Quality.MISSING

    result = np.diff(values)
    result[quality == Quality.MISSING] = np.nan
    return hours, result, quality


def _quantity(pulses: np.ndarray, weight: float | np.ndarray) -> np.ndarray:
    """The metered quantity at each reading, up to a constant: pulses times
    weight, each reading's new pulses with their own weight when it varies."""
    p = pulses.astype(np.float64)
    if np.ndim(weight) == 0:
        return p * weight
    steps = np.diff(p) * np.asarray(weight, np.float64)[1:]
    return np.concatenate([p[:1] * weight[0], p[0] * weight[0] + np.cumsum(steps)])


def period_values(p: Periods, sums: PeriodSums) -> list[IntervalValue]:
    """Consumption per period from the sums of its stored hours: the value of the
    known hours and the worst quality, an hour never computed counting as missing.

    A day with a missing hour is reported with the volume that is known and
    quality ``missing``, so nobody mistakes a partial total for a full one; a
    period without any known hour has no value.
    """
    worst = np.where(sums.stored < p.hours, Quality.MISSING, sums.worst)
    return [
        IntervalValue(t, total if known else None, Quality(q))
        for t, total, known, q in zip(p.starts.tolist(), sums.total.tolist(), sums.known.tolist(), worst.tolist(),
                                      strict=True)
    ]


async def consumption(storage: Storage, meter: int, t0: int, t1: int, step: Step, tz: ZoneInfo) -> list[IntervalValue]:
    """A meter's consumption per UTC hour, local day or local month over the hours of
    [t0, t1). Storage sums the hours of each period where they are, so a request
    for fifty years of months moves 600 sums, not 440,000 hours, through Python."""
    p = periods(t0, t1, step, tz)
    return period_values(p, await storage.consumption_periods(meter, p.edges))


class IntervalWorker:
    """Recomputes hourly consumption for the ranges ingest marked dirty.

    The dirty list is a table written in the same transaction as the readings,
    so a crash between ingest and recomputation loses no work.
    """

    def __init__(self, storage: Storage, settings: IntervalSettings | None = None, bus: EventBus | None = None) -> None:
        self.storage = storage
        self.settings = settings or IntervalSettings()
        self.bus = bus
        self._table = RegisterTable({})
        self._registry_version: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.recomputed_hours = 0

    async def _reload_weights(self) -> None:
        """Follow registry changes: the pulse weights of each meter's periods (a
        new period holds only for readings after it; a correction of the past
        marks the readings it changes dirty in its own transaction)."""
        version = await self.storage.registry_version()
        if version != self._registry_version:
            self._table = await self.storage.register_table()
            self._registry_version = version

    def _weight(self, meter: int, readings: ReadingRows) -> float | np.ndarray:
        if meter in self._table.changed:
            return self._table.increment_weights(meter, readings.ts)
        return self._table.current_weight(meter)

    async def process(self, limit: int = 5000) -> int:
        """Recompute every pending range; return how many ranges were done."""
        done_total = 0
        async with self._lock:
            await self.storage.flush()
            await self._reload_weights()
            while True:
                ranges = await self.storage.take_dirty(limit)
                if not ranges:
                    return done_total
                spans: dict[int, list[int]] = defaultdict(lambda: [2**62, -(2**62)])
                for r in ranges:
                    span = spans[r.meter]
                    span[0], span[1] = min(span[0], r.lo), max(span[1], r.hi)
                await self._follow_anchors(spans)
                rows = await self._rows(spans)
                await self.storage.save_intervals(rows, [r.id for r in ranges])
                self.recomputed_hours += len(rows)
                done_total += len(ranges)
                if self.bus is not None:
                    self.bus.publish(
                        IntervalsUpdated(
                            meters=tuple(sorted(spans)),
                            t_min=hour_floor(min(s[0] for s in spans.values())),
                            t_max=hour_ceil(max(s[1] for s in spans.values())),
                        )
                    )

    async def _follow_anchors(self, spans: dict[int, list[int]]) -> None:
        """Readings that landed at or before a later period's start move its
        anchor (the pulses the register continues from): recompute them."""
        moved = [m for m, (lo, _) in spans.items() if m in self._table.changed and lo <= self._table.last_start(m)]
        if moved:
            await self.storage.refresh_anchors(moved)
            await self._reload_weights()

    async def _rows(self, spans: dict[int, list[int]]) -> list[tuple[int, int, float | None, int]]:
        """Hourly rows for every meter's span. Meters with the same hour window
        (the usual case: everyone reported the last hour) are read with one
        query per chunk instead of one per meter."""
        windows: dict[tuple[int, int], list[int]] = defaultdict(list)
        for meter, (lo, hi) in spans.items():
            windows[(hour_floor(lo), max(hour_ceil(hi), hour_floor(lo) + HOUR))].append(meter)
        margin = self.settings.max_gap_s + 1
        rows: list[tuple[int, int, float | None, int]] = []
        for (t0, t1), meters in windows.items():
            meters.sort()
            for i in range(0, len(meters), READ_CHUNK):
                chunk = meters[i : i + READ_CHUNK]
                readings = await self.storage.readings_of(chunk, t0 - margin, t1 + margin + 1)
                starts = np.searchsorted(readings.meter, chunk, side="left")
                ends = np.searchsorted(readings.meter, chunk, side="right")
                await asyncio.sleep(0)  # let sessions and HTTP requests run between chunks
                for meter, a, b in zip(chunk, starts.tolist(), ends.tolist(), strict=True):
                    mine = readings.select(slice(a, b))
                    hours, values, quality = hourly(mine, self._weight(meter, mine), t0, t1, self.settings)
                    rows.extend(
                        (meter, t, None if v != v else v, q)  # v != v: NaN, a missing hour
                        for t, v, q in zip(hours.tolist(), values.tolist(), quality.tolist(), strict=True)
                    )
        return rows

    async def run(self) -> None:
        """Recompute whenever readings are committed (and every minute anyway)."""
        await rerun(self.process, "interval recomputation", self.bus, ReadingsCommitted, self.settings.debounce_s)

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="intervals")

    async def stop(self) -> None:
        """Stop at once: ranges not yet recomputed stay in the durable dirty list
        and are done after the next start, so a backlog never delays shutdown."""
        await cancel(self._task)
        self._task = None
