"""The meter registry: validation of concentrators, modules, accounts and meters; bulk import and export.

Why one module decides what is valid: the HTTP API, the command line and file
imports all create registry objects, and a meter that points at a missing
module, sits on an unwired input or overlaps another meter on the same input
silently misattributes consumption. So every path goes through
``parse_object`` (one object's own fields) and ``check_references`` (how
objects fit together), and a file import is all-or-nothing: every file is
parsed and checked before anything is written, and the changes are written
with one ``registry_apply`` call, i.e. one transaction. Imports never delete.
File formats live in ``core/registry_io.py``; the rules are in docs/registry.md.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from balans_edge.core.calculated import input_meters
from balans_edge.core.formula import FormulaError
from balans_edge.core.formula import parse as parse_formula
from balans_edge.core.groups import group_problems
from balans_edge.core.model import (
    CONCENTRATOR_METERS,
    CONCENTRATOR_MODULES,
    UNITS,
    Group,
    Meter,
    RadioModule,
    Resource,
)
from balans_edge.core.registry_io import (
    Problem,
    Record,
    RegistryError,
    Where,
    read_file,
    registry_files,
    shown,
    write_tables,
)
from balans_edge.core.registry_rows import (
    COLUMNS,
    MAX_AREA_M2,
    MAX_BASE_READING,
    MAX_ODN_NORM,
    MAX_PRICE,
    MAX_PULSE_WEIGHT,
    ROWS,
    U32_MAX,
    decode_row,
    empty,
    unknown_column,
)
from balans_edge.core.storage.base import REGISTRY_KINDS, Storage
from balans_edge.core.storage.registry_repository import RegistryReader
from balans_edge.core.times import iso

__all__ = [
    "COLUMNS",
    "KEYS",
    "MAX_AREA_M2",
    "MAX_BASE_READING",
    "MAX_ODN_NORM",
    "MAX_PRICE",
    "MAX_PULSE_WEIGHT",
    "ROWS",
    "U32_MAX",
    "ImportReport",
    "KindCounts",
    "Loaded",
    "Problem",
    "RegistryError",
    "Where",
    "check_delete",
    "check_references",
    "export_registry",
    "format_object",
    "import_registry",
    "keep_status",
    "key_of",
    "kind_of",
    "parse_object",
    "read_registry",
    "validate_all",
    "validate_upsert",
]

KEYS = {"concentrators": "concentrator_id", "modules": "module_id", "accounts": "account_id", "meters": "meter_id",
        "groups": "group_id"}
TIME_COLUMNS = frozenset({"install_time", "removed_time", "last_seen"})
STATUS_COLUMNS = ("parent_id", "hops", "rssi", "battery_mv", "firmware")
"""Module columns the radio network reports: an empty cell keeps the stored value."""

# -- columns and single objects ----------------------------------------------------


EFFECTIVE_FROM = "effective_from"
"""An optional meters column (not a meter field): when the row's new parameters take
effect (default now; see core/registry_history.py)."""


def _parse(kind: str, data: Mapping[str, Any], where: Where) -> tuple[Any | None, list[Problem]]:
    """One object from its column values (``core.registry_rows``) and the rules that tie
    its columns together, or None and every problem found in it."""
    obj, problems = decode_row(kind, data, where)
    if obj is None:
        return None, problems
    own = {"meters": _meter_problems, "groups": _group_problems}.get(kind)
    problems = own(obj, where) if own is not None else []
    return (None if problems else obj), problems


def _meter_problems(meter: Meter, where: Where) -> list[Problem]:
    """Rules that tie a meter's own columns together."""
    problems = []
    allowed = UNITS[meter.resource]
    if meter.unit not in allowed:
        problems.append(
            where.problem(
                "unit", f'"{meter.unit}" is not a unit of {meter.resource} (allowed: {", ".join(sorted(allowed))})'
            )
        )
    if (meter.module_id is None) != (meter.channel is None):
        missing = "channel" if meter.channel is None else "module_id"
        problems.append(where.problem(missing, "a meter on a module needs both module_id and channel"))
    if meter.removed_time is not None and meter.removed_time <= meter.install_time:
        problems.append(where.problem("removed_time", "must be later than install_time"))
    return problems


