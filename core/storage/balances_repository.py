"""The hourly balance of groups (inputs against members' consumption), the hours
to recompute (marked in the transaction of what changes them) and sums over
periods.

A core repository: every backend implements it (``Storage`` composes it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from balans_edge.core.balance import BalanceSeries


@dataclass(frozen=True, slots=True)
class BalanceSums:
    """Groups' stored hourly balance summed per period (``balance_periods``) and how
    many of its stored hours say anything: storage sums where the rows are; what
    the hours that say nothing mean (missing meters) is decided in
    ``core.balance_queries``."""

    series: BalanceSeries
    """(G, P) sums of every column of the stored hours; ``t``: each period's first hour."""
    counted: np.ndarray
    """(G, P) int64: stored hours in which any member or input meter was counted."""
    blind: np.ndarray
    """(G, P) int64: stored hours with members counted but no input meter counted."""


class BalanceReader(ABC):
    """Reads of groups' hourly balance."""

    @abstractmethod
    async def balance(self, group_ids: Sequence[str], t0: int, t1: int) -> BalanceSeries:
        """Stored hourly balance of the groups for t0 <= t < t1, every hour
        present (hours never computed are zeros: no members, no input)."""

    @abstractmethod
    async def balance_periods(self, group_ids: Sequence[str], edges: np.ndarray) -> BalanceSums:
        """The groups' stored hourly balance summed per period (as ``balance``
        would give it summed over edges[i] <= t < edges[i + 1]; ``t`` of the
        series is each period's first hour), with the hours that count anything.
        Summed where the rows are, off the event loop."""


class BalanceRepository(BalanceReader):
    """Groups' hourly balance: recomputation queue, upserts and reads."""

    @abstractmethod
    async def take_balance_dirty(self, limit: int = 10000) -> list[tuple[int, int, int]]:
        """(id, lo, hi) ranges of hours whose balance must be recomputed (oldest first)."""

    @abstractmethod
    async def save_balance(self, series: BalanceSeries, done: list[int]) -> None:
        """Store hourly balance rows and drop the dirty ranges ``done``, in one transaction."""
