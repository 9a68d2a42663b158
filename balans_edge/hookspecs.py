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
    from balans_edge.core.storage.migrations import MigrationSet
    from balans_edge.routes import Route

hookspec = pluggy.HookspecMarker("balans_edge")
hookimpl = pluggy.HookimplMarker("balans_edge")


@hookspec
def config_schema() -> dict[str, type] | None:
    """Describe the plugin's configuration tables.

    - **Returns:** `{"NAME": Dataclass}` (or `None`); a plugin may declare more
      than one table.
    - **When:** before the configuration file is read, by `balans-edge run`,
      `check-config` and `plugins`. The `[plugins.NAME]` table is validated into
      an instance of the dataclass (defaults when the table is absent), which the
      plugin gets as `context.config`. The keys `enabled` and `required` are
      reserved for every plugin.

    ```python
    @dataclass(frozen=True)
    class ExampleConfig:
        greeting: Annotated[str, setting(doc="what it says")] = "hello"
        interval_s: Annotated[float, setting(range=(0.01, 3600), doc="how often")] = 1.0


    class ExamplePlugin(Plugin):
        @hookimpl
        def config_schema(self):
            return {"example": ExampleConfig}
    ```
    """


@hookspec
def register_components() -> list[Component] | None:
    """Contribute long-running components: drivers, bridges, schedulers.

    - **Returns:** a list of `Component`s: objects with a `name` and
      `async start()` / `async stop()`.
    - **When:** once at start-up, after storage is open. Components start in the
      order their plugins registered (built-in plugins first; pluggy calls the
      last registered first, and the server reverses that) and stop in reverse
      order before storage closes. `start` returns once the component runs: a
      loop runs as a task started through `context.health.supervise(component,
      task)`, so a task that dies marks the plugin failed. A `start` that raises
      fails the plugin (or start-up, when the plugin is required).

    ```python
    class Heartbeat:
        name = "example-heartbeat"

        def __init__(self, context):
            self.context = context

        async def start(self):
            self._task = self.context.health.supervise(self, asyncio.create_task(self._run()))

        async def stop(self):
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


    class ExamplePlugin(Plugin):
        @hookimpl
        def register_components(self):
            return [Heartbeat(self.context)]
    ```
    """


@hookspec
def register_routes() -> list[Route] | None:
    """Contribute HTTP API routes.

    - **Returns:** a list of `balans_edge.routes.Route(method, path, handler,
      summary, role="viewer", params=(), query=None, body=None, response=None,
      tags=(), responses={})`. `path` uses Sanic syntax
      (`/api/v1/things/<thing_id>`), each path parameter declared as a
      `Param(name, type="string"|"integer", description, minimum, maximum)`;
      `role` is the least role a caller needs (`viewer`, `operator`, `admin`, or
      `None` for anyone). `query`, `body` and `response` are msgspec Structs
      (`body` may be `Thing | None` when it can be left out; `response` may be
      `{status: Struct}`); the shared value types are in `balans_edge.http_schema`
      (`Time`, `Text`, `Reason`, `Id`, `Month`, `Period`, `StepPeriod`).
    - **When:** once at start-up; the routes are mounted behind the same
      authentication and JSON errors as the built-in API and appear in
      `GET /api/v1/openapi.json` with the schemas of their query, body and
      answer. The HTTP layer decodes the request before the handler runs (a
      refusal is 400 naming the parameter or the key path, e.g.
      `readings[3].ts: expected an integer ...`); path parameters arrive
      percent-decoded and NFC, an integer one with both bounds as an int. A
      handler receives the Sanic request, the path parameters and `query=` /
      `body=` (the decoded Structs, each only when declared) and returns
      `balans_edge.routes.json(...)`; raising `balans_edge.routes.ApiError(status,
      code, message)` gives a JSON error.

    ```python
    class Summary(Struct):
        meters: int


    class SummaryQuery(Struct):
        resource: str | None = None


    class ExamplePlugin(Plugin):
        @hookimpl
        def register_routes(self):
            registry = self.context.registry

            async def summary(request, query: SummaryQuery):
                meters = await registry.registry_list("meters")
                wanted = [m for m in meters if query.resource is None or m.resource == query.resource]
                return json({"meters": len(wanted)})

            return [Route("GET", "/api/v1/example/summary", summary, "Example plugin summary",
                          query=SummaryQuery, response=Summary)]
    ```
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the `balans-edge` command line.

    - **Arguments:** `cli`, the top-level `click.Group`.
    - **Returns:** nothing; add commands with `@cli.command(...)`.
    - **When:** every time `balans-edge` starts, before the command line is
      parsed (there is no context: a command reads the configuration itself).
      A plugin whose hook raises is reported and the command line still works.

    ```python
    class ExamplePlugin(Plugin):
        @hookimpl
        def register_commands(self, cli):
            @cli.command("example-hello")
            @click.option("--name", default="world")
            def hello(name):
                click.echo(f"hello, {name}, from the example plugin")
    ```
    """


