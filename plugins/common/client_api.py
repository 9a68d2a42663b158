"""The HTTP routes of a protocol plugin's client side (Modbus, OPC UA): its
devices' state, its actuators with their last read-back state, and commands
to them through the audited command service (``context.commands``), answered
as the API's meter commands are (``routes.execute_command``). (The tags of
every protocol are listed by ``api.tags``.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from msgspec import Struct
from sanic.request import Request

from balans_edge.core.components import CommandCode
from balans_edge.core.times import iso
from balans_edge.http_schema import CommandBody, CommandRecord
from balans_edge.routes import ApiError, Param, Route, execute_command, json

if TYPE_CHECKING:
    from balans_edge.core.actuation import ActuationService


class ProtocolClient(Protocol):
    """What a protocol plugin's client component shows the HTTP API."""

    def status(self) -> list[dict[str, Any]]: ...


class ProtocolActuator(Protocol):
    """What a protocol plugin's actuator shows the HTTP API (Modbus, OPC UA)."""

    def owns(self, target: str) -> bool: ...

    def listing(self) -> list[dict[str, Any]]: ...


class Devices(Struct):
    devices: list[dict[str, Any]]


class Actuators(Struct):
    actuators: list[dict[str, Any]]


def client_routes(commands: ActuationService, protocol: str, title: str, devices: str,
                  client: Callable[[], ProtocolClient | None],
                  actuator: Callable[[], ProtocolActuator | None]) -> list[Route]:
    """``GET /api/v1/<protocol>/devices`` (``devices`` describes a row; times as ISO
    text) and the actuator routes. ``client()`` and ``actuator()`` are None while
    not running."""
    async def listing(request: Request) -> Any:
        running = client()
        rows = running.status() if running is not None else []
        for r in rows:
            if "connected_at" in r:
                r["connected_at"] = iso(int(r["connected_at"])) if r["connected_at"] else None
        return json({"devices": rows})

    return [Route("GET", f"/api/v1/{protocol}/devices", listing, devices, response=Devices, tags=("tags",)),
            *actuator_routes(commands, protocol, title, actuator)]


def actuator_routes(commands: ActuationService, protocol: str, title: str,
                    actuator: Callable[[], ProtocolActuator | None]) -> list[Route]:
    """``GET /api/v1/<protocol>/actuators`` and ``POST .../<target>/commands`` of a
    protocol plugin's actuator (``actuator()`` is None while it is not running)."""
    async def listing(request: Request) -> Any:
        a = actuator()
        rows = a.listing() if a is not None else []
        for r in rows:
            r["t"] = iso(int(r["t"])) if r["t"] else None
        return json({"actuators": rows})

    async def command(request: Request, target: str, body: CommandBody) -> Any:
        a = actuator()
        if a is None or not a.owns(target):
            raise ApiError(404, "not_found", f"no {title} actuator drives {target!r}")
        return await execute_command(commands, request, target, CommandCode(body.command), body.reason)

    return [
        Route("GET", f"/api/v1/{protocol}/actuators", listing,
              f"Valves, pumps and relays driven through {title}, with their last read-back state",
              response=Actuators, tags=("commands",)),
        Route("POST", f"/api/v1/{protocol}/actuators/<target>/commands", command,
              f"Open or close a valve, start or stop a pump, switch a relay through {title} (audited; confirmed "
              "by read-back)",
              role="operator", params=(Param("target", description="the actuator's target"),), tags=("commands",),
              body=CommandBody, response=CommandRecord,
              responses={200: "the audited command: id, outcome (done, failed or refused), detail",
                         400: "bad body or no reason", 404: f"no {title} actuator drives the target"}),
    ]
