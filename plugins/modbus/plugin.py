"""The Modbus plugin: a Modbus TCP server for SCADA (``server.py``, the map
in ``regmap.py``), and the command that writes the map document; a client
polling PLCs (``client.py``, tags in ``tags.py``) and the valves, pumps and
relays they drive (``actuators.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from balans_edge import hookimpl
from balans_edge.plugins.common.client_config import ClientSection
from balans_edge.plugins.modbus.actuators import ActuatorConfig, ModbusActuator
from balans_edge.plugins.modbus.client import ModbusClient
from balans_edge.plugins.modbus.server import ModbusServer, ServerConfig
from balans_edge.plugins.modbus.tags import DeviceConfig, check_devices

if TYPE_CHECKING:
    import click

    from balans_edge.core.components import Alarm, Command
    from balans_edge.server import Server

NAME = "modbus"


@dataclass(frozen=True)
class ModbusConfig(ClientSection):
    server: ServerConfig = field(default_factory=ServerConfig)
    devices: list[DeviceConfig] = field(default_factory=list)
    """PLCs polled as a Modbus client (``[[plugins.modbus.devices]]``)."""
    actuators: list[ActuatorConfig] = field(default_factory=list)
    """Valves, pumps and relays driven through those devices (``[[plugins.modbus.actuators]]``)."""

    def device_problems(self) -> list[str]:
        return check_devices(self.devices)


@hookimpl
def config_schema() -> dict[str, type]:
    return {NAME: ModbusConfig}


@hookimpl
def register_components(server: Server) -> list:
    config: ModbusConfig = server.plugin_config(NAME)
    components: list = []
    if config.server.enabled:
        components.append(ModbusServer(server, config.server))
    if config.devices:
        components.append(ModbusClient(server, config.devices))
    return components


def modbus_client(server: Server) -> ModbusClient | None:
    """The PLC polling component, if devices are configured."""
    return next((c for _, c in server.components if isinstance(c, ModbusClient)), None)


@hookimpl
def register_actuators(server: Server) -> list:
    config: ModbusConfig = server.plugin_config(NAME)
    client = modbus_client(server)
    return [ModbusActuator(client, config.actuators)] if client is not None and config.actuators else []


def modbus_actuator(server: Server) -> ModbusActuator | None:
    return next((a for a in server.actuation.actuators if isinstance(a, ModbusActuator)), None)


@hookimpl
def register_routes(server: Server) -> list:
    from balans_edge.plugins.modbus.client_api import routes

    return routes(server, lambda: modbus_client(server), lambda: modbus_actuator(server))


def modbus_server(server: Server) -> ModbusServer | None:
    """The running Modbus server component, if the configuration enables it."""
    return next((c for _, c in server.components if isinstance(c, ModbusServer)), None)


@hookimpl
def observe_commands(server: Server, command: Command) -> None:
    """A valve or relay command done (from any source): its coil reads the new state."""
    component = modbus_server(server)
    if component is not None:
        component.on_command(command)


@hookimpl
async def observe_alarms(server: Server, alarm: Alarm) -> None:
    component = modbus_server(server)
    if component is not None:
        await component.on_alarm(alarm)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from balans_edge.cli import command_group
    from balans_edge.plugins.modbus.client_cli import add_commands as add_client_commands
    from balans_edge.plugins.modbus.map_cli import add_commands

    group = command_group(cli, "modbus", "Modbus: the register map for SCADA, PLC tags.")
    add_commands(group)
    add_client_commands(group)
