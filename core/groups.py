"""The rules a tree of balance groups must follow before anything is written.

A wrong tree does not fail loudly later: a meter counted twice makes a group
look balanced while water is lost, a group without input has no balance, and
a cycle never ends. So the registry checks every write against these rules
(through ``registry.check_references``), whichever path it comes from (API,
file import, configuration), and nothing is written while one is broken.

A group's members are the meters whose ``group_id`` is the group and the
groups whose ``parent_id`` is the group; a member group counts with its input
meters (or the meters its formula reads: ``core.calculated.input_meters``).
Problems are reported only where the write is involved (a fresh object),
since what was stored before is not this write's doing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from balans_edge.core.calculated import formula_problems, input_meters
from balans_edge.core.model import Group, Meter
from balans_edge.core.registry_io import Problem, Where

Registry = dict[str, dict[Any, Any | None]]
Fresh = Mapping[tuple[str, Any], Where]


def group_problems(reg: Registry, fresh: Fresh, incomplete: set[str], tags: set[str] | None = None) -> list[Problem]:
    """Every broken rule of the group tree that a fresh object takes part in;
    ``tags``: the tags read now, which formulas may name (None: not checked)."""
    groups: dict[str, Group] = {k: g for k, g in reg["groups"].items() if g is not None}
    meters: dict[str, Meter] = {k: m for k, m in reg["meters"].items() if m is not None}
    problems: list[Problem] = []
    for (kind, key), where in fresh.items():
        if kind == "groups" and key in groups and groups[key].formula:
            problems += [where.problem("formula", f'group "{key}": {message}')
                         for message in formula_problems(groups[key], reg["meters"], "meters" in incomplete, tags)]
        if kind == "groups" and key in groups:
            problems += _own_problems(groups[key], groups, meters, reg, incomplete, where)
        elif kind == "meters" and key in meters:
            problems += _membership_problems(meters[key], groups, reg, incomplete, where)
    return problems + _cycles(groups, fresh) + _counted_twice(groups, meters, fresh)


def _own_problems(group: Group, groups: dict[str, Group], meters: dict[str, Meter], reg: Registry,
                  incomplete: set[str], where: Where) -> list[Problem]:
    problems = []
    if group.parent_id is not None:
        if group.parent_id == group.group_id:
            problems.append(where.problem("parent_id", "a group cannot be its own parent"))
        elif group.parent_id not in reg["groups"] and "groups" not in incomplete:
            problems.append(where.problem("parent_id", f'unknown group "{group.parent_id}"'))
        else:
            parent = groups.get(group.parent_id)
            if parent is not None and (parent.resource, parent.unit) != (group.resource, group.unit):
                message = (f'{group.resource} in {group.unit}, but its parent "{parent.group_id}" balances '
                           f"{parent.resource} in {parent.unit}")
                problems.append(where.problem("unit", message))
    if not group.inputs and not group.formula:
        problems.append(where.problem("inputs", "a group needs at least one input meter, or a formula"))
    seen: set[str] = set()
    for put in group.inputs:
        if put.meter_id in seen:
            problems.append(where.problem("inputs", f'meter "{put.meter_id}" is listed twice'))
        seen.add(put.meter_id)
        meter = meters.get(put.meter_id)
        if meter is None:
            if put.meter_id not in reg["meters"] and "meters" not in incomplete:
                problems.append(where.problem("inputs", f'unknown meter "{put.meter_id}"'))
        elif (meter.resource, meter.unit) != (group.resource, group.unit):
            message = (f'meter "{meter.meter_id}" measures {meter.resource} in {meter.unit}, '
                       f"the group balances {group.resource} in {group.unit}")
            problems.append(where.problem("inputs", message))
    return problems


def _membership_problems(meter: Meter, groups: dict[str, Group], reg: Registry, incomplete: set[str],
                         where: Where) -> list[Problem]:
    if meter.group_id is None:
        return []
    group = groups.get(meter.group_id)
    if group is None:
        if meter.group_id not in reg["groups"] and "groups" not in incomplete:
            return [where.problem("group_id", f'unknown group "{meter.group_id}"')]
        return []
    if (meter.resource, meter.unit) != (group.resource, group.unit):
        return [where.problem("group_id", f'group "{group.group_id}" balances {group.resource} in {group.unit}, '
                                          f"the meter measures {meter.resource} in {meter.unit}")]
    return []


def _cycles(groups: dict[str, Group], fresh: Fresh) -> list[Problem]:
    """Parent chains that come back to themselves (reported once, at a fresh member)."""
    problems, reported = [], set()
    for start in groups:
        chain, node = [], start
        while node in groups and node not in chain:
            chain.append(node)
            node = groups[node].parent_id
        if node not in chain:
            continue
        cycle = chain[chain.index(node):]
        if len(cycle) == 1 or frozenset(cycle) in reported:  # a group that is its own parent: told once already
            continue
        reported.add(frozenset(cycle))
        blamed = next((g for g in cycle if ("groups", g) in fresh), None)
        if blamed is not None:
            path = " → ".join([*cycle[cycle.index(blamed):], *cycle[: cycle.index(blamed)], blamed])
            problems.append(fresh[("groups", blamed)].problem("parent_id", f"cycle of parents: {path}"))
    return problems


def _counted_twice(groups: dict[str, Group], meters: dict[str, Meter], fresh: Fresh) -> list[Problem]:
    """Meters that reach one group's balance twice. A member meter may play no
    other part in its group (its input, or a member group's input); the inputs
    of member groups may share a meter only with opposite signs (a transit pipe
    from one member group to another). A meter that feeds the group and one of
    its member groups is counted once on each side of the balance: allowed."""
    parts: dict[str, dict[str, list[tuple[str, int, tuple[str, Any]]]]] = defaultdict(lambda: defaultdict(list))
    for g in groups.values():
        for put in input_meters(g):
            parts[g.group_id][put.meter_id].append(("its input", 0, ("groups", g.group_id)))
            if g.parent_id in groups:
                parts[g.parent_id][put.meter_id].append(
                    (f'the input of member group "{g.group_id}"', put.sign, ("groups", g.group_id)))
    for m in meters.values():
        if m.group_id in groups:
            parts[m.group_id][m.meter_id].append(("a member", 1, ("meters", m.meter_id)))
    problems = []
    for group_id, by_meter in parts.items():
        for meter_id, found in by_meter.items():
            member = any(role == "a member" for role, _, _ in found)
            if not (member and len(found) > 1) and abs(sum(sign for _, sign, _ in found)) <= 1:
                continue
            blamed = [obj for _, _, obj in found if obj in fresh]
            if not blamed and ("groups", group_id) in fresh:
                blamed = [("groups", group_id)]
            if not blamed:
                continue
            column = "group_id" if blamed[0][0] == "meters" else "inputs"
            how = " and as ".join(role for role, _, _ in found)
            problems.append(fresh[blamed[0]].problem(
                column, f'meter "{meter_id}" is counted twice in group "{group_id}": as {how}'))
    return problems
