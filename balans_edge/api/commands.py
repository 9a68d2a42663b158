"""Valve and relay commands over HTTP, through the actuation service (audited),
and the command audit. A command's audited answer is written by
``routes.execute_command``, which the protocol plugins' actuator routes
(``plugins.common.client_api``) use too."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct
from sanic.request import Request

from balans_edge.core.components import CommandCode
from balans_edge.core.times import iso
from balans_edge.http_schema import CommandRecord, Reason, Time
from balans_edge.routes import ApiError, Param, Route, execute_command, json

if TYPE_CHECKING:
    from balans_edge.server import Server

MAX_AUDIT_LIMIT = 1000
MeterCommandCode = Literal["valve_close", "valve_open", "relay_off", "relay_on"]


class CommandsQuery(Struct):
    """Filters of the command audit."""

    target: Annotated[str | None, Meta(description="only commands to this target: a meter id, module:<id>, "
                                                   "concentrator:<id> or an actuator's target")] = None
    outcome: Annotated[str | None, Meta(description="only this outcome: pending, done, failed, refused (firmware "
                                                    "pushes: accepted, bad_signature, ...)")] = None
    code: Annotated[str | None, Meta(description="only this command: valve_close, relay_off, pump_start, ping, "
                                                 "set_interval, firmware_push, ...")] = None
    requested_by: Annotated[str | None, Meta(description="only commands asked for by this user (api:<name>, or "
                                                         "a component's name)")] = None
    from_: Annotated[Time | None, Meta(description="only commands asked for at or after")] = msgspec.field(
        default=None, name="from")
    to: Annotated[Time | None, Meta(description="only commands asked for before")] = None
    limit: Annotated[int, Meta(ge=1, le=MAX_AUDIT_LIMIT)] = 100


class MeterCommandBody(Struct):
    """A command to a meter's valve or load relay, and why (for the audit)."""

    command: MeterCommandCode
    reason: Reason


class CommandAudit(Struct):
    commands: list[CommandRecord]


def routes(server: Server) -> list[Route]:
    async def audit(request: Request, query: CommandsQuery) -> Any:
        rows = await server.storage.commands(target=query.target, outcome=query.outcome, code=query.code,
                                             requested_by=query.requested_by, t0=query.from_, t1=query.to,
                                             limit=query.limit)
        return json({"commands": [{**r, "t": iso(r["t"])} for r in rows]})

    async def meter_command(request: Request, meter_id: str, body: MeterCommandBody) -> Any:
        if await server.storage.registry_get("meters", meter_id) is None:
            raise ApiError(404, "not_found", f"meter {meter_id!r} is not in the registry")
        return await execute_command(server.actuation, request, meter_id, CommandCode(body.command), body.reason)

    return [
        Route("GET", "/api/v1/commands", audit,
              "The command audit, newest first: every valve, relay, pump and module command and firmware push "
              "with who asked, when, why and the outcome",
              query=CommandsQuery, response=CommandAudit, tags=("commands",),
              responses={200: "OK", 400: "bad time or limit"}),
        Route("POST", "/api/v1/meters/<meter_id>/commands", meter_command,
              "Close or open a meter's valve, switch its load relay off or on (audited; answered with the outcome)",
              role="operator", params=(Param("meter_id", description="a meter's id"),), tags=("commands",),
              body=MeterCommandBody, response=CommandRecord,
              responses={200: "the audited command: id, outcome (done, failed or refused), detail",
                         400: "bad body or no reason", 404: "meter not registered"}),
    ]
