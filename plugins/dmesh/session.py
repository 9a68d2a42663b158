"""One concentrator link: the session of the vendor's protocol over a byte stream.

The same session runs over TCP and over a serial line: HELLO, CHALLENGE,
AUTH, WELCOME, then data frames, each acknowledged with ACK OK only after its
content is durably stored (ACK RETRY when storage refused it, ACK REJECTED
when its payload does not match its type). Frames of one link are handled in
arrival order, one at a time.

Before WELCOME the host answers only the handshake (and a data frame with
NACK NOT_AUTHENTICATED, as the protocol says): an unauthenticated peer gets no
PONG, and nothing it sends moves its deadline, so a link that has not
authenticated within ``auth_timeout_s`` of being opened is closed. Otherwise
anyone who can reach the port could hold connections open for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from typing import TYPE_CHECKING, Protocol

from balans_edge.core.model import MAX_HOPS, RawReading
from balans_edge.core.storage import ModuleHealth, StorageError
from balans_edge.core.times import HOUR
from balans_edge.plugins.dmesh.codec import (
    DATA_TYPES,
    Ack,
    AckStatus,
    Auth,
    BadFrame,
    Challenge,
    CommandResult,
    Event,
    FirmwareResult,
    Frame,
    FrameType,
    Hello,
    Nack,
    NackCode,
    Payload,
    PayloadError,
    Ping,
    Pong,
    Profile,
    Readings,
    StreamDecoder,
    Topology,
    UnknownType,
    Welcome,
    decode_payload,
)
from balans_edge.plugins.dmesh.repository import ModuleEvent

if TYPE_CHECKING:
    from balans_edge.core.context import PluginContext
    from balans_edge.plugins.dmesh.firmware import FirmwareImage
    from balans_edge.plugins.dmesh.plugin import DmeshConfig
    from balans_edge.plugins.dmesh.repository import DmeshRepository

log = logging.getLogger(__name__)

MAX_BAD_IN_A_ROW = 16
HANDSHAKE = frozenset({FrameType.HELLO, FrameType.AUTH})
"""The only frames answered before WELCOME (besides data frames, NACKed)."""
READ_SIZE = 65536


class SessionHost(Protocol):
    """What a session needs from its driver."""

    config: DmeshConfig
    context: PluginContext
    repository: DmeshRepository

    def key_of(self, concentrator_id: int) -> bytes | None: ...

    async def welcomed(self, session: Session) -> None: ...

    async def auth_failed(self, session: Session, reason: str) -> None: ...

    def command_result(self, concentrator_id: int, result: CommandResult) -> None: ...

    def firmware_result(self, concentrator_id: int, result: FirmwareResult) -> None: ...

    def firmware_image(self, concentrator_id: int, image_id: int) -> FirmwareImage | None: ...


class CommandRefused(Exception):
    """The concentrator answered a host frame with NACK or a non-OK ACK."""


def expected_mac(key: bytes, nonce: bytes, concentrator_id: int) -> bytes:
    """HMAC-SHA256(key, nonce ‖ concentrator_id as u32 big-endian)."""
    return hmac.new(key, nonce + concentrator_id.to_bytes(4, "big"), hashlib.sha256).digest()


class Session:
    def __init__(
        self, host: SessionHost, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        self.host = host
        self.config = host.config
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.decoder = StreamDecoder()
        self.hello: Hello | None = None
        self.concentrator_id: int | None = None
        self.authenticated = False
        self.replaced = False
        self.handshake_timed_out = False
        self.reason = ""
        self._nonce: bytes | None = None
        self._seq = 0
        self._closing = False
        self._bad = 0
        self._in_bad = False
        self._acks: dict[int, asyncio.Future[None]] = {}
        """Host frames waiting for their transport ACK, by the host's seq."""
        now = asyncio.get_running_loop().time()
        self.opened = self.last_rx = self.last_tx = now

    # link -------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the link until the peer leaves, it fails or the session is closed."""
        try:
            await self._loop()
        except (ConnectionError, OSError) as exc:
            self.reason = self.reason or f"link error: {exc}"
        finally:
            self._close_transport()
            self._fail_requests()

    def close(self, reason: str) -> None:
        """End the session: frames already written are sent, then the link closes."""
        if not self._closing:
            self._closing = True
            self.reason = self.reason or reason
            self._close_transport()
            self._fail_requests()

    def _fail_requests(self) -> None:
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(ConnectionError(self.reason or "link closed"))

    @property
    def closing(self) -> bool:
        return self._closing

    def _close_transport(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def _loop(self) -> None:
        while not self._closing:
            wait = self._authenticated_wait() if self.authenticated else self._handshake_wait()
            if wait is None:
                return
            if wait <= 0:
                await self.send(Ping())
                continue
            try:
                # asyncio.timeout, not wait_for, which can swallow a racing cancellation on 3.11.
                async with asyncio.timeout(wait):
                    data = await self.reader.read(READ_SIZE)
            except TimeoutError:
                continue
            if not data:
                self.reason = self.reason or "closed by the peer"
                return
            await self._received(data)

    def _handshake_wait(self) -> float | None:
        """Seconds left to authenticate, counted from the link's opening (None: closed now)."""
        limit = min(self.config.auth_timeout_s, self.config.dead_after_s)
        left = self.opened + limit - asyncio.get_running_loop().time()
        if left <= 0:
            self.handshake_timed_out = True
            self.close(f"not authenticated within {limit:g} s")
            return None
        return left

    def _authenticated_wait(self) -> float | None:
        """Seconds to wait for the next read (<= 0: time to PING; None: the link is dead and closed)."""
        now = asyncio.get_running_loop().time()
        keepalive, dead_after = self.config.keepalive_s, self.config.dead_after_s
        dead_in = self.last_rx + dead_after - now
        if dead_in <= 0:
            self.close(f"silent for {dead_after:g} s")
            return None
        ping_in = max(self.last_rx, self.last_tx) + keepalive - now
        return ping_in if ping_in <= 0 else min(dead_in, ping_in)

    async def _received(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        for item in self.decoder.feed(data):
            if self._closing:
                return
            if isinstance(item, BadFrame):
                # Counted as the decoder's bad_in_a_row counts them (the remains
                # of a dropped frame are not another bad frame), item by item so
                # that a good frame later in the same read does not hide a 16th.
                if item.reason != "garbage":
                    self._bad, self._in_bad = self._bad + 1, True
                elif not self._in_bad:
                    self._bad += 1
                if self._bad >= MAX_BAD_IN_A_ROW:
                    self.close(f"{self._bad} bad frames in a row")
                    return
                continue
            self._bad, self._in_bad = 0, False
            if self.authenticated:
                self.last_rx = loop.time()
            await self._handle(item)

    # sending ----------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    async def send(self, payload: Payload) -> None:
        if self._closing:
            return
        self.writer.write(payload.frame(self._next_seq()))
        self.last_tx = asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(self.writer.drain(), self.config.dead_after_s)
        except TimeoutError:
            self.close("peer stopped reading")

    async def request(self, payload: Payload) -> None:
        """Send a host frame the concentrator acknowledges on receipt (COMMAND,
        FIRMWARE_*) and return once it did. Raises ConnectionError when the link
        closes first, CommandRefused on NACK or an ACK other than OK."""
        if self._closing:
            raise ConnectionError("link closed")
        seq = (self._seq + 1) & 0xFFFF  # the seq send() is about to use
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[seq] = fut
        try:
            await self.send(payload)
            if self._closing and not fut.done():
                raise ConnectionError(self.reason or "link closed")
            await fut
        finally:
            self._acks.pop(seq, None)

    def _answered(self, seq: int, error: Exception | None) -> None:
        fut = self._acks.get(seq)
        if fut is not None and not fut.done():
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

    async def ack(self, frame: Frame, status: AckStatus) -> None:
        await self.send(Ack(frame.seq, status))

    async def nack(self, frame: Frame, code: NackCode, text: str = "") -> None:
        await self.send(Nack(frame.seq, code, text))

    # frames -----------------------------------------------------------------

    async def _handle(self, frame: Frame) -> None:
        if not self.authenticated and frame.type not in HANDSHAKE:
            # Before WELCOME a data frame gets NACK NOT_AUTHENTICATED (and is
            # not stored); anything else (PING, ACK, unknown types) goes unanswered.
            if frame.type in DATA_TYPES:
                await self.nack(frame, NackCode.NOT_AUTHENTICATED, "authenticate first")
            return
        try:
            payload = decode_payload(frame)
        except UnknownType as exc:
            await self.nack(frame, NackCode.UNKNOWN_TYPE, str(exc))
            return
        except PayloadError as exc:
            if frame.type in DATA_TYPES:
                log.warning("%s: frame %d rejected: %s", self.name, frame.seq, exc)
                await self.ack(frame, AckStatus.REJECTED)
            else:
                await self.nack(frame, NackCode.BAD_PAYLOAD, str(exc))
            return
        if isinstance(payload, Hello):
            await self._on_hello(frame, payload)
        elif isinstance(payload, Auth):
            await self._on_auth(frame, payload)
        elif isinstance(payload, Ping):
            await self.send(Pong(frame.seq))
        elif isinstance(payload, Ack):
            # Transport acknowledgement of a host frame.
            refused = None if payload.status == AckStatus.OK else CommandRefused(
                f"concentrator answered ACK {AckStatus(payload.status).name}"
            )
            self._answered(payload.acked_seq, refused)
        elif isinstance(payload, Pong):
            pass  # traffic
        elif isinstance(payload, Nack):
            refused = CommandRefused(f"concentrator answered NACK {payload.code}: {payload.text}")
            self._answered(payload.ref_seq, refused)
            log.info("%s: NACK %d of host frame %d: %s", self.name, payload.code, payload.ref_seq, payload.text)
        elif frame.type in DATA_TYPES:
            await self._on_data(frame, payload)
        else:
            await self.nack(frame, NackCode.BAD_FRAME, f"{type(payload).__name__.upper()} is a host frame")

    @property
    def name(self) -> str:
        who = f"concentrator {self.concentrator_id}" if self.concentrator_id is not None else "unidentified"
        return f"{who} at {self.peer}"

    async def _on_hello(self, frame: Frame, hello: Hello) -> None:
        if self.authenticated:
            await self.nack(frame, NackCode.BAD_FRAME, "already authenticated")
            return
        self.hello, self.concentrator_id = hello, hello.concentrator_id
        self._nonce = secrets.token_bytes(16)
        await self.send(Challenge(self._nonce))

    async def _on_auth(self, frame: Frame, auth: Auth) -> None:
        if self.authenticated or self._nonce is None or self.hello is None:
            await self.nack(frame, NackCode.BAD_FRAME, "AUTH without a CHALLENGE")
            return
        nonce, self._nonce = self._nonce, None
        hello = self.hello
        key = self.host.key_of(hello.concentrator_id)
        if key is None:
            await self._refuse(frame, NackCode.UNKNOWN_CONCENTRATOR, "unknown concentrator")
            return
        if not hmac.compare_digest(expected_mac(key, nonce, hello.concentrator_id), auth.mac):
            await self._refuse(frame, NackCode.AUTH_FAILED, "bad MAC")
            return
        now = time.time()
        flags = 1 if abs(hello.clock - now) > self.config.clock_drift_limit_s else 0
        self.authenticated = True
        self.last_rx = asyncio.get_running_loop().time()
        # Registered (an older link of the same concentrator closed) and logged
        # before the concentrator learns it is welcome.
        await self.host.welcomed(self)
        await self.send(Welcome(int(now), flags))

    async def _refuse(self, frame: Frame, code: NackCode, reason: str) -> None:
        log.warning("%s: authentication refused: %s", self.name, reason)
        await self.nack(frame, code, reason)
        self.close(reason)
        await self.host.auth_failed(self, reason)

    async def _on_data(self, frame: Frame, payload: Payload) -> None:
        try:
            await self._store(payload)
        except StorageError as exc:
            log.warning("%s: frame %d not stored, asking for it again: %s", self.name, frame.seq, exc)
            await self.ack(frame, AckStatus.RETRY)
            return
        except Exception:
            log.exception("%s: frame %d not stored, asking for it again", self.name, frame.seq)
            await self.ack(frame, AckStatus.RETRY)
            return
        await self.ack(frame, AckStatus.OK)

    async def _store(self, payload: Payload) -> None:
        """Store a data frame's content durably (returns after the commit)."""
        context, repository = self.host.context, self.host.repository
        cid, now = self.concentrator_id, int(time.time())
        if isinstance(payload, Readings):
            batch = [
                RawReading(r.module_id, channel, r.ts, counter, r.status)
                for r in payload.records
                for channel, counter in zip(r.channels, r.counters, strict=True)
            ]
            # Battery, link and route ride along with every record: stored with
            # the readings (one transaction), so the network view and its
            # detectors do not wait for the next TOPOLOGY.
            health = [
                ModuleHealth(r.module_id, r.ts, r.battery_mv, r.rssi, r.hops if 1 <= r.hops <= MAX_HOPS else None)
                for r in payload.records
            ]
            if health:  # one per record: none only when the frame has no records
                await context.ingest.ingest(batch, health=health)
        elif isinstance(payload, Profile):
            batch = [
                RawReading(payload.module_id, payload.channel, payload.start + i * HOUR, value, 0)
                for i, value in enumerate(payload.values)
                if value is not None
            ]
            if batch:
                await context.ingest.ingest(batch)
        elif isinstance(payload, Topology):
            await repository.store_topology(cid, now, list(payload.modules))
        elif isinstance(payload, Event):
            event = ModuleEvent(cid, payload.module_id, payload.ts, payload.code, payload.value, now)
            await repository.store_module_events([event])
        elif isinstance(payload, CommandResult):
            await repository.store_command_result(cid, payload.command_id, payload.result, payload.status, now)
            if cid is not None:
                self.host.command_result(cid, payload)
        elif isinstance(payload, FirmwareResult):
            # The pushed image's target and version go with the result: an
            # accepted image counts as installed when the next one is checked.
            image = self.host.firmware_image(cid, payload.image_id) if cid is not None else None
            target, version = (image.target, image.version_text) if image is not None else (None, None)
            await repository.store_firmware_result(cid, payload.image_id, payload.result, now, target, version)
            if cid is not None:
                self.host.firmware_result(cid, payload)
        else:  # pragma: no cover - DATA_TYPES and the branches above list the same types
            raise TypeError(f"no storage for {type(payload).__name__}")