def _group_problems(group: Group, where: Where) -> list[Problem]:
    """Rules that tie a group's own columns together (a formula must parse; what it
    refers to is checked with the registry, ``core.groups``)."""
    allowed = UNITS[group.resource]
    if group.unit not in allowed:
        return [where.problem("unit", f'"{group.unit}" is not a unit of {group.resource} '
                                      f'(allowed: {", ".join(sorted(allowed))})')]
    if not group.formula and not group.inputs:
        return [where.problem("inputs", "a group needs at least one input meter, or a formula")]
    if group.formula and group.inputs:
        return [where.problem("formula", f'group "{group.group_id}": give input meters or a formula, not both')]
    if group.formula:
        try:
            parse_formula(group.formula)
        except FormulaError as exc:
            return [where.problem("formula", f'group "{group.group_id}": {exc}')]
    return []


def parse_object(kind: str, data: Mapping[str, Any], where: str | Where = "request") -> Any:
    """Validate one object given as column values (text or JSON values, times as
    ISO-8601) and return the dataclass; raise RegistryError listing every problem.

    ``where`` names the source in problems, e.g. ``"PUT /api/registry/meters/M1"``.
    Cross-references are not checked here: see ``check_references``.
    """
    loc = where if isinstance(where, Where) else Where(where)
    if kind not in COLUMNS:
        raise RegistryError([loc.problem(None, f'unknown registry kind "{kind}" (expected {", ".join(COLUMNS)})')])
    if not isinstance(data, Mapping):
        raise RegistryError([loc.problem(None, "expected an object with column names as keys")])
    obj, problems = _parse(kind, data, loc)
    if problems:
        raise RegistryError(problems)
    return obj


