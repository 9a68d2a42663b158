"""Readings as ingest stores them and everything reads them back: the newest
reading of each meter (where in-order ingest continues), the readings around a
late one, and ranges of readings, as numpy columns; and what radio modules
(core registry objects) report about themselves: the health that comes with
their readings, kept as an hourly history, and their place in the network.

A core repository: every backend implements it (``Storage`` composes it).
``commit_ingest`` is the hot path: one call per batch, everything the batch
changes in one durable transaction (readings, quarantine, dirty ranges, the
modules' last-seen and health).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class MeterHead:
    """The newest stored reading of a meter: where in-order ingest continues."""

    meter: int
    ts: int
    counter: int
    pulses: int


@dataclass(slots=True)
class ReadingRows:
    """Columns of stored readings of one or more meters, sorted by (meter, ts)."""

    meter: np.ndarray
    ts: np.ndarray
    counter: np.ndarray
    pulses: np.ndarray
    status: np.ndarray
    flags: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def empty(cls) -> ReadingRows:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, z, z, z)

    @classmethod
    def from_tuples(cls, rows: list[tuple]) -> ReadingRows:
        if not rows:
            return cls.empty()
        a = np.array(rows, dtype=np.int64)
        return cls(*(a[:, i] for i in range(6)))

    def select(self, mask: np.ndarray) -> ReadingRows:
        return ReadingRows(*(getattr(self, f)[mask] for f in self.__slots__))


@dataclass(frozen=True, slots=True)
class ModuleHealth:
    """What a radio module reports about itself with its readings (DMesh
    READINGS): at ``ts``, its battery, the RSSI of the link to its parent and
    its hops to the concentrator (None when out of range: the stored value stays)."""

    module_id: int
    ts: int
    battery_mv: int
    rssi: int
    hops: int | None


@dataclass(frozen=True, slots=True)
class ModuleLink:
    """A radio module's place in its network as its concentrator reports it (a
    DMesh TOPOLOGY entry): the registry row of the module takes these values."""

    module_id: int
    parent_id: int
    """0 when the module talks to the concentrator directly."""
    hops: int
    rssi: int
    """dBm of the link to its parent."""
    battery_mv: int
    firmware: str
    """``major.minor``."""


@dataclass(slots=True)
class IngestWrite:
    """Everything one ingest batch changes, committed in one transaction."""

    inserts: ReadingRows = field(default_factory=ReadingRows.empty)
    updates: ReadingRows = field(default_factory=ReadingRows.empty)
    """Existing readings whose pulses or flags changed (a back-filled reset)."""
    quarantine: list[tuple[int, int, int, int, int, str]] = field(default_factory=list)
    """(module_id, channel, ts, counter, status, reason) of readings no meter claims."""
    dirty: list[tuple[int, int, int]] = field(default_factory=list)
    """(meter, lo, hi): time ranges whose hourly consumption must be recomputed."""
    released: list[tuple[int, int, int]] = field(default_factory=list)
    """(module_id, channel, ts) of quarantined readings a meter now claims."""
    module_seen: list[tuple[int, int]] = field(default_factory=list)
    """(module_id, ts) of modules that reported."""
    module_health: list[ModuleHealth] = field(default_factory=list)
    """The newest health report of each module that sent one with its readings."""
    received_at: int = 0


class ReadingReader(ABC):
    """Reads of stored readings and of what radio modules report about themselves."""

    @abstractmethod
    async def load_heads(self) -> list[MeterHead]:
        """The newest committed reading of every meter that has one."""

    @abstractmethod
    async def reading_times(self, before: int) -> dict[int, int]:
        """Meter key -> time of its newest reading at or before ``before`` (meters
        without one are left out): what was known of the meters at that time."""

    @abstractmethod
    async def readings_around(self, meter: int, ts: int) -> ReadingRows:
        """The last reading before ``ts`` (if any) and every reading at or after it."""

    @abstractmethod
    async def readings_at(self, meters: np.ndarray, ts: np.ndarray) -> ReadingRows:
        """The stored readings at exactly these (meter, ts) pairs (those that exist),
        sorted by (meter, ts): what a re-sent batch duplicates, in one query."""

    @abstractmethod
    async def readings_spanning(self, spans: Sequence[tuple[int, int, int]]) -> ReadingRows:
        """For each (meter, lo, hi): the meter's readings with lo <= ts <= hi, the
        last one before lo and the first one after hi (those that exist), sorted
        by (meter, ts); the spans name different meters. One query for a whole
        batch of late readings, however much is stored after them."""

    @abstractmethod
    async def readings(self, meter: int, t0: int, t1: int) -> ReadingRows:
        """Stored readings of one meter with t0 <= ts < t1."""

    @abstractmethod
    async def readings_of(self, meters: list[int], t0: int, t1: int) -> ReadingRows:
        """Stored readings of several meters with t0 <= ts < t1, sorted by (meter, ts)."""

    @abstractmethod
    async def has_readings(self, meter: int) -> bool:
        """Whether the meter has any stored reading."""

    @abstractmethod
    async def latest_readings(self, meters: Sequence[int] | None = None) -> ReadingRows:
        """The newest stored reading of each of ``meters`` (internal keys; every
        meter when None) that has one, sorted by meter: what a bridge shows as
        the meter's present state."""

    @abstractmethod
    async def module_reports(self, module_id: int, limit: int = 1000,
                             before: int | None = None) -> list[dict[str, Any]]:
        """The health history of a module from its readings (only the hours with
        t <= ``before`` when given), newest first: one entry per hour (the first
        report in it) with ``module_id``, ``t`` (the hour), ``battery_mv``, ``rssi``
        and ``hops`` (None when the module sent a value out of range)."""

    @abstractmethod
    async def latest_module_reports(self, before: int) -> list[dict[str, Any]]:
        """The newest health report (as in ``module_reports``) of every module
        that has one at or before ``before``, by module: how the modules
        reported themselves at a past time."""


class ReadingRepository(ReadingReader):
    """Stored readings: the ingest write and the reads of readings."""

    @abstractmethod
    async def commit_ingest(self, write: IngestWrite) -> None:
        """Commit one ingest batch durably (synchronous to disk). Batches
        submitted together may share one transaction and one fsync. Raises
        StorageError when nothing could be committed.

        In the same transaction ``module_health`` updates the battery, RSSI
        and hops of registered modules (unless the module has newer news: its
        ``last_seen`` is later) and appends to their health history
        (``module_reports``)."""

    @abstractmethod
    async def update_module_links(self, t: int, links: Sequence[ModuleLink]) -> None:
        """Durably set the parent, hops, RSSI, battery and firmware of the registered
        modules among ``links`` as reported at ``t``, and move their last seen to
        ``t`` unless it is later. Modules that are not registered are not created;
        the registry's audit and version do not change (this is the modules' state,
        not their configuration). Repeating a call changes nothing more."""
