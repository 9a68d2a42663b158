"""Decoding the body of ``POST /api/v1/readings``: the schema layer against the hand-written parser it replaced.

    python bench/readings_decode.py [--readings N] [--repeat R]

Both turn the same JSON bytes into the int64 columns ingest takes
(``ReadingBatch``): the schema layer with ``msgspec`` into the declared Structs
(``api.meters.ReadingsBody``) and then columns, the old parser with
``json.loads`` and a check of every value in Python (kept below, verbatim in
behaviour, as the reference). Times are the best of R runs, in one process.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from balans_edge.api.meters import ReadingsBody, reading_batch
from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.times import read_time
from balans_edge.http_schema import Codec

FIELDS = ("module_id", "channel", "ts", "counter", "status")


def old_parser(raw: bytes) -> ReadingBatch:
    """The hand-written parser of the route before the schema layer (errors raise ValueError here)."""
    body = json.loads(raw or b"null")
    items = body.get("readings") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise ValueError("expected {readings: [...]}")
    rows = np.zeros((len(items), 5), dtype=np.int64)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"readings[{i}]: expected an object")
        out = []
        for name in FIELDS:
            value: Any = item.get(name, 0 if name == "status" else None)
            if name == "ts" and isinstance(value, str):
                value = read_time(value)
            if isinstance(value, bool) or not isinstance(value, int) or not -(2**62) < value < 2**62:
                raise ValueError(f"readings[{i}].{name}: expected an integer, got {value!r}")
            out.append(value)
        rows[i] = out
    return ReadingBatch(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4])


def new_parser(codec: Codec, raw: bytes) -> ReadingBatch:
    return reading_batch(codec.decode_body(raw).readings)


def body(n: int) -> bytes:
    return json.dumps({"readings": [
        {"module_id": 10_001 + i % 240, "channel": 1 + i % 3, "ts": 1_704_067_200 + i // 720 * 3600,
         "counter": 1_000 + i * 7, "status": 0} for i in range(n)]}).encode()


def best(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, nargs="+", default=[1_000, 20_000, 100_000])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    codec = Codec(ReadingsBody)
    print(f"{'readings':>9} {'bytes':>10} {'old ms':>9} {'new ms':>9} {'old/new':>8} {'new ns/reading':>15}")
    for n in args.readings:
        raw = body(n)
        old, new = old_parser(raw), new_parser(codec, raw)
        for name in ("module", "channel", "ts", "counter", "status"):
            assert np.array_equal(getattr(old, name), getattr(new, name)), name
        t_old = best(lambda raw=raw: old_parser(raw), args.repeat)
        t_new = best(lambda raw=raw: new_parser(codec, raw), args.repeat)
        print(f"{n:>9} {len(raw):>10} {t_old * 1e3:>9.2f} {t_new * 1e3:>9.2f} {t_old / t_new:>7.1f}x "
              f"{t_new / n * 1e9:>15.0f}")


if __name__ == "__main__":
    main()
