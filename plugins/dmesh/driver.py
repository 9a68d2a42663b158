"""The DMesh concentrator driver: a TCP listener the concentrators dial in to,
and serial lines the host opens, each link served by a ``Session``.

One concentrator id has at most one live session: a concentrator that
authenticates again on a new link replaces its old one, which is closed.
Connections are recorded in the storage's connection log.

At most ``max_unauthenticated`` TCP links may be in the handshake at once: one
more is closed as soon as it is accepted, so that peers who never authenticate
cannot use up the host's sockets (each of those links is closed anyway after
``auth_timeout_s``). Refusals and handshake timeouts are logged with the
peer's address, at most once per ``REFUSAL_LOG_S`` with a count of the rest:
a flood must not flood the log as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from balans_edge.core.log_limit import LimitedLog
from balans_edge.core.storage import ConnectionEvent, StorageError
from balans_edge.core.tasks import cancel
from balans_edge.plugins.dmesh.commands import DmeshCommands
from balans_edge.plugins.dmesh.firmware import FirmwareImage, FirmwarePusher
from balans_edge.plugins.dmesh.session import Session

if TYPE_CHECKING:
    from balans_edge.core.context import PluginContext
    from balans_edge.plugins.dmesh.codec import CommandResult, FirmwareResult
    from balans_edge.plugins.dmesh.plugin import DmeshConfig, SerialConfig

log = logging.getLogger(__name__)

REFUSAL_LOG_S = 10.0
"""Shortest time between two log lines about refused or timed-out handshakes."""
SERIAL_BACKOFF_S = (0.5, 30.0)
"""First and longest wait before a serial port is opened again."""
STOP_GRACE_S = 5.0


class DmeshDriver:
    name = "dmesh-driver"

    def __init__(self, context: PluginContext, config: DmeshConfig) -> None:
        self.context = context
        self.config = config
        self._keys = {c.id: c.key.encode("utf-8") for c in config.concentrators}
        self.port: int | None = None
        """The bound TCP port once started (useful with ``port = 0``)."""
        self._tcp: asyncio.Server | None = None
        self._sessions: dict[Session, asyncio.Task | None] = {}
        self._handshaking: set[Session] = set()
        """TCP sessions not yet authenticated (at most ``max_unauthenticated``)."""
        self._refusals = LimitedLog(log, burst=1, window_s=REFUSAL_LOG_S)
        self._by_id: dict[int, Session] = {}
        self._serial_tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.commands = DmeshCommands(self)
        """Commands to modules, tracked until their COMMAND_RESULT; back-fill."""
        self.firmware = FirmwarePusher(self)
        """Firmware pushes, tracked until their FIRMWARE_RESULT; resumed after a reconnect."""

    # component --------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        if self.config.listen:
            self._tcp = await asyncio.start_server(self._accept, self.config.host, self.config.port)
            self.port = self._tcp.sockets[0].getsockname()[1]
            log.info("dmesh: listening on %s:%d", self.config.host, self.port)
        for port in self.config.serial:
            self._serial_tasks.append(self.context.health.supervise(
                self, asyncio.create_task(self._serial_loop(port), name=f"dmesh-serial-{port.path}")))

    async def stop(self) -> None:
        self._stopping = True
        await self.commands.stop()
        await self.firmware.stop()
        if self._tcp is not None:
            self._tcp.close()
        for task in self._serial_tasks:
            task.cancel()
        for session in list(self._sessions):
            session.close("host stopping")
        tasks = [t for t in self._sessions.values() if t is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
            for task in late:
                await cancel(task)
        for task in self._serial_tasks:
            await cancel(task)
        self._serial_tasks.clear()
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), STOP_GRACE_S)
            self._tcp = None

    # sessions ---------------------------------------------------------------

    def sessions(self) -> dict[int, Session]:
        """Authenticated sessions by concentrator id."""
        return dict(self._by_id)

    def key_of(self, concentrator_id: int) -> bytes | None:
        return self._keys.get(concentrator_id)

    async def welcomed(self, session: Session) -> None:
        cid = session.concentrator_id
        if cid is None:  # pragma: no cover - a session is welcomed only after HELLO
            return
        self._handshaking.discard(session)
        old = self._by_id.get(cid)
        self._by_id[cid] = session
        if old is not None and old is not session:
            old.replaced = True
            old.close(f"replaced by a new connection from {session.peer}")
            log.info("dmesh: concentrator %d reconnected from %s, closing %s", cid, session.peer, old.peer)
        hello = session.hello
        detail = f"firmware {hello.firmware}, {hello.modules} modules, {hello.meters} meters" if hello else ""
        log.info("dmesh: concentrator %d connected from %s (%s)", cid, session.peer, detail)
        await self._log(ConnectionEvent(cid, "connect", int(time.time()), session.peer, detail))
        self.commands.logged_in(cid)
        self.firmware.logged_in(cid)

    def command_result(self, concentrator_id: int, result: CommandResult) -> None:
        self.commands.result_arrived(concentrator_id, result)

    def firmware_result(self, concentrator_id: int, result: FirmwareResult) -> None:
        self.firmware.result_arrived(concentrator_id, result)

    def firmware_image(self, concentrator_id: int, image_id: int) -> FirmwareImage | None:
        return self.firmware.image(concentrator_id, image_id)

    def _refused(self, peer: str, why: str) -> None:
        self._refusals.log(logging.WARNING, "dmesh: link from %s refused before authentication: %s", peer, why)

    async def auth_failed(self, session: Session, reason: str) -> None:
        await self._log(ConnectionEvent(session.concentrator_id, "auth_failed", int(time.time()), session.peer, reason))

    async def _serve(self, session: Session) -> None:
        self._sessions[session] = asyncio.current_task()
        try:
            await session.run()
        finally:
            self._sessions.pop(session, None)
            self._handshaking.discard(session)
            if session.handshake_timed_out:
                self._refused(session.peer, session.reason)
            cid = session.concentrator_id
            if session.authenticated and cid is not None:
                if self._by_id.get(cid) is session:
                    del self._by_id[cid]
                event = "replaced" if session.replaced else "disconnect"
                log.info("dmesh: concentrator %d at %s: %s", cid, session.peer, session.reason)
                await self._log(ConnectionEvent(cid, event, int(time.time()), session.peer, session.reason))

    async def _log(self, event: ConnectionEvent) -> None:
        try:
            await self.context.storage.log_connection(event)
        except StorageError as exc:
            log.warning("dmesh: connection log not written: %s", exc)

    # transports -------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        if self._stopping:
            writer.close()
            return
        if len(self._handshaking) >= self.config.max_unauthenticated:
            writer.close()
            self._refused(peer, f"{len(self._handshaking)} links are authenticating already (max_unauthenticated)")
            return
        session = Session(self, reader, writer, peer)
        self._handshaking.add(session)
        await self._serve(session)

    async def _serial_loop(self, port: SerialConfig) -> None:
        """Open the port and serve it; open it again after an error, waiting
        longer after each failure in a row (up to SERIAL_BACKOFF_S[1])."""
        import serial_asyncio_fast

        first, longest = SERIAL_BACKOFF_S
        delay = first
        while not self._stopping:
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(url=port.path, baudrate=port.baudrate)
            except Exception as exc:
                log.warning("dmesh: cannot open %s: %s (again in %.1f s)", port.path, exc, delay)
            else:
                session = Session(self, reader, writer, f"serial:{port.path}")
                await self._serve(session)
                if session.authenticated:
                    delay = first
                log.info("dmesh: %s closed (%s), opening it again in %.1f s", port.path, session.reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)
