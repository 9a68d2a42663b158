"""Readings and consumption of a meter; pushing raw readings over HTTP."""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from msgspec import Meta, Struct
from sanic.request import Request

from balans_edge.core.calendar import Step
from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.intervals import consumption as consumption_of
from balans_edge.core.model import Meter, ReadingFlag
from balans_edge.core.storage import StorageError
from balans_edge.core.times import iso, read_time
from balans_edge.http_schema import INT62, Bounded, Period, StepPeriod
from balans_edge.routes import ApiError, Param, Route, checked_period, json

if TYPE_CHECKING:
    from balans_edge.server import Server

MAX_PUSH = 100_000


class Reading(Struct, gc=False):
    """One raw reading. Values in range for JSON but not for a device (channel 4, a counter
    beyond u32, ts out of the valid times) are counted as rejected by ingest, not refused here."""

    module_id: Annotated[Bounded, Meta(description="radio module id (u32)")]
    channel: Annotated[Bounded, Meta(description="input of the module, 1..3")]
    ts: Annotated[Bounded | Annotated[str, Meta(max_length=64)],
                  Meta(description="when the module read the counter: unix seconds or ISO-8601")]
    counter: Annotated[Bounded, Meta(description="pulse counter (u32)")]
    status: Annotated[Bounded, Meta(description="status bits (u16)")] = 0


class ReadingsBody(Struct, gc=False):
    """Raw counter readings; at most 100000 per request (413 beyond)."""

    readings: Annotated[list[Reading], Meta(extra_json_schema={"maxItems": MAX_PUSH})]


class IngestCounts(Struct):
    accepted: int
    duplicates: int
    conflicts: int
    quarantined: int
    rejected: dict[str, int]
    resets: int


class MeterReading(Struct):
    t: str
    value: float
    counter: int
    status: int
    epoch_start: bool
    backwards: bool


class MeterReadings(Struct):
    meter_id: str
    unit: str
    readings: list[MeterReading]


class ConsumptionPoint(Struct):
    t: str
    value: float | None
    quality: Literal["measured", "estimated", "missing"]


class MeterConsumption(Struct):
    meter_id: str
    unit: str
    step: Step
    points: list[ConsumptionPoint]


def routes(server: Server) -> list[Route]:
    async def meter_or_404(meter_id: str) -> tuple[int, Meter]:
        meter = await server.storage.registry_get("meters", meter_id)
        key = (await server.storage.meter_keys()).get(meter_id)
        if meter is None or key is None:
            raise ApiError(404, "not_found", f"meter {meter_id!r} is not in the registry")
        return key, meter

    async def readings(request: Request, meter_id: str, query: Period) -> Any:
        key, meter = await meter_or_404(meter_id)
        t0, t1 = checked_period(query.from_, query.to, "day", what="readings")
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

    async def consumption(request: Request, meter_id: str, query: StepPeriod) -> Any:
        key, meter = await meter_or_404(meter_id)
        t0, t1 = checked_period(query.from_, query.to, query.step, server.tz)
        await server.intervals.process()  # read-your-writes: late data is folded in first
        points = await consumption_of(server.storage, key, t0, t1, query.step, server.tz)
        return json({
            "meter_id": meter_id,
            "unit": meter.unit,
            "step": query.step,
            "points": [
                {"t": iso(p.t), "value": None if p.value is None else round(p.value, 9), "quality": p.quality.label}
                for p in points
            ],
        })

    async def push(request: Request, body: ReadingsBody) -> Any:
        if len(body.readings) > MAX_PUSH:
            raise ApiError(413, "payload_too_large", f"at most {MAX_PUSH} readings per request")
        try:
            result = await server.ingest.ingest(reading_batch(body.readings))
        except StorageError as exc:
            raise ApiError(503, "unavailable", f"readings not stored, send again later: {exc}") from None
        return json(result.as_dict())

    meter_param = Param("meter_id", description="a meter's id")
    return [
        Route("GET", "/api/v1/meters/<meter_id>/readings", readings, "Stored register values of a meter",
              params=(meter_param,), query=Period, response=MeterReadings, tags=("meters",),
              responses={200: "OK", 404: "not in the registry"}),
        Route("GET", "/api/v1/meters/<meter_id>/consumption", consumption,
              "Consumption per hour (UTC), day or month (site timezone) with quality",
              params=(meter_param,), query=StepPeriod, response=MeterConsumption, tags=("meters",),
              responses={200: "OK", 404: "not in the registry"}),
        Route("POST", "/api/v1/readings", push,
              "Push raw counter readings through the ingest path (answered after commit)",
              role="operator", tags=("ingest",), body=ReadingsBody, response=IngestCounts,
              responses={200: "committed; counts of accepted, duplicates, quarantined, rejected",
                         413: f"more than {MAX_PUSH} readings",
                         503: "storage unavailable: nothing stored, send again"}),
    ]


_COLUMNS = tuple(attrgetter(name) for name in ("module_id", "channel", "counter", "status"))
_TS = attrgetter("ts")


def reading_batch(items: list[Reading]) -> ReadingBatch:
    """The readings as int64 columns. Times given as text are read by ``core.times``
    (their range is ingest's: a reading out of it is counted as rejected, not refused here)."""
    n = len(items)
    module, channel, counter, status = (np.fromiter(map(get, items), dtype=np.int64, count=n) for get in _COLUMNS)
    ts = list(map(_TS, items))
    if str in set(map(type, ts)):
        for i, t in enumerate(ts):
            if isinstance(t, str):
                try:
                    ts[i] = read_time(t)
                except ValueError as exc:
                    raise ApiError(400, "bad_body", f"readings[{i}].ts: {exc}") from None
                if not -INT62 < ts[i] < INT62:
                    raise ApiError(400, "bad_body", f"readings[{i}].ts: expected a time, got {t!r:.100}")
    return ReadingBatch(module, channel, np.array(ts, dtype=np.int64), counter, status)
