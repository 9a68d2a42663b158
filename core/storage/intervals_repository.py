"""Hourly consumption per meter, derived from readings, and the durable list of
ranges to recompute (written by ingest in the batch's transaction, taken by the
interval worker). Reads of many hours return numpy arrays and are summed where
the rows are: a request may span 440,000 hours.

A core repository: every backend implements it (``Storage`` composes it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class DirtyRange:
    id: int
    meter: int
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class PeriodSums:
    """One meter's stored hourly consumption summed per period (``consumption_periods``):
    storage sums where the rows are, the rules of what a sum means are in
    ``core.intervals``."""

    total: np.ndarray
    """(P,) float64: sum of the values stored in the period (0 where none)."""
    known: np.ndarray
    """(P,) int64: hours of the period with a value."""
    stored: np.ndarray
    """(P,) int64: hours of the period computed at all (with a value or missing)."""
    worst: np.ndarray
    """(P,) int64: the worst quality code among the stored hours (0 where none)."""


class IntervalReader(ABC):
    """Reads of hourly consumption."""

    @abstractmethod
    async def hourly(self, meter: int, t0: int, t1: int) -> list[tuple[int, float | None, int]]:
        """Stored hourly rows (t, value, quality code) with t0 <= t < t1."""

    @abstractmethod
    async def consumption_periods(self, meter: int, edges: np.ndarray) -> PeriodSums:
        """The meter's stored hours summed per period: period i holds the hours
        edges[i] <= t < edges[i + 1] (hour-aligned, increasing). Summed where the
        rows are, off the event loop: a request may span 440,000 hours."""

    @abstractmethod
    async def consumption_matrix(self, meters: Sequence[int], t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
        """Hourly values of ``meters`` for the hours t0 <= t < t1 (hour-aligned)
        as two (meters x hours) arrays in the order given: float64 values (NaN
        where there is none) and int8 quality codes (missing where no row)."""


class IntervalRepository(IntervalReader):
    """Hourly consumption: recomputation queue, upserts and reads."""

    @abstractmethod
    async def take_dirty(self, limit: int = 10000) -> list[DirtyRange]:
        """Ranges waiting for interval recomputation (not removed until saved)."""

    @abstractmethod
    async def save_intervals(
        self, meter_rows: list[tuple[int, int, float | None, int]], done: list[int]
    ) -> None:
        """Upsert hourly rows (meter, t, value, quality code) and drop the
        dirty ranges ``done`` in the same transaction."""
