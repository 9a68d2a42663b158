"""``balans-edge modbus tags`` and ``balans-edge modbus read``: the stored tag
values, and a one-off read of a configured PLC for commissioning (is the word
order right, is the scale right) before the server polls it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from balans_edge.core.tags import TagState
from balans_edge.core.times import iso
from balans_edge.plugins.modbus.tags import DeviceConfig, plan
from balans_edge.tags_cli import add_read_command, show_value


async def read_once(device: DeviceConfig) -> list[TagState]:
    """Every tag of ``device`` read once, batched as the poller would."""
    from balans_edge.plugins.modbus.client import Device, Link, Poller

    link = Link([device])
    states: list[TagState] = []

    async def keep(_: Any, changed: list[TagState]) -> None:
        states.extend(changed)

    poller = Poller(Device(device, link), keep)
    try:
        await poller.poll(plan(device.tags, device.max_gap, device.max_registers, device.max_bits))
    finally:
        link.close()
    return states


def add_commands(group: click.Group) -> None:
    from balans_edge import cli as _cli

    @group.command("tags")
    @_cli.CONFIG_OPTION
    def tags_command(config_path: Path | None) -> None:
        """The newest stored sample of every polled tag (from the database)."""
        _, config = _cli.prepare(config_path)
        rows = _cli.run_async(lambda: _cli.with_storage(config, lambda s: s.latest_tag_values()))
        if not rows:
            click.echo("no tag samples stored")
            return
        click.echo(f"{'tag':<32} {'value':>14} {'quality':<9} {'time (UTC)':<20} {'last good':>14}")
        for r in rows:
            when = iso(r["ts"]) if r["ts"] else "-"
            click.echo(f"{r['tag']:<32} {show_value(r['value']):>14} {r['quality']:<9} {when:<20} "
                       f"{show_value(r['last_good_value']):>14}")

    add_read_command(group, "modbus", lambda: read_once)
