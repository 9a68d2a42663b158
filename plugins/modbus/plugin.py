"""The Modbus plugin: a Modbus TCP server for SCADA (``server.py``, the map
in ``regmap.py``), and the command that writes the map document; a client
polling PLCs (``client.py``, tags in ``tags.py``) and the valves, pumps and
relays they drive (``actuators.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from balans_edge import hookimpl
from balans_edge.core.context import Plugin, PluginContext
from balans_edge.core.readback import check_actuators
from balans_edge.plugins.modbus.actuators import ActuatorConfig, ModbusActuator
from balans_edge.plugins.modbus.client import ModbusClient
from balans_edge.plugins.modbus.server import ModbusServer, ServerConfig
from balans_edge.plugins.modbus.tags import DeviceConfig, check_devices

if TYPE_CHECKING:
    import click

    from balans_edge.core.components import Alarm, Command

NAME = "modbus"


@dataclass(frozen=True)
class ModbusConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    devices: list[DeviceConfig] = field(default_factory=list)
    """PLCs polled as a Modbus client (``[[plugins.modbus.devices]]``)."""
    actuators: list[ActuatorConfig] = field(default_factory=list)
    """Valves, pumps and relays driven through those devices (``[[plugins.modbus.actuators]]``)."""

    def __post_init__(self) -> None:
        problems = check_devices(self.devices) + check_actuators(self.actuators, {d.name for d in self.devices})
        if problems:
            raise ValueError("; ".join(problems))


class ModbusPlugin(Plugin):
    """The Modbus server for SCADA, the PLC client and the actuators it drives."""

    def bind(self, context: PluginContext) -> None:
        super().bind(context)
        config: ModbusConfig = context.config
        self.server = ModbusServer(context, config.server) if config.server.enabled else None
        self.client = ModbusClient(context, config.devices) if config.devices else None
        self.actuator = (ModbusActuator(self.client, config.actuators)
                         if self.client is not None and config.actuators else None)

    @hookimpl
    def config_schema(self) -> dict[str, type]:
        return {NAME: ModbusConfig}

    @hookimpl
    def register_components(self) -> list:
        return [c for c in (self.server, self.client) if c is not None]

    @hookimpl
    def register_actuators(self) -> list:
        return [self.actuator] if self.actuator is not None else []

    @hookimpl
    def register_routes(self) -> list:
        from balans_edge.plugins.modbus.client_api import routes

        return routes(self.context, lambda: self.client, lambda: self.actuator)

    @hookimpl
    def observe_commands(self, command: Command) -> None:
        """A valve or relay command done (from any source): its coil reads the new state."""
        if self.server is not None:
            self.server.on_command(command)

    @hookimpl
    async def observe_alarms(self, alarm: Alarm) -> None:
        if self.server is not None:
            await self.server.on_alarm(alarm)

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        from balans_edge.cli import command_group
        from balans_edge.plugins.modbus.client_cli import add_commands as add_client_commands
        from balans_edge.plugins.modbus.map_cli import add_commands

        group = command_group(cli, "modbus", "Modbus: the register map for SCADA, PLC tags.")
        add_commands(group)
        add_client_commands(group)
