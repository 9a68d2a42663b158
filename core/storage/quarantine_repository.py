"""The quarantine: readings from modules or channels no meter claims, kept (bounded)
until a registry change claims them. Ingest fills and releases it within its
own transaction (``IngestWrite.quarantine``, ``IngestWrite.released``); this
interface reads it and applies its retention.

A core repository: every backend implements it (``Storage`` composes it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class QuarantineReader(ABC):
    """Readings no meter claims, listed, paged and counted."""

    @abstractmethod
    async def quarantine(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Readings from unknown modules or channels, newest first."""

    @abstractmethod
    async def quarantine_page(self, after: tuple[int, int, int] | None, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` quarantined readings in (module_id, channel, ts) order,
        after ``after``: a scan in pages that rows leaving meanwhile do not disturb."""

    @abstractmethod
    async def quarantine_stats(self) -> dict[str, Any]:
        """``{"rows", "oldest_received_at", "dropped": {"age", "size"}}``: what the
        quarantine holds and how many readings retention dropped, ever."""


class QuarantineRepository(QuarantineReader):
    """Readings no meter claims: listed, paged, counted and pruned."""

    @abstractmethod
    async def prune_quarantine(self, max_rows: int, received_before: int) -> None:
        """Drop quarantined readings received before ``received_before``, then the
        oldest received beyond ``max_rows``, counting each by reason, in one transaction."""
