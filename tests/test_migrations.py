"""Upgrades: core's migrations from empty and from every earlier version with rows in
every table, released migrations never edited, and the hand-over of plugin tables
(core 0016) checked against the owners' first migrations, as the plugins ship them."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from balans_edge_example.batches import MIGRATIONS as EXAMPLE

from balans_edge.core.storage.migrations import LATEST, MigrationSet, available
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.core.storage.sqlite_migrations import migrate, migrate_set
from balans_edge.plugins.common.tag_repository import MIGRATIONS as TAGS
from balans_edge.plugins.dmesh.repository import MIGRATIONS as DMESH
from balans_edge.plugins.export.plugin import MIGRATIONS as EXPORT
from balans_edge.plugins.modbus.repository import MIGRATIONS as MODBUS

T0 = 1_705_276_800  # 2024-01-15 00:00:00 UTC
HERE = Path(__file__).parent
OWNERS = {"dmesh": 13, "modbus": 8, "tags": 8, "export": 10}
"""Owner -> the core version by which all of its handed-over tables had their final shape."""

RELEASED = {
    "0001_registry_readings.sql": "14c95d84b030d9ab3cccec659f8a274d8f4ce9a764bfc49a2ad204d7b0e570ec",
    "0002_intervals.sql": "b51f91c9d63cbbee7cddedd856a3036e07c593242369352a5787358933c0c601",
    "0003_journal.sql": "d23bea9cf3b5db1e6545e2b816cf2599be9e64b7ce82952791c09cea21fc3338",
    "0004_weight_trigger.sql": "a5ecb52c38d4d2441ce46931eafab25a2dee43f900896878f3ce71b89d7f8f30",
    "0005_dmesh.sql": "73c37962562dd2ecd88bf6596f40780359756a861f4ad5e4c20d03e813789e51",
    "0006_groups.sql": "e65e419c699b1197f93996b46b59fd9d3a2b2e481c712acfef6960febc745834",
    "0007_findings.sql": "b8ef39c96f163a85422f694cd1e984e476e8bd8ab13c96caa00c460f29025d0a",
    "0008_bridges_tags.sql": "ef619bf39a109e716e2f137486a09ec2f072584a53d3b97d5799463cc341f2c2",
    "0009_export.sql": "6f2b67700f728259b6dc518e3b449812096bfb993f76d30ecb934d5aeedc0739",
    "0010_export_resend.sql": "bee1e4b181fe4c112538f951288143c8bd925118d945d4cdb7a4dfb08b19922a",
    "0011_meter_periods.sql": "8faa448c25de6480a30134b5a3ee576da23d09c22e737edac3b691f91f7d2f32",
    "0012_module_reports.sql": "612da5104d2c0ace35e3c03bdbd79df67f91b44d212dbefc72a2a5dd8af57725",
    "0013_firmware_versions.sql": "1750820d28170f128cc5fd59c3dfbd51e0ad7e612ffb8e684bc636eb96e1dd81",
    "0014_quarantine_retention.sql": "b28b1a118ee56bd9d82784f5d48267dc443fbd69c41b1666eb4a1e0095b2ae87",
    "0015_finding_events.sql": "2a7c4019c53070dd3dbd191abb2afb2d9b0b739931a0846fba314d2eba1c49de",
}
"""Migrations in released databases (every version 1..15 exists in the field): never edit one, add the next."""

SEEDED = {"registry_state", "quarantine_dropped"}
"""Tables whose rows their migration inserts."""

SAMPLES: dict[str, dict[str, Any]] = {
    "concentrators": {"concentrator_id": 7, "name": "north", "site": "Site A", "description": "roof"},
    "modules": {"module_id": 1001, "concentrator_id": 7, "channels": 3, "parent_id": 0, "hops": 1, "rssi": -70,
                "battery_mv": 3600, "firmware": "1.2", "last_seen": T0},
    "accounts": {"account_id": "A-1", "consumer": "Flat 1", "contact": "+100", "tariff_plan": "basic",
                 "address": "Street 1", "area_m2": 52.5},
    "meters": {"id": 1, "meter_id": "W-1", "resource": "water", "unit": "m3", "pulse_weight": 0.001,
               "install_time": T0 - 86400, "module_id": 1001, "channel": 1, "base_reading": 12.5, "base_counter": 3,
               "account_id": "A-1", "group_id": "house-1", "accuracy_class": "B", "flags": "valve",
               "removed_time": None, "params_from": T0 - 86400},
    "readings": {"meter": 1, "ts": T0, "counter": 1234, "pulses": 1231, "status": 4, "flags": 1},
    "quarantine": {"module_id": 9999, "channel": 1, "ts": T0, "counter": 5, "status": 0, "reason": "unknown_module",
                   "received_at": T0 + 10},
    "interval_dirty": {"id": 50, "meter": 1, "lo": T0, "hi": T0 + 3600},
    "consumption_hourly": {"meter": 1, "t": T0, "value": 0.25, "quality": 0},
    "commands": {"id": 1, "t": T0, "target": "W-1", "code": "valve_close", "requested_by": "operator",
                 "reason": "leak", "outcome": "done", "detail": "closed"},
    "findings": {"id": 1, "t": T0, "detector": "night-flow", "subject": "meter:W-1", "kind": "leak",
                 "severity": "warning", "message": "night flow", "data": '{"group_id": "house-1", "volume_m3": 0.4}',
                 "status": "acknowledged", "group_id": "house-1", "first_seen": T0, "last_seen": T0 + 3600, "seen": 2,
                 "feedback": "[]", "started": T0 - 3600, "ended": T0 + 3600, "rate": 0.1, "volume": 0.4},
    "alarms": {"id": 1, "t": T0, "source": "leak", "severity": "critical", "message": "leak at W-1",
               "data": '{"meter": "W-1"}'},
    "module_events": {"module_id": 1001, "ts": T0, "code": 3, "concentrator_id": 7, "value": 1,
                      "received_at": T0 + 5},
    "topology_snapshots": {"module_id": 1001, "t": T0, "concentrator_id": 7, "parent_id": 0, "hops": 1, "rssi": -70,
                           "battery_mv": 3600, "fw_version": 258, "channels": 3, "state": 0},
    "command_results": {"concentrator_id": 7, "command_id": 41, "result": 0, "status": 0, "received_at": T0},
    "firmware_results": {"concentrator_id": 7, "image_id": 5, "result": 0, "received_at": T0, "target": 2,
                         "version": "1.3"},
    "connection_log": {"id": 1, "concentrator_id": 7, "event": "connect", "t": T0, "peer": "10.0.0.7:40000",
                       "detail": ""},
    "groups": {"group_id": "house-1", "resource": "water", "unit": "m3", "inputs": "W-IN", "name": "House 1",
               "level": "house", "parent_id": None, "loss_norm_pct": 5.0, "price": 1.5,
               "allocation_rule": "consumption", "odn_norm": None, "formula": ""},
    "balance_hourly": {"group_id": "house-1", "t": T0, "input": 1.5, "consumed": 1.4, "measured": 2, "estimated": 0,
                       "missing": 1, "input_measured": 1, "input_estimated": 0, "input_missing": 0},
    "balance_dirty": {"id": 50, "lo": T0, "hi": T0 + 3600},
    "bridge_slots": {"bridge": "modbus:meters", "object_id": "W-1", "slot": 0, "allocated_at": T0},
    "tag_values": {"tag": "plc1/level", "ts": T0, "value": 2.5, "quality": "good"},
    "export_targets": {"id": 1, "name": "influx", "kinds": "readings", "max_queue": 1000, "when_full": "block",
                       "sent": 10, "dropped": 1, "dead": 2, "retries": 3, "last_error": "HTTP 400: bad",
                       "last_error_at": T0, "last_sent_at": T0},
    "export_dead": {"id": 1, "target": 1, "t": T0, "status": 400, "message": "bad", "points": 2,
                    "lines": "readings x=1i", "resend": 1},
    "meter_periods": {"meter": 1, "valid_from": T0 + 7200, "pulse_weight": 0.01, "base_reading": 20.0,
                      "base_counter": 0, "module_id": 1001, "channel": 2, "group_id": "house-1",
                      "anchor_pulses": 1231},
    "registry_audit": {"id": 1, "t": T0, "who": "operator", "action": "update", "kind": "meters",
                       "object_id": "W-1", "before": '{"pulse_weight": 0.001}', "after": '{"pulse_weight": 0.01}',
                       "effective_from": T0 + 7200, "effective_to": None, "reason": "new constant"},
    "module_reports": {"module_id": 1001, "t": T0, "battery_mv": 3600, "rssi": -71, "hops": 1},
    "owner_migrations": {"owner": "someone", "version": 1, "name": "0001_someone.sql", "applied_at": T0},
}
"""One row per table with a value in every column (as of the latest version);
a database at an earlier version gets the columns it has."""


def snapshot(path: Path) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every table's columns and rows (sorted)."""
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        out = {}
        for table in tables:
            columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            rows = db.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            out[table] = (columns, sorted(rows, key=repr))
    return out


