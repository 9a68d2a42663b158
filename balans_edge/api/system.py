"""Health, plugins and the quarantine of unclaimed readings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sanic.request import Request

from balans_edge.core.storage import StorageError
from balans_edge.core.times import iso
from balans_edge.routes import ApiError, Param, Route, json, query_int

if TYPE_CHECKING:
    from balans_edge.server import Server

MAX_QUARANTINE_LIMIT = 10_000
"""Quarantined readings one request lists at most (newest first)."""


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

    async def quarantine(request: Request) -> Any:
        limit = query_int(request, "limit", 1000, 1, MAX_QUARANTINE_LIMIT)
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
              "for a viewer (or with anonymous_role = viewer)", role=None, tags=("system",)),
        Route("GET", "/api/v1/plugins", plugins, "Loaded plugins, their hooks and state", tags=("system",)),
        Route("GET", "/api/v1/quarantine", quarantine,
              "Readings from unknown modules or channels, newest first, with the total held and how many "
              "retention dropped (by age and by size)",
              params=(Param("limit", type="integer",
                            description=f"at most this many, 1..{MAX_QUARANTINE_LIMIT} (default 1000)"),),
              tags=("ingest",)),
        Route("POST", "/api/v1/quarantine/replay", replay,
              "Ingest quarantined readings again after the registry learned their modules; "
              "claimed ones leave the quarantine", role="admin", tags=("ingest",),
              responses={200: "ingest counts and how many readings remain unclaimed",
                         503: "storage unavailable: pages replayed before it stay replayed; replay again"}),
    ]