@hookspec
def register_detectors() -> list[Detector] | None:
    """Contribute loss and fault detectors.

    - **Returns:** a list of `Detector`s: objects with a `name` and
      `async detect(run) -> list[Finding]`, where `run` is a
      `balans_edge.core.detection.DetectionRun`: the run's `scope` (groups and
      hours; `scope.windows(run.queries, run.tz, run.tags)` loads each group's
      window once per run), read access to the data (`run.queries`), the
      site's `tz` and the tags' samples calculated inputs read (`run.tags`).
    - **When:** collected once at start-up; the detection service runs every
      detector (the analytics schedule, an operator's run, `context.detection.run`).
      Each `Finding(detector, subject, kind, message, severity=..., t=..., data={})`
      is stored in the `findings` journal once per event and passed to
      `observe_findings`: `t` is the data time the report is about,
      `data["start"]` / `data["end"]` (unix seconds) when the event began and
      stopped in the data, `data["rate"]` (unit per hour) and `data["volume_m3"]`
      what it measured (docs/analytics.md). A detector that raises is logged,
      counted in its plugin's `errors` and skipped.

    ```python
    class QuarantineDetector:
        name = "example-quarantine"

        async def detect(self, run):
            rows = await run.queries.quarantine(1000)
            return [Finding(self.name, f"module:{m}", "unregistered_module", f"module {m} is not registered")
                    for m in sorted({r["module_id"] for r in rows})]
    ```
    """


@hookspec
def register_actuators() -> list[Actuator] | None:
    """Contribute actuators that execute commands to devices: valves, relays and
    pumps, and the commands that reconfigure or query a device (`ping`,
    `set_interval`, `profile_request`, `firmware_push`; a `Command`'s `args` carry
    what they need).

    - **Returns:** a list of `Actuator`s: objects with a `name`,
      `handles(command) -> bool` (plain or `async`, for an actuator that looks
      the target up in the registry) and `async execute(command) -> CommandOutcome`,
      and optionally `owns(target) -> bool`: the actuator drives that target (a
      Modbus valve, a pump), so a command for it goes only to its owners and is
      refused when none of them handles its code, never falling through to a
      generic actuator.
    - **When:** collected once at start-up. An actuator is never called
      directly: `context.commands.execute(Command(target, code, requested_by,
      reason))` routes a command to its target's owner, else to the first
      actuator that handles it, writes the `commands` journal with who asked,
      when, why and the outcome (`done`, `failed`, or `refused` when no
      actuator handles it; an actuator may give its own word in
      `CommandOutcome.outcome`, as firmware pushes do with `accepted`), then
      calls `observe_commands`. An outcome a device sends later (an answer after
      the command timed out) is recorded with `context.commands.settle(command_id,
      outcome, detail)`. Only the service writes the `commands` journal.

    ```python
    class ExampleActuator:
        name = "example-actuator"

        def handles(self, command):
            return command.target.startswith("example:")

        async def execute(self, command):
            return CommandOutcome(ok=True, detail=f"{command.code} on {command.target}")
    ```
    """


@hookspec
def register_notifiers() -> list[Notifier] | None:
    """Contribute notifiers (mail, SMS, messengers) that deliver alarms.

    - **Returns:** a list of `Notifier`s: objects with a `name` and
      `async notify(alarm)`.
    - **When:** collected once at start-up; `context.journal.raise_alarm(Alarm(source,
      message, severity=...))` stores the alarm in the `alarms` journal and
      hands it to every notifier in turn. A notifier that raises is logged and
      counted in its plugin's `errors`; the others still get the alarm.

    ```python
    class FileNotifier:
        name = "example-notifier"

        async def notify(self, alarm):
            line = json.dumps({"source": alarm.source, "message": alarm.message})
            await asyncio.to_thread(append, "alarms.jsonl", line)
    ```
    """


