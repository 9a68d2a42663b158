"""``balans-edge dmesh commissioning``: did every meter of a group deliver all
of its hourly data over the last hours?

Every meter the group's balance reads is checked: its input meters, its member
meters and the input meters of its member groups (a member group counts in
its parent with its input). A group without a complete input has no balance,
however complete its members are.

A meter is complete when each hour of the window has a stored hourly
consumption row that is measured or estimated; an hour without a row or with a
missing row counts as missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from balans_edge.core.calculated import input_meters
from balans_edge.core.model import Quality
from balans_edge.core.times import HOUR, hour_floor, iso

if TYPE_CHECKING:
    from balans_edge.core.storage.views import Queries

MAX_HOURS = 24 * 366


@dataclass(frozen=True, slots=True)
class MeterCompleteness:
    meter_id: str
    role: str
    """``input`` (the group's own input meter), ``member``, or ``input:CHILD`` (a member group's input)."""
    module_id: int | None
    channel: int | None
    hours: int
    missing: int
    first_missing: int | None

    @property
    def complete(self) -> bool:
        return self.missing == 0


async def roles(queries: Queries, group_id: str) -> dict[str, str]:
    """The meters the group's balance reads, each with its role in it (inputs first)."""
    groups = {g.group_id: g for g in await queries.registry_list("groups")}
    out: dict[str, str] = {}
    group = groups.get(group_id)
    if group is not None:
        out.update((i.meter_id, "input") for i in input_meters(group))
    for child in sorted(g for g, row in groups.items() if row.parent_id == group_id):
        out.update((i.meter_id, f"input:{child}") for i in input_meters(groups[child]) if i.meter_id not in out)
    return out


async def commissioning(queries: Queries, group_id: str, t0: int, t1: int) -> list[MeterCompleteness]:
    """Completeness of the hourly data of every meter of one group over [t0, t1) (hour-aligned):
    its inputs, its members and its member groups' inputs."""
    hours = list(range(t0, t1, HOUR))
    role = await roles(queries, group_id)
    out = []
    for key, meter in await queries.meters_by_key():
        part = role.get(meter.meter_id, "member" if meter.group_id == group_id else None)
        if part is None:
            continue
        delivered = {t for t, _, quality in await queries.hourly(key, t0, t1) if quality != Quality.MISSING}
        gaps = [t for t in hours if t not in delivered]
        out.append(
            MeterCompleteness(
                meter.meter_id, part, meter.module_id, meter.channel, len(hours), len(gaps), gaps[0] if gaps else None
            )
        )
    return sorted(out, key=lambda m: (m.role == "member", m.role, m.meter_id))


def _parse_end(raw: str | None) -> int:
    from balans_edge import cli as _cli

    return hour_floor(int(time.time()) if raw is None else _cli.parse_time_option(raw, "--end"))


def add_commands(group: click.Group) -> None:
    from balans_edge import cli as _cli

    @group.command("commissioning")
    @_cli.CONFIG_OPTION
    @click.option("--group", "group_id", required=True,
                  help="Balance group id: its input meters, member meters and member groups' inputs are checked.")
    @click.option(
        "--hours",
        type=click.IntRange(1, MAX_HOURS),
        default=48,
        show_default=True,
        help="Length of the window, in hours.",
    )
    @click.option(
        "--end",
        default=None,
        help="End of the window, ISO-8601 (UTC if no offset), rounded down to the hour "
        "(default: the current hour's start).",
    )
    def commissioning_command(config_path: Path | None, group_id: str, hours: int, end: str | None) -> None:
        """Which meters of a group (inputs included) delivered 100 % of their hourly
        data over the last HOURS hours (exit 0 when all did, 1 otherwise)."""
        t1 = _parse_end(end)
        t0 = t1 - hours * HOUR
        _, config = _cli.prepare(config_path)
        rows = _cli.run_async(lambda: _cli.with_storage(config, lambda s: commissioning(s, group_id, t0, t1)))
        click.echo(f"group {group_id}: {iso(t0)} .. {iso(t1)} ({hours} h)")
        if not rows:
            click.echo(f"no meters in group {group_id!r} (no input meter, no meter with that group_id)")
            raise SystemExit(1)
        click.echo(f"{'meter':<24} {'role':<12} {'module':>10} {'ch':>2} {'hours':>11} {'missing':>7}  "
                   "first missing (UTC)  result")
        for r in rows:
            module = "" if r.module_id is None else str(r.module_id)
            channel = "" if r.channel is None else str(r.channel)
            first = iso(r.first_missing) if r.first_missing is not None else "-"
            click.echo(
                f"{r.meter_id:<24} {r.role:<12} {module:>10} {channel:>2} {f'{r.hours - r.missing}/{r.hours}':>11} "
                f"{r.missing:>7}  {first:<20} {'complete' if r.complete else 'INCOMPLETE'}"
            )
        done = sum(r.complete for r in rows)
        click.echo(f"{done} of {len(rows)} meters complete, {len(rows) - done} incomplete")
        raise SystemExit(0 if done == len(rows) else 1)
