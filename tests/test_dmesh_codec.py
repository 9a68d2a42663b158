"""DMesh codec: the vendor document's test vectors byte for byte, round trips, and a fuzzed stream decoder."""

from __future__ import annotations

import contextlib
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balans_edge.plugins.dmesh.codec import (
    Ack,
    AckStatus,
    Auth,
    BadFrame,
    Challenge,
    Command,
    CommandCode,
    CommandResult,
    Event,
    FirmwareBegin,
    FirmwareBlock,
    FirmwareEnd,
    FirmwareResult,
    Frame,
    FrameType,
    Hello,
    ModuleEntry,
    Nack,
    PayloadError,
    Ping,
    Pong,
    Profile,
    ReadingRecord,
    Readings,
    StreamDecoder,
    Topology,
    UnknownType,
    Welcome,
    crc16,
    decode_payload,
    encode_frame,
)


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace("\n", " "))


T = 1390176000  # 2014-01-20 00:00:00 UTC
NONCE = bytes(range(16))
CONCENTRATOR = 0x0A0B0C0D
KEY = b"test-key-0123456789abcdef"

VECTORS = {
    "HELLO": (
        "44 4d 01 01 00 01 00 0f 0a 0b 0c 0d 01 04 02 00 03 00 07 52 dc 67 00 5f 4b",
        1, Hello(CONCENTRATOR, 1, 4, 2, 3, 7, T),
    ),
    "CHALLENGE": (
        "44 4d 01 02 00 01 00 10 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f d8 82",
        1, Challenge(NONCE),
    ),
    "AUTH": (
        "44 4d 01 03 00 02 00 20 1e 8b 51 bf dc 5f f6 ee e7 e7 d8 b0 1e 6b c9 fd 71 68 35 d3 5c 9c dd a4 e5 9f cb 7d "
        "36 e9 39 05 b2 b6",
        2, Auth(hmac.new(KEY, NONCE + CONCENTRATOR.to_bytes(4, "big"), hashlib.sha256).digest()),
    ),
    "READINGS": (
        "44 4d 01 11 00 03 00 2c 00 02 00 00 03 e9 52 dc 67 00 00 00 0e 10 b9 02 03 00 01 e2 40 ff ff ff fa 00 00 03 "
        "ea 52 dc 67 00 00 11 0b 86 a8 05 04 00 00 00 4d 0c f8",
        3, Readings((
            ReadingRecord(1001, T, 0, 3600, -71, 2, 0b011, (123456, 4294967290)),
            ReadingRecord(1002, T, 0x11, 2950, -88, 5, 0b100, (77,)),
        )),
    ),
    "ACK": ("44 4d 01 20 00 01 00 03 00 03 00 03 16", 1, Ack(3, AckStatus.OK)),
    "COMMAND": (
        "44 4d 01 30 00 02 00 09 00 00 00 2a 00 00 03 ea 01 9d e1",
        2, Command(42, 1002, CommandCode.VALVE_CLOSE),
    ),
    "PROFILE": (
        "44 4d 01 12 00 04 00 16 00 00 03 e9 01 52 dc 58 f0 03 00 01 e0 78 ff ff ff ff 00 01 e2 40 56 c3",
        4, Profile(1001, 1, T - 3600, (123000, None, 123456)),
    ),
}


def test_crc_check_value():
    assert crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize("name", list(VECTORS))
def test_vector_encodes_byte_for_byte(name):
    wire, seq, payload = VECTORS[name]
    assert payload.frame(seq) == hexbytes(wire)


@pytest.mark.parametrize("name", list(VECTORS))
def test_vector_decodes(name):
    wire, seq, payload = VECTORS[name]
    (frame,) = StreamDecoder().feed(hexbytes(wire))
    assert frame == Frame(payload.TYPE, seq, frame.payload)
    assert decode_payload(frame) == payload


def test_reading_record_channels_follow_the_mask():
    readings = VECTORS["READINGS"][2]
    assert [r.channels for r in readings.records] == [(1, 2), (3,)]


