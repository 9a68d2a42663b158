"""The OPC UA plugin: an OPC UA server for SCADA and MES (``server.py``; the
address space in ``model.py``, its security in ``security.py`` and
``pki.py``), and an OPC UA client for pumping stations
(``[[plugins.opcua.devices]]``, ``client.py``) next to ``[plugins.opcua.server]``.
What it shares with the Modbus plugin, its hooks among it, is in
``plugins/common`` (``ProtocolPlugin``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from balans_edge.plugins.common.protocol_plugin import ProtocolPlugin, ProtocolSection
from balans_edge.plugins.opcua.client_config import ActuatorConfig, DeviceConfig
from balans_edge.plugins.opcua.config import ServerConfig

if TYPE_CHECKING:
    import click


NAME = "opcua"


@dataclass(frozen=True)
class OpcuaConfig(ProtocolSection[DeviceConfig, ActuatorConfig]):
    server: ServerConfig = field(default_factory=ServerConfig)


class OpcuaPlugin(ProtocolPlugin):
    """The OPC UA server for SCADA, the client of pumping stations and the
    actuators it drives. asyncua takes most of a second to import: only a
    configured part imports it."""

    section = NAME
    title = "OPC UA"
    config_type = OpcuaConfig
    devices_doc = ("OPC UA servers read as a client: session up, security, connects, last error, reads, "
                   "notifications")
    commands_doc = "OPC UA: the server for SCADA, pumping-station servers read as a client."

    server_part = "balans_edge.plugins.opcua.server:OpcuaServer"
    client_part = "balans_edge.plugins.opcua.client:OpcuaClient"
    actuator_part = "balans_edge.plugins.opcua.actuators:OpcuaActuator"

    def add_commands(self, group: click.Group) -> None:
        from balans_edge.plugins.opcua.client_cli import add_commands

        add_commands(group)
