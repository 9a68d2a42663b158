"""The Modbus plugin's table and its repository: the address slots its server
gives registry objects (meters, groups), allocated once and never reused, so a
SCADA's tag list stays valid when objects are added or removed.

Owner ``modbus``. Core migration 0008 created the table before owners existed;
core migration 0016 handed it over, and from then on the plugin's own
migrations (``migrations/<dialect>/``, ``MIGRATIONS``, contributed through
``register_migrations``) create and change it. Only the Modbus server (and its
``map`` command) gives slots; the OPC UA server addresses objects by their ids.
The table is read and written only here, through the storage's SQL gateway
(``SqlGateway``), the SQL of each dialect in one place (``SQL``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from balans_edge.core.storage.migrations import MigrationSet

if TYPE_CHECKING:
    from balans_edge.core.storage.gateway import SqlGateway

OWNER = "modbus"
MIGRATIONS = MigrationSet(OWNER, "balans_edge.plugins.modbus")
"""``plugins/modbus/migrations/sqlite/0001_tables.sql``, ..."""

SQL: dict[str, dict[str, str]] = {
    "sqlite": {
        "slots": "SELECT object_id, slot FROM bridge_slots WHERE bridge = ? ORDER BY slot",
        # One statement per object, all in one write transaction: each row sees the
        # rows inserted before it, so "one past the highest slot ever given" is
        # computed under the database's write lock. BEGIN IMMEDIATE serialises
        # allocations of this process and of any other (a command writing the map
        # while the server runs); UNIQUE (bridge, slot) would refuse a duplicate anyway.
        "allocate": "INSERT INTO bridge_slots (bridge, object_id, slot, allocated_at) "
                    "SELECT ?1, ?2, coalesce((SELECT max(slot) + 1 FROM bridge_slots WHERE bridge = ?1), 0), ?3 "
                    "WHERE NOT EXISTS (SELECT 1 FROM bridge_slots WHERE bridge = ?1 AND object_id = ?2)",
    },
}
"""Every statement of the repository, by dialect (``SqlGateway.dialect``) and name;
each dialect names the same statements with the same parameters in the same order."""


class BridgeSlotRepository:
    """A bridge's slots per object id (``modbus:meters``, ``modbus:groups``).

    Built from the storage's SQL gateway (``context.database``); a command that
    opens the storage passes the storage object."""

    def __init__(self, database: SqlGateway) -> None:
        if database.dialect not in SQL:
            raise RuntimeError(f"the modbus plugin has no SQL for the {database.dialect} dialect")
        self.database = database
        self.sql = SQL[database.dialect]

    async def bridge_slots(self, bridge: str) -> dict[str, int]:
        """object id -> slot of every object ``bridge`` ever gave a slot to (removed
        objects included: their slots are never given to another object)."""
        rows = await self.database.sql_read(self.sql["slots"], (bridge,))
        return {r["object_id"]: r["slot"] for r in rows}

    async def allocate_bridge_slots(self, bridge: str, object_ids: Sequence[str], t: int) -> dict[str, int]:
        """Give each of ``object_ids`` that has no slot in ``bridge`` the next slot
        (one past the highest ever allocated), in the order given, durably and in
        one transaction; return every slot of the bridge. Idempotent: an object
        keeps its slot, and callers racing each other (tasks or processes) never
        get the same slot for two objects."""
        slots = await self.bridge_slots(bridge)
        new = list(dict.fromkeys(o for o in object_ids if o not in slots))
        if new:
            await self.database.sql_write([(self.sql["allocate"], [(bridge, o, int(t)) for o in new])])
            slots = await self.bridge_slots(bridge)
        return slots
