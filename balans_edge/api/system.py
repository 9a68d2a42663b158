"""Health, plugins and the quarantine of unclaimed readings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from msgspec import Meta, Struct
from sanic.request import Request

from balans_edge.api.meters import IngestCounts
from balans_edge.core.storage import StorageError
from balans_edge.core.times import iso
from balans_edge.routes import ApiError, Route, json

if TYPE_CHECKING:
    from balans_edge.server import Server

MAX_QUARANTINE_LIMIT = 10_000
"""Quarantined readings one request lists at most (newest first)."""


class Health(Struct):
    """The overall status for anyone; the rest for a viewer (or with anonymous_role = viewer)."""

    status: Literal["ok", "degraded"]
    version: str | None = None
    site: str | None = None
    uptime_s: float | None = None
    storage: dict[str, Any] | None = None
    ingest: dict[str, Any] | None = None
    plugins: dict[str, str] | None = None
    exporters: dict[str, Any] | None = None
    bus: list[dict[str, Any]] | None = None


class Plugins(Struct):
    plugins: list[dict[str, Any]]


class QuarantineQuery(Struct):
    limit: Annotated[int, Meta(ge=1, le=MAX_QUARANTINE_LIMIT, description="at most this many")] = 1000


class Quarantined(Struct):
    module_id: int
    channel: int
    ts: int
    counter: int
    status: int
    reason: str
    received_at: int


class Quarantine(Struct):
    readings: list[Quarantined]
    total: Annotated[int, Meta(ge=0)]
    oldest_received_at: str | None
    dropped: dict[str, int]
    max_rows: int
    max_age_days: float


class Replayed(IngestCounts):
    remaining: Annotated[int, Meta(ge=0, description="readings still unclaimed")]


def routes(server: Server) -> list[Route]:
    async def health(request: Request) -> Any:
        report = await server.health()
        if request.ctx.role is None:
            # Open to anyone (load balancers, probes): the overall status only. The
            # rest (versions, plugin states, export targets) helps an attacker map the box.
            return json({"status": report["status"]})
        return json(report)

    async def plugins(request: Request) -> Any:
        return json({"plugins": server.plugins.listing()})

    async def quarantine(request: Request, query: QuarantineQuery) -> Any:
        limit = query.limit
        stats = await server.storage.quarantine_stats()
        settings = server.config.ingest
        return json({
            "readings": await server.storage.quarantine(limit),
            "total": stats["rows"],
            "oldest_received_at": None if stats["oldest_received_at"] is None else iso(stats["oldest_received_at"]),
            "dropped": stats["dropped"],
            "max_rows": settings.quarantine_max_rows,
            "max_age_days": settings.quarantine_max_age_days,
        })

    async def replay(request: Request) -> Any:
        try:
            result = await server.ingest.replay_quarantine()
        except StorageError as exc:
            raise ApiError(503, "unavailable", f"replay not stored, try again: {exc}") from None
        remaining = (await server.storage.quarantine_stats())["rows"]
        return json({**result.as_dict(), "remaining": remaining})

    return [
        Route("GET", "/api/v1/health", health,
              "Server health: the overall status for anyone; storage, ingest counters, plugins and exporters "
              "for a viewer (or with anonymous_role = viewer)", role=None, response=Health, tags=("system",)),
        Route("GET", "/api/v1/plugins", plugins, "Loaded plugins, their hooks and state", response=Plugins,
              tags=("system",)),
        Route("GET", "/api/v1/quarantine", quarantine,
              "Readings from unknown modules or channels, newest first, with the total held and how many "
              "retention dropped (by age and by size)",
              query=QuarantineQuery, response=Quarantine, tags=("ingest",)),
        Route("POST", "/api/v1/quarantine/replay", replay,
              "Ingest quarantined readings again after the registry learned their modules; "
              "claimed ones leave the quarantine", role="admin", tags=("ingest",), response=Replayed,
              responses={200: "ingest counts and how many readings remain unclaimed",
                         503: "storage unavailable: pages replayed before it stay replayed; replay again"}),
    ]
