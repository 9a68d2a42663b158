"""Polling pumping-station PLCs over Modbus TCP and RTU.

Three layers, each with one job:

- ``Link``: one connection (a TCP socket, or a serial port with several
  slaves on it) with one lock, so requests on a line never interleave, the
  configured quiet time before each request (slow devices), and reconnection
  with exponential back-off and jitter: a dropped link always comes back
  without a restart, and a hundred boxes whose PLC rebooted do not reconnect
  in lock-step.
- ``Device``: one slave behind a link: its unit id, timeout and retries; a
  read answers registers or bits, or raises what went wrong (link down, no
  answer, the device's exception).
- ``Poller``: one device's tags, grouped by poll interval and batched into as
  few reads as possible (``tags.plan``); each tag gets a value and a quality.

``ModbusClient`` (the component) runs one supervised poll loop per device: an
exception in one never stops the others, the loop is restarted after a pause.
A sweeper marks tags ``stale`` when their device stops delivering fresh values
(a request that hangs for its timeout must not keep a tag ``good``). Samples go
to storage (on change, and as a heartbeat), then to the event bus
(``TagValues``); totaliser tags named as meters are ingested as readings like
any meter's, so a pumping station's outflow can be a balance group's input.
Quality, storage, back-off and totaliser rules are the OPC UA client's too
(``balans_edge.core.tags``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from balans_edge.core.tags import Backoff, TagQuality, TagState, mark
from balans_edge.plugins.common.tag_client import TagClient
from balans_edge.plugins.modbus.tags import (
    BIT_TABLES,
    GATEWAY_UNREACHABLE,
    Block,
    DeviceConfig,
    describe_exception,
    groups,
    plan,
    tag_value,
)

if TYPE_CHECKING:
    from balans_edge.core.context import PluginContext
    from balans_edge.plugins.common.tag_repository import TagRepository

log = logging.getLogger(__name__)

wall_clock: Callable[[], float] = time.time
"""Time stamps of samples and meter readings (replaceable, e.g. to replay hours in a test)."""

READERS = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}




class LinkDown(Exception):
    """The connection is not up: it failed, was lost, or waits for its back-off."""


class NoAnswer(Exception):
    """The device did not answer within its timeout, after its retries."""


class DeviceRefused(Exception):
    """The device answered a Modbus exception."""

    def __init__(self, code: int) -> None:
        super().__init__(describe_exception(code))
        self.code = code


class BadAnswer(Exception):
    """The device answered something that does not fit the request."""


# -- link --------------------------------------------------------------------------------


class Link:
    """One connection shared by the devices behind it (a serial line, or a TCP
    gateway with several unit ids): one request at a time."""

    def __init__(self, devices: Sequence[DeviceConfig]) -> None:
        first = devices[0]
        self.config = first
        self.name = f"{first.path}" if first.transport == "rtu" else f"{first.host}:{first.port}"
        self.lock = asyncio.Lock()
        self.backoff = Backoff(min(d.reconnect_min_s for d in devices), max(d.reconnect_max_s for d in devices))
        # pymodbus's own timeout is longer than every device's, so ours (per device) decides.
        self.timeout = max(d.timeout_s for d in devices) + 1.0
        self.client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self.last_end = 0.0
        self.last_error = ""
        self.connects = 0
        self.connected_at: float | None = None

    @property
    def up(self) -> bool:
        return self.client is not None and self.client.connected

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        """A fresh client per connection: no state of a broken one carries over.
        pymodbus's automatic reconnection is off; ``Backoff`` paces attempts."""
        c = self.config
        if c.transport == "rtu":
            return AsyncModbusSerialClient(c.path, baudrate=c.baudrate, bytesize=c.bytesize, parity=c.parity,
                                           stopbits=c.stopbits, timeout=self.timeout, retries=0, reconnect_delay=0,
                                           name=f"modbus {self.name}")
        return AsyncModbusTcpClient(c.host, port=c.port, timeout=self.timeout, retries=0, reconnect_delay=0,
                                    name=f"modbus {self.name}")

    async def call(self, device: DeviceConfig, op: Callable[[Any], Awaitable[Any]], *, force: bool = False) -> Any:
        """Run one request for ``device``: wait for the line, its quiet time and the
        connection, then ask (again up to ``retries`` times). ``force`` skips the
        reconnect back-off (an operator's command deserves a real attempt)."""
        async with self.lock:
            wait = self.last_end + device.pause_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self._connect(device, force)
                return await self._attempts(device, op)
            finally:
                self.last_end = time.monotonic()

    async def _connect(self, device: DeviceConfig, force: bool) -> None:
        if self.up:
            return
        now = time.monotonic()
        if not force and not self.backoff.ready(now):
            raise LinkDown(f"{self.last_error}; next attempt in {self.backoff.wait(now):.1f} s")
        self.close()
        client = self._new_client()
        try:
            async with asyncio.timeout(device.timeout_s):
                ok = await client.connect()
        except TimeoutError:
            ok = False
        if not ok:
            client.close()
            self.last_error = f"cannot connect to {self.name}"
            delay = self.backoff.failed(time.monotonic())
            log.info("modbus: %s; next attempt in %.1f s", self.last_error, delay)
            raise LinkDown(self.last_error)
        self.client = client  # the back-off is reset by the first answer, not by the connect:
        self.connects += 1  # a PLC that accepts and then drops every connection is paced too
        self.connected_at = wall_clock()
        self.last_error = ""
        log.info("modbus: connected to %s", self.name)

    async def _attempts(self, device: DeviceConfig, op: Callable[[Any], Awaitable[Any]]) -> Any:
        tries = device.retries + 1
        for _ in range(tries):
            try:
                async with asyncio.timeout(device.timeout_s):
                    response = await op(self.client)
            except TimeoutError:
                if not self.up:  # the connection went away under the request: not the device's silence
                    self.drop(f"connection to {self.name} lost")
                    raise LinkDown(self.last_error) from None
                continue
            except ModbusIOException:
                continue  # an answer that does not match the request (late, or from another slave)
            except ConnectionException as exc:
                self.drop(f"connection to {self.name} lost: {exc}")
                raise LinkDown(self.last_error) from None
            self.backoff.succeeded()
            return response
        message = f"unit {device.unit_id} gave no answer within {device.timeout_s:g} s ({tries} "\
                  f"{'try' if tries == 1 else 'tries'})"
        if device.transport == "tcp":
            # A silent TCP peer is a half-open connection until proven otherwise.
            self.drop(message)
        raise NoAnswer(message)

    def drop(self, reason: str) -> None:
        """Close the connection after a failure; a request after the back-off reconnects."""
        if self.client is not None:
            log.info("modbus: %s: %s", self.name, reason)
        self.last_error = reason
        self.close()
        self.backoff.failed(time.monotonic())

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
            self.connected_at = None

    def status(self) -> dict[str, Any]:
        return {"link": self.name, "up": self.up, "connects": self.connects, "link_error": self.last_error,
                "reconnect_in_s": round(self.backoff.wait(time.monotonic()), 2)}


