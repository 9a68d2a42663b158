"""``balans-edge balance ...``: balance reports of groups from the command line."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from balans_edge import cli as _cli


@click.group()
def balance() -> None:
    """Balance groups: monthly reports, losses."""


async def _refresh(storage: Any, config: Any) -> None:
    """Fold pending readings into consumption and balances first (what a running server would do)."""
    from balans_edge.core.balance_worker import BalanceWorker
    from balans_edge.core.intervals import IntervalWorker

    await IntervalWorker(storage, config.intervals).process()
    await BalanceWorker(storage, config.balance).process()


def _cell(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _table(report: dict[str, Any], days: list[dict[str, Any]]) -> str:
    unit = report["unit"]
    lines = [f"{'day':<10} {'input':>12} {'consumed':>12} {'imbalance':>12} {'loss %':>7} {'complete':>8}  flags"]
    for p in days:
        complete = p["completeness"]["measured"] + p["completeness"]["estimated"]
        lines.append(f"{p['day']:<10} {_cell(p['input']):>12} {_cell(p['consumed']):>12} "
                     f"{_cell(p['imbalance']):>12} {_cell(p['loss_pct'], 1):>7} {complete:>8.1%}  "
                     f"{', '.join(p['flags'])}")
    lines.append(f"{'month':<10} {_cell(report['input']):>12} {_cell(report['consumed']):>12} "
                 f"{_cell(report['imbalance']):>12}   ({unit})")
    return "\n".join(lines)


def _inflow_table(report: dict[str, Any], days: list[dict[str, Any]]) -> str:
    """An inflow-only group has no balance to show: only what flowed in."""
    lines = [f"{'day':<10} {'input':>12}  flags"]
    for p in days:
        flags = [f for f in p["flags"] if f != "no_members"]
        lines.append(f"{p['day']:<10} {_cell(p['input']):>12}  {', '.join(flags)}")
    lines.append(f"{'month':<10} {_cell(report['input']):>12}  ({report['unit']})")
    return "\n".join(lines)


def _allocation_text(a: dict[str, Any]) -> str:
    money = a.get("price") is not None
    lines = [f"allocation ({a['rule']}): {_cell(a['allocated'])} {a['unit']} to {len(a['lines'])} accounts, "
             f"utility loss {_cell(a['utility_loss'])} {a['unit']}"]
    header = f"  {'account':<16} {'consumed':>10} {'area m2':>8} {'allocated':>10}"
    lines.append(header + (f" {'to pay':>10}" if money else ""))
    for line in a["lines"]:
        row = (f"  {line['account_id']:<16} {_cell(line['consumed']):>10} {_cell(line['area_m2'], 1):>8} "
               f"{_cell(line['allocated']):>10}")
        lines.append(row + (f" {_cell(line['amount'], 2):>10}" if money else ""))
    if a.get("fixable"):
        lines.append(f"if the top findings were fixed: imbalance {_cell(a['imbalance_if_fixed'])} {a['unit']} "
                     f"instead of {_cell(a['imbalance'])}")
    return "\n".join(lines)


@balance.command("report")
@_cli.CONFIG_OPTION
@click.option("--group", "group_id", required=True, help="The balance group.")
@click.option("--month", required=True, help="YYYY-MM, in the site's timezone.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def report_command(config_path: Path | None, group_id: str, month: str, as_json: bool) -> None:
    """A group's month: daily balance, totals, allocation to accounts, recommendations."""
    from zoneinfo import ZoneInfo

    from balans_edge.core import balance_queries as q
    from balans_edge.core.balance import points

    _, config = _cli.prepare(config_path)
    tz = ZoneInfo(config.site.timezone)
    try:
        t0, t1 = q.month_bounds(month, tz)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--month") from None
    threshold = config.balance.completeness_threshold

    async def run(storage: Any) -> dict[str, Any]:
        await _refresh(storage, config)
        tree = await q.Tree.load(storage)
        group = tree.groups.get(group_id)
        if group is None:
            raise click.ClickException(f"group {group_id!r} is not in the registry")
        now = int(time.time())
        days = await q.group_series(storage, tree, [group_id], t0, t1, "day", tz, now)
        allocation = await q.allocation(storage, tree, group, month, tz, threshold, now)
        ranked = await q.losses(storage, tree, None, t0, t1, tz, threshold, now)
        entry = next(e for e in ranked if e.group_id == group_id)
        rows = points(days.series, 0, group, threshold, tree.resolution(group_id), days.coverage)
        for row, t in zip(rows, days.series.t.tolist(), strict=True):
            row["day"] = datetime.fromtimestamp(t, tz).date().isoformat()  # the site's day, not UTC's
        return {"allocation": allocation.to_json(), "days": rows, "losses": entry.to_json()}

    result = _cli.run_async(lambda: _cli.with_storage(config, run))
    if as_json:
        click.echo(json.dumps({"group_id": group_id, "month": month, **result}, indent=2, ensure_ascii=False))
        return
    a = result["allocation"]
    recommendations = result["losses"].get("recommendations") or []
    click.echo(f"{group_id} — {month} ({config.site.timezone})")
    if any(r["kind"] == "inflow_only" for r in recommendations):
        click.echo(_inflow_table(a, result["days"]))
    else:
        click.echo(_table(a, result["days"]))
        click.echo()
        click.echo(_allocation_text(a))
    if recommendations:
        click.echo()
        click.echo("where to look first:")
        for r in recommendations:
            click.echo(f"  - {r['message']}")
