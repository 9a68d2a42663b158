"""A simulated DMesh concentrator that dials in over TCP and speaks the protocol.

It behaves as the vendor's document says a concentrator does: HELLO,
CHALLENGE, AUTH; every data frame kept until it is ACKed OK; at most 8
unacknowledged frames in flight; the same frame (same seq, same payload) sent
again 10 s after it went unacknowledged, later after ACK RETRY, and again
after a reconnect; frames produced while disconnected are buffered; PING
answered with PONG, host frames of types 0x30 and 0x40..0x42 acknowledged on
receipt. Tests and benchmarks read ``acked`` to know exactly which frames the
host promised to have stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from balans_edge.core.tasks import cancel
from balans_edge.plugins.dmesh.codec import (
    Ack,
    AckStatus,
    Auth,
    Challenge,
    Frame,
    FrameType,
    Hello,
    Nack,
    Payload,
    Pong,
    StreamDecoder,
    Welcome,
    decode_payload,
)
from balans_edge.plugins.dmesh.session import expected_mac

log = logging.getLogger(__name__)

HOST_ACKED_TYPES = {FrameType.COMMAND, FrameType.FIRMWARE_BEGIN, FrameType.FIRMWARE_BLOCK, FrameType.FIRMWARE_END}


class Refused(Exception):
    """The host refused the session (NACK during the handshake)."""


@dataclass
class ConcentratorSettings:
    concentrator_id: int
    key: bytes
    host: str = "127.0.0.1"
    port: int = 7433
    window: int = 8
    retransmit_s: float = 10.0
    reconnect_s: float = 1.0
    clock_offset_s: int = 0
    """How far the concentrator's clock is off (for clock-drift tests)."""
    firmware: tuple[int, int, int] = (1, 4, 2)
    modules: int = 0
    meters: int = 0


@dataclass
class Outgoing:
    seq: int
    frame: bytes
    sent_at: float = 0.0
    retry_at: float = 0.0


@dataclass
class Counters:
    sent: int = 0
    resent: int = 0
    acked: int = 0
    rejected: int = 0
    retry: int = 0
    connects: int = 0
    ack_latency_s: list[float] = field(default_factory=list)


