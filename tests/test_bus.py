"""The event bus never makes a publisher wait: bounded queues with counted drops,
and ingest (so a device's acknowledgement) never waits for a subscriber, one
that never reads or one whose handler hangs, over real SQLite files and
through a real server."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import balans_edge_example
import pytest

from balans_edge import hookimpl
from balans_edge.core.bus import BalanceUpdated, EventBus, IntervalsUpdated, ReadingsCommitted
from balans_edge.core.model import RawReading
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugin_manager import Plugins

from conftest import auth, base_config, eventually, small_site
from ingest_support import NOW, T0, H, meter, new_ingest, open_storage, r

MakeServer = Callable[..., Any]


def committed(i: int, lost: int = 0) -> ReadingsCommitted:
    return ReadingsCommitted(meters=(1,), count=1, t_min=i, t_max=i, lost=lost)


def observer_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The server's subscription for the hanging plugin's observe_readings hook."""
    (entry,) = [s for s in stats if s["name"] == "observer:hanging"]
    return entry


def by_name(bus: EventBus, name: str) -> dict[str, Any]:
    (entry,) = [s for s in bus.stats() if s["name"] == name]
    return entry


# the bus ------------------------------------------------------------------------------------


def test_publish_is_a_plain_function() -> None:
    """Nothing a publisher could await: a publisher cannot be made to wait."""
    assert not inspect.iscoroutinefunction(EventBus.publish)
    bus = EventBus()
    bus.subscribe(ReadingsCommitted, maxsize=1)
    assert bus.publish(committed(1)) is None
    assert bus.publish(committed(2)) is None  # the queue was full: nothing to await either


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"policy": "block"}, "publishing never waits"),
    ({"maxsize": 0}, "queues are bounded"),
    ({"maxsize": -1}, "queues are bounded"),
    ({"policy": "coalesce", "maxsize": 5}, "keeps one event"),
])
def test_unbounded_or_blocking_subscriptions_are_refused(kwargs: dict[str, Any], message: str) -> None:
    bus = EventBus()
    with pytest.raises(ValueError, match=message):
        bus.subscribe(ReadingsCommitted, **kwargs)
    assert bus.stats() == []


def test_drop_oldest_keeps_the_newest_counts_the_rest_and_tells_the_subscriber() -> None:
    bus = EventBus()
    sub = bus.subscribe(ReadingsCommitted, maxsize=3, name="snapshot")
    other = bus.subscribe(IntervalsUpdated, name="intervals")
    for i in range(10):
        bus.publish(committed(i))
    assert by_name(bus, "snapshot") == {"name": "snapshot", "types": ["ReadingsCommitted"], "policy": "drop_oldest",
                                        "queued": 3, "maxsize": 3, "delivered": 10, "dropped": 7}
    assert by_name(bus, "intervals")["delivered"] == 0
    assert sub.lost == 7
    # The first event after the loss says how many were lost before it; later ones do not.
    assert [sub.get_nowait() for _ in range(3)] == [committed(7, lost=7), committed(8), committed(9)]
    assert sub.lost == 0 and sub.dropped == 7
    bus.publish(committed(10))
    assert sub.get_nowait() == committed(10)
    assert other.queue.empty()


def test_coalesce_keeps_only_the_newest_event() -> None:
    bus = EventBus()
    wake = bus.subscribe(ReadingsCommitted, IntervalsUpdated, policy="coalesce", name="sender")
    bus.publish(committed(1))
    bus.publish(IntervalsUpdated((1,), 0, H))
    bus.publish(committed(2))
    assert by_name(bus, "sender") | {"types": None} == {
        "name": "sender", "types": None, "policy": "coalesce", "queued": 1, "maxsize": 1, "delivered": 3,
        "dropped": 2}
    assert wake.get_nowait() == committed(2, lost=2)
    assert wake.queue.empty()


def test_loss_without_a_lost_field_is_taken_from_the_subscription() -> None:
    bus = EventBus()
    sub = bus.subscribe(str, maxsize=2)
    for word in ("a", "b", "c", "d"):
        bus.publish(word)
    assert [sub.get_nowait(), sub.get_nowait()] == ["c", "d"]
    assert sub.take_lost() == 2 and sub.take_lost() == 0
    assert sub.dropped == 2


def test_a_closed_subscription_gets_nothing_and_leaves_the_stats() -> None:
    bus = EventBus()
    sub = bus.subscribe(BalanceUpdated)
    assert by_name(bus, __name__)["types"] == ["BalanceUpdated"]  # named after the subscribing module
    sub.close()
    bus.publish(BalanceUpdated(("G",), 0, H))
    assert sub.queue.empty() and bus.stats() == []


# ingest with stuck subscribers --------------------------------------------------------------