EXAMPLES = [
    Welcome(T, 1),
    Topology((
        ModuleEntry(1001, 0, 1, -60, 3600, 0x0104, 0b111, 0),
        ModuleEntry(1002, 1001, 2, -90, 2900, 0x0103, 1, 1),
    )),
    Event(1001, T, 12, 0),
    CommandResult(42, 0, 0x20),
    Command(43, 1001, CommandCode.PROFILE_REQUEST, (1, T - 86400, T)),
    Command(44, 1001, CommandCode.SET_INTERVAL, (900,)),
    FirmwareBegin(7, 2, 65536, b"\x01" * 32, b"\x02" * 64),
    FirmwareBlock(7, 1024, b"\xaa" * 1024),
    FirmwareEnd(7),
    FirmwareResult(7, 1),
    Ping(),
    Pong(9),
    Nack(5, 4, "ключ не подошёл"),
]


@pytest.mark.parametrize("payload", EXAMPLES, ids=lambda p: type(p).__name__)
def test_every_type_round_trips(payload):
    (frame,) = StreamDecoder().feed(payload.frame(65535))
    assert frame.seq == 65535
    assert decode_payload(frame) == payload


def test_nack_text_is_cut_at_200_bytes_on_a_character_boundary():
    nack = decode_payload(StreamDecoder().feed(Nack(1, 5, "я" * 150).frame(1))[0])
    assert nack.text == "я" * 100


@pytest.mark.parametrize(
    ("frame_type", "payload", "message"),
    [
        (FrameType.HELLO, b"\x00" * 14, "HELLO: expected 15 bytes"),
        (FrameType.READINGS, b"\x00\x01" + b"\x00" * 14, "record 0 truncated"),
        (FrameType.READINGS, b"\x00\x01" + b"\x00" * 14 + b"\x08", "channel mask 8"),
        (FrameType.READINGS, b"\x00\x00\x00", "1 bytes after 0 records"),
        (FrameType.PROFILE, bytes.fromhex("000003e9 04 52dc6700 01 00000001"), "channel 1..3"),
        (FrameType.PROFILE, bytes.fromhex("000003e9 01 52dc6701 01 00000001"), "hour-aligned"),
        (FrameType.ACK, b"\x00\x01\x07", "unknown status 7"),
        (FrameType.COMMAND, bytes.fromhex("0000002a 000003ea 06 0010"), "300..65535"),
        (FrameType.COMMAND, bytes.fromhex("0000002a 000003ea 09"), "unknown code 9"),
        (FrameType.NACK, b"\x00\x01\x04\xff", "not UTF-8"),
        (FrameType.TOPOLOGY, b"\x00\x01" + bytes.fromhex("000003e9 00000000 00 c4 0e10 0104 07 00"), "hops 1..30"),
        (FrameType.FIRMWARE_BLOCK, b"\x00" * 8, "expected 9..1032"),
        (FrameType.PING, b"\x00", "PING: expected 0 bytes"),
    ],
)
def test_payload_that_does_not_match_its_layout(frame_type, payload, message):
    with pytest.raises(PayloadError, match=message):
        decode_payload(Frame(frame_type, 1, payload))


def test_topology_lists_at_most_240_modules():
    """The vendor's limit per concentrator: 240 entries decode, 241 are a payload error."""
    entries = tuple(ModuleEntry(1000 + i, 0, 1, -60, 3600, 0x0104, 1, 0) for i in range(241))
    full = Topology(entries[:240])
    assert decode_payload(Frame(FrameType.TOPOLOGY, 1, full.encode())) == full
    with pytest.raises(PayloadError, match="241 modules, a concentrator has at most 240"):
        decode_payload(Frame(FrameType.TOPOLOGY, 1, Topology(entries).encode()))


def test_unknown_type_is_its_own_error():
    with pytest.raises(UnknownType, match="0x66"):
        decode_payload(Frame(0x66, 1, b""))


# stream decoder ---------------------------------------------------------------------

A = VECTORS["HELLO"][2].frame(1)
B = VECTORS["READINGS"][2].frame(3)
C = VECTORS["ACK"][2].frame(1)


def frames_of(items):
    return [i for i in items if isinstance(i, Frame)]


def test_several_frames_in_one_read_and_one_frame_in_many():
    d = StreamDecoder()
    assert [f.type for f in d.feed(A + B + C)] == [FrameType.HELLO, FrameType.READINGS, FrameType.ACK]
    d = StreamDecoder()
    got = []
    for i in range(len(B)):
        got += d.feed(B[i : i + 1])
    assert got == [Frame(FrameType.READINGS, 3, B[8:-2])]
    assert d.pending == 0


