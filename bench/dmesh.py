"""DMesh benchmark: the codec's decode rate, then the end-to-end path.

    python bench/dmesh.py [--frames N] [--concentrators 50] [--hours 12] [--codec-only]

First the codec: frames/s decoded by the stream decoder and payload decoder,
next to a bare ``struct.unpack`` walk over the same bytes. Then
``dmesh_e2e.py``: simulated concentrators x 720 meters reporting over TCP to
one server process, readings/s stored and the frame-to-ACK time.

The baseline does the least any decoder must do (find each frame by its
length, unpack the header, the CRC field and every reading record) without
checking the CRC, resynchronising or building objects, so the ratio shows what
safety and typed payloads cost. Both run in the same process, one after the
other, on the same bytes.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

from balans_edge.plugins.dmesh.codec import (
    ReadingRecord,
    Readings,
    StreamDecoder,
    decode_payload,
)

RECORDS_PER_FRAME = 150  # 150 modules x 3 inputs: 4,052 bytes, near the 4,096 limit
T0 = 1_390_176_000


def make_stream(frames: int) -> bytes:
    out = []
    for f in range(frames):
        records = tuple(
            ReadingRecord(1000 + r, T0 + f * 60, 0, 3600, -70, 1 + r % 30, 0b111, (f, f * 2 + r, f * 3 + r))
            for r in range(RECORDS_PER_FRAME)
        )
        out.append(Readings(records).frame(f))
    return b"".join(out)


def codec(stream: bytes, chunk: int) -> tuple[int, int]:
    decoder = StreamDecoder()
    frames = readings = 0
    for pos in range(0, len(stream), chunk):
        for frame in decoder.feed(stream[pos : pos + chunk]):
            payload = decode_payload(frame)
            frames += 1
            readings += sum(len(r.counters) for r in payload.records)
    return frames, readings


HEADER = struct.Struct(">2sBBHH")
RECORD = struct.Struct(">IIHHbBB")
CRC = struct.Struct(">H")


def baseline(stream: bytes) -> tuple[int, int]:
    frames = readings = 0
    pos, n = 0, len(stream)
    while pos < n:
        _, _, _, _, length = HEADER.unpack_from(stream, pos)
        p = pos + HEADER.size
        (count,) = struct.unpack_from(">H", stream, p)
        p += 2
        for _ in range(count):
            *_, mask = RECORD.unpack_from(stream, p)
            p += RECORD.size
            k = bin(mask).count("1")
            struct.unpack_from(f">{k}I", stream, p)
            p += 4 * k
            readings += k
        CRC.unpack_from(stream, pos + HEADER.size + length)
        pos += HEADER.size + length + CRC.size
        frames += 1
    return frames, readings


def timed(fn, *args) -> tuple[float, tuple[int, int]]:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--concentrators", type=int, default=50, help="end to end: concentrators")
    parser.add_argument("--hours", type=int, default=12, help="end to end: hourly rounds")
    parser.add_argument("--codec-only", action="store_true", help="skip the end-to-end run")
    args = parser.parse_args()
    stream = make_stream(args.frames)
    print(f"{args.frames:,} READINGS frames of {RECORDS_PER_FRAME} records x 3 inputs, "
          f"{len(stream) / 1e6:.1f} MB (best of 3 runs each)")
    base_s, base = timed(baseline, stream)
    print(f"{'decoder':<42} {'frames/s':>10} {'readings/s':>12} {'vs baseline':>12}")
    print(f"{'struct.unpack walk (baseline)':<42} {base[0] / base_s:>10,.0f} {base[1] / base_s:>12,.0f} {'100%':>12}")
    for chunk in (1460, 65536):
        s, (frames, readings) = timed(codec, stream, chunk)
        assert (frames, readings) == base, "codec and baseline disagree"
        label = f"StreamDecoder + payloads ({chunk} B reads)"
        print(f"{label:<42} {frames / s:>10,.0f} {readings / s:>12,.0f} {base_s / s:>12.0%}")
    if args.codec_only:
        return 0
    print()
    sys.path.insert(0, str(Path(__file__).parent))
    import dmesh_e2e  # a sibling script, importable once its folder is on the path

    return dmesh_e2e.run(args.concentrators, args.hours)


if __name__ == "__main__":
    sys.exit(main())
