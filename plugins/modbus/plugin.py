"""The Modbus plugin: a Modbus TCP server for SCADA (``server.py``, the map
in ``regmap.py``), and the command that writes the map document; a client
polling PLCs (``client.py``, tags in ``tags.py``) and the valves, pumps and
relays they drive (``actuators.py``). What it shares with the OPC UA plugin,
its hooks among it, is in ``plugins/common`` (``ProtocolPlugin``). Its own
table, the server's slots, is in ``repository.py`` (owner ``modbus``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from balans_edge.plugins.common.protocol_plugin import ProtocolPlugin, ProtocolSection
from balans_edge.plugins.modbus.actuators import ActuatorConfig
from balans_edge.plugins.modbus.repository import MIGRATIONS, BridgeSlotRepository
from balans_edge.plugins.modbus.server import ServerConfig
from balans_edge.plugins.modbus.tags import DeviceConfig, check_devices

if TYPE_CHECKING:
    import click

    from balans_edge.core.context import PluginContext
    from balans_edge.core.storage.migrations import MigrationSet

NAME = "modbus"


@dataclass(frozen=True)
class ModbusConfig(ProtocolSection[DeviceConfig, ActuatorConfig]):
    server: ServerConfig = field(default_factory=ServerConfig)

    def device_problems(self) -> list[str]:
        """Besides the checks of every protocol: two slaves on one address, one serial line's settings."""
        return check_devices(self.devices)


class ModbusPlugin(ProtocolPlugin):
    """The Modbus server for SCADA, the PLC client and the actuators it drives."""

    section = NAME
    title = "Modbus"
    config_type = ModbusConfig
    devices_doc = "Polled Modbus devices: link state, reconnects, requests, reads per poll, last error"
    commands_doc = "Modbus: the register map for SCADA, PLC tags."

    server_part = "balans_edge.plugins.modbus.server:ModbusServer"
    client_part = "balans_edge.plugins.modbus.client:ModbusClient"
    actuator_part = "balans_edge.plugins.modbus.actuators:ModbusActuator"

    def server_args(self, context: PluginContext) -> tuple[BridgeSlotRepository]:
        """The server gives registry objects slots (``repository.py``, owner ``modbus``)."""
        return (BridgeSlotRepository(context.database),)

    def own_migrations(self) -> list[MigrationSet]:
        return [MIGRATIONS]

    def add_commands(self, group: click.Group) -> None:
        from balans_edge.plugins.modbus.client_cli import add_commands as add_client_commands
        from balans_edge.plugins.modbus.map_cli import add_commands

        add_commands(group)
        add_client_commands(group)
