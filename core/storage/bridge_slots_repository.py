"""Address slots a protocol bridge (the Modbus server) gives registry objects,
allocated once and never reused, so a SCADA's tag list stays valid.

Belongs to the Modbus plugin (owner ``modbus``): its table was handed over by
core migration 0016, and this interface moves into the plugin's folder with
it. ``SqliteStorage`` implements it until then; ``Storage`` does not declare it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar


class BridgeSlotRepository(ABC):
    """A bridge's slots per object id."""

    OWNER: ClassVar[str] = "modbus"
    """The owner of the tables behind this interface (``MigrationSet.owner``)."""

    @abstractmethod
    async def bridge_slots(self, bridge: str) -> dict[str, int]:
        """object id -> slot of every object ``bridge`` ever gave a slot to (removed
        objects included: their slots are never given to another object)."""

    @abstractmethod
    async def allocate_bridge_slots(self, bridge: str, object_ids: Sequence[str], t: int) -> dict[str, int]:
        """Give each of ``object_ids`` that has no slot in ``bridge`` the next slot
        (one past the highest ever allocated), in the order given, durably and in
        one transaction; return every slot of the bridge. Idempotent: an object
        keeps its slot, and callers racing each other (tasks or processes) never
        get the same slot for two objects."""