def format_object(obj: Any) -> dict[str, Any]:
    """JSON-ready column values of one object, as files and the API show them:
    times as ISO-8601 UTC, flags as a sorted list. ``parse_object`` reads them back equal."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is not None and f.name in TIME_COLUMNS:
            value = iso(value)
        elif isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, Resource):
            value = value.value
        elif f.name == "inputs":
            value = [("-" if i.sign < 0 else "") + i.meter_id for i in value]
        out[f.name] = value
    return out


def kind_of(obj: Any) -> str:
    for kind, cls in REGISTRY_KINDS.items():
        if isinstance(obj, cls):
            return kind
    raise TypeError(f"not a registry object: {obj!r}")


def key_of(obj: Any) -> Any:
    return getattr(obj, KEYS[kind_of(obj)])


def keep_status(module: RadioModule, stored: RadioModule | None) -> RadioModule:
    """The module to write when a file brings ``module``: topology columns the
    file leaves empty keep their stored values, and ``last_seen`` is never taken
    from a file, so a hand-written or older modules.csv cannot erase what the
    radio network reported since."""
    changes: dict[str, Any] = {"last_seen": stored.last_seen if stored else None}
    if stored is not None:
        for name in STATUS_COLUMNS:
            if getattr(module, name) in (None, ""):
                changes[name] = getattr(stored, name)
    return replace(module, **changes)


# -- cross-references --------------------------------------------------------------

Registry = dict[str, dict[Any, Any | None]]
"""kind -> key -> object; None marks an object that exists but did not validate."""


def _wired(module: RadioModule, channel: int | None) -> bool:
    return channel is not None and bool(module.channels & (1 << (channel - 1)))


def _reference_problems(reg: Registry, fresh: Mapping[tuple[str, Any], Where], incomplete: set[str],
                        tags: set[str] | None = None) -> list[Problem]:
    """Problems caused by the ``fresh`` objects (new or re-stated) in the merged registry.

    References into a kind in ``incomplete`` are not checked: the target may
    be in the part of a file that could not be read.
    """

    def missing(kind: str, key: Any) -> bool:
        return key is not None and kind not in incomplete and key not in reg[kind]

    problems = []
    for (kind, key), where in fresh.items():
        obj = reg[kind].get(key)
        if obj is None:
            continue
        if kind == "modules":
            if missing("concentrators", obj.concentrator_id):
                problems.append(where.problem("concentrator_id", f"unknown concentrator {obj.concentrator_id}"))
            problems += _unwired_meters(reg, fresh, obj, where)
        elif kind == "meters":
            if missing("modules", obj.module_id):
                problems.append(where.problem("module_id", f"unknown module {obj.module_id}"))
            module = reg["modules"].get(obj.module_id)
            if module is not None and not _wired(module, obj.channel):
                message = (
                    f"channel {obj.channel} is not wired on module {obj.module_id} (channels mask {module.channels})"
                )
                problems.append(where.problem("channel", message))
            if missing("accounts", obj.account_id):
                problems.append(where.problem("account_id", f'unknown account "{obj.account_id}"'))
    return problems + _overlaps(reg, fresh) + group_problems(reg, fresh, incomplete, tags)


def _unwired_meters(
    reg: Registry, fresh: Mapping[tuple[str, Any], Where], module: RadioModule, where: Where
) -> list[Problem]:
    """Stored meters that a new channels mask of their module would orphan."""
    problems = []
    for meter in reg["meters"].values():
        if meter is None or meter.module_id != module.module_id or ("meters", meter.meter_id) in fresh:
            continue
        if not _wired(module, meter.channel):
            message = f'mask {module.channels} does not wire channel {meter.channel}, used by meter "{meter.meter_id}"'
            problems.append(where.problem("channels", message))
    return problems


def _period(meter: Meter) -> str:
    until = "not removed" if meter.removed_time is None else f"removed {iso(meter.removed_time)}"
    return f"installed {iso(meter.install_time)}, {until}"


def _place(where: Where) -> tuple[str, str, int]:
    return where.file, where.section or "", where.line or 0


def _overlaps(reg: Registry, fresh: Mapping[tuple[str, Any], Where]) -> list[Problem]:
    """Two meters on one input at the same time would both claim its pulses."""
    by_input: dict[tuple[int, int], list[Meter]] = defaultdict(list)
    for meter in reg["meters"].values():
        if meter is not None and meter.module_id is not None:
            by_input[(meter.module_id, meter.channel)].append(meter)
    problems = []
    for (module_id, channel), meters in by_input.items():
        meters.sort(key=lambda m: (m.install_time, m.meter_id))
        for i, a in enumerate(meters):
            end = math.inf if a.removed_time is None else a.removed_time
            for b in meters[i + 1 :]:
                if b.install_time >= end:
                    break
                wa, wb = fresh.get(("meters", a.meter_id)), fresh.get(("meters", b.meter_id))
                if wa is None and wb is None:
                    continue  # both stored: not this write's doing
                # Blame the row that comes last: stored meters and earlier rows are more likely right.
                if wb is not None and (wa is None or _place(wb) >= _place(wa)):
                    where, column, other, at = wb, "install_time", a, wa
                else:
                    where, column, other, at = wa, "removed_time", b, wb
                source = str(at) if at is not None else "stored"
                message = (
                    f'active period overlaps meter "{other.meter_id}" on module {module_id} channel {channel} '
                    f"({source}; {_period(other)})"
                )
                problems.append(where.problem(column, message))
    return problems


def _served(reg: Registry) -> dict[str, dict[int, set[Any]]]:
    """kind -> concentrator -> keys of the modules and of the meters (not
    removed) it serves, through their modules."""
    modules: dict[int, set[Any]] = defaultdict(set)
    meters: dict[int, set[Any]] = defaultdict(set)
    for module in reg["modules"].values():
        if module is not None and module.concentrator_id is not None:
            modules[module.concentrator_id].add(module.module_id)
    for meter in reg["meters"].values():
        module = reg["modules"].get(meter.module_id) if meter is not None else None
        if module is not None and module.concentrator_id is not None and meter.removed_time is None:
            meters[module.concentrator_id].add(meter.meter_id)
    return {"modules": modules, "meters": meters}


def _capacity_problems(before: Registry, after: Registry, fresh: Mapping[tuple[str, Any], Where]) -> list[Problem]:
    """A concentrator may serve at most CONCENTRATOR_MODULES modules and
    CONCENTRATOR_METERS meters. Only a write that adds to one beyond that is
    refused (one problem per concentrator and kind, at the last row that adds),
    so a registry stored over the limit can still be edited."""
    limits = {"modules": (CONCENTRATOR_MODULES, "radio modules", "concentrator_id"),
              "meters": (CONCENTRATOR_METERS, "meters", "module_id")}
    old, new = _served(before), _served(after)
    problems = []
    for kind, (limit, what, column) in limits.items():
        for cid, keys in new[kind].items():
            added = [fresh[(kind, k)] for k in keys - old[kind].get(cid, set()) if (kind, k) in fresh]
            if len(keys) > limit and added:
                message = (f"concentrator {cid} would serve {len(keys)} {what}: "
                           f"a DMesh concentrator serves at most {limit}")
                problems.append(max(added, key=_place).problem(column, message))
    return problems


def _index(stored: Mapping[str, Iterable[Any]]) -> Registry:
    reg: Registry = {kind: {} for kind in REGISTRY_KINDS}
    for kind, objs in stored.items():
        reg[kind].update((getattr(o, KEYS[kind]), o) for o in objs)
    return reg


def check_references(stored: Mapping[str, Iterable[Any]], incoming: Sequence[tuple[Any, Where | str]],
                     tags: set[str] | None = None) -> list[Problem]:
    """Problems the ``incoming`` objects (each with where it came from) would
    cause among the ``stored`` ones (``kind -> objects``, e.g. from
    ``registry_list``): unknown concentrator, module or account, a channel the
    module does not wire, overlapping meters on one input, a concentrator
    given more modules or meters than it can serve, a group formula naming an
    unknown meter or (given the ``tags`` read now) an unknown tag."""
    before = _index(stored)
    reg = {kind: dict(objs) for kind, objs in before.items()}
    fresh: dict[tuple[str, Any], Where] = {}
    for obj, where in incoming:
        kind = kind_of(obj)
        reg[kind][key_of(obj)] = obj
        fresh[(kind, key_of(obj))] = where if isinstance(where, Where) else Where(where)
    return _reference_problems(reg, fresh, set(), tags) + _capacity_problems(before, reg, fresh)


async def _stored(storage: RegistryReader) -> dict[str, list[Any]]:
    return {kind: await storage.registry_list(kind) for kind in REGISTRY_KINDS}


async def validate_upsert(storage: RegistryReader, obj: Any, where: str = "request",
                          tags: set[str] | None = None) -> None:
    """Raise RegistryError if writing ``obj`` (from ``parse_object``) would break a reference."""
    await validate_all(storage, [(obj, where)], tags)


async def validate_all(storage: RegistryReader, incoming: Sequence[tuple[Any, Where | str]],
                       tags: set[str] | None = None) -> None:
    """Raise RegistryError if writing these objects together would break a reference
    (``tags``: the tags read now, which group formulas may name; None: not checked)."""
    problems = check_references(await _stored(storage), incoming, tags)
    if problems:
        raise RegistryError(problems)


def _input_ids(group: Group) -> list[str]:
    return [i.meter_id for i in input_meters(group)]


_REFERRERS: dict[str, list[tuple[str, Callable[[Any], Any]]]] = {
    "concentrators": [("modules", lambda o: [o.concentrator_id])],
    "modules": [("meters", lambda o: [o.module_id])],
    "accounts": [("meters", lambda o: [o.account_id])],
    "meters": [("groups", _input_ids)],
    "groups": [("meters", lambda o: [o.group_id]), ("groups", lambda o: [o.parent_id])],
}
"""kind -> (kind of referrers, the keys a referrer refers to)."""


def check_delete(stored: Mapping[str, Iterable[Any]], kind: str, key: Any, where: str = "request") -> list[Problem]:
    """Why the object ``kind``/``key`` cannot be deleted: the objects that refer to it."""
    problems = []
    for other, refers in _REFERRERS.get(kind, []):
        users = [getattr(o, KEYS[other]) for o in stored.get(other, []) if key in refers(o)]
        if users:
            problems.append(Where(where).problem(None, f"{other} still refer to it: {', '.join(map(str, users))}"))
    return problems


# -- files ---------------------------------------------------------------------------


@dataclass(slots=True)
class Loaded:
    """Everything read from a set of files, before it is compared with storage."""

    objects: dict[str, dict[Any, tuple[Any, Where]]] = field(default_factory=lambda: {k: {} for k in REGISTRY_KINDS})
    """kind -> key -> (valid object, where it came from)."""
    invalid: dict[str, set[Any]] = field(default_factory=lambda: {k: set() for k in REGISTRY_KINDS})
    """Keys of rows that are present but did not validate (not "unknown" to references)."""
    first: dict[tuple[str, Any], Where] = field(default_factory=dict)
    """Where each key was first seen, to point a duplicate at its twin."""
    incomplete: set[str] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)
    effective: dict[str, tuple[Any, Where]] = field(default_factory=dict)
    """meter_id -> (the effective_from cell as given, where)."""


def read_registry(paths: Sequence[Path]) -> Loaded:
    """Parse and validate every row of every file (a folder stands for the
    registry files in it). Never raises for bad content: problems are collected."""
    loaded = Loaded()
    for path in paths:
        files = registry_files(path) if path.is_dir() else [path]
        if not files:
            loaded.problems.append(Problem(str(path), None, None, "no registry files in this folder"))
        for file in files:
            _read_one(loaded, file)
    return loaded


def _read_one(loaded: Loaded, path: Path) -> None:
    source = read_file(path)
    loaded.problems += source.problems
    loaded.incomplete |= source.incomplete
    refused = set()
    for kind, where, names in source.headers:
        problems = _header_problems(kind, where, names)
        if problems:
            loaded.problems += problems
            loaded.incomplete.add(kind)
            refused.add(kind)
    for record in source.records:
        if record.kind not in refused:
            _add_record(loaded, record)


def _header_problems(kind: str, where: Where, names: list[str]) -> list[Problem]:
    """A wrong header makes every row suspect, so its rows are not checked one by one."""
    columns = COLUMNS[kind]
    required = [c.name for c in columns.values() if c.required]
    if not any(name in columns for name in names):
        return [where.problem(None, f"missing header row naming the columns (at least {', '.join(required)})")]
    problems = []
    for i, name in enumerate(names):
        if name and name not in columns and not (kind == "meters" and name == EFFECTIVE_FROM):
            problems.append(where.problem(name, unknown_column(kind)))
        elif name and name in names[:i]:
            problems.append(where.problem(name, "column appears twice"))
    problems += [where.problem(name, "required column is missing") for name in required if name not in names]
    return problems


def _add_record(loaded: Loaded, record: Record) -> None:
    kind, where = record.kind, record.where
    key_column = KEYS[kind]
    data = record.data
    effective = data.get(EFFECTIVE_FROM) if kind == "meters" else None
    if kind == "meters" and EFFECTIVE_FROM in data:
        data = {k: v for k, v in data.items() if k != EFFECTIVE_FROM}
    obj, problems = _parse(kind, data, where)
    if obj is not None and not empty(effective):
        loaded.effective[obj.meter_id] = (effective, where)
    key = getattr(obj, key_column) if obj is not None else _key_or_none(kind, record.data)
    if key is not None:
        first = loaded.first.setdefault((kind, key), where)
        if first is not where:
            problems.append(where.problem(key_column, f"duplicate {key_column} {shown(key)} (first at {first})"))
            obj = None
    loaded.problems += problems
    if obj is not None:
        loaded.objects[kind][key] = (obj, where)
    elif key is not None and key not in loaded.objects[kind]:
        loaded.invalid[kind].add(key)


def _key_or_none(kind: str, data: Mapping[str, Any]) -> Any:
    """The key of a row that did not validate, so that references to it are not
    reported as unknown on top of the row's own problems."""
    value = data.get(KEYS[kind])
    try:
        return None if empty(value) else COLUMNS[kind][KEYS[kind]].parse(value)
    except ValueError:
        return None


