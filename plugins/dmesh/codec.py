"""DMesh link protocol v1: frames and payloads (pure, no I/O).

Implements the vendor's document as written: a frame is ``"DM"``, version 1,
type, seq, len, payload, CRC-16/CCITT-FALSE over version..payload; payloads
are big-endian records per frame type. ``StreamDecoder`` takes bytes in
arbitrary chunks and yields frames, dropping bad ones and resynchronising on
the next ``"DM"`` after the first byte of a bad frame, as the document says.

The CRC is ``binascii.crc_hqx`` (poly 0x1021, no reflection) with the initial
value 0xFFFF, which is CRC-16/CCITT-FALSE: the standard library's C routine.
"""

from __future__ import annotations

import binascii
import dataclasses
import enum
import struct
from dataclasses import dataclass, field
from typing import ClassVar, Self

from balans_edge.core.model import CONCENTRATOR_MODULES, MAX_HOPS
from balans_edge.core.times import HOUR
from balans_edge.plugins.dmesh.repository import ModuleRoute

MAGIC = b"DM"
VERSION = 1
MAX_PAYLOAD = 4096
HEADER = struct.Struct(">2sBBHH")
_AFTER_MAGIC = struct.Struct(">BBHH")
_CRC = struct.Struct(">H")
NOT_RECORDED = 0xFFFFFFFF


def crc16(data: bytes | bytearray | memoryview) -> int:
    return binascii.crc_hqx(data, 0xFFFF)


class FrameType(enum.IntEnum):
    HELLO = 0x01
    CHALLENGE = 0x02
    AUTH = 0x03
    WELCOME = 0x04
    TOPOLOGY = 0x10
    READINGS = 0x11
    PROFILE = 0x12
    EVENT = 0x13
    ACK = 0x20
    COMMAND = 0x30
    COMMAND_RESULT = 0x31
    FIRMWARE_BEGIN = 0x40
    FIRMWARE_BLOCK = 0x41
    FIRMWARE_END = 0x42
    FIRMWARE_RESULT = 0x43
    PING = 0x50
    PONG = 0x51
    NACK = 0x7F


DATA_TYPES = frozenset(
    {
        FrameType.TOPOLOGY,
        FrameType.READINGS,
        FrameType.PROFILE,
        FrameType.EVENT,
        FrameType.COMMAND_RESULT,
        FrameType.FIRMWARE_RESULT,
    }
)
"""Frames the concentrator keeps until they are ACKed OK (answered with ACK, not NACK)."""


class AckStatus(enum.IntEnum):
    OK = 0
    REJECTED = 1
    RETRY = 2


class NackCode(enum.IntEnum):
    BAD_FRAME = 1
    UNKNOWN_TYPE = 2
    NOT_AUTHENTICATED = 3
    AUTH_FAILED = 4
    BAD_PAYLOAD = 5
    UNKNOWN_CONCENTRATOR = 6


class EventCode(enum.IntEnum):
    MAGNET_ON = 1
    MAGNET_OFF = 2
    TAMPER = 3
    LEAK_WET = 4
    LEAK_DRY = 5
    VALVE_OPENED = 6
    VALVE_CLOSED = 7
    LOW_BATTERY = 8
    MODULE_JOINED = 9
    MODULE_LOST = 10
    ROUTE_CHANGED = 11
    COUNTER_RESET = 12
    CABLE_CUT = 13
    RELAY_OFF = 14
    RELAY_ON = 15


class CommandCode(enum.IntEnum):
    VALVE_CLOSE = 1
    VALVE_OPEN = 2
    RELAY_OFF = 3
    RELAY_ON = 4
    PROFILE_REQUEST = 5
    SET_INTERVAL = 6
    PING_MODULE = 7


class CommandResultCode(enum.IntEnum):
    DONE = 0
    NO_ROUTE = 1
    REJECTED = 2
    TIMEOUT = 3
    UNKNOWN_MODULE = 4


class FirmwareResultCode(enum.IntEnum):
    ACCEPTED = 0
    BAD_SIGNATURE = 1
    BAD_HASH = 2
    BAD_LAYOUT = 3


