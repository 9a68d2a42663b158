"""The OPC UA plugin: an OPC UA server for SCADA and MES (``server.py``; the
address space in ``model.py``, its security in ``security.py`` and
``pki.py``), and an OPC UA client for pumping stations
(``[[plugins.opcua.devices]]``, ``client.py``) next to ``[plugins.opcua.server]``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from balans_edge import hookimpl
from balans_edge.core.context import Plugin, PluginContext
from balans_edge.core.readback import check_actuators
from balans_edge.plugins.opcua.client_config import ActuatorConfig, DeviceConfig, check_devices
from balans_edge.plugins.opcua.config import ServerConfig

if TYPE_CHECKING:
    import click

    from balans_edge.core.components import Alarm, Command
    from balans_edge.plugins.opcua.actuators import OpcuaActuator
    from balans_edge.plugins.opcua.client import OpcuaClient
    from balans_edge.plugins.opcua.server import OpcuaServer

NAME = "opcua"


@dataclass(frozen=True)
class OpcuaConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    devices: list[DeviceConfig] = field(default_factory=list)
    """Pumping-station servers read as a client (``[[plugins.opcua.devices]]``)."""
    actuators: list[ActuatorConfig] = field(default_factory=list)
    """Valves, pumps and relays driven through those servers (``[[plugins.opcua.actuators]]``)."""

    def __post_init__(self) -> None:
        problems = check_devices(self.devices) + check_actuators(self.actuators, {d.name for d in self.devices})
        if problems:
            raise ValueError("; ".join(problems))


class OpcuaPlugin(Plugin):
    """The OPC UA server for SCADA, the client of pumping stations and the
    actuators it drives. asyncua takes most of a second to import: only a
    configured part imports it."""

    def bind(self, context: PluginContext) -> None:
        super().bind(context)
        config: OpcuaConfig = context.config
        self.server: OpcuaServer | None = None
        self.client: OpcuaClient | None = None
        self.actuator: OpcuaActuator | None = None
        if config.server.enabled:
            from balans_edge.plugins.opcua.server import OpcuaServer

            self.server = OpcuaServer(context, config.server)
        if config.devices:
            from balans_edge.plugins.opcua.client import OpcuaClient

            self.client = OpcuaClient(context, config.devices)
            if config.actuators:
                from balans_edge.plugins.opcua.actuators import OpcuaActuator

                self.actuator = OpcuaActuator(self.client, config.actuators)

    @hookimpl
    def config_schema(self) -> dict[str, type]:
        return {NAME: OpcuaConfig}

    @hookimpl
    def register_components(self) -> list[Any]:
        return [c for c in (self.server, self.client) if c is not None]

    @hookimpl
    def register_actuators(self) -> list[Any]:
        return [self.actuator] if self.actuator is not None else []

    @hookimpl
    def register_routes(self) -> list[Any]:
        from balans_edge.plugins.opcua.client_api import routes

        return routes(self.context, lambda: self.client, lambda: self.actuator)

    @hookimpl
    async def observe_commands(self, command: Command) -> None:
        """A valve or relay command done (from any source): its state variable shows it."""
        if self.server is not None:
            await self.server.on_command(command)

    @hookimpl
    async def observe_alarms(self, alarm: Alarm) -> None:
        """Every alarm (a new finding's included) as an event of the Server object."""
        if self.server is not None:
            await self.server.on_alarm(alarm)

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        from balans_edge.cli import command_group
        from balans_edge.plugins.opcua.client_cli import add_commands

        add_commands(command_group(cli, "opcua", "OPC UA: the server for SCADA, pumping-station servers read as a "
                                                 "client."))
