"""Registry bulk import and export: validation, all-or-nothing, re-import, round trip."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balans_edge.core.model import Concentrator, Meter, RadioModule, Resource
from balans_edge.core.registry import (
    COLUMNS,
    RegistryError,
    check_delete,
    check_references,
    export_registry,
    format_object,
    import_registry,
    parse_object,
    read_registry,
)
from balans_edge.core.registry_io import CSV_FILES, Problem
from balans_edge.core.storage.base import REGISTRY_KINDS
from balans_edge.core.storage.sqlite import SqliteStorage

EXAMPLES = Path(__file__).resolve().parent.parent / "config" / "registry"
JAN_2014 = 1388534400  # 2014-01-01T00:00:00Z

GOOD = {
    "concentrators.csv": "concentrator_id,name,site\n7,Main,Plant\n",
    "modules.csv": "module_id,concentrator_id,channels\n100,7,3\n200,7,7\n",
    "accounts.csv": "account_id,consumer,area_m2\nA1,Shop,120.5\nA2,Office,\n",
    "meters.csv": (
        "meter_id,resource,unit,pulse_weight,install_time,module_id,channel,base_reading,account_id,flags,removed_time\n"
        "W1,water,m3,0.001,2014-01-01T00:00:00Z,100,1,12.5,A1,valve;reverse_allowed,\n"
        "W2,water,m3,0.01,2014-01-01T00:00:00+03:00,100,2,0,A1,,2015-01-01T00:00:00Z\n"
        "W3,water,m3,0.01,2015-01-01T00:00:00Z,100,2,0,A1,,\n"
        "H1,heat,GJ,0.0001,2014-01-01T00:00:00Z,200,1,3.25,A2,,\n"
        "E1,electricity,kWh,0.5,2014-06-01T12:00:00Z,200,3,1000,A2,relay,\n"
        "V1,water,m3,1,2014-01-01T00:00:00Z,,,0,,virtual,\n"
    ),
}


@pytest.fixture
async def storage(tmp_path: Path):
    store = SqliteStorage(tmp_path / "db.sqlite")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def write_set(folder: Path, **overrides: str | bytes) -> list[Path]:
    """The GOOD files, with some replaced (keys use _ for ., e.g. meters_csv)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = dict(GOOD)
    files.update({name.replace("_", "."): text for name, text in overrides.items()})
    paths = []
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        paths.append(path)
    return paths


async def snapshot(storage: SqliteStorage) -> tuple[int, dict[str, list[Any]]]:
    return await storage.registry_version(), {k: await storage.registry_list(k) for k in REGISTRY_KINDS}


async def refused(storage: SqliteStorage, paths: list[Path]) -> list[Problem]:
    """Import ``paths`` expecting a refusal; check nothing was written; return the problems."""
    before = await snapshot(storage)
    with pytest.raises(RegistryError) as info:
        await import_registry(storage, paths)
    assert await snapshot(storage) == before
    assert info.value.problems
    return info.value.problems


