"""Queue entries -> line protocol: the measurements, tags and fields of
docs/export.md.

Values are read when a batch is sent, not when the entry was queued, so a point
changed again before it went out is sent once with its newest value. Several
entries for the same point in one batch (an hour recomputed twice, every hour
of a day for the day's total) become one line.

Tags carry the balance-group path of a meter or group: for each standard level
(region, city, district, street, house, entrance) the id of the nearest group
of that level on the way up the tree. So a central database that receives the
points of many edge boxes can sum any level with an ordinary query
(``sum(consumption_value{city="..."})``), as long as the boxes use the same
ids for the groups they share.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.core.balance import BalanceSeries, points
from balans_edge.core.balance_queries import Tree, group_series
from balans_edge.core.calendar import local_day
from balans_edge.core.findings import finding_volume
from balans_edge.core.model import LEVELS, Group, Meter, Quality
from balans_edge.core.periods import RegisterTable
from balans_edge.core.storage.views import Queries
from balans_edge.plugins.export.feeds import BALANCE_COLUMNS
from balans_edge.plugins.export.lineproto import line, number, series
from balans_edge.plugins.export.records import ExportBatch

log = logging.getLogger(__name__)

Made = list[tuple[tuple[Any, ...], int, str | None]]
"""What a kind's builder makes of its rows: (point key, queue entry id, line) each."""

MEASUREMENTS = {
    "readings": "reading",
    "consumption": "consumption",
    "balance_hourly": "balance",
    "balance_daily": "balance_daily",
    "findings": "finding",
    "alarms": "alarm",
    "network": "network",
}
"""Measurement of each kind (before the target's prefix)."""


@dataclass(slots=True)
class Unit:
    """One point and the queue entries it carries: sent, acknowledged or
    dead-lettered together. Several entries for the same point in a batch make
    one unit; an entry whose row yields several points (a module's health
    reported through two concentrators) is in several units, and leaves the
    queue with the first of them."""

    first: int
    """The lowest of its entry ids: units are sent in queue order."""
    ids: list[int]
    line: str


@dataclass(slots=True)
class Built:
    units: list[Unit]
    gone: list[int]
    """Entries with nothing to send (their row or its meter or group no longer exists)."""

    @property
    def points(self) -> int:
        return len(self.units)


def reading_line(series_key: str, meter: Meter, r: Mapping[str, Any], value: float | None = None,
                 omitted: list[str] | None = None) -> str:
    """A reading's line: what ``line(series_key, {"value", "pulses", "counter",
    "status", "flags"}, ts, omitted)`` writes (a test holds them equal), in one
    format string, since readings are most of what is exported. ``value``: the
    register value (``RegisterTable``); without it, from the meter's current parameters."""
    if value is None:
        value = RegisterTable.of_meters([(0, meter)]).value(0, r["ts"], r["pulses"])
    value = round(value, 9)
    if math.isfinite(value):
        field = f",value={number(float(value))}"
    else:
        field = ""
        if omitted is not None:
            omitted.append("value")
    return (f"{series_key} counter={int(r['counter'])}i,flags={int(r['flags'])}i,pulses={int(r['pulses'])}i,"
            f"status={int(r['status'])}i{field} {int(r['ts'])}")


def group_path(groups: Mapping[str, Group], group_id: str | None) -> dict[str, str]:
    """{level: group id} of the nearest group of each standard level from ``group_id`` up."""
    tags: dict[str, str] = {}
    seen: set[str] = set()
    group = groups.get(group_id) if group_id else None
    while group is not None and group.group_id not in seen:
        seen.add(group.group_id)
        if group.level in LEVELS and group.level not in tags:
            tags[group.level] = group.group_id
        group = groups.get(group.parent_id) if group.parent_id else None
    return tags


@dataclass(slots=True)
class NonFinite:
    """Fields left out of their points because the value is NaN or infinite.

    InfluxDB refuses a whole batch for one ``inf``, so such a field never leaves;
    the rest of its point does (a reading's counter and pulses are still true).
    Each series and field is logged once per run, naming the series, so an
    operator knows which meter's or group's registry numbers to look at; the
    count goes to the target's status and metrics (docs/export.md)."""

    count: int = 0
    logged: set[tuple[str, str]] = field(default_factory=set)

    def note(self, series_key: str, names: list[str], t: int) -> None:
        self.count += len(names)
        for name in names:
            if (series_key, name) in self.logged or len(self.logged) >= 10_000:
                continue
            self.logged.add((series_key, name))
            log.warning("export: field %r of %s at %d is not a finite number: left out of the point, the rest is "
                        "sent; check the registry numbers of this meter or group (later ones are only counted)",
                        name, series_key, t)


@dataclass(slots=True)
class Registry:
    """The registry as the exporter needs it, with series keys escaped once."""

    version: int
    meters: dict[int, Meter]
    groups: dict[str, Group]
    tree: Tree
    register: RegisterTable
    meter_series: dict[tuple[str, int], str] = field(default_factory=dict)
    group_series: dict[tuple[str, str], str] = field(default_factory=dict)


