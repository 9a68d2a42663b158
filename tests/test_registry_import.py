"""Registry bulk import of CSV sets: what is applied, re-imported and refused
(every problem reported with file, line and column; all or nothing). JSON and
export: ``test_registry_json_export.py``; garbage input:
``test_registry_import_garbage.py``; concentrator capacity:
``test_registry_capacity.py``."""

from __future__ import annotations

import dataclasses

import pytest
from registry_import_support import EXAMPLES, GOOD, JAN_2014, counts, refused, spy_apply, write_set

from balans_edge.core.model import Meter, Resource
from balans_edge.core.registry import RegistryError, import_registry

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