def spy_apply(storage: SqliteStorage) -> list[Any]:
    calls: list[Any] = []
    original = storage.registry_apply

    async def apply(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        await original(*args, **kwargs)

    storage.registry_apply = apply  # type: ignore[method-assign]
    return calls


def counts(report: Any) -> dict[str, tuple[int, int, int]]:
    return {k: (c.created, c.updated, c.unchanged) for k, c in report.kinds.items()}


# -- good imports ---------------------------------------------------------------------


async def test_good_csv_set_imports(storage, tmp_path):
    calls = spy_apply(storage)
    report = await import_registry(storage, write_set(tmp_path / "in"))
    assert counts(report) == {
        "concentrators": (1, 0, 0),
        "modules": (2, 0, 0),
        "accounts": (2, 0, 0),
        "meters": (6, 0, 0),
        "groups": (0, 0, 0),
    }
    assert len(calls) == 1
    w1 = await storage.registry_get("meters", "W1")
    assert w1 == Meter(
        meter_id="W1",
        resource=Resource.WATER,
        unit="m3",
        pulse_weight=0.001,
        install_time=JAN_2014,
        module_id=100,
        channel=1,
        base_reading=12.5,
        account_id="A1",
        flags=frozenset({"valve", "reverse_allowed"}),
    )
    w2 = await storage.registry_get("meters", "W2")
    assert w2.install_time == JAN_2014 - 3 * 3600
    assert w2.removed_time == JAN_2014 + 365 * 86400
    v1 = await storage.registry_get("meters", "V1")
    assert (v1.module_id, v1.channel, v1.account_id, v1.flags) == (None, None, None, frozenset({"virtual"}))
    assert (await storage.registry_get("accounts", "A1")).area_m2 == 120.5
    assert (await storage.registry_get("accounts", "A2")).area_m2 is None
    assert (await storage.registry_get("modules", 200)).channels == 7


async def test_reimport_is_a_noop(storage, tmp_path):
    paths = write_set(tmp_path / "in")
    await import_registry(storage, paths)
    version = await storage.registry_version()
    calls = spy_apply(storage)
    report = await import_registry(storage, paths)
    assert (report.created, report.updated, report.unchanged) == (0, 0, 11)
    assert calls == []
    assert await storage.registry_version() == version


async def test_changed_row_is_an_update(storage, tmp_path):
    await import_registry(storage, write_set(tmp_path / "a"))
    version = await storage.registry_version()
    changed = GOOD["meters.csv"].replace("H1,heat,GJ,0.0001", "H1,heat,Gcal,0.001")
    calls = spy_apply(storage)
    report = await import_registry(storage, write_set(tmp_path / "b", meters_csv=changed))
    assert counts(report)["meters"] == (0, 1, 5)
    assert report.updated == 1 and report.created == 0
    assert [len(v) for v in calls[0][0].values()] == [1]
    h1 = await storage.registry_get("meters", "H1")
    assert (h1.unit, h1.pulse_weight) == ("Gcal", 0.001)
    assert await storage.registry_version() == version + 1


async def test_partial_files_reference_stored_objects(storage, tmp_path):
    await import_registry(storage, write_set(tmp_path / "a"))
    meters = tmp_path / "b" / "meters.csv"
    meters.parent.mkdir()
    meters.write_text(
        "meter_id,resource,unit,pulse_weight,install_time,module_id,channel\nG1,gas,M3,1,2016-01-01T00:00:00Z,200,2\n"
    )
    report = await import_registry(storage, [meters])
    assert counts(report)["meters"] == (1, 0, 0)
    assert (await storage.registry_get("meters", "G1")).unit == "m3"


async def test_imports_never_delete(storage, tmp_path):
    await import_registry(storage, write_set(tmp_path / "a"))
    only_w1 = "\n".join(GOOD["meters.csv"].splitlines()[:2]) + "\n"
    report = await import_registry(storage, write_set(tmp_path / "b", meters_csv=only_w1))
    assert counts(report)["meters"] == (0, 0, 1)
    assert len(await storage.registry_list("meters")) == 6


async def test_example_site_imports_cleanly(storage):
    report = await import_registry(storage, sorted(EXAMPLES.glob("*.csv")))
    assert counts(report) == {
        "concentrators": (1, 0, 0),
        "modules": (4, 0, 0),
        "accounts": (3, 0, 0),
        "meters": (7, 0, 0),
        "groups": (2, 0, 0),
    }
    resources = {m.resource for m in await storage.registry_list("meters")}
    assert resources == {Resource.WATER, Resource.HEAT, Resource.ELECTRICITY}
    again = await import_registry(storage, [EXAMPLES])  # a folder stands for its files
    assert again.unchanged == 17 and again.created == again.updated == 0


async def test_semicolon_csv_with_bom(storage, tmp_path):
    folder = tmp_path / "in"
    paths = write_set(folder)
    (folder / "accounts.csv").write_bytes(b"\xef\xbb\xbfaccount_id;consumer;area_m2\r\nA1;Shop;120.5\r\nA2;Office;\r\n")
    report = await import_registry(storage, paths)
    assert counts(report)["accounts"] == (2, 0, 0)
    assert (await storage.registry_get("accounts", "A1")).consumer == "Shop"


async def test_topology_columns_are_kept(storage, tmp_path):
    """A hand-written modules.csv must not erase what the radio network reported."""
    paths = write_set(tmp_path / "a")
    await import_registry(storage, paths)
    live = dataclasses.replace(await storage.registry_get("modules", 100), hops=2, rssi=-71, last_seen=JAN_2014)
    await storage.registry_apply({"modules": [live]})
    report = await import_registry(storage, paths)
    assert report.updated == 0
    assert await storage.registry_get("modules", 100) == live


# -- refusals: every problem reported, nothing written ----------------------------------


async def test_bad_row_reports_file_line_column_and_writes_nothing(storage, tmp_path):
    await import_registry(storage, write_set(tmp_path / "seed"))
    bad_meters = GOOD["meters.csv"].replace("H1,heat,GJ", "H1,heat,kWh").replace("V1,", "V9,")
    bad_accounts = GOOD["accounts.csv"].replace("A2,Office,", "A2,Office,0,5") + "A3,New,abc\n"
    concentrators = "concentrator_id,name\n7,Renamed\n8,New\n"
    paths = write_set(
        tmp_path / "in", meters_csv=bad_meters, accounts_csv=bad_accounts, concentrators_csv=concentrators
    )
    problems = await refused(storage, paths)
    text = [str(p) for p in problems]
    assert 'meters.csv:5: column "unit": "kWh" is not a unit of heat (allowed: GJ, Gcal)' in text
    area = 'accounts.csv:4: column "area_m2": expected a number > 0 and <= 1000000, got "abc"'
    assert any(t.startswith(area) for t in text)
    # An unquoted decimal comma splits the cell: reported as a value without a column.
    assert any(t.startswith("accounts.csv:3: value") for t in text)
    assert (await storage.registry_get("concentrators", 7)).name == "Main"
    assert await storage.registry_get("concentrators", 8) is None
    assert await storage.registry_get("meters", "V9") is None


async def test_error_text_lists_one_problem_per_line(storage, tmp_path):
    bad = "concentrator_id,name\n7,Main\n0,A\nx,B\n"
    with pytest.raises(RegistryError) as info:
        await import_registry(storage, write_set(tmp_path, concentrators_csv=bad))
    assert str(info.value).splitlines() == [
        'concentrators.csv:3: column "concentrator_id": expected an integer 1..4294967295, got "0"',
        'concentrators.csv:4: column "concentrator_id": expected an integer 1..4294967295, got "x"',
    ]


async def test_unknown_column(storage, tmp_path):
    bad = "module_id,concentrator_id,channels,colour\n100,7,3,red\n200,7,7,blue\n"
    problems = await refused(storage, write_set(tmp_path, modules_csv=bad))
    assert [(p.file, p.line, p.column) for p in problems] == [("modules.csv", 1, "colour")]
    assert "unknown column" in problems[0].message


async def test_missing_required_column(storage, tmp_path):
    bad = GOOD["meters.csv"].replace("pulse_weight,", "weight,")
    problems = await refused(storage, write_set(tmp_path, meters_csv=bad))
    found = {(p.file, p.line, p.column, p.message) for p in problems}
    assert ("meters.csv", 1, "pulse_weight", "required column is missing") in found
    assert ("meters.csv", 1, "weight") in {f[:3] for f in found}


async def test_required_value_empty(storage, tmp_path):
    bad = GOOD["meters.csv"].replace("W3,water,m3,0.01,2015-01-01T00:00:00Z", "W3,water,m3,0.01,")
    problems = await refused(storage, write_set(tmp_path, meters_csv=bad))
    assert [(p.line, p.column, p.message) for p in problems] == [(4, "install_time", "required, but empty")]


async def test_duplicate_key(storage, tmp_path):
    bad = GOOD["accounts.csv"] + "A1,Other shop,\n"
    problems = await refused(storage, write_set(tmp_path, accounts_csv=bad))
    assert [str(p) for p in problems] == [
        'accounts.csv:4: column "account_id": duplicate account_id "A1" (first at accounts.csv:2)'
    ]


async def test_dangling_references(storage, tmp_path):
    meters = GOOD["meters.csv"].replace(
        "H1,heat,GJ,0.0001,2014-01-01T00:00:00Z,200,1,3.25,A2", "H1,heat,GJ,0.0001,2014-01-01T00:00:00Z,999,1,3.25,A9"
    )
    modules = GOOD["modules.csv"] + "300,8,1\n"
    problems = await refused(storage, write_set(tmp_path, meters_csv=meters, modules_csv=modules))
    assert {(p.file, p.line, p.column, p.message) for p in problems} == {
        ("meters.csv", 5, "module_id", "unknown module 999"),
        ("meters.csv", 5, "account_id", 'unknown account "A9"'),
        ("modules.csv", 4, "concentrator_id", "unknown concentrator 8"),
    }


async def test_broken_row_is_not_also_reported_as_unknown(storage, tmp_path):
    modules = GOOD["modules.csv"].replace("200,7,7", "200,7,9")
    problems = await refused(storage, write_set(tmp_path, modules_csv=modules))
    assert [(p.file, p.line, p.column) for p in problems] == [("modules.csv", 3, "channels")]


async def test_overlapping_meters_on_one_channel(storage, tmp_path):
    meters = GOOD["meters.csv"].replace(
        "W3,water,m3,0.01,2015-01-01T00:00:00Z", "W3,water,m3,0.01,2014-12-31T00:00:00Z"
    )
    problems = await refused(storage, write_set(tmp_path, meters_csv=meters))
    assert len(problems) == 1
    p = problems[0]
    assert (p.file, p.line, p.column) == ("meters.csv", 4, "install_time")
    assert 'overlaps meter "W2" on module 100 channel 2 (meters.csv:3;' in p.message


async def test_overlap_with_a_stored_meter(storage, tmp_path):
    await import_registry(storage, write_set(tmp_path / "a"))
    new = tmp_path / "b" / "meters.csv"
    new.parent.mkdir()
    new.write_text(
        "meter_id,resource,unit,pulse_weight,install_time,module_id,channel\nW4,water,m3,1,2020-01-01T00:00:00Z,100,1\n"
    )
    problems = await refused(storage, [new])
    assert [(p.line, p.column) for p in problems] == [(2, "install_time")]
    assert '"W1"' in problems[0].message and "(stored;" in problems[0].message


async def test_channel_not_in_mask(storage, tmp_path):
    modules = GOOD["modules.csv"].replace("200,7,7", "200,7,5")  # inputs 1 and 3, not 2
    meters = GOOD["meters.csv"].replace(
        "E1,electricity,kWh,0.5,2014-06-01T12:00:00Z,200,3", "E1,electricity,kWh,0.5,2014-06-01T12:00:00Z,200,2"
    )
    problems = await refused(storage, write_set(tmp_path, modules_csv=modules, meters_csv=meters))
    assert [(p.file, p.line, p.column) for p in problems] == [("meters.csv", 6, "channel")]
    assert "not wired on module 200 (channels mask 5)" in problems[0].message


async def test_new_mask_cannot_orphan_stored_meters(storage, tmp_path):
    await import_registry(storage, write_set(tmp_path / "a"))
    modules = tmp_path / "b" / "modules.csv"
    modules.parent.mkdir()
    modules.write_text("module_id,concentrator_id,channels\n200,7,1\n")
    problems = await refused(storage, [modules])
    assert {(p.line, p.column) for p in problems} == {(2, "channels")}
    assert {p.message.rsplit('"', 2)[1] for p in problems} == {"E1"}


async def test_meter_on_module_needs_a_channel(storage, tmp_path):
    meters = GOOD["meters.csv"].replace("2014-01-01T00:00:00Z,100,1,12.5", "2014-01-01T00:00:00Z,100,,12.5")
    problems = await refused(storage, write_set(tmp_path, meters_csv=meters))
    assert [(p.line, p.column) for p in problems] == [(2, "channel")]


async def test_not_utf8(storage, tmp_path):
    data = "account_id,consumer\nA1,Shop\nA2,Квартира\n".encode("cp1251")
    problems = await refused(storage, write_set(tmp_path, accounts_csv=data))
    assert [(p.file, p.line) for p in problems] == [("accounts.csv", 3)]
    assert "UTF-8" in problems[0].message


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        ("", 1, "empty"),
        ("\n \n", 1, "empty"),
        ("A1,Shop,120.5\n", 1, "missing header"),
        ('account_id,consumer\nA1,"Sh"op\n', 2, "not valid CSV"),
    ],
)
async def test_broken_csv_file(storage, tmp_path, content, line, words):
    problems = await refused(storage, write_set(tmp_path, accounts_csv=content))
    assert [(p.file, p.line) for p in problems] == [("accounts.csv", line)]
    assert words in problems[0].message


