"""Tags read from pumping-station controllers over any protocol: the newest
value of each, and the stored samples of one.

Served here, not by a protocol plugin, because the integrator asks "what is
the tank level" without caring whether it came over Modbus or OPC UA: every
running component that reads tags (``core.tags.TagSource``) is listed. The
stored samples are the protocol plugins' table (owner ``tags``), which core
does not reach: the history is read through a running tag source (any one:
they share the table), and is empty when no protocol client runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct
from sanic.request import Request

from balans_edge.core.times import iso
from balans_edge.http_schema import Time
from balans_edge.routes import ApiError, Route, json

if TYPE_CHECKING:
    from balans_edge.server import Server

MAX_SAMPLES = 100_000


class TagsQuery(Struct):
    device: Annotated[str | None, Meta(description="only the tags of this device")] = None
    protocol: Annotated[str | None, Meta(description="only the tags read over this protocol (modbus, opcua)")] = None


class HistoryQuery(Struct):
    tag: Annotated[str, Meta(min_length=1, description="'<device>/<tag>'")]
    from_: Time = msgspec.field(name="from")
    to: Time
    limit: Annotated[int, Meta(ge=1, le=MAX_SAMPLES, description="at most this many")] = 10_000


class Tag(Struct):
    device: str
    protocol: str
    quality: Literal["good", "stale", "comm_fail"] | str
    t: str | None
    last_good_t: str | None


class Tags(Struct):
    tags: list[Tag]


class Sample(Struct):
    ts: str


class TagHistory(Struct):
    tag: str
    samples: list[Sample]


def _time(t: float | None) -> str | None:
    return iso(int(t)) if t else None


def routes(server: Server) -> list[Route]:
    async def tags(request: Request, query: TagsQuery) -> Any:
        rows = [row for c in server.tags for row in c.tag_snapshot()]
        device, protocol = query.device, query.protocol
        rows = [r for r in rows if (not device or r["device"] == device)
                and (not protocol or r["protocol"] == protocol)]
        for r in rows:
            r["t"], r["last_good_t"] = _time(r["t"]), _time(r["last_good_t"])
        return json({"tags": rows})

    async def history(request: Request, query: HistoryQuery) -> Any:
        if query.to <= query.from_:
            raise ApiError(400, "bad_parameter", "to must be later than from")
        source = next(iter(server.tags), None)
        rows = await source.tag_history(query.tag, query.from_, query.to, query.limit) if source else []
        return json({"tag": query.tag, "samples": [{**r, "ts": iso(r["ts"])} for r in rows]})

    return [
        Route("GET", "/api/v1/tags", tags,
              "Tags read from PLCs and OPC UA servers: newest value, unit, quality (good, stale, comm_fail), "
              "time, last good value, protocol", query=TagsQuery, response=Tags, tags=("tags",)),
        Route("GET", "/api/v1/tags/history", history, "Stored samples of one tag, oldest first",
              query=HistoryQuery, response=TagHistory, tags=("tags",)),
    ]
