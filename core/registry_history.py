"""The registry's history as users meet it: when a meter's new parameters take
effect, the explicit correction of its past, and the audit of every change.

A registry edit changes a meter's parameters from ``effective_from`` on
(default: now). It may not reach back into readings already stored: that would
rewrite closed history, so it is refused with a pointer to the correction, a
separate operation that says why (``reason``), is audited with the periods
before and after, and recomputes the hours it changes. The HTTP API and the
command line both go through the functions here; the rules are in
docs/registry.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from balans_edge.core.periods import CORRECTABLE, PARAMETERS
from balans_edge.core.registry import COLUMNS, RegistryError, check_references
from balans_edge.core.registry_io import BadValue, Problem, Where, iso_time
from balans_edge.core.storage.base import AUDIT_LIMIT, AuditQuery, Storage
from balans_edge.core.text import check_text
from balans_edge.core.times import iso

AUDIT_ACTIONS = ("create", "update", "delete", "correct")
FUTURE_S = 300
"""How far ahead of the clock a change may be dated (the ingest clock tolerance)."""


def parse_effective(value: Any, where: Where, now: int) -> int:
    """``effective_from`` of an edit: ISO-8601 with a timezone, not in the future."""
    try:
        t = iso_time(value)
    except BadValue as exc:
        raise RegistryError([where.problem("effective_from", str(exc))]) from None
    if t > now + FUTURE_S:
        raise RegistryError([where.problem("effective_from", f"{iso(t)} is in the future: "
                                                             "register a change when it happens")])
    return t


async def effective_problems(storage: Storage, changed: Mapping[str, Any], effective: Mapping[str, int],
                             where: Mapping[str, Where]) -> list[Problem]:
    """Why meters whose parameters change (``changed``: meter_id -> the stored
    meter) cannot take them from the given times: the time lies at or before the
    meter's newest stored reading, or before its latest period."""
    keys = await storage.meter_keys()
    wanted = {mid: keys[mid] for mid in changed if mid in effective and mid in keys}
    if not wanted:
        return []
    periods = await storage.meter_periods(list(wanted.values()))
    newest = await storage.latest_readings(list(wanted.values()))
    newest_ts = dict(zip(newest.meter.tolist(), newest.ts.tolist(), strict=True))
    problems = []
    for mid, key in wanted.items():
        t = effective[mid]
        last_period = max((p.valid_from for p in periods.get(key, [])), default=None)
        last_reading = newest_ts.get(key)
        if last_reading is not None and t <= last_reading:
            problems.append(where[mid].problem(
                "effective_from", f"{iso(t)} is not after the meter's newest reading "
                                  f"({iso(last_reading)}): readings already stored keep their parameters; "
                                  "to change the past, make a correction (POST /api/v1/meters/{id}/corrections, "
                                  "balans-edge registry correct)"))
        elif last_period is not None and t < last_period:
            problems.append(where[mid].problem(
                "effective_from", f"{iso(t)} is before the meter's latest period ({iso(last_period)})"))
    return problems


def params_changed(old: Any, new: Any) -> bool:
    return old is not None and any(getattr(old, p) != getattr(new, p) for p in PARAMETERS)


# -- corrections --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Correction:
    """A change of a meter's parameters over a past time [t0, t1) (t1 None: from t0 on)."""

    meter_id: str
    changes: dict[str, Any]
    t0: int
    t1: int | None
    reason: str


