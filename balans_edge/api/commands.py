"""Valve and relay commands over HTTP, through the actuation service (audited),
and the command audit. A command's body and its audited answer are read and
written by ``routes.command_body`` and ``routes.execute_command``, which the
protocol plugins' actuator routes (``plugins.common.client_api``) use too."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sanic.request import Request

from balans_edge.core.components import CommandCode
from balans_edge.routes import (
    ApiError,
    Param,
    Route,
    command_body,
    execute_command,
    iso,
    json,
    optional_time,
    query_int,
)

if TYPE_CHECKING:
    from balans_edge.server import Server

METER_COMMANDS = (CommandCode.VALVE_CLOSE, CommandCode.VALVE_OPEN, CommandCode.RELAY_OFF, CommandCode.RELAY_ON)
MAX_AUDIT_LIMIT = 1000
AUDIT_FILTERS = {
    "target": "only commands to this target: a meter id, module:<id>, concentrator:<id> or an actuator's target",
    "outcome": "only this outcome: pending, done, failed, refused (firmware pushes: accepted, bad_signature, ...)",
    "code": "only this command: valve_close, relay_off, pump_start, ping, set_interval, firmware_push, ...",
    "requested_by": "only commands asked for by this user (api:<name>, or a component's name)",
}


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
        return await execute_command(server.actuation, request, meter_id, code, reason)

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
