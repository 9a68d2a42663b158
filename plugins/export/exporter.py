"""The exporter of one target: drains its durable queue into the target's write
API, batching by size and time, and applies the rules of ``sender.py``.

Nothing is removed from the queue before the target accepted it, and a batch
is never given up on for a transient failure, so an outage of the target, a
restart of this server, or both, delay points but lose none. When the server
stops, a request in flight may finish (up to the target's timeout) so that an
accepted batch is not sent twice; a batch cut short is sent again after the
restart: at least once. InfluxDB stores a point written twice once;
VictoriaMetrics needs ``-dedup.minScrapeInterval=1ms`` for that (docs/export.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from balans_edge.core.bus import BalanceUpdated, IntervalsUpdated, ReadingsCommitted, Subscription
from balans_edge.core.tasks import cancel
from balans_edge.plugins.export.config import ExportConfig, TargetConfig
from balans_edge.plugins.export.points import Built, PointBuilder, Unit
from balans_edge.plugins.export.repository import ExportRepository
from balans_edge.plugins.export.sender import Answer, WriteClient, backoff
from balans_edge.plugins.export.status import target_status

if TYPE_CHECKING:
    from balans_edge.core.context import PluginContext

log = logging.getLogger(__name__)

WATCH_S = 1.0
"""How often the status (queue depth, oldest point) is re-read while the sender is busy or waiting."""
ACKS_IN_FLIGHT = 2
"""Acknowledgements (queue deletes, each a commit) that may still be on their way to disk
while the next batch is sent: the fsync is not on the sender's path."""


class Stopping(Exception):
    """The server is stopping: leave what is not yet accepted in the queue."""


@dataclass(slots=True)
class Configurator:
    """Puts the configured targets into effect once per start (``ExportRepository.configure``):
    a component of the plugin, started before the exporters, and asked again by
    each exporter (the first call does it).

    It runs with no target configured too: then nothing is queued any more, so a
    queue that nobody sends does not grow to its bound (and, with ``block``,
    refuse the devices' readings). Targets that stop collecting keep their
    queues, with a warning naming each. When the plugin does not run at all,
    core drops its triggers (docs/storage.md)."""

    repository: ExportRepository
    config: ExportConfig
    name: str = "export-queues"
    _done: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> None:
        await self.ensure()

    async def stop(self) -> None:
        self._done = False

    async def ensure(self) -> None:
        async with self._lock:
            if self._done:
                return
            collecting = [r for r in await self.repository.state() if r["kinds"]]
            await self.repository.configure([t.queue_target() for t in self.config.targets])
            now = {r["name"]: r for r in await self.repository.state()}
            for r in collecting:
                if not now[r["name"]]["kinds"]:
                    log.warning("export target %s: no exporter runs for it, so no new points are queued; its %d "
                                "queued points are kept (balans-edge export drop %s discards them)",
                                r["name"], now[r["name"]]["depth"], r["name"])
            self._done = True


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch taken from the queue and rendered, waiting for its turn."""

    last: int
    """The batch's highest entry id: the next batch starts after it."""
    built: Built


@dataclass(slots=True)
class Counters:
    """What happened since this server started (the lifetime totals are in storage)."""

    points_sent: int = 0
    batches_sent: int = 0
    retries: int = 0
    dead_points: int = 0
    splits: int = 0
    gone: int = 0


