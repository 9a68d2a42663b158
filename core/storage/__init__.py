"""Durable storage: the backend-neutral interfaces (core repositories composed in
``Storage``, the SQL gateway for plugins' own tables), migrations per owner, and the embedded SQLite backend."""

from balans_edge.core.storage.base import (
    REGISTRY_KINDS,
    BalanceRepository,
    BalanceSums,
    CommandRepository,
    DirtyRange,
    FindingRepository,
    IngestWrite,
    IntervalRepository,
    JournalRepository,
    MeterHead,
    ModuleHealth,
    ModuleLink,
    PeriodSums,
    QuarantineRepository,
    ReadingRepository,
    ReadingRows,
    RegistryRepository,
    Storage,
    StorageError,
)
from balans_edge.core.storage.gateway import SqlGateway
from balans_edge.core.storage.migrations import MigrationError, MigrationSet
from balans_edge.core.storage.registry_repository import RegistryReader
from balans_edge.core.storage.views import Queries, RegistryEditor, view_of

__all__ = [
    "REGISTRY_KINDS",
    "BalanceRepository",
    "BalanceSums",
    "CommandRepository",
    "DirtyRange",
    "FindingRepository",
    "IngestWrite",
    "IntervalRepository",
    "JournalRepository",
    "MeterHead",
    "MigrationError",
    "MigrationSet",
    "ModuleHealth",
    "ModuleLink",
    "PeriodSums",
    "QuarantineRepository",
    "Queries",
    "ReadingRepository",
    "ReadingRows",
    "RegistryEditor",
    "RegistryReader",
    "RegistryRepository",
    "SqlGateway",
    "Storage",
    "StorageError",
    "open_storage",
    "view_of",
]


def open_storage(url: str) -> Storage:
    """A storage backend for ``url`` (``sqlite:PATH`` or a plain path); open it
    with ``await storage.open(migrations=...)``."""
    from balans_edge.core.storage.sqlite import SqliteStorage

    path = url.removeprefix("sqlite:")
    return SqliteStorage(path)
