"""What a plugin's context offers of core's data: read-only views, registry
change notifications on the bus, and registry edits audited in the plugin's name."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from balans_edge.core.bus import RegistryChanged
from balans_edge.core.context import PluginContext
from balans_edge.core.model import Account
from balans_edge.core.storage import Queries, RegistryReader, SqlGateway, Storage, view_of
from balans_edge.core.storage.registry_repository import AuditQuery, RegistryRepository

from conftest import auth, base_config

MakeServer = Callable[..., Any]

WRITES = {name for name in Storage.__abstractmethods__ if name not in Queries.__abstractmethods__} - {
    "open", "close", "flush", "schema_version", "schema_versions", "drop_owner_triggers"}


def context_of(server: Any, name: str = "dmesh") -> PluginContext:
    return server.plugins.pm.get_plugin(name).context


def test_every_core_write_is_kept_out_of_the_queries() -> None:
    # Writes of every repository, as a backend implements them: none is a read.
    assert {"registry_apply", "correct_meter", "refresh_anchors", "commit_ingest", "update_module_links",
            "save_intervals", "take_dirty", "save_balance", "take_balance_dirty", "record_finding",
            "set_finding_status", "command_append", "command_update", "settle_pending_commands",
            "journal_append", "journal_update", "prune_quarantine"} == WRITES


async def test_views_have_the_reads_and_nothing_else(tmp_path: Path, make_server: MakeServer) -> None:
    server = await make_server(base_config(tmp_path), http=False)
    context = context_of(server)
    assert isinstance(context.queries, Queries) and isinstance(context.registry, RegistryReader)
    for write in WRITES:
        assert not hasattr(context.queries, write), write
        assert not hasattr(context.registry, write), write
        assert not hasattr(context.database, write), write
    assert not hasattr(context.registry, "readings")  # the registry view is only the registry
    assert not hasattr(context.database, "registry_list")  # the gateway is only the plugin's SQL
    assert isinstance(context.database, SqlGateway) and context.database.dialect == "sqlite"
    assert not hasattr(context, "storage")

    # The views read the same data as the backend.
    await server.storage.registry_apply({"accounts": [Account("Л-1", "Иванов")]})
    assert await context.registry.registry_get("accounts", "Л-1") == Account("Л-1", "Иванов")
    assert await context.queries.registry_version() == await server.storage.registry_version()
    rows = await context.database.sql_read("SELECT consumer FROM accounts WHERE account_id = ?", ("Л-1",))
    assert rows == [{"consumer": "Иванов"}]


def test_a_view_forwards_what_its_interface_declares() -> None:
    class Backend(RegistryRepository):
        def __init__(self) -> None:
            self.calls: list[tuple[str, tuple[Any, ...]]] = []

        def __getattribute__(self, name: str) -> Any:
            if name in RegistryRepository.__abstractmethods__:
                async def record(*args: Any, **kwargs: Any) -> str:
                    self.calls.append((name, args))
                    return name
                return record
            return object.__getattribute__(self, name)

    Backend.__abstractmethods__ = frozenset()
    backend = Backend()
    view = view_of(RegistryReader, backend)
    assert asyncio.run(view.registry_get("meters", "Кв-1")) == "registry_get"
    assert backend.calls == [("registry_get", ("meters", "Кв-1"))]
    with pytest.raises(AttributeError):
        view.registry_apply  # noqa: B018 - the write is not on the view
    assert type(view) is type(view_of(RegistryReader, backend))  # one view class per interface


async def test_registry_changes_are_announced_on_the_bus(tmp_path: Path, make_server: MakeServer,
                                                         client_for: Callable[[Any], Any]) -> None:
    server = await make_server(base_config(tmp_path))
    sub = context_of(server).bus.subscribe(RegistryChanged, name="test")
    http = client_for(server)
    created = await http.post("/api/v1/accounts", json={"account_id": "Л-2", "consumer": "Петров"},
                              headers=auth("admin"))
    assert created.status_code == 201, created.text
    assert isinstance(await asyncio.wait_for(sub.get(), 5), RegistryChanged)

    # A write of nothing announces nothing.
    await server.storage.registry_apply({})
    await asyncio.sleep(0.05)
    assert sub.queue.empty()


async def test_registry_edits_of_a_plugin_are_audited_in_its_name(tmp_path: Path, make_server: MakeServer) -> None:
    server = await make_server(base_config(tmp_path), http=False)
    context = context_of(server)
    before = await server.storage.registry_version()
    await context.registry_editor.apply({"accounts": [Account("Л-3", "Сидоров")]}, reason="test")
    assert await server.storage.registry_version() > before
    audit = await context.registry.registry_audit(AuditQuery(kind="accounts", object_id="Л-3"))
    assert [(a["who"], a["reason"], a["action"]) for a in audit] == [("plugin:dmesh", "test", "create")]