@dataclass(slots=True)
class KindCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass(slots=True)
class ImportReport:
    """What an import changed, per kind."""

    kinds: dict[str, KindCounts] = field(default_factory=lambda: {k: KindCounts() for k in REGISTRY_KINDS})

    @property
    def created(self) -> int:
        return sum(c.created for c in self.kinds.values())

    @property
    def updated(self) -> int:
        return sum(c.updated for c in self.kinds.values())

    @property
    def unchanged(self) -> int:
        return sum(c.unchanged for c in self.kinds.values())

    def __str__(self) -> str:
        return "\n".join(
            f"{kind}: {c.created} created, {c.updated} updated, {c.unchanged} unchanged"
            for kind, c in self.kinds.items()
        )


def _plan(loaded: Loaded, stored: Mapping[str, list[Any]]) -> tuple[dict[str, list[Any]], ImportReport]:
    """The objects that are new or differ from storage, and the counts."""
    report = ImportReport()
    upserts: dict[str, list[Any]] = {}
    for kind in REGISTRY_KINDS:
        before = {getattr(o, KEYS[kind]): o for o in stored[kind]}
        counts = report.kinds[kind]
        changed = []
        for key in sorted(loaded.objects[kind]):
            obj = loaded.objects[kind][key][0]
            old = before.get(key)
            if kind == "modules":
                obj = keep_status(obj, old)
            if old is None:
                counts.created += 1
            elif obj != old:
                counts.updated += 1
            else:
                counts.unchanged += 1
                continue
            changed.append(obj)
        if changed:
            upserts[kind] = changed
    return upserts, report


