"""Versioned schema migrations, one sequence per owner of tables.

Core's tables and each plugin's own tables are migrated separately, so a plugin
(a partner's too) brings its tables with it and never needs a core release to
add or change one. An owner declares its migrations as a ``MigrationSet``: a
folder in its package with one sub-folder per SQL dialect::

    <package>/migrations/sqlite/0001_create_notes.sql
    <package>/migrations/sqlite/0002_notes_by_meter.sql
    <package>/migrations/postgresql/0001_create_notes.sql    (with the PostgreSQL backend)

File ``NNNN_name.sql`` moves the owner's schema from version NNNN-1 to NNNN;
versions are numbered from 1 without gaps. Each dialect's sequence stands on
its own (a database is of one dialect); keep the numbers in step anyway, so
that version 3 of an owner means the same tables on every backend. A backend
applies core's sequence first, then every owner's in the order given; each
file runs with its version bump in one transaction, so a crash leaves every
owner at a whole version. A database whose schema is newer than the software
(of core, or of an owner) is refused with an error naming the owner: an
older program must not write tables it does not know.

Core's version is kept where it always was (``PRAGMA user_version`` on SQLite,
so databases of every earlier release upgrade as before); the owners' are
rows of the ``owner_migrations`` table that core migration 0016 creates. That
migration also hands over the tables that core migrations 0005, 0008 and 0009
(with 0010 and 0013) created for plugins before owners existed (see the
migration and docs/storage.md): their owners' first migrations create them
with ``CREATE TABLE IF NOT EXISTS`` in their shape as of core version 15.

Triggers a plugin creates at run time on tables not its own (to fill its
tables from core's writes, in their transaction) are named ``<owner>__<name>``: the owner,
two underscores, a name. When that owner does not run (its plugin disabled,
not installed or failed), the server drops them at start
(``StorageLifecycle.drop_owner_triggers``), so nothing fills tables that no one
reads; the plugin creates them again when it runs. A trigger created by a
migration is named otherwise, or it would be lost with the first start
without its plugin.

This module knows files and versions only; running them is the backend's
(``sqlite_migrations`` for SQLite).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

CORE = "core"
"""The owner of core's tables (its version is the backend's schema version)."""
DIALECTS = ("sqlite", "postgresql")
"""SQL dialects a migration folder may hold a sequence for."""
OWNER_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,63}")
"""What an owner may be called: a plugin's name, lower case."""
FILE_PATTERN = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
TRIGGER_OWNER = "__"
"""Separates the owner from the rest in the name of an owner's trigger (``example__readings_inserted``)."""


class MigrationError(RuntimeError):
    """A schema cannot be brought to this software's version: it is newer than
    the software, or a migration set is malformed. Start-up must stop: the
    tables are not what the code expects."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One file of an owner's sequence, for one dialect."""

    owner: str
    version: int
    name: str
    """The file name (``0003_notes_by_meter.sql``), kept with the applied version."""
    sql: str


@dataclass(frozen=True, slots=True)
class MigrationSet:
    """The migrations of one owner of tables: ``<package>/<folder>/<dialect>/NNNN_name.sql``.

    A plugin returns its sets from the ``register_migrations`` hook; the
    backend applies them after core's, in the order given."""

    owner: str
    package: str
    """The importable package holding the folder (``balans_edge_example``)."""
    folder: str = "migrations"

    def __post_init__(self) -> None:
        if not OWNER_PATTERN.fullmatch(self.owner) or TRIGGER_OWNER in self.owner:
            raise MigrationError(f"migration owner {self.owner!r}: lower-case letters, digits, '_' and '-', "
                                 f"starting with a letter, without {TRIGGER_OWNER!r}")

    def scripts(self, dialect: str) -> list[Migration]:
        """The owner's migrations for ``dialect`` in version order. MigrationError
        when the folder is missing or empty, a file is misnamed, or the versions
        are not 1, 2, ... without a gap or a repeat."""
        if dialect not in DIALECTS:
            raise MigrationError(f"unknown SQL dialect {dialect!r} (known: {', '.join(DIALECTS)})")
        where = f"{self.package}/{self.folder}/{dialect}"
        try:
            folder = resources.files(self.package) / self.folder / dialect
            entries = [e for e in folder.iterdir() if e.name.endswith(".sql")] if folder.is_dir() else []
        except (ModuleNotFoundError, TypeError) as exc:
            raise MigrationError(f"migrations of {self.owner!r}: cannot read {where}: {exc}") from None
        found = []
        for entry in entries:
            match = FILE_PATTERN.fullmatch(entry.name)
            if match is None:
                raise MigrationError(f"migrations of {self.owner!r}: {where}/{entry.name} is not named "
                                     "NNNN_name.sql (four digits, lower-case name)")
            found.append(Migration(self.owner, int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
        if not found:
            raise MigrationError(f"migrations of {self.owner!r}: no {dialect} migrations in {where}")
        found.sort(key=lambda m: (m.version, m.name))
        for expected, migration in enumerate(found, start=1):
            if migration.version != expected:
                raise MigrationError(f"migrations of {self.owner!r}: {where}/{migration.name}: expected version "
                                     f"{expected}, found {migration.version} (versions run 1, 2, ... without gaps)")
        return found


CORE_SET = MigrationSet(CORE, "balans_edge.core.storage")
"""Core's own sequence: core/storage/migrations/<dialect>/."""


def check_sets(sets: list[MigrationSet] | tuple[MigrationSet, ...]) -> None:
    """Owners' sets as a backend takes them: of distinct owners, none of them core."""
    seen: set[str] = set()
    for s in sets:
        if not isinstance(s, MigrationSet):
            raise MigrationError(f"not a MigrationSet: {s!r}")
        if s.owner == CORE:
            raise MigrationError(f"migration owner {CORE!r} is reserved for core's tables ({s.package})")
        if s.owner in seen:
            raise MigrationError(f"two migration sets of owner {s.owner!r}: an owner has one sequence")
        seen.add(s.owner)


def pending(scripts: list[Migration], current: int, owner: str, target: int | None = None) -> list[Migration]:
    """The migrations that bring ``owner`` from ``current`` to ``target`` (default:
    the latest). MigrationError when the database is ahead of this software."""
    latest = scripts[-1].version if scripts else 0
    if current > latest:
        if owner == CORE:
            raise MigrationError(f"database schema version {current} is newer than this software ({latest}): "
                                 "upgrade balans-edge")
        raise MigrationError(f"database schema of {owner!r} is at version {current}, newer than this software "
                             f"({latest}): upgrade the plugin that owns {owner!r}")
    target = latest if target is None else target
    return [m for m in scripts if current < m.version <= target]


def trigger_owner(name: str) -> str | None:
    """The owner a trigger's name gives (``example`` for ``example__readings_inserted``),
    or None for a trigger named otherwise (core's, a plugin's own migration's)."""
    owner, separator, rest = name.partition(TRIGGER_OWNER)
    return owner if separator and rest and OWNER_PATTERN.fullmatch(owner) else None


def available(dialect: str = "sqlite") -> list[tuple[int, str, str]]:
    """(version, name, sql) of every core migration shipped, in order."""
    return [(m.version, m.name, m.sql) for m in CORE_SET.scripts(dialect)]


LATEST = len(available())
"""Core's schema version of this software (SQLite)."""

