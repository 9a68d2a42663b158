"""An example balans-edge plugin that implements every hook.

A plugin is a class: the server instantiates it, gives it its context
(``bind``) and calls its hook methods; everything it uses of the server comes
through that context (``balans_edge.core.context``). It keeps a table of its
own (``batches.py``: its migrations, its repository)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any

import click
from msgspec import Meta, Struct

from balans_edge import hookimpl
from balans_edge.core.components import Alarm, Command, CommandOutcome, Finding, Severity
from balans_edge.core.context import Plugin
from balans_edge.core.detection import DetectionRun
from balans_edge.core.storage.migrations import MigrationSet
from balans_edge.routes import Route
from balans_edge.routes import json as json_response
from balans_edge.settings import setting
from balans_edge_example.batches import MIGRATIONS, BatchLog

STATE: dict[str, Any] = {"readings": 0, "findings": [], "alarms": [], "commands": [], "notified": []}
"""What the observer hooks saw; tests read it."""


@dataclass(frozen=True)
class ExampleConfig:
    """``[plugins.example]``: what the example plugin says and how often it ticks."""

    greeting: Annotated[str, setting(doc="what GET /api/v1/example/summary says")] = "hello"
    interval_s: Annotated[float, setting(range=(0.01, 3600), doc="seconds between heartbeat ticks")] = 1.0
    alarm_file: Annotated[str, setting(doc="a file each alarm is appended to as a JSON line (empty: none)")] = ""


class Summary(Struct):
    """What ``GET /api/v1/example/summary`` answers (its schema is in the OpenAPI document)."""

    greeting: str
    meters: int
    readings_seen: int


class BatchesQuery(Struct):
    limit: Annotated[int, Meta(ge=1, le=1000, description="newest batches shown")] = 100


class Batches(Struct):
    """What ``GET /api/v1/example/batches`` answers: totals and the newest batches."""

    batches: int
    readings: int
    recent: list[dict[str, Any]]


class Heartbeat:
    name = "example-heartbeat"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class QuarantineDetector:
    """Findings for modules that report but are not in the registry."""

    name = "example-quarantine"

    async def detect(self, run: DetectionRun) -> list[Finding]:
        rows = await run.queries.quarantine(1000)
        modules = sorted({r["module_id"] for r in rows})
        return [
            Finding(self.name, f"module:{m}", "unregistered_module", f"module {m} reports but is not registered",
                    Severity.INFO)
            for m in modules
        ]


class FileNotifier:
    name = "example-notifier"

    def __init__(self, path: str) -> None:
        self.path = path

    async def notify(self, alarm: Alarm) -> None:
        STATE["notified"].append(alarm.message)
        if self.path:
            line = json.dumps({"source": alarm.source, "message": alarm.message}) + "\n"
            await asyncio.to_thread(_append, self.path, line)


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)


class ExampleActuator:
    name = "example-actuator"

    def handles(self, command: Command) -> bool:
        return command.target.startswith("example:")

    async def execute(self, command: Command) -> CommandOutcome:
        return CommandOutcome(ok=True, detail=f"{command.code} on {command.target}")


class CountingExporter:
    name = "example-exporter"

    def __init__(self) -> None:
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    def status(self) -> dict[str, Any]:
        return {"running": self.running, "readings_seen": STATE["readings"]}


class ExamplePlugin(Plugin):
    config: ExampleConfig

    @hookimpl
    def config_schema(self) -> dict[str, type]:
        return {"example": ExampleConfig}

    @hookimpl
    def register_components(self) -> list:
        self.heartbeat = Heartbeat(self.config.interval_s)
        return [self.heartbeat]

    @hookimpl
    def register_routes(self) -> list[Route]:
        context = self.context

        async def summary(request: Any) -> Any:
            meters = await context.registry.registry_list("meters")
            return json_response({"greeting": context.config.greeting, "meters": len(meters),
                                  "readings_seen": STATE["readings"]})

        async def batches(request: Any, query: BatchesQuery) -> Any:
            log = BatchLog(context.database)
            recent = await log.recent(query.limit)  # first: the totals, read after, count what it shows
            return json_response({**await log.totals(), "recent": recent})

        return [Route("GET", "/api/v1/example/summary", summary, "Example plugin summary", response=Summary,
                      tags=("example",)),
                Route("GET", "/api/v1/example/batches", batches, "Readings batches the example plugin stored in its "
                      "own table", query=BatchesQuery, response=Batches, tags=("example",))]

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        @cli.command("example-hello")
        @click.option("--name", default="world")
        def hello(name: str) -> None:
            """Say hello (a command contributed by the example plugin)."""
            click.echo(f"hello, {name}, from the example plugin")

    @hookimpl
    def register_detectors(self) -> list:
        return [QuarantineDetector()]

    @hookimpl
    def register_actuators(self) -> list:
        return [ExampleActuator()]

    @hookimpl
    def register_notifiers(self) -> list:
        return [FileNotifier(self.config.alarm_file)]

    @hookimpl
    def register_exporters(self) -> list:
        return [CountingExporter()]

    @hookimpl
    def register_migrations(self) -> list[MigrationSet]:
        return [MIGRATIONS]

    @hookimpl
    async def observe_readings(self, event: Any) -> None:
        STATE["readings"] += event.count
        await BatchLog(self.context.database).record(int(time.time()), event.count, len(event.meters), event.t_min,
                                                     event.t_max)

    @hookimpl
    async def observe_findings(self, finding: Finding) -> None:
        STATE["findings"].append(finding)

    @hookimpl
    def observe_alarms(self, alarm: Alarm) -> None:
        STATE["alarms"].append(alarm)

    @hookimpl
    def observe_commands(self, command: Command) -> None:
        STATE["commands"].append(command)
