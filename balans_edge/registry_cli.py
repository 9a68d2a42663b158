"""``balans-edge registry ...``: bulk import and export, unknown modules, the
audit of changes, a meter's parameter periods and corrections of its past."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import click

from balans_edge import cli as _cli


def _who() -> str:
    """Who the audit names for a change made from the command line."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (a container)
        return "cli:unknown"


@click.group()
def registry() -> None:
    """Meter registry: import, export, readings from unknown modules."""


@registry.command("import")
@_cli.CONFIG_OPTION
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def import_command(config_path: Path | None, files: tuple[Path, ...]) -> None:
    """Import CSV files (concentrators.csv, modules.csv, accounts.csv,
    meters.csv; a folder stands for those in it) or a registry.json. Everything is validated first; on any
    error nothing is written."""
    from balans_edge.core.registry import RegistryError, import_registry

    _, config = _cli.prepare(config_path)
    try:
        report = _cli.run_async(lambda: _cli.with_storage(config, lambda s: import_registry(s, list(files), _who())))
    except RegistryError as exc:
        click.echo(f"import refused, nothing written:\n{exc}", err=True)
        raise SystemExit(1) from None
    click.echo(str(report))


@registry.command("export")
@_cli.CONFIG_OPTION
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
def export_command(config_path: Path | None, folder: Path, fmt: str) -> None:
    """Export the registry to FOLDER (files that re-import as a no-op)."""
    from balans_edge.core.registry import export_registry

    _, config = _cli.prepare(config_path)
    paths = _cli.run_async(lambda: _cli.with_storage(config, lambda s: export_registry(s, folder, fmt)))
    for p in paths:
        click.echo(str(p))


@registry.command("unknown")
@_cli.CONFIG_OPTION
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
def unknown_command(config_path: Path | None, limit: int) -> None:
    """Readings from modules or channels no meter claims (the quarantine)."""
    from balans_edge.core.times import iso

    _, config = _cli.prepare(config_path)
    rows = _cli.run_async(lambda: _cli.with_storage(config, lambda s: s.quarantine(limit)))
    if not rows:
        click.echo("no readings from unknown modules")
        return
    click.echo(f"{'module':>10} {'ch':>2} {'time (UTC)':<20} {'counter':>10} {'status':>6}  reason")
    for r in rows:
        click.echo(
            f"{r['module_id']:>10} {r['channel']:>2} {iso(r['ts']):<20} {r['counter']:>10} {r['status']:>6}"
            f"  {r['reason']}"
        )


@registry.command("audit")
@_cli.CONFIG_OPTION
@click.option("--kind", type=click.Choice(["concentrators", "modules", "accounts", "meters", "groups"]))
@click.option("--id", "object_id", help="The object's key.")
@click.option("--who", help="e.g. api:alice, cli:root, config.")
@click.option("--action", type=click.Choice(["create", "update", "delete", "correct"]))
@click.option("--from", "t0", callback=_cli.time_option, help="ISO-8601 time (UTC when no offset) or unix seconds.")
@click.option("--to", "t1", callback=_cli.time_option, help="ISO-8601 time (UTC when no offset) or unix seconds.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, with before and after.")
def audit_command(config_path: Path | None, kind: str | None, object_id: str | None, who: str | None,
                  action: str | None, t0: int | None, t1: int | None, limit: int, as_json: bool) -> None:
    """Registry changes, newest first: when, who, what, and why."""
    from balans_edge.core import registry_history as history

    _, config = _cli.prepare(config_path)
    query = history.audit_query(kind, object_id, who, action, t0, t1, limit)
    rows = _cli.run_async(lambda: _cli.with_storage(config, lambda s: s.registry_audit(query)))
    for row in rows:
        shown = history.audit_json(row)
        if as_json:
            click.echo(json.dumps(shown, ensure_ascii=False, sort_keys=True))
            continue
        what = ", ".join(history.changed_columns(row)) if row["action"] == "update" else ""
        since = f" from {shown['effective_from']}" if shown.get("effective_from") else ""
        until = f" to {shown['effective_to']}" if shown.get("effective_to") else ""
        reason = f"  ({row['reason']})" if row["reason"] else ""
        click.echo(f"{shown['t']}  {row['who']:<16} {row['action']:<7} {row['kind']} {row['object_id']}"
                   f"{': ' + what if what else ''}{since}{until}{reason}")
    if not rows and not as_json:
        click.echo("no registry changes match")


@registry.command("periods")
@_cli.CONFIG_OPTION
@click.argument("meter_id")
def periods_command(config_path: Path | None, meter_id: str) -> None:
    """A meter's parameter periods: from when each pulse weight, base reading, module, channel and group held."""
    from balans_edge.core.periods import period_json

    _, config = _cli.prepare(config_path)

    async def read(storage: Any) -> list[Any] | None:
        key = (await storage.meter_keys()).get(meter_id)
        return None if key is None else (await storage.meter_periods([key])).get(key, [])

    found = _cli.run_async(lambda: _cli.with_storage(config, read))
    if found is None:
        click.echo(f"meter {meter_id!r} is not in the registry", err=True)
        raise SystemExit(1)
    for p in found:
        click.echo(json.dumps(period_json(p), ensure_ascii=False))


@registry.command("correct")
@_cli.CONFIG_OPTION
@click.argument("meter_id")
@click.option("--from", "t0", required=True, help="When the corrected parameters start to hold (ISO-8601).")
@click.option("--to", "t1", help="When they stop (ISO-8601; default: from then on).")
@click.option("--set", "changes", multiple=True, required=True, metavar="NAME=VALUE",
              help="A parameter and its right value: pulse_weight, base_reading or group_id (repeatable).")
@click.option("--reason", required=True, help="Why: kept in the audit.")
def correct_command(config_path: Path | None, meter_id: str, t0: str, t1: str | None, changes: tuple[str, ...],
                    reason: str) -> None:
    """Correct a meter's parameters over a past period (e.g. a pulse weight wrong since
    installation): its hours and balances are recomputed, and the audit keeps the
    periods before and after."""
    from balans_edge.core import registry_history as history
    from balans_edge.core.registry import RegistryError

    _, config = _cli.prepare(config_path)
    pairs = dict(c.split("=", 1) if "=" in c else (c, "") for c in changes)
    body = {"from": t0, "to": t1, "changes": pairs, "reason": reason}
    try:
        correction = history.parse_correction(meter_id, body, "registry correct")
        record = _cli.run_async(lambda: _cli.with_storage(
            config, lambda s: history.correct(s, correction, _who(), "registry correct")))
    except RegistryError as exc:
        click.echo(f"correction refused, nothing written:\n{exc}", err=True)
        raise SystemExit(1) from None
    except KeyError:
        click.echo(f"meter {meter_id!r} is not in the registry", err=True)
        raise SystemExit(1) from None
    click.echo(json.dumps({"meter_id": meter_id, **record}, ensure_ascii=False, indent=2))
    click.echo("hours and balances are recomputed by the running server (or at its next start)", err=True)

