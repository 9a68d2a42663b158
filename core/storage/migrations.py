"""Versioned schema migrations for the SQLite backend.

Each file ``migrations/NNNN_name.sql`` moves the schema from version NNNN-1 to
NNNN; the version lives in ``PRAGMA user_version``. A migration and its version
bump run in one transaction, so a crash leaves the database at a whole version.
"""

from __future__ import annotations

import logging
import sqlite3
from importlib import resources

import aiosqlite

log = logging.getLogger(__name__)


def available() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped, in order."""
    folder = resources.files("balans_edge.core.storage") / "migrations"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), name, entry.read_text(encoding="utf-8")))
    found.sort()
    for expected, (version, name, _) in enumerate(found, start=1):
        if version != expected:
            raise RuntimeError(f"migration {name}: expected version {expected}, found {version}")
    return found


LATEST = len(available())


async def migrate(db: aiosqlite.Connection, target: int | None = None) -> int:
    """Bring the schema to ``target`` (default: the latest); return the version."""
    target = LATEST if target is None else target
    async with db.execute("PRAGMA user_version") as cur:
        (current,) = await cur.fetchone()
    if current > LATEST:
        raise RuntimeError(
            f"database schema version {current} is newer than this software ({LATEST}): upgrade balans-edge"
        )
    for version, name, sql in available():
        if current < version <= target:
            log.info("applying migration %s", name)
            # executescript would commit first; run the statements inside our own
            # transaction so the version bump and the schema change are atomic.
            await db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split(sql):
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {version}")
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            current = version
    return current


def _split(script: str) -> list[str]:
    """Split a migration into statements (sqlite3.complete_statement knows the grammar)."""
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") for ln in buf.strip().splitlines()):
        raise RuntimeError(f"incomplete SQL statement at end of migration: {buf.strip()[:60]}")
    return statements
