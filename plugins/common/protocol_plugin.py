"""What a protocol plugin (Modbus, OPC UA) is as a plugin object: a server part
that SCADA reads (a ``LiveBridge``), a client part that polls a pumping
station's devices (a ``TagClient``) and the actuator driven through that
client (a ``ClientActuator``), each made from its own part of the plugin's
section when it is configured; and the hooks that contribute them, give the
client's routes and forward commands and alarms to the server part.

The tag polling's table (owner ``tags``, ``tag_repository.py``) is shared by
every protocol plugin: each builds the repository on ``context.database``,
gives it to its client, and contributes the same migrations; a protocol adds
its own tables' repositories and migrations (``server_args``,
``own_migrations``).

A protocol names its section and where the class of each part is
(``"module:Class"``): a part's module is imported only when the part is
configured, so that a protocol library that takes long to import (asyncua) is
imported only then."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from balans_edge import hookimpl
from balans_edge.core.context import Plugin, PluginContext
from balans_edge.plugins.common.client_config import ActuatorT, ClientSection, DeviceT
from balans_edge.plugins.common.listen import ListenConfig
from balans_edge.plugins.common.tag_repository import MIGRATIONS as TAG_MIGRATIONS
from balans_edge.plugins.common.tag_repository import TagRepository

if TYPE_CHECKING:
    import click

    from balans_edge.core.components import Alarm, Command
    from balans_edge.core.storage.migrations import MigrationSet
    from balans_edge.plugins.common.actuators import ClientActuator
    from balans_edge.plugins.common.bridge import LiveBridge
    from balans_edge.plugins.common.tag_client import TagClient
    from balans_edge.routes import Route


@dataclass(frozen=True)
class ProtocolSection(ClientSection[DeviceT, ActuatorT]):
    """``[plugins.<protocol>]``: its ``server`` table, then the ``devices`` its
    client polls and the ``actuators`` driven through them, read by the
    protocol's types: ``class ModbusConfig(ProtocolSection[DeviceConfig,
    ActuatorConfig])`` with ``server`` declared again as its own server's
    section (a default made from that type)."""

    server: ListenConfig
    """The SCADA server's section (``[plugins.<protocol>.server]``); each protocol declares its own type."""
    devices: list[DeviceT] = field(default_factory=list)
    """The devices its client polls (``[[plugins.<protocol>.devices]]``)."""
    actuators: list[ActuatorT] = field(default_factory=list)
    """Valves, pumps and relays driven through those devices (``[[plugins.<protocol>.actuators]]``)."""


class ProtocolPlugin(Plugin):
    """A protocol plugin: its server, client and actuator (each None unless configured)."""

    section: ClassVar[str]
    """The plugin's name: its section ``[plugins.<section>]``, its URL paths and its command group."""
    title: ClassVar[str]
    """The protocol as people write it ("OPC UA")."""
    config_type: ClassVar[type[ProtocolSection[Any, Any]]]
    devices_doc: ClassVar[str]
    """What ``GET /api/v1/<section>/devices`` lists of a device."""
    commands_doc: ClassVar[str]
    """The help of the command group."""

    server_part: ClassVar[str]
    """``"module:Class"`` of the server part (a ``LiveBridge``), made with the context and ``config.server``."""
    client_part: ClassVar[str]
    """Of the client part (a ``TagClient``), made with the context, ``config.devices`` and ``tags``."""
    actuator_part: ClassVar[str]
    """Of the actuator (a ``ClientActuator``), made with the client and ``config.actuators``."""

    server: LiveBridge[Any] | None = None
    client: TagClient[Any, Any] | None = None
    actuator: ClientActuator[Any, Any] | None = None
    tags: TagRepository
    """The tag polling's samples (owner ``tags``), on ``context.database``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A part is the protocol's own: its module is in the plugin's package (no plugin
        reaches another plugin, by a string no more than by an import)."""
        super().__init_subclass__(**kwargs)
        package = cls.__module__.rpartition(".")[0] + "."
        for spec in (cls.server_part, cls.client_part, cls.actuator_part):
            if not spec.startswith(package):
                raise TypeError(f"{cls.__qualname__}: part {spec!r} is not in the plugin's package {package[:-1]}")

    def bind(self, context: PluginContext) -> None:
        super().bind(context)
        config: ProtocolSection[Any, Any] = context.config
        self.tags = TagRepository(context.database)
        self.server = (_part(self.server_part)(context, config.server, *self.server_args(context))
                       if config.server.enabled else None)
        self.client = _part(self.client_part)(context, config.devices, self.tags) if config.devices else None
        self.actuator = (_part(self.actuator_part)(self.client, config.actuators)
                         if self.client is not None and config.actuators else None)

    # what a protocol says ---------------------------------------------------------

    def add_commands(self, group: click.Group) -> None:
        """The protocol's commands in its group (``balans-edge <section> ...``)."""

    def server_args(self, context: PluginContext) -> tuple[Any, ...]:
        """What the server part is made with after the context and ``config.server``:
        the repositories of the protocol's own tables, built on ``context.database``."""
        return ()

    def own_migrations(self) -> list[MigrationSet]:
        """The migrations of the protocol's own tables (besides the tag polling's)."""
        return []

    # hooks ------------------------------------------------------------------------

    @hookimpl
    def config_schema(self) -> dict[str, type]:
        return {self.section: self.config_type}

    @hookimpl
    def register_migrations(self) -> list[MigrationSet]:
        """The tag polling's table (the same set from every protocol plugin), then the protocol's own."""
        return [TAG_MIGRATIONS, *self.own_migrations()]

    @hookimpl
    def register_components(self) -> list[Any]:
        return [c for c in (self.server, self.client) if c is not None]

    @hookimpl
    def register_actuators(self) -> list[Any]:
        return [self.actuator] if self.actuator is not None else []

    @hookimpl
    def register_routes(self) -> list[Route]:
        from balans_edge.plugins.common.client_api import client_routes

        return client_routes(self.context.commands, self.section, self.title, self.devices_doc,
                             lambda: self.client, lambda: self.actuator)

    @hookimpl
    async def observe_commands(self, command: Command) -> None:
        """A valve or relay command done (from any source): the server shows the state it left."""
        if self.server is not None:
            await self.server.on_command(command)

    @hookimpl
    async def observe_alarms(self, alarm: Alarm) -> None:
        """Every alarm (a new finding's included), as the server shows alarms."""
        if self.server is not None:
            await self.server.on_alarm(alarm)

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        from balans_edge.cli import command_group

        self.add_commands(command_group(cli, self.section, self.commands_doc))


def _part(spec: str) -> Any:
    """The class ``"module:Class"`` names, its module imported now."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
