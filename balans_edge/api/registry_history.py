"""The registry's history over HTTP: the audit of changes, a meter's parameter
periods, and the explicit correction of a meter's past (docs/registry.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sanic.request import Request

from balans_edge.core import registry_history as history
from balans_edge.core.periods import period_json
from balans_edge.core.registry import RegistryError
from balans_edge.core.storage import StorageError
from balans_edge.core.storage.base import AUDIT_LIMIT
from balans_edge.routes import ApiError, Param, Route, body_json, json, optional_time, query_int

if TYPE_CHECKING:
    from balans_edge.server import Server


def routes(server: Server) -> list[Route]:
    storage = server.storage

    async def audit(request: Request) -> Any:
        try:
            query = history.audit_query(request.args.get("kind"), request.args.get("id"), request.args.get("who"),
                                        request.args.get("action"), optional_time(request, "from"),
                                        optional_time(request, "to"), query_int(request, "limit", 100, 1, AUDIT_LIMIT))
        except ValueError as exc:
            raise ApiError(400, "bad_parameter", str(exc)) from None
        return json({"audit": [history.audit_json(r) for r in await storage.registry_audit(query)]})

    async def meter_key(meter_id: str) -> int:
        key = (await storage.meter_keys()).get(meter_id)
        if key is None:
            raise ApiError(404, "not_found", f"meter {meter_id!r} is not in the registry")
        return key

    async def periods(request: Request, meter_id: str) -> Any:
        key = await meter_key(meter_id)
        found = (await storage.meter_periods([key])).get(key, [])
        return json({"meter_id": meter_id, "periods": [period_json(p) for p in found]})

    async def correct(request: Request, meter_id: str) -> Any:
        await meter_key(meter_id)
        body = body_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "bad_body", 'expected {"from", "to"?, "changes": {...}, "reason"}')
        where = f"{request.method} {request.path}"
        try:
            correction = history.parse_correction(meter_id, body, where)
            record = await history.correct(storage, correction, f"api:{request.ctx.user}", where)
        except RegistryError as exc:
            raise ApiError(422, "invalid", str(exc)) from None
        except KeyError:
            raise ApiError(404, "not_found", f"meter {meter_id!r} is not in the registry") from None
        except StorageError as exc:
            raise ApiError(409, "conflict", f"correction not saved: {exc}") from None
        await server.intervals.process()  # the corrected hours, before answering
        return json({"meter_id": meter_id, **record})

    meter_param = Param("meter_id", "path")
    return [
        Route("GET", "/api/v1/registry/audit", audit, "Registry changes (who, when, before and after), newest first",
              tags=("registry",),
              params=(Param("kind", enum=("concentrators", "modules", "accounts", "meters", "groups")),
                      Param("id", description="the object's key"), Param("who", description="e.g. api:alice"),
                      Param("action", enum=history.AUDIT_ACTIONS),
                      Param("from", format="date-time"), Param("to", format="date-time"),
                      Param("limit", type="integer", description=f"1..{AUDIT_LIMIT}, default 100"))),
        Route("GET", "/api/v1/meters/<meter_id>/periods", periods,
              "A meter's parameter periods (pulse weight, base reading, module, channel, group by time)",
              params=(meter_param,), tags=("registry",), responses={200: "OK", 404: "not in the registry"}),
        Route("POST", "/api/v1/meters/<meter_id>/corrections", correct,
              "Correct a meter's parameters over a past period (audited; recomputes its hours and balances)",
              role="admin", params=(meter_param,), tags=("registry",),
              body='{"from": ISO-8601, "to": ISO-8601 (optional: open), "changes": {"pulse_weight" | '
                   '"base_reading" | "group_id": value}, "reason": text}',
              responses={200: "corrected: the periods before and after", 404: "not in the registry",
                         422: "invalid, names the field"}),
    ]
