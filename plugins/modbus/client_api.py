"""HTTP routes of the Modbus client: device links, actuators. (Its tags are
listed with every other protocol's by ``balans_edge.api.tags``.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sanic.request import Request

from balans_edge.api.commands import command_body, execute
from balans_edge.routes import ApiError, Param, Route, iso, json

if TYPE_CHECKING:
    from balans_edge.plugins.modbus.actuators import ModbusActuator
    from balans_edge.plugins.modbus.client import ModbusClient
    from balans_edge.server import Server


def _time(t: float | None) -> str | None:
    return iso(int(t)) if t else None


def routes(server: Server, client: Callable[[], ModbusClient | None],
           actuator: Callable[[], ModbusActuator | None]) -> list[Route]:
    async def devices(request: Request) -> Any:
        running = client()
        return json({"devices": running.status() if running is not None else []})

    async def actuators(request: Request) -> Any:
        a = actuator()
        rows = a.listing() if a is not None else []
        for r in rows:
            r["t"] = _time(r["t"])
        return json({"actuators": rows})

    async def command(request: Request, target: str) -> Any:
        code, reason = command_body(request)
        a = actuator()
        if a is None or not a.owns(target):
            raise ApiError(404, "not_found", f"no Modbus actuator drives {target!r}")
        return await execute(server, request, target, code, reason)

    return [
        Route("GET", "/api/v1/modbus/devices", devices,
              "Polled Modbus devices: link state, reconnects, requests, reads per poll, last error",
              tags=("tags",)),
        Route("GET", "/api/v1/modbus/actuators", actuators,
              "Valves, pumps and relays driven through Modbus, with their last read-back state",
              tags=("commands",)),
        Route("POST", "/api/v1/modbus/actuators/<target>/commands", command,
              "Open or close a valve, start or stop a pump, switch a relay (audited; confirmed by read-back)",
              role="operator", params=(Param("target", "path"),), tags=("commands",),
              body='{"command": "valve_open"|"valve_close"|"pump_start"|"pump_stop"|"relay_on"|"relay_off", '
                   '"reason": "..."}',
              responses={200: "the audited command: id, outcome (done, failed or refused), detail",
                         400: "bad body or no reason", 404: "no Modbus actuator drives the target"}),
    ]
