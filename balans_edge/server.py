"""The server: storage, ingest, plugins' components and the HTTP API in one loop.

Start order: storage, core services (intervals), plugin contributions and
components in registration order, observers, HTTP. Stop order is the reverse,
so nothing writes to storage after it closed and every acknowledged batch is
on disk before the process exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any
from zoneinfo import ZoneInfo

from balans_edge import __version__
from balans_edge.config import Config
from balans_edge.core.actuation import ActuationService
from balans_edge.core.balance_worker import BalanceWorker
from balans_edge.core.bus import EventBus, ReadingsCommitted, RegistryChanged, Subscription
from balans_edge.core.calculated import TagSources
from balans_edge.core.components import Alarm, Command, Component, Exporter, Finding
from balans_edge.core.context import PluginContext, Site
from balans_edge.core.detection import DetectionService
from balans_edge.core.ingest import Ingest
from balans_edge.core.intervals import IntervalWorker
from balans_edge.core.quarantine import QuarantineRetention
from balans_edge.core.storage import SqlGateway, Storage, open_storage
from balans_edge.core.storage.registry_repository import RegistryReader
from balans_edge.core.storage.views import Queries, RegistryEditor, view_of
from balans_edge.core.tasks import cancel, on_failure
from balans_edge.http import Http
from balans_edge.plugin_manager import PluginError, Plugins, summarize
from balans_edge.plugin_migrations import owned_migrations
from balans_edge.routes import Route

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The configuration cannot be put into effect (e.g. its groups do not fit the registry)."""


