"""The storage interfaces: small core repositories composed in Storage, plugins'
repositories in their folders on the SQL gateway, all written for a second backend."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from balans_edge.core.storage import base
from balans_edge.core.storage.base import CORE_REPOSITORIES, Storage, StorageLifecycle
from balans_edge.core.storage.gateway import SqlGateway
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugins.common import tag_repository
from balans_edge.plugins.dmesh import repository as dmesh
from balans_edge.plugins.export import repository as export
from balans_edge.plugins.modbus import repository as modbus

PLUGIN_REPOSITORIES = {"dmesh": dmesh.DmeshRepository, "tags": tag_repository.TagRepository,
                       "modbus": modbus.BridgeSlotRepository, "export": export.ExportRepository}
"""The owners of the tables core handed over (core 0016) -> the repository its plugin serves them by."""

STORAGE = Path(base.__file__).parent
INTERFACE_MODULES = sorted([*STORAGE.glob("*_repository.py"), STORAGE / "base.py", STORAGE / "gateway.py",
                            STORAGE / "migrations.py", STORAGE / "errors.py"])


def abstract(cls: type) -> set[str]:
    return set(cls.__abstractmethods__)


def test_storage_is_the_composition_of_the_core_repositories() -> None:
    composed = set().union(*(abstract(r) for r in CORE_REPOSITORIES), abstract(StorageLifecycle))
    assert abstract(Storage) == composed
    for repository in CORE_REPOSITORIES:
        assert issubclass(Storage, repository)


@pytest.mark.parametrize("owner", PLUGIN_REPOSITORIES)
def test_plugin_repositories_are_not_cores(owner: str) -> None:
    """The tables core handed over are served by their plugin's repository on the SQL gateway;
    core declares and implements none of their methods."""
    repository = PLUGIN_REPOSITORIES[owner]
    assert not issubclass(SqliteStorage, repository)
    methods = {n for n, _ in inspect.getmembers(repository, inspect.isfunction) if not n.startswith("_")}
    assert methods
    assert not methods & set(dir(SqliteStorage)) - set(dir(SqlGateway)), "a plugin's method is served by core"
    module = inspect.getmodule(repository)
    assert f"owner ``{owner}``" in module.__doc__.lower()
    assert "sqlite" in (getattr(module, "SQL", None) or module.DIALECTS), "its SQL, per dialect, in one place"
    assert "SqlGateway" in inspect.signature(repository.__init__).parameters["database"].annotation


def test_sqlite_implements_core_and_the_gateway() -> None:
    assert not abstract(SqliteStorage)
    for interface in (Storage, SqlGateway):
        assert issubclass(SqliteStorage, interface)
    assert SqliteStorage.dialect == "sqlite"
    assert not {"store_tag_values", "tag_values", "latest_tag_values", "bridge_slots",
                "allocate_bridge_slots"} & set(dir(SqliteStorage))


@pytest.mark.parametrize("repository", [*CORE_REPOSITORIES, StorageLifecycle, SqlGateway],
                         ids=lambda r: r.__name__)
def test_every_method_says_what_it_does(repository: type) -> None:
    assert repository.__doc__ and inspect.getmodule(repository).__doc__
    for name in abstract(repository):
        doc = getattr(repository, name).__doc__
        assert doc and len(doc.strip()) > 15, f"{repository.__name__}.{name} has no docstring"


@pytest.mark.parametrize("path", INTERFACE_MODULES, ids=lambda p: p.name)
def test_interfaces_know_no_backend(path: Path) -> None:
    """A second backend implements these: they import no driver and name no SQLite."""
    tree = ast.parse(path.read_text("utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {node.module.rsplit(".", 1)[-1] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module and node.module.startswith("balans_edge.core.storage.")}
    assert not imported & {"sqlite3", "aiosqlite", "asyncpg", "psycopg"}
    assert not {m for m in imported if m.startswith("sqlite_")}, "an interface imports a backend module"
    annotations = [ast.unparse(a) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                   for a in [n.returns, *(arg.annotation for arg in (*n.args.args, *n.args.kwonlyargs))] if a]
    words = {w for a in annotations for w in re.findall(r"\w+", a)}
    assert not words & {"sqlite3", "aiosqlite", "Connection", "Cursor", "Row", "asyncpg", "psycopg"}
