"""A simulated DMesh concentrator that dials in over TCP and speaks the protocol.

It behaves as the vendor's document says a concentrator does: HELLO,
CHALLENGE, AUTH; every data frame kept until it is ACKed OK; at most 8
unacknowledged frames in flight; the same frame (same seq, same payload) sent
again 10 s after it went unacknowledged, later after ACK RETRY, and again
after a reconnect; frames produced while disconnected are buffered; PING
answered with PONG, host frames of types 0x30 and 0x40..0x42 acknowledged on
receipt. Tests and benchmarks read ``acked`` to know exactly which frames the
host promised to have stored.

COMMAND frames are answered with COMMAND_RESULT after a delay, as ``on_command``
decides (default: DONE after 50 ms, with VALVE_CLOSED or RELAY_OFF in the status
after VALVE_CLOSE or RELAY_OFF; ``None``: never answered). A PROFILE_REQUEST is
answered with PROFILE frames of what ``profile(module_id, channel, from, to)``
returns (one value per hour from ``from``, ``None`` for "not recorded"), then
its COMMAND_RESULT. Frames answering commands are delivered like any data frame
but kept in ``answers_acked``, not in ``acked``.

Firmware is checked as a real concentrator does: FIRMWARE_BEGIN, FIRMWARE_BLOCK
and FIRMWARE_END are collected, the signature is verified against
``firmware_public_key`` (skipped when None), the blocks are assembled by offset,
size and sha256 are checked at FIRMWARE_END, and FIRMWARE_RESULT answers with
the code. A FIRMWARE_BEGIN with the same fields as the transfer in progress
continues it (blocks received so far are kept). Accepted images are kept in
``firmware_images``. ``drop_after_blocks`` = N closes the link once, on the N-th
FIRMWARE_BLOCK, before acknowledging it (what was acknowledged before still
reaches the host).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from balans_edge.core.tasks import cancel
from balans_edge.core.times import HOUR
from balans_edge.plugins.dmesh.codec import (
    Ack,
    AckStatus,
    Auth,
    Challenge,
    Command,
    CommandCode,
    CommandResult,
    CommandResultCode,
    FirmwareBegin,
    FirmwareBlock,
    FirmwareEnd,
    FirmwareResult,
    FirmwareResultCode,
    Frame,
    FrameType,
    Hello,
    Nack,
    Payload,
    Pong,
    Profile,
    StreamDecoder,
    Welcome,
    decode_payload,
)
from balans_edge.plugins.dmesh.session import expected_mac

log = logging.getLogger(__name__)

PROFILE_MAX = 168
DEFAULT_DELAY_S = 0.05
STATUS_AFTER = {CommandCode.VALVE_CLOSE: 1 << 5, CommandCode.RELAY_OFF: 1 << 8}
"""Module status flags after a command: VALVE_CLOSED, RELAY_OFF."""

CommandAnswer = Callable[[Command], "tuple[int, int, float] | None"]
"""(result code, status flags, delay in seconds) of a command, or None: never answered."""
ProfileSource = Callable[[int, int, int, int], "list[int | None]"]

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
    serial: str = ""
    """Device path of a serial line instead of TCP (the host opens the other end)."""
    baudrate: int = 115200
    firmware_public_key: bytes | None = None
    """The vendor's raw Ed25519 public key; None: signatures are not checked."""
    drop_after_blocks: int | None = None
    """Drop the link once, on this FIRMWARE_BLOCK (counted from 1), before acknowledging it."""


@dataclass
class Outgoing:
    seq: int
    frame: bytes
    sent_at: float = 0.0
    retry_at: float = 0.0
    answer: bool = False
    """Sent in answer to a host COMMAND (PROFILE, COMMAND_RESULT)."""


@dataclass
class Counters:
    sent: int = 0
    resent: int = 0
    acked: int = 0
    rejected: int = 0
    retry: int = 0
    connects: int = 0
    ack_latency_s: list[float] = field(default_factory=list)


