"""Registry import from JSON, export and round trips (CSV and JSON), and the
single objects the HTTP API parses and checks with the import's rules."""

from __future__ import annotations

import dataclasses
import json

import pytest
from registry_import_support import JAN_2014, good_json, refused, spy_apply, write_set

from balans_edge.core.model import Meter, RadioModule, Resource
from balans_edge.core.registry import (
    COLUMNS,
    RegistryError,
    check_delete,
    check_references,
    export_registry,
    format_object,
    import_registry,
    parse_object,
)
from balans_edge.core.registry_io import CSV_FILES
from balans_edge.core.storage.base import REGISTRY_KINDS
from balans_edge.core.storage.sqlite import SqliteStorage

# -- JSON and round trips ---------------------------------------------------------------




async def test_json_import(storage, tmp_path):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(good_json()))
    report = await import_registry(storage, [path])
    assert (report.created, report.updated) == (5, 0)
    assert (await storage.registry_get("meters", "V1")).install_time == JAN_2014
    assert (await storage.registry_get("meters", "W1")).flags == frozenset({"valve"})
    assert (await import_registry(storage, [path])).created == 0


async def test_json_problems_name_the_item(storage, tmp_path):
    doc = good_json()
    doc["meters"][1]["pulse_weight"] = -1
    doc["meters"][1]["colour"] = "red"
    doc["meters"][0]["install_time"] = "2014-01-01T00:00:00"
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(doc))
    problems = await refused(storage, [path])
    assert [str(p) for p in problems] == [
        'registry.json:meters#1: column "install_time": expected an ISO-8601 time with a timezone '
        'such as 2014-01-01T00:00:00Z, got "2014-01-01T00:00:00"',
        'registry.json:meters#2: column "colour": unknown column (expected: ' + ", ".join(COLUMNS["meters"]) + ")",
        'registry.json:meters#2: column "pulse_weight": expected a number > 0 and <= 1000, got -1',
    ]


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ('{"meters": [}', "registry.json:1"),
        ("[1, 2]", "registry.json"),
        ('{"meters": {}}', "registry.json:meters"),
        ('{"tariffs": []}', "registry.json"),
    ],
)
async def test_broken_json(storage, tmp_path, content, where):
    path = tmp_path / "registry.json"
    path.write_text(content)
    problems = await refused(storage, [path])
    assert [p.where for p in problems] == [where]


async def test_csv_and_json_and_csv_again_does_not_duplicate(storage, tmp_path):
    path = tmp_path / "j" / "registry.json"
    path.parent.mkdir()
    path.write_text(json.dumps(good_json()))
    problems = await refused(storage, [*write_set(tmp_path / "c"), path])
    assert {p.column for p in problems} == {"concentrator_id", "module_id", "account_id", "meter_id"}
    assert all("duplicate" in p.message for p in problems)


@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_export_round_trip(storage, tmp_path, fmt):
    await import_registry(storage, write_set(tmp_path / "in"))
    live = dataclasses.replace(
        await storage.registry_get("modules", 100), hops=3, rssi=-90, battery_mv=3600, firmware="2.1"
    )
    await storage.registry_apply({"modules": [live]})
    version = await storage.registry_version()
    paths = await export_registry(storage, tmp_path / "out", fmt)
    assert [p.name for p in paths] == ([*CSV_FILES] if fmt == "csv" else ["registry.json"])
    calls = spy_apply(storage)
    report = await import_registry(storage, paths)
    assert (report.created, report.updated, report.unchanged) == (0, 0, 11)
    assert calls == [] and await storage.registry_version() == version
    # Deterministic: a second export is byte-identical.
    again = await export_registry(storage, tmp_path / "out2", fmt)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    # And the files rebuild the same registry in an empty database.
    other = SqliteStorage(tmp_path / "other.sqlite")
    await other.open()
    try:
        await import_registry(other, paths)
        expected = {k: await storage.registry_list(k) for k in REGISTRY_KINDS}
        expected["modules"] = [dataclasses.replace(m, last_seen=None) for m in expected["modules"]]
        assert {k: await other.registry_list(k) for k in REGISTRY_KINDS} == expected
    finally:
        await other.close()


async def test_export_orders_by_key(storage, tmp_path):
    await import_registry(storage, write_set(tmp_path / "in"))
    (path,) = await export_registry(storage, tmp_path / "out", "json")
    doc = json.loads(path.read_text())
    assert [m["meter_id"] for m in doc["meters"]] == ["E1", "H1", "V1", "W1", "W2", "W3"]
    assert doc["meters"][3]["install_time"] == "2014-01-01T00:00:00Z"
    assert doc["meters"][3]["flags"] == ["reverse_allowed", "valve"]


# -- single objects, for the HTTP API ---------------------------------------------------


def test_parse_object_for_one_request():
    meter = parse_object(
        "meters",
        {
            "meter_id": "M1",
            "resource": "Electricity",
            "unit": "kwh",
            "pulse_weight": "0.5",
            "install_time": "2020-01-01T00:00:00Z",
        },
    )
    assert (meter.resource, meter.unit, meter.pulse_weight) == (Resource.ELECTRICITY, "kWh", 0.5)
    assert parse_object("meters", format_object(meter)) == meter
    with pytest.raises(RegistryError) as info:
        parse_object("modules", {"module_id": 5, "channels": 8, "rssi": "x"}, "PUT /api/registry/modules/5")
    assert [str(p) for p in info.value.problems] == [
        'PUT /api/registry/modules/5: column "channels": expected an integer 1..7, got 8',
        'PUT /api/registry/modules/5: column "rssi": expected an integer -128..127, got "x"',
    ]


def test_check_references_and_delete_for_single_objects():
    module = RadioModule(module_id=5, channels=1)
    meter = Meter("M1", Resource.WATER, "m3", 0.01, JAN_2014, module_id=5, channel=1)
    stored = {"modules": [module], "meters": [meter]}
    twin = dataclasses.replace(meter, meter_id="M2", install_time=JAN_2014 + 10)
    problems = check_references(stored, [(twin, "POST /api/registry/meters")])
    assert [(p.file, p.column) for p in problems] == [("POST /api/registry/meters", "install_time")]
    assert check_references(stored, [(dataclasses.replace(twin, channel=None, module_id=None), "x")]) == []
    assert "M1" in check_delete(stored, "modules", 5)[0].message
    assert check_delete(stored, "modules", 6) == []


def test_columns_are_the_model_fields():
    for kind, cls in REGISTRY_KINDS.items():
        model = {
            f.name: f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            for f in dataclasses.fields(cls)
        }
        assert list(COLUMNS[kind]) == list(model)
        assert {c.name: c.required for c in COLUMNS[kind].values()} == model