def test_released_migrations_are_never_edited() -> None:
    folder = HERE.parent / "core" / "storage" / "migrations" / "sqlite"
    for name, digest in RELEASED.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, f"{name} was edited"
    assert [name for _, name, _ in available()][: len(RELEASED)] == list(RELEASED)


def test_every_table_has_a_sample_row(tmp_path: Path) -> None:
    """So that a new table is covered by the upgrade test below as soon as it exists."""
    path = tmp_path / "latest.db"
    sqlite3.connect(path).close()
    with sqlite3.connect(path) as db:
        for _, _, sql in available():
            db.executescript(sql)
    tables = snapshot(path)
    assert set(tables) == set(SAMPLES) | SEEDED
    for table, sample in SAMPLES.items():
        assert list(sample) == tables[table][0], f"{table}: the sample names every column, in order"


@pytest.mark.parametrize("start", range(LATEST + 1))
async def test_upgrade_from_each_version_keeps_every_row(tmp_path: Path, start: int) -> None:
    """Migrate to ``start``, put a row in every table there is, migrate to the latest
    (with plugins' own migrations on top: a built-in's and a partner's): every row is
    still there, column by column."""
    path = tmp_path / "old.db"
    async with aiosqlite.connect(path, isolation_level=None) as db:
        assert await migrate(db, target=start) == start
    with sqlite3.connect(path) as db:
        for table, (columns, _) in snapshot(path).items():
            if table in SEEDED:
                continue
            row = {c: SAMPLES[table][c] for c in columns}
            db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                       tuple(row.values()))
    before = snapshot(path)
    assert all(rows for table, (_, rows) in before.items() if table not in SEEDED)

    s = SqliteStorage(path)
    await s.open(migrations=[DMESH, TAGS, MODBUS, EXAMPLE])
    try:
        versions = await s.schema_versions()
        assert {o: versions[o] for o in ("core", "dmesh", "tags", "modbus", "example")} == {
            "core": LATEST, "dmesh": 1, "tags": 1, "modbus": 1, "example": 2}
        if start >= 1:
            meter = await s.registry_get("meters", "W-1")
            assert (meter.pulse_weight, meter.base_reading, meter.flags) == (0.001, 12.5, frozenset({"valve"}))
            r = await s.readings(1, 0, 2**40)
            assert (r.ts.tolist(), r.counter.tolist(), r.pulses.tolist()) == ([T0], [1234], [1231])
    finally:
        await s.close()

    after = snapshot(path)
    for table, (columns, rows) in before.items():
        now_columns, now_rows = after[table]
        assert now_columns[: len(columns)] == columns, f"{table}: columns moved"
        kept = sorted((r[: len(columns)] for r in now_rows), key=repr)
        if table == "owner_migrations":  # the plugins' own migrations were recorded besides
            kept = [r for r in kept if r[0] not in (DMESH.owner, TAGS.owner, MODBUS.owner, EXAMPLE.owner)]
        assert kept == rows, f"{table}: rows changed by the upgrade from version {start}"


