"""Balance groups in the registry: every rule of the tree refused with a clear
message naming the place, nothing written on error, from files, the API and
the configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from balans_edge.core.balance_queries import Tree
from balans_edge.core.model import Group, GroupInput, Meter, Resource
from balans_edge.core.registry import RegistryError, check_delete, check_references, import_registry, parse_object

from conftest import auth, base_config

BIN = Path(sys.executable).parent
T = 1_704_067_200
METER_COLUMNS = "meter_id,resource,unit,pulse_weight,install_time,group_id"
GROUP_COLUMNS = "group_id,resource,unit,inputs,name,level,parent_id,loss_norm_pct,price,allocation_rule,odn_norm"


def water(meter_id: str, group_id: str | None = None, resource: Resource = Resource.WATER,
          unit: str = "m3") -> Meter:
    return Meter(meter_id, resource, unit, 0.001, T, group_id=group_id)


def group(group_id: str, *inputs: str, parent: str | None = None, unit: str = "m3",
          resource: Resource = Resource.WATER) -> Group:
    feeds = tuple(GroupInput(i[1:], -1) if i.startswith("-") else GroupInput(i) for i in inputs)
    return Group(group_id, resource, unit, feeds, parent_id=parent)


def street() -> dict[str, list[Any]]:
    """A street fed by S-IN with two houses (inputs H1-IN, H2-IN) and a street lamp meter."""
    return {
        "meters": [water("S-IN"), water("H1-IN"), water("H2-IN"), water("LAMP", "S"),
                   water("A1", "H1"), water("A2", "H1"), water("B1", "H2")],
        "groups": [group("S", "S-IN"), group("H1", "H1-IN", parent="S"), group("H2", "H2-IN", parent="S")],
    }


def problems_of(stored: dict[str, list[Any]], *incoming: Any) -> list[str]:
    return [f"{p.column}: {p.message}" for p in check_references(stored, [(o, "test") for o in incoming])]


def test_a_valid_tree_has_no_problems() -> None:
    site = street()
    assert problems_of({}, *site["meters"], *site["groups"]) == []


def test_transit_between_member_groups_is_not_counted_twice() -> None:
    """A pipe from house H1 on to house H2, metered once: out of one, into the other."""
    site = street()
    groups = [group("S", "S-IN"), group("H1", "H1-IN", "-T", parent="S"), group("H2", "H2-IN", "T", parent="S")]
    assert problems_of({}, *site["meters"], water("T"), *groups) == []


def test_a_feed_of_the_group_and_of_a_member_group_is_allowed() -> None:
    site = street()
    groups = [group("S", "S-IN", "H1-IN"), group("H1", "H1-IN", parent="S"), group("H2", "H2-IN", parent="S")]
    assert problems_of({}, *site["meters"], *groups) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"groups": [group("H1", "H1-IN", parent="S"), group("S", "S-IN", parent="H1")]},
         "parent_id: cycle of parents: "),
        ({"groups": [group("H1", "H1-IN", parent="H1")]}, "parent_id: a group cannot be its own parent"),
        ({"groups": [group("H1", "H1-IN", parent="NOPE")]}, 'parent_id: unknown group "NOPE"'),
        ({"groups": [group("H1", "H1-IN", "H1-IN", parent="S")]}, 'inputs: meter "H1-IN" is listed twice'),
        ({"groups": [group("H1", "GHOST", parent="S")]}, 'inputs: unknown meter "GHOST"'),
        ({"groups": [group("H1", parent="S")]}, "inputs: a group needs at least one input meter"),
        ({"meters": [water("H1-IN", "H1")]}, 'group_id: meter "H1-IN" is counted twice in group "H1": as its input'),
        ({"meters": [water("H1-IN", "S")]}, 'group_id: meter "H1-IN" is counted twice in group "S"'),
        ({"groups": [group("H2", "H1-IN", parent="S")]}, 'inputs: meter "H1-IN" is counted twice in group "S"'),
        ({"meters": [water("A3", "NOPE")]}, 'group_id: unknown group "NOPE"'),
        ({"meters": [water("HEAT", "H1", Resource.HEAT, "Gcal")]}, 'group_id: group "H1" balances water in m3'),
        ({"meters": [water("G-IN", None, Resource.GAS)], "groups": [group("H1", "G-IN", parent="S")]},
         'inputs: meter "G-IN" measures gas in m3, the group balances water in m3'),
        ({"groups": [group("H1", "H1-IN", parent="S", resource=Resource.HEAT, unit="Gcal")]},
         'unit: heat in Gcal, but its parent "S" balances water in m3'),
    ],
)
def test_broken_trees_are_refused(change: dict[str, list[Any]], expected: str) -> None:
    found = problems_of(street(), *change.get("meters", []), *change.get("groups", []))
    assert any(p.startswith(expected) for p in found), found


def test_stored_problems_are_not_this_writes_doing() -> None:
    """A bad tree already stored is not blamed on an unrelated write."""
    stored = street()
    stored["meters"].append(water("H1-IN2", "H1"))
    stored["groups"][1] = group("H1", "H1-IN", "H1-IN2", parent="S")
    assert problems_of(stored, water("OTHER")) == []


def test_deleting_a_group_or_an_input_meter_in_use_is_refused() -> None:
    site = street()
    assert [p.message for p in check_delete(site, "groups", "S")] == [
        "meters still refer to it: LAMP", "groups still refer to it: H1, H2"]
    assert [p.message for p in check_delete(site, "meters", "H2-IN")] == ["groups still refer to it: H2"]
    assert [p.message for p in check_delete(site, "groups", "H2")] == ["meters still refer to it: B1"]
    assert check_delete({**site, "groups": [*site["groups"], group("LONE", "S-IN")]}, "groups", "LONE") == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"inputs": "IN;-OUT"}, None),
        ({"inputs": ""}, 'column "inputs": a group needs at least one input meter, or a formula'),
        ({"inputs": ";"}, "a group needs at least one input meter"),
        ({"inputs": 5}, "expected a list of meter ids"),
        ({"inputs": "IN", "unit": "kWh"}, '"kWh" is not a unit of water'),
        ({"inputs": "IN", "allocation_rule": "by-mood"}, "expected one of consumption, area, equal"),
        ({"inputs": "IN", "loss_norm_pct": "120"}, "expected a number 0..100"),
        ({"inputs": "IN", "price": "-1"}, "expected a number 0..1000000"),
    ],
)
def test_group_columns(data: dict[str, Any], expected: str | None) -> None:
    row = {"group_id": "G", "resource": "water", "unit": "m3", **data}
    if expected is None:
        g = parse_object("groups", row)
        assert g.inputs == (GroupInput("IN"), GroupInput("OUT", -1))
        return
    with pytest.raises(RegistryError) as info:
        parse_object("groups", row)
    assert expected in str(info.value)


async def test_the_tree_is_built_again_only_after_the_registry_changed(storage) -> None:
    await storage.registry_apply(street())
    tree = await Tree.current(storage)
    assert tree.describe("H1") == {"members": ["A1", "A2"], "children": []}
    assert await Tree.current(storage) is tree  # nothing changed: not read again
    await storage.registry_apply({"meters": [water("A3", "H1")]})
    changed = await Tree.current(storage)
    assert changed is not tree and changed.describe("H1") == {"members": ["A1", "A2", "A3"], "children": []}


def write_csv(folder: Path, meters: str, groups: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meters.csv").write_text(f"{METER_COLUMNS}\n{meters}")
    (folder / "groups.csv").write_text(f"{GROUP_COLUMNS}\n{groups}")
    return [folder / "meters.csv", folder / "groups.csv"]


async def test_groups_csv_imports_and_a_bad_one_writes_nothing(storage, tmp_path) -> None:
    meters = ("IN,water,m3,0.001,2024-01-01T00:00:00Z,\nA1,water,m3,0.001,2024-01-01T00:00:00Z,H\n"
              "A2,water,m3,0.001,2024-01-01T00:00:00Z,H\n")
    report = await import_registry(storage, write_csv(tmp_path / "ok", meters,
                                                      "H,water,m3,IN,House 1,house,,3,52.1,area,0.05\n"))
    assert (report.kinds["groups"].created, report.kinds["meters"].created) == (1, 3)
    stored = await storage.registry_get("groups", "H")
    assert (stored.inputs, stored.loss_norm_pct, stored.price, stored.allocation_rule, stored.odn_norm) == (
        (GroupInput("IN"),), 3.0, 52.1, "area", 0.05)
    version = await storage.registry_version()
    bad = write_csv(tmp_path / "bad", meters + "A3,water,m3,0.001,2024-01-01T00:00:00Z,H2\n",
                    "H2,water,m3,IN,,house,H2,,,,\nH3,water,m3,A1,,entrance,H,,,,\n")
    with pytest.raises(RegistryError) as info:
        await import_registry(storage, bad)
    text = str(info.value)
    assert "groups.csv:2" in text and "a group cannot be its own parent" in text
    assert 'groups.csv:3: column "inputs": meter "A1" is counted twice in group "H"' in text
    assert text.count("\n") == 1  # two problems: a self-parent is not reported as a cycle as well
    assert await storage.registry_version() == version
    assert await storage.registry_get("groups", "H3") is None and await storage.registry_get("meters", "A3") is None


async def test_groups_through_the_api(make_server, client_for, tmp_path) -> None:
    server = await make_server(base_config(tmp_path))
    await server.storage.registry_apply({"meters": street()["meters"][:3]})
    async with client_for(server) as client:
        body = {"group_id": "S", "resource": "water", "unit": "m3", "inputs": ["S-IN"], "level": "street"}
        r = await client.post("/api/v1/groups", json=body, headers=auth("admin"))
        assert r.status_code == 201, r.text
        house = {"group_id": "H1", "resource": "water", "unit": "m3", "inputs": ["H1-IN", "-H2-IN"], "parent_id": "S"}
        assert (await client.put("/api/v1/groups/H1", json=house, headers=auth("admin"))).status_code == 201
        cycle = {**body, "parent_id": "H1"}
        r = await client.put("/api/v1/groups/S", json=cycle, headers=auth("admin"))
        assert r.status_code == 422 and "cycle of parents: S → H1 → S" in r.json()["error"]["message"]
        r = await client.get("/api/v1/groups/S", headers=auth("viewer"))
        assert r.json()["children"] == ["H1"] and r.json()["members"] == [] and r.json()["parent_id"] is None
        assert (await client.get("/api/v1/groups/H1", headers=auth("viewer"))).json()["inputs"] == ["H1-IN", "-H2-IN"]
        r = await client.delete("/api/v1/groups/S", headers=auth("admin"))
        assert r.status_code == 409 and "groups still refer to it: H1" in r.json()["error"]["message"]
        assert (await client.post("/api/v1/groups", json=body, headers=auth("viewer"))).status_code == 403


def test_config_groups_are_checked_at_start(tmp_path: Path) -> None:
    """[[groups]] in the configuration: parsed like groups.csv; a group that does not fit stops start-up."""
    config = tmp_path / "site.toml"
    config.write_text(f'[storage]\nurl = "sqlite:{tmp_path / "db.sqlite"}"\n[server]\nport = 18999\n'
                      '[[groups]]\ngroup_id = "H"\nresource = "water"\nunit = "m3"\ninputs = ["NOPE"]\n'
                      '[[groups]]\ngroup_id = "X"\nresource = "water"\nunit = "kWh"\ninputs = "A"\n')
    checked = subprocess.run([BIN / "balans-edge", "check-config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 2
    assert '[[groups]] #2: column "unit": "kWh" is not a unit of water' in checked.stderr
    config.write_text(config.read_text().split('[[groups]]\ngroup_id = "X"')[0])
    run = subprocess.run([BIN / "balans-edge", "run", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "configured groups refused, nothing written" in run.stderr and 'unknown meter "NOPE"' in run.stderr
