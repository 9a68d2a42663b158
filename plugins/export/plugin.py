"""The export plugin: InfluxDB v2 write API targets fed from durable per-target
queues (store-and-forward), their state in health, over HTTP and as metrics,
and the ``balans-edge export`` commands. Its tables, queues and triggers are
its own (``repository.py``, ``migrations/``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balans_edge import hookimpl
from balans_edge.core.context import Plugin, PluginContext
from balans_edge.core.storage.migrations import MigrationSet
from balans_edge.plugins.export.config import ExportConfig
from balans_edge.plugins.export.exporter import Configurator, TargetExporter
from balans_edge.plugins.export.feeds import OWNER
from balans_edge.plugins.export.repository import ExportRepository

if TYPE_CHECKING:
    import click


NAME = "export"
MIGRATIONS = MigrationSet(OWNER, "balans_edge.plugins.export")
"""``migrations/sqlite/0001_tables.sql``, ...: export_targets and export_dead."""


class ExportPlugin(Plugin):
    def bind(self, context: PluginContext) -> None:
        """The queues' configurator (a component: it puts the configured targets, or
        none, into effect at start) and one exporter per configured target (a
        disabled one too: it shows its kept queue)."""
        super().bind(context)
        config: ExportConfig = context.config
        self.repository = ExportRepository(context.database)
        self.configurator = Configurator(self.repository, config)
        self.exporters = [TargetExporter(context, self.repository, target, self.configurator)
                          for target in config.targets]

    @hookimpl
    def config_schema(self) -> dict[str, type]:
        return {NAME: ExportConfig}

    @hookimpl
    def register_migrations(self) -> list[MigrationSet]:
        return [MIGRATIONS]

    @hookimpl
    def register_components(self) -> list:
        return [self.configurator]

    @hookimpl
    def register_exporters(self) -> list:
        return list(self.exporters)

    @hookimpl
    def register_routes(self) -> list:
        from balans_edge.plugins.export.api import routes

        return routes(self.repository, self.exporters)

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        from balans_edge.cli import command_group
        from balans_edge.plugins.export.cli import add_commands

        add_commands(command_group(cli, NAME, "Export to time-series databases: status, back-fill, dead letters."))
