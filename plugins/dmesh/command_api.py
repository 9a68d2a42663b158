"""HTTP route for module commands that move no valve or relay: ping, reporting
interval, profile request. Each is audited in the ``commands`` journal and
answered with its tracked outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct
from sanic.request import Request

from balans_edge.core.components import CommandCode
from balans_edge.core.times import iso
from balans_edge.http_schema import CommandRecord, Reason, Time
from balans_edge.plugins.dmesh import commands
from balans_edge.plugins.dmesh.commands import HOUR, MAX_PROFILE_HOURS
from balans_edge.routes import ApiError, Param, Route, json

if TYPE_CHECKING:
    from balans_edge.core.context import PluginContext
    from balans_edge.plugins.dmesh.driver import DmeshDriver


class ModuleCommand(Struct):
    """A command to a radio module and why (for the audit): set_interval takes seconds,
    profile_request a channel and an hour-aligned period (at most MAX_PROFILE_HOURS)."""

    command: Literal["ping", "set_interval", "profile_request"]
    reason: Reason
    seconds: Annotated[int, Meta(ge=300, le=65535, description="set_interval: the reporting interval")] | None = None
    channel: Annotated[int, Meta(ge=1, le=3, description="profile_request: the input")] | None = None
    from_: Annotated[Time | None, Meta(description="profile_request: the first hour")] = msgspec.field(
        default=None, name="from")
    to: Annotated[Time | None, Meta(description="profile_request: the end of the last hour")] = None


def _required(value: int | None, name: str, lo: int, hi: int) -> int:
    if value is None:
        raise ApiError(400, "bad_body", f"{name}: expected an integer {lo}..{hi}, got None")
    return value


def parse_command(body: ModuleCommand) -> tuple[CommandCode, dict[str, int], str]:
    """(command code, its args, reason) of a request."""
    code = CommandCode(body.command)
    args: dict[str, int] = {}
    if code == CommandCode.SET_INTERVAL:
        args = {"seconds": _required(body.seconds, "seconds", 300, 65535)}
    elif code == CommandCode.PROFILE_REQUEST:
        channel = _required(body.channel, "channel", 1, 3)
        if body.from_ is None or body.to is None:
            raise ApiError(400, "bad_body", "from and to: a profile request needs both")
        t0, t1 = body.from_, body.to
        if t0 % HOUR or t1 % HOUR:
            raise ApiError(400, "bad_body", "from and to must be hour-aligned")
        if not 0 < t1 - t0 <= MAX_PROFILE_HOURS * HOUR:
            raise ApiError(400, "bad_body", f"to must be 1..{MAX_PROFILE_HOURS} hours after from")
        args = {"channel": channel, "from": t0, "to": t1}
    return code, args, body.reason.strip()


def command_routes(context: PluginContext, driver: Callable[[], DmeshDriver | None]) -> list[Route]:
    async def module_command(request: Request, module_id: int, body: ModuleCommand) -> Any:
        code, args, reason = parse_command(body)
        module = await context.registry.registry_get("modules", module_id)
        if module is None:
            raise ApiError(404, "not_found", f"module {module_id} is not in the registry")
        if driver() is None:
            raise ApiError(503, "unavailable", "the DMesh driver is not running")
        done = await context.commands.execute(
            commands.module_command(module_id, code, args, requested_by=f"api:{request.ctx.user}", reason=reason)
        )
        return json({**done.record(), "t": iso(done.t)})

    return [
        Route("POST", "/api/v1/dmesh/modules/<module_id>/commands", module_command,
              "Ping a radio module, set its reporting interval or request its hourly profile "
              "(answered with the tracked outcome)",
              role="operator", params=(Param("module_id", type="integer", minimum=1, maximum=2**32 - 1),),
              tags=("dmesh",), body=ModuleCommand, response=CommandRecord,
              responses={200: "the audited command: id, outcome (done or failed), detail",
                         400: "bad body or no reason", 404: "module not registered",
                         503: "driver not running"}),
    ]
