"""A small in-process event bus: typed events, bounded queues.

Components talk through it instead of calling each other. Every subscription
has a bounded queue; a full queue either makes the publisher wait
(back-pressure, the default) or drops the oldest event and counts it, for
subscribers that only need a wake-up or can re-read what they missed from
storage. Memory never grows without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ReadingsCommitted:
    """Readings of these meters are durably stored (published after commit)."""

    meters: tuple[int, ...]
    count: int
    t_min: int
    t_max: int


@dataclass(frozen=True, slots=True)
class IntervalsUpdated:
    """Hourly consumption of these meters was recomputed over [t_min, t_max)."""

    meters: tuple[int, ...]
    t_min: int
    t_max: int


@dataclass(frozen=True, slots=True)
class BalanceUpdated:
    """The hourly balance of these groups was recomputed over [t_min, t_max)."""

    groups: tuple[str, ...]
    t_min: int
    t_max: int


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


Policy = Literal["block", "drop_oldest"]


class Subscription:
    def __init__(self, bus: EventBus, types: tuple[type, ...], maxsize: int, policy: Policy) -> None:
        self._bus = bus
        self.types = types
        self.policy = policy
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.dropped = 0

    def matches(self, event: Any) -> bool:
        return isinstance(event, self.types)

    async def deliver(self, event: Any) -> None:
        if self.policy == "block":
            await self.queue.put(event)
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> Any:
        return await self.queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            yield await self.queue.get()


class EventBus:
    def __init__(self) -> None:
        self._subs: list[Subscription] = []

    def subscribe(self, *types: type, maxsize: int = 1000, policy: Policy = "block") -> Subscription:
        sub = Subscription(self, types or (object,), maxsize, policy)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    async def publish(self, event: Any) -> None:
        for sub in list(self._subs):
            if sub.matches(event):
                await sub.deliver(event)

    def stats(self) -> list[dict[str, Any]]:
        return [
            {
                "types": [t.__name__ for t in s.types],
                "policy": s.policy,
                "queued": s.queue.qsize(),
                "maxsize": s.queue.maxsize,
                "dropped": s.dropped,
            }
            for s in self._subs
        ]
