"""Durable export queues: what each export target takes, its bounded queue (filled
in the transaction that stores the data), acknowledgements, dead letters and
back-fill.

Belongs to the export plugin (owner ``export``): its tables were handed over
by core migration 0016, and this interface moves into the plugin's folder with
them. ``SqliteStorage`` implements it until then; ``Storage`` does not declare it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

EXPORT_KINDS = ("readings", "consumption", "balance_hourly", "balance_daily", "findings", "alarms", "network")
"""What an export target can take: meter readings, hourly consumption, the hourly
and daily balance of groups, findings, alarms and radio network health. Each
follows a stored table, so a point is queued in the transaction that stores it."""


EXPORT_POLICIES = ("drop_oldest", "block")
"""What a full export queue does: drop its oldest point (counted), or refuse the
write that would add one (so devices are not acknowledged and send again)."""


@dataclass(frozen=True, slots=True)
class ExportTarget:
    """An export target as storage knows it: what it takes and its queue's bound."""

    name: str
    kinds: tuple[str, ...]
    max_queue: int
    when_full: str = "drop_oldest"


@dataclass(slots=True)
class ExportBatch:
    """The oldest points of a target's queue and the stored rows they refer to.

    ``ids`` are every queue entry taken, oldest first; ``rows`` maps a kind to
    the source rows of its entries (each with ``qid``, the entry's id). An entry
    whose source row no longer exists (a deleted group's balance) has no row."""

    ids: list[int]
    rows: dict[str, list[dict[str, Any]]]


class ExportRepository(ABC):
    """Export targets and their queues."""

    OWNER: ClassVar[str] = "export"
    """The owner of the tables behind this interface (``MigrationSet.owner``)."""

    @abstractmethod
    async def export_configure(self, targets: Sequence[ExportTarget]) -> None:
        """Make exactly ``targets`` collect points, in one transaction: each gets a
        durable queue (kept across restarts) that every later write of an
        exported kind appends to in its own transaction, bounded by ``max_queue``
        with its ``when_full`` policy. Targets not listed stop collecting; their
        queues are kept until ``export_remove``."""

    @abstractmethod
    async def export_take(self, target: str, limit: int, after: int = 0) -> ExportBatch:
        """The oldest ``limit`` entries of a target's queue (those after entry id
        ``after``: the sender reads the next batch while one is on the wire) with
        their source rows; entries stay queued until acknowledged or dead-lettered."""

    @abstractmethod
    async def export_ack(self, target: str, ids: Sequence[int], sent: int) -> None:
        """Remove queue entries the target accepted (or that had nothing to send)
        and count ``sent`` points as sent, in one transaction."""

    @abstractmethod
    async def export_dead_letter(self, target: str, ids: Sequence[int], status: int, message: str,
                                 lines: str, points: int) -> None:
        """Move entries the target refused for good to the dead letters, with the
        refused lines and the target's answer, in one transaction."""

    @abstractmethod
    async def export_resend(self, target: str | None = None, ids: Sequence[int] | None = None) -> int:
        """Mark dead letters (of one target or all; only ``ids`` when given) to be
        sent again by their target's exporter; return how many were marked."""

    @abstractmethod
    async def export_resend_next(self, target: str) -> dict[str, Any] | None:
        """The oldest dead letter of ``target`` marked to be sent again (``id``,
        ``points``, ``lines``), or None."""

    @abstractmethod
    async def export_resent(self, target: str, dead_id: int, status: int, message: str) -> None:
        """The target's answer to a dead letter sent again: accepted (2xx), it leaves
        the dead letters and its points count as sent; refused, it stays with the
        new answer and is no longer marked."""

    @abstractmethod
    async def export_note_failure(self, target: str, error: str, retries: int = 1) -> None:
        """Record a failed attempt (the error, and how many requests will be repeated)."""

    @abstractmethod
    async def export_state(self, target: str | None = None) -> list[dict[str, Any]]:
        """Targets (one or all) with their queue's ``depth`` and ``oldest_t`` (when
        its oldest entry was queued) and their lifetime counters."""

    @abstractmethod
    async def export_dead_letters(self, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters (of one target or all), newest first."""

    @abstractmethod
    async def export_backfill(self, target: str, kind: str, t0: int, t1: int, after: tuple[Any, Any] | None,
                              limit: int, times: Sequence[int] | None = None) -> tuple[int, tuple[Any, Any] | None]:
        """Queue up to ``limit`` stored points of ``kind`` with t0 <= time < t1 whose
        key comes after ``after`` (keys in storage order), for back-filling history;
        with ``times``, only those at these times. Return how many were queued and
        the last key (None when nothing is left)."""

    @abstractmethod
    async def export_backfill_count(self, kind: str, t0: int, t1: int, times: Sequence[int] | None = None) -> int:
        """How many points ``export_backfill`` would queue over the whole range."""

    @abstractmethod
    async def export_remove(self, target: str) -> int:
        """Stop collecting for a target and delete it with its queue and dead
        letters; return how many queued points were discarded."""