@hookspec
def register_exporters() -> list[Exporter] | None:
    """Contribute exporters that ship data to other systems.

    - **Returns:** a list of `Exporter`s: components (`name`, `start`, `stop`)
      with `status() -> dict` (queue depth, last error, ...).
    - **When:** collected once at start-up and started after the plugin
      components; each exporter's `status()` appears under `exporters` (keyed
      by its `name`) in `GET /api/v1/health`.

    ```python
    class CountingExporter:
        name = "example-exporter"

        async def start(self):
            self.running = True

        async def stop(self):
            self.running = False

        def status(self):
            return {"running": self.running}
    ```
    """


@hookspec
def observe_readings(event: ReadingsCommitted) -> Any:
    """Called after a batch of readings is durably committed.

    - **Arguments:** `event`, a `balans_edge.core.bus.ReadingsCommitted` with
      `meters` (internal meter keys), `count`, `t_min` and `t_max`.
    - **Returns:** nothing (a coroutine is awaited).
    - **When:** after the commit, from the plugin's own observer task: the
      device was already acknowledged. Each plugin's events wait in a bounded
      queue of its own (`observer:NAME` under `bus` in /health) that drops the
      oldest when that plugin falls behind, so a slow observer delays no other
      plugin; the next event's `lost` says how many were dropped before it. Read
      storage for the full picture.

    ```python
    @hookimpl
    def observe_readings(self, event):
        self.readings += event.count
    ```
    """


@hookspec
def observe_findings(finding: Finding) -> Any:
    """Called after a detector's finding is stored.

    - **Arguments:** `finding`, a `balans_edge.core.components.Finding` with its
      journal `id` and time `t` filled in.
    - **Returns:** nothing (a coroutine is awaited).
    - **When:** once per event, after the finding was stored in the `findings`
      journal (a report that continues a known event updates it silently).

    ```python
    @hookimpl
    async def observe_findings(self, finding):
        await self.dispatcher.forward(finding)
    ```
    """


@hookspec
def observe_alarms(alarm: Alarm) -> Any:
    """Called when an alarm is raised, after the notifiers were asked to deliver it.

    - **Arguments:** `alarm`, a `balans_edge.core.components.Alarm` with its
      journal `id` and time `t`.
    - **Returns:** nothing (a coroutine is awaited).
    - **When:** after the alarm was stored and every notifier was called.

    ```python
    @hookimpl
    def observe_alarms(self, alarm):
        log.warning("alarm from %s: %s", alarm.source, alarm.message)
    ```
    """


@hookspec
def observe_commands(command: Command) -> Any:
    """Called when the command service executed (or refused) a command, after its
    audit record is stored.

    - **Arguments:** `command`, a `balans_edge.core.components.Command` with its
      audit `id`, `outcome` (`done`, `refused`, `failed`) and `detail`.
    - **Returns:** nothing (a coroutine is awaited).
    - **When:** at the end of `context.commands.execute`, for every command
      whatever its outcome (valves, relays and pumps, DMesh module commands and
      firmware pushes alike), and again each time `context.commands.settle`
      records an outcome that arrived later: the last call for a command id
      carries its final outcome, the one the audit shows.

    ```python
    @hookimpl
    def observe_commands(self, command):
        if command.outcome != "done":
            log.warning("command %s on %s: %s", command.code, command.target, command.detail)
    ```
    """


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
    never edit a released migration: add the next one. Plugins that share tables
    (the Modbus and OPC UA tag polling, owner ``tags``) each return the same set
    (owner, package, folder): it is applied once; a different set for an owner
    another plugin has disables the plugin.

    A plugin that fills its tables from core's writes, in their transaction,
    creates triggers on core's tables at run time (not in a migration) and
    names them ``<owner>__<name>`` (``export__readings_inserted``): whenever the
    server starts without the plugin running (disabled, not installed, failed),
    it drops them, so nothing fills tables that no one reads.
    """
