"""Readings and consumption of a meter; pushing raw readings over HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sanic.request import Request

from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.intervals import consumption as consumption_of
from balans_edge.core.model import Meter, ReadingFlag
from balans_edge.core.storage import StorageError
from balans_edge.core.times import iso, read_time
from balans_edge.routes import ApiError, Param, Route, body_json, json, parse_period, parse_step

if TYPE_CHECKING:
    from balans_edge.server import Server

MAX_PUSH = 100_000
PUSH_FIELDS = ("module_id", "channel", "ts", "counter")


def routes(server: Server) -> list[Route]:
    async def meter_or_404(meter_id: str) -> tuple[int, Meter]:
        meter = await server.storage.registry_get("meters", meter_id)
        key = (await server.storage.meter_keys()).get(meter_id)
        if meter is None or key is None:
            raise ApiError(404, "not_found", f"meter {meter_id!r} is not in the registry")
        return key, meter

    async def readings(request: Request, meter_id: str) -> Any:
        key, meter = await meter_or_404(meter_id)
        t0, t1 = parse_period(request, "day", what="readings")
        rows = await server.storage.readings(key, t0, t1)
        values = (await server.storage.register_table([key])).values(rows.meter, rows.ts, rows.pulses)
        points = [
            {"t": iso(t), "value": round(v, 9), "counter": c, "status": s,
             "epoch_start": bool(f & ReadingFlag.EPOCH_START), "backwards": bool(f & ReadingFlag.BACKWARDS)}
            for t, v, c, s, f in zip(
                rows.ts.tolist(), values.tolist(), rows.counter.tolist(), rows.status.tolist(),
                rows.flags.tolist(), strict=True,
            )
        ]
        return json({"meter_id": meter_id, "unit": meter.unit, "readings": points})

    async def consumption(request: Request, meter_id: str) -> Any:
        step = parse_step(request)
        key, meter = await meter_or_404(meter_id)
        t0, t1 = parse_period(request, step, server.tz)
        await server.intervals.process()  # read-your-writes: late data is folded in first
        points = await consumption_of(server.storage, key, t0, t1, step, server.tz)
        return json({
            "meter_id": meter_id,
            "unit": meter.unit,
            "step": step,
            "points": [
                {"t": iso(p.t), "value": None if p.value is None else round(p.value, 9), "quality": p.quality.label}
                for p in points
            ],
        })

    async def push(request: Request) -> Any:
        body = body_json(request)
        items = body.get("readings") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ApiError(400, "bad_body", 'expected {"readings": [{"module_id", "channel", "ts", "counter"}]}')
        if len(items) > MAX_PUSH:
            raise ApiError(413, "payload_too_large", f"at most {MAX_PUSH} readings per request")
        rows = np.zeros((len(items), 5), dtype=np.int64)
        for i, item in enumerate(items):
            rows[i] = _push_row(item, i)
        batch = ReadingBatch(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4])
        try:
            result = await server.ingest.ingest(batch)
        except StorageError as exc:
            raise ApiError(503, "unavailable", f"readings not stored, send again later: {exc}") from None
        return json(result.as_dict())

    return [
        Route("GET", "/api/v1/meters/<meter_id>/readings", readings, "Stored register values of a meter",
              params=(Param("meter_id", "path"), Param("from", required=True, format="date-time"),
                      Param("to", required=True, format="date-time")),
              tags=("meters",)),
        Route("GET", "/api/v1/meters/<meter_id>/consumption", consumption,
              "Consumption per hour (UTC), day or month (site timezone) with quality",
              params=(Param("meter_id", "path"), Param("from", required=True, format="date-time"),
                      Param("to", required=True, format="date-time"),
                      Param("step", enum=("hour", "day", "month"), description="default hour")),
              tags=("meters",)),
        Route("POST", "/api/v1/readings", push,
              "Push raw counter readings through the ingest path (answered after commit)",
              role="operator", tags=("ingest",),
              body='{"readings": [{"module_id": int, "channel": 1..3, "ts": unix or ISO-8601, "counter": u32, '
                   '"status": u16}]}',
              responses={200: "committed; counts of accepted, duplicates, quarantined, rejected",
                         503: "storage unavailable: nothing stored, send again"}),
    ]


def _push_row(item: Any, i: int) -> list[int]:
    if not isinstance(item, dict):
        raise ApiError(400, "bad_body", f"readings[{i}]: expected an object")
    out = []
    for name in (*PUSH_FIELDS, "status"):
        value = item.get(name, 0 if name == "status" else None)
        if name == "ts" and isinstance(value, str):
            try:  # the range is ingest's: a reading out of it is counted as rejected, not refused here
                value = read_time(value)
            except ValueError as exc:
                raise ApiError(400, "bad_body", f"readings[{i}].ts: {exc}") from None
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**62) < value < 2**62:
            raise ApiError(400, "bad_body", f"readings[{i}].{name}: expected an integer, got {value!r}")
        out.append(value)
    return out
