"""The ``balans-edge`` command line (click); plugins add commands through
the ``register_commands`` hook."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from balans_edge import __version__
from balans_edge.config import Config, load_config
from balans_edge.core.redact import RedactingFilter, redact_url
from balans_edge.core.storage.migrations import MigrationError
from balans_edge.plugin_manager import PluginError, Plugins, config_schemas, load_plugins
from balans_edge.security import assess
from balans_edge.settings import ConfigError

log = logging.getLogger("balans_edge")
T = TypeVar("T")

BEARER_ENV = "BALANS_EDGE_TOKEN"
"""Environment variable commands that talk to the running server take their bearer token from."""

CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="TOML configuration file (default: the embedded demo defaults).",
)


_loaded: Plugins | None = None


def command_group(cli: click.Group, name: str, help: str) -> click.Group:
    """The command group ``balans-edge <name>`` of a plugin, created on first use
    (so several modules of a plugin can each add their commands to it)."""
    group = cli.commands.get(name)
    if not isinstance(group, click.Group):
        group = click.Group(name, help=help)
        cli.add_command(group)
    return group


def plugins_once() -> Plugins:
    """The plugins of this process, loaded once (import failures are reported once)."""
    global _loaded
    if _loaded is None:
        _loaded = load_plugins()
    return _loaded


def prepare(config_path: Path | None) -> tuple[Plugins, Config]:
    """Plugins and validated configuration, or a clear message and exit 2."""
    plugins = plugins_once()
    try:
        config = load_config(config_path, config_schemas(plugins))
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"config error: {problem}", err=True)
        raise SystemExit(2) from None
    return plugins, config


def parse_time_option(raw: str, option: str) -> int:
    """A time given on the command line: ISO-8601 (UTC when it has no offset) or
    unix seconds, in the valid range (``core.times``); a usage error naming the
    option otherwise."""
    from balans_edge.core.times import parse_time

    try:
        return parse_time(raw)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A click callback for an optional time option (``parse_time_option``)."""
    return None if value is None else parse_time_option(value, param.opts[0])


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())  # no credential reaches the log, whoever logs it
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())


async def with_storage(config: Config, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn`` with the configured storage open: core's and the plugins' tables
    migrated first (the plugins ``prepare`` loaded), as the server would."""
    from balans_edge.core.storage import open_storage
    from balans_edge.plugin_migrations import plugin_migrations

    storage = open_storage(config.storage.url)
    try:
        await storage.open(migrations=plugin_migrations(plugins_once(), config.plugin_flags))
    except MigrationError as exc:  # a database newer than this software: say so, no traceback
        raise click.ClickException(str(exc)) from None
    try:
        return await fn(storage)
    finally:
        await storage.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="balans-edge")
def cli() -> None:
    """balans-edge: edge server for utility metering (DMesh concentrators,
    meter registry, balances, losses, SCADA)."""


@cli.command()
@CONFIG_OPTION
@click.option("--host", default=None, help="Override [server] host.")
@click.option("--port", type=int, default=None, help="Override [server] port (0: any free port).")
def run(config_path: Path | None, host: str | None, port: int | None) -> None:
    """Run the server until SIGINT or SIGTERM."""
    import dataclasses

    from balans_edge.server import Server, StartupError

    plugins, config = prepare(config_path)
    if host is not None or port is not None:
        server_section = dataclasses.replace(
            config.server, host=host or config.server.host, port=config.server.port if port is None else port
        )
        config = dataclasses.replace(config, server=server_section)
    setup_logging(config.server.log_level)
    assessment = assess(config)
    for risk in assessment.risks:
        log.warning("insecure configuration: %s", risk)
    if assessment.refused:
        log.error("start-up refused: %s", assessment.refusal())
        raise SystemExit(2)

    async def main() -> int:
        server = Server(config, plugins)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
        except PluginError as exc:
            log.error("start-up failed: %s", exc)
            return 3
        except (StartupError, MigrationError) as exc:
            log.error("start-up failed: %s", exc)
            return 2
        except OSError as exc:
            log.error("start-up failed: %s", exc)
            return 4
        log.info("balans-edge %s running (%s); config %s", __version__, config.site.name, config.source)
        if server.http is not None:
            # One line a supervisor or a test can wait for.
            print(f"listening on http://{server.http.host}:{server.http.port}", flush=True)
        await stop.wait()
        log.info("shutting down")
        await server.stop()
        log.info("stopped cleanly")
        return 0

    raise SystemExit(asyncio.run(main()))


@cli.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config(file: Path) -> None:
    """Validate a configuration file; exit non-zero on any error, or on risks
    (weak tokens, anonymous access) on an address other than loopback."""
    _, config = prepare(file)
    assessment = assess(config)
    for risk in assessment.risks:
        click.echo(f"warning: {risk}", err=True)
    if assessment.refused:
        click.echo(f"error: {assessment.refusal()}", err=True)
        raise SystemExit(2)
    click.echo(f"{file}: OK (site {config.site.name!r}, storage {redact_url(config.storage.url)})")


@cli.group("config")
def config_group() -> None:
    """The configuration file's reference."""


@config_group.command("docs")
@click.option("--write", "write_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the text to this file (docs/config.md) instead of printing it.")
def config_docs(write_path: Path | None) -> None:
    """Every key of the configuration (core sections and built-in plugins) with its
    type, default, range and meaning, as Markdown: the text of docs/config.md."""
    from balans_edge.config_docs import render

    text = render(config_schemas(plugins_once()))
    if write_path is None:
        click.echo(text, nl=False)
    else:
        write_path.write_text(text, encoding="utf-8")
        click.echo(f"wrote {write_path}")


@cli.command("plugins")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_command(config_path: Path | None, as_json: bool) -> None:
    """List plugins, their hooks and their state."""
    plugins, config = prepare(config_path)
    for name, flags in config.plugin_flags.items():
        if not flags.enabled and name in plugins.info:
            plugins.disable(name)
    listing = plugins.listing()
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for p in listing:
        click.echo(f"{p['name']:<16} {p['state']:<9} {p['source']}  ({p['module']})")
        if p["hooks"]:
            click.echo(f"{'':<16} hooks: {', '.join(p['hooks'])}")
        if p["error"]:
            click.echo(f"{'':<16} error: {p['error']}")


from balans_edge.analytics_cli import analytics  # noqa: E402 - needs the helpers above
from balans_edge.balance_cli import balance  # noqa: E402 - needs the helpers above
from balans_edge.commands_cli import commands  # noqa: E402 - needs the helpers above
from balans_edge.registry_cli import registry  # noqa: E402 - needs the helpers above
from balans_edge.token_cli import token  # noqa: E402 - needs the helpers above

cli.add_command(registry)
cli.add_command(token)
cli.add_command(balance)
cli.add_command(analytics)
cli.add_command(commands)


def main() -> None:
    plugins = plugins_once()
    _, errors = plugins.call("register_commands", cli=cli)
    for error in errors:
        plugins.fail(error.plugin, error.original, required=False)
    cli()


if __name__ == "__main__":
    main()
