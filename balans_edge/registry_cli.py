"""``balans-edge registry ...``: bulk import and export, unknown modules."""

from __future__ import annotations

from pathlib import Path

import click

from balans_edge import cli as _cli


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
        report = _cli.run_async(lambda: _cli.with_storage(config, lambda s: import_registry(s, list(files))))
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
    from balans_edge.routes import iso

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
