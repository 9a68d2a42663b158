"""Decoding the body of POST /api/v1/readings: the schema layer against the hand-written parser it replaced.

    python bench/schema_decode.py [--readings 1000 20000 100000] [--repeat R] [--iso] [--pydantic]

For each size N a body ``{"readings": [{"module_id", "channel", "ts", "counter",
"status"}, ...]}`` as the HTTP handler receives it (bytes) is turned into the
int64 columns ingest takes (``ReadingBatch``) by

- ``hand-written``: ``json.loads`` and the per-item checks of the handler before
  the schema layer (``balans_edge/api/meters.py`` ``push``/``_push_row`` at commit
  5306e08, frozen here so that the baseline outlives the switch);
- ``schema layer``: the route's own ``Codec(ReadingsBody)`` (msgspec into the
  declared Structs) and ``reading_batch``, the path the server runs;
- ``schema layer, decode only``: the same without building the columns;
- ``pydantic v2`` (``--pydantic``, when installed: it is not a dependency):
  ``TypeAdapter.validate_json`` into BaseModels with the same rules, then the
  same ``reading_batch``.

Every parser must give the hand-written parser's columns. Each is timed R times
in one process; every figure is printed as a ratio to the hand-written parser
measured in the same run for the same body (below 1: faster).
``--iso`` sends every ``ts`` as ISO-8601 text instead of unix seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np

from balans_edge.api.meters import ReadingsBody, reading_batch
from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.times import read_time
from balans_edge.http_schema import Codec

LIMIT = 2**62
T_START = 1_704_067_200  # 2024-01-01 00:00:00 UTC
COLUMNS = ("module", "channel", "ts", "counter", "status")


def body(n: int, iso: bool) -> bytes:
    """One concentrator's worth of hourly readings (720 meters on 240 modules), arrival order."""
    rows = []
    for i in range(n):
        ts = T_START + (i // 720) * 3600
        rows.append({"module_id": 10_001 + (i % 240), "channel": 1 + (i // 240) % 3,
                     "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if iso else ts,
                     "counter": 1_000 + i * 7, "status": 0})
    return json.dumps({"readings": rows}).encode()


# -- the hand-written parser (balans_edge/api/meters.py at 5306e08) ---------------------

PUSH_FIELDS = ("module_id", "channel", "ts", "counter")


class BadBody(Exception):
    """The old handler's 400 answers (``ApiError(400, ...)`` there)."""


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


def hand_written(raw: bytes) -> ReadingBatch:
    doc = json.loads(raw or b"null")
    items = doc.get("readings") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise BadBody('expected {"readings": [...]}')
    rows = np.zeros((len(items), 5), dtype=np.int64)
    for i, item in enumerate(items):
        rows[i] = _push_row(item, i)
    return ReadingBatch(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4])


# -- the schema layer (what the route runs) ----------------------------------------------

_codec = Codec(ReadingsBody)


def schema_columns(raw: bytes) -> ReadingBatch:
    return reading_batch(_codec.decode_body(raw).readings)


def schema_decode(raw: bytes) -> Any:
    return _codec.decode_body(raw).readings


# -- pydantic v2 (optional) ----------------------------------------------------------------


def pydantic_parser() -> tuple[str, Callable[[bytes], ReadingBatch]] | None:
    """pydantic's parser with the schema layer's rules, or None when pydantic is not installed."""
    try:
        import pydantic
    except ImportError:
        return None

    PInt = Annotated[int, pydantic.Field(gt=-LIMIT, lt=LIMIT, strict=True)]

    class PReading(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        module_id: PInt
        channel: PInt
        ts: PInt | Annotated[str, pydantic.Field(max_length=64)]
        counter: PInt
        status: PInt = 0

    class PReadings(pydantic.BaseModel):
        readings: list[PReading]

    adapter = pydantic.TypeAdapter(PReadings)

    def parse(raw: bytes) -> ReadingBatch:
        return reading_batch(adapter.validate_json(raw).readings)  # type: ignore[arg-type]

    return f"pydantic {pydantic.VERSION}", parse


# -- timing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    best: float
    median: float


def measure(fn: Callable[[bytes], Any], raw: bytes, repeat: int) -> Timing:
    """Best and median of ``repeat`` calls after one warm-up call (imports, caches)."""
    fn(raw)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(raw)
        times.append(time.perf_counter() - t0)
    return Timing(min(times), statistics.median(times))


def same_columns(a: ReadingBatch, b: ReadingBatch) -> bool:
    return all(np.array_equal(getattr(a, c), getattr(b, c)) for c in COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, nargs="+", default=[1_000, 20_000, 100_000],
                        help="body sizes in readings (default: 1000 20000 100000)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per parser and size")
    parser.add_argument("--iso", action="store_true", help="ts as ISO-8601 text instead of unix seconds")
    parser.add_argument("--pydantic", action="store_true", help="add pydantic v2 (if installed) to the comparison")
    args = parser.parse_args()

    parsers: dict[str, Callable[[bytes], Any]] = {"hand-written (json + checks)": hand_written,
                                                  f"schema layer (msgspec {msgspec.__version__})": schema_columns,
                                                  "schema layer, decode only": schema_decode}
    if args.pydantic:
        pyd = pydantic_parser()
        if pyd is None:
            print("pydantic is not installed: `pip install pydantic` to compare it (not a dependency)")
        else:
            parsers[pyd[0]] = pyd[1]

    print(f"POST /api/v1/readings body, ts as {'ISO-8601 text' if args.iso else 'unix seconds'}, "
          f"{args.repeat} runs each, Python {sys.version.split()[0]}; ratios to the hand-written parser "
          f"of the same run (below 1: faster)")
    print(f"{'readings':>9} {'MB':>6}  {'parser':34} {'best ms':>9} {'ns/reading':>10}  {'best':>6} {'median':>7}")
    for n in args.readings:
        raw = body(n, args.iso)
        expected = hand_written(raw)
        for name, fn in parsers.items():  # every parser reads the same numbers
            out = fn(raw)
            assert not isinstance(out, ReadingBatch) or same_columns(out, expected), name
        base: Timing | None = None
        for name, fn in parsers.items():
            t = measure(fn, raw, args.repeat)
            base = base or t
            print(f"{n:>9,} {len(raw) / 1e6:6.2f}  {name:34} {t.best * 1e3:9.2f} {t.best / n * 1e9:10.0f}  "
                  f"{t.best / base.best:6.3f} {t.median / base.median:7.3f}")


if __name__ == "__main__":
    main()
