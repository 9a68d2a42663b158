"""The registry's history over HTTP: the audit of changes, a meter's parameter
periods, and the explicit correction of a meter's past (docs/registry.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct
from sanic.request import Request

from balans_edge.core import registry_history as history
from balans_edge.core.periods import period_json
from balans_edge.core.registry import RegistryError
from balans_edge.core.storage import StorageError
from balans_edge.core.storage.base import AUDIT_LIMIT
from balans_edge.http_schema import Time
from balans_edge.routes import ApiError, Param, Route, json

if TYPE_CHECKING:
    from balans_edge.server import Server

Kind = Literal["concentrators", "modules", "accounts", "meters", "groups"]
Action = Literal[history.AUDIT_ACTIONS]  # type: ignore[valid-type]


class RegistryAuditQuery(Struct):
    kind: Kind | None = None
    id: Annotated[str | None, Meta(description="the object's key")] = None
    who: Annotated[str | None, Meta(description="e.g. api:alice")] = None
    action: Action | None = None
    from_: Time | None = msgspec.field(default=None, name="from")
    to: Time | None = None
    limit: Annotated[int, Meta(ge=1, le=AUDIT_LIMIT)] = 100


class Correction(Struct, forbid_unknown_fields=True):
    """A correction of a meter's parameters over a past period. The values are checked
    by the registry (422 naming the column): a correction must not be in the future,
    ``to`` must follow ``from``, ``changes`` holds at least one correctable column."""

    from_: Annotated[str | None, Meta(description="ISO-8601 with a timezone: when the corrected parameters "
                                                  "start to hold")] = msgspec.field(default=None, name="from")
    to: Annotated[str | None, Meta(description="ISO-8601 with a timezone (left out: open)")] = None
    changes: Annotated[dict[str, Any] | None, Meta(extra_json_schema={
        "properties": {"pulse_weight": {"type": "number", "exclusiveMinimum": 0},
                       "base_reading": {"type": "number"}, "group_id": {"type": ["string", "null"]}},
        "minProperties": 1})] = None
    reason: Annotated[str | None, Meta(extra_json_schema={"minLength": 1, "maxLength": 4096},
                                       description="why: a correction changes the past")] = None


class AuditEntry(Struct):
    t: str
    kind: str
    action: str
    who: str


class Audit(Struct):
    audit: list[AuditEntry]


class MeterPeriod(Struct):
    valid_from: str
    pulse_weight: float


class Periods(Struct):
    meter_id: str
    periods: list[MeterPeriod]


class Corrected(Struct):
    meter_id: str


def routes(server: Server) -> list[Route]:
    storage = server.storage

    async def audit(request: Request, query: RegistryAuditQuery) -> Any:
        try:
            checked = history.audit_query(query.kind, query.id, query.who, query.action, query.from_, query.to,
                                          query.limit)
        except ValueError as exc:
            raise ApiError(400, "bad_parameter", str(exc)) from None
        return json({"audit": [history.audit_json(r) for r in await storage.registry_audit(checked)]})

    async def meter_key(meter_id: str) -> int:
        key = (await storage.meter_keys()).get(meter_id)
        if key is None:
            raise ApiError(404, "not_found", f"meter {meter_id!r} is not in the registry")
        return key

    async def periods(request: Request, meter_id: str) -> Any:
        key = await meter_key(meter_id)
        found = (await storage.meter_periods([key])).get(key, [])
        return json({"meter_id": meter_id, "periods": [period_json(p) for p in found]})

    async def correct(request: Request, meter_id: str, body: Correction) -> Any:
        await meter_key(meter_id)
        where = f"{request.method} {request.path}"
        try:
            fields = msgspec.structs.asdict(body)
            given = {"from": fields.pop("from_"), **fields}
            correction = history.parse_correction(meter_id, {k: v for k, v in given.items() if v is not None}, where)
            record = await history.correct(storage, correction, f"api:{request.ctx.user}", where)
        except RegistryError as exc:
            raise ApiError(422, "invalid", str(exc)) from None
        except KeyError:
            raise ApiError(404, "not_found", f"meter {meter_id!r} is not in the registry") from None
        except StorageError as exc:
            raise ApiError(409, "conflict", f"correction not saved: {exc}") from None
        await server.intervals.process()  # the corrected hours, before answering
        return json({"meter_id": meter_id, **record})

    meter_param = Param("meter_id", description="a meter's id")
    return [
        Route("GET", "/api/v1/registry/audit", audit, "Registry changes (who, when, before and after), newest first",
              tags=("registry",), query=RegistryAuditQuery, response=Audit),
        Route("GET", "/api/v1/meters/<meter_id>/periods", periods,
              "A meter's parameter periods (pulse weight, base reading, module, channel, group by time)",
              params=(meter_param,), tags=("registry",), response=Periods,
              responses={200: "OK", 404: "not in the registry"}),
        Route("POST", "/api/v1/meters/<meter_id>/corrections", correct,
              "Correct a meter's parameters over a past period (audited; recomputes its hours and balances)",
              role="admin", params=(meter_param,), tags=("registry",), body=Correction, response=Corrected,
              responses={200: "corrected: the periods before and after", 404: "not in the registry",
                         422: "invalid, names the field"}),
    ]
