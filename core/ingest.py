"""The ingest path every driver uses: raw counters in, durable register values out.

A batch of raw readings (module, channel, time, counter, status) is mapped to
meters, turned into cumulative pulses since the meter's installation and
committed in one transaction; only then does ``ingest`` return, and only then
may the driver acknowledge the device. ``ReadingsCommitted`` goes to the bus
after the commit without waiting for any subscriber (``EventBus.publish``
never waits), so a slow or stuck subscriber never delays an acknowledgement.

Rules (see docs/ingest.md):
- counters wrap modulo 2^32; a jump of 2^31 or more is a counter that went
  backwards: negative pulses when it lost less than it still holds (a meter
  running backwards) or the meter is allowed to run backwards
  (``reverse_allowed``), otherwise a reset the module did not flag;
- COUNTER_RESET starts a new epoch: the pulses since the module restarted are
  counted, the ones before the restart are unknown and the interval since the
  last good reading is flagged incomplete (never invented, never hidden);
- a reading is idempotent on (meter, ts); a different counter for an existing
  (meter, ts) is a conflict: the stored value wins and the conflict is counted;
- out-of-order and back-filled readings are accepted: the meter's readings
  from the one before the earliest new reading on are re-chained;
- readings nobody claims go to the quarantine table, not to the floor;
- readings from the future (beyond the clock tolerance) are rejected and counted.

Everything per reading is numpy over the whole batch; Python loops run per
meter only on the rare out-of-order path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from msgspec import Meta

from balans_edge.core.bus import EventBus, ReadingsCommitted
from balans_edge.core.model import COUNTER_MODULUS, Meter, RawReading, ReadingFlag, Status
from balans_edge.core.periods import MeterPeriod, first_period, meter_time_key
from balans_edge.core.storage import IngestWrite, ModuleHealth, ModuleLink, ReadingRows, Storage

log = logging.getLogger(__name__)

MASK = COUNTER_MODULUS - 1
BACKWARDS = COUNTER_MODULUS >> 1
CHANNELS = 4  # channel numbers 1..3 packed next to the module id
REPLAY_CHUNK = 10_000
"""Quarantined readings one replay step ingests (one transaction)."""


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """``[ingest]``: how readings are accepted."""

    clock_tolerance_s: Annotated[int, Meta(ge=0, le=86400, description="readings stamped later than now + this are "
                                                                        "rejected (counted as `future`)")] = 300
    registry_check_s: Annotated[float, Meta(ge=0.0, le=3600.0, description="how often ingest checks the registry "
                                                                           "for changes")] = 1.0
    quarantine_max_rows: Annotated[int, Meta(ge=1000, le=100_000_000, description=(
        "readings from unknown modules or channels kept at most; beyond it the oldest received are dropped and "
        "counted"))] = 1_000_000
    quarantine_max_age_days: Annotated[int, Meta(ge=1, le=3650, description="quarantined readings received longer "
                                                                            "ago are dropped and counted")] = 90
    quarantine_check_s: Annotated[float, Meta(ge=0.01, le=86400.0, description="how often the quarantine is held "
                                                                               "to the two bounds above")] = 60.0


@dataclass(slots=True)
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    quarantined: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    resets: int = 0

    def add(self, other: IngestResult) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.conflicts += other.conflicts
        self.quarantined += other.quarantined
        self.rejected.update(other.rejected)
        self.resets += other.resets

    def as_dict(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "quarantined": self.quarantined,
            "rejected": dict(self.rejected),
            "resets": self.resets,
        }


@dataclass(slots=True)
class ReadingBatch:
    """Raw readings as columns (int64 arrays of equal length)."""

    module: np.ndarray
    channel: np.ndarray
    ts: np.ndarray
    counter: np.ndarray
    status: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def of(cls, readings: Iterable[RawReading]) -> ReadingBatch:
        rows = [(r.module_id, r.channel, r.ts, r.counter, r.status) for r in readings]
        if not rows:
            z = np.zeros(0, dtype=np.int64)
            return cls(z, z, z, z, z)
        a = np.array(rows, dtype=np.int64)
        return cls(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4])

    def take(self, idx: np.ndarray) -> ReadingBatch:
        return ReadingBatch(self.module[idx], self.channel[idx], self.ts[idx], self.counter[idx], self.status[idx])


class MeterMap:
    """Vectorised lookup (module, channel, time) -> meter key.

    A channel may carry a sequence of meters over time (replacements, a module
    moved to another meter): the meter whose period on it began last at or
    before the reading's time owns it, unless that period had ended by then
    (the meter was removed or moved off the channel). Built from the meters'
    parameter periods (``core.periods``), one entry per stretch of time a meter
    spent on one channel.

    A meter moved to another module or channel, or given a new base counter,
    starts a counter epoch: its first reading there is chained from the
    period's base counter, not from the previous module's counter.
    """

    def __init__(self, meters: list[tuple[int, Meter]],
                 periods: Mapping[int, Sequence[MeterPeriod]] | None = None) -> None:
        never = int(np.iinfo(np.int64).max)
        entries: list[tuple[int, int, int, int]] = []  # (channel code, from, until, meter key)
        epochs: list[tuple[int, int, int]] = []  # (meter key, from, base counter)
        for k, m in meters:
            ps = (periods or {}).get(k) or [first_period(m)]
            end = never if m.removed_time is None else m.removed_time
            for i, p in enumerate(ps):
                until = min(ps[i + 1].valid_from, end) if i + 1 < len(ps) else end
                wiring = (p.module_id, p.channel, p.base_counter)
                if i == 0 or wiring != (ps[i - 1].module_id, ps[i - 1].channel, ps[i - 1].base_counter):
                    epochs.append((k, p.valid_from, p.base_counter))
                if p.module_id is None or p.channel is None:
                    continue
                code = p.module_id * CHANNELS + p.channel
                if entries and entries[-1][0] == code and entries[-1][3] == k and entries[-1][2] == p.valid_from:
                    entries[-1] = (code, entries[-1][1], until, k)  # same channel, only other parameters changed
                else:
                    entries.append((code, p.valid_from, until, k))
        entries.sort(key=lambda e: (e[0], e[1]))
        table = np.array(entries, dtype=np.int64).reshape(-1, 4)
        self.chan, self.install, self.removed, self.key = table.T.copy()
        size = max((k for k, _ in meters), default=0) + 1
        self.base_counter = np.zeros(size, dtype=np.int64)
        self.reversible = np.zeros(size, dtype=bool)
        for k, m in meters:
            self.base_counter[k] = m.base_counter
            self.reversible[k] = "reverse_allowed" in m.flags
        self.size = size
        ep = np.array(sorted(epochs), dtype=np.int64).reshape(-1, 3)
        self.epoch_meter, self.epoch_base = ep[:, 0].copy(), ep[:, 2].copy()
        self._epoch_keys = meter_time_key(ep[:, 0], ep[:, 1])
        self.rewired = len(ep) > len(np.unique(ep[:, 0]))
        """Some meter has more than one counter epoch (so chaining must look for restarts)."""

    def epoch(self, meter: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Index of the counter epoch of each (meter, time)."""
        idx = np.searchsorted(self._epoch_keys, meter_time_key(meter, ts), side="right") - 1
        return np.maximum(idx, np.searchsorted(self.epoch_meter, meter, side="left"))

    def restarts(self, meter: np.ndarray, ts: np.ndarray, prev_epoch: np.ndarray | None,
                 starts: np.ndarray) -> np.ndarray | None:
        """For ``chain``: per reading (sorted by meter, time), the counter to chain
        it from when it is the first of a new epoch, else -1. ``prev_epoch`` is the
        epoch of the reading before each segment (-1: none, chain from the base
        counter). None when no meter was ever re-wired."""
        if not self.rewired or not len(ts):
            return None
        e = self.epoch(meter, ts)
        before = np.empty(len(e), dtype=np.int64)
        before[1:] = e[:-1]
        before[starts] = prev_epoch
        return np.where(before != e, self.epoch_base[e], -1)

    def lookup(self, module: np.ndarray, channel: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Meter key per reading (-1 if none) and a reason code for the -1s
        (0 claimed, 1 unknown module/channel, 2 before install, 3 meter removed)."""
        n = len(ts)
        keys = np.full(n, -1, dtype=np.int64)
        reason = np.ones(n, dtype=np.int8)
        if not len(self.chan) or not n:
            return keys, reason
        q = module * CHANNELS + channel
        last = np.searchsorted(self.chan, q, side="right") - 1
        known = (last >= 0) & (self.chan[np.maximum(last, 0)] == q)
        idx = np.where(known, last, 0)
        ok = known & (self.install[idx] <= ts)
        # Readings older than the newest meter of their channel: walk back to
        # the meter that owned the channel then (rare: meter replacements).
        for i in np.flatnonzero(known & ~ok):
            j = idx[i]
            while j >= 0 and self.chan[j] == q[i] and self.install[j] > ts[i]:
                j -= 1
            if j >= 0 and self.chan[j] == q[i]:
                idx[i] = j
                ok[i] = True
            else:
                reason[i] = 2
        removed = ok & (ts >= self.removed[idx])
        reason[removed] = 3
        ok &= ~removed
        keys[ok] = self.key[idx[ok]]
        reason[ok] = 0
        return keys, reason


QUARANTINE_REASONS = {1: "unknown_channel", 2: "before_install", 3: "meter_removed"}


def chain(
    starts: np.ndarray,
    counter: np.ndarray,
    status: np.ndarray,
    prev_counter: np.ndarray,
    prev_pulses: np.ndarray,
    reversible: np.ndarray,
    restart: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative pulses and flags of readings sorted by (meter, ts).

    ``starts`` are the first row of each meter's segment; ``prev_counter`` and
    ``prev_pulses`` (one per segment) describe the reading just before it.
    ``reversible`` (one per segment) marks meters allowed to run backwards
    (``reverse_allowed``: a bidirectional meter's net totaliser): their counter
    going back is always negative pulses, never a reset. ``restart`` (per
    reading, -1 for none) replaces the previous counter of the first reading of
    a counter epoch (``MeterMap.restarts``: the meter moved to another input).
    """
    n = len(counter)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z
    prev = np.empty(n, dtype=np.int64)
    prev[1:] = counter[:-1]
    prev[starts] = prev_counter
    if restart is not None:
        prev = np.where(restart >= 0, restart, prev)
    delta = (counter - prev) & MASK
    lengths = np.diff(np.append(starts, n))
    seg = np.repeat(np.arange(len(starts)), lengths)
    explicit = (status & Status.COUNTER_RESET) != 0
    back = ~explicit & (delta >= BACKWARDS)
    # A counter that went back without COUNTER_RESET either restarted from 0 and
    # counted ``counter`` since (so it lost more than it now holds), or runs
    # backwards (a meter mounted the wrong way round, a net totaliser): it lost
    # less than it holds. A meter allowed to run backwards always runs backwards.
    drop = COUNTER_MODULUS - delta
    reverse = back & ((counter >= drop) | reversible[seg])
    implicit = back & ~reverse
    inc = np.where(explicit | implicit, counter, np.where(reverse, delta - COUNTER_MODULUS, delta))
    csum = np.cumsum(inc)
    before = csum[starts] - inc[starts]
    pulses = prev_pulses[seg] + csum - before[seg]
    flags = (np.where(explicit | implicit, int(ReadingFlag.EPOCH_START), 0)
             | np.where(implicit, int(ReadingFlag.IMPLICIT_RESET), 0)
             | np.where(reverse, int(ReadingFlag.BACKWARDS), 0))
    return pulses, flags.astype(np.int64)


class Ingest:
    """Owns the per-meter chaining state; one instance per server."""

    def __init__(
        self,
        storage: Storage,
        settings: IngestSettings | None = None,
        bus: EventBus | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.settings = settings or IngestSettings()
        self.bus = bus
        self.clock = clock
        self.totals = IngestResult()
        self._lock = asyncio.Lock()
        self._map: MeterMap | None = None
        self._registry_version: int | None = None
        self._registry_checked = 0.0
        self._heads_valid = False
        self.head_ts = self.head_counter = self.head_pulses = np.zeros(0, dtype=np.int64)
        self.has_head = np.zeros(0, dtype=bool)

    # state ---------------------------------------------------------------

    async def _refresh(self) -> MeterMap:
        now = time.monotonic()
        if self._map is not None and now - self._registry_checked < self.settings.registry_check_s:
            return self._map
        self._registry_checked = now
        version = await self.storage.registry_version()
        if self._map is None or version != self._registry_version:
            await self.storage.flush()
            self._map = MeterMap(await self.storage.meters_by_key(), await self.storage.meter_periods())
            self._registry_version = version
            self._heads_valid = False
        if not self._heads_valid:
            await self._load_heads(self._map.size)
        return self._map

    async def _load_heads(self, size: int) -> None:
        await self.storage.flush()
        self.head_ts = np.zeros(size, dtype=np.int64)
        self.head_counter = np.zeros(size, dtype=np.int64)
        self.head_pulses = np.zeros(size, dtype=np.int64)
        self.has_head = np.zeros(size, dtype=bool)
        for h in await self.storage.load_heads():
            if h.meter < size:
                self.head_ts[h.meter] = h.ts
                self.head_counter[h.meter] = h.counter
                self.head_pulses[h.meter] = h.pulses
                self.has_head[h.meter] = True
        self._heads_valid = True

    # the path ------------------------------------------------------------

    async def ingest(
        self,
        batch: ReadingBatch | Iterable[RawReading],
        *,
        release: bool = False,
        health: Sequence[ModuleHealth] = (),
    ) -> IngestResult:
        """Store a batch durably; return once it is committed (never waiting on the bus).

        Raises StorageError when the batch could not be committed: the driver
        must then ask the device to send it again (nothing was acknowledged).
        With ``release`` the batch comes from the quarantine: readings a meter
        now claims leave it in the same transaction. ``health`` (what the
        modules reported about themselves with these readings) is committed
        in the same transaction, the newest report of each module."""
        if not isinstance(batch, ReadingBatch):
            batch = ReadingBatch.of(batch)
        result = IngestResult()
        async with self._lock:
            write, event = await self._prepare(batch, result, release)
            write.module_health = self._newest_health(health, write.received_at)
            pending = asyncio.ensure_future(self.storage.commit_ingest(write))
        try:
            await pending
        except BaseException:
            # Heads already include this batch: forget them so the next batch
            # re-reads the committed truth.
            self._heads_valid = False
            self._registry_checked = 0.0
            raise
        self.totals.add(result)
        if self.bus is not None and event is not None:
            self.bus.publish(event)
        return result

    async def update_module_links(self, t: int, links: Sequence[ModuleLink]) -> None:
        """What radio modules report about their links at ``t`` (parent, hops, RSSI,
        battery, firmware), stored on the registered modules: device data, so it
        comes in here like readings (``ReadingRepository.update_module_links``)."""
        await self.storage.update_module_links(t, links)

    async def replay_quarantine(self, chunk: int = REPLAY_CHUNK) -> IngestResult:
        """Ingest quarantined readings again, after the registry learned their
        modules or meters; those still unclaimed stay where they are. The
        quarantine is read in pages of ``chunk`` readings, each ingested in its
        own transaction, so the loop is free between pages however full it is."""
        total = IngestResult()
        self._registry_checked = 0.0  # the registry has most likely just changed
        after = None
        while rows := await self.storage.quarantine_page(after, chunk):
            after = (rows[-1]["module_id"], rows[-1]["channel"], rows[-1]["ts"])
            columns = np.array([(r["module_id"], r["channel"], r["ts"], r["counter"], r["status"]) for r in rows],
                               dtype=np.int64)
            total.add(await self.ingest(ReadingBatch(*columns.T), release=True))
        return total

    async def _prepare(
        self, batch: ReadingBatch, result: IngestResult, release: bool = False
    ) -> tuple[IngestWrite, ReadingsCommitted | None]:
        now = int(self.clock())
        write = IngestWrite(received_at=now)
        meter_map = await self._refresh()

        valid = (
            (batch.channel >= 1)
            & (batch.channel <= 3)
            & (batch.counter >= 0)
            & (batch.counter <= MASK)
            & (batch.ts > 0)
            & (batch.module >= 0)
        )
        future = valid & (batch.ts > now + self.settings.clock_tolerance_s)
        if not valid.all():
            result.rejected["invalid"] += int((~valid).sum())
        if future.any():
            result.rejected["future"] += int(future.sum())
            log.warning("rejected %d readings from the future (clock tolerance %ss)", future.sum(),
                        self.settings.clock_tolerance_s)
        batch = batch.take(np.flatnonzero(valid & ~future))

        keys, reason = meter_map.lookup(batch.module, batch.channel, batch.ts)
        lost = np.flatnonzero(keys < 0)
        if len(lost):
            write.quarantine = [
                (int(batch.module[i]), int(batch.channel[i]), int(batch.ts[i]), int(batch.counter[i]),
                 int(batch.status[i]), QUARANTINE_REASONS[int(reason[i])])
                for i in lost
            ]
            result.quarantined = len(lost)
        claimed = np.flatnonzero(keys >= 0)
        if release:
            write.released = list(zip(batch.module[claimed].tolist(), batch.channel[claimed].tolist(),
                                      batch.ts[claimed].tolist(), strict=True))
            result.quarantined = 0  # still unclaimed: they stay, they are not new
        self._seen(batch, write)
        if not len(claimed):
            return write, None

        m = keys[claimed]
        b = batch.take(claimed)
        order = np.lexsort((b.ts, m))
        m, b = m[order], b.take(order)

        # Duplicates inside the batch: keep the first of each (meter, ts).
        same = np.zeros(len(m), dtype=bool)
        same[1:] = (m[1:] == m[:-1]) & (b.ts[1:] == b.ts[:-1])
        if same.any():
            result.duplicates += int((same & (b.counter == np.roll(b.counter, 1))).sum())
            result.conflicts += int((same & (b.counter != np.roll(b.counter, 1))).sum())
            keep = np.flatnonzero(~same)
            m, b = m[keep], b.take(keep)

        starts = np.flatnonzero(np.r_[True, m[1:] != m[:-1]])
        seg_meter = m[starts]
        in_order = ~self.has_head[seg_meter] | (b.ts[starts] > self.head_ts[seg_meter])
        lengths = np.diff(np.append(starts, len(m)))
        fast_rows = np.repeat(in_order, lengths)

        inserts = [self._fast(m[fast_rows], b.take(np.flatnonzero(fast_rows)), write)]
        if not fast_rows.all():
            late = np.flatnonzero(~fast_rows)
            inserts += await self._late(m[late], b.take(late), write, result)

        write.inserts = _concat(inserts)
        result.accepted = len(write.inserts)
        result.resets = int(((write.inserts.flags & ReadingFlag.EPOCH_START) != 0).sum())
        if not len(write.inserts):
            return write, None
        ins = write.inserts
        event = ReadingsCommitted(
            meters=tuple(np.unique(ins.meter).tolist()),
            count=len(ins),
            t_min=int(ins.ts.min()),
            t_max=int(ins.ts.max()),
        )
        return write, event

    def _newest_health(self, health: Sequence[ModuleHealth], now: int) -> list[ModuleHealth]:
        """The newest report of each module, among those whose time a reading
        could have (not from the future beyond the clock tolerance)."""
        latest = now + self.settings.clock_tolerance_s
        newest: dict[int, ModuleHealth] = {}
        for h in health:
            if 0 < h.ts <= latest and h.ts >= getattr(newest.get(h.module_id), "ts", 0):
                newest[h.module_id] = h
        return list(newest.values())

    def _seen(self, batch: ReadingBatch, write: IngestWrite) -> None:
        if not len(batch):
            return
        order = np.lexsort((batch.ts, batch.module))
        mod, ts = batch.module[order], batch.ts[order]
        last = np.flatnonzero(np.r_[mod[1:] != mod[:-1], True])
        write.module_seen = list(zip(mod[last].tolist(), ts[last].tolist(), strict=True))

    def _fast(self, m: np.ndarray, b: ReadingBatch, write: IngestWrite) -> ReadingRows:
        """Readings that all come after the meter's newest stored one."""
        if not len(m):
            return ReadingRows.empty()
        starts = np.flatnonzero(np.r_[True, m[1:] != m[:-1]])
        seg = m[starts]
        known = self.has_head[seg]
        prev_counter = np.where(known, self.head_counter[seg], self._map.base_counter[seg])
        prev_pulses = np.where(known, self.head_pulses[seg], 0)
        prev_epoch = np.where(known, self._map.epoch(seg, self.head_ts[seg]), -1) if self._map.rewired else None
        restart = self._map.restarts(m, b.ts, prev_epoch, starts)
        pulses, flags = chain(starts, b.counter, b.status, prev_counter, prev_pulses, self._map.reversible[seg],
                              restart)
        ends = np.append(starts[1:], len(m)) - 1
        lo = np.where(known, self.head_ts[seg], b.ts[starts])
        write.dirty.extend(zip(seg.tolist(), lo.tolist(), b.ts[ends].tolist(), strict=True))
        self.head_ts[seg] = b.ts[ends]
        self.head_counter[seg] = b.counter[ends]
        self.head_pulses[seg] = pulses[ends]
        self.has_head[seg] = True
        return ReadingRows(m, b.ts, b.counter, pulses, b.status, flags)

    async def _late(self, m: np.ndarray, b: ReadingBatch, write: IngestWrite,
                    result: IngestResult) -> list[ReadingRows]:
        """Readings (sorted by meter, ts) of meters that have stored ones at or after
        them: a re-sent buffer, a back-filled gap.

        Whatever is stored after them, a batch costs one query for its exact
        matches of (meter, ts), the duplicates and conflicts (counted and dropped
        at once), and, only when some readings are new, one more for what is
        stored around those; only meters with new readings are re-chained. So a
        re-sent day costs about what its first delivery did, however long the
        backlog after it."""
        await self.storage.flush()
        stored = await self.storage.readings_at(m, b.ts)
        # ts is positive and below 2^34 (checked at validation: nothing from beyond the clock).
        stored_key, key = meter_time_key(stored.meter, stored.ts), meter_time_key(m, b.ts)
        pos = np.minimum(np.searchsorted(stored_key, key), max(len(stored) - 1, 0))
        hit = stored_key[pos] == key if len(stored) else np.zeros(len(m), dtype=bool)
        same = stored.counter[pos[hit]] == b.counter[hit]
        result.duplicates += int(same.sum())
        result.conflicts += int((~same).sum())
        new = np.flatnonzero(~hit)
        if not len(new):
            return []
        m, b = m[new], b.take(new)
        starts = np.flatnonzero(np.r_[True, m[1:] != m[:-1]])
        ends = np.append(starts[1:], len(m)) - 1
        around = await self.storage.readings_spanning(
            list(zip(m[starts].tolist(), b.ts[starts].tolist(), b.ts[ends].tolist(), strict=True)))
        out = []
        for meter, a, z in zip(m[starts].tolist(), starts.tolist(), (ends + 1).tolist(), strict=True):
            lo, hi = np.searchsorted(around.meter, [meter, meter + 1])
            out.append(await self._rechain(meter, around.select(slice(lo, hi)), b.take(np.arange(a, z)), write))
        return out

    async def _rechain(self, meter: int, stored: ReadingRows, new: ReadingBatch, write: IngestWrite) -> ReadingRows:
        """New readings of one meter among its stored ones: re-chain from the stored
        reading before the earliest new one.

        ``stored`` runs from that reading to the first one after the latest new
        one. Pulses are a chain through (counter, pulses) of each previous reading,
        so once that last stored reading comes out unchanged, every later one does
        too; only when it changes (a back-filled reset) is the rest of the history
        read and re-chained."""
        chained = self._chain(meter, stored, new, write, whole=False)
        if chained is None:
            rest = await self.storage.readings_around(meter, int(new.ts[0]))
            chained = self._chain(meter, rest, new, write, whole=True)
        return chained

    def _chain(self, meter: int, stored: ReadingRows, new: ReadingBatch, write: IngestWrite,
               whole: bool) -> ReadingRows | None:
        """The new readings chained into ``stored`` and what changed with them; None
        when the last stored reading after them changed and more is stored after
        it (unless ``stored`` is the ``whole`` rest of the history)."""
        ts = np.concatenate([stored.ts, new.ts])
        order = np.argsort(ts, kind="stable")
        is_new = np.concatenate([np.zeros(len(stored), bool), np.ones(len(new), bool)])[order]
        ts = ts[order]
        counter = np.concatenate([stored.counter, new.counter])[order]
        status = np.concatenate([stored.status, new.status])[order]
        old_pulses = np.concatenate([stored.pulses, np.zeros(len(new), np.int64)])[order]
        old_flags = np.concatenate([stored.flags, np.zeros(len(new), np.int64)])[order]

        has_prev = len(stored) > 0 and stored.ts[0] < new.ts[0]
        first = 1 if has_prev else 0
        if has_prev:
            prev_c, prev_p = np.array([counter[0]]), np.array([old_pulses[0]])
        else:
            prev_c, prev_p = np.array([self._map.base_counter[meter]]), np.array([0])
        rest = ts[first:]
        prev_epoch = self._map.epoch(np.array([meter]), ts[:1]) if has_prev and self._map.rewired else np.array([-1])
        pulses, flags = chain(np.array([0]), counter[first:], status[first:], prev_c, prev_p,
                              self._map.reversible[[meter]],
                              self._map.restarts(np.full(len(rest), meter), rest, prev_epoch, np.array([0])))
        pulses = np.concatenate([old_pulses[:first], pulses])
        flags = np.concatenate([old_flags[:first], flags])

        changed = ~is_new & ((pulses != old_pulses) | (flags != old_flags))
        tail_stored = not is_new[-1]
        if tail_stored and changed[-1] and ts[-1] < self.head_ts[meter] and not whole:
            return None
        touched = np.flatnonzero(is_new | changed)
        last_touched = int(touched[-1])
        hi = int(ts[min(last_touched + 1, len(ts) - 1)])
        write.dirty.append((meter, int(ts[0]), hi))
        mm = np.full(len(ts), meter, dtype=np.int64)
        if changed.any():
            upd = ReadingRows(mm, ts, counter, pulses, status, flags).select(changed)
            write.updates = _concat([write.updates, upd])
        if not tail_stored or ts[-1] >= self.head_ts[meter]:
            self.head_ts[meter], self.head_counter[meter], self.head_pulses[meter] = ts[-1], counter[-1], pulses[-1]
            self.has_head[meter] = True
        return ReadingRows(mm[is_new], ts[is_new], counter[is_new], pulses[is_new], status[is_new], flags[is_new])


def _concat(parts: list[ReadingRows]) -> ReadingRows:
    parts = [p for p in parts if len(p)]
    if not parts:
        return ReadingRows.empty()
    if len(parts) == 1:
        return parts[0]
    return ReadingRows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ReadingRows.__slots__))