# -- device --------------------------------------------------------------------------------


class Device:
    """One slave: reads and writes through its link, with its own unit id, timeout and retries."""

    def __init__(self, config: DeviceConfig, link: Link) -> None:
        self.config = config
        self.link = link
        self.backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        """Paces requests to a device that stopped answering (its line may serve others)."""
        self.requests = 0
        self.last_error = ""

    @property
    def name(self) -> str:
        return self.config.name

    async def _call(self, op: Callable[[Any], Awaitable[Any]], force: bool = False) -> Any:
        now = time.monotonic()
        if not force and not self.backoff.ready(now):
            raise NoAnswer(f"{self.last_error}; next attempt in {self.backoff.wait(now):.1f} s")
        def counted(client: Any) -> Awaitable[Any]:
            self.requests += 1  # counted when it goes on the wire, not when the back-off refuses it
            return op(client)

        try:
            response = await self.link.call(self.config, counted, force=force)
        except NoAnswer as exc:
            self.last_error = str(exc)
            self.backoff.failed(time.monotonic())
            raise
        except LinkDown as exc:
            self.last_error = str(exc)
            raise
        self.backoff.succeeded()
        if response.isError():
            self.last_error = describe_exception(response.exception_code)
            raise DeviceRefused(response.exception_code)
        self.last_error = ""
        return response

    async def read(self, table: str, start: int, count: int, *, force: bool = False) -> list[int]:
        """``count`` registers (or bits as 0/1) of ``table`` from ``start``."""
        method, unit = READERS[table], self.config.unit_id
        response = await self._call(lambda c: getattr(c, method)(start, count=count, device_id=unit), force)
        data = response.bits if table in BIT_TABLES else response.registers
        if len(data) < count:
            raise BadAnswer(f"{len(data)} values in the answer to a read of {count} {table} at {start}")
        return [int(v) for v in data[:count]]

    async def write(self, table: str, address: int, value: int) -> None:
        """Write one coil (0/1) or one holding register (FC 5 / FC 6)."""
        unit = self.config.unit_id
        if table == "coil":
            await self._call(lambda c: c.write_coil(address, bool(value), device_id=unit), force=True)
        elif table == "holding":
            await self._call(lambda c: c.write_register(address, value, device_id=unit), force=True)
        else:
            raise ValueError(f"cannot write to a {table}")

    def status(self) -> dict[str, Any]:
        return {"device": self.name, "transport": self.config.describe(), "requests": self.requests,
                "last_error": self.last_error, **self.link.status()}


