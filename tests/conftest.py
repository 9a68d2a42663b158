"""Shared fixtures: real SQLite files in tmp_path, a real server on a free
port of 127.0.0.1, an HTTP client with tokens of each role."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from balans_edge.config import Config, parse_config
from balans_edge.core.components import Command, CommandOutcome
from balans_edge.core.model import Account, Concentrator, Meter, RadioModule, Resource
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugin_manager import Plugins, config_schemas, load_plugins
from balans_edge.plugins.dmesh.repository import DmeshRepository
from balans_edge.server import Server

TOKENS = {
    "admin": "admin-token-0123456789",
    "operator": "operator-token-0123456789",
    "viewer": "viewer-token-0123456789",
}
T0 = 1390176000  # 2014-01-20 00:00:00 UTC, the protocol document's epoch


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy or the
    timeout passes, and return its last result: the server works in the background."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.02)


async def stored_readings(server: Server) -> dict[str, list[tuple[int, int, int]]]:
    """(ts, counter, status) of every stored reading, by meter id."""
    keys = await server.storage.meter_keys()
    out = {}
    for meter_id, key in sorted(keys.items()):
        r = await server.storage.readings(key, 0, 2**40)
        out[meter_id] = list(zip(r.ts.tolist(), r.counter.tolist(), r.status.tolist(), strict=True))
    return out


def dmesh_repository(server: Server) -> DmeshRepository:
    """The DMesh plugin's tables, through the repository the running plugin uses."""
    return server.plugins.pm.get_plugin("dmesh").repository


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def base_config(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"port": 1, "log_level": "warning", "shutdown_timeout_s": 5.0},
        "storage": {"url": f"sqlite:{tmp_path / 'balans.db'}"},
        "api": {"users": [{"name": f"test-{r}", "role": r, "token": t} for r, t in TOKENS.items()]},
        "ingest": {"clock_tolerance_s": 300, "registry_check_s": 0.0},
    }
    for name, table in sections.items():
        data.setdefault(name, {}).update(table)
    return data


def small_site(install: int = T0 - 86400) -> dict[str, list]:
    """One concentrator, two modules, three water meters and one account."""
    return {
        "concentrators": [Concentrator(7, name="C7")],
        "modules": [RadioModule(1001, 7, channels=0b011), RadioModule(1002, 7, channels=0b100)],
        "accounts": [Account("A-1", consumer="Flat 1")],
        "meters": [
            Meter("W-1", Resource.WATER, "m3", 0.001, install, module_id=1001, channel=1, account_id="A-1"),
            Meter("W-2", Resource.WATER, "m3", 0.001, install, module_id=1001, channel=2, base_reading=12.5),
            Meter("W-3", Resource.WATER, "m3", 0.01, install, module_id=1002, channel=3),
        ],
    }


@dataclass
class Valves:
    """An actuator behind the real actuation service, for the SCADA bridges' tests
    (the DMesh radio path is tested elsewhere): it takes W-V and W-R."""

    name: str = "test-valves"
    delay: float = 0.0
    ok: bool = True
    commands: list[Command] = field(default_factory=list)

    def handles(self, command: Command) -> bool:
        return command.target in ("W-V", "W-R")

    async def execute(self, command: Command) -> CommandOutcome:
        await asyncio.sleep(self.delay)
        self.commands.append(command)
        return CommandOutcome(self.ok, "moved" if self.ok else "jammed")


async def seed_registry(path: Path, objects: dict[str, list[Any]]) -> None:
    """Write a registry into the database at ``path`` before a server opens it (a
    bridge builds its map at start)."""
    storage = SqliteStorage(path)
    await storage.open()
    await storage.registry_apply(objects)
    await storage.close()


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    s = SqliteStorage(tmp_path / "balans.db")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def plugins() -> Plugins:
    return load_plugins()


@pytest.fixture
async def make_server(tmp_path: Path, plugins: Plugins) -> AsyncIterator[Callable[..., Any]]:
    """Start real servers (HTTP on a free port); all are stopped at the end."""
    started: list[Server] = []

    async def make(data: dict[str, Any] | None = None, *, http: bool = True, plugins_: Plugins | None = None) -> Server:
        p = plugins_ or plugins
        config: Config = parse_config(data or base_config(tmp_path), config_schemas(p))
        # Port 0 lets the OS choose a free port (files must name 1..65535).
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, port=0))
        server = Server(config, p)
        await server.start(http=http)
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        if server.started_at is not None:
            await server.stop()


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[Server], httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def make(server: Server) -> httpx.AsyncClient:
        assert server.http is not None
        c = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http.port}", timeout=30)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.aclose()


def peer(name: str, binary: str | None = None) -> str:
    """Path of an independent test peer; skip (or fail with CI=true) when absent.

    `make test` installs the peers when it runs as root (.ci/install-peers)."""
    path = shutil.which(binary or name)
    if path:
        return path
    message = f"{name} is not installed (run `make peers` as root, see docs/testing.md)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)
