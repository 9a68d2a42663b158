"""Durable storage: the backend-neutral interface and the embedded SQLite backend."""

from balans_edge.core.storage.base import (
    REGISTRY_KINDS,
    BalanceSums,
    ConnectionEvent,
    DirtyRange,
    IngestWrite,
    MeterHead,
    ModuleEvent,
    ModuleHealth,
    ModuleRoute,
    PeriodSums,
    ReadingRows,
    Storage,
    StorageError,
)

__all__ = [
    "REGISTRY_KINDS",
    "BalanceSums",
    "ConnectionEvent",
    "DirtyRange",
    "IngestWrite",
    "MeterHead",
    "ModuleEvent",
    "ModuleHealth",
    "ModuleRoute",
    "PeriodSums",
    "ReadingRows",
    "Storage",
    "StorageError",
    "open_storage",
]


def open_storage(url: str) -> Storage:
    """A storage backend for ``url`` (``sqlite:PATH`` or a plain path)."""
    from balans_edge.core.storage.sqlite import SqliteStorage

    path = url.removeprefix("sqlite:")
    return SqliteStorage(path)
