"""How group detectors plug into the server's detector hook.

A loss detector looks at one balance group at a time: ``detect_group`` is a
pure function of a ``GroupData`` window, so it is tested and scored on
scenario data without a server. ``GroupDetector.detect`` is the hook's
``Detector`` contract: it asks the run's ``Scope`` for the window of every
group in scope (loaded once per run and shared by all detectors) and calls
``detect_group`` on each in a worker thread.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from balans_edge.core.analytics.data import GroupData, load_group_data
from balans_edge.core.calculated import TagSamples, input_meters
from balans_edge.core.components import Finding
from balans_edge.core.model import Group, Meter
from balans_edge.core.times import DAY, hour_floor

if TYPE_CHECKING:
    from balans_edge.core.detection import DetectionRun

DEFAULT_WINDOW_DAYS = 14


@dataclass(slots=True)
class Scope:
    """What one run of the detectors looks at: groups and hours [t0, t1).

    Detectors judge as of the scope's end, not the wall clock: a run over a
    past period finds what was wrong then (a module silent at t1, not silent
    since t1 until today), and only about the scope's groups."""

    t0: int
    t1: int
    group_ids: list[str] | None = None
    """None: every group."""
    live: bool = False
    """The scope ends now (a scheduled run, or a run without ``to``): what is
    known of the devices now counts, including news of the running hour."""
    _cache: dict[str, GroupData] = field(default_factory=dict)

    @classmethod
    def recent(cls, now: float, window_days: int = DEFAULT_WINDOW_DAYS, group_ids: list[str] | None = None) -> Scope:
        """The last ``window_days`` of hours that are over by ``now``."""
        t1 = hour_floor(int(now))
        return cls(t1 - window_days * DAY, t1, group_ids, live=True)

    async def meters(self, storage: Any) -> list[Meter] | None:
        """The meters of the scope's groups (members and inputs); None: every meter."""
        if self.group_ids is None:
            return None
        groups = [g for g in await storage.registry_list("groups") if g.group_id in self.group_ids]
        inputs = {i.meter_id for g in groups for i in input_meters(g)}
        return [m for m in await storage.registry_list("meters") if m.group_id in self.group_ids
                or m.meter_id in inputs]

    async def subjects(self, storage: Any) -> set[str] | None:
        """What a finding of this scope may be about: its groups, their meters, the
        radio modules of those meters and the concentrators of those modules
        (``module:ID``, ``concentrator:ID``); None: anything."""
        meters = await self.meters(storage)
        if meters is None:
            return None
        modules = {m.module_id for m in meters if m.module_id is not None}
        concentrators = {m.concentrator_id for m in await storage.registry_list("modules")
                         if m.module_id in modules and m.concentrator_id is not None}
        return ({*(self.group_ids or ()), *(m.meter_id for m in meters), *(f"module:{m}" for m in modules),
                 *(f"concentrator:{c}" for c in concentrators)})

    async def windows(self, storage: Any, tz: ZoneInfo, tags: TagSamples | None = None,
                      days: int | None = None) -> list[GroupData]:
        """The window of every group in scope, loaded once per run (``tags``: where
        calculated inputs read their tags); with ``days``, at least that many days
        up to the scope's end (a detector that needs a longer history than the
        run's window: the night flow's baseline of weeks)."""
        t0 = self.t0 if days is None else min(self.t0, self.t1 - days * DAY)
        groups = {g.group_id: g for g in await storage.registry_list("groups")}
        wanted = [g for g in groups if self.group_ids is None or g in self.group_ids]
        key = "" if t0 == self.t0 else f"@{t0}"
        missing = [g for g in wanted if g + key not in self._cache]
        if missing:
            members: dict[str | None, list[Meter]] = {}
            for m in await storage.registry_list("meters"):
                members.setdefault(m.group_id, []).append(m)
            children: dict[str | None, list[tuple[str, int]]] = {}
            calculated: dict[str | None, list[Group]] = {}
            for g in groups.values():
                if g.formula:
                    calculated.setdefault(g.parent_id, []).append(g)
                else:
                    children.setdefault(g.parent_id, []).extend((i.meter_id, i.sign) for i in g.inputs)
            keys = await storage.meter_keys()
            for gid in missing:
                self._cache[gid + key] = await load_group_data(
                    storage, groups[gid], members.get(gid, []), children.get(gid, []), keys, t0, self.t1, tz,
                    tags=tags, calculated_children=calculated.get(gid, []))
        return [self._cache[g + key] for g in wanted]


class GroupDetector(ABC):
    """A detector of one balance group at a time."""

    name: str = "group-detector"

    @abstractmethod
    def detect_group(self, data: GroupData) -> list[Finding]:
        """Findings about the group or its meters in this window (pure: no I/O;
        it runs in a worker thread, so it must not touch the server either)."""

    async def detect(self, run: DetectionRun) -> list[Finding]:
        found: list[Finding] = []
        for data in await run.scope.windows(run.queries, run.tz, run.tags):
            # Off the event loop, a group at a time: a run over a district takes
            # seconds of numpy and scipy, while concentrators wait for their ACKs.
            found += await asyncio.to_thread(self.detect_group, data)
        return found
