"""A database the release with schema 15 wrote (tests/fixtures/release-schema15.db,
made by tests/fixtures/make_release_db.py, rows in every table, export queues with
their generated tables and triggers) upgrades to this version without loss and
keeps working: its export triggers queue new data until the export plugin, which
owns them now, puts its targets into effect, and then the plugin's do."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from balans_edge_example.batches import MIGRATIONS as EXAMPLE

from balans_edge.core.model import Account, Resource
from balans_edge.core.storage import IngestWrite, ReadingRows
from balans_edge.core.storage.base import AuditQuery
from balans_edge.core.storage.migrations import LATEST
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugins.common.tag_repository import MIGRATIONS as TAGS
from balans_edge.plugins.common.tag_repository import TagRepository
from balans_edge.plugins.dmesh.repository import MIGRATIONS as DMESH
from balans_edge.plugins.dmesh.repository import DmeshRepository, ModuleEvent, ModuleRoute
from balans_edge.plugins.export.plugin import MIGRATIONS as EXPORT
from balans_edge.plugins.export.records import ExportTarget
from balans_edge.plugins.export.repository import ExportRepository
from balans_edge.plugins.modbus.repository import MIGRATIONS as MODBUS
from balans_edge.plugins.modbus.repository import BridgeSlotRepository

FIXTURE = Path(__file__).parent / "fixtures" / "release-schema15.db"
T0 = 1_705_276_800
HOUR = 3600
KINDS = ("readings", "consumption", "balance_hourly", "findings", "alarms", "network")
"""What the release's export target took."""
FEEDS_OF_KINDS = ("readings_inserted", "readings_updated", "consumption_inserted", "consumption_updated",
                  "balance_inserted", "balance_updated", "findings_inserted", "findings_updated", "alarms_inserted",
                  "network_inserted")


def contents(path: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


@pytest.fixture
async def upgraded(tmp_path: Path):
    path = tmp_path / "edge.db"
    shutil.copyfile(FIXTURE, path)
    path.chmod(0o600)
    before = contents(path)
    s = SqliteStorage(path)
    await s.open(migrations=[DMESH, TAGS, MODBUS, EXPORT, EXAMPLE])
    yield s, path, before
    await s.close()


def test_the_fixture_is_what_the_release_wrote() -> None:
    with sqlite3.connect(FIXTURE) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 15
    tables = contents(FIXTURE)
    assert len(tables) == 29
    assert not [t for t, rows in tables.items() if not rows], "every table holds rows"


async def test_release_database_upgrades_without_loss(upgraded) -> None:
    s, path, before = upgraded
    assert await s.schema_versions() == {
        "core": LATEST, "dmesh": 1, "tags": 1, "modbus": 1, "export": 1, "example": 2}
    await s.flush()
    after = contents(path)
    counts = {t: len(rows) for t, rows in before.items()}
    assert {t: len(after[t]) for t in before} == counts
    assert counts["readings"] == 18 and counts["export_queue_1"] == 40 and counts["registry_audit"] == 9
    # Columns added since (a group's formula, core 0017) come last, with their defaults.
    added = {"groups": ("",)}
    for table, rows in before.items():
        width = len(rows[0]) if rows else 0
        assert [r[:width] for r in after[table]] == rows, f"{table} changed"
        assert all(r[width:] == added.get(table, ()) for r in after[table]), f"{table}: added columns"
    assert set(after) - set(before) == {"owner_migrations", "example_batches"}


async def test_release_values_read_back_through_the_repositories(upgraded) -> None:
    s, _, _ = upgraded
    keys = await s.meter_keys()
    w1 = await s.registry_get("meters", "W-1")
    assert (w1.resource, w1.pulse_weight, w1.base_reading, w1.group_id, w1.flags) == (
        Resource.WATER, 0.001, 12.5, "house-1", frozenset({"valve"}))
    (account,) = await s.registry_list("accounts")
    assert (account.consumer, account.area_m2) == ("Flat 1", 52.5)
    periods = (await s.meter_periods([keys["W-2"]]))[keys["W-2"]]
    assert [(p.valid_from, p.pulse_weight) for p in periods] == [(T0 - 86400, 0.001), (T0 + 6 * HOUR, 0.01)]
    r = await s.readings(keys["W-1"], 0, 2**40)
    assert (len(r), r.counter[-1], r.pulses[-1]) == (6, 1500, 500)
    hours = await s.hourly(keys["W-1"], T0, T0 + 5 * HOUR)
    assert [round(v, 6) for _, v, _ in hours] == [0.1, 0.2, 0.3, 0.4, 0.5]
    series = await s.balance(["house-1"], T0, T0 + 5 * HOUR)
    assert series.input[0].tolist() == [1.5] * 5 and series.measured[0].tolist() == [2] * 5
    (finding,) = await s.findings()
    assert (finding["kind"], finding["status"], finding["started"], finding["volume"]) == ("leak", "open", T0, 0.4)
    (command,) = await s.commands()
    assert (command["code"], command["outcome"], command["detail"]) == ("valve_close", "done", "closed")
    assert [a["message"] for a in await s.journal_list("alarms")] == ["leak at W-1"]
    audit = await s.registry_audit(AuditQuery())
    assert {(a["who"], a["reason"]) for a in audit} == {("operator", "commissioning"), ("operator",
                                                                                        "new meter constant")}
    (q,) = await s.quarantine()
    assert (q["module_id"], q["reason"]) == (9999, "unknown_module")
    # The Modbus plugin's and the tag polling's tables, through their repositories (on the SQL gateway).
    assert await BridgeSlotRepository(s).bridge_slots("modbus:meters") == {"W-1": 0, "W-2": 1, "W-IN": 2}
    (tag,) = await TagRepository(s).latest_tag_values()
    assert (tag["quality"], tag["last_good_value"]) == ("comm_fail", 2.5)
    # The DMesh plugin's tables, through its repository (on the storage's SQL gateway).
    dmesh = DmeshRepository(s, s)
    assert [(e["module_id"], e["code"], e["value"], e["received_at"]) for e in await dmesh.module_events()] == [
        (1001, 3, 1, T0 + HOUR + 5)]
    assert [(r["module_id"], r["parent_id"], r["fw_version"], r["channels"]) for r in await dmesh.topology_history()
            ] == [(1001, 0, 0x0102, 0b011), (1002, 1001, 0x0102, 0b001)]
    assert [(r["module_id"], r["online_t"]) for r in await dmesh.latest_topology()] == [(1001, T0 + 2 * HOUR),
                                                                                      (1002, T0 + 2 * HOUR)]
    (result,) = await dmesh.command_results()
    assert (result["concentrator_id"], result["command_id"], result["received_at"]) == (7, 41, T0 + 3 * HOUR)
    (fw,) = await dmesh.firmware_results(concentrator_id=7)
    assert (fw["image_id"], fw["target"], fw["version"]) == (5, 2, "1.3")
    (link,) = await dmesh.connection_log(7)
    assert (link["event"], link["t"], link["peer"]) == ("connect", T0, "10.0.0.7:40000")
    # The modules' health history stays core's (written with the readings).
    assert [h["battery_mv"] for h in await s.module_reports(1001)] == [3600]
    (target,) = await ExportRepository(s).state()
    assert (target["name"], target["depth"], target["dead_letters"], target["dead"]) == ("influx", 40, 1, 2)
    assert target["kinds"] == list(KINDS)


def export_triggers(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                               "AND name LIKE 'export%'"))