class PointBuilder:
    """Turns a batch of queue entries into line protocol for one target."""

    def __init__(self, queries: Queries, tz: ZoneInfo, threshold: float, static_tags: Mapping[str, str],
                 prefix: str = "") -> None:
        self.queries = queries
        self.tz = tz
        self.threshold = threshold
        self.static_tags = dict(static_tags)
        self.prefix = prefix
        self.non_finite = NonFinite()
        self._registry: Registry | None = None

    def measurement(self, kind: str) -> str:
        return self.prefix + MEASUREMENTS[kind]

    async def registry(self) -> Registry:
        """The registry snapshot, reloaded when the registry changed."""
        version = await self.queries.registry_version()
        if self._registry is None or self._registry.version != version:
            meters = dict(await self.queries.meters_by_key())
            tree = await Tree.current(self.queries)
            self._registry = Registry(version, meters, dict(tree.groups), tree, await self.queries.register_table())
        return self._registry

    def _tags(self, specific: Mapping[str, str | None]) -> dict[str, str | None]:
        return {**self.static_tags, **specific}

    def _line(self, series_key: str, values: Mapping[str, Any], t: int) -> str | None:
        """``line``, noting the non-finite fields it left out."""
        omitted: list[str] = []
        text = line(series_key, values, t, omitted)
        if omitted:
            self.non_finite.note(series_key, omitted, t)
        return text

    def meter_key(self, reg: Registry, kind: str, key: int) -> str | None:
        """Series key of a meter's points of ``kind``; None if the meter is gone."""
        cached = reg.meter_series.get((kind, key))
        if cached is None:
            meter = reg.meters.get(key)
            if meter is None:
                return None
            tags = {"meter": meter.meter_id, "resource": str(meter.resource), "unit": meter.unit,
                    "group": meter.group_id, **group_path(reg.groups, meter.group_id)}
            cached = reg.meter_series[(kind, key)] = series(self.measurement(kind), self._tags(tags))
        return cached

    def group_key(self, reg: Registry, kind: str, group_id: str) -> str | None:
        cached = reg.group_series.get((kind, group_id))
        if cached is None:
            group = reg.groups.get(group_id)
            if group is None:
                return None
            tags = {"group": group.group_id, "level": group.level, "resource": str(group.resource),
                    "unit": group.unit, **group_path(reg.groups, group.group_id)}
            cached = reg.group_series[(kind, group_id)] = series(self.measurement(kind), self._tags(tags))
        return cached

    async def build(self, batch: ExportBatch) -> Built:
        reg = await self.registry()
        units: dict[tuple[Any, ...], Unit] = {}
        for kind, rows in batch.rows.items():
            made = getattr(self, f"_{kind}")(reg, rows)
            if inspect.isawaitable(made):
                made = await made
            for key, qid, text in made:
                if text is None:
                    continue
                unit = units.get((kind, key))
                if unit is None:
                    units[(kind, key)] = Unit(qid, [qid], text)
                elif qid not in unit.ids:
                    unit.ids.append(qid)
                    unit.first = min(unit.first, qid)
        carried = {i for u in units.values() for i in u.ids}
        gone = [i for i in batch.ids if i not in carried]
        return Built(sorted(units.values(), key=attrgetter("first")), gone)

    # one method per kind: (collapse key, queue id, line) for each row --------------

    def _readings(self, reg: Registry, rows: list[dict[str, Any]]) -> Made:
        out = []
        columns = np.array([(r["meter"], r["ts"], r["pulses"]) for r in rows], dtype=np.int64).reshape(-1, 3)
        values = reg.register.values(*columns.T).tolist()
        for r, value in zip(rows, values, strict=True):
            key = self.meter_key(reg, "readings", r["meter"])
            if key is None:
                continue
            meter = reg.meters[r["meter"]]
            omitted: list[str] = []
            out.append(((r["meter"], r["ts"]), r["qid"], reading_line(key, meter, r, value, omitted)))
            if omitted:
                self.non_finite.note(key, omitted, r["ts"])
        return out

    def _consumption(self, reg: Registry, rows: list[dict[str, Any]]) -> Made:
        out = []
        for r in rows:
            key = self.meter_key(reg, "consumption", r["meter"])
            if key is None:
                continue
            value = None if r["value"] is None else round(r["value"], 9)
            text = self._line(key, {"value": value, "quality": Quality(r["quality"]).label,
                                    "quality_code": r["quality"]}, r["t"])
            out.append(((r["meter"], r["t"]), r["qid"], text))
        return out

    def _balance_fields(self, reg: Registry, group: Group, series_: BalanceSeries, row: int,
                        ) -> list[dict[str, Any]]:
        """The fields of each period of one group's row, derived as the API derives them."""
        resolution = reg.tree.resolution(group.group_id)
        out = []
        for i, p in enumerate(points(series_, row, group, self.threshold, resolution)):
            out.append({
                "input": p["input"], "consumed": p["consumed"], "imbalance": p["imbalance"],
                "loss_pct": p["loss_pct"],
                "completeness_measured": p["completeness"]["measured"],
                "completeness_estimated": p["completeness"]["estimated"],
                "completeness_missing": p["completeness"]["missing"],
                "measured": int(series_.measured[row, i]), "estimated": int(series_.estimated[row, i]),
                "missing": int(series_.missing[row, i]), "input_missing": int(series_.input_missing[row, i]),
                "flags": ",".join(p["flags"]),
            })
        return out

    def _balance_hourly(self, reg: Registry, rows: list[dict[str, Any]]) -> Made:
        by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_group[r["group_id"]].append(r)
        out = []
        for group_id, grows in by_group.items():
            key = self.group_key(reg, "balance_hourly", group_id)
            if key is None:
                continue
            columns = {c: np.array([[r[c] for r in grows]], dtype=np.float64 if c in ("input", "consumed")
                                   else np.int64) for c in BALANCE_COLUMNS}
            hours = np.array([r["t"] for r in grows], dtype=np.int64)
            s = BalanceSeries([group_id], hours, **columns)
            for r, values in zip(grows, self._balance_fields(reg, reg.groups[group_id], s, 0), strict=True):
                out.append(((group_id, r["t"]), r["qid"], self._line(key, values, r["t"])))
        return out

    def day_of(self, t: int) -> tuple[int, int]:
        """Start of the local day holding ``t`` and of the next one."""
        return local_day(t, self.tz)

    async def _balance_daily(self, reg: Registry, rows: list[dict[str, Any]],
                             ) -> Made:
        days: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            if r["group_id"] in reg.groups:
                days[self.day_of(r["t"])].append(r)
        out = []
        for (d0, d1), drows in sorted(days.items()):
            group_ids = sorted({r["group_id"] for r in drows})
            s = (await group_series(self.queries, reg.tree, group_ids, d0, d1, "day", self.tz,
                                    int(time.time()))).series
            period = int(np.searchsorted(s.t, d0))
            if period >= len(s.t) or s.t[period] != d0:
                continue
            lines = {}
            for row, group_id in enumerate(group_ids):
                values = self._balance_fields(reg, reg.groups[group_id], s, row)[period]
                lines[group_id] = self._line(self.group_key(reg, "balance_daily", group_id), values, d0)
            out += [((r["group_id"], d0), r["qid"], lines[r["group_id"]]) for r in drows]
        return out

    def _findings(self, reg: Registry, rows: list[dict[str, Any]]) -> Made:
        out = []
        for r in rows:
            data = _data(r["data"])
            tags = {"detector": r["detector"], "kind": r["kind"], "subject": r["subject"], "group": r["group_id"],
                    **group_path(reg.groups, r["group_id"])}
            values = {"id": r["id"], "status": r["status"], "severity": r["severity"], "message": r["message"],
                      "seen": r["seen"], "first_seen": r["first_seen"], "last_seen": r["last_seen"],
                      "volume": finding_volume({"data": data})}
            t = r["first_seen"] or r["t"]
            key = series(self.measurement("findings"), self._tags(tags))
            out.append(((r["id"],), r["qid"], self._line(key, values, t)))
        return out

    def _alarms(self, reg: Registry, rows: list[dict[str, Any]]) -> Made:
        out = []
        for r in rows:
            data = _data(r["data"])
            group_id = data.get("group_id") if isinstance(data.get("group_id"), str) else None
            tags = {"source": r["source"], "kind": _text(data.get("kind")), "subject": _text(data.get("subject")),
                    "group": group_id, **group_path(reg.groups, group_id)}
            finding = data.get("finding_id")
            values = {"id": r["id"], "severity": r["severity"], "message": r["message"],
                      "finding_id": finding if isinstance(finding, int) and not isinstance(finding, bool) else None}
            key = series(self.measurement("alarms"), self._tags(tags))
            out.append(((r["id"],), r["qid"], self._line(key, values, r["t"])))
        return out

    def _network(self, reg: Registry, rows: list[dict[str, Any]]) -> Made:
        out = []
        measurement = self.measurement("network")
        for r in rows:
            tags = {"module": str(r["module_id"]), "concentrator": str(r["concentrator_id"])}
            values = {"battery_mv": r["battery_mv"], "rssi": r["rssi"], "hops": r["hops"], "parent": r["parent_id"],
                      "state": r["state"], "fw_version": r["fw_version"], "channels": r["channels"]}
            text = self._line(series(measurement, self._tags(tags)), values, r["t"])
            out.append(((r["module_id"], r["t"], r["concentrator_id"]), r["qid"], text))
        return out


def _data(text: str | None) -> dict[str, Any]:
    """A journal record's data: a JSON object (anything else counts as empty)."""
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
