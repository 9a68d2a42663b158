"""SQLite storage of registry writes with their history: the audit of every
change, and the validity periods of meters' parameters.

A part of ``SqliteStorage`` (a mixin): it uses the storage's reader (``_all``)
and its group-committing writer (``_submit``). Every write of the registry
goes through ``registry_apply`` or ``correct_meter``, which put the audit rows
in the transaction of the change. Periods are kept by the triggers of
migration 0011 whatever the path, so a write that bypassed this code could not
leave the periods behind the meters table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from balans_edge.core.periods import PARAMETERS, MeterPeriod, RegisterTable, corrected, period_json
from balans_edge.core.storage.base import REGISTRY_KINDS, AuditQuery
from balans_edge.core.times import HOUR, hour_floor

KEYS = {"concentrators": "concentrator_id", "modules": "module_id", "accounts": "account_id", "meters": "meter_id",
        "groups": "group_id"}
PERIOD_COLUMNS = ("valid_from", *PARAMETERS, "anchor_pulses")
AUDIT_COLUMNS = ("id", "t", "who", "action", "kind", "object_id", "before", "after", "effective_from",
                 "effective_to", "reason")
PARAMS_CHANGED = " OR ".join(f"meters.{c} IS NOT excluded.{c}" for c in PARAMETERS)
DEFAULT_FROM = (
    # Not given: from now, or from just after the newest reading if one is stamped later; a
    # meter without readings has no history to keep, so its latest period is replaced.
    "CASE WHEN EXISTS (SELECT 1 FROM readings WHERE meter = meters.id) "
    "THEN max(?, (SELECT max(ts) + 1 FROM readings WHERE meter = meters.id)) "
    "ELSE (SELECT max(valid_from) FROM meter_periods WHERE meter = meters.id) END"
)
ANCHOR = ("coalesce((SELECT r.pulses FROM readings r WHERE r.meter = meter_periods.meter "
          "AND r.ts <= meter_periods.valid_from ORDER BY r.ts DESC LIMIT 1), 0)")
IN_CHUNK = 500
"""Meters per ``IN (...)`` list (well under SQLite's limit on bound parameters)."""
NOT_FIRST = "valid_from > (SELECT min(q.valid_from) FROM meter_periods q WHERE q.meter = meter_periods.meter)"


STAGE_TABLE = ("CREATE TEMP TABLE IF NOT EXISTS registry_before (kind TEXT, object_id TEXT, before TEXT)", [()])


def _columns(kind: str) -> list[str]:
    return [f.name for f in dataclasses.fields(REGISTRY_KINDS[kind])]


def _json_row(kind: str, alias: str) -> str:
    """SQL building the JSON of a stored row (its columns as stored)."""
    return "json_object(" + ", ".join(f"'{c}', {alias}.{c}" for c in _columns(kind)) + ")"


def _stage(kind: str) -> str:
    key = KEYS[kind]
    return (f"INSERT INTO temp.registry_before (kind, object_id, before) SELECT '{kind}', CAST(o.{key} AS TEXT), "
            f"{_json_row(kind, 'o')} FROM {kind} o WHERE o.{key} = ?")


def _audit_written(kind: str) -> str:
    """An audit row for an object written, unless it is unchanged; for a meter whose
    parameters changed, when the new ones hold from."""
    key = KEYS[kind]
    effective = "NULL"
    if kind == "meters":
        moved = " OR ".join(f"json_extract(b.before, '$.{p}') IS NOT o.{p}" for p in PARAMETERS)
        effective = f"CASE WHEN b.before IS NOT NULL AND ({moved}) THEN o.params_from END"
    return (f"INSERT INTO registry_audit (t, who, reason, action, kind, object_id, before, after, effective_from) "
            f"SELECT ?, ?, ?, CASE WHEN b.before IS NULL THEN 'create' ELSE 'update' END, '{kind}', "
            f"CAST(o.{key} AS TEXT), b.before, {_json_row(kind, 'o')}, {effective} FROM {kind} o "
            f"LEFT JOIN temp.registry_before b ON b.kind = '{kind}' AND b.object_id = CAST(o.{key} AS TEXT) "
            f"WHERE o.{key} = ? AND b.before IS NOT {_json_row(kind, 'o')}")


def _audit_deleted(kind: str) -> str:
    return (f"INSERT INTO registry_audit (t, who, reason, action, kind, object_id, before) "
            f"SELECT ?, ?, ?, 'delete', '{kind}', b.object_id, b.before FROM temp.registry_before b "
            f"WHERE b.kind = '{kind}' AND b.object_id = CAST(? AS TEXT)")


def _audit_out(row: dict[str, Any]) -> dict[str, Any]:
    """An audit row with before and after decoded: objects in the registry's column
    format (as the API and files show them), a correction's periods as stored."""
    from balans_edge.core.registry import format_object  # the registry's column format (no import cycle)
    from balans_edge.core.storage.sqlite import _from_row

    for side in ("before", "after"):
        value = None if row[side] is None else json.loads(row[side])
        if isinstance(value, dict):
            value = format_object(_from_row(row["kind"], value))
        row[side] = value
    return row


def _to_row(kind: str, obj: Any) -> dict[str, Any]:
    row = dataclasses.asdict(obj)
    if kind in ("meters", "groups"):
        row["resource"] = str(obj.resource)
    if kind == "meters":
        row["flags"] = ",".join(sorted(obj.flags))
    if kind == "groups":
        row["inputs"] = ",".join(("-" if i.sign < 0 else "") + i.meter_id for i in obj.inputs)
    return row


class RegistryHistory:
    _all: Callable[..., Awaitable[list[Any]]]
    _submit: Callable[..., Awaitable[None]]
    flush: Callable[[], Awaitable[None]]
    registry_get: Callable[..., Awaitable[Any]]
    _registry_changed: Callable[[], None]

    def _registry_lock(self) -> asyncio.Lock:
        """Serialises corrections (read the periods, write the corrected ones). An edit
        racing a correction only appends a later period, which the correction's
        rewrite of the periods could drop: corrections are rare admin work."""
        lock = self.__dict__.get("_registry_mutex")
        if lock is None:
            lock = self.__dict__["_registry_mutex"] = asyncio.Lock()
        return lock

    async def registry_apply(
        self,
        upserts: dict[str, list[Any]],
        deletes: dict[str, list[str | int]] | None = None,
        *,
        who: str = "system",
        reason: str = "",
        effective_from: Mapping[str, int] | None = None,
        now: int | None = None,
    ) -> None:
        # The audit's before and after are taken by SQL inside the transaction of
        # the write (staged in a temporary table), so they are exactly what it
        # replaced and wrote, whatever else writes concurrently.
        now = int(time.time()) if now is None else now
        statements: list[tuple[str, list[tuple[Any, ...]]]] = [STAGE_TABLE, ("DELETE FROM temp.registry_before", [()])]
        audits = []
        for kind in REGISTRY_KINDS:
            objs = upserts.get(kind) or []
            if objs:
                keys = [(getattr(o, KEYS[kind]),) for o in objs]
                statements.append((_stage(kind), keys))
                statements.append(self._upsert(kind, objs, effective_from or {}, now))
                audits.append((_audit_written(kind), [(now, who, reason, *k) for k in keys]))
        for kind in reversed(list(REGISTRY_KINDS)):
            keys = [(k,) for k in (deletes or {}).get(kind) or []]
            if keys:
                statements.append((_stage(kind), keys))
                statements.append((f"DELETE FROM {kind} WHERE {KEYS[kind]} = ?", keys))
                audits.append((_audit_deleted(kind), [(now, who, reason, *k) for k in keys]))
        if len(statements) == 2:
            return
        statements += audits
        statements.append(("UPDATE registry_state SET version = version + 1 WHERE id = ?", [(1,)]))
        await self._submit(statements)
        self._registry_changed()

    @staticmethod
    def _upsert(kind: str, objs: list[Any], effective: Mapping[str, int],
                now: int) -> tuple[str, list[tuple[Any, ...]]]:
        rows = [_to_row(kind, o) for o in objs]
        cols = list(rows[0])
        key = KEYS[kind]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != key)
        if kind != "meters":
            sql = (f"INSERT INTO {kind} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                   f"ON CONFLICT ({key}) DO UPDATE SET {updates}")
            return sql, [tuple(r[c] for c in cols) for r in rows]
        # A new meter's parameters hold from its installation; changed ones from
        # effective_from (the triggers of 0011 start the period and check it).
        sql = (f"INSERT INTO meters ({', '.join(cols)}, params_from) VALUES ({', '.join('?' * len(cols))}, ?) "
               f"ON CONFLICT (meter_id) DO UPDATE SET params_from = CASE WHEN {PARAMS_CHANGED} "
               f"THEN coalesce(?, {DEFAULT_FROM}) ELSE meters.params_from END, {updates}")
        return sql, [(*(r[c] for c in cols), r["install_time"], effective.get(r["meter_id"]), now) for r in rows]

    # periods ------------------------------------------------------------------------

    async def meter_periods(self, meters: Sequence[int] | None = None) -> dict[int, list[MeterPeriod]]:
        few = meters is not None and len(meters) <= IN_CHUNK
        where, args = (f"WHERE meter IN ({', '.join('?' * len(meters))})", tuple(meters)) if few else ("", ())
        rows = await self._all(f"SELECT meter, {', '.join(PERIOD_COLUMNS)} FROM meter_periods {where} "
                               "ORDER BY meter, valid_from", args)
        from balans_edge.core.storage.sqlite import _objects  # off the event loop for many rows

        out: dict[int, list[MeterPeriod]] = {}
        for key, period in await _objects(rows, lambda r: (r[0], MeterPeriod(*tuple(r)[1:]))):
            out.setdefault(key, []).append(period)
        if meters is not None and not few:
            wanted = set(meters)
            out = {k: v for k, v in out.items() if k in wanted}
        return out

    async def register_table(self, meters: Sequence[int] | None = None) -> RegisterTable:
        return RegisterTable(await self.meter_periods(meters))

    async def refresh_anchors(self, meters: Sequence[int]) -> None:
        # Only changed anchors are written, and only then the registry version moves
        # (caches of register values follow it): a back-fill landing just before a change.
        for i in range(0, len(meters), IN_CHUNK):
            chunk = tuple(meters[i : i + IN_CHUNK])
            marks = ", ".join("?" * len(chunk))
            await self._submit([
                (f"UPDATE meter_periods SET anchor_pulses = {ANCHOR} WHERE meter IN ({marks}) AND {NOT_FIRST} "
                 f"AND anchor_pulses IS NOT {ANCHOR}", [chunk]),
                ("UPDATE registry_state SET version = version + 1 WHERE id = 1 AND changes() > 0", [()]),
            ])
        self._registry_changed()

    async def correct_meter(self, meter_id: str, changes: Mapping[str, Any], t0: int, t1: int | None, *,
                            who: str, reason: str, now: int | None = None) -> dict[str, Any]:
        now = int(time.time()) if now is None else now
        async with self._registry_lock():
            await self.flush()
            rows = await self._all("SELECT id FROM meters WHERE meter_id = ?", (meter_id,))
            if not rows:
                raise KeyError(meter_id)
            key = rows[0][0]
            before = (await self.meter_periods([key])).get(key, [])
            after = corrected(before, changes, t0, t1)
            current = after[-1]
            end = t1 if t1 is not None else 2**62
            sets = ", ".join(f"{p} = ?" for p in PARAMETERS)
            record = {
                "before": [period_json(p) for p in before],
                "after": [period_json(p) for p in after],
                "changes": dict(changes),
            }
            cols = ", ".join(PERIOD_COLUMNS)
            statements: list[tuple[str, list[tuple[Any, ...]]]] = [
                ("DELETE FROM meter_periods WHERE meter = ?", [(key,)]),
                (f"INSERT INTO meter_periods (meter, {cols}) VALUES (?{', ?' * len(PERIOD_COLUMNS)})",
                 [(key, *(getattr(p, c) for c in PERIOD_COLUMNS)) for p in after]),
                (f"UPDATE meter_periods SET anchor_pulses = {ANCHOR} WHERE meter = ? AND {NOT_FIRST}", [(key,)]),
                # The current parameters follow the latest period; a NULL params_from keeps
                # 0011's trigger out (these periods are written here), then it is restored.
                (f"UPDATE meters SET {sets}, params_from = NULL WHERE id = ?",
                 [(*(getattr(current, p) for p in PARAMETERS), key)]),
                ("UPDATE meters SET params_from = ? WHERE id = ?", [(current.valid_from, key)]),
                ("INSERT INTO interval_dirty (meter, lo, hi) SELECT ?, min(ts), max(ts) FROM readings "
                 "WHERE meter = ? AND ts >= "
                 "coalesce((SELECT max(ts) FROM readings WHERE meter = ? AND ts < ?), ?) AND ts <= "
                 "coalesce((SELECT min(ts) FROM readings WHERE meter = ? AND ts >= ?), ?) HAVING count(*) > 0",
                 [(key, key, key, t0, t0, key, end, end)]),
                ("UPDATE registry_state SET version = version + 1 WHERE id = ?", [(1,)]),
                ("INSERT INTO registry_audit (t, who, action, kind, object_id, before, after, effective_from, "
                 "effective_to, reason) VALUES (?, ?, 'correct', 'meters', ?, ?, ?, ?, ?, ?)",
                 [(now, who, meter_id, json.dumps(record["before"], ensure_ascii=False),
                   json.dumps(record["after"], ensure_ascii=False), t0, t1, reason)]),
            ]
            if "group_id" in changes:
                statements.append((
                    "INSERT INTO balance_dirty (lo, hi) SELECT max(min(t), ?), min(max(t) + ?, ?) "
                    "FROM consumption_hourly HAVING count(*) > 0", [(hour_floor(t0), HOUR, end + HOUR)]))
            await self._submit(statements)
        self._registry_changed()
        return record

    # audit ----------------------------------------------------------------------------

    async def registry_audit(self, query: AuditQuery) -> list[dict[str, Any]]:
        filters = {"kind = ?": query.kind, "object_id = ?": query.object_id, "who = ?": query.who,
                   "t >= ?": query.t0, "t < ?": query.t1, "action = ?": query.action}
        used = {c: v for c, v in filters.items() if v is not None}
        where = " AND ".join(used) or "1"
        rows = await self._all(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM registry_audit WHERE {where} "
                               "ORDER BY id DESC LIMIT ?", (*used.values(), query.limit))
        return [_audit_out(dict(zip(AUDIT_COLUMNS, tuple(r), strict=True))) for r in rows]