async def test_unknown_file_name(storage, tmp_path):
    other = tmp_path / "tariffs.csv"
    other.write_text("tariff_id\nT1\n")
    problems = await refused(storage, [*write_set(tmp_path), other])
    assert [p.file for p in problems] == ["tariffs.csv"]


# -- JSON and round trips ---------------------------------------------------------------


def good_json() -> dict[str, list[dict[str, Any]]]:
    return {
        "concentrators": [{"concentrator_id": 7, "name": "Main"}],
        "modules": [{"module_id": 100, "concentrator_id": 7, "channels": 3}],
        "accounts": [{"account_id": "A1", "area_m2": 50}],
        "meters": [
            {
                "meter_id": "W1",
                "resource": "water",
                "unit": "m3",
                "pulse_weight": 0.001,
                "install_time": "2014-01-01T00:00:00Z",
                "module_id": 100,
                "channel": 1,
                "account_id": "A1",
                "flags": ["valve"],
            },
            {
                "meter_id": "V1",
                "resource": "heat",
                "unit": "Gcal",
                "pulse_weight": 1,
                "install_time": "2014-01-01T04:00:00+04:00",
            },
        ],
    }


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


# -- garbage in: only RegistryError, never a write ----------------------------------------

FILE_NAMES = [*CSV_FILES, "registry.json"]
TOKENS = [
    "",
    " ",
    "1",
    "0",
    "-1",
    "3",
    "7",
    "100",
    "200",
    "4294967296",
    "abc",
    "water",
    "heat",
    "gas",
    "m3",
    "kWh",
    "GJ",
    "0.001",
    "1e999",
    "nan",
    "-0",
    "0,5",
    "2014-01-01T00:00:00Z",
    "2014-01-01",
    "2014-01-01T00:00:00.5Z",
    "A1",
    "W1",
    "valve;relay",
    "bogus",
    '"',
    '""',
    "\x00",
    "\r",
    "é",
    "\ud800",
    "[]",
    "{}",
    "null",
]
CELL = st.one_of(st.sampled_from(TOKENS), st.text(max_size=8))


