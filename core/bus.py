"""A small in-process event bus: typed events, bounded queues, publishing never waits.

Components talk through it instead of calling each other. The publishers are
the paths that must not stall: ingest publishes ``ReadingsCommitted`` after
its commit and before the driver acknowledges the device, so ``publish`` is a
plain function that never awaits a subscriber, whatever the subscriber does
(never reads, or hangs in its handler). There is no back-pressure policy.

Every subscription has a bounded queue and an overflow policy:

- ``drop_oldest`` (default): a full queue drops its oldest event to make room;
  the subscriber gets the newest ``maxsize`` events.
- ``coalesce``: for wake-up subscribers (the exporter's sender, the interval
  and balance workers): one event waits at most, a newer one replaces it.

Dropped events are counted per subscription (``Subscription.dropped``,
``EventBus.stats()``, shown under ``bus`` in ``GET /api/v1/health``), and the
subscriber learns of them: the next event ``get`` returns after a loss
carries ``lost`` (how many events this subscription dropped just before it;
0 normally). Memory never grows without bound, and a consumer that needs
every event (a SCADA snapshot) re-reads state from storage when ``lost`` is
not 0 (or when ``dropped`` moved) instead of applying the event alone.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ReadingsCommitted:
    """Readings of these meters are durably stored (published after commit)."""

    meters: tuple[int, ...]
    count: int
    t_min: int
    t_max: int
    lost: int = 0
    """Events this subscriber's queue dropped just before this one (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class IntervalsUpdated:
    """Hourly consumption of these meters was recomputed over [t_min, t_max)."""

    meters: tuple[int, ...]
    t_min: int
    t_max: int
    lost: int = 0
    """Events this subscriber's queue dropped just before this one (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class BalanceUpdated:
    """The hourly balance of these groups was recomputed over [t_min, t_max)."""

    groups: tuple[str, ...]
    t_min: int
    t_max: int
    lost: int = 0
    """Events this subscriber's queue dropped just before this one (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class RegistryChanged:
    """The registry changed (an edit, a correction, moved anchors): caches of it reload."""

    lost: int = 0
    """Events this subscriber's queue dropped just before this one (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class TagSample:
    """One polled value of a PLC tag (tank level, pump state, totaliser) with its quality."""

    tag: str
    """'<device>/<tag>' as configured."""
    ts: float
    """Unix time the value was read (or found missing)."""
    value: float | None
    """The scaled value; None unless the quality is good."""
    quality: str
    """good | stale (refused, or no fresh value) | comm_fail (device unreachable)."""
    unit: str = ""
    detail: str = ""
    """Why the quality is not good (the device's exception, the link's error)."""


@dataclass(frozen=True, slots=True)
class TagValues:
    """Samples of one device's tags from one poll (or a quality change), published
    after the samples chosen for storage are committed."""

    source: str
    """The device (or server) the tags were polled from."""
    samples: tuple[TagSample, ...]
    lost: int = 0
    """Events this subscriber's queue dropped just before this one (see the module docstring)."""


Policy = Literal["drop_oldest", "coalesce"]
POLICIES: tuple[str, ...] = ("drop_oldest", "coalesce")
DEFAULT_MAXSIZE = 1000


class Subscription:
    """One subscriber's bounded queue of events.

    Only the bus puts into it (``offer``, which never waits); the subscriber
    takes events with ``get``/``get_nowait`` or ``async for``, which mark the
    first event after a loss with ``lost``. ``queue`` stays readable for
    consumers that batch what is waiting; they see losses through ``dropped``.
    """

    def __init__(self, bus: EventBus, types: tuple[type, ...], maxsize: int, policy: Policy, name: str) -> None:
        self._bus = bus
        self.types = types
        self.policy = policy
        self.name = name
        """Who subscribed (shown in ``EventBus.stats``)."""
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.delivered = 0
        """Events the bus queued for this subscriber."""
        self.dropped = 0
        """Events dropped because the queue was full (never read by the subscriber)."""
        self._unreported = 0
        """Dropped events the subscriber has not been told of yet."""

    def matches(self, event: Any) -> bool:
        return isinstance(event, self.types)

    def offer(self, event: Any) -> None:
        """Queue ``event`` without waiting: a full queue drops its oldest event
        (``drop_oldest``), or the waiting one (``coalesce``, a queue of one)."""
        queue = self.queue
        if queue.full():
            queue.get_nowait()
            self.dropped += 1
            self._unreported += 1
        queue.put_nowait(event)
        self.delivered += 1

    @property
    def lost(self) -> int:
        """Events dropped that the subscriber has not been told of yet."""
        return self._unreported

    def take_lost(self) -> int:
        """Events dropped since the last call or the last event that reported them
        (for event types without a ``lost`` field); resets the count."""
        lost, self._unreported = self._unreported, 0
        return lost

    async def get(self) -> Any:
        """The next event, waiting for one; see ``_mark`` for ``lost``."""
        return self._mark(await self.queue.get())

    def get_nowait(self) -> Any:
        """The next event; raises ``asyncio.QueueEmpty`` when none waits."""
        return self._mark(self.queue.get_nowait())

    def _mark(self, event: Any) -> Any:
        """After a loss, the event carries how many were lost before it (when its type has ``lost``)."""
        if self._unreported and "lost" in getattr(type(event), "__dataclass_fields__", ()):
            event = replace(event, lost=event.lost + self.take_lost())
        return event

    def close(self) -> None:
        self._bus.unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            yield await self.get()

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "types": [t.__name__ for t in self.types],
            "policy": self.policy,
            "queued": self.queue.qsize(),
            "maxsize": self.queue.maxsize,
            "delivered": self.delivered,
            "dropped": self.dropped,
        }


class EventBus:
    """Publishers call ``publish`` (a plain function: it queues the event for each
    matching subscription and returns); subscribers read their own queues."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []

    def subscribe(self, *types: type, maxsize: int | None = None, policy: Policy = "drop_oldest",
                  name: str | None = None) -> Subscription:
        """A queue of the events of ``types`` (all when none) published from now on.

        ``maxsize`` defaults to 1000 for ``drop_oldest``; a ``coalesce``
        subscription holds one event. ``name`` (who subscribes, for ``stats``)
        defaults to the calling module's name."""
        if policy not in POLICIES:
            raise ValueError(f"bus policy {policy!r}: expected one of {', '.join(POLICIES)} (publishing never "
                             "waits for a subscriber; one that needs every event re-reads storage when it lost some)")
        if policy == "coalesce":
            if maxsize not in (None, 1):
                raise ValueError(f"bus policy coalesce keeps one event, not maxsize={maxsize}")
            maxsize = 1
        elif maxsize is None:
            maxsize = DEFAULT_MAXSIZE
        elif maxsize < 1:
            raise ValueError(f"bus subscription maxsize {maxsize}: expected at least 1 (queues are bounded)")
        if name is None:
            name = sys._getframe(1).f_globals.get("__name__", "")
        sub = Subscription(self, types or (object,), maxsize, policy, name)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def publish(self, event: Any) -> None:
        """Queue ``event`` for every matching subscription; never waits and never
        runs a subscriber's code, so it is safe on paths that acknowledge devices."""
        for sub in tuple(self._subs):
            if sub.matches(event):
                sub.offer(event)

    def stats(self) -> list[dict[str, Any]]:
        """Per subscription: who, what, policy, queue depth and bound, events delivered and dropped."""
        return [s.stats() for s in self._subs]
