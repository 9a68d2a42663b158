"""HTTP routes as data: what a path does, who may call it, how it is documented.

The built-in API and plugins declare ``Route`` objects; the HTTP layer mounts
them on Sanic behind authentication and JSON error handling, and the OpenAPI
document is generated from the same list, so the contract and the code cannot
drift apart.
"""

from __future__ import annotations

import json as _json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from sanic import response

from balans_edge.core.calendar import MAX_POINTS, Step
from balans_edge.core.calendar import count as count_periods
from balans_edge.core.components import Command, CommandCode
from balans_edge.core.roles import Role
from balans_edge.core.times import RANGE_TEXT, check_time, iso

if TYPE_CHECKING:
    from balans_edge.core.actuation import ActuationService

UTC_ZONE = ZoneInfo("UTC")


class ApiError(Exception):
    """An error the client caused or must know about, rendered as JSON."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Param:
    """A path parameter. Sanic hands it over still percent-encoded; the HTTP layer
    decodes it and converts it to its declared type with the schema layer
    (``http_schema.path_field``: text, or an int within both bounds; 400 naming
    it), and the OpenAPI document describes it from the same type. An integer
    without both bounds is documented as one and parsed by its handler (some
    answer 404 for an id that is no number)."""

    name: str
    where: Literal["path"] = "path"
    type: Literal["string", "integer"] = "string"
    description: str = ""
    minimum: int | None = None
    maximum: int | None = None
    label: str = ""
    """The name a refusal uses, when not ``name`` (the registry's ``ident`` is a ``module_id``)."""

    @property
    def checked(self) -> bool:
        return self.type == "integer" and self.minimum is not None and self.maximum is not None


@dataclass(frozen=True)
class Route:
    """A path, who may call it and its contract. ``query`` and ``body`` are msgspec
    Structs (``balans_edge.http_schema``): the HTTP layer decodes the request into
    them and calls ``handler(request, **path, query=..., body=...)`` (each only when
    declared); ``response`` (one type, or one per status) is what a success answers.
    The OpenAPI document is generated from the same types."""

    method: str
    path: str
    """Sanic path syntax: ``/api/v1/meters/<meter_id>``."""
    handler: Callable[..., Awaitable[Any]]
    summary: str
    role: Role | None = "viewer"
    """The least role a caller needs; None: anyone (health, OpenAPI)."""
    params: tuple[Param, ...] = ()
    query: type | None = None
    body: Any = None
    """The JSON request body's type (a Struct; ``Struct | None`` when it may be left out)."""
    response: Any = None
    """The type of a success's JSON (or ``{status: type}``); None: not described."""
    tags: tuple[str, ...] = ()
    responses: dict[int, str] = field(default_factory=dict)
    content_type: str = "application/json"
    """Of a success's body (the Prometheus metrics are text)."""

    def __post_init__(self) -> None:
        named = set(re.findall(r"<(\w+)", self.path))
        if {p.name for p in self.params} != named:
            raise ValueError(f"{self.method} {self.path}: path parameters {sorted(named)} must be declared as Param")

    @property
    def openapi_path(self) -> str:
        return re.sub(r"<(\w+)(?::[^>]+)?>", r"{\1}", self.path)

    @property
    def name(self) -> str:
        """Unique among the routes: the method and the path (``get_api_v1_meters_meter_id_readings``)."""
        return re.sub(r"\W+", "_", f"{self.method.lower()}_{self.openapi_path.strip('/')}").strip("_")


def json(body: Any, status: int = 200) -> response.HTTPResponse:
    return response.json(body, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return _json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)


def checked_period(t0: int, t1: int, step: Step, tz: ZoneInfo = UTC_ZONE, what: str = "") -> tuple[int, int]:
    """A query's ``from`` and ``to`` (each in the valid range), checked: ordered, and
    asking for at most ``MAX_POINTS[step]`` periods (days and months of ``tz``): the
    limit bounds the work of one request. ``what`` names a route that has no step
    (``readings``): its limit is the day's, stated in days."""
    if t1 <= t0:
        raise ApiError(400, "bad_parameter", "to must be later than from")
    limit = MAX_POINTS[step]
    asked = count_periods(t0, t1, step, tz)  # both are in the valid range: no calendar overflow
    if asked > limit and what:
        raise ApiError(400, "bad_parameter", f"period too long for {what}: at most {limit} days between from and to")
    if asked > limit:
        raise ApiError(400, "bad_parameter", f"period too long: at most {limit} points per request at step={step}, "
                                             f"from..to holds {asked}; ask for a shorter period or a longer step")
    return t0, t1


def month_value(month: str | None, tz: ZoneInfo) -> str:
    """A month (YYYY-MM in the site's timezone) whose days are valid times; the
    current month when None."""
    from balans_edge.core.balance_queries import month_bounds

    if month is None:
        return datetime.now(tz).strftime("%Y-%m")
    try:
        for t in month_bounds(month, tz):
            check_time(t)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"month: expected YYYY-MM within {RANGE_TEXT}, got {month!r}") from None
    return month


async def execute_command(commands: ActuationService, request: Any, target: str, code: CommandCode,
                          reason: str) -> response.HTTPResponse:
    """Run a command for the API user through the audited command service; answer
    the audited record (the meter commands and every protocol plugin's actuators)."""
    command = await commands.execute(Command(target, code, requested_by=f"api:{request.ctx.user}", reason=reason))
    return json({**command.record(), "t": iso(command.t)})
