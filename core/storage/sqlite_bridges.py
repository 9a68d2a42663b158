"""SQLite storage of what protocol bridges (the Modbus server, later OPC UA)
need: the address slots they give registry objects, and the newest reading
of each meter, which is what a bridge shows as a meter's present state.

A part of ``SqliteStorage`` (a mixin): it uses the storage's reader (``_all``)
and its group-committing writer (``_submit``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from balans_edge.core.storage.base import ReadingRows

CHUNK = 500
"""Meters per query (well under SQLite's limit on bound parameters)."""

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

# The newest reading of each meter: one index probe per meter on the primary
# key (meter, ts) instead of a scan of every reading for ``GROUP BY meter``
# (CROSS JOIN keeps the meters as the outer loop: SQLite does not reorder it).
LATEST = (
    "SELECT r.meter, r.ts, r.counter, r.pulses, r.status, r.flags FROM meters m CROSS "
    "JOIN readings r ON r.meter = m.id AND r.ts = (SELECT max(ts) FROM readings WHERE meter = m.id)"
)


class BridgeSlots:
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

    async def latest_readings(self, meters: Sequence[int] | None = None) -> ReadingRows:
        if meters is None:
            rows = await self._all(f"{LATEST} ORDER BY r.meter")
            return ReadingRows.from_tuples([tuple(r) for r in rows])
        keys = sorted(set(int(m) for m in meters))
        out: list[tuple] = []
        for i in range(0, len(keys), CHUNK):
            chunk = keys[i : i + CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = await self._all(f"{LATEST} WHERE m.id IN ({marks}) ORDER BY r.meter", chunk)
            out += [tuple(r) for r in rows]
        return ReadingRows.from_tuples(out)
