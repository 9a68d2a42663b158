"""``balans-edge analytics ...``: what the detectors found, from the command line."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from balans_edge import cli as _cli
from balans_edge.core import findings as rules
from balans_edge.core.times import DAY

COLUMNS = ("id", "status", "kind", "subject", "group", "started", "ended", "seen", "message")


@click.group()
def analytics() -> None:
    """Analytics: findings of the detectors and the operators' answers."""


def _time(t: int | None) -> str:
    return "—" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def _cells(f: dict[str, Any]) -> tuple[str, ...]:
    return (str(f["id"]), f["status"], f["kind"], f["subject"], f.get("group_id") or "—",
            _time(f.get("started")), _time(f.get("ended")), str(f["seen"]), f["message"])


def _table(found: list[dict[str, Any]]) -> str:
    """Columns as wide as their widest cell; the message last, never cut."""
    rows = [COLUMNS, *(_cells(f) for f in found)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


@analytics.command("findings")
@_cli.CONFIG_OPTION
@click.option("--group", "group_id", default=None, help="Only findings about this balance group.")
@click.option("--kind", default=None, help="Only this kind of finding.")
@click.option("--status", type=click.Choice(rules.STATUSES), default=None, help="Only findings in this status.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (times in unix seconds) instead of a table.")
def findings_command(
    config_path: Path | None, group_id: str | None, kind: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """Stored findings, most recently seen first (times in UTC)."""
    _, config = _cli.prepare(config_path)

    async def run(storage: Any) -> list[dict[str, Any]]:
        return await storage.findings(group=group_id, kind=kind, status=status, limit=limit)

    found = _cli.run_async(lambda: _cli.with_storage(config, run))
    if as_json:
        click.echo(json.dumps({"findings": found}, indent=2, ensure_ascii=False, default=str))
    elif not found:
        click.echo("no findings")
    else:
        click.echo(_table(found))


@analytics.command("quality")
@_cli.CONFIG_OPTION
@click.option("--days", type=click.IntRange(1, 3660), default=365, show_default=True,
              help="Findings first seen in this many last days.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def quality_command(config_path: Path | None, days: int, as_json: bool) -> None:
    """Detection quality from the operators' answers, per detector and kind: precision
    among the findings judged resolved or false alarm."""
    _, config = _cli.prepare(config_path)
    since = int(time.time()) - days * DAY

    async def run(storage: Any) -> list[dict[str, Any]]:
        return await storage.findings(since=since, limit=1_000_000)

    rows = rules.quality(_cli.run_async(lambda: _cli.with_storage(config, run)))
    if as_json:
        click.echo(json.dumps({"detectors": rows}, indent=2))
        return
    if not rows:
        click.echo(f"no findings in the last {days} days")
        return
    header = ["detector", "kind", "findings", "open", "acknowledged", "resolved", "false_alarm", "accepted",
              "precision", "median_hours_to_answer"]
    table = [header] + [[_cell(r[h]) for h in header] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    click.echo("\n".join("  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in
                                    enumerate(zip(r, widths, strict=True))).rstrip() for r in table))


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)
