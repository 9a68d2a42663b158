"""Migrations per owner: core's sequence, then each plugin's own (MigrationSet),
through storage, the register_migrations hook, the server and the command line."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import balans_edge_example
import pytest

from balans_edge import hookimpl
from balans_edge.core.storage.migrations import LATEST, MigrationError, MigrationSet
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugin_manager import PluginError, Plugins
from balans_edge.plugin_migrations import owned_migrations, plugin_migrations

from conftest import auth, base_config, eventually, small_site

_names = itertools.count()


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Make an importable package with migration files: ``package({"0001_a.sql": sql})``."""
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))

    def make(files: dict[str, str], name: str | None = None, dialect: str = "sqlite") -> str:
        name = name or f"owned_{next(_names)}"
        folder = tmp_path / "pkgs" / name
        (folder / "migrations" / dialect).mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").touch()
        for file, sql in files.items():
            (folder / "migrations" / dialect / file).write_text(sql, encoding="utf-8")
        return name

    return make


NOTES_1 = "CREATE TABLE notes_items (id INTEGER PRIMARY KEY, text TEXT NOT NULL);\n"
NOTES_2 = ("ALTER TABLE notes_items ADD COLUMN author TEXT NOT NULL DEFAULT '';\n"
           "CREATE INDEX notes_author ON notes_items (author);\n")


def rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def tables(path: Path) -> set[str]:
    return {r[0] for r in rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


async def opened(path: Path, *sets: MigrationSet) -> dict[str, int]:
    s = SqliteStorage(path)
    await s.open(migrations=sets)
    try:
        return await s.schema_versions()
    finally:
        await s.close()


# the runner ---------------------------------------------------------------------------------------


async def test_an_owner_gets_its_tables_after_cores(tmp_path: Path, package: Callable[..., str]) -> None:
    notes = MigrationSet("notes", package({"0001_notes.sql": NOTES_1, "0002_author.sql": NOTES_2}))
    path = tmp_path / "edge.db"
    before = int(time.time())
    assert await opened(path, notes) == {"core": LATEST, "notes": 2}
    assert {"notes_items", "owner_migrations", "readings"} <= tables(path)
    applied = rows(path, "SELECT owner, version, name, applied_at FROM owner_migrations ORDER BY version")
    assert [r[:3] for r in applied] == [("notes", 1, "0001_notes.sql"), ("notes", 2, "0002_author.sql")]
    assert all(before <= r[3] <= time.time() for r in applied)
    assert [r[1] for r in rows(path, "PRAGMA table_info(notes_items)")] == ["id", "text", "author"]

    # Opening again applies nothing: same rows, same times.
    assert await opened(path, notes) == {"core": LATEST, "notes": 2}
    assert rows(path, "SELECT owner, version, name, applied_at FROM owner_migrations ORDER BY version") == applied


async def test_a_new_version_of_an_owner_upgrades_and_keeps_its_rows(tmp_path: Path,
                                                                    package: Callable[..., str]) -> None:
    name = package({"0001_notes.sql": NOTES_1})
    path = tmp_path / "edge.db"
    assert await opened(path, MigrationSet("notes", name)) == {"core": LATEST, "notes": 1}
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO notes_items (text) VALUES (?)", [("first",), ("second",)])

    package({"0002_author.sql": NOTES_2}, name=name)  # the plugin's next release
    assert await opened(path, MigrationSet("notes", name)) == {"core": LATEST, "notes": 2}
    assert rows(path, "SELECT id, text, author FROM notes_items ORDER BY id") == [(1, "first", ""), (2, "second", "")]


async def test_owners_without_a_set_keep_their_tables(tmp_path: Path, package: Callable[..., str]) -> None:
    path = tmp_path / "edge.db"
    await opened(path, MigrationSet("notes", package({"0001_notes.sql": NOTES_1})))
    # The plugin is disabled or uninstalled: its tables and version stay as they were.
    assert await opened(path) == {"core": LATEST, "notes": 1}
    assert "notes_items" in tables(path)


async def test_owners_are_applied_in_the_order_given(tmp_path: Path, package: Callable[..., str]) -> None:
    first = MigrationSet("first", package({"0001_a.sql": "CREATE TABLE first_a (x INTEGER);\n"}))
    # The second owner's migration works only if the first's ran before it.
    second = MigrationSet("second", package({"0001_b.sql": "CREATE TABLE second_b AS SELECT * FROM first_a;\n"}))
    assert await opened(tmp_path / "edge.db", first, second) == {"core": LATEST, "first": 1, "second": 1}
    with pytest.raises(MigrationError, match=r"second/0001_b\.sql failed"):
        await opened(tmp_path / "other.db", second, first)


async def test_a_failing_migration_leaves_its_owner_at_the_last_whole_version(
        tmp_path: Path, package: Callable[..., str]) -> None:
    broken = "CREATE TABLE notes_more (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n"
    notes = MigrationSet("notes", package({"0001_notes.sql": NOTES_1, "0002_broken.sql": broken}))
    path = tmp_path / "edge.db"
    with pytest.raises(MigrationError, match=r"notes/0002_broken.sql failed .*no such table"):
        await opened(path, notes)
    assert "notes_items" in tables(path) and "notes_more" not in tables(path)
    assert rows(path, "SELECT owner, version FROM owner_migrations") == [("notes", 1)]


async def test_an_owner_newer_than_the_software_is_refused_naming_it(tmp_path: Path,
                                                                     package: Callable[..., str]) -> None:
    name = package({"0001_notes.sql": NOTES_1, "0002_author.sql": NOTES_2})
    later = MigrationSet("later", package({"0001_later.sql": "CREATE TABLE later_x (x INTEGER);\n"}))
    path = tmp_path / "edge.db"
    await opened(path, MigrationSet("notes", name))
    (tmp_path / "pkgs" / name / "migrations" / "sqlite" / "0002_author.sql").unlink()  # an older plugin

    s = SqliteStorage(path)
    with pytest.raises(MigrationError, match=r"'notes' is at version 2, newer than this software \(1\): "
                                             r"upgrade the plugin that owns 'notes'"):
        await s.open(migrations=[later, MigrationSet("notes", name)])
    assert s._writer is None  # nothing left open
    assert "later_x" not in tables(path)  # refused before anything was applied


@pytest.mark.parametrize(("files", "error"), [
    ({"0001_a.sql": NOTES_1, "0003_c.sql": NOTES_2}, "expected version 2, found 3"),
    ({"0002_a.sql": NOTES_1}, "expected version 1, found 2"),
    ({"0001_a.sql": NOTES_1, "0001_b.sql": NOTES_2}, "expected version 2, found 1"),
    ({"1_a.sql": NOTES_1}, "is not named NNNN_name.sql"),
    ({}, "no sqlite migrations in"),
])
async def test_malformed_sets_are_refused(tmp_path: Path, package: Callable[..., str], files: dict[str, str],
                                          error: str) -> None:
    with pytest.raises(MigrationError, match=error):
        await opened(tmp_path / "edge.db", MigrationSet("notes", package(files)))


async def test_sets_are_checked(tmp_path: Path, package: Callable[..., str]) -> None:
    name = package({"0001_notes.sql": NOTES_1})
    with pytest.raises(MigrationError, match="reserved for core"):
        await opened(tmp_path / "a.db", MigrationSet("core", name))
    with pytest.raises(MigrationError, match="two migration sets of owner 'notes'"):
        await opened(tmp_path / "b.db", MigrationSet("notes", name), MigrationSet("notes", name))
    with pytest.raises(MigrationError, match="cannot read"):
        await opened(tmp_path / "c.db", MigrationSet("notes", "no_such_package_anywhere"))
    with pytest.raises(MigrationError, match="lower-case"):
        MigrationSet("Notes!", name)
    with pytest.raises(MigrationError, match="unknown SQL dialect"):
        MigrationSet("notes", name).scripts("oracle")


async def test_dialects_have_their_own_folders(package: Callable[..., str]) -> None:
    name = package({"0001_notes.sql": NOTES_1})
    package({"0001_notes.sql": "CREATE TABLE notes_items (id BIGSERIAL PRIMARY KEY, text TEXT NOT NULL);\n"},
            name=name, dialect="postgresql")
    notes = MigrationSet("notes", name)
    assert "BIGSERIAL" in notes.scripts("postgresql")[0].sql
    assert "BIGSERIAL" not in notes.scripts("sqlite")[0].sql


async def test_two_processes_opening_at_once_apply_each_version_once(tmp_path: Path,
                                                                     package: Callable[..., str]) -> None:
    notes = MigrationSet("notes", package({"0001_notes.sql": NOTES_1, "0002_author.sql": NOTES_2}))
    path = tmp_path / "edge.db"
    versions = await asyncio.gather(*(opened(path, notes) for _ in range(4)))
    assert versions == [{"core": LATEST, "notes": 2}] * 4
    assert rows(path, "SELECT owner, version FROM owner_migrations ORDER BY version") == [("notes", 1), ("notes", 2)]


# the hook -----------------------------------------------------------------------------------------


class Owner:
    """An in-test plugin contributing migration sets (or failing to)."""

    def __init__(self, result: Any) -> None:
        self.result = result

    @hookimpl
    def register_migrations(self) -> Any:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_bad_contributions_disable_their_plugin_only(plugins: Plugins, package: Callable[..., str]) -> None:
    good = MigrationSet("notes", package({"0001_notes.sql": NOTES_1}))
    plugins.register(Owner([good]), "notes")
    plugins.register(Owner(ValueError("boom")), "raiser")
    plugins.register(Owner(["not a set"]), "confused")
    plugins.register(Owner([MigrationSet("notes", good.package, folder="elsewhere")]), "thief")
    plugins.register(Owner([MigrationSet("notes", "another_package")]), "impostor")
    sets = plugin_migrations(plugins)
    assert [s.owner for s in sets] == ["dmesh", "analytics", "tags", "modbus", "export", "example", "notes"]
    assert {n: plugins.info[n].state for n in ("notes", "raiser", "confused", "thief", "impostor")} == {
        "notes": "loaded", "raiser": "failed", "confused": "failed", "thief": "failed", "impostor": "failed"}
    assert "already plugin notes's" in plugins.info["thief"].error
    assert "already plugin notes's" in plugins.info["impostor"].error


def test_plugins_sharing_tables_contribute_one_set_applied_once(plugins: Plugins, package: Callable[..., str]) -> None:
    """The same set (owner, package, folder) from a second plugin, as the Modbus and OPC UA
    tag polling give theirs, is accepted and applied once, with the first plugin that gives it."""
    shared = MigrationSet("notes", package({"0001_notes.sql": NOTES_1}))
    own = MigrationSet("second_own", shared.package)
    plugins.register(Owner([shared]), "first")
    plugins.register(Owner([MigrationSet("notes", shared.package), own]), "second")
    owned = owned_migrations(plugins)
    assert [(n, s) for n, s in owned if s.owner in ("notes", "second_own")] == [("first", shared), ("second", own)]
    assert {n: plugins.info[n].state for n in ("first", "second")} == {"first": "loaded", "second": "loaded"}
    plugins.disable("first")
    assert [(n, s.owner) for n, s in owned_migrations(plugins) if s.owner == "notes"] == [("second", "notes")]


def test_disabled_and_required_plugins(plugins: Plugins) -> None:
    from balans_edge.config import PluginFlags

    assert "example" not in [s.owner for s in plugin_migrations(plugins, {"example": PluginFlags(enabled=False)})]
    plugins.register(Owner(ValueError("boom")), "raiser")
    with pytest.raises(PluginError, match="required plugin raiser failed"):
        plugin_migrations(plugins, {"raiser": PluginFlags(required=True)})


async def test_hook_register_migrations(tmp_path: Path, make_server: Any, client_for: Any) -> None:
    """The partner plugin brings its own table: created at start-up by its migrations,
    written by its observer, read by its route, all through its own repository."""
    server = await make_server(base_config(tmp_path))
    assert await server.storage.schema_versions() == {
        "core": LATEST, "dmesh": 1, "analytics": 1, "tags": 1, "modbus": 1, "export": 1, "example": 2}
    client = client_for(server)
    await server.storage.registry_apply(small_site())
    now = int(time.time())
    batch = [{"module_id": 1001, "channel": 1, "ts": now - 300, "counter": 100},
             {"module_id": 1001, "channel": 2, "ts": now - 200, "counter": 7}]
    r = await client.post("/api/v1/readings", headers=auth("operator"), json={"readings": batch})
    assert r.status_code == 200

    async def stored() -> Any:
        body = (await client.get("/api/v1/example/batches", headers=auth("viewer"))).json()
        return body if body["recent"] else None  # (totals are read after it: they see it too)

    body = await eventually(stored)
    assert body is not None, "the example plugin stored no batch"
    assert (body["batches"], body["readings"]) == (1, 2)
    (row,) = body["recent"]
    assert (row["readings"], row["meters"], row["t_min"], row["t_max"]) == (2, 2, now - 300, now - 200)
    assert balans_edge_example.STATE["readings"] >= 2
    assert server.plugins.info["example"].errors == 0
    # In its own table, recorded as its own owner's version.
    path = Path(server.config.storage.url.removeprefix("sqlite:"))
    assert rows(path, "SELECT count(*) FROM example_batches") == [(1,)]


def test_commands_apply_plugin_migrations(tmp_path: Path) -> None:
    """A command opening the database first brings the plugins' tables too."""
    import subprocess
    import sys

    config = tmp_path / "edge.toml"
    db = tmp_path / "edge.db"
    config.write_text(f'[storage]\nurl = "sqlite:{db}"\n', encoding="utf-8")
    result = subprocess.run([str(Path(sys.executable).parent / "balans-edge"), "registry", "unknown", "-c",
                             str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert rows(db, "SELECT owner, max(version) FROM owner_migrations GROUP BY owner") == [
        ("analytics", 1), ("dmesh", 1), ("example", 2), ("export", 1), ("modbus", 1), ("tags", 1)]
    assert "example_batches" in tables(db)


def test_commands_and_the_server_refuse_a_newer_database_naming_the_owner(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "edge.toml"
    db = tmp_path / "edge.db"
    config.write_text(f'[storage]\nurl = "sqlite:{db}"\n[server]\nport = 1\n', encoding="utf-8")
    binary = str(Path(sys.executable).parent / "balans-edge")
    assert subprocess.run([binary, "registry", "unknown", "-c", str(config)], timeout=60).returncode == 0
    with sqlite3.connect(db) as conn:  # as a later release of the example plugin would leave it
        conn.execute("INSERT INTO owner_migrations VALUES ('example', 3, '0003_later.sql', 0)")
    refused = "'example' is at version 3, newer than this software (2): upgrade the plugin that owns 'example'"
    result = subprocess.run([binary, "registry", "unknown", "-c", str(config)], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stderr.strip()) == (1, f"Error: database schema of {refused}")
    result = subprocess.run([binary, "run", "-c", str(config), "--port", "0"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert f"start-up failed: database schema of {refused}" in result.stderr
    assert "Traceback" not in result.stderr


# owners' triggers on core's tables ---------------------------------------------------------------


def triggers(path: Path) -> list[str]:
    return sorted(r[0] for r in rows(path, "SELECT name FROM sqlite_master WHERE type = 'trigger'"))


def probe(name: str) -> str:
    """A trigger on core's readings that fills an owner's table, as the export queues are filled."""
    return (f"CREATE TRIGGER {name} AFTER INSERT ON readings BEGIN "
            "INSERT INTO notes_items (text) VALUES ('reading ' || new.meter); END")


def test_an_owners_triggers_are_named_after_it() -> None:
    from balans_edge.core.storage.migrations import trigger_owner

    assert trigger_owner("export__readings_inserted") == "export"
    assert trigger_owner("notes__x__y") == "notes"
    for name in ("groups_inserted", "meters_first_period", "export_readings_inserted", "__x", "notes__", "Up__x"):
        assert trigger_owner(name) is None, name
    with pytest.raises(MigrationError, match="without '__'"):
        MigrationSet("notes__old", "pkg")


async def test_storage_drops_the_triggers_of_owners_that_do_not_run(tmp_path: Path,
                                                                   package: Callable[..., str]) -> None:
    notes = MigrationSet("notes", package({"0001_notes.sql": NOTES_1}))
    path = tmp_path / "edge.db"
    await opened(path, notes)
    core = triggers(path)
    with sqlite3.connect(path) as db:
        for name in ("notes__readings", "gone__readings", "notes_by_hand"):
            db.execute(probe(name))
    s = SqliteStorage(path)
    await s.open(migrations=[notes])
    try:
        assert await s.drop_owner_triggers(["notes"]) == ["gone__readings"]
        assert triggers(path) == sorted([*core, "notes__readings", "notes_by_hand"])
        assert await s.drop_owner_triggers([]) == ["notes__readings"]
        assert await s.drop_owner_triggers([]) == []
        assert triggers(path) == sorted([*core, "notes_by_hand"])  # core's and those named otherwise stay
    finally:
        await s.close()


class FailingOwner:
    """A plugin with its own table and a trigger on core's readings, whose component
    fails to start (or not)."""

    def __init__(self, notes: MigrationSet, fail: bool) -> None:
        self.notes, self.fail = notes, fail
        self.name = "notes-component"

    @hookimpl
    def register_migrations(self) -> list[MigrationSet]:
        return [self.notes]

    @hookimpl
    def register_components(self) -> list[Any]:
        return [self]

    async def start(self) -> None:
        if self.fail:
            raise RuntimeError("cannot start")

    async def stop(self) -> None:
        pass


async def test_the_server_drops_the_triggers_of_plugins_that_do_not_run(
    tmp_path: Path, make_server: Any, package: Callable[..., str]
) -> None:
    """Disabled, not installed or failed at start: the plugin's triggers on core's
    tables go, so nothing fills its tables while nobody reads them; running, they stay."""
    from balans_edge.plugin_manager import load_plugins

    notes = MigrationSet("notes", package({"0001_notes.sql": NOTES_1}))
    path = tmp_path / "balans.db"

    async def run(fail: bool | None, **flags: Any) -> list[str]:
        plugins = load_plugins()
        if fail is not None:
            plugins.register(FailingOwner(notes, fail), "notes")
        server = await make_server(base_config(tmp_path, plugins={"notes": flags} if flags else {}),
                                   plugins_=plugins, http=False)
        try:
            return [t for t in triggers(path) if "__" in t]
        finally:
            await server.stop()

    await run(fail=False)
    with sqlite3.connect(path) as db:
        db.execute(probe("notes__readings"))
    assert await run(fail=False) == ["notes__readings"]
    assert await run(fail=False, enabled=False) == []
    for fail in (None, True):  # not installed; failed at start
        with sqlite3.connect(path) as db:
            db.execute(probe("notes__readings"))
        assert await run(fail=fail) == []
    assert rows(path, "SELECT count(*) FROM notes_items") == [(0,)]
