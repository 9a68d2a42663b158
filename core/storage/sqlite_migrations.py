"""Running migrations on SQLite: core's sequence, then each owner's.

Core's version lives in ``PRAGMA user_version`` (as in every release), the
owners' in ``owner_migrations`` (core migration 0016). Each file runs with its
version bump inside one ``BEGIN IMMEDIATE`` transaction: a crash leaves the
owner at a whole version, and two processes opening the same database at once
(the server and a command) cannot both apply a version, because the version
is read again under the write lock before a file runs.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence

import aiosqlite

from balans_edge.core.storage.migrations import (
    CORE,
    CORE_SET,
    Migration,
    MigrationError,
    MigrationSet,
    check_sets,
    pending,
)

log = logging.getLogger(__name__)

DIALECT = "sqlite"
OWNERS_SINCE = 16
"""The core version that created ``owner_migrations``."""


async def _scalar(db: aiosqlite.Connection, sql: str, args: Sequence[object] = ()) -> int:
    async with db.execute(sql, args) as cur:
        row = await cur.fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


async def core_version(db: aiosqlite.Connection) -> int:
    return await _scalar(db, "PRAGMA user_version")


async def owner_version(db: aiosqlite.Connection, owner: str) -> int:
    """The owner's applied version (0: none yet, or core older than 0016)."""
    if owner == CORE:
        return await core_version(db)
    if await core_version(db) < OWNERS_SINCE:
        return 0
    return await _scalar(db, "SELECT max(version) FROM owner_migrations WHERE owner = ?", (owner,))


async def owner_versions(db: aiosqlite.Connection) -> dict[str, int]:
    """Every owner's applied version, core included."""
    versions = {CORE: await core_version(db)}
    if versions[CORE] >= OWNERS_SINCE:
        async with db.execute("SELECT owner, max(version) FROM owner_migrations GROUP BY owner ORDER BY owner") as cur:
            versions.update({r[0]: r[1] for r in await cur.fetchall()})
    return versions


async def _apply(db: aiosqlite.Connection, migration: Migration) -> bool:
    """Run one file and record its version in one transaction; False when
    another connection applied it meanwhile (nothing is run then)."""
    await db.execute("BEGIN IMMEDIATE")
    try:  # (not around BEGIN: a ROLLBACK without a transaction would hide why BEGIN failed)
        if await owner_version(db, migration.owner) >= migration.version:
            await db.execute("COMMIT")
            return False
        log.info("applying migration %s/%s", migration.owner, migration.name)
        # executescript would commit first; the statements run inside our own
        # transaction so the version bump and the schema change are atomic.
        for statement in split(migration.sql):
            await db.execute(statement)
        if migration.owner == CORE:
            await db.execute(f"PRAGMA user_version = {int(migration.version)}")
        else:
            await db.execute("INSERT INTO owner_migrations (owner, version, name, applied_at) VALUES (?, ?, ?, ?)",
                             (migration.owner, migration.version, migration.name, int(time.time())))
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    return True


async def migrate_set(db: aiosqlite.Connection, migrations: MigrationSet, target: int | None = None) -> int:
    """Bring one owner's tables to ``target`` (default: its latest); return its version."""
    scripts = migrations.scripts(DIALECT)
    current = await owner_version(db, migrations.owner)
    for migration in pending(scripts, current, migrations.owner, target):
        try:
            await _apply(db, migration)
        except MigrationError:
            raise
        except Exception as exc:
            raise MigrationError(f"migration {migration.owner}/{migration.name} failed (nothing of it was "
                                 f"applied): {exc}") from exc
        current = migration.version
    return await owner_version(db, migrations.owner) if target is None else current


async def migrate(db: aiosqlite.Connection, target: int | None = None) -> int:
    """Bring core's tables to ``target`` (default: the latest); return the version."""
    return await migrate_set(db, CORE_SET, target)


async def migrate_all(db: aiosqlite.Connection, sets: Sequence[MigrationSet] = ()) -> dict[str, int]:
    """Core's sequence, then every owner's in the order given; return the versions.

    Every set is checked, and every owner's stored version compared with the
    software's, before anything is applied: a database one owner of which is
    too new is refused as it is."""
    sets = tuple(sets)
    check_sets(sets)
    scripts = {s.owner: s.scripts(DIALECT) for s in sets}
    pending(CORE_SET.scripts(DIALECT), await core_version(db), CORE)
    for owner, owned in scripts.items():
        pending(owned, await owner_version(db, owner), owner)
    await migrate(db)
    for s in sets:
        await migrate_set(db, s)
    return await owner_versions(db)


def split(script: str) -> list[str]:
    """Split a migration into statements (sqlite3.complete_statement knows the grammar)."""
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") for ln in buf.strip().splitlines()):
        raise MigrationError(f"incomplete SQL statement at end of migration: {buf.strip()[:60]}")
    return statements
