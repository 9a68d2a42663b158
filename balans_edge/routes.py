"""HTTP routes as data: what a path does, who may call it, how it is documented.

The built-in API and plugins declare ``Route`` objects; the HTTP layer mounts
them on Sanic behind authentication and JSON error handling, and the OpenAPI
document is generated from the same list, so the contract and the code cannot
drift apart.
"""

from __future__ import annotations

import json as _json
import re
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from sanic import response
from sanic.request import Request

from balans_edge.core.calendar import MAX_POINTS, STEPS, Step
from balans_edge.core.calendar import count as count_periods
from balans_edge.core.components import SWITCH_CODES, Command, CommandCode
from balans_edge.core.text import check_text
from balans_edge.core.times import RANGE_TEXT, check_time
from balans_edge.core.times import parse_time as parse_time_text

if TYPE_CHECKING:
    from balans_edge.core.actuation import ActuationService

Role = Literal["viewer", "operator", "admin"]
ROLE_RANK = {"viewer": 1, "operator": 2, "admin": 3}
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
    name: str
    where: Literal["path", "query"] = "query"
    type: Literal["string", "integer", "number", "boolean"] = "string"
    required: bool = False
    description: str = ""
    enum: tuple[str, ...] = ()
    format: str = ""


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    """Sanic path syntax: ``/api/v1/meters/<meter_id>``."""
    handler: Callable[..., Awaitable[Any]]
    summary: str
    role: Role | None = "viewer"
    """The least role a caller needs; None: anyone (health, OpenAPI)."""
    params: tuple[Param, ...] = ()
    body: str = ""
    """Describes the JSON request body, if any."""
    tags: tuple[str, ...] = ()
    responses: dict[int, str] = field(default_factory=dict)

    @property
    def openapi_path(self) -> str:
        return re.sub(r"<(\w+)(?::[^>]+)?>", r"{\1}", self.path)


def json(body: Any, status: int = 200) -> response.HTTPResponse:
    return response.json(body, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return _json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)


def iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(request: Request, name: str, default: int | None = None) -> int:
    """A query parameter in ISO-8601 (with timezone, or UTC if none) or unix seconds."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ApiError(400, "missing_parameter", f"query parameter {name} is required (ISO-8601 time)")
        return default
    return parse_time_value(raw, f"query parameter {name}")


def optional_time(request: Request, name: str) -> int | None:
    """A query parameter as ``parse_time`` reads it, or None when it is not given (an open end)."""
    return parse_time(request, name) if request.args.get(name) else None


def parse_time_value(raw: Any, name: str, code: str = "bad_parameter") -> int:
    """A time given as ISO-8601 (with timezone, or UTC if none) or unix seconds,
    within the valid range (``core.times``); 400 naming ``name`` otherwise."""
    try:
        return parse_time_text(raw)
    except ValueError as exc:
        raise ApiError(400, code, f"{name}: {exc}") from None


def parse_step(request: Request) -> Step:
    step = request.args.get("step", "hour")
    if step not in STEPS:
        raise ApiError(400, "bad_parameter", f"step: expected hour, day or month, got {step!r}")
    return step


def parse_period(request: Request, step: Step, tz: ZoneInfo = UTC_ZONE, what: str = "") -> tuple[int, int]:
    """``from`` and ``to`` of a query, checked: ordered, and asking for at most
    ``MAX_POINTS[step]`` periods (days and months of ``tz``): the limit bounds the
    work of one request. ``what`` names a route that has no step (``readings``):
    its limit is the day's, stated in days."""
    t0 = parse_time(request, "from")
    t1 = parse_time(request, "to")
    if t1 <= t0:
        raise ApiError(400, "bad_parameter", "to must be later than from")
    limit = MAX_POINTS[step]
    asked = count_periods(t0, t1, step, tz)  # parse_time keeps both in the valid range: no calendar overflow
    if asked > limit and what:
        raise ApiError(400, "bad_parameter", f"period too long for {what}: at most {limit} days between from and to")
    if asked > limit:
        raise ApiError(400, "bad_parameter", f"period too long: at most {limit} points per request at step={step}, "
                                             f"from..to holds {asked}; ask for a shorter period or a longer step")
    return t0, t1


