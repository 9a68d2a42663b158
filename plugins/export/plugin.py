"""The export plugin: InfluxDB v2 write API targets fed from durable per-target
queues (store-and-forward), their state in health, over HTTP and as metrics,
and the ``balans-edge export`` commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balans_edge import hookimpl
from balans_edge.core.context import Plugin, PluginContext
from balans_edge.plugins.export.config import ExportConfig
from balans_edge.plugins.export.exporter import Configurator, TargetExporter

if TYPE_CHECKING:
    import click


NAME = "export"


class ExportPlugin(Plugin):
    def bind(self, context: PluginContext) -> None:
        """One exporter per configured target (a disabled one too: it shows its kept
        queue, and starting it is what stops storage from queueing for it)."""
        super().bind(context)
        config: ExportConfig = context.config
        configurator = Configurator(context.storage, config)
        self.exporters = [TargetExporter(context, target, configurator) for target in config.targets]

    @hookimpl
    def config_schema(self) -> dict[str, type]:
        return {NAME: ExportConfig}

    @hookimpl
    def register_exporters(self) -> list:
        return list(self.exporters)

    @hookimpl
    def register_routes(self) -> list:
        from balans_edge.plugins.export.api import routes

        return routes(self.context, self.exporters)

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        from balans_edge.cli import command_group
        from balans_edge.plugins.export.cli import add_commands

        add_commands(command_group(cli, NAME, "Export to time-series databases: status, back-fill, dead letters."))
