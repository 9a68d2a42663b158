"""The records the export plugin's repository takes and gives, in no dialect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

QUEUE_PREFIX = "export_queue_"
"""Each target's queue is a table of its own, ``export_queue_<target id>``."""


def queue_table(target_id: int) -> str:
    return f"{QUEUE_PREFIX}{int(target_id)}"


@dataclass(frozen=True, slots=True)
class ExportTarget:
    """An export target as its queue knows it: what it takes and its queue's bound."""

    name: str
    kinds: tuple[str, ...]
    max_queue: int
    when_full: str = "drop_oldest"


@dataclass(frozen=True, slots=True)
class StoredTarget:
    """A target as stored: its id names its queue."""

    id: int
    name: str
    kinds: tuple[str, ...]
    max_queue: int
    when_full: str


@dataclass(slots=True)
class ExportBatch:
    """The oldest points of a target's queue and the stored rows they refer to.

    ``ids`` are every queue entry taken, oldest first; ``rows`` maps a kind to
    the source rows of its entries (each with ``qid``, the entry's id). An entry
    whose source row no longer exists (a deleted group's balance) has no row."""

    ids: list[int]
    rows: dict[str, list[dict[str, Any]]]
