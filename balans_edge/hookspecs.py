"""Every hook a balans-edge plugin can implement.

A plugin is a plain module (or object) with functions decorated by
``balans_edge.hookimpl`` whose names match the hooks below. Built-in plugins
(DMesh, Modbus, OPC UA, export) use exactly this interface; third-party
plugins are found through the ``balans_edge`` entry-point group. Each hook is
documented in docs/plugins.md; a test fails when one is not.

Hooks that *register* something are called once at start-up and return a list
(or ``None``). Hooks that *observe* are called after the fact, off the
device's acknowledgement path; they may be plain functions or coroutines, and
an exception in one is logged and counted against its plugin without stopping
anything else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from balans_edge.core.bus import ReadingsCommitted
    from balans_edge.core.components import Actuator, Alarm, Command, Component, Detector, Exporter, Finding, Notifier
    from balans_edge.core.storage.migrations import MigrationSet
    from balans_edge.routes import Route
    from balans_edge.server import Server

hookspec = pluggy.HookspecMarker("balans_edge")
hookimpl = pluggy.HookimplMarker("balans_edge")


@hookspec
def config_schema() -> dict[str, type] | None:
    """Describe the plugin's configuration tables.

    Return ``{"name": Dataclass}``: the ``[plugins.name]`` table of the
    configuration file is validated into an instance of ``Dataclass`` (fields
    with defaults; ``balans_edge.settings.setting`` adds ranges and secrets),
    available at start-up as ``server.plugin_config("name")``. The keys
    ``enabled`` and ``required`` are reserved for every plugin.
    """


@hookspec
def register_components(server: Server) -> list[Component] | None:
    """Contribute long-running components: drivers, bridges, schedulers.

    Each component has a ``name`` and async ``start()`` / ``stop()``. They are
    started in registration order after storage is open and stopped in reverse
    order before it closes. A component whose ``start`` raises disables its
    plugin (or aborts start-up if the plugin is required).
    """


@hookspec
def register_routes(server: Server) -> list[Route] | None:
    """Contribute HTTP API routes (``balans_edge.routes.Route``).

    A route names its method, path, handler, the role a caller needs and a
    summary for the OpenAPI document. Handlers receive the Sanic request and
    the path parameters and return a response (``balans_edge.routes.json``).
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``balans-edge`` command line (a click group)."""


@hookspec
def register_detectors(server: Server) -> list[Detector] | None:
    """Contribute loss and fault detectors.

    A detector has a ``name`` and ``async detect(server) -> list[Finding]``;
    the analytics scheduler runs them and each finding is stored and passed to
    ``observe_findings``.
    """


@hookspec
def register_actuators(server: Server) -> list[Actuator] | None:
    """Contribute actuators that execute valve, relay and pump commands.

    An actuator has a ``name``, ``handles(command) -> bool`` (plain or async)
    and ``async execute(command) -> CommandOutcome``, and may have
    ``owns(target) -> bool``: a command for an owned target goes only to its
    owners (never to a generic actuator that takes any valve command). Commands reach it only
    through the core actuation service, which audits who asked, when, why and
    the outcome.
    """


@hookspec
def register_notifiers(server: Server) -> list[Notifier] | None:
    """Contribute notifiers (mail, SMS, messengers) that deliver alarms.

    A notifier has a ``name`` and ``async notify(alarm)``; a failing notifier
    is logged and does not keep the alarm from the others.
    """


@hookspec
def register_exporters(server: Server) -> list[Exporter] | None:
    """Contribute exporters that ship data to other systems.

    An exporter is a component (``start``/``stop``) with ``status() -> dict``
    (queue depth, last error, ...) which appears under ``exporters`` in
    ``GET /api/v1/health``.
    """


@hookspec
def observe_readings(server: Server, event: ReadingsCommitted) -> Any:
    """Called after a batch of readings is durably committed."""


@hookspec
def observe_findings(server: Server, finding: Finding) -> Any:
    """Called after a detector's finding is stored."""


@hookspec
def observe_alarms(server: Server, alarm: Alarm) -> Any:
    """Called when an alarm is raised, after the notifiers were asked to deliver it."""


@hookspec
def observe_commands(server: Server, command: Command) -> Any:
    """Called when a command was executed (or refused) by the actuation service,
    after its audit record is stored."""


@hookspec
def register_migrations() -> list[MigrationSet] | None:
    """Contribute the plugin's own tables: the migrations that create and change them.

    Return ``[MigrationSet(owner, package)]`` (``balans_edge.core.storage.migrations``):
    ``<package>/migrations/<dialect>/`` holds ``NNNN_name.sql`` files numbered from
    0001 without gaps, one sub-folder per SQL dialect (``sqlite``; ``postgresql``
    with that backend). Whenever storage opens the database (the server at
    start-up, every command that opens it) it applies core's migrations, then
    every plugin's in plugin order, each file with its version bump in one
    transaction. A database whose tables of this owner are newer than the plugin
    is refused, the error naming the owner. Called before storage opens, with no
    arguments; a plugin disabled in the configuration is not asked, and one whose
    hook raises is disabled. Name tables after the owner (``example_notes``) and
    never edit a released migration: add the next one.
    """