class PayloadError(ValueError):
    """A payload that does not match its frame type's layout."""


# frames -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    seq: int
    payload: bytes = b""

    def encode(self) -> bytes:
        return encode_frame(self.type, self.seq, self.payload)


@dataclass(frozen=True, slots=True)
class BadFrame:
    """Bytes the decoder dropped: ``reason`` is version, length, crc or garbage."""

    reason: str
    size: int


def encode_frame(frame_type: int, seq: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = _AFTER_MAGIC.pack(VERSION, frame_type, seq & 0xFFFF, len(payload)) + payload
    return MAGIC + body + _CRC.pack(crc16(body))


class StreamDecoder:
    """Frames from a byte stream that arrives in arbitrary chunks.

    ``feed`` returns, in stream order, every complete frame and a ``BadFrame``
    for each dropped frame or run of garbage. ``bad_in_a_row`` counts dropped
    frames since the last good one (the driver closes the link at 16).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.bad_in_a_row = 0
        self._in_bad = False

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | BadFrame]:
        buf = self._buf
        buf += data
        out: list[Frame | BadFrame] = []
        pos = 0
        n = len(buf)
        while pos < n:
            start = buf.find(MAGIC, pos)
            if start < 0:
                # Keep a trailing "D": it may be the first byte of the next magic.
                keep = 1 if buf[n - 1] == MAGIC[0] else 0
                if n - keep > pos:
                    self._bad(out, "garbage", n - keep - pos)
                pos = n - keep
                break
            if start > pos:
                self._bad(out, "garbage", start - pos)
            if n - start < HEADER.size:
                pos = start
                break
            version, frame_type, seq, length = _AFTER_MAGIC.unpack_from(buf, start + 2)
            if version != VERSION or length > MAX_PAYLOAD:
                self._bad(out, "version" if version != VERSION else "length", 1)
                pos = start + 1
                continue
            end = start + HEADER.size + length + _CRC.size
            if n < end:
                pos = start
                break
            (crc,) = _CRC.unpack_from(buf, end - 2)
            if crc16(memoryview(buf)[start + 2 : end - 2]) != crc:
                self._bad(out, "crc", 1)
                pos = start + 1
                continue
            out.append(Frame(frame_type, seq, bytes(buf[start + HEADER.size : end - 2])))
            self.bad_in_a_row = 0
            self._in_bad = False
            pos = end
        del buf[:pos]
        return out

    def _bad(self, out: list[Frame | BadFrame], reason: str, size: int) -> None:
        out.append(BadFrame(reason, size))
        # The bytes skipped after a dropped frame are that frame's remains, not
        # another bad frame: a run of garbage counts once.
        if reason != "garbage" or not self._in_bad:
            self.bad_in_a_row += 1
        self._in_bad = reason != "garbage" or self._in_bad


# payloads ---------------------------------------------------------------------------


class Payload:
    TYPE: ClassVar[FrameType]

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes) -> Self:
        raise NotImplementedError

    def frame(self, seq: int) -> bytes:
        return encode_frame(self.TYPE, seq, self.encode())


def _exact(data: bytes, size: int, name: str) -> None:
    if len(data) != size:
        raise PayloadError(f"{name}: expected {size} bytes, got {len(data)}")


def _fixed(fmt: str):
    """A class decorator for payloads that are one fixed struct of their fields in order."""
    layout = struct.Struct(fmt)

    def wrap(cls):
        names = [f.name for f in dataclasses.fields(cls)]

        def encode(self) -> bytes:
            return layout.pack(*(getattr(self, n) for n in names))

        @classmethod
        def decode(klass, data: bytes):
            _exact(data, layout.size, klass.TYPE.name)
            obj = klass(*layout.unpack(data))
            obj.check()
            return obj

        cls.encode, cls.decode, cls.LAYOUT = encode, decode, layout
        return cls

    return wrap


class _Checked(Payload):
    def check(self) -> None:
        """Field ranges beyond the byte layout; raises PayloadError."""


@_fixed(">IBBBHHI")
@dataclass(frozen=True, slots=True)
class Hello(_Checked):
    TYPE: ClassVar[FrameType] = FrameType.HELLO
    concentrator_id: int
    fw_major: int
    fw_minor: int
    fw_patch: int
    modules: int
    meters: int
    clock: int

    @property
    def firmware(self) -> str:
        return f"{self.fw_major}.{self.fw_minor}.{self.fw_patch}"


@_fixed(">16s")
@dataclass(frozen=True, slots=True)
class Challenge(_Checked):
    TYPE: ClassVar[FrameType] = FrameType.CHALLENGE
    nonce: bytes


@_fixed(">32s")
@dataclass(frozen=True, slots=True)
class Auth(_Checked):
    TYPE: ClassVar[FrameType] = FrameType.AUTH
    mac: bytes


@_fixed(">IB")
@dataclass(frozen=True, slots=True)
class Welcome(_Checked):
    TYPE: ClassVar[FrameType] = FrameType.WELCOME
    host_time: int
    flags: int = 0

    @property
    def set_clock(self) -> bool:
        return bool(self.flags & 1)


@_fixed(">HB")
@dataclass(frozen=True, slots=True)
class Ack(_Checked):
    TYPE: ClassVar[FrameType] = FrameType.ACK
    acked_seq: int
    status: int = AckStatus.OK

    def check(self) -> None:
        if self.status not in AckStatus._value2member_map_:
            raise PayloadError(f"ACK: unknown status {self.status}")


@_fixed(">IIBH")
@dataclass(frozen=True, slots=True)
class Event(_Checked):
    TYPE: ClassVar[FrameType] = FrameType.EVENT
    module_id: int
    ts: int
    code: int
    value: int = 0


@_fixed(">IBH")
@dataclass(frozen=True, slots=True)
class CommandResult(_Checked):
    TYPE: ClassVar[FrameType] = FrameType.COMMAND_RESULT
    command_id: int
    result: int
    status: int


@_fixed(">IBI32s64s")
@dataclass(frozen=True, slots=True)
class FirmwareBegin(_Checked):
    TYPE: ClassVar[FrameType] = FrameType.FIRMWARE_BEGIN
    image_id: int
    target: int
    size: int
    sha256: bytes
    signature: bytes

    def check(self) -> None:
        if self.target not in (1, 2):
            raise PayloadError(f"FIRMWARE_BEGIN: target must be 1 or 2, got {self.target}")


@_fixed(">I")
@dataclass(frozen=True, slots=True)
class FirmwareEnd(_Checked):
    TYPE: ClassVar[FrameType] = FrameType.FIRMWARE_END
    image_id: int


@_fixed(">IB")
@dataclass(frozen=True, slots=True)
class FirmwareResult(_Checked):
    TYPE: ClassVar[FrameType] = FrameType.FIRMWARE_RESULT
    image_id: int
    result: int


@_fixed(">H")
@dataclass(frozen=True, slots=True)
class Pong(_Checked):
    TYPE: ClassVar[FrameType] = FrameType.PONG
    echo_seq: int


@dataclass(frozen=True, slots=True)
class Ping(Payload):
    TYPE: ClassVar[FrameType] = FrameType.PING

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, data: bytes) -> Ping:
        _exact(data, 0, "PING")
        return cls()


_NACK = struct.Struct(">HB")


@dataclass(frozen=True, slots=True)
class Nack(Payload):
    TYPE: ClassVar[FrameType] = FrameType.NACK
    ref_seq: int
    code: int
    text: str = ""

    def encode(self) -> bytes:
        text = self.text.encode("utf-8")[:200]
        # Never cut a multi-byte character in half.
        text = text.decode("utf-8", "ignore").encode("utf-8")
        return _NACK.pack(self.ref_seq, self.code) + text

    @classmethod
    def decode(cls, data: bytes) -> Nack:
        if not 3 <= len(data) <= 203:
            raise PayloadError(f"NACK: expected 3..203 bytes, got {len(data)}")
        ref, code = _NACK.unpack_from(data)
        try:
            text = data[3:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError(f"NACK: text is not UTF-8 ({exc.reason})") from None
        return cls(ref, code, text)


_MODULE = struct.Struct(">IIBbHHBB")


ModuleEntry = ModuleRoute
"""A TOPOLOGY entry decodes straight into the route record the plugin stores (same fields, same order)."""


@dataclass(frozen=True, slots=True)
class Topology(Payload):
    TYPE: ClassVar[FrameType] = FrameType.TOPOLOGY
    modules: tuple[ModuleEntry, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        return struct.pack(">H", len(self.modules)) + b"".join(
            _MODULE.pack(m.module_id, m.parent_id, m.hops, m.rssi, m.battery_mv, m.fw_version, m.channels, m.state)
            for m in self.modules
        )

    @classmethod
    def decode(cls, data: bytes) -> Topology:
        if len(data) < 2:
            raise PayloadError("TOPOLOGY: missing count")
        (count,) = struct.unpack_from(">H", data)
        _exact(data, 2 + count * _MODULE.size, "TOPOLOGY")
        # A concentrator has at most 240 modules: a longer list is not a report
        # of its subnet (the frame is rejected rather than half-believed).
        if count > CONCENTRATOR_MODULES:
            raise PayloadError(f"TOPOLOGY: {count} modules, a concentrator has at most {CONCENTRATOR_MODULES}")
        entries = tuple(ModuleEntry(*e) for e in _MODULE.iter_unpack(data[2:]))
        for e in entries:
            if not 1 <= e.hops <= MAX_HOPS or e.state not in (0, 1) or e.channels > 7:
                raise PayloadError(f"TOPOLOGY: module {e.module_id}: hops 1..{MAX_HOPS}, state 0..1, channels 0..7")
        return cls(entries)


_RECORD = struct.Struct(">IIHHbBB")


@dataclass(frozen=True, slots=True)
class ReadingRecord:
    module_id: int
    ts: int
    status: int
    battery_mv: int
    rssi: int
    hops: int
    channel_mask: int
    counters: tuple[int, ...]
    """One counter per set bit of ``channel_mask``, lowest bit first."""

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(ch for ch in (1, 2, 3) if self.channel_mask & (1 << (ch - 1)))


@dataclass(frozen=True, slots=True)
class Readings(Payload):
    TYPE: ClassVar[FrameType] = FrameType.READINGS
    records: tuple[ReadingRecord, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        parts = [struct.pack(">H", len(self.records))]
        for r in self.records:
            if len(r.counters) != bin(r.channel_mask & 7).count("1") or r.channel_mask > 7:
                raise ValueError(f"module {r.module_id}: counters do not match channel mask {r.channel_mask}")
            parts.append(_RECORD.pack(r.module_id, r.ts, r.status, r.battery_mv, r.rssi, r.hops, r.channel_mask))
            parts.append(struct.pack(f">{len(r.counters)}I", *r.counters))
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> Readings:
        if len(data) < 2:
            raise PayloadError("READINGS: missing count")
        (count,) = struct.unpack_from(">H", data)
        pos, records = 2, []
        for i in range(count):
            if len(data) < pos + _RECORD.size:
                raise PayloadError(f"READINGS: record {i} truncated")
            module, ts, status, battery, rssi, hops, mask = _RECORD.unpack_from(data, pos)
            if mask > 7:
                raise PayloadError(f"READINGS: record {i}: channel mask {mask} has bits beyond input 3")
            k = bin(mask).count("1")
            pos += _RECORD.size
            if len(data) < pos + 4 * k:
                raise PayloadError(f"READINGS: record {i} counters truncated")
            counters = struct.unpack_from(f">{k}I", data, pos)
            pos += 4 * k
            records.append(ReadingRecord(module, ts, status, battery, rssi, hops, mask, counters))
        if pos != len(data):
            raise PayloadError(f"READINGS: {len(data) - pos} bytes after {count} records")
        return cls(tuple(records))


_PROFILE = struct.Struct(">IBIB")


@dataclass(frozen=True, slots=True)
class Profile(Payload):
    TYPE: ClassVar[FrameType] = FrameType.PROFILE
    module_id: int
    channel: int
    start: int
    values: tuple[int | None, ...]
    """Counter at start + i * 3600; None where the module recorded nothing."""

    def encode(self) -> bytes:
        values = [NOT_RECORDED if v is None else v for v in self.values]
        return _PROFILE.pack(self.module_id, self.channel, self.start, len(values)) + struct.pack(
            f">{len(values)}I", *values
        )

    @classmethod
    def decode(cls, data: bytes) -> Profile:
        if len(data) < _PROFILE.size:
            raise PayloadError("PROFILE: header truncated")
        module, channel, start, n = _PROFILE.unpack_from(data)
        _exact(data, _PROFILE.size + 4 * n, "PROFILE")
        if not 1 <= channel <= 3 or not 1 <= n <= 168 or start % HOUR:
            raise PayloadError("PROFILE: channel 1..3, n 1..168 and an hour-aligned start are required")
        raw = struct.unpack_from(f">{n}I", data, _PROFILE.size)
        return cls(module, channel, start, tuple(None if v == NOT_RECORDED else v for v in raw))


_COMMAND = struct.Struct(">IIB")
_COMMAND_ARGS = {
    CommandCode.PROFILE_REQUEST: struct.Struct(">BII"),
    CommandCode.SET_INTERVAL: struct.Struct(">H"),
}


@dataclass(frozen=True, slots=True)
class Command(Payload):
    TYPE: ClassVar[FrameType] = FrameType.COMMAND
    command_id: int
    module_id: int
    code: int
    args: tuple[int, ...] = ()
    """PROFILE_REQUEST: (channel, from, to); SET_INTERVAL: (seconds,); others: ()."""

    def encode(self) -> bytes:
        layout = _COMMAND_ARGS.get(self.code)
        args = layout.pack(*self.args) if layout else b""
        return _COMMAND.pack(self.command_id, self.module_id, self.code) + args

    @classmethod
    def decode(cls, data: bytes) -> Command:
        if len(data) < _COMMAND.size:
            raise PayloadError("COMMAND: header truncated")
        command_id, module, code = _COMMAND.unpack_from(data)
        if code not in CommandCode._value2member_map_:
            raise PayloadError(f"COMMAND: unknown code {code}")
        layout = _COMMAND_ARGS.get(code)
        _exact(data, _COMMAND.size + (layout.size if layout else 0), f"COMMAND {CommandCode(code).name}")
        args = layout.unpack_from(data, _COMMAND.size) if layout else ()
        if code == CommandCode.SET_INTERVAL and args[0] < 300:
            raise PayloadError("COMMAND SET_INTERVAL: seconds must be 300..65535")
        return cls(command_id, module, code, tuple(args))


_BLOCK = struct.Struct(">II")


@dataclass(frozen=True, slots=True)
class FirmwareBlock(Payload):
    TYPE: ClassVar[FrameType] = FrameType.FIRMWARE_BLOCK
    image_id: int
    offset: int
    data: bytes

    def encode(self) -> bytes:
        return _BLOCK.pack(self.image_id, self.offset) + self.data

    @classmethod
    def decode(cls, data: bytes) -> FirmwareBlock:
        if not _BLOCK.size + 1 <= len(data) <= _BLOCK.size + 1024:
            raise PayloadError(f"FIRMWARE_BLOCK: expected 9..1032 bytes, got {len(data)}")
        image_id, offset = _BLOCK.unpack_from(data)
        return cls(image_id, offset, bytes(data[_BLOCK.size :]))


PAYLOADS: dict[int, type[Payload]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Challenge,
        Auth,
        Welcome,
        Topology,
        Readings,
        Profile,
        Event,
        Ack,
        Command,
        CommandResult,
        FirmwareBegin,
        FirmwareBlock,
        FirmwareEnd,
        FirmwareResult,
        Ping,
        Pong,
        Nack,
    )
}


class UnknownType(ValueError):
    """A well-formed frame of a type the protocol does not define."""


def decode_payload(frame: Frame) -> Payload:
    """The typed payload of a frame; UnknownType or PayloadError otherwise."""
    cls = PAYLOADS.get(frame.type)
    if cls is None:
        raise UnknownType(f"unknown frame type 0x{frame.type:02x}")
    try:
        return cls.decode(frame.payload)
    except struct.error as exc:  # a layout shorter than its own header: same answer
        raise PayloadError(f"{cls.TYPE.name}: {exc}") from None