def parse_month(request: Request, tz: ZoneInfo, required: bool) -> str:
    """The ``month`` query parameter (YYYY-MM in the site's timezone), checked; the
    current month when it is not required and not given."""
    from balans_edge.core.balance_queries import month_bounds

    month = request.args.get("month")
    if not month:
        if required:
            raise ApiError(400, "missing_parameter", "query parameter month is required (YYYY-MM)")
        month = datetime.now(tz).strftime("%Y-%m")
    try:
        for t in month_bounds(month, tz):
            check_time(t)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"month: expected YYYY-MM within {RANGE_TEXT}, got {month!r}") from None
    return month


_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def path_value(raw: str, name: str) -> str:
    """A path parameter as the client meant it: percent-decoded (as UTF-8) and
    NFC-normalised, so ``/meters/%D0%9A%D0%B2-1`` names meter "Кв-1" in either
    Unicode form. Sanic matches routes on the raw path and hands the segment
    over still encoded; the HTTP layer calls this once for every route. A
    broken escape or bytes that are not UTF-8 are the client's error (400)."""
    if _ESCAPE.search(raw):
        raise ApiError(400, "bad_parameter", f"{name}: broken percent-escape in {raw!r}")
    try:
        text = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_parameter", f"{name}: percent-escapes that are not UTF-8 in {raw!r}") from None
    return unicodedata.normalize("NFC", text)


_DECIMAL = re.compile(r"[0-9]{1,20}")


def int_value(raw: str, name: str, lo: int, hi: int) -> int:
    """A whole number lo..hi in ASCII digits (``str.isdigit`` takes "²", which
    ``int`` refuses; an unbounded one overflows SQLite); 400 naming it otherwise."""
    if not _DECIMAL.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise ApiError(400, "bad_parameter", f"{name}: expected an integer {lo}..{hi}, got {raw!r}")
    return int(raw)


def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within lo..hi, ``default`` when it is not given."""
    raw = request.args.get(name)
    return default if raw is None or raw == "" else int_value(raw, name, lo, hi)


def path_u32(raw: str, name: str) -> int:
    """A path parameter that is a device id (u32, 1..4294967295), or a 400 naming it."""
    return int_value(raw, name, 1, 2**32 - 1)


def audited_body(request: Request, shape: str) -> tuple[dict[str, Any], str]:
    """The JSON object of a request that acts on devices, and its reason: every
    such request must say why, for the audit."""
    body = body_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_body", f"expected {shape}")
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ApiError(400, "bad_body", "reason: a non-empty reason is required for the audit")
    return body, bounded_text(reason, "reason")


def command_body(request: Request, allowed: Sequence[CommandCode] = SWITCH_CODES) -> tuple[CommandCode, str]:
    """The command code and reason of a ``{"command", "reason"}`` body; 400 naming the allowed codes."""
    body, reason = audited_body(request, '{"command": ..., "reason": ...}')
    code = body.get("command")
    if code not in allowed:
        names = ", ".join(str(c) for c in allowed)
        raise ApiError(400, "bad_body", f"command: expected one of {names}, got {code!r}")
    return CommandCode(code), reason.strip()


async def execute_command(commands: ActuationService, request: Request, target: str, code: CommandCode,
                          reason: str) -> response.HTTPResponse:
    """Run a command for the API user through the audited command service; answer its record."""
    command = await commands.execute(Command(target, code, requested_by=f"api:{request.ctx.user}", reason=reason))
    return json({**command.record(), "t": iso(command.t)})


def bounded_text(value: str, name: str) -> str:
    """Free text of a request body within the bound of ``core.text``; 400 naming the field otherwise."""
    try:
        return check_text(value)
    except ValueError as exc:
        raise ApiError(400, "bad_body", f"{name}: {exc}") from None


def body_json(request: Request) -> Any:
    try:
        return _json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        # No route takes more than a few levels; the parser's own limit is the cheapest check.
        raise ApiError(400, "bad_json", "request body is nested too deeply") from None
