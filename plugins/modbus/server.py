"""The Modbus TCP server for SCADA: the register map served from a prepared
register image, coil writes through the core actuation service.

A small asyncio MBAP server of our own rather than pymodbus's
``ModbusTcpServer``. pymodbus 3.16 was tried against the same frames the
tests send, and its server

- gives a datastore no way to learn the client's address, which the audit of
  a coil write must name (``requested_by = "modbus:<ip>:<port>"``);
- answers nothing and keeps the connection open on a wrong protocol id, a
  length field of 0 or 1, or a length beyond the frame limit, and drops the
  request that follows such a frame;
- answers only the first of two requests that arrive in one TCP segment
  (Modbus TCP lets a client send several before the first answer);
- answers 01 instead of 03 to a quantity beyond the limit, 04 after a
  traceback to an unknown unit id, and serves function codes we do not offer
  (08 diagnostics echoes);
- has no limit on connections.

The MBAP framing and the six function codes offered here (1, 2, 3, 4, 5,
15) are a few dozen lines; a read is a slice of a numpy array turned into
bytes. pymodbus stays the reference in the benchmark and the client side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pymodbus.constants import ExcCodes

from balans_edge.core.components import Alarm, Command, CommandCode
from balans_edge.plugins.common.bridge import LiveBridge
from balans_edge.plugins.common.listen import ListenConfig
from balans_edge.plugins.common.live import load_all, refresh_new_hour, resolutions
from balans_edge.plugins.modbus.regmap import Coil, MapError, RegisterMap, load_map, order_keys
from balans_edge.plugins.modbus.snapshot import Snapshot
from balans_edge.plugins.modbus.values import BYTE_ORDERS
from balans_edge.settings import setting

if TYPE_CHECKING:
    from balans_edge.core.context import PluginContext
    from balans_edge.plugins.modbus.repository import BridgeSlotRepository

log = logging.getLogger(__name__)

MBAP = struct.Struct(">HHHB")
"""Transaction id, protocol id (0), length (unit id + PDU), unit id."""
MAX_PDU = 253
MAX_REGISTERS = 125
MAX_BITS = 2000
MAX_WRITE_BITS = 1968
BUFFER_LIMIT = 65536
"""Bytes of unprocessed input a connection may hold (only while a write is executed)."""
GATEWAY_NO_RESPONSE = 0x0B
COIL_ON, COIL_OFF = 0xFF00, 0x0000
COMMANDS = {("valve", 1): CommandCode.VALVE_OPEN, ("valve", 0): CommandCode.VALVE_CLOSE,
            ("relay", 1): CommandCode.RELAY_ON, ("relay", 0): CommandCode.RELAY_OFF}
WORDS = {("valve", 1): "open", ("valve", 0): "close", ("relay", 1): "on", ("relay", 0): "off"}
HEALTH_PLUGIN_FAILED, HEALTH_REFRESH_FAILED = 1, 2


def _check_orders(orders: dict[str, str]) -> str | None:
    known = set(order_keys())
    for key, order in orders.items():
        if key not in known:
            return f"orders: unknown value {key!r} (known: <block>.<field> such as meter.register_value)"
        if order not in BYTE_ORDERS:
            return f"orders: {key}: expected one of {', '.join(BYTE_ORDERS)}, got {order!r}"
    return None


def _check_addresses(key: str, pins: dict[str, int]) -> str | None:
    for object_id, address in pins.items():
        if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address <= 65535:
            return f"{key}: {object_id}: expected an address 0..65535, got {address!r}"
    return None


def _check_codes(codes: dict[str, int]) -> str | None:
    for kind, code in codes.items():
        if isinstance(code, bool) or not isinstance(code, int) or not 1 <= code <= 65535:
            return f"alarm_codes: {kind}: expected a code 1..65535, got {code!r}"
    return None


@dataclass(frozen=True)
class ServerConfig(ListenConfig):
    """``[plugins.modbus.server]``: the Modbus TCP server for SCADA."""

    port: Annotated[int, setting(range=(0, 65535), doc="TCP port (0: any free port)")] = 5020
    unit_id: Annotated[int, setting(range=(1, 255), doc="unit id answered; others get exception 0B")] = 1
    byte_order: Annotated[Literal["ABCD", "CDAB", "BADC", "DCBA"], setting(doc="byte order of every "
                                                                               "value")] = "ABCD"
    orders: Annotated[dict[str, str], setting(doc=(
        'per-value byte order by "<block>.<field>", e.g. `{ "meter.register_value" = "CDAB" }`'))] = \
        field(default_factory=dict)
    system_address: Annotated[int, setting(range=(0, 65535), doc="where the system block starts")] = 0
    groups_base: Annotated[int, setting(range=(0, 65535), doc="where the group blocks start")] = 100
    meters_base: Annotated[int, setting(range=(0, 65535), doc="where the meter blocks start (the three bases "
                                                              "differ)")] = 10000
    coils_base: Annotated[int, setting(range=(0, 65535), doc="where the meters' coils start")] = 0
    meter_addresses: Annotated[dict[str, int], setting(doc=(
        "meter id -> address of its block, instead of the one its slot gives"))] = field(default_factory=dict)
    group_addresses: Annotated[dict[str, int], setting(doc=(
        "group id -> address of its block, instead of the one its slot gives"))] = field(default_factory=dict)
    writable_coils: Annotated[list[str], setting(doc=(
        'meter ids whose valve and relay coils may be written (`"*"`: every meter\'s)'))] = \
        field(default_factory=list)
    write_timeout_s: Annotated[float, setting(range=(0.1, 600.0), doc=(
        "a coil write not done by then is answered 05 ACKNOWLEDGE"))] = 5.0
    max_connections: Annotated[int, setting(range=(1, 10000), doc="concurrent connections")] = 32
    idle_timeout_s: Annotated[float, setting(range=(1.0, 86400.0), doc="close a connection silent this long")] = 120.0
    frame_timeout_s: Annotated[float, setting(range=(0.1, 600.0), doc=(
        "close a connection whose frame stays incomplete"))] = 5.0
    stale_after_s: Annotated[int, setting(range=(1, 10**9), doc=(
        "data age beyond which a meter is flagged stale"))] = 7200
    alarm_codes: Annotated[dict[str, int], setting(doc=(
        "more finding kinds -> alarm codes 1..65535 (the built-in table is in docs/modbus.md)"))] = \
        field(default_factory=dict)

    def __post_init__(self) -> None:
        bases = {"system_address": self.system_address, "groups_base": self.groups_base,
                 "meters_base": self.meters_base}
        if len(set(bases.values())) < len(bases):
            raise ValueError(f"system_address, groups_base and meters_base must differ, got {bases}")
        # The settings parser hands tables over as they are: checked here.
        problem = (_check_orders(self.orders) or _check_addresses("meter_addresses", self.meter_addresses)
                   or _check_addresses("group_addresses", self.group_addresses) or _check_codes(self.alarm_codes))
        if problem:
            raise ValueError(problem)


# the protocol ------------------------------------------------------------------


def exception(function: int, code: int) -> bytes:
    return bytes([(function | 0x80) & 0xFF, code])


class Connection(asyncio.Protocol):
    """One client. Requests are answered in order; reads at once from the image,
    a coil write after the actuation service is done (reading is paused meanwhile)."""

    def __init__(self, owner: ModbusServer) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.buffer = bytearray()
        self.busy = False
        self.write_paused = False
        self.last_request = time.monotonic()
        self.partial_since: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        if not self.owner.admit(self):
            transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.forget(self)
        self.transport = None

    def pause_writing(self) -> None:
        # A client that sends requests but does not read the answers: stop reading its requests.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.busy:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > BUFFER_LIMIT:
            self.close("input beyond the buffer limit", bad_frame=True)
            return
        if not self.busy:
            self.process()

    def close(self, reason: str, *, bad_frame: bool = False) -> None:
        log.debug("modbus: closing %s: %s", self.peer, reason)
        self.owner.stats["closed_bad_frame" if bad_frame else "closed_idle"] += 1
        if self.transport is not None:
            self.transport.abort()

    def process(self) -> None:
        """Answer every complete frame in the buffer; stop at a write or a partial frame."""
        while self.transport is not None and not self.busy and len(self.buffer) >= MBAP.size:
            tid, protocol, length, unit = MBAP.unpack_from(self.buffer)
            if protocol != 0:
                self.close(f"protocol id {protocol} (not Modbus)", bad_frame=True)
                return
            if not 2 <= length <= MAX_PDU + 1:
                # The length cannot be trusted, so neither can the start of the next frame.
                self.close(f"frame length {length} outside 2..{MAX_PDU + 1}", bad_frame=True)
                return
            end = 6 + length
            if len(self.buffer) < end:
                break
            pdu = bytes(self.buffer[MBAP.size : end])
            del self.buffer[:end]
            self.last_request = time.monotonic()
            answer = self.owner.handle(unit, pdu, self)
            if isinstance(answer, bytes):
                self.send(tid, unit, answer)
            else:
                self.busy = True
                self.transport.pause_reading()
                self.owner.keep(self.finish(tid, unit, pdu[0], answer))
        self.partial_since = (self.partial_since or time.monotonic()) if self.buffer else None

    async def finish(self, tid: int, unit: int, function: int, answer: Awaitable[bytes]) -> None:
        try:
            pdu = await answer
        except Exception:
            log.exception("modbus: a write from %s failed", self.peer)
            pdu = exception(function, ExcCodes.DEVICE_FAILURE)
        self.busy = False
        if self.transport is None:
            return
        self.send(tid, unit, pdu)
        if not self.write_paused:
            self.transport.resume_reading()
        self.process()

    def send(self, tid: int, unit: int, pdu: bytes) -> None:
        if self.transport is not None:
            self.transport.write(MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu)

    def expired(self, now: float, idle_s: float, frame_s: float) -> str | None:
        if self.busy:
            return None
        if self.partial_since is not None and now - self.partial_since > frame_s:
            return "incomplete frame"
        if now - self.last_request > idle_s:
            return "idle"
        return None


# the component ---------------------------------------------------------------------


class ModbusServer(LiveBridge[ServerConfig]):
    """Serves the register map; refreshes it from storage on bus events and every
    second (``LiveBridge``)."""

    name = "modbus-server"

    def __init__(self, context: PluginContext, config: ServerConfig, slots: BridgeSlotRepository) -> None:
        super().__init__(context, config)
        self.slots = slots
        """The plugin's repository of the objects' slots (``repository.py``)."""
        self.snapshot: Snapshot | None = None
        self.connections: set[Connection] = set()
        self.stats: dict[str, int] = dict.fromkeys(
            ("accepted", "refused", "closed_idle", "closed_bad_frame", "exceptions", "writes"), 0)
        self._listener: asyncio.Server | None = None
        self._registry_version: int | None = None
        self._started = time.time()
        self._refusal_logged = 0.0

    @property
    def map(self) -> RegisterMap | None:
        return self.snapshot.map if self.snapshot else None

    @property
    def live(self) -> Snapshot | None:
        return self.snapshot

    # lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        self._started = time.time()
        self.subscribe()
        try:
            await self.rebuild()
        except MapError as exc:
            self.unsubscribe()
            raise MapError(f"modbus register map: {exc}") from None
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(lambda: Connection(self), self.config.host, self.config.port,
                                                  reuse_address=True)
        self.port = self._listener.sockets[0].getsockname()[1]
        self.follow()
        log.info("modbus: serving %d meters and %d groups on %s:%s (unit %d)", len(self.map.meters),
                 len(self.map.groups), self.config.host, self.port, self.config.unit_id)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await self.stop_following()
        await self.finish_commands(self.config.write_timeout_s)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.wait_closed(), 1.0)
            self._listener = None
        self.unsubscribe()

    # connections --------------------------------------------------------------

    def admit(self, conn: Connection) -> bool:
        if len(self.connections) >= self.config.max_connections:
            self.stats["refused"] += 1
            now = time.monotonic()
            if now - self._refusal_logged > 60:
                self._refusal_logged = now
                log.warning("modbus: %d connections open (max_connections): refusing %s", len(self.connections),
                            conn.peer)
            return False
        self.stats["accepted"] += 1
        self.connections.add(conn)
        return True

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)

    # requests ---------------------------------------------------------------------

    def handle(self, unit: int, pdu: bytes, conn: Connection) -> bytes | Awaitable[bytes]:
        """The answer PDU to a request PDU, or an awaitable of it for a coil write."""
        function = pdu[0]
        if unit != self.config.unit_id:
            return self._refuse(function, GATEWAY_NO_RESPONSE)
        snapshot = self.snapshot
        if snapshot is None:
            return self._refuse(function, ExcCodes.DEVICE_BUSY)
        if function in (3, 4):
            return self._read(function, pdu, MAX_REGISTERS, snapshot.image.read_registers, 2)
        if function in (1, 2):
            return self._read(function, pdu, MAX_BITS, snapshot.image.read_coils, 0)
        if function == 5:
            return self._write_coil(pdu, snapshot.map, conn)
        if function == 15:
            return self._write_coils(pdu, snapshot.map, conn)
        return self._refuse(function, ExcCodes.ILLEGAL_FUNCTION)

    def _refuse(self, function: int, code: int) -> bytes:
        self.stats["exceptions"] += 1
        return exception(function, code)

    def _read(self, function: int, pdu: bytes, limit: int, read: Any, width: int) -> bytes:
        if len(pdu) != 5:
            return self._refuse(function, ExcCodes.ILLEGAL_VALUE)
        address, count = struct.unpack_from(">HH", pdu, 1)
        if not 1 <= count <= limit:
            return self._refuse(function, ExcCodes.ILLEGAL_VALUE)
        data = read(address, count)
        if data is None:
            return self._refuse(function, ExcCodes.ILLEGAL_ADDRESS)
        return bytes([function, len(data)]) + data

    def _writable(self, rmap: RegisterMap, address: int) -> Coil | None:
        coil = rmap.coil_at(address)
        return coil if coil is not None and coil.writable else None

    def _write_coil(self, pdu: bytes, rmap: RegisterMap, conn: Connection) -> bytes | Awaitable[bytes]:
        if len(pdu) != 5:
            return self._refuse(5, ExcCodes.ILLEGAL_VALUE)
        address, value = struct.unpack_from(">HH", pdu, 1)
        if value not in (COIL_ON, COIL_OFF):
            return self._refuse(5, ExcCodes.ILLEGAL_VALUE)
        coil = self._writable(rmap, address)
        if coil is None:
            return self._refuse(5, ExcCodes.ILLEGAL_ADDRESS)
        return self._actuate(5, [(coil, int(value == COIL_ON))], conn, pdu)

    def _write_coils(self, pdu: bytes, rmap: RegisterMap, conn: Connection) -> bytes | Awaitable[bytes]:
        if len(pdu) < 6:
            return self._refuse(15, ExcCodes.ILLEGAL_VALUE)
        address, count, nbytes = struct.unpack_from(">HHB", pdu, 1)
        if not 1 <= count <= MAX_WRITE_BITS or nbytes != (count + 7) // 8 or len(pdu) != 6 + nbytes:
            return self._refuse(15, ExcCodes.ILLEGAL_VALUE)
        coils = [c for a in range(address, address + count) if (c := self._writable(rmap, a)) is not None]
        if len(coils) != count:
            return self._refuse(15, ExcCodes.ILLEGAL_ADDRESS)
        values = [(pdu[6 + i // 8] >> (i % 8)) & 1 for i in range(count)]
        return self._actuate(15, list(zip(coils, values, strict=True)), conn, pdu[:5])

    async def _actuate(self, function: int, writes: list[tuple[Coil, int]], conn: Connection,
                       echo: bytes) -> bytes:
        """The coils' commands through the actuation service (audited with the
        peer), one after the other. The answer once all are done; 04 when one
        failed or was refused; 05 ACKNOWLEDGE when they take longer than
        ``write_timeout_s`` (they go on, and the coils show their outcome)."""
        self.stats["writes"] += 1
        commands = [Command(coil.meter_id, COMMANDS[(coil.kind, value)], f"modbus:{conn.peer}",
                            f"Modbus coil {coil.address} ({coil.meter_id} {coil.kind}) written {value}: "
                            f"{WORDS[(coil.kind, value)]}") for coil, value in writes]

        async def run() -> list[Command]:
            return [await self.context.commands.execute(c) for c in commands]

        task = await self.run_command(run(), self.config.write_timeout_s)
        if task is None:
            return self._refuse(function, ExcCodes.ACKNOWLEDGE)
        if task.exception() is not None or any(c.outcome != "done" for c in task.result()):
            return self._refuse(function, ExcCodes.DEVICE_FAILURE)
        return echo

    # refreshing -------------------------------------------------------------------------

    async def rebuild(self) -> None:
        """A new map and snapshot from the registry as it is now, swapped in whole."""
        version = await self.context.registry.registry_version()
        rmap = await load_map(self.context.queries, self.slots, self.config, int(time.time()))
        snapshot = Snapshot(rmap, self.config, self.context.tz, self.context.site.completeness_threshold,
                            await resolutions(self.context.queries))
        await load_all(snapshot, self.context.queries, time.time())
        self._stamp(snapshot)
        if rmap.unplaced:
            log.warning("modbus: not in the map (area full): %s", ", ".join(rmap.unplaced))
        with_coils = {c.meter_id for c in rmap.coils}
        unknown = sorted(set(self.config.writable_coils) - with_coils - {"*"})
        if unknown:
            log.warning("modbus: writable_coils names meters without a valve or relay in the map: %s",
                        ", ".join(unknown))
        self.snapshot, self._registry_version = snapshot, version

    async def show(self) -> None:
        if self.snapshot is not None:
            self._stamp(self.snapshot)  # ages and quality of the new readings now, not at the next tick

    def tick_failed(self) -> None:
        if self.snapshot is not None:
            self._stamp(self.snapshot)  # from memory: the health word tells SCADA

    async def registry_changed(self) -> None:
        await self.rebuild()

    async def tick(self) -> None:
        """Every second: a changed registry rebuilds the map; a new hour re-reads the
        last hour and today; ages and the system block are written; dead
        connections are closed."""
        if await self.context.registry.registry_version() != self._registry_version:
            await self.rebuild()
        snapshot = self.snapshot
        if snapshot is None:
            return
        await refresh_new_hour(snapshot, self.context.queries, time.time())
        self._stamp(snapshot)
        mono = time.monotonic()
        for conn in list(self.connections):
            reason = conn.expired(mono, self.config.idle_timeout_s, self.config.frame_timeout_s)
            if reason:
                conn.close(reason)

    def _stamp(self, snapshot: Snapshot) -> None:
        """Data ages, stale bits and the system block, as of now."""
        now = time.time()
        uptime = now - (self.context.health.started_at or self._started)
        snapshot.tick(now, uptime, self._health(), len(self.connections))

    def _health(self) -> int:
        failed = "failed" in self.context.health.plugin_states().values()
        return (HEALTH_PLUGIN_FAILED if failed else 0) | (HEALTH_REFRESH_FAILED if self.refresh_failed else 0)

    # observers (called by the plugin's hooks) ------------------------------------------

    async def on_command(self, command: Command) -> None:
        if self.snapshot is not None:
            self.snapshot.command(command)

    async def on_alarm(self, alarm: Alarm) -> None:
        if self.snapshot is None:
            return
        newest = await self.context.queries.journal_list("alarms", 1)
        self.snapshot.alarm(newest[0] if newest else None)

    def status(self) -> dict[str, Any]:
        return {"port": self.port, "connections": len(self.connections), **self.stats,
                "meters": len(self.map.meters) if self.map else 0, "groups": len(self.map.groups) if self.map else 0}

