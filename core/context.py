"""What a plugin sees of the server: its ``PluginContext``.

A plugin is an object (an instance of a class named by its entry point); the
server gives each plugin its own context (``Plugin.bind``) before it calls any
of the plugin's ``register_*`` hooks. The context holds the narrow services a
plugin may use and nothing else: there is no way from it to the server, to
other plugins or to their components. The built-in plugins use exactly this
contract, so it is the one a partner's plugin gets.

Services are typed by small protocols here so that core does not depend on
the shell that implements them (the server).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from balans_edge.core.actuation import ActuationService
    from balans_edge.core.bus import EventBus
    from balans_edge.core.calculated import TagSources
    from balans_edge.core.components import Alarm, Component, Finding
    from balans_edge.core.detection import DetectionService
    from balans_edge.core.ingest import Ingest
    from balans_edge.core.storage.gateway import SqlGateway
    from balans_edge.core.storage.registry_repository import RegistryReader
    from balans_edge.core.storage.views import Queries, RegistryEditor


@dataclass(frozen=True, slots=True)
class Site:
    """The site's settings every plugin may need."""

    name: str
    timezone: str
    completeness_threshold: float
    """The share of measured hours a group's balance needs to be complete (``[balance]``)."""
    interval_tolerance_s: float
    """How far a reading may lie from an hour's edge and still bound it (``[intervals]``)."""

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Health(Protocol):
    """How a plugin's components report on themselves (shown in ``/api/v1/health``)."""

    started_at: float | None
    """When the server finished starting (None while it starts)."""

    def supervise(self, component: Component, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        """Watch a component's background task: one that ends with an exception is a fault."""
        ...

    def fault(self, component: Component, error: BaseException | None) -> None:
        """The component's work fails now (``error``) or works again (None)."""
        ...

    def plugin_states(self) -> Mapping[str, str]:
        """Every plugin's state (loaded, started, disabled, failed): a SCADA status word."""
        ...


class Journal(Protocol):
    """Findings and alarms: stored once per event, announced to notifiers and observers."""

    async def report_finding(self, finding: Finding) -> Finding: ...

    async def raise_alarm(self, alarm: Alarm) -> Alarm: ...


@dataclass(slots=True)
class PluginContext:
    """The services one plugin may use. Built by the server for each plugin."""

    name: str
    """The plugin's name (its entry point's name)."""
    config: Any
    """The plugin's validated configuration section (``config_schema``), or None."""
    site: Site
    registry: RegistryReader
    """The registry, read-only (objects, meters' keys and parameter periods, the
    audit). Every committed change is announced on the bus as
    ``core.bus.RegistryChanged``: subscribe instead of polling ``registry_version``."""
    queries: Queries
    """Every read of core's data (``core.storage.views``): the registry, readings,
    quarantine, hourly consumption, balances, findings, alarms, the command audit.
    Read-only: it has no write methods at all."""
    registry_editor: RegistryEditor
    """Registry edits in the plugin's name (``plugin:<name>`` in the audit)."""
    database: SqlGateway
    """The plugin's own tables (created by its ``register_migrations``): ``dialect``,
    ``sql_read``, ``sql_write`` (group-committed). Only that: not core's tables."""
    ingest: Ingest
    """Where readings from devices go: ``await ingest.ingest(batch)`` returns after commit."""
    bus: EventBus
    """Events after commit (readings, intervals, balances): subscribe, never publish."""
    commands: ActuationService
    """The audited command service: the only way anything moves or reconfigures a device."""
    journal: Journal
    detection: DetectionService
    """Runs the detectors (the analytics scheduler and on-demand runs)."""
    health: Health
    tag_sources: TagSources
    """Where a component that reads tags offers them while it runs (``add`` at start,
    ``discard`` at stop): the tag listing, tag history and calculated inputs read them."""
    api_users: tuple[Any, ...] = ()
    """The HTTP API's users (``[api] users``): a protocol server may accept them too."""
    clock: Callable[[], float] = field(default=time.time)

    @property
    def tz(self) -> ZoneInfo:
        return self.site.tz


class Plugin:
    """Base of plugin objects: hooks are its methods (decorated ``hookimpl``).

    The plugin manager instantiates the class without arguments (``config_schema``
    is asked before there is a context), then the server calls ``bind`` with the
    plugin's context before any ``register_*`` hook. What a plugin contributes
    (components, actuators, exporters) it keeps on itself, so its routes and
    observers reach them directly instead of searching the server for them."""

    context: PluginContext

    def bind(self, context: PluginContext) -> None:
        self.context = context

    @property
    def config(self) -> Any:
        return self.context.config

