"""SQLite storage of the address slots protocol bridges (the Modbus server) give
registry objects (``BridgeSlotRepository``, the Modbus plugin's).

A part of ``SqliteStorage`` (a mixin): it uses the storage's reader (``_all``)
and its group-committing writer (``_submit``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from balans_edge.core.storage.bridge_slots_repository import BridgeSlotRepository

# One statement per object, all in one write transaction: each row sees the
# rows inserted before it, so "one past the highest slot ever given" is
# computed under the database's write lock. BEGIN IMMEDIATE serialises
# allocations of this process and of any other (a CLI writing the map while
# the server runs); UNIQUE (bridge, slot) would refuse a duplicate anyway.
ALLOCATE = (
    "INSERT INTO bridge_slots (bridge, object_id, slot, allocated_at) "
    "SELECT ?1, ?2, coalesce((SELECT max(slot) + 1 FROM bridge_slots WHERE bridge = ?1), 0), ?3 "
    "WHERE NOT EXISTS (SELECT 1 FROM bridge_slots WHERE bridge = ?1 AND object_id = ?2)"
)


class BridgeSlots(BridgeSlotRepository):
    _all: Callable[..., Awaitable[list[Any]]]
    _submit: Callable[..., Awaitable[None]]

    async def bridge_slots(self, bridge: str) -> dict[str, int]:
        rows = await self._all("SELECT object_id, slot FROM bridge_slots WHERE bridge = ? ORDER BY slot", (bridge,))
        return {r[0]: r[1] for r in rows}

    async def allocate_bridge_slots(self, bridge: str, object_ids: Sequence[str], t: int) -> dict[str, int]:
        slots = await self.bridge_slots(bridge)
        new = list(dict.fromkeys(o for o in object_ids if o not in slots))
        if new:
            await self._submit([(ALLOCATE, [(bridge, o, int(t)) for o in new])])
            slots = await self.bridge_slots(bridge)
        return slots
