"""The OPC UA address space kept in step with the registry, and the values
published into it, checked in asyncua's own address space (no network): every
reference has its inverse and a live target after any change, an unchanged
registry costs nothing, and a value is written only when it changed."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from asyncua import Server, ua

from balans_edge.core.components import Command, CommandCode
from balans_edge.core.model import Concentrator, Group, GroupInput, Meter, RadioModule, Resource, Status
from balans_edge.core.storage.base import ReadingRows
from balans_edge.plugins.opcua import model as m
from balans_edge.plugins.opcua.space import Publisher, Space
from balans_edge.plugins.opcua.values import Values

ONE_WAY = {ua.ObjectIds.HasTypeDefinition, ua.ObjectIds.HasModellingRule, ua.ObjectIds.GeneratesEvent}
"""References asyncua itself keeps without an inverse."""


def meters(n: int, modules: int = 10) -> list[Meter]:
    return [Meter(f"M-{i:03}", Resource.WATER, "m3", 0.001, 0, module_id=100 + i % modules, channel=1 + i % 3,
                  group_id="H1" if i % 2 else "H2", flags=frozenset({"valve"}) if i % 7 == 0 else frozenset())
            for i in range(n)]


GROUPS = [Group("CITY", Resource.WATER, "m3", (GroupInput("M-000"),), level="city"),
          Group("H1", Resource.WATER, "m3", (GroupInput("M-001"),), parent_id="CITY"),
          Group("H2", Resource.WATER, "m3", (GroupInput("M-002"),), parent_id="H1")]


@pytest.fixture
async def space() -> Any:
    server = Server()
    await server.init()
    ns = await server.register_namespace(m.NAMESPACE_URI)
    s = Space(server.iserver.aspace, ns)
    s.add_types(m.type_specs())
    return s


def check_references(space: Space) -> None:
    """Every reference of our nodes leads to a node that exists and has the inverse reference."""
    aspace = space.aspace
    problems = []
    for nid in list(aspace.keys()):
        node = aspace[nid]
        for ref in node.references:
            if ref.ReferenceTypeId.Identifier in ONE_WAY:
                continue
            target = aspace.get(ref.NodeId)
            if target is None:
                problems.append((nid.to_string(), "->", ref.NodeId.to_string(), "missing"))
            elif (nid.NamespaceIndex == space.ns or ref.NodeId.NamespaceIndex == space.ns) and not any(
                    r.NodeId == nid and r.ReferenceTypeId == ref.ReferenceTypeId and r.IsForward != ref.IsForward
                    for r in target.references):
                problems.append((nid.to_string(), "->", ref.NodeId.to_string(), "no inverse"))
    assert problems == []


def children(space: Space, ident: str) -> list[str]:
    node = space.aspace[space.node_id(ident)]
    return sorted(r.BrowseName.Name for r in node.references if r.IsForward and r.ReferenceTypeId.Identifier in
                  (ua.ObjectIds.Organizes, ua.ObjectIds.HasComponent, ua.ObjectIds.HasProperty))


async def test_registry_changes_keep_the_address_space_consistent(space: Space) -> None:
    cache = m.SpecCache()
    concentrators = [Concentrator(7, name="North")]
    modules = [RadioModule(100 + j, 7) for j in range(10)]
    model = m.build_model(concentrators, modules, meters(200), GROUPS, cache)
    stats = await space.apply(model)
    assert stats.created == model.node_count() == space.node_count()
    check_references(space)
    assert len(children(space, "Balans/Meters")) == 200
    assert children(space, "Balans/Groups") == ["CITY"] and "H2" in children(space, "Groups/H1")
    assert {"M-000", "M-010", "M-190"} <= set(children(space, "Modules/100"))

    # The same registry again: nothing to do, and nothing compared beyond identity.
    again = await space.apply(m.build_model(concentrators, modules, meters(200), GROUPS, cache))
    assert (again.created, again.deleted, again.updated, again.moved, again.owners_changed) == (0, 0, 0, 0, [])

    # Half the meters go, module 105 leaves its concentrator, H2 moves to the top, a module gets new radio values.
    kept = [x for x in meters(200) if int(x.meter_id[2:]) % 2 == 0]
    modules2 = [RadioModule(100 + j, None if j == 5 else 7, rssi=-80 if j == 1 else None) for j in range(10)]
    groups2 = [*GROUPS[:2], Group("H2", Resource.WATER, "m3", (GroupInput("M-002"),), name="House 2")]
    stats = await space.apply(m.build_model(concentrators, modules2, kept, groups2, cache))
    assert stats.deleted == sum(len(m.meter_specs(x, True)) for x in meters(200) if x not in kept)
    assert (stats.moved, stats.updated, stats.created) == (2, 2, 0)  # moved: H2, module 105; Rssi, Name
    check_references(space)
    assert len(children(space, "Balans/Meters")) == 100 and "M-001" not in children(space, "Modules/101")
    assert children(space, "Balans/Groups") == ["CITY", "H2"] and "H2" not in children(space, "Groups/H1")
    assert "105" in children(space, "Balans/UnassignedModules")
    assert "105" not in children(space, "Concentrators/7/Modules")
    rssi = space.aspace[space.node_id("Modules/101/Rssi")].attributes[ua.AttributeIds.Value].value
    assert rssi.Value.Value == -80
    name = space.aspace[space.node_id("Groups/H2")].attributes[ua.AttributeIds.DisplayName].value
    assert name.Value.Value.Text == "House 2"

    # Everything goes.
    stats = await space.apply(m.build_model([], [], [], [], cache))
    assert space.node_count() == len(m.root_specs())
    nodes = list(space.aspace.keys())  # an AddressSpace is not iterable
    assert not [n for n in nodes if n.NamespaceIndex == space.ns
                and n.Identifier.startswith(("Meters/", "Groups/", "Modules/", "Concentrators/"))]
    check_references(space)


def value_of(space: Space, ident: str) -> ua.DataValue:
    return space.aspace[space.node_id(ident)].attributes[ua.AttributeIds.Value].value


async def test_values_are_written_only_when_they_change(space: Space) -> None:
    registry = meters(30)
    await space.apply(m.build_model([Concentrator(7)], [RadioModule(100 + j, 7) for j in range(10)], registry,
                                    GROUPS, m.SpecCache()))
    values = Values(list(enumerate(registry, start=1)), GROUPS, ZoneInfo("UTC"), 0.95)
    publisher = Publisher(space)
    assert await publisher.publish(values.columns()) == 0  # nothing known: the nodes already say so
    assert value_of(space, "Meters/M-000/Value").StatusCode.value == ua.StatusCodes.BadWaitingForInitialData

    # Readings of two meters: their value, status, time and (M-000 is fitted with a valve) valve state.
    rows = ReadingRows.from_tuples([(1, 1000, 5, 2500, 0, int(Status.VALVE_CLOSED)), (2, 1000, 5, 40, 0, 0)])
    rows.status[:] = [Status.VALVE_CLOSED, 0]
    values.readings(rows)
    values.ages(1010.0)
    written = await publisher.publish(values.columns())
    assert written == 2 * 4 + 1  # Value, Status, LastReadingTime, DataAge of each; M-000's Valve
    dv = value_of(space, "Meters/M-000/Value")
    assert dv.Value.Value == pytest.approx(2.5) and dv.StatusCode.is_good()
    assert dv.SourceTimestamp.timestamp() == 1000
    assert value_of(space, "Meters/M-000/Valve").Value.Value is False
    assert value_of(space, "Meters/M-001/DataAge").Value.Value == 10
    assert await publisher.publish(values.columns()) == 0  # no change, no write

    # A command done: only the valve changes. An estimated hour is Uncertain, a missing one Bad.
    values.command(Command("M-000", CommandCode.VALVE_OPEN, "test", "test", t=1005, outcome="done"))
    assert await publisher.publish(values.columns()) == 1
    assert value_of(space, "Meters/M-000/Valve").Value.Value is True
    values.last_hour([1, 2], 3600, np.array([[0.5], [np.nan]]), np.array([[1], [2]]))
    await publisher.publish(values.columns())
    assert value_of(space, "Meters/M-000/LastHour").StatusCode.value == ua.StatusCodes.UncertainSubstituteValue
    assert value_of(space, "Meters/M-001/LastHour").StatusCode.value == ua.StatusCodes.BadNoData

    # A new Values (the registry changed) does not republish what did not change.
    again = Values(list(enumerate(registry, start=1)), GROUPS, ZoneInfo("UTC"), 0.95)
    again.readings(rows)
    again.command(Command("M-000", CommandCode.VALVE_OPEN, "test", "test", t=1005, outcome="done"))
    again.last_hour([1, 2], 3600, np.array([[0.5], [np.nan]]), np.array([[1], [2]]))
    again.ages(1010.0)
    assert await publisher.publish(again.columns()) == 0
