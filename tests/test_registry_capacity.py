"""Registry import and the HTTP API keep a concentrator within the DMesh J100UC's limits
(240 radio modules, 720 meters)."""

from __future__ import annotations

import dataclasses
import json

from registry_import_support import JAN_2014, good_json, refused, write_set

from balans_edge.core.model import Concentrator, Meter, RadioModule, Resource
from balans_edge.core.registry import check_references, import_registry

# -- concentrator capacity (the DMesh J100UC's limits) ----------------------------------------


def site_rows(modules: int, meters_per_module: int = 3, first: int = 1000) -> tuple[str, str]:
    """modules.csv and meters.csv of ``modules`` modules on concentrator 7 (all three inputs wired)."""
    module_rows = "".join(f"{first + i},7,7\n" for i in range(modules))
    meter_rows = "".join(
        f"M{first + i}-{ch},water,m3,0.001,2014-01-01T00:00:00Z,{first + i},{ch}\n"
        for i in range(modules) for ch in range(1, meters_per_module + 1)
    )
    return ("module_id,concentrator_id,channels\n" + module_rows,
            "meter_id,resource,unit,pulse_weight,install_time,module_id,channel\n" + meter_rows)


async def test_concentrator_capacity_is_enforced_at_import(storage, tmp_path):
    modules, meters = site_rows(300)
    problems = await refused(storage, write_set(tmp_path / "over", modules_csv=modules, meters_csv=meters))
    assert [(p.file, p.line, p.column, p.message) for p in problems] == [
        ("meters.csv", 901, "module_id",
         "concentrator 7 would serve 900 meters: a DMesh concentrator serves at most 720"),
        ("modules.csv", 301, "concentrator_id",
         "concentrator 7 would serve 300 radio modules: a DMesh concentrator serves at most 240"),
    ]
    modules, meters = site_rows(240)
    full = write_set(tmp_path / "full", modules_csv=modules, meters_csv=meters)
    report = await import_registry(storage, full)
    assert (report.kinds["modules"].created, report.kinds["meters"].created) == (240, 720)
    assert (await import_registry(storage, full)).unchanged == report.created  # a full one re-imports

    one_more = tmp_path / "one-more" / "modules.csv"
    one_more.parent.mkdir()
    one_more.write_text("module_id,concentrator_id,channels\n5000,7,1\n", "utf-8")
    (problem,) = await refused(storage, [one_more])
    assert (problem.line, problem.column) == (2, "concentrator_id") and "241 radio modules" in problem.message
    one_more.write_text("module_id,concentrator_id,channels\n5000,,1\n", "utf-8")  # on no concentrator: fine
    assert (await import_registry(storage, [one_more])).created == 1


async def test_concentrator_capacity_in_json(storage, tmp_path):
    doc = good_json()
    doc["modules"] = [{"module_id": 1000 + i, "concentrator_id": 7, "channels": 1} for i in range(241)]
    doc["meters"] = []
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(doc))
    (problem,) = await refused(storage, [path])
    assert (problem.section, problem.line, problem.column) == ("modules", 241, "concentrator_id")
    assert "concentrator 7 would serve 241 radio modules" in problem.message and "at most 240" in problem.message


def test_capacity_counts_what_a_write_adds():
    """Meters removed from service do not count; a registry stored over the
    limit (before the rule) can be edited but not grown."""
    stored = {
        "concentrators": [Concentrator(7), Concentrator(8)],
        "modules": [RadioModule(1000 + i, 7, channels=7) for i in range(241)],
        "meters": [Meter(f"M{i}", Resource.WATER, "m3", 0.001, JAN_2014, module_id=1000 + i // 3, channel=1 + i % 3)
                   for i in range(720)],
    }
    edit = dataclasses.replace(stored["modules"][0], channels=7, hops=3)
    assert check_references(stored, [(edit, "PUT")]) == []
    new = RadioModule(9999, 7)
    (problem,) = check_references(stored, [(new, "POST")])
    assert (problem.column, problem.message) == (
        "concentrator_id", "concentrator 7 would serve 242 radio modules: a DMesh concentrator serves at most 240")
    meter = Meter("M-new", Resource.WATER, "m3", 0.001, JAN_2014, module_id=1240, channel=1)
    (problem,) = check_references(stored, [(meter, "POST")])
    assert (problem.column, problem.message) == (
        "module_id", "concentrator 7 would serve 721 meters: a DMesh concentrator serves at most 720")
    removed = dataclasses.replace(stored["meters"][0], removed_time=JAN_2014 + 3600)
    assert check_references(stored, [(removed, "PUT"), (meter, "POST")]) == []
    moved = dataclasses.replace(stored["modules"][240], concentrator_id=8)
    assert check_references(stored, [(moved, "PUT")]) == []


async def test_concentrator_capacity_through_the_api(make_server, client_for, tmp_path):
    from conftest import auth, base_config

    server = await make_server(base_config(tmp_path))
    modules, meters = site_rows(240)
    await import_registry(server.storage, write_set(tmp_path / "site", modules_csv=modules, meters_csv=meters))
    # A module stored before the rule existed (written past validation): the concentrator is over its limit.
    await server.storage.registry_apply({"modules": [RadioModule(5000, 7, channels=1)]})
    http = client_for(server)
    admin = auth("admin")

    r = await http.post("/api/v1/modules", json={"module_id": 5001, "concentrator_id": 7, "channels": 1},
                        headers=admin)
    assert r.status_code == 422, r.text
    assert "concentrator 7 would serve 242 radio modules: a DMesh concentrator serves at most 240" in r.text
    r = await http.put("/api/v1/modules/5001", json={"concentrator_id": 7, "channels": 1}, headers=admin)
    assert r.status_code == 422 and "at most 240" in r.text
    assert await server.storage.registry_get("modules", 5001) is None
    r = await http.put("/api/v1/modules/1000", json={"concentrator_id": 7, "channels": 7, "hops": 2}, headers=admin)
    assert r.status_code == 200, r.text  # editing a module of a full concentrator is fine

    meter = {"resource": "water", "unit": "m3", "pulse_weight": 0.001, "install_time": "2014-01-01T00:00:00Z",
             "module_id": 5000, "channel": 1}
    r = await http.post("/api/v1/meters", json={"meter_id": "M-new", **meter}, headers=admin)
    assert r.status_code == 422, r.text
    assert "concentrator 7 would serve 721 meters: a DMesh concentrator serves at most 720" in r.text
    assert await server.storage.registry_get("meters", "M-new") is None
    r = await http.put("/api/v1/meters/M1000-1", json={**meter, "module_id": 1000, "pulse_weight": 0.01},
                       headers=admin)
    assert r.status_code == 200, r.text