class SimulatedConcentrator:
    def __init__(self, settings: ConcentratorSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._seq = 0
        self._queue: deque[Outgoing] = deque()
        self._in_flight: dict[int, Outgoing] = {}
        self.acked: dict[int, bytes] = {}
        """seq -> frame, for every frame the host ACKed OK."""
        self.rejected: dict[int, bytes] = {}
        self.received: list[Payload] = []
        """Host frames other than ACK and PING (WELCOME, COMMAND, NACK, ...)."""
        self.counters = Counters()
        self.connected = asyncio.Event()
        self.welcome: Welcome | None = None
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    # what the radio network produces -------------------------------------------------

    def submit(self, payload: Payload) -> int:
        """Queue a data frame; it is sent when the window allows. Returns its seq."""
        seq = self._next_seq()
        self._queue.append(Outgoing(seq, payload.frame(seq)))
        self._idle.clear()
        self._wakeup.set()
        return seq

    @property
    def outstanding(self) -> int:
        """Frames not yet ACKed OK or REJECTED (queued or in flight)."""
        return len(self._queue) + len(self._in_flight)

    async def drained(self) -> None:
        """Wait until every submitted frame has been answered (wrap in asyncio.timeout)."""
        await self._idle.wait()

    # session ---------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    async def connect_once(self) -> None:
        """One session: handshake, then send and receive until the link drops."""
        s = self.settings
        reader, writer = await asyncio.open_connection(s.host, s.port)
        decoder = StreamDecoder()
        self._writer = writer
        try:
            now = int(self.clock()) + s.clock_offset_s
            hello = Hello(s.concentrator_id, *s.firmware, s.modules, s.meters, now)
            writer.write(hello.frame(self._next_seq()))
            challenge = await self._expect(reader, decoder, Challenge)
            writer.write(Auth(expected_mac(s.key, challenge.nonce, s.concentrator_id)).frame(self._next_seq()))
            self.welcome = await self._expect(reader, decoder, Welcome)
            self.counters.connects += 1
            # After a reconnect everything unacknowledged goes out again, same seq and payload.
            self._queue.extendleft(reversed(sorted(self._in_flight.values(), key=lambda o: o.sent_at)))
            self._in_flight.clear()
            self.connected.set()
            sender = asyncio.create_task(self._send_loop(writer))
            try:
                await self._receive_loop(reader, decoder, writer)
            finally:
                await cancel(sender)
        finally:
            self.connected.clear()
            self._writer = None
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

    async def _expect(self, reader: asyncio.StreamReader, decoder: StreamDecoder, kind: type) -> Payload:
        while True:
            data = await reader.read(4096)
            if not data:
                raise ConnectionError("host closed the connection during the handshake")
            for frame in decoder.feed(data):
                if not isinstance(frame, Frame):
                    continue
                payload = decode_payload(frame)
                if isinstance(payload, Nack):
                    self.received.append(payload)
                    raise Refused(f"NACK {payload.code}: {payload.text}")
                if isinstance(payload, kind):
                    self.received.append(payload)
                    return payload

    async def _send_loop(self, writer: asyncio.StreamWriter) -> None:
        s = self.settings
        while True:
            now = time.monotonic()
            for out in self._in_flight.values():
                if out.retry_at <= now:
                    writer.write(out.frame)
                    out.retry_at = now + s.retransmit_s
                    self.counters.resent += 1
            while self._queue and len(self._in_flight) < s.window:
                out = self._queue.popleft()
                out.sent_at = out.sent_at or now
                out.retry_at = now + s.retransmit_s
                self._in_flight[out.seq] = out
                writer.write(out.frame)
                self.counters.sent += 1
            await writer.drain()
            self._wakeup.clear()
            next_retry = min((o.retry_at for o in self._in_flight.values()), default=now + 1.0)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that races with the event, and stop() would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(next_retry - time.monotonic(), 0.001)):
                    await self._wakeup.wait()

    async def _receive_loop(
        self, reader: asyncio.StreamReader, decoder: StreamDecoder, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            for frame in decoder.feed(data):
                if not isinstance(frame, Frame):
                    continue
                try:
                    payload = decode_payload(frame)
                except ValueError:
                    continue
                self._handle(frame.seq, payload, writer)

    def _handle(self, seq: int, payload: Payload, writer: asyncio.StreamWriter) -> None:
        if isinstance(payload, Ack):
            out = self._in_flight.get(payload.acked_seq)
            if out is None:
                return
            if payload.status == AckStatus.RETRY:
                out.retry_at = time.monotonic() + self.settings.retransmit_s
                self.counters.retry += 1
                return
            del self._in_flight[payload.acked_seq]
            if payload.status == AckStatus.OK:
                self.acked[out.seq] = out.frame
                self.counters.acked += 1
                self.counters.ack_latency_s.append(time.monotonic() - out.sent_at)
            else:
                self.rejected[out.seq] = out.frame
                self.counters.rejected += 1
            if not self.outstanding:
                self._idle.set()
            self._wakeup.set()
            return
        if payload.TYPE == FrameType.PING:
            writer.write(Pong(seq).frame(self._next_seq()))
            return
        if payload.TYPE in HOST_ACKED_TYPES:
            writer.write(Ack(seq, AckStatus.OK).frame(self._next_seq()))
        self.received.append(payload)

    # lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected: reconnect after every drop, keep buffering meanwhile."""
        while True:
            try:
                await self.connect_once()
            except Refused:
                raise
            except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
                log.info("concentrator %s: link down (%s)", self.settings.concentrator_id, exc)
            await asyncio.sleep(self.settings.reconnect_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"concentrator-{self.settings.concentrator_id}")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    def drop_link(self) -> None:
        """Cut the TCP connection abruptly (as a cellular modem would)."""
        if self._writer is not None:
            self._writer.transport.abort()
