"""Decoding the body of POST /api/v1/readings: msgspec against the hand-written parser (and pydantic v2).

    python bench/schema_decode.py [--readings N] [--repeat R] [--iso]

One body of N readings (default 10,000) ``{"readings": [{"module_id", "channel",
"ts", "counter", "status"}, ...]}`` as the HTTP handler receives it (bytes), is
decoded R times (default 30) by each parser into the int64 columns ingest
takes; the best and the median time per body are printed with the ratio to
the hand-written parser measured in the same run (below 1: faster).

- ``hand-written``: ``json.loads`` and the per-item checks of the handler as it
  was before the schema layer (``balans_edge/api/meters.py`` ``_push_row`` at
  commit 5306e08, copied here so that the baseline outlives the switch);
- ``msgspec``: ``msgspec.json.decode`` into a Struct with the same rules
  (integers within +-2^62, ``ts`` unix seconds or ISO-8601 text, ``status``
  default 0), then the columns;
- ``msgspec (decode only)``: the same without building the columns;
- ``pydantic``: ``TypeAdapter.validate_json`` into BaseModels with the same
  rules (only when pydantic is installed: it is not a dependency).

``--iso`` sends every ``ts`` as ISO-8601 text instead of unix seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import numpy as np

from balans_edge.core.times import read_time

LIMIT = 2**62
T_START = 1_704_067_200  # 2024-01-01 00:00:00 UTC


def body(n: int, iso: bool) -> bytes:
    rows = []
    for i in range(n):
        ts = T_START + (i // 720) * 3600
        rows.append({"module_id": 10_001 + (i % 240), "channel": 1 + (i // 240) % 3,
                     "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if iso else ts,
                     "counter": 1_000 + i, "status": 0})
    return json.dumps({"readings": rows}).encode()


# -- the hand-written parser (balans_edge/api/meters.py at 5306e08) ---------------------

PUSH_FIELDS = ("module_id", "channel", "ts", "counter")


class BadBody(Exception):
    pass


def _push_row(item: Any, i: int) -> list[int]:
    if not isinstance(item, dict):
        raise BadBody(f"readings[{i}]: expected an object")
    out = []
    for name in (*PUSH_FIELDS, "status"):
        value = item.get(name, 0 if name == "status" else None)
        if name == "ts" and isinstance(value, str):
            try:
                value = read_time(value)
            except ValueError as exc:
                raise BadBody(f"readings[{i}].ts: {exc}") from None
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**62) < value < 2**62:
            raise BadBody(f"readings[{i}].{name}: expected an integer, got {value!r}")
        out.append(value)
    return out


def hand_written(raw: bytes) -> np.ndarray:
    doc = json.loads(raw)
    items = doc.get("readings") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise BadBody('expected {"readings": [...]}')
    rows = np.zeros((len(items), 5), dtype=np.int64)
    for i, item in enumerate(items):
        rows[i] = _push_row(item, i)
    return rows


# -- msgspec ---------------------------------------------------------------------------

Int = Annotated[int, msgspec.Meta(gt=-LIMIT, lt=LIMIT)]


class Reading(msgspec.Struct, forbid_unknown_fields=True):
    module_id: Int
    channel: Int
    ts: Int | str
    counter: Int
    status: Int = 0


class Readings(msgspec.Struct, forbid_unknown_fields=True):
    readings: list[Reading]


_decoder = msgspec.json.Decoder(Readings)


def msgspec_decode(raw: bytes) -> list[Reading]:
    return _decoder.decode(raw).readings


def msgspec_columns(raw: bytes) -> np.ndarray:
    items = _decoder.decode(raw).readings
    rows = np.empty((len(items), 5), dtype=np.int64)
    rows[:, 0] = [r.module_id for r in items]
    rows[:, 1] = [r.channel for r in items]
    rows[:, 2] = [r.ts if isinstance(r.ts, int) else read_time(r.ts) for r in items]
    rows[:, 3] = [r.counter for r in items]
    rows[:, 4] = [r.status for r in items]
    return rows


# -- pydantic (optional) ---------------------------------------------------------------


def pydantic_parser() -> Callable[[bytes], np.ndarray] | None:
    try:
        import pydantic
    except ImportError:
        return None

    PInt = Annotated[int, pydantic.Field(gt=-LIMIT, lt=LIMIT, strict=True)]

    class PReading(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        module_id: PInt
        channel: PInt
        ts: PInt | str
        counter: PInt
        status: PInt = 0

    class PReadings(pydantic.BaseModel):
        readings: list[PReading]

    adapter = pydantic.TypeAdapter(PReadings)

    def parse(raw: bytes) -> np.ndarray:
        items = adapter.validate_json(raw).readings
        rows = np.empty((len(items), 5), dtype=np.int64)
        rows[:, 0] = [r.module_id for r in items]
        rows[:, 1] = [r.channel for r in items]
        rows[:, 2] = [r.ts if isinstance(r.ts, int) else read_time(r.ts) for r in items]
        rows[:, 3] = [r.counter for r in items]
        rows[:, 4] = [r.status for r in items]
        return rows

    parse.version = pydantic.VERSION  # type: ignore[attr-defined]
    return parse


def measure(fn: Callable[[bytes], Any], raw: bytes, repeat: int) -> list[float]:
    fn(raw)  # warm up (imports, caches)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(raw)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--iso", action="store_true", help="ts as ISO-8601 text instead of unix seconds")
    args = parser.parse_args()
    raw = body(args.readings, args.iso)

    expected = hand_written(raw)
    parsers: dict[str, Callable[[bytes], Any]] = {"hand-written (json + checks)": hand_written,
                                                  f"msgspec {msgspec.__version__}": msgspec_columns,
                                                  "msgspec (decode only)": msgspec_decode}
    pyd = pydantic_parser()
    if pyd is not None:
        parsers[f"pydantic {pyd.version}"] = pyd  # type: ignore[attr-defined]
    for name, fn in parsers.items():  # every parser reads the same numbers
        out = fn(raw)
        if isinstance(out, np.ndarray):
            assert np.array_equal(out, expected), name

    print(f"POST /api/v1/readings body: {args.readings:,} readings, {len(raw) / 1e6:.2f} MB, "
          f"ts as {'ISO-8601 text' if args.iso else 'unix seconds'}, {args.repeat} runs, Python "
          f"{sys.version.split()[0]}")
    print(f"{'parser':32} {'best ms':>9} {'median ms':>10} {'readings/s':>12}  vs hand-written: best, median")
    base: tuple[float, float] | None = None
    for name, fn in parsers.items():
        times = measure(fn, raw, args.repeat)
        best, median = min(times), statistics.median(times)
        base = base or (best, median)
        print(f"{name:32} {best * 1e3:9.2f} {median * 1e3:10.2f} {args.readings / best:12,.0f}  "
              f"{best / base[0]:6.3f}x {median / base[1]:6.3f}x")
    if pyd is None:
        print("pydantic is not installed: `pip install pydantic` to compare it (not a dependency)")


if __name__ == "__main__":
    main()
