"""Samples of tags polled from PLCs and OPC UA servers (tank level, pump state,
totaliser), with their quality.

Belongs to the tag polling Modbus and OPC UA share (owner ``tags``): its table
was handed over by core migration 0016, and this interface moves with that
code. ``SqliteStorage`` implements it until then; ``Storage`` does not
declare it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

TAG_QUALITIES = frozenset({"good", "stale", "comm_fail"})
"""Quality of a polled tag sample: a fresh value, an old or refused one, the device unreachable."""


@dataclass(frozen=True, slots=True)
class TagRow:
    """One stored sample of a polled tag (a PLC's tank level, pump state, totaliser)."""

    tag: str
    """'<device>/<tag>' as configured."""
    ts: int
    value: float | None
    """None unless the quality is good."""
    quality: str


class TagRepository(ABC):
    """Polled tag samples."""

    OWNER: ClassVar[str] = "tags"
    """The owner of the tables behind this interface (``MigrationSet.owner``)."""

    @abstractmethod
    async def store_tag_values(self, samples: Sequence[TagRow]) -> None:
        """Store samples of polled tags durably, all in one transaction. A tag
        keeps one sample per second: a later sample of the same second replaces
        it. Raises ValueError on an unknown quality (nothing is stored)."""

    @abstractmethod
    async def tag_values(self, tag: str, t0: int, t1: int, limit: int = 10000) -> list[dict[str, Any]]:
        """Stored samples of one tag with t0 <= ts < t1, oldest first: ``tag``,
        ``ts``, ``value`` (None unless good) and ``quality``."""

    @abstractmethod
    async def latest_tag_values(self) -> list[dict[str, Any]]:
        """The newest stored sample of every tag, by tag id, with ``last_good_value``
        and ``last_good_ts`` (None when the tag never had a good value)."""