def _sort_key(problem: Problem) -> tuple[str, str, int]:
    return _place(Where(problem.file, problem.line, problem.section))


async def import_registry(storage: Storage, paths: Sequence[Path], who: str = "system",
                          now: int | None = None) -> ImportReport:
    """Import registry files: all of them are validated first, and on any problem
    RegistryError lists every problem and nothing is written. Otherwise new and
    changed objects are written in one transaction with their audit rows (by
    ``who``); nothing is ever deleted, and re-importing the same files writes
    nothing (the registry version stays). A meter row's ``effective_from`` says
    when its changed parameters take effect (default now)."""
    from balans_edge.core.registry_history import effective_problems, params_changed, parse_effective

    now = int(time.time()) if now is None else now
    loaded = await asyncio.to_thread(read_registry, [Path(p) for p in paths])
    stored = await _stored(storage)
    before = _index(stored)
    reg = {kind: dict(objs) for kind, objs in before.items()}
    fresh: dict[tuple[str, Any], Where] = {}
    for kind in REGISTRY_KINDS:
        for key in loaded.invalid[kind]:
            reg[kind][key] = None
        for key, (obj, where) in loaded.objects[kind].items():
            reg[kind][key] = obj
            fresh[(kind, key)] = where
    problems = (loaded.problems + _reference_problems(reg, fresh, loaded.incomplete)
                + _capacity_problems(before, reg, fresh))
    effective: dict[str, int] = {}
    for meter_id, (cell, where) in loaded.effective.items():
        try:
            effective[meter_id] = parse_effective(cell, where, now)
        except RegistryError as exc:
            problems += exc.problems
    stored_meters = {m.meter_id: m for m in stored["meters"]}
    changed = {mid: stored_meters[mid] for mid, (obj, _) in loaded.objects["meters"].items()
               if params_changed(stored_meters.get(mid), obj)}
    problems += await effective_problems(storage, changed, effective,
                                         {mid: w for mid, (_, w) in loaded.effective.items()})
    if problems:
        raise RegistryError(sorted(problems, key=_sort_key))
    upserts, report = _plan(loaded, stored)
    if upserts:
        await storage.registry_apply(upserts, who=who, effective_from=effective, now=now)
    return report


async def export_registry(storage: Storage, folder: Path, fmt: Literal["csv", "json"] | str = "csv") -> list[Path]:
    """Write the registry to ``folder`` as four CSV files or one registry.json,
    ordered by key, so that importing them back is a no-op. Returns the paths."""
    if fmt not in ("csv", "json"):
        raise ValueError(f"unknown export format {fmt!r} (expected csv or json)")
    tables = {}
    for kind, objs in (await _stored(storage)).items():
        rows = [format_object(o) for o in sorted(objs, key=lambda o, k=KEYS[kind]: getattr(o, k))]
        tables[kind] = (list(COLUMNS[kind]), rows)
    return await asyncio.to_thread(write_tables, Path(folder), fmt, tables)
