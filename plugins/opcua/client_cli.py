"""``balans-edge opcua read``: a one-off read of a configured station's server
for commissioning (is the node id right, the scale, the certificate trusted)
before the server reads it for real. Stored samples of every tag, whatever its
protocol, are printed by ``balans-edge modbus tags``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def add_commands(group: click.Group) -> None:
    from balans_edge import cli as _cli

    @group.command("read")
    @_cli.CONFIG_OPTION
    @click.option("--device", "name", required=True, help="A [[plugins.opcua.devices]] name.")
    def read_command(config_path: Path | None, name: str) -> None:
        """Read every tag of one configured device once and print it (exit 1 unless all are good)."""
        from balans_edge.plugins.opcua.client import read_once

        _, config = _cli.prepare(config_path)
        devices = {d.name: d for d in config.plugins["opcua"].devices}
        if name not in devices:
            raise click.BadParameter(f"no device {name!r} (configured: {', '.join(devices) or 'none'})",
                                     param_hint="--device")
        states = asyncio.run(read_once(devices[name]))
        click.echo(f"{'tag':<24} {'value':>14} {'unit':<6} {'quality':<9} detail")
        for s in states:
            click.echo(f"{s.tag.name:<24} {_show(s.value):>14} {s.tag.unit:<6} {s.quality:<9} {s.detail}")
        raise SystemExit(0 if all(s.quality == "good" for s in states) else 1)
