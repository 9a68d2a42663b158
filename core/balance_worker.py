"""Keeps the stored hourly balance of every group in step with the data.

Storage marks hours dirty in the same transaction that changes what a balance
depends on (hourly consumption, the group tree, a meter's membership), so late
data, a back-fill or a registry edit is never left out, even across a crash.
This worker takes the dirty hours, reads the consumption of every meter the
tree uses for those hours as one matrix, computes all groups at once
(``balance.compute``) and stores the rows with the dirty marks removed.

Calculated inputs read their tags' samples here too (``core.calculated``),
over the same hours. An hour is computed when its meters' hourly consumption
is, after the hour's end: the tags' samples of the hour were stored as they
were polled, so they are there by then.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from msgspec import Meta

from balans_edge.core.balance import BalanceSeries, BalanceTree, compute
from balans_edge.core.bus import BalanceUpdated, EventBus, IntervalsUpdated
from balans_edge.core.calculated import TagSamples
from balans_edge.core.model import Quality
from balans_edge.core.storage import Storage
from balans_edge.core.tasks import cancel, rerun
from balans_edge.core.times import HOUR, hour_ceil, hour_floor

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BalanceSettings:
    """``[balance]``: how balances are computed and judged."""

    completeness_threshold: Annotated[float, Meta(ge=0.0, le=1.0, description=(
        "an hour (day, month) whose member meters are measured or estimated for less than this share is flagged "
        "`incomplete`"))] = 0.95
    chunk_hours: Annotated[int, Meta(ge=1, le=24 * 62, description="hours computed per pass: bounds memory (meters x "
                                                                   "hours values) on big sites")] = 168
    debounce_s: Annotated[float, Meta(ge=0.0, le=3600.0, description=(
        "after hourly consumption changed, wait this long before recomputing balances, so that many changes share "
        "one pass"))] = 5.0


def merge(ranges: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """Hour-aligned spans covering the dirty ranges, overlapping ones merged."""
    spans: list[list[int]] = []
    for lo, hi in sorted((hour_floor(lo), hour_ceil(hi)) for _, lo, hi in ranges):
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    return [(lo, hi) for lo, hi in spans]


@dataclass(frozen=True, slots=True)
class Compiled:
    """The tree and, per meter row, when the meter was installed and removed."""

    tree: BalanceTree
    installed: np.ndarray
    removed: np.ndarray


class BalanceWorker:
    """Recomputes the balance of the dirty hours, all groups at once."""

    def __init__(self, storage: Storage, settings: BalanceSettings | None = None, bus: EventBus | None = None,
                 tags: TagSamples | None = None) -> None:
        self.storage = storage
        self.settings = settings or BalanceSettings()
        self.bus = bus
        self.tags = tags
        """Where calculated inputs read their tags (None: tag terms are missing)."""
        self._compiled: Compiled | None = None
        self._version: int | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.recomputed_hours = 0

    async def compiled(self) -> Compiled:
        """The compiled group tree, rebuilt when the registry changed."""
        version = await self.storage.registry_version()
        if self._compiled is None or version != self._version:
            groups = await self.storage.registry_list("groups")
            meters = await self.storage.meters_by_key()
            tree = BalanceTree.compile(groups, meters, await self.storage.meter_periods())
            by_key = dict(meters)
            rows = [by_key[int(k)] for k in tree.meter_keys]
            installed = np.array([m.install_time for m in rows], dtype=np.int64)
            removed = np.array([m.removed_time if m.removed_time is not None else 2**62 for m in rows], dtype=np.int64)
            self._compiled = Compiled(tree, installed, removed)
            self._version = version
        return self._compiled

    async def process(self, limit: int = 10000) -> int:
        """Recompute every dirty hour; return how many hours were computed."""
        done = 0
        async with self._lock:
            await self.storage.flush()
            while True:
                ranges = await self.storage.take_balance_dirty(limit)
                if not ranges:
                    return done
                compiled = await self.compiled()
                spans = merge(ranges)
                step = self.settings.chunk_hours * HOUR
                chunks = [(t, min(t + step, hi)) for lo, hi in spans for t in range(lo, hi, step)]
                for i, (t0, t1) in enumerate(chunks):
                    series = await self._compute(compiled, t0, t1)
                    last = i == len(chunks) - 1
                    await self.storage.save_balance(series, [r[0] for r in ranges] if last else [])
                    done += len(series.t)
                    await asyncio.sleep(0)  # let requests and sessions run between chunks
                self.recomputed_hours += done
                if self.bus is not None and chunks:
                    groups = tuple(compiled.tree.group_ids)
                    self.bus.publish(BalanceUpdated(groups, chunks[0][0], chunks[-1][1]))

    async def _compute(self, compiled: Compiled, t0: int, t1: int) -> BalanceSeries:
        tree = compiled.tree
        # A meter that moved between groups has a row per group: read it once.
        keys, row = np.unique(tree.meter_keys, return_inverse=True)
        if len(keys) == len(tree.meter_keys):
            values, quality = await self.storage.consumption_matrix(tree.meter_keys, t0, t1)
        else:
            values, quality = await self.storage.consumption_matrix(keys, t0, t1)
            values, quality = values[row], quality[row]
        t = np.arange(t0, t1, HOUR, dtype=np.int64)
        # An hour in which the meter was not installed does not count as a member's missing hour,
        # nor one in which it was in another group (its value counts there).
        absent = (t[None, :] + HOUR <= compiled.installed[:, None]) | (t[None, :] >= compiled.removed[:, None])
        absent |= (t[None, :] < tree.row_from[:, None]) | (t[None, :] >= tree.row_until[:, None])
        quality[absent] = Quality.ABSENT
        values[absent] = np.nan
        wanted = tree.tags
        tags = await self.tags.read(wanted, t0, t1) if wanted and self.tags is not None else {}
        return compute(tree, t, values, quality, tags)

    async def run(self) -> None:
        """Recompute whenever hourly consumption changed (and every minute anyway)."""
        await rerun(self.process, "balance recomputation", self.bus, IntervalsUpdated, self.settings.debounce_s)

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="balance")

    async def stop(self) -> None:
        """Stop at once: dirty hours stay marked and are done after the next start."""
        await cancel(self._task)
        self._task = None