class TargetExporter:
    """An exporter (a component with ``status()``) for one target."""

    def __init__(self, context: PluginContext, repository: ExportRepository, config: TargetConfig,
                 configurator: Configurator) -> None:
        self.context = context
        self.queues = repository
        self.config = config
        self.name = f"export:{config.name}"
        self.target = config.name
        self.configurator = configurator
        static = {"site": context.site.name, **config.tags}
        self.builder = PointBuilder(context.queries, context.tz, context.site.completeness_threshold, static,
                                    config.measurement_prefix)
        self.counters = Counters()
        self.state = "starting"
        self.row: dict[str, Any] = {}
        """The target's stored row (``ExportRepository.state``), re-read by ``refresh``."""
        self._client: WriteClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake: Subscription | None = None
        self._pending_since: float | None = None
        self._failing = False
        self._acks: list[asyncio.Task[None]] = []

    # lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await self.configurator.ensure()
        await self.refresh()
        if not self.config.enabled:
            self.state = "disabled"
            return
        self._client = WriteClient(self.config)
        # New data wakes the sender early so a batch that filled up goes at once.
        self._wake = self.context.bus.subscribe(ReadingsCommitted, IntervalsUpdated, BalanceUpdated,
                                                policy="coalesce", name=self.name)
        self._stopping.clear()
        supervise = self.context.health.supervise
        self._task = supervise(self, asyncio.create_task(self._run(), name=self.name))
        self._watcher = supervise(self, asyncio.create_task(self._watch(), name=f"{self.name}-status"))

    async def stop(self) -> None:
        self._stopping.set()
        await cancel(self._watcher)
        self._watcher = None
        if self._task is not None:
            # A request in flight may finish, so an accepted batch is acknowledged, not sent twice.
            done, _ = await asyncio.wait({self._task}, timeout=self.config.timeout_s + 1)
            if not done:
                await cancel(self._task)
            self._task = None
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        if self._client is not None:
            await self._client.close()
            self._client = None
        self.state = "stopped"

    # status ---------------------------------------------------------------------

    async def refresh(self) -> dict[str, Any]:
        """Re-read the queue's depth and the lifetime counters from storage; the status."""
        (self.row,) = await self.queues.state(self.target)
        return self.status()

    async def _watch(self) -> None:
        """Keep the status current while the sender waits out an outage."""
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                await self.refresh()
            except Exception as exc:  # storage closing under us; the next round tells
                log.debug("%s: status refresh failed: %s", self.name, exc)

    def status(self) -> dict[str, Any]:
        """Shown under ``exporters`` in GET /api/v1/health (kept current by the sender),
        with the names of ``export status --json`` (status.py) and the figures since this start."""
        return {**target_status(self.row, self.config, time.time(), self.state), "since_start": {
            "points_sent": self.counters.points_sent, "batches_sent": self.counters.batches_sent,
            "retries": self.counters.retries, "dead_letters": self.counters.dead_points,
            "splits": self.counters.splits, "gone": self.counters.gone,
            "non_finite_fields": self.builder.non_finite.count}}

    # the loop -------------------------------------------------------------------

    async def _run(self) -> None:
        self.state = "idle"
        while not self._stopping.is_set():
            try:
                if await self._resend_dead():
                    continue
                if await self._due():
                    await self._drain()
                else:
                    await self._sleep(self.config.flush_interval_s, wake_on_data=True)
            except Stopping:
                return
            except Exception:
                # A bug or a storage hiccup must not end exporting: note it, wait, go on.
                log.exception("%s: exporting failed", self.name)
                with contextlib.suppress(Stopping):
                    await self._sleep(self.config.backoff_max_s)

    async def _drain(self) -> None:
        """Send batches back to back until the queue is empty. The next batch is read
        and rendered while the previous one is on the wire; it is only sent after
        the previous one was accepted or dead-lettered, so the order holds."""
        ahead = asyncio.create_task(self._prepare(0))
        try:
            while True:
                prepared = await ahead
                if prepared is None:
                    return
                ahead = asyncio.create_task(self._prepare(prepared.last))
                await self._send(prepared)
        finally:
            await cancel(ahead)
            await self._settle_acks()

    async def _resend_dead(self) -> bool:
        """Send the oldest dead letter an operator marked to be sent again (before
        the queue: its points are older). Whole, as it was refused; a refusal
        again keeps it with the new answer. False when none is marked."""
        dead = await self.queues.resend_next(self.target)
        if dead is None:
            return False
        self.state = "sending"
        answer = await self._post(dead["lines"].split("\n"))
        self.state = "idle"
        await self.queues.resent(self.target, dead["id"], answer.status, answer.message)
        if answer.accepted:
            self.counters.points_sent += dead["points"]
            log.info("%s: dead letter #%d sent again and accepted (%d point(s))", self.name, dead["id"],
                     dead["points"])
        else:
            log.warning("%s: dead letter #%d refused again (%s)", self.name, dead["id"], answer.describe())
        return True

    async def _due(self) -> bool:
        """Is a batch full, or has the oldest point waited ``flush_interval_s``?"""
        depth = (await self.refresh())["queue_depth"]
        now = time.monotonic()
        if depth == 0:
            self._pending_since = None
            return False
        if self._pending_since is None:
            self._pending_since = now
        return depth >= self.config.batch_size or now - self._pending_since >= self.config.flush_interval_s

    async def _sleep(self, seconds: float, wake_on_data: bool = False) -> None:
        """Wait, or less when the server stops (raise Stopping) or, optionally, when data arrives."""
        waits: list[Awaitable[Any]] = [self._stopping.wait()]
        if wake_on_data and self._wake is not None:
            waits.append(self._wake.get())
        tasks = [asyncio.ensure_future(w) for w in waits]
        try:
            await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        if self._stopping.is_set():
            raise Stopping

    async def _prepare(self, after: int) -> Prepared | None:
        """The next batch after entry ``after``, rendered; None when the queue is empty."""
        batch = await self.queues.take(self.target, self.config.batch_size, after)
        if not batch.ids:
            return None
        return Prepared(batch.ids[-1], await self.builder.build(batch))

    async def _send(self, prepared: Prepared) -> None:
        built = prepared.built
        if built.gone:
            await self.queues.ack(self.target, built.gone, 0)
            self.counters.gone += len(built.gone)
        if built.units:
            self.state = "sending"
            await self._deliver(built.units)
            self.state = "idle"
        if self._failing:
            log.info("%s: the target accepts points again", self.name)
            self._failing = False

    # delivery -------------------------------------------------------------------

    async def _deliver(self, units: list[Unit], answer: Answer | None = None) -> None:
        """Send ``units`` (or act on the ``answer`` they already got) until each is
        accepted or dead-lettered."""
        answer = answer or await self._post([u.line for u in units])
        if answer.accepted:
            await self._ack(units)
        elif len(units) == 1:
            await self._dead(units, answer)
        elif answer.too_large:
            self.counters.splits += 1
            for half in _halves(units):
                await self._deliver(half)
        else:
            await self._isolate(units)

    async def _isolate(self, units: list[Unit]) -> None:
        """A refused batch: send its halves; a refused half is split again, until
        the refused points are found (log2 of the batch in requests for one bad
        point). If both halves are refused, each goes to the dead letters whole:
        the fault is not one point, and finding every bad point would cost a
        request per point."""
        self.counters.splits += 1
        first, second = _halves(units)
        a = await self._post([u.line for u in first])
        if a.accepted:
            await self._ack(first)
            await self._deliver(second)
            return
        b = await self._post([u.line for u in second])
        if b.accepted:
            await self._ack(second)
            await self._deliver(first, a)
            return
        for half, refusal in ((first, a), (second, b)):
            if refusal.too_large:
                await self._deliver(half, refusal)
            else:
                await self._dead(half, refusal)

    async def _post(self, lines: list[str]) -> Answer:
        """POST until the target gives an answer that is not transient."""
        client = self._client
        if client is None:
            raise Stopping
        body = await client.body(lines)
        attempt = 0
        while True:
            if self._stopping.is_set():
                raise Stopping
            answer = await client.post(body)
            if not answer.transient:
                return answer
            attempt += 1
            await self._note_failure(answer)
            if answer.retry_after is not None:
                wait = min(answer.retry_after, self.config.retry_after_max_s)
            else:
                wait = backoff(attempt, self.config.backoff_initial_s, self.config.backoff_max_s)
            await self._sleep(wait)

    async def _note_failure(self, answer: Answer) -> None:
        self.counters.retries += 1
        self.state = "retrying"
        if not self._failing:
            log.warning("%s: %s; points stay queued and are sent again", self.name, answer.describe())
            self._failing = True
        await self.queues.note_failure(self.target, answer.describe())
        await self.refresh()

    async def _ack(self, units: list[Unit]) -> None:
        """Remove accepted entries. The commit runs while the next batch is sent; if it
        fails, the entries stay queued and are sent again (at least once)."""
        ids = [i for u in units for i in u.ids]
        self._acks.append(asyncio.create_task(self.queues.ack(self.target, ids, len(units))))
        self.counters.points_sent += len(units)
        self.counters.batches_sent += 1
        self.state = "sending"
        await self._settle_acks(keep=ACKS_IN_FLIGHT)

    async def _settle_acks(self, keep: int = 0) -> None:
        while len(self._acks) > keep:
            task = self._acks.pop(0)
            try:
                await task
            except Exception as exc:
                log.warning("%s: acknowledging sent points failed (%s); they will be sent again", self.name, exc)

    async def _dead(self, units: list[Unit], answer: Answer) -> None:
        log.warning("%s: %d point(s) refused (%s), moved to the dead letters", self.name, len(units),
                    answer.describe())
        await self.queues.dead_letter(self.target, [i for u in units for i in u.ids], answer.status,
                                              answer.message, "\n".join(u.line for u in units), len(units))
        self.counters.dead_points += len(units)


def _halves(units: list[Unit]) -> tuple[list[Unit], list[Unit]]:
    middle = len(units) // 2
    return units[:middle], units[middle:]