def parse_correction(meter_id: str, data: Mapping[str, Any], where: str, now: int | None = None) -> Correction:
    """A correction from its JSON form: ``{"from", "to"?, "changes": {...}, "reason"}``.
    Raises RegistryError naming every problem."""
    now = int(time.time()) if now is None else now
    loc = Where(where)
    problems = []
    unknown = sorted(set(data) - {"from", "to", "changes", "reason"})
    problems += [loc.problem(name, "unknown field (expected: from, to, changes, reason)") for name in unknown]
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        problems.append(loc.problem("reason", "a non-empty reason is required: a correction changes the past"))
    else:
        try:
            check_text(reason)
        except ValueError as exc:
            problems.append(loc.problem("reason", str(exc)))
    times: dict[str, int | None] = {"from": None, "to": None}
    for name in times:
        if data.get(name) is None:
            if name == "from":
                problems.append(loc.problem("from", "required: when the corrected parameters start to hold"))
            continue
        try:
            times[name] = iso_time(data[name])
        except BadValue as exc:
            problems.append(loc.problem(name, str(exc)))
    t0, t1 = times["from"], times["to"]
    if t0 is not None and t0 > now + FUTURE_S:
        problems.append(loc.problem("from", "is in the future: a change from now on is a registry edit"))
    if t0 is not None and t1 is not None and t1 <= t0:
        problems.append(loc.problem("to", "must be later than from"))
    changes = data.get("changes")
    parsed: dict[str, Any] = {}
    if not isinstance(changes, Mapping) or not changes:
        problems.append(loc.problem("changes", f"expected an object with at least one of: {', '.join(CORRECTABLE)}"))
    else:
        for name, raw in changes.items():
            if name not in CORRECTABLE:
                problems.append(loc.problem(f"changes.{name}", f"cannot be corrected in the past (correctable: "
                                                               f"{', '.join(CORRECTABLE)})"))
                continue
            if raw is None or raw == "":
                if name == "group_id":
                    parsed[name] = None
                else:
                    problems.append(loc.problem(f"changes.{name}", "a value is required"))
                continue
            try:
                parsed[name] = COLUMNS["meters"][name].parse(raw)
            except BadValue as exc:
                problems.append(loc.problem(f"changes.{name}", str(exc)))
    if problems:
        raise RegistryError(problems)
    return Correction(meter_id, parsed, int(t0 or 0), t1, str(reason).strip())


async def correct(storage: Storage, correction: Correction, who: str, where: str = "request") -> dict[str, Any]:
    """Apply a correction: check the meter and a new group against the registry,
    then rewrite the periods, mark the hours it changes and audit it (one
    transaction). Returns the periods before and after. KeyError: no such meter."""
    meter = await storage.registry_get("meters", correction.meter_id)
    if meter is None:
        raise KeyError(correction.meter_id)
    loc = Where(where)
    if correction.t0 < meter.install_time:
        installed = iso(meter.install_time)
        raise RegistryError([loc.problem("from", f"before the meter's installation ({installed})")])
    group = correction.changes.get("group_id")
    if group is not None:
        # The group must exist and balance the meter's resource in its unit: the
        # registry's own rules, checked on the meter as it would be in that group.
        stored = {kind: await storage.registry_list(kind) for kind in ("groups", "meters")}
        probe = replace(meter, group_id=group)
        problems = [p for p in check_references(stored, [(probe, loc)]) if p.column == "group_id"]
        if problems:
            raise RegistryError(problems)
    try:
        return await storage.correct_meter(correction.meter_id, correction.changes, correction.t0, correction.t1,
                                           who=who, reason=correction.reason)
    except ValueError as exc:
        raise RegistryError([loc.problem(None, str(exc))]) from None


# -- the audit ----------------------------------------------------------------------


def audit_query(kind: str | None = None, object_id: str | None = None, who: str | None = None,
                action: str | None = None, t0: int | None = None, t1: int | None = None,
                limit: int = 100) -> AuditQuery:
    """Audit filters, checked: known kind and action, 1 <= limit <= AUDIT_LIMIT."""
    if kind is not None and kind not in COLUMNS:
        raise ValueError(f"kind: expected one of {', '.join(COLUMNS)}, got {kind!r}")
    if action is not None and action not in AUDIT_ACTIONS:
        raise ValueError(f"action: expected one of {', '.join(AUDIT_ACTIONS)}, got {action!r}")
    if not 1 <= limit <= AUDIT_LIMIT:
        raise ValueError(f"limit: expected 1..{AUDIT_LIMIT}, got {limit}")
    return AuditQuery(kind, object_id, who, action, t0, t1, limit)


def audit_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """An audit row as the API and the CLI show it (times in ISO-8601 UTC)."""
    out = dict(row)
    for name in ("t", "effective_from", "effective_to"):
        if out.get(name) is not None:
            out[name] = iso(int(out[name]))
    return out


def changed_columns(row: Mapping[str, Any]) -> list[str]:
    """Columns an update changed (for a short listing)."""
    before, after = row.get("before"), row.get("after")
    if not isinstance(before, dict) or not isinstance(after, dict):
        return []
    return [c for c in after if before.get(c) != after.get(c)]


__all__ = ["Correction", "audit_json", "audit_query", "changed_columns", "correct", "effective_problems",
           "params_changed", "parse_correction", "parse_effective"]
