"""The questions asked of balance groups, answered from storage.

The HTTP API and the command line ask the same questions (a group's balance
per hour, day or month; its monthly allocation; the ranking of losses), so the
answers are assembled here once, from the stored hourly balance, the registry
and the findings journal.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.core.allocation import AccountUse, AllocationReport, allocate
from balans_edge.core.balance import BalanceSeries, Coverage
from balans_edge.core.calculated import input_meters
from balans_edge.core.calendar import Step, period_ends, periods
from balans_edge.core.losses import LossEntry, finding_active, rank, volume_between
from balans_edge.core.model import Group, Meter
from balans_edge.core.storage.views import Queries
from balans_edge.core.times import HOUR, hour_ceil, hour_floor

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
    return hour_floor(t0), hour_ceil(t1)


def closed_span(t0: int, t1: int, now: int) -> tuple[int, int]:
    """The hours of [t0, t1) that are over by ``now``: an hour still running has no
    closing reading yet, and would count as missing in a month-to-date total."""
    h0, h1 = hour_span(t0, t1)
    return h0, max(h0, min(h1, hour_floor(now)))


@dataclass(frozen=True, slots=True)
class Tree:
    """The registry's groups with their members, for lookups by id."""

    groups: dict[str, Group]
    meters: dict[str, Meter]
    member_meters: dict[str, list[str]]
    children: dict[str, list[str]]

    @classmethod
    async def load(cls, storage: Queries) -> Tree:
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
    async def current(cls, storage: Queries) -> Tree:
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
        meters = [i.meter_id for i in input_meters(group)] + self.member_meters.get(group_id, [])
        meters += [i.meter_id for child in self.children.get(group_id, []) for i in input_meters(self.groups[child])]
        return sum(self.meters[m].pulse_weight for m in meters if m in self.meters)

    def suspects_of(self, group_id: str) -> set[str]:
        """The group and its member meters: what a finding may be about to concern it."""
        return {group_id, *self.member_meters.get(group_id, [])}

    def _counted(self, group_id: str) -> tuple[list[Meter], list[Meter]]:
        """The meters a group's balance counts: its input meters, and its members
        (its member meters and its member groups' input meters)."""
        own = [i.meter_id for i in input_meters(self.groups[group_id])]
        fed = self.member_meters.get(group_id, []) + [
            i.meter_id for child in self.children.get(group_id, []) for i in input_meters(self.groups[child])]
        return [self.meters[m] for m in own if m in self.meters], [self.meters[m] for m in fed if m in self.meters]

    def installed(self, group_ids: Sequence[str], t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Members and input meters of each group installed in each hour (two (G, H)
        int64 arrays), counted as the balance worker counts them: a meter is in an
        hour that ends after its installation and starts before its removal."""
        t = np.asarray(t, np.int64)
        members = np.zeros((len(group_ids), len(t)), np.int64)
        inputs = np.zeros_like(members)
        for row, group_id in enumerate(group_ids):
            if group_id not in self.groups:  # deleted since the caller listed it: nothing installed
                continue
            own, fed = self._counted(group_id)
            inputs[row] = self._active(own, t)
            members[row] = self._active(fed, t)
        return members, inputs

    def install_changes(self, group_ids: Sequence[str]) -> np.ndarray:
        """The hours (sorted) from which ``installed`` may count differently for these
        groups: a meter's first hour (that of its installation) and the first hour
        after its removal. Between two of them the counts are the same every hour."""
        times: list[int] = []
        for group_id in group_ids:
            if group_id not in self.groups:
                continue
            for m in itertools.chain(*self._counted(group_id)):
                times.append(hour_floor(m.install_time))
                if m.removed_time is not None:
                    times.append(hour_ceil(m.removed_time))
        return np.unique(np.array(times, np.int64))

    @staticmethod
    def _active(meters: Sequence[Meter], t: np.ndarray) -> np.ndarray:
        installed = np.sort(np.array([m.install_time for m in meters], np.int64))
        removed = np.sort(np.array([m.removed_time for m in meters if m.removed_time is not None], np.int64))
        return np.searchsorted(installed, t + HOUR, side="left") - np.searchsorted(removed, t, side="right")


_TREES: weakref.WeakKeyDictionary[Queries, tuple[int, Tree]] = weakref.WeakKeyDictionary()
"""The last tree built per storage, with the registry version it was built at."""


def count_missing(columns: dict[str, np.ndarray], never: np.ndarray, blind: np.ndarray, members: np.ndarray,
                  inputs: np.ndarray) -> None:
    """Count the meters nobody reported as missing, in ``columns`` (a balance's
    (G, N) columns, changed in place), over N stretches of hours that are over and
    in each of which ``members`` and ``inputs`` meters of each group are installed:

    - ``never``: hours of the stretch never computed (no meter counted at all):
      every installed member is missing, and so is every installed input meter,
      at least one when members were installed (their group had an input);
    - ``blind``: hours whose members are counted but no input meter is: the input
      is missing (at least one meter).

    A stretch is one hour (``count_unknown``) or the hours of a period between two
    changes of the installed meters (``group_series``): the rule is the same.
    """
    fed = np.maximum(inputs, 1)
    columns["missing"] += never * members
    columns["input_missing"] += never * np.where(members > 0, fed, inputs) + blind * fed


def count_unknown(series: BalanceSeries, installed: Callable[[], tuple[np.ndarray, np.ndarray]],
                  now: int) -> BalanceSeries:
    """The stored hourly balance with what nobody knows counted as missing.

    Storage holds an hour only once some meter of the site reported it, and
    sums an input none of whose meters was counted to 0: both would read as a
    known input of 0. In an hour that is over, a group-hour never computed (no
    count at all) has every member and input meter installed then missing
    (``installed()``: members and inputs, (G, H) each, asked only when some
    hour needs them), and a group whose members are counted but no
    input meter is has its input missing (``count_missing``). An hour in which
    none of the group's meters was installed stays empty (the group was not
    there), and hours not over yet are emptied: they are not missing, they have
    not happened.
    """
    over = (series.t + HOUR <= now)[None, :]
    no_input = (series.input_measured + series.input_estimated + series.input_missing == 0) & over
    if not no_input.any() and over.all():
        return series
    columns = {name: np.where(over, getattr(series, name), 0) for name in BalanceSeries.COLUMNS}
    if no_input.any():
        counted = series.measured + series.estimated + series.missing > 0
        count_missing(columns, no_input & ~counted, no_input & counted, *installed())
    return BalanceSeries(list(series.group_ids), series.t, **columns)


async def hourly_balance(storage: Queries, tree: Tree, group_ids: Sequence[str], h0: int, h1: int,
                         now: int) -> BalanceSeries:
    """Hourly balance of the groups over the hours [h0, h1), unknown hours missing
    (``count_unknown``: numpy work over every group's hours, done in a worker thread)."""
    series = await storage.balance(list(group_ids), h0, h1)
    return await asyncio.to_thread(count_unknown, series, lambda: tree.installed(group_ids, series.t), now)


def _hour_starts(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """How many hour starts (multiples of an hour) lie in [a, b)."""
    return np.maximum(0, (hour_ceil(np.asarray(b)) - hour_ceil(np.asarray(a))) // HOUR)


def coverage(starts: np.ndarray, step: Step, tz: ZoneInfo, h0: int, h1: int, now: int) -> Coverage:
    """Which periods the hours [h0, h1) that are over by ``now`` fill only in part."""
    ends = period_ends(starts, step, tz)
    over = hour_floor(now)
    return Coverage(_hour_starts(np.maximum(starts, h0), np.minimum(np.minimum(ends, h1), over)),
                    _hour_starts(starts, ends))


@dataclass(frozen=True, slots=True)
class GroupPeriods:
    """A balance per hour, day or month and how much of each period it covers."""

    series: BalanceSeries
    coverage: Coverage


async def group_series(storage: Queries, tree: Tree, group_ids: Sequence[str], t0: int, t1: int, step: Step,
                       tz: ZoneInfo, now: int) -> GroupPeriods:
    """Balance of the groups per hour, local day or local month over [t0, t1):
    hours nobody knows are missing, hours not over yet are not counted, and
    periods cut short by the span or by ``now`` are marked partial.

    Storage sums the stored hours where they are (fifty years of months are
    440,000 hours per group: never on the event loop). It sums them per piece:
    the hours of a period that are over, cut wherever a group's installed meters
    change, so the hours nobody reported are counted missing per piece
    (``count_missing``), not hour by hour."""
    p = periods(t0, t1, step, tz)
    h0, h1 = int(p.edges[0]), int(p.edges[-1])
    over = max(h0, min(h1, hour_floor(now)))
    cuts = tree.install_changes(group_ids)
    edges = np.unique(np.concatenate([p.edges[p.edges < over], cuts[(cuts > h0) & (cuts < over)], [over]]))
    shape = (len(group_ids), len(p.starts))
    columns = {name: np.zeros(shape, np.float64 if i < 2 else np.int64)
               for i, name in enumerate(BalanceSeries.COLUMNS)}
    if len(edges) > 1:
        sums = await storage.balance_periods(list(group_ids), edges)
        pieces = {name: getattr(sums.series, name) for name in BalanceSeries.COLUMNS}
        members, inputs = tree.installed(group_ids, edges[:-1])
        count_missing(pieces, np.diff(edges) // HOUR - sums.counted, sums.blind, members, inputs)
        period = np.searchsorted(p.edges, edges[:-1], side="right") - 1
        first = np.flatnonzero(np.r_[True, period[1:] != period[:-1]])
        for name, piece in pieces.items():
            columns[name][:, period[first]] = np.add.reduceat(piece, first, axis=1)
    series = BalanceSeries(list(group_ids), p.starts, **columns)
    return GroupPeriods(series, coverage(p.starts, step, tz, h0, h1, now))


async def findings_between(storage: Queries, t0: int, t1: int) -> list[dict[str, Any]]:
    """Findings whose problem was there during [t0, t1): first reported before its end and
    last reported after its start (one still open from an earlier month is about this one too)."""
    rows = await storage.journal_list("findings", FINDINGS_SCANNED)
    out = []
    for f in rows:
        active = finding_active(f)
        first, last = active if active is not None else (f.get("t") or 0, f.get("t") or 0)
        if first < t1 and last >= t0:
            out.append(f)
    return out


async def allocation(storage: Queries, tree: Tree, group: Group, month: str, tz: ZoneInfo,
                     threshold: float, now: int) -> AllocationReport:
    """The month's ОДН allocation of a house's imbalance to its accounts (to date, for the running month)."""
    t0, t1 = month_bounds(month, tz)
    h0, h1 = closed_span(t0, t1, now)
    series = await hourly_balance(storage, tree, [group.group_id], h0, h1, now)
    known = bool(series.input_known().any()) and int(series.input_missing.sum()) == 0
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
    found = await findings_between(storage, h0, h1)
    fixable = sum(volume_between(f, h0, h1) or 0.0 for f in found if f.get("subject") in suspects)
    return allocate(group, month, float(series.input.sum()) if known else None, float(series.consumed.sum()),
                    shares, fixable=fixable, completeness=completeness, threshold=threshold)


async def losses(storage: Queries, tree: Tree, level: str | None, t0: int, t1: int, tz: ZoneInfo,
                 threshold: float, now: int,
                 order: Literal["absolute", "relative", "trend"] = "absolute") -> list[LossEntry]:
    """Groups of a level (or all) ranked by their loss over the hours of [t0, t1) that are over."""
    groups = [g for g in tree.groups.values() if level is None or g.level == level]
    h0, h1 = closed_span(t0, t1, now)
    hourly = await hourly_balance(storage, tree, [g.group_id for g in groups], h0, h1, now)
    found = await findings_between(storage, t0, t1)
    # Every group's hours of the period: numpy work for a worker thread, not the event loop.
    return await asyncio.to_thread(rank, groups, hourly, tz, found, members=tree.member_meters,
                                   threshold=threshold, order=order)