async def test_release_database_keeps_working_after_the_upgrade(upgraded) -> None:
    """Its generated export triggers still queue new data, until the export plugin puts
    its targets into effect (as it does at start) with triggers of its own; registry
    writes still keep periods."""
    s, path, _ = upgraded
    keys = await s.meter_keys()
    queues = ExportRepository(s)

    async def ingest(hour: int) -> None:
        one = np.array([keys["W-1"]], dtype=np.int64)
        ts = np.array([T0 + hour * HOUR], dtype=np.int64)
        counter = np.array([1500 + 100 * hour], dtype=np.int64)
        zero = np.zeros(1, dtype=np.int64)
        await s.commit_ingest(IngestWrite(inserts=ReadingRows(one, ts, counter, counter - 1000, zero, zero)))

    await ingest(7)  # before the plugin ran: the release's triggers queue it
    (target,) = await queues.state()
    assert target["depth"] == 41
    assert "export_readings_inserted" in export_triggers(path)

    await queues.configure([ExportTarget("influx", KINDS, 1000)])
    assert export_triggers(path) == sorted(f"export__{n}" for n in FEEDS_OF_KINDS)
    await ingest(8)
    (target,) = await queues.state()
    assert (target["depth"], target["kinds"]) == (42, list(KINDS))
    batch = await queues.take("influx", 100, after=0)
    assert [(r["meter"], r["ts"]) for r in batch.rows["readings"]][-2:] == [(keys["W-1"], T0 + 7 * HOUR),
                                                                            (keys["W-1"], T0 + 8 * HOUR)]
    head = {h.meter: h for h in await s.load_heads()}[keys["W-1"]]
    assert (head.ts, head.counter) == (T0 + 8 * HOUR, 2300)
    version = await s.registry_version()
    await s.registry_apply({"accounts": [Account("A-2", "Flat 2")]}, who="test")
    assert await s.registry_version() > version


async def test_release_dmesh_tables_keep_working_through_the_plugins_repository(upgraded) -> None:
    """A TOPOLOGY stored through the DMesh plugin's repository after the upgrade: the
    module's registry row (core's) takes it, the route history (the plugin's) keeps it,
    and the export trigger on that table still queues it."""
    s, _, _ = upgraded
    dmesh = DmeshRepository(s, s)
    t = T0 + 8 * HOUR
    await dmesh.store_topology(7, t, [ModuleRoute(1002, 0, 1, -65, 3450, 0x0103, 0b001, 0)])
    module = await s.registry_get("modules", 1002)
    assert (module.parent_id, module.hops, module.rssi, module.battery_mv, module.firmware, module.last_seen) == (
        0, 1, -65, 3450, "1.3", t)
    assert [(r["t"], r["parent_id"]) for r in await dmesh.topology_history(1002)] == [(t, 0), (T0 + 2 * HOUR, 1001)]
    (target,) = await ExportRepository(s).state()
    assert target["depth"] == 41
    await dmesh.store_module_events([ModuleEvent(7, 1002, t, 3, 0, t + 1)])
    assert [e["ts"] for e in await dmesh.module_events(1002)] == [t]
