"""``balans-edge opcua read``: a one-off read of a configured station's server
for commissioning (is the node id right, the scale, the certificate trusted)
before the server reads it for real. Stored samples of every tag, whatever its
protocol, are printed by ``balans-edge modbus tags``."""

from __future__ import annotations

import click

from balans_edge.plugins.common.tags_cli import ReadOnce, add_read_command


def _read_once() -> ReadOnce:
    from balans_edge.plugins.opcua.client import read_once  # asyncua: imported when the command runs

    return read_once


def add_commands(group: click.Group) -> None:
    add_read_command(group, "opcua", _read_once)