def default_answer(command: Command) -> tuple[int, int, float]:
    return CommandResultCode.DONE, STATUS_AFTER.get(command.code, 0), DEFAULT_DELAY_S


class SimulatedConcentrator:
    def __init__(
        self,
        settings: ConcentratorSettings,
        clock: Callable[[], float] = time.time,
        *,
        on_command: CommandAnswer | None = None,
        profile: ProfileSource | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.on_command = on_command or default_answer
        self.profile = profile
        self._answers: set[asyncio.TimerHandle] = set()
        self._leftover: list[Frame] = []
        self._seq = 0
        self._queue: deque[Outgoing] = deque()
        self._in_flight: dict[int, Outgoing] = {}
        self.acked: dict[int, bytes] = {}
        """seq -> frame, for every submitted frame the host ACKed OK."""
        self.answers_acked: dict[int, bytes] = {}
        """seq -> frame, for every frame answering a command that the host ACKed OK."""
        self.rejected: dict[int, bytes] = {}
        self.received: list[Payload] = []
        """Host frames other than ACK and PING (WELCOME, COMMAND, NACK, ...)."""
        self.counters = Counters()
        self.firmware_images: dict[int, bytes] = {}
        """image_id -> the bytes of every image accepted."""
        self.firmware_results: list[FirmwareResult] = []
        self._fw: dict[int, tuple[FirmwareBegin, dict[int, bytes]]] = {}
        self._fw_blocks = 0
        self._fw_dropped = False
        self.connected = asyncio.Event()
        self.welcome: Welcome | None = None
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    # what the radio network produces -------------------------------------------------

    def submit(self, payload: Payload, *, answer: bool = False) -> int:
        """Queue a data frame; it is sent when the window allows. Returns its seq."""
        seq = self._next_seq()
        self._queue.append(Outgoing(seq, payload.frame(seq), answer=answer))
        self._idle.clear()
        self._wakeup.set()
        return seq

    @property
    def outstanding(self) -> int:
        """Frames not yet ACKed OK or REJECTED (queued or in flight)."""
        return len(self._queue) + len(self._in_flight)

    async def drained(self) -> None:
        """Wait until every submitted frame has been answered (wrap in asyncio.timeout).
        Raises ``Refused`` if the host refused the concentrator meanwhile (it stops for good)."""
        if self._task is None:
            await self._idle.wait()
            return
        idle = asyncio.ensure_future(self._idle.wait())
        try:
            await asyncio.wait({idle, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
        if not self._idle.is_set() and self._task.done() and not self._task.cancelled():
            self._task.result()

    # session ---------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    async def connect_once(self) -> None:
        """One session: handshake, then send and receive until the link drops."""
        s = self.settings
        reader, writer = await self._open()
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

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """TCP to the host, or the serial line the host's port is wired to (RS-485/USB)."""
        s = self.settings
        if s.serial:
            import serial_asyncio_fast

            return await serial_asyncio_fast.open_serial_connection(url=s.serial, baudrate=s.baudrate)
        return await asyncio.open_connection(s.host, s.port)

    async def _expect(self, reader: asyncio.StreamReader, decoder: StreamDecoder, kind: type) -> Payload:
        while True:
            data = await reader.read(4096)
            if not data:
                raise ConnectionError("host closed the connection during the handshake")
            frames = [f for f in decoder.feed(data) if isinstance(f, Frame)]
            for i, frame in enumerate(frames):
                payload = decode_payload(frame)
                if isinstance(payload, Nack):
                    self.received.append(payload)
                    raise Refused(f"NACK {payload.code}: {payload.text}")
                if isinstance(payload, kind):
                    self.received.append(payload)
                    self._leftover = frames[i + 1 :]  # host frames that came in the same read
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
        leftover, self._leftover = self._leftover, []
        for frame in leftover:
            with contextlib.suppress(ValueError):
                self._handle(frame.seq, decode_payload(frame), writer)
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
                if writer.transport.is_closing():
                    return

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
            if payload.status == AckStatus.OK and out.answer:
                self.answers_acked[out.seq] = out.frame
            elif payload.status == AckStatus.OK:
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
        if isinstance(payload, FirmwareBlock) and self._drop_now():
            return
        if payload.TYPE in HOST_ACKED_TYPES:
            writer.write(Ack(seq, AckStatus.OK).frame(self._next_seq()))
        self.received.append(payload)
        if isinstance(payload, Command):
            self._command(payload)
        elif isinstance(payload, FirmwareBegin | FirmwareBlock | FirmwareEnd):
            self._firmware(payload)

    def _drop_now(self) -> bool:
        self._fw_blocks += 1
        limit = self.settings.drop_after_blocks
        if limit is None or self._fw_dropped or self._fw_blocks < limit:
            return False
        self._fw_dropped = True
        if self._writer is not None:
            # Closed, not aborted: the ACKs already written reach the host (deterministic for tests).
            self._writer.close()
        return True

    def _firmware(self, payload: FirmwareBegin | FirmwareBlock | FirmwareEnd) -> None:
        if isinstance(payload, FirmwareBegin):
            current = self._fw.get(payload.image_id)
            if current is None or current[0] != payload:
                self._fw[payload.image_id] = (payload, {})
            return
        current = self._fw.get(payload.image_id)
        if isinstance(payload, FirmwareBlock):
            if current is not None:
                current[1][payload.offset] = payload.data
            return
        self._fw.pop(payload.image_id, None)
        code, image = self._check_firmware(current)
        if code == FirmwareResultCode.ACCEPTED:
            self.firmware_images[payload.image_id] = image
        result = FirmwareResult(payload.image_id, code)
        self.firmware_results.append(result)
        self.submit(result, answer=True)

    def _check_firmware(self, current: tuple[FirmwareBegin, dict[int, bytes]] | None) -> tuple[int, bytes]:
        if current is None:
            return FirmwareResultCode.BAD_LAYOUT, b""
        begin, blocks = current
        key = self.settings.firmware_public_key
        if key is not None:
            from cryptography.exceptions import InvalidSignature
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            from balans_edge.plugins.dmesh.firmware import manifest

            try:
                Ed25519PublicKey.from_public_bytes(key).verify(
                    begin.signature, manifest(begin.image_id, begin.target, begin.size, begin.sha256)
                )
            except InvalidSignature:
                return FirmwareResultCode.BAD_SIGNATURE, b""
        image = bytearray()
        for offset in sorted(blocks):
            if offset != len(image):  # a gap or an overlap
                return FirmwareResultCode.BAD_LAYOUT, b""
            image += blocks[offset]
        if len(image) != begin.size:
            return FirmwareResultCode.BAD_LAYOUT, b""
        if hashlib.sha256(image).digest() != begin.sha256:
            return FirmwareResultCode.BAD_HASH, b""
        return FirmwareResultCode.ACCEPTED, bytes(image)

    def _command(self, command: Command) -> None:
        answer = self.on_command(command)
        if answer is None:
            return
        result, status, delay = answer

        def respond() -> None:
            self._answers.discard(handle)
            if command.code == CommandCode.PROFILE_REQUEST and self.profile is not None:
                self._submit_profile(command)
            self.submit(CommandResult(command.command_id, result, status), answer=True)

        handle = asyncio.get_running_loop().call_later(delay, respond)
        self._answers.add(handle)

    def _submit_profile(self, command: Command) -> None:
        channel, t0, t1 = command.args
        values = list(self.profile(command.module_id, channel, t0, t1))[: max(0, (t1 - t0) // HOUR)]
        for k in range(0, len(values), PROFILE_MAX):
            part = tuple(values[k : k + PROFILE_MAX])
            if any(v is not None for v in part):
                self.submit(Profile(command.module_id, channel, t0 + k * HOUR, part), answer=True)

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
        for handle in self._answers:
            handle.cancel()
        self._answers.clear()
        await cancel(self._task)
        self._task = None

    def drop_link(self) -> None:
        """Cut the TCP connection abruptly (as a cellular modem would)."""
        if self._writer is not None:
            self._writer.transport.abort()
