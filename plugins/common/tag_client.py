"""What a protocol client component (the Modbus PLC poller, the OPC UA client)
is whatever its protocol: its devices' configuration, the recorder its samples
go through (``core.tags.TagRecorder``: storage, the bus, totalisers as
readings), the registry meters its totaliser tags are, its supervised tasks,
and its tags as ``GET /api/v1/tags`` lists them and ``/tags/history`` reads
them (``core.tags.TagSource``, through the plugin's ``TagRepository``).
How a device is reached and a tag read is the protocol's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from balans_edge.core.calculated import TagSeries
from balans_edge.core.tags import TagRecorder, TagState, ensure_meters
from balans_edge.core.tasks import cancel_surely
from balans_edge.plugins.common.client_config import ClientDevice

if TYPE_CHECKING:
    from balans_edge.core.context import PluginContext
    from balans_edge.plugins.common.tag_repository import TagRepository

log = logging.getLogger(__name__)


class RunningDevice(Protocol):
    """A device a client runs (a polled PLC, a station's server session)."""

    def status(self) -> dict[str, Any]: ...


ConfigT = TypeVar("ConfigT", bound=ClientDevice[Any])
RunningT = TypeVar("RunningT", bound=RunningDevice)


class TagClient(Generic[ConfigT, RunningT]):
    """A protocol client component; ``states`` are its tags. ``ConfigT`` is the
    protocol's device configuration, ``RunningT`` what it makes of one when it
    starts (``devices``, by name)."""

    name = "tag-client"
    protocol = "tags"
    """Names the protocol in the tag listing, log lines and the configuration section."""

    def __init__(self, context: PluginContext, devices: Sequence[ConfigT], tags: TagRepository) -> None:
        self.context = context
        self.configs: list[ConfigT] = list(devices)
        self.devices: dict[str, RunningT] = {}
        """The running devices by name, made at start (actuators drive them, ``status`` lists them)."""
        self.tags = tags
        """The tag polling's stored samples (every protocol's), the plugin's repository."""
        self.recorder = TagRecorder(tags, context.bus, context.ingest, self.protocol)
        self.created_meters: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    def states(self) -> Iterable[TagState]:
        """Every tag's state, in configuration order."""
        raise NotImplementedError

    async def begin(self, now: float) -> None:
        """At start: the tags' meters made, then the tags offered (``context.tag_sources``)."""
        await self.make_meters(now)
        self.context.tag_sources.add(self)

    async def make_meters(self, now: float) -> None:
        """The registry meters (and modules) of the tags named as meters, made
        before the first sample; one that exists and differs is refused
        (``core.tags.ensure_meters``)."""
        tags = [(f'[plugins.{self.protocol}] device "{d.name}" tag "{t.name}"', t)
                for d in self.configs for t in d.tags]
        self.created_meters = await ensure_meters(self.context.registry, self.context.registry_editor, tags, int(now))
        if self.created_meters:
            log.info("%s: created meters %s for totaliser tags", self.protocol, ", ".join(self.created_meters))

    def run(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` supervised (its failure is this component's) until ``stop_tasks``."""
        self._tasks.append(self.context.health.supervise(self, asyncio.create_task(work, name=name)))

    async def stop_tasks(self) -> None:
        self.context.tag_sources.discard(self)
        for task in self._tasks:
            await cancel_surely(task)
        self._tasks = []

    def status(self) -> list[dict[str, Any]]:
        """Every device as ``GET /api/v1/<protocol>/devices`` lists it."""
        return [d.status() for d in self.devices.values()]

    def row(self, state: TagState) -> dict[str, Any]:
        """A tag as the API lists it (a protocol may add its addressing)."""
        return state.row()

    def snapshot(self) -> list[dict[str, Any]]:
        """Every tag's newest sample, last good value and quality, in configuration order."""
        return [self.row(s) for s in self.states()]

    def tag_snapshot(self) -> list[dict[str, Any]]:
        """The tags as ``GET /api/v1/tags`` lists them (``core.tags.TagSource``)."""
        return [{**row, "protocol": self.protocol} for row in self.snapshot()]

    async def tag_history(self, tag: str, t0: int, t1: int, limit: int) -> list[dict[str, Any]]:
        """Stored samples of any protocol's tag, for ``GET /api/v1/tags/history`` (``core.tags.TagSource``)."""
        return await self.tags.tag_values(tag, t0, t1, limit)

    async def tag_series(self, tag: str, t0: int, t1: int) -> TagSeries:
        """Stored samples of any protocol's tag as arrays, for calculated inputs
        (``core.tags.TagSource``)."""
        return await self.tags.tag_series(tag, t0, t1)
