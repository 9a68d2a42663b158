"""Valve and relay commands over HTTP, through the actuation service (audited)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sanic.request import Request

from balans_edge.core.components import SWITCH_CODES, Command, CommandCode
from balans_edge.core.times import iso
from balans_edge.routes import ApiError, Param, Route, audited_body, json, optional_time, query_int

if TYPE_CHECKING:
    from balans_edge.core.actuation import ActuationService
    from balans_edge.server import Server

METER_COMMANDS = (CommandCode.VALVE_CLOSE, CommandCode.VALVE_OPEN, CommandCode.RELAY_OFF, CommandCode.RELAY_ON)
MAX_AUDIT_LIMIT = 1000
AUDIT_FILTERS = {
    "target": "only commands to this target: a meter id, module:<id>, concentrator:<id> or an actuator's target",
    "outcome": "only this outcome: pending, done, failed, refused (firmware pushes: accepted, bad_signature, ...)",
    "code": "only this command: valve_close, relay_off, pump_start, ping, set_interval, firmware_push, ...",
    "requested_by": "only commands asked for by this user (api:<name>, or a component's name)",
}


def command_body(request: Request, allowed: Sequence[CommandCode] = SWITCH_CODES) -> tuple[CommandCode, str]:
    """The command code and reason of a ``{"command", "reason"}`` body; 400 naming the allowed codes."""
    body, reason = audited_body(request, '{"command": ..., "reason": ...}')
    code = body.get("command")
    if code not in allowed:
        names = ", ".join(str(c) for c in allowed)
        raise ApiError(400, "bad_body", f"command: expected one of {names}, got {code!r}")
    return CommandCode(code), reason.strip()


async def execute(commands: ActuationService, request: Request, target: str, code: CommandCode,
                  reason: str) -> Any:
    """Run a command for the API user through the actuation service; answer the audited record."""
    command = await commands.execute(Command(target, code, requested_by=f"api:{request.ctx.user}", reason=reason))
    return json({**command.record(), "t": iso(command.t)})


class ProtocolActuator(Protocol):
    """What a protocol plugin's actuator shows the HTTP API (Modbus, OPC UA)."""

    def owns(self, target: str) -> bool: ...

    def listing(self) -> list[dict[str, Any]]: ...


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

    async def command(request: Request, target: str) -> Any:
        code, reason = command_body(request)
        a = actuator()
        if a is None or not a.owns(target):
            raise ApiError(404, "not_found", f"no {title} actuator drives {target!r}")
        return await execute(commands, request, target, code, reason)

    return [
        Route("GET", f"/api/v1/{protocol}/actuators", listing,
              f"Valves, pumps and relays driven through {title}, with their last read-back state",
              tags=("commands",)),
        Route("POST", f"/api/v1/{protocol}/actuators/<target>/commands", command,
              f"Open or close a valve, start or stop a pump, switch a relay through {title} (audited; confirmed "
              "by read-back)",
              role="operator", params=(Param("target", "path"),), tags=("commands",),
              body='{"command": "valve_open"|"valve_close"|"pump_start"|"pump_stop"|"relay_on"|"relay_off", '
                   '"reason": "..."}',
              responses={200: "the audited command: id, outcome (done, failed or refused), detail",
                         400: "bad body or no reason", 404: f"no {title} actuator drives the target"}),
    ]


def routes(server: Server) -> list[Route]:
    async def audit(request: Request) -> Any:
        filters = {name: request.args.get(name) or None for name in AUDIT_FILTERS}
        t0, t1 = optional_time(request, "from"), optional_time(request, "to")
        rows = await server.storage.commands(**filters, t0=t0, t1=t1,
                                             limit=query_int(request, "limit", 100, 1, MAX_AUDIT_LIMIT))
        return json({"commands": [{**r, "t": iso(r["t"])} for r in rows]})

    async def meter_command(request: Request, meter_id: str) -> Any:
        code, reason = command_body(request, METER_COMMANDS)
        if await server.storage.registry_get("meters", meter_id) is None:
            raise ApiError(404, "not_found", f"meter {meter_id!r} is not in the registry")
        return await execute(server.actuation, request, meter_id, code, reason)

    return [
        Route("GET", "/api/v1/commands", audit,
              "The command audit, newest first: every valve, relay, pump and module command and firmware push "
              "with who asked, when, why and the outcome",
              params=(*(Param(name, description=text) for name, text in AUDIT_FILTERS.items()),
                      Param("from", format="date-time", description="only commands asked for at or after"),
                      Param("to", format="date-time", description="only commands asked for before"),
                      Param("limit", type="integer", description=f"1..{MAX_AUDIT_LIMIT}, default 100")),
              tags=("commands",), responses={200: "OK", 400: "bad time or limit"}),
        Route("POST", "/api/v1/meters/<meter_id>/commands", meter_command,
              "Close or open a meter's valve, switch its load relay off or on (audited; answered with the outcome)",
              role="operator", params=(Param("meter_id", "path"),), tags=("commands",),
              body='{"command": "valve_close"|"valve_open"|"relay_off"|"relay_on", "reason": "..."}',
              responses={200: "the audited command: id, outcome (done, failed or refused), detail",
                         400: "bad body or no reason", 404: "meter not registered"}),
    ]