# -- polling ----------------------------------------------------------------------------------


Record = Callable[["Poller", list[TagState]], Awaitable[None]]


class Poller:
    """One device's tags: groups by interval, each planned into batched reads."""

    def __init__(self, device: Device, record: Record) -> None:
        self.device = device
        self.record = record
        c = device.config
        self.plans: list[tuple[float, list[Block]]] = [
            (interval, plan(tags, c.max_gap, c.max_registers, c.max_bits)) for interval, tags in groups(c.tags).items()
        ]
        self.states = {t.name: TagState(c.name, t) for t in c.tags}
        self.polls = 0
        self.restarts = 0
        self.last_crash = ""

    async def run(self) -> None:
        """Poll each group when it is due, forever."""
        due = [time.monotonic()] * len(self.plans)
        while True:
            for i, (interval, blocks) in enumerate(self.plans):
                if due[i] <= time.monotonic():
                    await self.poll(blocks)
                    due[i] += interval
                    now = time.monotonic()
                    if due[i] <= now:  # overran: skip the missed polls rather than burst
                        due[i] = now + interval
            await asyncio.sleep(max(0.0, min(due) - time.monotonic()))

    async def poll(self, blocks: Sequence[Block]) -> None:
        """Read every block once; every tag of them gets a new sample."""
        changed: list[TagState] = []
        down = ""
        for block in blocks:
            states = [self.states[t.name] for t, _ in block.tags]
            changed += states
            if down:
                _bad(states, "comm_fail", down)
                continue
            try:
                data = await self.device.read(block.table, block.start, block.count)
            except (LinkDown, NoAnswer) as exc:
                down = str(exc)
                _bad(states, "comm_fail", down)
            except DeviceRefused as exc:
                _bad(states, "comm_fail" if exc.code in GATEWAY_UNREACHABLE else "stale", str(exc))
            except BadAnswer as exc:
                _bad(states, "stale", str(exc))
            else:
                self._decode(block, data)
        self.polls += 1
        await self.record(self, changed)

    def _decode(self, block: Block, data: list[int]) -> None:
        t, mono = wall_clock(), time.monotonic()
        for tag, offset in block.tags:
            value = tag_value(tag, data, offset)
            state = self.states[tag.name]
            if math.isfinite(value):
                state.good(value, t, mono)
            else:
                state.bad("stale", t, "the device sent a value that is not a number")

    def status(self) -> dict[str, Any]:
        return {**self.device.status(), "tags": len(self.states), "polls": self.polls, "restarts": self.restarts,
                "last_crash": self.last_crash,
                "reads_per_poll": {f"{interval:g}s": len(blocks) for interval, blocks in self.plans}}