class Server:
    def __init__(self, config: Config, plugins: Plugins, storage: Storage | None = None) -> None:
        self.config = config
        self.plugins = plugins
        self.tz = ZoneInfo(config.site.timezone)
        self.bus = EventBus()
        self.storage = storage or open_storage(config.storage.url)
        self.storage.on_registry_change(lambda: self.bus.publish(RegistryChanged()))
        self.ingest = Ingest(self.storage, config.ingest, self.bus)
        self.intervals = IntervalWorker(self.storage, config.intervals, self.bus)
        self.tags = TagSources()
        """Tags' samples and ids through the running tag clients, for calculated inputs."""
        self.balance = BalanceWorker(self.storage, config.balance, self.bus, self.tags)
        self.quarantine = QuarantineRetention(self.storage, config.ingest)
        self.actuation = ActuationService(self.storage, observer=self._observe_command)
        self.queries = view_of(Queries, self.storage)
        """What plugins and detectors read: core's data, read-only."""
        self.detection = DetectionService(self.queries, self.tz, settle=self._settle, report=self.report_finding,
                                          failed=self._count_error, tags=self.tags)
        self.site = Site(config.site.name, config.site.timezone, config.balance.completeness_threshold,
                         config.intervals.tolerance_s)
        self.components: list[tuple[str, Component]] = []
        self.notifiers: list[tuple[str, Any]] = []
        self.exporters: list[tuple[str, Exporter]] = []
        self.routes: list[Route] = []
        self._actuators: list[tuple[str, Any]] = []
        self._plugin_routes: list[tuple[str, Route]] = []
        self.http: Http | None = None
        self.started_at: float | None = None
        self._observer_tasks: list[asyncio.Task[None]] = []
        self._started: list[tuple[str, Component]] = []
        self.faults: dict[str, dict[str, str]] = {}
        """Plugin -> its running components at fault now -> the error (see component_fault)."""
        self.owners: dict[str, str] = {}
        """Owner of tables -> the plugin whose migrations it is (``register_migrations``)."""
        self._stopping = False

    def context(self, name: str) -> PluginContext:
        """What the plugin ``name`` may use of the server (``core.context``)."""
        return PluginContext(name=name, config=self.config.plugins.get(name), site=self.site,
                             registry=view_of(RegistryReader, self.storage), queries=self.queries,
                             registry_editor=RegistryEditor(self.storage, f"plugin:{name}"),
                             database=view_of(SqlGateway, self.storage), ingest=self.ingest,
                             bus=self.bus, commands=self.actuation, journal=self,
                             detection=self.detection, health=_Health(self, name), tag_sources=self.tags,
                             api_users=tuple(self.config.api.users))

    def required(self, name: str) -> bool:
        flags = self.config.plugin_flags.get(name)
        return bool(flags and flags.required)

    # contributions ----------------------------------------------------------

    def _apply_flags(self) -> None:
        for name, flags in self.config.plugin_flags.items():
            info = self.plugins.info.get(name)
            if info is None:
                if flags.required:
                    raise PluginError(f"required plugin {name} is not installed")
                continue
            if info.state == "failed" and flags.required:
                raise PluginError(f"required plugin {name} failed to load: {info.error}")
            if not flags.enabled:
                self.plugins.disable(name)

    def _bind(self) -> None:
        """Give every plugin object its context before any register hook."""
        for name, plugin in self.plugins.pm.list_name_plugin():
            bind = getattr(plugin, "bind", None)
            if name in self.plugins.info and callable(bind):
                try:
                    bind(self.context(name))
                except Exception as exc:
                    self.plugins.fail(name, exc, self.required(name))

    def _collect(self, hook: str) -> list[tuple[str, Any]]:
        """Contributions of every plugin; a plugin whose hook raises is disabled."""
        contributions, errors = self.plugins.call(hook)
        for error in errors:
            self.plugins.fail(error.plugin, error.original, self.required(error.plugin))
        failed = {e.plugin for e in errors}
        # pluggy calls the last registered first: reversed, plugins registered
        # first (the built-ins) contribute first, so their components start first.
        return [(name, item) for name, items in reversed(contributions) if name not in failed
                for item in (items or [])]

    def collect_contributions(self) -> None:
        self._apply_flags()
        self._bind()
        self.components = self._collect("register_components")
        self.detection.detectors = self._collect("register_detectors")
        self.notifiers = self._collect("register_notifiers")
        self.exporters = self._collect("register_exporters")
        self._actuators = self._collect("register_actuators")
        self._plugin_routes = self._collect("register_routes")

    def _put_in_service(self) -> None:
        """Enable what the plugins contributed, except the contributions of a plugin
        that failed after contributing (a later hook raised, or a component's start)."""
        failed = {name for name, info in self.plugins.info.items()
                  if info.state == "failed" and not self.faults.get(name)}  # a running one's fault disables nothing

        def alive(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
            return [(n, x) for n, x in items if n not in failed]

        self.components, self.detection.detectors = alive(self.components), alive(self.detection.detectors)
        self.notifiers, self.exporters = alive(self.notifiers), alive(self.exporters)
        for _, actuator in alive(self._actuators):
            self.actuation.add(actuator)
        self.routes = self._builtin_routes() + [r for _, r in alive(self._plugin_routes)]

    def _builtin_routes(self) -> list[Route]:
        from balans_edge.api import routes

        return routes(self)

    # lifecycle --------------------------------------------------------------

    async def start(self, *, http: bool = True) -> None:
        self._stopping = False
        owned = owned_migrations(self.plugins, self.config.plugin_flags)
        self.owners = {s.owner: name for name, s in owned}
        await self.storage.open(migrations=[s for _, s in owned])
        try:
            await self.actuation.settle_interrupted()
            self.collect_contributions()
            await self._drop_idle_triggers()
            await self.intervals.start()
            await self.balance.start()
            await self.quarantine.start()
            # Subscribe before components start so observers see their first readings.
            self._start_observers()
            await self._start_components()
            await self._drop_idle_triggers()  # of a plugin whose component failed to start
            # After the components: a plugin may create the meters a group's inputs
            # name (a PLC's totaliser); failing here still stops everything started.
            await self._apply_config_groups()
            self._put_in_service()
            if http:
                self.http = Http(self.routes, self.config.api, self.config.server.host, self.config.server.port)
                await self.http.start()
        except BaseException:
            await self.stop()
            raise
        self.started_at = time.time()
        for info in self.plugins.info.values():
            if info.state == "loaded":
                info.state = "started"

    async def _drop_idle_triggers(self) -> None:
        """Drop the triggers of owners whose plugin does not run this time (disabled,
        not installed, failed): a plugin that fills its tables from core's writes
        through triggers (``<owner>__<name>``, docs/storage.md) is not there to
        read them, and a trigger that refuses a write when its table is full
        would refuse the devices' readings. The plugin creates them again when it
        runs; what they filled is kept. Before the components start (nothing is
        ingested yet) and again after (a component that failed to start)."""
        def runs(name: str) -> bool:
            info = self.plugins.info.get(name)  # a running component's fault stops nothing
            return info is not None and (info.state in ("loaded", "started") or bool(self.faults.get(name)))

        running = [owner for owner, name in self.owners.items() if runs(name)]
        dropped = await self.storage.drop_owner_triggers(running)
        if dropped:
            log.warning("dropped the triggers %s: their owners' plugins do not run, so nothing is collected for "
                        "them until they do (what was collected is kept)", ", ".join(dropped))

    async def _apply_config_groups(self) -> None:
        """Write the configuration's groups to the registry, checked like an import:
        on any problem start-up fails and nothing is written."""
        if not self.config.groups:
            return
        from balans_edge.core.registry import RegistryError, validate_all

        try:
            await validate_all(self.storage, [(g, f"{self.config.source}: [[groups]] {g.group_id}")
                                              for g in self.config.groups], self.tags.known())
        except RegistryError as exc:
            raise StartupError(f"configured groups refused, nothing written:\n{exc}") from None
        await self.storage.registry_apply({"groups": list(self.config.groups)}, who="config")

    async def _start_components(self) -> None:
        plugin_components = self.components + [(n, e) for n, e in self.exporters]
        for name, component in plugin_components:
            if self.plugins.info.get(name) and self.plugins.info[name].state == "failed":
                continue
            try:
                await component.start()
            except Exception as exc:
                await self._stop_plugin(name)
                self.faults.pop(name, None)
                self.plugins.fail(name, exc, self.required(name))
                continue
            self._started.append((name, component))
            log.info("started %s (%s)", getattr(component, "name", component), name)

    async def _stop_plugin(self, name: str) -> None:
        for pname, component in reversed([c for c in self._started if c[0] == name]):
            await self._stop_component(pname, component)
        self._started = [c for c in self._started if c[0] != name]

    async def _stop_component(self, name: str, component: Component) -> None:
        try:
            await component.stop()
        except Exception:
            log.exception("stopping %s (%s) failed", getattr(component, "name", component), name)

    async def stop(self) -> None:
        """Stop in reverse order; storage closes last, after every write is committed."""
        self._stopping = True  # a component's task ending now is no fault
        if self.http is not None:
            await self.http.stop(self.config.server.shutdown_timeout_s)
            self.http = None
        while self._started:
            name, component = self._started.pop()
            await self._stop_component(name, component)
        for task in self._observer_tasks:
            await cancel(task)
        self._observer_tasks = []
        await self.quarantine.stop()
        await self.balance.stop()
        await self.intervals.stop()
        await self.storage.close()

    # faults of running components --------------------------------------------

    def supervise(self, component: Component, task: asyncio.Task) -> asyncio.Task:
        """Watch a background task of a component: one that ends with an exception
        (not cancelled) is a lasting fault of the component (``component_fault``).
        Components start their long-running loops through this."""

        def died(exc: BaseException) -> None:
            if not self._stopping:
                log.error("%s: task %s ended", getattr(component, "name", component), task.get_name(),
                          exc_info=exc)
                self.component_fault(component, exc)

        return on_failure(task, died)

    def component_fault(self, component: Component, error: BaseException | None) -> None:
        """A running component reports that its work fails (``error``; e.g. every
        refresh of a SCADA bridge) or works again (None). While one of its
        components is at fault, a plugin's state is ``failed`` with the error and
        /health says ``degraded``; the component keeps running (a device that
        only reconnects is not at fault)."""
        name = next((n for n, c in (*self.components, *self.exporters) if c is component), None)
        info = self.plugins.info.get(name or "")
        if name is None or info is None or self._stopping or info.state not in ("loaded", "started", "failed"):
            return
        faults = self.faults.setdefault(name, {})
        label = str(getattr(component, "name", type(component).__name__))
        if error is not None:
            faults[label] = summarize(error)
        elif faults.pop(label, None) is not None:
            log.info("%s (%s) works again", label, name)
        else:
            return
        if faults:
            info.state, info.error = "failed", "; ".join(f"{c}: {e}" for c, e in faults.items())
        elif info.state == "failed":
            info.state, info.error = "started" if self.started_at else "loaded", None

    # observers --------------------------------------------------------------

    def _start_observers(self) -> None:
        """A subscription and a task per plugin that observes readings: a plugin whose
        observer is slow or hangs loses its own oldest events (counted under ``bus``
        in /health), never another plugin's, and never delays an acknowledgement."""
        for name in self.plugins.implementers("observe_readings"):
            sub = self.bus.subscribe(ReadingsCommitted, maxsize=1000, policy="drop_oldest", name=f"observer:{name}")
            self._observer_tasks.append(asyncio.create_task(self._observe_readings(name, sub),
                                                            name=f"observe-readings:{name}"))

    async def _observe_readings(self, plugin: str, sub: Subscription) -> None:
        try:
            async for event in sub:
                await self.plugins.notify("observe_readings", only=plugin, event=event)
        finally:
            sub.close()

    async def _observe_command(self, command: Command) -> None:
        await self.plugins.notify("observe_commands", command=command)

    async def report_finding(self, finding: Finding) -> Finding:
        """Store a finding once per event; raise an alarm and tell the observers
        only when it is new.

        Detectors report what they see on every run; a report that continues
        the event of an open or acknowledged finding updates it (seen again,
        newest estimate, its end moves on), one of a resolved event or within a
        false alarm's mute is dropped, and an event that starts after the last
        one ended is a new finding, all in the data's time
        (``core.findings.match``). So notifiers, SCADA bridges and
        ``observe_findings`` hear about each event once, not once per run, and
        a leak that comes back months later raises its own alarm. The returned
        finding carries the id of the stored one either way.
        """
        record = dataclasses.asdict(finding)
        record["t"] = finding.t or int(time.time())
        record["severity"] = str(finding.severity)
        finding_id, new = await self.storage.record_finding(record)
        finding = dataclasses.replace(finding, t=record["t"], id=finding_id)
        if new:
            await self.plugins.notify("observe_findings", finding=finding)
            await self.raise_alarm(_finding_alarm(finding))
        return finding

    async def run_detectors(self) -> list[Finding]:
        """Run every detector once over the recent window (``DetectionService.run``)."""
        return await self.detection.run(settle=False)

    async def _settle(self) -> None:
        await self.intervals.process()
        await self.balance.process()

    def _count_error(self, plugin: str) -> None:
        if plugin in self.plugins.info:
            self.plugins.info[plugin].errors += 1

    async def raise_alarm(self, alarm: Alarm) -> Alarm:
        """Store an alarm, hand it to every notifier, then to the observers."""
        record = dataclasses.asdict(alarm)
        record["t"] = alarm.t or int(time.time())
        record["severity"] = str(alarm.severity)
        alarm = dataclasses.replace(alarm, t=record["t"], id=await self.storage.journal_append("alarms", record))
        for name, notifier in self.notifiers:
            try:
                await notifier.notify(alarm)
            except Exception:
                log.exception("notifier %s (%s) failed", getattr(notifier, "name", notifier), name)
                self._count_error(name)
        await self.plugins.notify("observe_alarms", alarm=alarm)
        return alarm

    # health -----------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        pending = await self.storage.take_dirty(1)
        balance_pending = await self.storage.take_balance_dirty(1)
        return {
            "status": "degraded" if any(i.state == "failed" for i in self.plugins.info.values()) else "ok",
            "version": __version__,
            "site": self.config.site.name,
            "uptime_s": round(time.time() - self.started_at, 1) if self.started_at else 0,
            "storage": {"schema_version": await self.storage.schema_version(), "intervals_pending": bool(pending),
                        "balance_pending": bool(balance_pending)},
            "ingest": self.ingest.totals.as_dict(),
            "plugins": {n: i.state for n, i in sorted(self.plugins.info.items())},
            "exporters": {getattr(e, "name", n): e.status() for n, e in self.exporters},
            "bus": self.bus.stats(),
        }


class _Health:
    """A plugin's view of the server's health (``core.context.Health``)."""

    def __init__(self, server: Server, plugin: str) -> None:
        self._server = server
        self._plugin = plugin

    @property
    def started_at(self) -> float | None:
        return self._server.started_at

    def supervise(self, component: Component, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        return self._server.supervise(component, task)

    def fault(self, component: Component, error: BaseException | None) -> None:
        self._server.component_fault(component, error)

    def plugin_states(self) -> dict[str, str]:
        return {n: i.state for n, i in self._server.plugins.info.items()}


def _finding_alarm(finding: Finding) -> Alarm:
    """The alarm that announces a new finding; its data lets a notifier or a
    SCADA bridge link back to the finding (``GET /api/v1/findings/{id}``)."""
    return Alarm(
        source=finding.detector,
        message=finding.message,
        severity=finding.severity,
        t=finding.t,
        data={"finding_id": finding.id, "subject": finding.subject, "kind": finding.kind,
              "group_id": finding.data.get("group_id")},
    )
