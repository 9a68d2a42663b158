"""Valve and relay commands over HTTP, through the actuation service (audited)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sanic.request import Request

from balans_edge.core.components import Command, CommandCode
from balans_edge.routes import ApiError, Param, Route, audited_body, iso, json

if TYPE_CHECKING:
    from balans_edge.server import Server

METER_COMMANDS = (CommandCode.VALVE_CLOSE, CommandCode.VALVE_OPEN, CommandCode.RELAY_OFF, CommandCode.RELAY_ON)


def routes(server: Server) -> list[Route]:
    async def meter_command(request: Request, meter_id: str) -> Any:
        body, reason = audited_body(request, '{"command": ..., "reason": ...}')
        code = body.get("command")
        if code not in METER_COMMANDS:
            names = ", ".join(str(c) for c in METER_COMMANDS)
            raise ApiError(400, "bad_body", f"command: expected one of {names}, got {code!r}")
        if await server.storage.registry_get("meters", meter_id) is None:
            raise ApiError(404, "not_found", f"meter {meter_id!r} is not in the registry")
        command = await server.actuation.execute(
            Command(meter_id, CommandCode(code), requested_by=f"api:{request.ctx.user}", reason=reason.strip())
        )
        return json({
            "id": command.id, "t": iso(command.t), "target": command.target, "code": str(command.code),
            "requested_by": command.requested_by, "reason": command.reason,
            "outcome": command.outcome, "detail": command.detail,
        })

    return [
        Route("POST", "/api/v1/meters/<meter_id>/commands", meter_command,
              "Close or open a meter's valve, switch its load relay off or on (audited; answered with the outcome)",
              role="operator", params=(Param("meter_id", "path"),), tags=("commands",),
              body='{"command": "valve_close"|"valve_open"|"relay_off"|"relay_on", "reason": "..."}',
              responses={200: "the audited command: id, outcome (done, failed or refused), detail",
                         400: "bad body or no reason", 404: "meter not registered"}),
    ]