def test_bad_crc_is_dropped_and_the_next_frame_found():
    bad = bytearray(B)
    bad[-1] ^= 0xFF
    d = StreamDecoder()
    items = d.feed(bytes(bad) + A)
    assert BadFrame("crc", 1) in items
    assert frames_of(items) == [Frame(FrameType.HELLO, 1, A[8:-2])]
    assert d.bad_in_a_row == 0


def test_resynchronisation_starts_after_the_first_byte_of_the_bad_frame():
    # A frame hidden inside the payload of a frame whose CRC is bad is found:
    # scanning restarts right after the bad frame's first byte.
    outer = bytearray(encode_frame(FrameType.EVENT, 9, b"\x00" * 4 + A + b"\x00" * 4))
    outer[-1] ^= 0xFF
    assert frames_of(StreamDecoder().feed(bytes(outer))) == [Frame(FrameType.HELLO, 1, A[8:-2])]


def test_wrong_version_and_oversized_length_are_bad_frames():
    wrong_version = bytearray(A)
    wrong_version[2] = 2
    too_long = b"DM\x01\x11\x00\x01\x10\x01"  # len 4097
    d = StreamDecoder()
    items = d.feed(bytes(wrong_version) + too_long)
    assert [i.reason for i in items if isinstance(i, BadFrame) and i.reason != "garbage"] == ["version", "length"]
    assert d.bad_in_a_row == 2  # the remains of a dropped frame do not count again
    assert frames_of(d.feed(C)) == [Frame(FrameType.ACK, 1, C[8:-2])]


def test_bad_frames_in_a_row_are_counted_until_a_good_one():
    d = StreamDecoder()
    bad = bytearray(C)
    bad[-1] ^= 1
    for _ in range(16):
        d.feed(bytes(bad))
    assert d.bad_in_a_row == 16
    d.feed(C)
    assert d.bad_in_a_row == 0


def test_waits_for_a_split_magic():
    d = StreamDecoder()
    assert d.feed(b"xyzD") == [BadFrame("garbage", 3)]
    assert frames_of(d.feed(A[1:])) == [Frame(FrameType.HELLO, 1, A[8:-2])]


STREAM = A + B + C


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300), st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_fuzz_garbage_around_valid_frames_in_random_chunks(before, after, sizes):
    """No exception escapes; the valid frames after garbage are still found, in order."""
    data = before + STREAM + after
    d = StreamDecoder()
    items, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        items += d.feed(data[pos : pos + n])
        pos, i = pos + n, i + 1
    got = frames_of(items)
    expected = [
        Frame(FrameType.HELLO, 1, A[8:-2]),
        Frame(FrameType.READINGS, 3, B[8:-2]),
        Frame(FrameType.ACK, 1, C[8:-2]),
    ]
    # Garbage may hold a frame of its own, or a plausible header whose CRC then
    # fails; ours must still all appear, in order.
    it = iter(got)
    assert all(any(e == g for g in it) for e in expected)
    for item in got:
        decode_payload_or_error(item)


def decode_payload_or_error(frame: Frame) -> None:
    with contextlib.suppress(PayloadError, UnknownType):
        decode_payload(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 97))
def test_fuzz_random_bytes_never_raise_and_split_does_not_matter(data, chunk):
    whole = StreamDecoder().feed(data)
    d = StreamDecoder()
    pieces = []
    for pos in range(0, len(data), chunk):
        pieces += d.feed(data[pos : pos + chunk])
    assert frames_of(pieces) == frames_of(whole)
    for f in frames_of(whole):
        decode_payload_or_error(f)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([A, B, C]), max_size=8), st.integers(0, 40))
def test_fuzz_truncated_stream_keeps_the_rest_pending(frames, cut):
    data = b"".join(frames)
    cut = min(cut, len(data))
    d = StreamDecoder()
    first = frames_of(d.feed(data[: len(data) - cut]))
    rest = frames_of(d.feed(data[len(data) - cut :]))
    assert [f.encode() for f in first + rest] == list(frames)
