"""What the SCADA bridges (the Modbus and the OPC UA server) share as
components: they keep a live state current (``plugins.common.live``) and
run the commands their clients ask for through the actuation service.

- Bus events (new readings, new hourly consumption, new balances) are
  batched: events that wait together share one refresh, read from storage;
  lost events (a full queue) make it read everything again.
- A changed registry (``RegistryChanged``) rebuilds what is shown of it.
- Every second ``tick`` runs (a new hour, data ages; a changed registry that
  was not announced, e.g. by a command run beside the server).
- While refreshes fail, the plugin shows failed in /health, until one works.
- A command a client asked for is answered once done, or after a timeout
  (the command goes on and is audited; at stop it gets a last chance to
  finish).

Refreshes and ticks take turns (one lock), so neither sees the other's half
of a refresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from balans_edge.core.bus import BalanceUpdated, IntervalsUpdated, ReadingsCommitted, RegistryChanged, Subscription
from balans_edge.core.tasks import cancel
from balans_edge.plugins.common.listen import ListenConfig
from balans_edge.plugins.common.live import (
    LiveState,
    hour_marks,
    load_all,
    refresh_groups,
    refresh_hour,
    refresh_readings,
)

if TYPE_CHECKING:
    from balans_edge.core.components import Alarm, Command
    from balans_edge.core.context import PluginContext

log = logging.getLogger(__name__)

T = TypeVar("T")
Config = TypeVar("Config", bound=ListenConfig)


class LiveBridge(Generic[Config]):
    """A SCADA bridge's shared machinery; ``live`` is the state it shows."""

    name = "bridge"
    """The component's name (log lines and task names start with it)."""

    def __init__(self, context: PluginContext, config: Config) -> None:
        self.context = context
        self.config = config
        self.port: int | None = None
        """The port listened on, once started (``config.port`` may be 0: any free port)."""
        self.refresh_failed = False
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[Any]] = set()

    @property
    def live(self) -> LiveState | None:
        """The state shown now (None before the first is read)."""
        raise NotImplementedError

    async def show(self) -> None:
        """After a refresh: make what changed visible to clients."""

    def tick_failed(self) -> None:
        """After a tick failed: show what can be shown from memory."""

    async def tick(self) -> None:
        """Every second (see ``LiveBridge``)."""

    async def registry_changed(self) -> None:
        """The registry changed (``RegistryChanged`` on the bus): rebuild what is shown."""
        await self.reload()

    async def on_command(self, command: Command) -> None:
        """A valve or relay command done (from any source): show the state it left."""

    async def on_alarm(self, alarm: Alarm) -> None:
        """Every alarm (a new finding's included), as this bridge shows alarms."""

    # lifecycle ------------------------------------------------------------------------

    def subscribe(self) -> None:
        """Subscribe before the state is first read: nothing committed meanwhile is missed."""
        self._sub = self.context.bus.subscribe(ReadingsCommitted, IntervalsUpdated, BalanceUpdated, RegistryChanged,
                                               maxsize=256,
                                               policy="drop_oldest", name=self.name)

    def follow(self) -> None:
        """Start following the bus and ticking (after the first state is read)."""
        self._tasks = [
            self.context.health.supervise(self, asyncio.create_task(self._follow(), name=f"{self.name}-refresh")),
            self.context.health.supervise(self, asyncio.create_task(self._tick_loop(), name=f"{self.name}-tick"))]

    async def stop_following(self) -> None:
        for task in self._tasks:
            await cancel(task)
        self._tasks = []

    def unsubscribe(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    # refreshing -----------------------------------------------------------------------

    async def _follow(self) -> None:
        """Bus events -> batched refreshes (events waiting together share one)."""
        sub = self._sub
        if sub is None:
            return
        dropped = sub.dropped
        while True:
            events = [await sub.get()]
            while not sub.queue.empty():
                events.append(sub.queue.get_nowait())
            try:
                async with self._lock:
                    if sub.dropped != dropped:
                        dropped = sub.dropped  # events were lost while we were busy: read everything again
                        await self.reload()
                    else:
                        await self.refresh(events)
                    await self.show()
                self._refreshed(None)
            except Exception as exc:
                log.exception("%s: refreshing the live values failed", self.name)
                self._refreshed(exc)

    async def refresh(self, events: list[Any]) -> None:
        """What the events name, read again."""
        if any(isinstance(e, RegistryChanged) for e in events):
            await self.registry_changed()
        state = self.live
        if state is None:
            return
        queries = self.context.queries
        readings = sorted({k for e in events if isinstance(e, ReadingsCommitted) for k in e.meters})
        intervals = sorted({k for e in events if isinstance(e, IntervalsUpdated) for k in e.meters})
        hour, today = hour_marks(time.time(), state.tz)
        if readings:
            await refresh_readings(state, queries, readings)
        if intervals:
            await refresh_hour(state, queries, intervals, hour)
        if any(isinstance(e, BalanceUpdated) for e in events):
            await refresh_groups(state, queries, hour, today)

    async def reload(self) -> None:
        state = self.live
        if state is not None:
            await load_all(state, self.context.queries, time.time())

    def _refreshed(self, error: Exception | None) -> None:
        """A refresh's outcome: while they fail, the plugin shows failed in /health."""
        if error is not None or self.refresh_failed:
            self.context.health.fault(self, error)
        self.refresh_failed = error is not None

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0 - time.time() % 1.0)
            try:
                async with self._lock:
                    await self.tick()
                self._refreshed(None)
            except Exception as exc:
                log.exception("%s: periodic refresh failed", self.name)
                self._refreshed(exc)
                self.tick_failed()

    # commands -------------------------------------------------------------------------

    async def run_command(self, work: Awaitable[T], timeout_s: float) -> asyncio.Task[T] | None:
        """Run ``work`` (commands through the actuation service) and wait up to
        ``timeout_s``: its task once done, None if it takes longer (it goes on)."""
        task = self.keep(work)
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        return task if done else None

    def keep(self, work: Awaitable[T]) -> asyncio.Task[T]:
        """Run ``work`` in a task that ``finish_commands`` waits for."""
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def finish_commands(self, timeout_s: float) -> None:
        """At stop: a command already sent finishes and is audited; its client just gets no answer."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=timeout_s)
            for task in list(self._pending):
                await cancel(task)
