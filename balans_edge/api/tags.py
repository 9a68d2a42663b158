"""Tags read from pumping-station controllers over any protocol: the newest
value of each, and the stored samples of one.

Served here, not by a protocol plugin, because the integrator asks "what is
the tank level" without caring whether it came over Modbus or OPC UA: every
running component that reads tags (``core.tags.TagSource``) is listed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sanic.request import Request

from balans_edge.core.tags import TagSource
from balans_edge.core.times import iso
from balans_edge.routes import ApiError, Param, Route, json, parse_time, query_int

if TYPE_CHECKING:
    from balans_edge.server import Server


def _time(t: float | None) -> str | None:
    return iso(int(t)) if t else None


def routes(server: Server) -> list[Route]:
    async def tags(request: Request) -> Any:
        rows = [row for _, c in server.components if isinstance(c, TagSource) for row in c.tag_snapshot()]
        device, protocol = request.args.get("device"), request.args.get("protocol")
        rows = [r for r in rows if (not device or r["device"] == device)
                and (not protocol or r["protocol"] == protocol)]
        for r in rows:
            r["t"], r["last_good_t"] = _time(r["t"]), _time(r["last_good_t"])
        return json({"tags": rows})

    async def history(request: Request) -> Any:
        tag = request.args.get("tag")
        if not tag:
            raise ApiError(400, "missing_parameter", "query parameter tag is required ('<device>/<tag>')")
        t0, t1 = parse_time(request, "from"), parse_time(request, "to")
        if t1 <= t0:
            raise ApiError(400, "bad_parameter", "to must be later than from")
        rows = await server.storage.tag_values(tag, t0, t1, query_int(request, "limit", 10000, 1, 100000))
        return json({"tag": tag, "samples": [{**r, "ts": iso(r["ts"])} for r in rows]})

    return [
        Route("GET", "/api/v1/tags", tags,
              "Tags read from PLCs and OPC UA servers: newest value, unit, quality (good, stale, comm_fail), "
              "time, last good value, protocol",
              params=(Param("device", description="only the tags of this device"),
                      Param("protocol", description="only the tags read over this protocol", enum=("modbus", "opcua"))),
              tags=("tags",)),
        Route("GET", "/api/v1/tags/history", history, "Stored samples of one tag, oldest first",
              params=(Param("tag", required=True, description="'<device>/<tag>'"),
                      Param("from", required=True, format="date-time"), Param("to", required=True, format="date-time"),
                      Param("limit", type="integer", description="at most this many (default 10000)")),
              tags=("tags",)),
    ]
