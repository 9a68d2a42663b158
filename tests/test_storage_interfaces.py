"""The storage interfaces: small core repositories composed in Storage, plugin-owned
ones apart, all written for a second backend."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from balans_edge.core.storage import base
from balans_edge.core.storage.base import CORE_REPOSITORIES, PLUGIN_REPOSITORIES, Storage, StorageLifecycle
from balans_edge.core.storage.gateway import SqlGateway
from balans_edge.core.storage.sqlite import SqliteStorage

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


@pytest.mark.parametrize("repository", PLUGIN_REPOSITORIES, ids=lambda r: r.__name__)
def test_plugin_repositories_are_not_cores(repository: type) -> None:
    assert not issubclass(Storage, repository)
    assert not abstract(repository) & abstract(Storage), "a plugin's method is declared by core"
    assert not {n for n, _ in inspect.getmembers(repository, inspect.isfunction)} & set(dir(Storage)) - set(
        dir(object))
    assert repository.OWNER in ("dmesh", "modbus", "tags", "export")
    assert f"owner ``{repository.OWNER}``" in inspect.getmodule(repository).__doc__


def test_sqlite_implements_core_the_handed_over_interfaces_and_the_gateway() -> None:
    assert not abstract(SqliteStorage)
    for interface in (Storage, SqlGateway, *PLUGIN_REPOSITORIES):
        assert issubclass(SqliteStorage, interface)
    assert SqliteStorage.dialect == "sqlite"


@pytest.mark.parametrize("repository", [*CORE_REPOSITORIES, *PLUGIN_REPOSITORIES, StorageLifecycle, SqlGateway],
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