@st.composite
def csv_texts(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(st.sampled_from([*CSV_FILES]))
    columns = [*COLUMNS[CSV_FILES[name]], "junk", ""]
    header = draw(st.lists(st.sampled_from(columns), min_size=0, max_size=8))
    rows = draw(st.lists(st.lists(CELL, max_size=len(header) + 2), max_size=5))
    return name, "\n".join(",".join(r) for r in [header, *rows])


@st.composite
def mutated_good(draw: st.DrawFn) -> tuple[str, str]:
    """A good file with a few cells replaced: near-valid input reaches the
    reference checks and, when still valid, the write path."""
    name = draw(st.sampled_from([*GOOD]))
    rows = [line.split(",") for line in GOOD[name].splitlines()]
    for _ in range(draw(st.integers(0, 3))):
        row = draw(st.integers(0, len(rows) - 1))
        cell = draw(st.integers(0, len(rows[row]) - 1))
        rows[row][cell] = draw(CELL)
    return name, "\n".join(",".join(r) for r in rows) + "\n"


def garbage_json() -> st.SearchStrategy[str]:
    values = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.sampled_from(TOKENS)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.sampled_from([*COLUMNS["meters"], "x"]), inner, max_size=5)
        ),
        max_leaves=20,
    )
    doc = st.dictionaries(st.sampled_from([*REGISTRY_KINDS, "x"]), st.lists(values, max_size=3), max_size=4)
    return doc.map(json.dumps)


