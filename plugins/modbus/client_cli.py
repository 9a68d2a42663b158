"""``balans-edge modbus tags`` and ``balans-edge modbus read``: the stored tag
values, and a one-off read of a configured PLC for commissioning (is the word
order right, is the scale right) before the server polls it."""

from __future__ import annotations

from typing import Any

import click

from balans_edge.core.tags import TagState
from balans_edge.plugins.common.tags_cli import add_read_command, add_tags_command
from balans_edge.plugins.modbus.tags import DeviceConfig, plan


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
    add_tags_command(group)
    add_read_command(group, "modbus", lambda: read_once)
