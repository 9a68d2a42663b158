"""The table of the tag polling Modbus and OPC UA share, and its repository:
samples of tags polled from PLCs and OPC UA servers (tank level, pump state,
totaliser), with their quality.

Owner ``tags``. Core migration 0008 created the table before owners existed;
core migration 0016 handed it over, and from then on the migrations in
``plugins/common/migrations/<dialect>/`` create and change it. Both protocol
plugins contribute the same set (``MIGRATIONS``) through
``register_migrations``: the owner's sequence is applied once whichever of
them runs (``balans_edge.plugin_migrations`` accepts an identical set from a
second plugin). The table is read and written only here, through the
storage's SQL gateway (``SqlGateway``), the SQL of each dialect in one place
(``SQL``); what a sample is and which qualities exist are core's
(``core.tags.TagRow``, ``TAG_QUALITIES``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from balans_edge.core.calculated import TagSeries
from balans_edge.core.storage.migrations import MigrationSet
from balans_edge.core.tags import TAG_QUALITIES, TagRow

if TYPE_CHECKING:
    from balans_edge.core.storage.gateway import SqlGateway

OWNER = "tags"
MIGRATIONS = MigrationSet(OWNER, "balans_edge.plugins.common")
"""``plugins/common/migrations/sqlite/0001_tables.sql``, ...; contributed by Modbus and OPC UA alike."""

SQL: dict[str, dict[str, str]] = {
    "sqlite": {
        # A tag keeps one sample per second: a later one of the same second replaces it.
        "store": "INSERT OR REPLACE INTO tag_values (tag, ts, value, quality) VALUES (?, ?, ?, ?)",
        "samples": "SELECT tag, ts, value, quality FROM tag_values WHERE tag = ? AND ts >= ? AND ts < ? "
                   "ORDER BY ts LIMIT ?",
        "series": "SELECT ts, value FROM tag_values WHERE tag = ? AND ts >= ? AND ts < ? ORDER BY ts",
        "latest": "SELECT v.tag, v.ts, v.value, v.quality, g.value AS last_good_value, g.ts AS last_good_ts "
                  "FROM (SELECT tag, max(ts) AS ts FROM tag_values GROUP BY tag) n "
                  "JOIN tag_values v ON v.tag = n.tag AND v.ts = n.ts "
                  "LEFT JOIN (SELECT tag, max(ts) AS ts FROM tag_values WHERE quality = 'good' GROUP BY tag) lg "
                  "ON lg.tag = v.tag "
                  "LEFT JOIN tag_values g ON g.tag = lg.tag AND g.ts = lg.ts ORDER BY v.tag",
    },
}
"""Every statement of the repository, by dialect (``SqlGateway.dialect``) and name;
each dialect names the same statements with the same parameters in the same order."""


class TagRepository:
    """Polled tag samples: written by the protocol clients' recorders
    (``core.tags.TagStore``), read by the tag history route and the ``tags`` command.

    Built from the storage's SQL gateway (``context.database``); a command that
    opens the storage passes the storage object."""

    def __init__(self, database: SqlGateway) -> None:
        if database.dialect not in SQL:
            raise RuntimeError(f"the tag polling has no SQL for the {database.dialect} dialect")
        self.database = database
        self.sql = SQL[database.dialect]

    async def store_tag_values(self, samples: Sequence[TagRow]) -> None:
        """Store samples of polled tags durably, all in one transaction. A tag
        keeps one sample per second: a later sample of the same second replaces
        it. Raises ValueError on an unknown quality (nothing is stored)."""
        if not samples:
            return
        bad = sorted({s.quality for s in samples} - TAG_QUALITIES)
        if bad:
            raise ValueError(f"unknown tag quality {bad[0]!r} (known: {', '.join(sorted(TAG_QUALITIES))})")
        await self.database.sql_write([(self.sql["store"], [
            (s.tag, s.ts, s.value if s.quality == "good" else None, s.quality) for s in samples])])

    async def tag_values(self, tag: str, t0: int, t1: int, limit: int = 10000) -> list[dict[str, Any]]:
        """Stored samples of one tag with t0 <= ts < t1, oldest first: ``tag``,
        ``ts``, ``value`` (None unless good) and ``quality``."""
        return await self.database.sql_read(self.sql["samples"], (tag, t0, t1, limit))

    async def tag_series(self, tag: str, t0: int, t1: int) -> TagSeries:
        """Every stored sample of one tag with t0 <= ts < t1, oldest first, as arrays
        (a value only when good), for calculated inputs (``core.calculated``)."""
        rows = await self.database.sql_read(self.sql["series"], (tag, t0, t1))
        return TagSeries.of((r["ts"], r["value"]) for r in rows)

    async def latest_tag_values(self) -> list[dict[str, Any]]:
        """The newest stored sample of every tag, by tag id, with ``last_good_value``
        and ``last_good_ts`` (None when the tag never had a good value)."""
        return await self.database.sql_read(self.sql["latest"])
