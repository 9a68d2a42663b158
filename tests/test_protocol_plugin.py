"""The protocol plugin object both Modbus and OPC UA are (plugins/common/protocol_plugin.py):
its parts are made only when configured, from the plugin's own package, and its
observers reach the server part."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from balans_edge.core.components import Command, CommandCode
from balans_edge.plugins.common.protocol_plugin import ProtocolPlugin
from balans_edge.plugins.modbus.plugin import ModbusPlugin
from balans_edge.plugins.opcua.plugin import OpcuaPlugin


def test_a_part_from_another_package_is_refused() -> None:
    with pytest.raises(TypeError, match="not in the plugin's package"):
        class Borrowing(ProtocolPlugin):  # defining it is the test
            server_part = "balans_edge.plugins.modbus.server:ModbusServer"
            client_part = "tests.test_protocol_plugin:Client"
            actuator_part = "tests.test_protocol_plugin:Actuator"


def test_unconfigured_opcua_plugin_imports_no_asyncua() -> None:
    """asyncua takes most of a second to import: a plugin with nothing configured never imports it."""
    code = ("import sys; from balans_edge.plugins.opcua.plugin import OpcuaPlugin, OpcuaConfig;"
            "from types import SimpleNamespace as N; p = OpcuaPlugin();"
            "p.bind(N(config=OpcuaConfig(), database=N(dialect='sqlite')));"
            "assert (p.server, p.client, p.actuator) == (None, None, None);"
            "print('asyncua' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


class Bridge:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def on_command(self, command: Command) -> None:
        self.seen.append(command)

    async def on_alarm(self, alarm: Any) -> None:
        self.seen.append(alarm)


@pytest.mark.parametrize("plugin_type", [ModbusPlugin, OpcuaPlugin])
async def test_observers_reach_the_server_part_and_nothing_without_one(plugin_type: type[ProtocolPlugin]) -> None:
    plugin = plugin_type()
    command = Command("M-1", CommandCode.VALVE_CLOSE, "api:op", "leak", outcome="done")
    await plugin.observe_commands(command)  # no server configured: nothing to tell
    plugin.server = bridge = Bridge()  # type: ignore[assignment]
    await plugin.observe_commands(command)
    await plugin.observe_alarms("alarm")  # type: ignore[arg-type]
    assert bridge.seen == [command, "alarm"]
    assert plugin.config_schema() == {plugin.section: plugin.config_type}
