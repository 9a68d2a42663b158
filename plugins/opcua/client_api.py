"""HTTP routes of the OPC UA client: device sessions and actuators. (Its tags
are listed with every other protocol's by ``balans_edge.api.tags``.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sanic.request import Request

from balans_edge.plugins.common.actuator_api import actuator_routes
from balans_edge.routes import Route, iso, json

if TYPE_CHECKING:
    from balans_edge.plugins.opcua.actuators import OpcuaActuator
    from balans_edge.plugins.opcua.client import OpcuaClient
    from balans_edge.server import Server


def routes(server: Server, client: Callable[[], OpcuaClient | None],
           actuator: Callable[[], OpcuaActuator | None]) -> list[Route]:
    async def devices(request: Request) -> Any:
        running = client()
        rows = running.status() if running is not None else []
        for r in rows:
            r["connected_at"] = iso(int(r["connected_at"])) if r["connected_at"] else None
        return json({"devices": rows})

    return [
        Route("GET", "/api/v1/opcua/devices", devices,
              "OPC UA servers read as a client: session up, security, connects, last error, reads, notifications",
              tags=("tags",)),
        *actuator_routes(server, "opcua", "OPC UA", actuator),
    ]
