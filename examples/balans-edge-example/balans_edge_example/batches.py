"""The example plugin's own table and its repository: what a partner's plugin
does to keep data of its own.

``example_batches`` is created by the plugin's migrations
(``migrations/<dialect>/``, contributed through ``register_migrations``) and
read and written only here, through the storage's SQL gateway
(``balans_edge.core.storage.gateway.SqlGateway``): SQL for each dialect in one
place, the rest of the plugin calls methods."""

from __future__ import annotations

from typing import Any

from balans_edge.core.storage.gateway import SqlGateway
from balans_edge.core.storage.migrations import MigrationSet

MIGRATIONS = MigrationSet("example", "balans_edge_example")
"""``balans_edge_example/migrations/sqlite/0001_*.sql``, ``0002_*.sql``, ..."""

SQL = {
    "sqlite": {
        "record": "INSERT INTO example_batches (t, readings, meters, t_min, t_max) VALUES (?, ?, ?, ?, ?)",
        "recent": "SELECT t, readings, meters, t_min, t_max FROM example_batches ORDER BY t DESC, id DESC LIMIT ?",
        "totals": "SELECT count(*) AS batches, coalesce(sum(readings), 0) AS readings FROM example_batches",
    },
}


class BatchLog:
    """The readings batches the plugin observed."""

    def __init__(self, gateway: SqlGateway) -> None:
        if gateway.dialect not in SQL:
            raise RuntimeError(f"the example plugin has no SQL for {gateway.dialect}")
        self.gateway = gateway
        self.sql = SQL[gateway.dialect]

    async def record(self, t: int, readings: int, meters: int, t_min: int, t_max: int) -> None:
        await self.gateway.sql_write([(self.sql["record"], [(t, readings, meters, t_min, t_max)])])

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest batches first."""
        return await self.gateway.sql_read(self.sql["recent"], (limit,))

    async def totals(self) -> dict[str, int]:
        (row,) = await self.gateway.sql_read(self.sql["totals"])
        return row
