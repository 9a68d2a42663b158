"""The questions asked of balance groups, answered from storage.

The HTTP API and the command line ask the same questions (a group's balance
per hour, day or month; its monthly allocation; the ranking of losses), so the
answers are assembled here once, from the stored hourly balance, the registry
and the findings journal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import weakref
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.core.allocation import AccountUse, AllocationReport, allocate
from balans_edge.core.balance import BalanceSeries
from balans_edge.core.losses import LossEntry, finding_volume, rank
from balans_edge.core.model import Group, Meter
from balans_edge.core.periods import Step, periods
from balans_edge.core.storage import Storage

HOUR = 3600
FINDINGS_SCANNED = 10_000
"""Newest findings looked at for suspects and fixable volume."""


def month_bounds(month: str, tz: ZoneInfo) -> tuple[int, int]:
    """Unix times of the start of a local month (``YYYY-MM``) and of the next one."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", month)
    if match is None or not 1 <= int(match[2]) <= 12:
        raise ValueError(f"month: expected YYYY-MM, got {month!r}")
    year, mon = int(match[1]), int(match[2])
    start = datetime(year, mon, 1, tzinfo=tz)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=tz)
    return int(start.timestamp()), int(end.timestamp())


def hour_span(t0: int, t1: int) -> tuple[int, int]:
    return t0 - t0 % HOUR, -(-t1 // HOUR) * HOUR


def closed_span(t0: int, t1: int, now: int) -> tuple[int, int]:
    """The hours of [t0, t1) that are over by ``now``: an hour still running has no
    closing reading yet, and would count as missing in a month-to-date total."""
    h0, h1 = hour_span(t0, t1)
    return h0, max(h0, min(h1, now - now % HOUR))


async def group_series(storage: Storage, group_ids: Sequence[str], t0: int, t1: int, step: Step,
                       tz: ZoneInfo) -> BalanceSeries:
    """Balance of the groups per hour, local day or local month over [t0, t1).
    Storage sums the hours of each period where they are (fifty years of months
    are 440,000 hours per group: never on the event loop)."""
    p = periods(t0, t1, step, tz)
    return dataclasses.replace(await storage.balance_periods(list(group_ids), p.edges), t=p.starts)


@dataclass(frozen=True, slots=True)
class Tree:
    """The registry's groups with their members, for lookups by id."""

    groups: dict[str, Group]
    meters: dict[str, Meter]
    member_meters: dict[str, list[str]]
    children: dict[str, list[str]]

    @classmethod
    async def load(cls, storage: Storage) -> Tree:
        groups = {g.group_id: g for g in await storage.registry_list("groups")}
        meters = {m.meter_id: m for m in await storage.registry_list("meters")}
        member_meters: dict[str, list[str]] = defaultdict(list)
        children: dict[str, list[str]] = defaultdict(list)
        for m in meters.values():
            if m.group_id in groups:
                member_meters[m.group_id].append(m.meter_id)
        for g in groups.values():
            if g.parent_id in groups:
                children[g.parent_id].append(g.group_id)
        return cls(groups, meters, dict(member_meters), dict(children))

    @classmethod
    async def current(cls, storage: Storage) -> Tree:
        """The tree as the registry is now, built again only after the registry
        changed: a request about one group must not read every meter of the site."""
        version = await storage.registry_version()
        cached = _TREES.get(storage)
        if cached is not None and cached[0] == version:
            return cached[1]
        tree = await cls.load(storage)
        _TREES[storage] = (version, tree)  # a change during the load only makes the next call load again
        return tree

    def describe(self, group_id: str) -> dict[str, Any]:
        return {"members": sorted(self.member_meters.get(group_id, [])),
                "children": sorted(self.children.get(group_id, []))}

    def resolution(self, group_id: str) -> float:
        """Most the group's imbalance can be off by whole pulses: one pulse of each
        meter in its balance (inputs, member meters, member groups' inputs)."""
        group = self.groups[group_id]
        meters = [i.meter_id for i in group.inputs] + self.member_meters.get(group_id, [])
        meters += [i.meter_id for child in self.children.get(group_id, []) for i in self.groups[child].inputs]
        return sum(self.meters[m].pulse_weight for m in meters if m in self.meters)

    def suspects_of(self, group_id: str) -> set[str]:
        """The group and its member meters: what a finding may be about to concern it."""
        return {group_id, *self.member_meters.get(group_id, [])}


_TREES: weakref.WeakKeyDictionary[Storage, tuple[int, Tree]] = weakref.WeakKeyDictionary()
"""The last tree built per storage, with the registry version it was built at."""


async def findings_between(storage: Storage, t0: int, t1: int) -> list[dict[str, Any]]:
    rows = await storage.journal_list("findings", FINDINGS_SCANNED)
    return [f for f in rows if t0 <= int(f.get("t") or 0) < t1]


async def allocation(storage: Storage, tree: Tree, group: Group, month: str, tz: ZoneInfo,
                     threshold: float, now: int) -> AllocationReport:
    """The month's ОДН allocation of a house's imbalance to its accounts (to date, for the running month)."""
    t0, t1 = month_bounds(month, tz)
    h0, h1 = closed_span(t0, t1, now)
    series = await storage.balance([group.group_id], h0, h1)
    known = int(series.input_missing.sum()) == 0
    members = int((series.measured + series.estimated + series.missing).sum())
    completeness = float((series.measured + series.estimated).sum()) / members if members else 0.0
    meter_ids = tree.member_meters.get(group.group_id, [])
    keys = await storage.meter_keys()
    values, _ = await storage.consumption_matrix([keys[m] for m in meter_ids], h0, h1)
    per_meter = np.nansum(values, axis=1) if len(meter_ids) else np.zeros(0)
    use: dict[str, float] = defaultdict(float)
    for meter_id, volume in zip(meter_ids, per_meter.tolist(), strict=True):
        account = tree.meters[meter_id].account_id
        if account is not None:
            use[account] += volume
    accounts = {a.account_id: a for a in await storage.registry_list("accounts")}
    shares = [AccountUse(a, getattr(accounts.get(a), "consumer", ""), getattr(accounts.get(a), "area_m2", None), v)
              for a, v in sorted(use.items())]
    suspects = tree.suspects_of(group.group_id)
    found = await findings_between(storage, t0, t1)
    fixable = sum(finding_volume(f) or 0.0 for f in found if f.get("subject") in suspects)
    return allocate(group, month, float(series.input.sum()) if known else None, float(series.consumed.sum()),
                    shares, fixable=fixable, completeness=completeness, threshold=threshold)


async def losses(storage: Storage, tree: Tree, level: str | None, t0: int, t1: int, tz: ZoneInfo,
                 threshold: float, now: int,
                 order: Literal["absolute", "relative", "trend"] = "absolute") -> list[LossEntry]:
    """Groups of a level (or all) ranked by their loss over the hours of [t0, t1) that are over."""
    groups = [g for g in tree.groups.values() if level is None or g.level == level]
    h0, h1 = closed_span(t0, t1, now)
    hourly = await storage.balance([g.group_id for g in groups], h0, h1)
    found = await findings_between(storage, t0, t1)
    # Every group's hours of the period: numpy work for a worker thread, not the event loop.
    return await asyncio.to_thread(rank, groups, hourly, tz, found, members=tree.member_meters,
                                   threshold=threshold, order=order)
