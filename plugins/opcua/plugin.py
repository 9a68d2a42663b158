"""The OPC UA plugin: an OPC UA server for SCADA and MES (``server.py``; the
address space in ``model.py``, its security in ``security.py`` and
``pki.py``), and an OPC UA client for pumping stations
(``[[plugins.opcua.devices]]``, ``client.py``) next to ``[plugins.opcua.server]``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from balans_edge import hookimpl
from balans_edge.plugins.common.client_config import ClientSection
from balans_edge.plugins.opcua.client_config import ActuatorConfig, DeviceConfig
from balans_edge.plugins.opcua.config import ServerConfig

if TYPE_CHECKING:
    import click

    from balans_edge.core.components import Alarm, Command
    from balans_edge.plugins.opcua.actuators import OpcuaActuator
    from balans_edge.plugins.opcua.client import OpcuaClient
    from balans_edge.plugins.opcua.server import OpcuaServer
    from balans_edge.server import Server

NAME = "opcua"


@dataclass(frozen=True)
class OpcuaConfig(ClientSection):
    server: ServerConfig = field(default_factory=ServerConfig)
    devices: list[DeviceConfig] = field(default_factory=list)
    """Pumping-station servers read as a client (``[[plugins.opcua.devices]]``)."""
    actuators: list[ActuatorConfig] = field(default_factory=list)
    """Valves, pumps and relays driven through those servers (``[[plugins.opcua.actuators]]``)."""


@hookimpl
def config_schema() -> dict[str, type]:
    return {NAME: OpcuaConfig}


@hookimpl
def register_components(server: Server) -> list[Any]:
    config: OpcuaConfig = server.plugin_config(NAME)
    components: list[Any] = []
    if config.server.enabled:
        # Imported here: asyncua takes most of a second to import, and only a running server needs it.
        from balans_edge.plugins.opcua.server import OpcuaServer

        components.append(OpcuaServer(server, config.server))
    if config.devices:
        from balans_edge.plugins.opcua.client import OpcuaClient

        components.append(OpcuaClient(server, config.devices))
    return components


def opcua_server(server: Server) -> OpcuaServer | None:
    """The running OPC UA server component, if the configuration enables it."""
    return next((c for _, c in server.components if type(c).__name__ == "OpcuaServer"), None)


@hookimpl
async def observe_commands(server: Server, command: Command) -> None:
    """A valve or relay command done (from any source): its state variable shows it."""
    component = opcua_server(server)
    if component is not None:
        await component.on_command(command)


@hookimpl
async def observe_alarms(server: Server, alarm: Alarm) -> None:
    """Every alarm (a new finding's included) as an event of the Server object."""
    component = opcua_server(server)
    if component is not None:
        await component.on_alarm(alarm)


def opcua_client(server: Server) -> OpcuaClient | None:
    """The component reading pumping-station servers, if devices are configured."""
    return next((c for _, c in server.components if type(c).__name__ == "OpcuaClient"), None)


@hookimpl
def register_actuators(server: Server) -> list[Any]:
    config: OpcuaConfig = server.plugin_config(NAME)
    client = opcua_client(server)
    if client is None or not config.actuators:
        return []
    from balans_edge.plugins.opcua.actuators import OpcuaActuator

    return [OpcuaActuator(client, config.actuators)]


def opcua_actuator(server: Server) -> OpcuaActuator | None:
    return next((a for a in server.actuation.actuators if type(a).__name__ == "OpcuaActuator"), None)


@hookimpl
def register_routes(server: Server) -> list[Any]:
    from balans_edge.plugins.opcua.client_api import routes

    return routes(server, lambda: opcua_client(server), lambda: opcua_actuator(server))


@hookimpl
def register_commands(cli: click.Group) -> None:
    from balans_edge.cli import command_group
    from balans_edge.plugins.opcua.client_cli import add_commands

    add_commands(command_group(cli, "opcua", "OPC UA: the server for SCADA, pumping-station servers read as a "
                                             "client."))
