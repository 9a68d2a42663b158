"""Health, plugins and the quarantine of unclaimed readings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sanic.request import Request

from balans_edge.routes import Param, Route, json

if TYPE_CHECKING:
    from balans_edge.server import Server


def routes(server: Server) -> list[Route]:
    async def health(request: Request) -> Any:
        return json(await server.health())

    async def plugins(request: Request) -> Any:
        return json({"plugins": server.plugins.listing()})

    async def quarantine(request: Request) -> Any:
        limit = request.args.get("limit", "1000")
        if not limit.isdigit() or not 1 <= int(limit) <= 100000:
            from balans_edge.routes import ApiError

            raise ApiError(400, "bad_parameter", f"limit: expected integer 1..100000, got {limit!r}")
        return json({"readings": await server.storage.quarantine(int(limit))})

    return [
        Route("GET", "/api/v1/health", health, "Server health: storage, ingest counters, plugins, exporters",
              role=None, tags=("system",)),
        Route("GET", "/api/v1/plugins", plugins, "Loaded plugins, their hooks and state", tags=("system",)),
        Route("GET", "/api/v1/quarantine", quarantine, "Readings from unknown modules or channels, newest first",
              params=(Param("limit", type="integer", description="at most this many (default 1000)"),),
              tags=("ingest",)),
    ]
