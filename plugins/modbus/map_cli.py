"""``balans-edge modbus map``: the register map document for a SCADA integrator.

Built by ``regmap.load_map``, the function the server builds its map with,
from the same registry, slots and configuration: slots of new meters and
groups are allocated (and stored) here if the server has not done it yet, so
the document stays true when the server starts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from balans_edge.plugins.modbus.regmap import MapError, load_map, to_csv, to_markdown
from balans_edge.plugins.modbus.repository import BridgeSlotRepository

if TYPE_CHECKING:
    from balans_edge.core.storage.views import Queries
    from balans_edge.plugins.modbus.server import ServerConfig


async def document(queries: Queries, slots: BridgeSlotRepository, config: ServerConfig, fmt: str) -> str:
    rmap = await load_map(queries, slots, config, int(time.time()))
    rows = rmap.rows()
    return to_csv(rows) if fmt == "csv" else to_markdown(rmap, rows, config)


def add_commands(group: click.Group) -> None:
    from balans_edge import cli as _cli

    @group.command("map")
    @click.option("--format", "fmt", type=click.Choice(["csv", "md"]), default="csv", show_default=True,
                  help="csv for a SCADA tag import, md for people")
    @click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="write to this file instead of standard output")
    @_cli.CONFIG_OPTION
    def map_command(fmt: str, output: Path | None, config_path: Path | None) -> None:
        """Write the Modbus register map: address, table, object, name, type,
        byte order, registers, unit, writable, description."""
        _, config = _cli.prepare(config_path)
        server_config = config.plugins["modbus"].server
        try:
            text = _cli.run_async(lambda: _cli.with_storage(
                config, lambda s: document(s, BridgeSlotRepository(s), server_config, fmt)))
        except MapError as exc:
            raise click.ClickException(f"modbus register map: {exc}") from None
        if output is None:
            click.echo(text, nl=False)
        else:
            output.write_text(text, encoding="utf-8")
