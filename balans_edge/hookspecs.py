"""Every hook a balans-edge plugin can implement.

A plugin is an object whose methods, decorated with ``balans_edge.hookimpl``,
are named after the hooks below (a plain module of such functions also works
for a plugin that needs no services). Built-in plugins (DMesh, analytics,
Modbus, OPC UA, export) use exactly this interface; third-party plugins are
found through the ``balans_edge`` entry-point group, whose value names the
plugin's class (``package.module:PluginClass``, instantiated without
arguments) or module. Each hook is documented in docs/plugins.md; a test
fails when one is not.

No hook receives the server. Before any ``register_*`` hook is called, the
server gives each plugin object its own ``PluginContext`` (``bind(context)``,
``balans_edge.core.context``): the plugin's configuration section, the site,
the core repositories, the ingest sink, the bus, the audited command service,
the journal of findings and alarms, the detection service and its health
reporting. A plugin builds its parts in ``bind`` and keeps them, so its hooks
do not depend on each other's order.

Hooks are called by pluggy, so ``tryfirst``/``trylast``, hook wrappers and
``firstresult`` behave as pluggy documents. Hooks that *register* something
are called once at start-up and return a list (or ``None``). Hooks that
*observe* are called after the fact, off the device's acknowledgement path;
they may be plain functions or coroutines. An exception in an implementation
is attributed to its plugin: in a register hook it disables the plugin (or
aborts start-up when the plugin is required), in an observer it is logged and
counted, and the other plugins' implementations still run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from balans_edge.core.bus import ReadingsCommitted
    from balans_edge.core.components import Actuator, Alarm, Command, Component, Detector, Exporter, Finding, Notifier
    from balans_edge.routes import Route

hookspec = pluggy.HookspecMarker("balans_edge")
hookimpl = pluggy.HookimplMarker("balans_edge")


@hookspec
def config_schema() -> dict[str, type] | None:
    """Describe the plugin's configuration tables.

    Return ``{"name": Dataclass}``: the ``[plugins.name]`` table of the
    configuration file is validated into an instance of ``Dataclass`` (fields
    with defaults; ``balans_edge.settings.setting`` adds ranges and secrets),
    available to the plugin as ``context.config``. The keys
    ``enabled`` and ``required`` are reserved for every plugin.
    """


@hookspec
def register_components() -> list[Component] | None:
    """Contribute long-running components: drivers, bridges, schedulers.

    Each component has a ``name`` and async ``start()`` / ``stop()``. They are
    started in registration order after storage is open and stopped in reverse
    order before it closes. A component whose ``start`` raises disables its
    plugin (or aborts start-up if the plugin is required).
    """


@hookspec
def register_routes() -> list[Route] | None:
    """Contribute HTTP API routes (``balans_edge.routes.Route``).

    A route names its method, path, handler, the role a caller needs and a
    summary for the OpenAPI document. Handlers receive the Sanic request and
    the path parameters and return a response (``balans_edge.routes.json``).
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``balans-edge`` command line (a click group)."""


@hookspec
def register_detectors() -> list[Detector] | None:
    """Contribute loss and fault detectors.

    A detector has a ``name`` and ``async detect(run) -> list[Finding]``, where
    ``run`` is a ``core.detection.DetectionRun`` (the scope of groups and hours,
    read access to the data, the site's time zone); the detection service runs
    them (on the analytics schedule or on demand) and each finding is stored
    once per event and passed to ``observe_findings``.
    """


@hookspec
def register_actuators() -> list[Actuator] | None:
    """Contribute actuators that execute valve, relay and pump commands.

    An actuator has a ``name``, ``handles(command) -> bool`` (plain or async)
    and ``async execute(command) -> CommandOutcome``, and may have
    ``owns(target) -> bool``: a command for an owned target goes only to its
    owners (never to a generic actuator that takes any valve command). Commands reach it only
    through the core actuation service, which audits who asked, when, why and
    the outcome.
    """


@hookspec
def register_notifiers() -> list[Notifier] | None:
    """Contribute notifiers (mail, SMS, messengers) that deliver alarms.

    A notifier has a ``name`` and ``async notify(alarm)``; a failing notifier
    is logged and does not keep the alarm from the others.
    """


@hookspec
def register_exporters() -> list[Exporter] | None:
    """Contribute exporters that ship data to other systems.

    An exporter is a component (``start``/``stop``) with ``status() -> dict``
    (queue depth, last error, ...) which appears under ``exporters`` in
    ``GET /api/v1/health``.
    """


@hookspec
def observe_readings(event: ReadingsCommitted) -> Any:
    """Called after a batch of readings is durably committed."""


@hookspec
def observe_findings(finding: Finding) -> Any:
    """Called after a detector's finding is stored."""


@hookspec
def observe_alarms(alarm: Alarm) -> Any:
    """Called when an alarm is raised, after the notifiers were asked to deliver it."""


@hookspec
def observe_commands(command: Command) -> Any:
    """Called when a command was executed (or refused) by the actuation service,
    after its audit record is stored."""
