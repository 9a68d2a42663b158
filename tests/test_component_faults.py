"""A component that fails while running shows in /health: its plugin is
``failed`` with the error and the status ``degraded``, while the rest goes on;
a device that only reconnects is not a fault."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from balans_edge import hookimpl
from balans_edge.core.context import Plugin, PluginContext
from balans_edge.core.tasks import cancel
from balans_edge.plugin_manager import Plugins, load_plugins
from balans_edge.plugins.modbus.regmap import SYSTEM
from balans_edge.plugins.modbus.server import HEALTH_PLUGIN_FAILED, HEALTH_REFRESH_FAILED, ModbusServer
from balans_edge.plugins.opcua.server import OpcuaServer

from conftest import auth, base_config, eventually


class Dying:
    """A loop that ends with an exception when told to."""

    name = "dying-loop"

    def __init__(self, context: PluginContext) -> None:
        self.context = context
        self.go = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = self.context.health.supervise(self, asyncio.create_task(self._run(), name="dying-loop-task"))

    async def _run(self) -> None:
        await self.go.wait()
        raise RuntimeError("the loop broke")

    async def stop(self) -> None:
        await cancel(self.task)


class Flaky:
    """Work that fails for a while, then works again (as a bridge's refresh)."""

    name = "flaky-work"

    def __init__(self, context: PluginContext) -> None:
        self.context = context

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class Contributes(Plugin):
    def __init__(self, make: type) -> None:
        self.make = make
        self.component: Any = None

    @hookimpl
    def register_components(self) -> list[Any]:
        self.component = self.make(self.context)
        return [self.component]


def with_plugins(**extra: Contributes) -> Plugins:
    plugins = load_plugins()
    for name, plugin in extra.items():
        plugins.register(plugin, name)
    return plugins


async def health(client: Any) -> dict[str, Any]:
    r = await client.get("/api/v1/health", headers=auth("viewer"))
    assert r.status_code == 200
    return r.json()


async def test_a_task_that_ends_with_an_exception_fails_its_plugin(tmp_path: Path, make_server: Any,
                                                                  client_for: Any) -> None:
    dying, flaky = Contributes(Dying), Contributes(Flaky)
    plugins = with_plugins(dying=dying, flaky=flaky)
    server = await make_server(base_config(tmp_path), plugins_=plugins)
    client = client_for(server)
    assert (await health(client))["status"] == "ok"

    dying.component.go.set()
    assert await eventually(lambda: plugins.info["dying"].state == "failed")
    body = await health(client)
    assert body["status"] == "degraded"
    assert body["plugins"]["dying"] == "failed" and body["plugins"]["flaky"] == "started"
    assert body["plugins"]["dmesh"] == "started"
    listing = {p["name"]: p for p in (await client.get("/api/v1/plugins", headers=auth("viewer"))).json()["plugins"]}
    assert listing["dying"]["error"].startswith("dying-loop: RuntimeError: the loop broke (at test_component_faults")

    # Stopping cancels what still runs: that is no fault of anyone else.
    await server.stop()
    assert plugins.info["flaky"].state == "started"


async def test_a_reported_fault_lasts_until_the_work_works_again(tmp_path: Path, make_server: Any,
                                                                client_for: Any) -> None:
    flaky = Contributes(Flaky)
    plugins = with_plugins(flaky=flaky)
    server = await make_server(base_config(tmp_path), plugins_=plugins)
    client = client_for(server)

    server.component_fault(flaky.component, OSError("database is locked"))
    body = await health(client)
    assert (body["status"], body["plugins"]["flaky"]) == ("degraded", "failed")
    assert plugins.info["flaky"].error.startswith("flaky-work: OSError: database is locked")
    server.component_fault(flaky.component, None)
    body = await health(client)
    assert (body["status"], body["plugins"]["flaky"]) == ("ok", "started")
    assert plugins.info["flaky"].error is None
    # Another component's report does not touch a plugin it does not belong to.
    server.component_fault(object(), RuntimeError("stranger"))  # type: ignore[arg-type]
    assert (await health(client))["status"] == "ok"


async def test_scada_bridges_whose_refreshes_fail_show_failed_until_they_work(tmp_path: Path, make_server: Any,
                                                                            client_for: Any) -> None:
    """The storage goes away under the running bridges (closed), then comes back."""
    config = base_config(tmp_path, plugins={
        "opcua": {"server": {"enabled": True, "port": 0, "pki_dir": str(tmp_path / "pki")}},
        "modbus": {"server": {"enabled": True, "port": 0}}})
    server = await make_server(config)
    client = client_for(server)
    modbus = next(c for _, c in server.components if isinstance(c, ModbusServer))
    opcua = next(c for _, c in server.components if isinstance(c, OpcuaServer))
    assert (await health(client))["status"] == "ok"

    def health_word() -> int:
        return int(modbus.snapshot.image.registers[modbus.map.system_address + SYSTEM.field("health").offset])

    await server.storage.close()
    try:
        assert await eventually(lambda: server.plugins.info["modbus"].state == "failed"
                                and server.plugins.info["opcua"].state == "failed", 5.0)
        assert modbus.refresh_failed and opcua.refresh_failed
        assert "opcua-server: " in server.plugins.info["opcua"].error
        assert server.plugins.info["dmesh"].state == "started"
        # SCADA reading the system block sees it too (written from memory, every second).
        assert await eventually(lambda: health_word() == HEALTH_PLUGIN_FAILED | HEALTH_REFRESH_FAILED, 5.0)
    finally:
        await server.storage.open()
    assert await eventually(lambda: server.plugins.info["modbus"].state == "started"
                            and server.plugins.info["opcua"].state == "started", 5.0)
    body = await health(client)
    assert body["status"] == "ok" and body["plugins"]["opcua"] == body["plugins"]["modbus"] == "started"
    assert await eventually(lambda: health_word() == 0, 5.0)


async def test_a_plc_that_cannot_be_reached_is_no_fault(tmp_path: Path, make_server: Any, client_for: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    device = {"name": "PS1", "port": port, "timeout_s": 0.2, "retries": 0, "reconnect_min_s": 0.05,
              "reconnect_max_s": 0.1, "tags": [{"name": "level", "address": 0, "interval_s": 0.05}]}
    server = await make_server(base_config(tmp_path, plugins={"modbus": {"devices": [device]}}))
    client = next(c for _, c in server.components if type(c).__name__ == "ModbusClient")
    assert await eventually(lambda: client.pollers and client.snapshot()[0]["quality"] != "good"
                            and client.pollers[0].polls + client.pollers[0].restarts >= 3, 5.0)
    body = await health(client_for(server))
    assert (body["status"], body["plugins"]["modbus"]) == ("ok", "started")