async def test_stuck_subscribers_do_not_delay_ingest(tmp_path: Path) -> None:
    """One subscriber never reads, another hangs in its handler: every batch is
    committed and returns all the same, before either subscriber runs at all;
    their drops are counted; once they go on they get the newest events and
    learn how many they lost."""
    storage: SqliteStorage = await open_storage(tmp_path / "edge.db", meters=[meter("W1"), meter("W2", channel=2)])
    try:
        bus = EventBus()
        idle = bus.subscribe(ReadingsCommitted, maxsize=8, name="never-reads")
        stuck = bus.subscribe(ReadingsCommitted, maxsize=8, name="hangs")
        release = asyncio.Event()
        handled: list[ReadingsCommitted] = []
        acknowledged: list[int] = []
        seen_before_ack: list[int] = []

        async def handler() -> None:
            async for event in stuck:
                handled.append(event)
                if event.t_max not in acknowledged:
                    seen_before_ack.append(event.t_max)
                await release.wait()  # hangs until the test lets it go on

        task = asyncio.create_task(handler())
        ingest = new_ingest(storage, bus=bus)
        batches = 60
        async with asyncio.timeout(60):  # only against a hang: nothing here is timed
            for i in range(batches):
                ts = T0 + i * H
                result = await ingest.ingest([r(ts, 100 + i), r(ts, 7 * i, channel=2)])
                assert result.accepted == 2
                acknowledged.append(ts)  # where a driver acknowledges the device
                if i == 0:
                    await eventually(lambda: handled)  # the handler took the first event and hangs in it
        assert len(handled) == 1 and seen_before_ack == []

        # Everything is stored while both subscribers are stuck.
        keys = await storage.meter_keys()
        rows = await storage.readings(keys["W1"], 0, NOW)
        assert rows.ts.tolist() == acknowledged

        assert by_name(bus, "never-reads") | {"name": None, "types": None} == {
            "name": None, "types": None, "policy": "drop_oldest", "queued": 8, "maxsize": 8,
            "delivered": batches, "dropped": batches - 8}
        assert by_name(bus, "hangs")["dropped"] == batches - 1 - 8  # it holds one, 8 wait

        # The subscribers go on: they get the newest 8 events, the first one says what was lost.
        newest = acknowledged[-8:]
        waiting = [idle.get_nowait() for _ in range(8)]
        assert [e.t_max for e in waiting] == newest
        assert [e.lost for e in waiting] == [batches - 8] + [0] * 7
        release.set()
        await eventually(lambda: len(handled) == 9)
        assert [e.t_max for e in handled[1:]] == newest
        assert [e.lost for e in handled] == [0, batches - 9] + [0] * 7
        assert stuck.queue.empty() and seen_before_ack == []
        task.cancel()
    finally:
        await storage.close()


# through a real server ------------------------------------------------------------------------


async def test_readings_are_acknowledged_while_an_observer_hangs(
    tmp_path: Path, plugins: Plugins, make_server: MakeServer, client_for: Callable[[Any], Any]
) -> None:
    """An observer plugin's observe_readings hangs: POSTed readings are answered
    200 and stored, before and after its queue overflows (a concentrator's
    batches fill it meanwhile); the events it cannot hold are counted under
    ``bus`` in /health, and once it returns it sees the newest batches, told how
    many it lost."""
    go_on = asyncio.Event()

    class Hanging:
        seen: list[ReadingsCommitted] = []

        @hookimpl
        async def observe_readings(self, event: ReadingsCommitted) -> None:
            Hanging.seen.append(event)
            await go_on.wait()

    plugins.register(Hanging(), "hanging")
    server = await make_server(base_config(tmp_path))
    client = client_for(server)
    await server.storage.registry_apply(small_site())
    maxsize = observer_stats(server.bus.stats())["maxsize"]
    now = int(time.time())
    first = now - 2 * maxsize
    posted: list[int] = []

    async def post(n: int) -> None:
        for _ in range(n):
            ts = first + len(posted)
            body = {"readings": [{"module_id": 1001, "channel": 1, "ts": ts, "counter": len(posted)}]}
            response = await client.post("/api/v1/readings", headers=auth("operator"), json=body)
            assert response.status_code == 200 and response.json()["accepted"] == 1
            posted.append(ts)

    await post(1)
    assert await eventually(lambda: Hanging.seen)  # the observer hangs in its first call
    await post(10)
    # A concentrator's batches (the same ingest sink a driver uses) fill the observer's queue and more.
    bulk = maxsize + 20
    results = await asyncio.gather(*(server.ingest.ingest([RawReading(1001, 2, first + i, i)]) for i in range(bulk)))
    assert [res.accepted for res in results] == [1] * bulk
    await post(10)
    assert len(Hanging.seen) == 1
    # The other plugins' observers have subscriptions of their own: the example plugin
    # (an entry point) went on observing while this one hung.
    assert await eventually(lambda: balans_edge_example.STATE["readings"] >= len(posted))

    keys = await server.storage.meter_keys()
    assert (await server.storage.readings(keys["W-1"], first, now)).ts.tolist() == posted
    assert len(await server.storage.readings(keys["W-2"], first, now)) == bulk

    health = (await client.get("/api/v1/health", headers=auth("viewer"))).json()
    entry = observer_stats(health["bus"])
    assert entry["types"] == ["ReadingsCommitted"] and entry["policy"] == "drop_oldest"
    published = len(posted) + bulk
    lost = published - 1 - maxsize  # one is in the hanging call, maxsize wait
    assert (entry["queued"], entry["delivered"], entry["dropped"]) == (maxsize, published, lost)

    go_on.set()
    assert await eventually(lambda: len(Hanging.seen) == 1 + maxsize)
    after = Hanging.seen[1:]
    assert after[0].lost == lost and all(e.lost == 0 for e in after[1:])
    assert [e.t_max for e in after[-10:]] == posted[-10:]  # the newest batches, in order
