"""The storage interface every backend implements, as small repositories.

Callers (ingest, intervals, the registry, the API) use only these interfaces,
so a PostgreSQL backend can replace SQLite without touching them. Methods
speak the domain: registry objects, reading columns as numpy arrays, hourly
rows; no signature names a table, a row id of a particular engine or SQL.

Core's repositories, one module each:

- ``RegistryRepository`` (registry_repository): the registry, its audit and
  the meters' parameter periods;
- ``ReadingRepository`` (readings_repository), ``QuarantineRepository``
  (quarantine_repository), ``IntervalRepository`` (intervals_repository):
  readings as ingest stores them, readings no meter claims, hourly consumption;
- ``BalanceRepository`` (balances_repository): groups' hourly balance;
- ``FindingRepository`` (findings_repository) and ``CommandRepository``
  (commands_repository), both on ``JournalRepository`` (journal_repository):
  findings, alarms and the command audit.

``Storage`` is their composition with the lifecycle (open with migrations,
flush, close): what core needs from a backend. Tables of plugins are not
core's: every plugin's tables, those core handed over included, are reached
through the ``SqlGateway`` (gateway) by the plugin's own repository (the DMesh
plugin's in ``plugins/dmesh/repository.py``, the export plugin's in
``plugins/export``, the tag polling's in ``plugins/common/tag_repository.py``,
the Modbus bridge's slots in ``plugins/modbus/repository.py``).

The records of every interface are re-exported here, so imports from
``core.storage.base`` keep working.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence

from balans_edge.core.storage.balances_repository import BalanceRepository, BalanceSums
from balans_edge.core.storage.commands_repository import CommandRepository
from balans_edge.core.storage.errors import StorageError
from balans_edge.core.storage.findings_repository import FindingRepository
from balans_edge.core.storage.intervals_repository import DirtyRange, IntervalRepository, PeriodSums
from balans_edge.core.storage.journal_repository import JournalRepository
from balans_edge.core.storage.migrations import MigrationSet
from balans_edge.core.storage.quarantine_repository import QuarantineRepository
from balans_edge.core.storage.readings_repository import (
    IngestWrite,
    MeterHead,
    ModuleHealth,
    ModuleLink,
    ReadingRepository,
    ReadingRows,
)
from balans_edge.core.storage.registry_repository import (
    AUDIT_LIMIT,
    REGISTRY_KINDS,
    AuditQuery,
    RegistryRepository,
)
from balans_edge.core.storage.views import Queries

__all__ = [
    "AUDIT_LIMIT",
    "CORE_REPOSITORIES",
    "REGISTRY_KINDS",
    "AuditQuery",
    "BalanceRepository",
    "BalanceSums",
    "CommandRepository",
    "DirtyRange",
    "FindingRepository",
    "IngestWrite",
    "IntervalRepository",
    "JournalRepository",
    "MeterHead",
    "ModuleHealth",
    "ModuleLink",
    "PeriodSums",
    "QuarantineRepository",
    "ReadingRepository",
    "ReadingRows",
    "RegistryRepository",
    "Storage",
    "StorageError",
    "StorageLifecycle",
]


class StorageLifecycle(ABC):
    """Opening (with the migrations of core and of every owner given), flushing and
    closing a backend."""

    @abstractmethod
    async def open(self, migrations: Sequence[MigrationSet] = ()) -> None:
        """Connect, then create or migrate core's tables and those of every owner
        in ``migrations`` (after core's, in that order). MigrationError when the
        database is newer than this software, for core or for any owner given."""

    @abstractmethod
    async def close(self) -> None:
        """Commit what was submitted, then release the database."""

    @abstractmethod
    async def flush(self) -> None:
        """Return once every write submitted before the call is committed."""

    @abstractmethod
    async def schema_version(self) -> int:
        """Core's schema version."""

    @abstractmethod
    async def schema_versions(self) -> dict[str, int]:
        """The schema version of every owner of tables the database holds, core included."""

    @abstractmethod
    async def drop_owner_triggers(self, running: Collection[str]) -> list[str]:
        """Drop the triggers named after an owner (``<owner>__<name>``,
        ``migrations.trigger_owner``) whose owner is not in ``running`` (core's never
        are); return their names. A plugin that fills its tables from core's writes
        creates such triggers when it runs; when it does not, they would fill
        tables that nobody reads, and a trigger that refuses a write once a table
        is full would refuse the devices' readings."""


class Storage(
    StorageLifecycle,
    RegistryRepository,
    ReadingRepository,
    QuarantineRepository,
    IntervalRepository,
    BalanceRepository,
    FindingRepository,
    CommandRepository,
    Queries,
):
    """A durable store for the registry, readings and what is derived from them:
    every core repository, and the lifecycle. What a backend implements for core.
    Its reads are ``Queries`` (``core.storage.views``), what plugins get a view of."""


CORE_REPOSITORIES = (RegistryRepository, ReadingRepository, QuarantineRepository, IntervalRepository,
                     BalanceRepository, FindingRepository, CommandRepository, JournalRepository)
"""The repositories ``Storage`` composes (with ``StorageLifecycle``)."""