INPUTS = st.one_of(
    st.tuples(st.sampled_from(FILE_NAMES), st.binary(max_size=300)),
    csv_texts().map(lambda t: (t[0], t[1].encode("utf-8", "surrogatepass"))),
    mutated_good().map(lambda t: (t[0], t[1].encode("utf-8", "surrogatepass"))),
    garbage_json().map(lambda text: ("registry.json", text.encode())),
)


@settings(max_examples=300, deadline=None)
@given(INPUTS)
def test_parser_survives_garbage(given_input: tuple[str, bytes]):
    name, data = given_input
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        loaded = read_registry([path])
    assert all(isinstance(p, Problem) and str(p) for p in loaded.problems)


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("seed")

    async def seed() -> None:
        store = SqliteStorage(folder / "db.sqlite")
        await store.open()
        await import_registry(store, write_set(folder / "in"))
        await store.close()

    asyncio.run(seed())
    return folder / "db.sqlite"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(INPUTS)
def test_garbage_import_raises_only_registry_error_and_never_writes(seeded_db: Path, given_input: tuple[str, bytes]):
    name, data = given_input

    async def attempt(folder: Path) -> None:
        shutil.copy(seeded_db, folder / "db.sqlite")
        store = SqliteStorage(folder / "db.sqlite")
        await store.open()
        try:
            before = await snapshot(store)
            path = folder / name
            path.write_bytes(data)
            try:
                await import_registry(store, [path])
            except RegistryError as exc:
                assert exc.problems and str(exc)
                assert await snapshot(store) == before
                return
            again = await import_registry(store, [path])
            assert again.created == again.updated == 0
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(attempt(Path(folder)))


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
