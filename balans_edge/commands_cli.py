"""``balans-edge commands``: the command audit (the ``commands`` journal) from
the database, with the filters of ``GET /api/v1/commands``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from balans_edge import cli as _cli

MAX_LIMIT = 100_000


@click.command("commands")
@_cli.CONFIG_OPTION
@click.option("--target", default=None, help="Only commands to this target (meter id, module:ID, concentrator:ID).")
@click.option("--outcome", default=None, help="Only this outcome (pending, done, failed, refused, ...).")
@click.option("--code", default=None, help="Only this command (valve_close, relay_off, ping, firmware_push, ...).")
@click.option("--requested-by", default=None, help="Only commands asked for by this user (api:NAME, ...).")
@click.option("--from", "t_from", callback=_cli.time_option, help="Asked for at or after (ISO-8601 or unix).")
@click.option("--to", "t_to", callback=_cli.time_option, help="Asked for before (ISO-8601 or unix).")
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per command, newest first).")
def commands(config_path: Path | None, target: str | None, outcome: str | None, code: str | None,
             requested_by: str | None, t_from: int | None, t_to: int | None, limit: int, as_json: bool) -> None:
    """The command audit, newest first: valve, relay, pump and module commands and
    firmware pushes with who asked, when, why and the outcome."""
    from balans_edge.core.times import iso

    _, config = _cli.prepare(config_path)

    async def read(storage: Any) -> list[dict[str, Any]]:
        return await storage.commands(target=target, outcome=outcome, code=code, requested_by=requested_by,
                                      t0=t_from, t1=t_to, limit=limit)

    rows = [{**r, "t": iso(r["t"])} for r in _cli.run_async(lambda: _cli.with_storage(config, read))]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("no commands")
        return
    click.echo(f"{'id':>6} {'time (UTC)':<20} {'target':<20} {'code':<15} {'outcome':<9} {'requested by':<20} reason")
    for r in rows:
        click.echo(f"{r['id']:>6} {r['t']:<20} {r['target']:<20} {r['code']:<15} {r['outcome']:<9} "
                   f"{r['requested_by']:<20} {r['reason']}")
        if r["detail"]:
            click.echo(f"{'':>6} {r['detail']}")
