"""HTTP routes of the Modbus client: device links, actuators. (Its tags are
listed with every other protocol's by ``balans_edge.api.tags``.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sanic.request import Request

from balans_edge.plugins.common.actuator_api import actuator_routes
from balans_edge.routes import Route, json

if TYPE_CHECKING:
    from balans_edge.plugins.modbus.actuators import ModbusActuator
    from balans_edge.plugins.modbus.client import ModbusClient
    from balans_edge.server import Server


def routes(server: Server, client: Callable[[], ModbusClient | None],
           actuator: Callable[[], ModbusActuator | None]) -> list[Route]:
    async def devices(request: Request) -> Any:
        running = client()
        return json({"devices": running.status() if running is not None else []})

    return [
        Route("GET", "/api/v1/modbus/devices", devices,
              "Polled Modbus devices: link state, reconnects, requests, reads per poll, last error",
              tags=("tags",)),
        *actuator_routes(server, "modbus", "Modbus", actuator),
    ]