def _bad(states: Sequence[TagState], quality: TagQuality, detail: str) -> None:
    mark(states, quality, wall_clock(), detail)


# -- the component ---------------------------------------------------------------------------


class ModbusClient(TagClient[DeviceConfig, Device]):
    """The component: links, devices, supervised poll loops, the stale sweeper."""

    name = "modbus-client"
    protocol = "modbus"

    def __init__(self, context: PluginContext, devices: Sequence[DeviceConfig], tags: TagRepository) -> None:
        super().__init__(context, devices, tags)
        self.links: dict[tuple, Link] = {}
        self.pollers: list[Poller] = []

    async def start(self) -> None:
        await self.begin(wall_clock())
        by_link: dict[tuple, list[DeviceConfig]] = {}
        for c in self.configs:
            by_link.setdefault(c.link_key, []).append(c)
        self.links = {key: Link(configs) for key, configs in by_link.items()}
        self.devices = {c.name: Device(c, self.links[c.link_key]) for c in self.configs}
        self.pollers = [Poller(d, self._record) for d in self.devices.values() if d.config.tags]
        for p in self.pollers:
            self.run(self._supervise(p), f"modbus-poll-{p.device.name}")
        if self.pollers:
            self.run(self._sweep(), "modbus-stale-sweep")

    async def stop(self) -> None:
        await self.stop_tasks()
        for link in self.links.values():
            link.close()

    # supervision -------------------------------------------------------------

    async def _supervise(self, poller: Poller) -> None:
        """Run a device's poll loop; when it fails, mark its tags, wait and run it again."""
        c = poller.device.config
        pause = Backoff(c.reconnect_min_s, c.reconnect_max_s)
        while True:
            try:
                await poller.run()
            except Exception as exc:
                poller.restarts += 1
                poller.last_crash = f"{type(exc).__name__}: {exc}"
                delay = pause.failed(time.monotonic())
                log.exception("modbus: polling device %s failed; restarting in %.1f s", c.name, delay)
                states = list(poller.states.values())
                _bad(states, "stale", f"polling failed: {poller.last_crash}")
                with contextlib.suppress(Exception):
                    await self._record(poller, states)
                await asyncio.sleep(delay)

    async def _sweep(self) -> None:
        """Mark tags stale whose device has not delivered a fresh value for
        ``stale_after`` intervals (their poll may hang in a timeout meanwhile)."""
        period = min(0.5, max(0.01, min(i for p in self.pollers for i, _ in p.plans) / 4))
        while True:
            await asyncio.sleep(period)
            mono = time.monotonic()
            for p in self.pollers:
                overdue = [s for s in p.states.values() if s.overdue(mono, p.device.config.stale_after)]
                for s in overdue:
                    s.bad("stale", wall_clock(), f"no fresh value for {mono - (s.last_good_mono or mono):.1f} s")
                if overdue:
                    try:
                        await self._record(p, overdue)
                    except Exception:
                        log.exception("modbus: recording stale tags of %s failed", p.device.name)

    # samples -----------------------------------------------------------------

    async def _record(self, poller: Poller, states: list[TagState]) -> None:
        """Store what changed (and heartbeats), publish every sample, ingest totalisers."""
        await self.recorder.record(poller.device.name, states, poller.device.config.store_every_s)

    # views -------------------------------------------------------------------

    def states(self) -> Iterator[TagState]:
        return (s for p in self.pollers for s in p.states.values())

    def status(self) -> list[dict[str, Any]]:
        polled = {p.device.name: p for p in self.pollers}
        return [polled[name].status() if name in polled else d.status() for name, d in self.devices.items()]
