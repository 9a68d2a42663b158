"""NodeIds of the OPC UA address space: one node per NodeId for any registry
(ids holding the separator, the escape character, Cyrillic; a meter and a
group with the same id), and the documented ids of ordinary registry ids
unchanged (integrators have typed them into their SCADA)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from balans_edge.core.model import Concentrator, Group, GroupInput, Meter, RadioModule, Resource
from balans_edge.plugins.opcua import model as m

PIECES = [*"/%2F5fAB-W1 Кв", "Status", "Value", "LastHour", "Today", "%2F", "%25", "/Status"]
HOSTILE = st.lists(st.sampled_from(PIECES), min_size=1, max_size=5).map(lambda p: "".join(p).strip() or "x")
"""Ids made of the separator, the escape, its hex digits, member names and Cyrillic."""


def registry(meter_ids: list[str], group_ids: list[str]) -> tuple[list, list, list[Meter], list[Group]]:
    concentrators = [Concentrator(7)]
    modules = [RadioModule(1001 + i, 7, channels=7) for i in range((len(meter_ids) + 2) // 3)]
    meters = [Meter(mid, Resource.WATER, "m3", 0.001, 0, module_id=1001 + i // 3, channel=1 + i % 3,
                    flags=frozenset({"valve", "relay"}) if i % 2 else frozenset())
              for i, mid in enumerate(meter_ids)]
    groups = [Group(gid, Resource.WATER, "m3", (GroupInput(meter_ids[0]),),
                    parent_id=group_ids[i - 1] if i else None) for i, gid in enumerate(group_ids)]
    return concentrators, modules, meters, groups


@settings(max_examples=300, deadline=None)
@given(st.lists(HOSTILE, min_size=1, max_size=12, unique=True), st.lists(HOSTILE, max_size=6, unique=True))
def test_every_node_id_names_one_node(meter_ids: list[str], group_ids: list[str]) -> None:
    model_ids = [s.id for s in m.build_model(*registry(meter_ids, group_ids), m.SpecCache()).specs()]
    type_ids = [s.id for s in m.type_specs()]
    twice = [i for i, n in Counter(model_ids + type_ids).items() if n > 1]
    assert twice == [], (meter_ids, group_ids)
    # Every meter and group object is found under its escaped id, and the id comes back from it.
    for meter_id in meter_ids:
        node = m.meter_id(meter_id)
        assert node in model_ids and m.registry_id(node.removeprefix("Meters/")) == meter_id
        assert "/" not in node.removeprefix("Meters/")
    for group_id in group_ids:
        assert m.group_id(group_id) in model_ids


def test_the_colliding_pair_and_a_meter_and_group_of_one_id() -> None:
    ids = [s.id for s in m.build_model(*registry(["W-1", "W-1/Status", "A%2FB", "A/B", "Кв-1"],
                                                  ["W-1", "Кв-1"]), m.SpecCache()).specs()]
    assert sorted(i for i, n in Counter(ids).items() if n > 1) == []
    assert "Meters/W-1/Status" in ids and "Meters/W-1%2FStatus" in ids and "Meters/W-1%2FStatus/Status" in ids
    assert "Meters/A%252FB" in ids and "Meters/A%2FB" in ids
    assert "Meters/Кв-1/Value" in ids and "Groups/Кв-1/Today/Input" in ids and "Groups/W-1/LastHour/Input" in ids


def test_ordinary_ids_keep_their_documented_node_ids() -> None:
    ids = {s.id for s in m.build_model(*registry(["B1-IN", "W-17", "Кв.12 ГВС"], ["House 1", "D"]),
                                       m.SpecCache()).specs()}
    assert {"Meters/B1-IN", "Meters/B1-IN/Value", "Meters/B1-IN/Value/EngineeringUnits", "Meters/W-17/CloseValve",
            "Meters/Кв.12 ГВС/LastHour", "Groups/House 1/LastHour/LossPercent", "Groups/D/Today/Hours",
            "Modules/1001", "Concentrators/7/Modules"} <= ids
