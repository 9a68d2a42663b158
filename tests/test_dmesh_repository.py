"""The DMesh plugin's repository on the storage's SQL gateway: what it stores reads
back (filters, order, limits, times), repeats behave as the protocol needs, a
TOPOLOGY reaches core's module rows through core, and its SQL touches only the
tables its own migrations create."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from balans_edge.core.model import Concentrator, RadioModule
from balans_edge.core.storage import StorageError
from balans_edge.core.storage.gateway import SqlGateway, Write
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugins.dmesh.repository import (
    MIGRATIONS,
    SQL,
    ConnectionEvent,
    DmeshRepository,
    ModuleEvent,
    ModuleRoute,
)

T0 = 1_705_276_800
CID = 7
OWN_TABLES = {"module_events", "topology_snapshots", "command_results", "firmware_results", "connection_log"}


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    s = SqliteStorage(tmp_path / "edge.db")
    await s.open(migrations=[MIGRATIONS])
    await s.registry_apply({"concentrators": [Concentrator(CID)],
                            "modules": [RadioModule(1001, CID, channels=1), RadioModule(1002, CID, channels=1)]})
    yield s
    await s.close()


@pytest.fixture
def dmesh(storage: SqliteStorage) -> DmeshRepository:
    return DmeshRepository(storage, storage)


def route(module_id: int, parent: int = 0, battery: int = 3600, state: int = 0) -> ModuleRoute:
    return ModuleRoute(module_id, parent, 1 if parent == 0 else 2, -70, battery, 0x0104, 0b001, state)


async def test_the_plugins_migration_is_recorded_under_its_owner(storage: SqliteStorage) -> None:
    assert (await storage.schema_versions())["dmesh"] == 1


async def test_events_are_stored_once_and_read_newest_first(dmesh: DmeshRepository) -> None:
    await dmesh.store_module_events([ModuleEvent(CID, 1001, T0, 3, 1, T0 + 5),
                                     ModuleEvent(CID, 1002, T0, 4, 0, T0 + 6)])
    # A retransmitted EVENT (same module, ts, code) keeps the stored one.
    await dmesh.store_module_events([ModuleEvent(CID, 1001, T0, 3, 9, T0 + 50)])
    await dmesh.store_module_events([])
    assert [(e["module_id"], e["value"], e["received_at"]) for e in await dmesh.module_events()] == [
        (1002, 0, T0 + 6), (1001, 1, T0 + 5)]
    (event,) = await dmesh.module_events(1001)
    assert event == {"module_id": 1001, "ts": T0, "code": 3, "concentrator_id": CID, "value": 1, "received_at": T0 + 5}
    assert len(await dmesh.module_events(limit=1)) == 1


async def test_topology_updates_registered_modules_through_core_and_keeps_the_history(
    storage: SqliteStorage, dmesh: DmeshRepository
) -> None:
    await dmesh.store_topology(CID, T0, [route(1001, battery=3500), route(1002, parent=1001), route(1099)])
    await dmesh.store_topology(CID, T0 + 3600, [route(1001, battery=3400), route(1002, parent=1001, state=1)])
    module = await storage.registry_get("modules", 1001)
    assert (module.parent_id, module.hops, module.battery_mv, module.firmware, module.last_seen) == (
        0, 1, 3400, "1.4", T0 + 3600)
    assert await storage.registry_get("modules", 1099) is None, "an unregistered module is not created"
    # An older report moves no module's last seen back.
    await dmesh.store_topology(CID, T0 - 3600, [route(1001, battery=3600)])
    assert (await storage.registry_get("modules", 1001)).last_seen == T0 + 3600

    assert [(r["t"], r["battery_mv"]) for r in await dmesh.topology_history(1001)] == [
        (T0 + 3600, 3400), (T0, 3500), (T0 - 3600, 3600)]
    assert [(r["t"], r["battery_mv"]) for r in await dmesh.topology_history(1001, before=T0)] == [
        (T0, 3500), (T0 - 3600, 3600)]
    assert [r["module_id"] for r in await dmesh.topology_history(limit=3)] == [1001, 1002, 1001]
    latest = {r["module_id"]: (r["t"], r["state"], r["online_t"]) for r in await dmesh.latest_topology()}
    assert latest == {1001: (T0 + 3600, 0, T0 + 3600), 1002: (T0 + 3600, 1, T0), 1099: (T0, 0, T0)}
    past = {r["module_id"]: (r["t"], r["online_t"]) for r in await dmesh.latest_topology(before=T0 - 1)}
    assert past == {1001: (T0 - 3600, T0 - 3600)}


async def test_results_replace_and_firmware_keeps_what_it_knew(dmesh: DmeshRepository) -> None:
    await dmesh.store_command_result(CID, 41, 1, 0, T0)
    await dmesh.store_command_result(CID, 41, 0, 0, T0 + 10)
    await dmesh.store_command_result(CID, 42, 0, 0, T0 + 5)
    assert [(r["command_id"], r["result"]) for r in await dmesh.command_results()] == [(41, 0), (42, 0)]
    await dmesh.store_firmware_result(CID, 5, 1, T0, target=2, version="1.3")
    await dmesh.store_firmware_result(CID, 5, 0, T0 + 10)  # a repeated report without target and version
    await dmesh.store_firmware_result(8, 6, 0, T0 + 20, target=1, version="2.0")
    assert [(r["concentrator_id"], r["image_id"]) for r in await dmesh.firmware_results()] == [(8, 6), (CID, 5)]
    (fw,) = await dmesh.firmware_results(concentrator_id=CID)
    assert (fw["result"], fw["received_at"], fw["target"], fw["version"]) == (0, T0 + 10, 2, "1.3")


async def test_connection_log_filters_and_refuses_unknown_events(dmesh: DmeshRepository) -> None:
    for i, event in enumerate(("connect", "disconnect", "auth_failed", "replaced")):
        await dmesh.log_connection(ConnectionEvent(CID if i < 3 else 8, event, T0 + i, f"10.0.0.7:{i}", "why"))
    with pytest.raises(ValueError, match="unknown connection event"):
        await dmesh.log_connection(ConnectionEvent(CID, "hello", T0))
    assert [r["event"] for r in await dmesh.connection_log()] == ["replaced", "auth_failed", "disconnect", "connect"]
    assert [r["event"] for r in await dmesh.connection_log(CID, before=T0 + 1)] == ["disconnect", "connect"]
    (first,) = await dmesh.connection_log(CID, limit=1)
    assert {k: first[k] for k in ("concentrator_id", "event", "t", "peer", "detail")} == {
        "concentrator_id": CID, "event": "auth_failed", "t": T0 + 2, "peer": "10.0.0.7:2", "detail": "why"}


class FailingOnce(SqlGateway):
    """The storage's gateway, refusing the first write (as a full disk would)."""

    dialect = "sqlite"

    def __init__(self, storage: SqliteStorage) -> None:
        self.storage = storage
        self.fail = True

    async def sql_write(self, statements: Sequence[Write]) -> None:
        if self.fail:
            self.fail = False
            raise StorageError("write failed: disk full")
        await self.storage.sql_write(statements)

    async def sql_read(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return await self.storage.sql_read(sql, args)


class ModulesFailingOnce:
    """Core's module state, refusing the first update."""

    def __init__(self, storage: SqliteStorage) -> None:
        self.storage = storage
        self.fail = True

    async def update_module_links(self, t: int, links: Any) -> None:
        if self.fail:
            self.fail = False
            raise StorageError("write failed: disk full")
        await self.storage.update_module_links(t, links)


@pytest.mark.parametrize("refusing", ["plugin's table", "core's module rows"])
async def test_a_topology_refused_halfway_is_stored_once_when_sent_again(storage: SqliteStorage,
                                                                         refusing: str) -> None:
    """The session answers ACK RETRY to a refused frame and the concentrator sends it
    again: the route history holds it once, the registry has it."""
    if refusing == "plugin's table":
        dmesh = DmeshRepository(FailingOnce(storage), storage)
    else:
        dmesh = DmeshRepository(storage, ModulesFailingOnce(storage))  # type: ignore[arg-type]
    with pytest.raises(StorageError):
        await dmesh.store_topology(CID, T0, [route(1001, battery=3300)])
    await dmesh.store_topology(CID, T0 + 1, [route(1001, battery=3300)])
    assert [r["t"] for r in await dmesh.topology_history(1001)] == [T0 + 1]
    module = await storage.registry_get("modules", 1001)
    assert (module.battery_mv, module.last_seen) == (3300, T0 + 1)


def test_every_dialect_names_the_same_statements_and_only_the_plugins_tables() -> None:
    names = {dialect: set(statements) for dialect, statements in SQL.items()}
    assert all(n == names["sqlite"] for n in names.values())
    created = set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", MIGRATIONS.scripts("sqlite")[0].sql))
    assert created == OWN_TABLES
    for dialect, statements in SQL.items():
        for name, sql in statements.items():
            tables = set(re.findall(r"\b(?:FROM|INTO|JOIN|(?<!DO )UPDATE)\s+(\w+)", sql))
            assert tables and tables <= OWN_TABLES, f"{dialect} {name} touches {tables - OWN_TABLES}"


async def test_a_dialect_without_sql_is_refused(storage: SqliteStorage) -> None:
    class Other(FailingOnce):
        dialect = "postgresql"

    with pytest.raises(RuntimeError, match="no SQL for the postgresql dialect"):
        DmeshRepository(Other(storage), storage)