# the hand-over (core 0016) --------------------------------------------------------------------------


SHIPPED = {"dmesh": DMESH, "tags": TAGS, "modbus": MODBUS, "export": EXPORT}
"""Every owner's migrations, in the plugin's folder (the tag polling's in ``plugins/common``, which
both protocol plugins contribute): checked as the plugin ships them."""


def handover(owner: str) -> MigrationSet:
    """The owner's migrations, as its plugin ships them."""
    return SHIPPED[owner]


def shape(path: Path, tables: list[str]) -> dict[str, Any]:
    """What makes a table what it is: columns, keys, checks, indexes (not comments or layout)."""
    out: dict[str, Any] = {}
    with sqlite3.connect(path) as db:
        for table in tables:
            (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
            bare = re.sub(r"\s+", " ", re.sub(r"--[^\n]*", "", sql))
            out[table] = {
                "columns": db.execute(f"PRAGMA table_xinfo({table})").fetchall(),
                "foreign_keys": db.execute(f"PRAGMA foreign_key_list({table})").fetchall(),
                "checks": sorted(re.findall(r"CHECK \([^()]*(?:\([^()]*\)[^()]*)*\)", bare)),
                "unique": sorted(re.findall(r"UNIQUE \([^)]*\)", bare)),
                "without_rowid": bare.rstrip().endswith("WITHOUT ROWID"),
                "indexes": sorted(re.sub(r"\s+", " ", r[0].replace("IF NOT EXISTS ", "")) for r in db.execute(
                    "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                    (table,))),
                "auto_indexes": len(db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NULL",
                    (table,)).fetchall()),
            }
    return out


def created_by(owner: str) -> list[str]:
    sql = handover(owner).scripts("sqlite")[0].sql
    return re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", sql)


@pytest.mark.parametrize("owner", OWNERS)
async def test_an_owners_first_migration_creates_what_core_did(tmp_path: Path, owner: str) -> None:
    """On a database without core's history (as a new backend is) the skeleton is the real
    creation: the same columns, keys, checks and indexes as core's migrations made."""
    core = tmp_path / "core.db"
    async with aiosqlite.connect(core, isolation_level=None) as db:
        await migrate(db)
    bare = tmp_path / "bare.db"
    async with aiosqlite.connect(bare, isolation_level=None) as db:
        # A database with owners (0016) but none of core's history: no table core ever made for a plugin.
        (owners,) = [sql for version, _, sql in available() if version == 16]
        await db.executescript(owners)
        await db.execute(f"PRAGMA user_version = {LATEST}")
        assert await migrate_set(db, handover(owner)) == 1
    tables = created_by(owner)
    assert tables
    assert shape(bare, tables) == shape(core, tables)


@pytest.mark.parametrize("start", [*OWNERS.values(), 15, LATEST])
async def test_an_owners_first_migration_changes_nothing_on_sqlite(tmp_path: Path, start: int) -> None:
    """On every SQLite database that had the tables, the owners' first migrations are
    no-ops: the schema after them is the one core's migrations made."""
    path = tmp_path / "edge.db"
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await migrate(db, target=start)
    s = SqliteStorage(path)
    await s.open()
    await s.close()
    with sqlite3.connect(path) as db:
        schema = sorted(db.execute("SELECT type, name, sql FROM sqlite_master").fetchall())
    s = SqliteStorage(path)
    await s.open(migrations=[handover(o) for o in OWNERS])
    try:
        assert await s.schema_versions() == {"core": LATEST, **dict.fromkeys(OWNERS, 1)}
    finally:
        await s.close()
    with sqlite3.connect(path) as db:
        assert sorted(db.execute("SELECT type, name, sql FROM sqlite_master").fetchall()) == schema


def test_the_plugins_take_over_their_tables_and_module_reports_stays_cores() -> None:
    assert set(SHIPPED) == set(OWNERS)
    assert {o: s.package for o, s in SHIPPED.items()} == {
        "dmesh": "balans_edge.plugins.dmesh", "tags": "balans_edge.plugins.common",
        "modbus": "balans_edge.plugins.modbus", "export": "balans_edge.plugins.export"}
    assert not (HERE / "fixtures" / "handover").exists(), "every skeleton moved into its plugin"
    assert sorted(created_by("dmesh")) == ["command_results", "connection_log", "firmware_results", "module_events",
                                           "topology_snapshots"]
    assert created_by("tags") == ["tag_values"]
    assert created_by("modbus") == ["bridge_slots"]
    core = " ".join(sql for _, _, sql in available())
    assert "CREATE TABLE module_reports" in core
    assert not any("module_reports" in created_by(owner) for owner in OWNERS)
