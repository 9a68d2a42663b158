"""The tag commands of the protocol plugins' command groups: ``tags`` prints
the newest stored sample of every tag (whatever its protocol), ``read`` reads
one configured device's tags once for commissioning (is the address or node
id right, the word order, the scale, the certificate trusted) before the
server polls it for real."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from balans_edge.core.tags import TagState
from balans_edge.plugins.common.tag_repository import TagRepository

ReadOnce = Callable[[Any], Awaitable[list[TagState]]]
"""Reads every tag of a device's configuration once."""


def show_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def show_time(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else "-"


def add_tags_command(group: click.Group) -> None:
    """``tags``: the newest stored sample of every tag, from the database."""
    from balans_edge import cli as _cli

    @group.command("tags")
    @_cli.CONFIG_OPTION
    def tags_command(config_path: Path | None) -> None:
        """The newest stored sample of every polled tag (from the database)."""
        _, config = _cli.prepare(config_path)
        rows = _cli.run_async(lambda: _cli.with_storage(config, lambda s: TagRepository(s).latest_tag_values()))
        if not rows:
            click.echo("no tag samples stored")
            return
        click.echo(f"{'tag':<32} {'value':>14} {'quality':<9} {'time (UTC)':<20} {'last good':>14}")
        for r in rows:
            click.echo(f"{r['tag']:<32} {show_value(r['value']):>14} {r['quality']:<9} {show_time(r['ts']):<20} "
                       f"{show_value(r['last_good_value']):>14}")


def add_read_command(group: click.Group, plugin: str, read_once: Callable[[], ReadOnce]) -> None:
    """``read --device NAME``; ``read_once()`` is called only when the command runs
    (so a protocol library is imported only then)."""
    from balans_edge import cli as _cli

    @group.command("read")
    @_cli.CONFIG_OPTION
    @click.option("--device", "name", required=True, help=f"A [[plugins.{plugin}.devices]] name.")
    def read_command(config_path: Path | None, name: str) -> None:
        """Read every tag of one configured device once and print it (exit 1 unless all are good)."""
        _, config = _cli.prepare(config_path)
        devices = {d.name: d for d in config.plugins[plugin].devices}
        if name not in devices:
            raise click.BadParameter(f"no device {name!r} (configured: {', '.join(devices) or 'none'})",
                                     param_hint="--device")
        states = asyncio.run(read_once()(devices[name]))
        click.echo(f"{'tag':<24} {'value':>14} {'unit':<6} {'quality':<9} detail")
        for s in states:
            click.echo(f"{s.tag.name:<24} {show_value(s.value):>14} {s.tag.unit:<6} {s.quality:<9} {s.detail}")
        raise SystemExit(0 if all(s.quality == "good" for s in states) else 1)
