"""HTTP route for module commands that move no valve or relay: ping, reporting
interval, profile request. Each goes through the actuation service (audited in
the ``commands`` journal, seen by ``observe_commands``) and is answered with
its tracked outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sanic.request import Request

from balans_edge.core.components import CommandCode
from balans_edge.core.times import HOUR, iso
from balans_edge.plugins.dmesh import commands
from balans_edge.plugins.dmesh.commands import MAX_PROFILE_HOURS, MODULE_CODES
from balans_edge.routes import ApiError, Param, Route, audited_body, json, parse_time_value, path_u32

if TYPE_CHECKING:
    from balans_edge.core.context import PluginContext
    from balans_edge.plugins.dmesh.driver import DmeshDriver

def _int(body: dict[str, Any], name: str, lo: int, hi: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ApiError(400, "bad_body", f"{name}: expected an integer {lo}..{hi}, got {value!r}")
    return value


def parse_command(request: Request) -> tuple[CommandCode, dict[str, int], str]:
    """(command code, its args, reason) of a request."""
    body, reason = audited_body(request, '{"command": ..., "reason": ...}')
    name = body.get("command")
    if not isinstance(name, str) or name not in MODULE_CODES:
        raise ApiError(400, "bad_body", f"command: expected one of {', '.join(MODULE_CODES)}, got {name!r}")
    code = CommandCode(name)
    args: dict[str, int] = {}
    if code == CommandCode.SET_INTERVAL:
        args = {"seconds": _int(body, "seconds", 300, 65535)}
    elif code == CommandCode.PROFILE_REQUEST:
        channel = _int(body, "channel", 1, 3)
        t0, t1 = (parse_time_value(body.get(n), n, "bad_body") for n in ("from", "to"))
        if t0 % HOUR or t1 % HOUR:
            raise ApiError(400, "bad_body", "from and to must be hour-aligned")
        if not 0 < t1 - t0 <= MAX_PROFILE_HOURS * HOUR:
            raise ApiError(400, "bad_body", f"to must be 1..{MAX_PROFILE_HOURS} hours after from")
        args = {"channel": channel, "from": t0, "to": t1}
    return code, args, reason.strip()


def command_routes(context: PluginContext, driver: Callable[[], DmeshDriver | None]) -> list[Route]:
    async def module_command(request: Request, module_id: str) -> Any:
        mid = path_u32(module_id, "module_id")
        code, args, reason = parse_command(request)
        module = await context.storage.registry_get("modules", mid)
        if module is None:
            raise ApiError(404, "not_found", f"module {module_id} is not in the registry")
        if driver() is None:
            raise ApiError(503, "unavailable", "the DMesh driver is not running")
        done = await context.commands.execute(
            commands.module_command(mid, code, args, requested_by=f"api:{request.ctx.user}", reason=reason)
        )
        return json({**done.record(), "t": iso(done.t)})

    return [
        Route("POST", "/api/v1/dmesh/modules/<module_id>/commands", module_command,
              "Ping a radio module, set its reporting interval or request its hourly profile "
              "(answered with the tracked outcome)",
              role="operator", params=(Param("module_id", "path", "integer"),), tags=("dmesh",),
              body='{"command": "ping"|"set_interval"|"profile_request", "seconds": 300..65535, '
                   '"channel": 1..3, "from": ISO-8601, "to": ISO-8601, "reason": "..."}',
              responses={200: "the audited command: id, outcome (done or failed), detail",
                         400: "bad body or no reason", 404: "module not registered",
                         503: "driver not running"}),
    ]
