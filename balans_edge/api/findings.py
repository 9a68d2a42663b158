"""Findings over HTTP: list and read them, and move them through their
lifecycle (acknowledge, resolve, false alarm, reopen) with the operator's note."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from msgspec import Meta, Struct
from sanic.request import Request

from balans_edge.core import findings as rules
from balans_edge.core.times import DAY, iso
from balans_edge.http_schema import Text
from balans_edge.routes import ApiError, Param, Route, json

if TYPE_CHECKING:
    from balans_edge.server import Server

MAX_LIMIT = 1000
MAX_DAYS = 3660
MAX_QUALITY_FINDINGS = 1_000_000
"""Findings the quality figures look at (far more than a site collects in years)."""
TIME_FIELDS = ("t", "first_seen", "last_seen", "started", "ended")
Status = Literal[rules.STATUSES]  # type: ignore[valid-type]


class FindingsQuery(Struct):
    group: Annotated[str | None, Meta(description="only findings about this balance group")] = None
    kind: Annotated[str | None, Meta(description="only this kind (slowed_meter, low_battery, ...)")] = None
    status: Status | None = None
    subject: Annotated[str | None, Meta(description="meter or group id")] = None
    limit: Annotated[int, Meta(ge=1, le=MAX_LIMIT)] = 100


class QualityQuery(Struct):
    days: Annotated[int, Meta(ge=1, le=MAX_DAYS, description="findings first seen in the last this many days")] = 365


class Change(Struct):
    """A step of a finding's lifecycle, with the operator's note."""

    status: Status
    note: Text = ""  # type: ignore[assignment]


class Feedback(Struct):
    t: str
    status: str | None = None
    by: str | None = None
    note: str | None = None


class Finding(Struct):
    id: int
    t: str
    detector: str
    subject: str
    kind: str
    severity: str
    message: str
    data: dict[str, Any]
    feedback: list[Feedback]
    status: Status | None = None
    first_seen: str | None = None
    last_seen: str | None = None
    started: str | None = None
    ended: str | None = None


class Findings(Struct):
    findings: list[Finding]


class DetectorQuality(Struct):
    detector: str
    kind: str
    findings: Annotated[int, Meta(ge=1)]
    judged: Annotated[int, Meta(ge=0)]
    precision: Annotated[float, Meta(ge=0, le=1)] | None
    median_hours_to_answer: float | None


class Quality(Struct):
    since: str
    detectors: list[DetectorQuality]


def present(finding: dict[str, Any]) -> dict[str, Any]:
    """A stored finding as the API shows it: times, the feedback's too, as ISO-8601 UTC."""
    out = dict(finding)
    for name in TIME_FIELDS:
        out[name] = None if out.get(name) is None else iso(out[name])
    out["feedback"] = [{**entry, "t": iso(entry["t"])} for entry in out.get("feedback") or []]
    return out


def routes(server: Server) -> list[Route]:
    storage = server.storage

    async def list_findings(request: Request, query: FindingsQuery) -> Any:
        found = await storage.findings(group=query.group, kind=query.kind, status=query.status,
                                       subject=query.subject, limit=query.limit)
        return json({"findings": [present(f) for f in found]})

    async def quality(request: Request, query: QualityQuery) -> Any:
        since = int(time.time()) - query.days * DAY
        found = await storage.findings(since=since, limit=MAX_QUALITY_FINDINGS)
        return json({"since": iso(since), "detectors": rules.quality(found)})

    async def get_finding(request: Request, finding_id: int) -> Any:
        found = await storage.finding(finding_id)
        if found is None:
            raise ApiError(404, "not_found", f"finding {finding_id} does not exist")
        return json(present(found))

    async def patch_finding(request: Request, finding_id: int, body: Change) -> Any:
        try:
            changed = await storage.set_finding_status(finding_id, body.status, by=request.ctx.user,
                                                       note=body.note.strip())
        except ValueError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        if changed is None:
            raise ApiError(404, "not_found", f"finding {finding_id} does not exist")
        return json(present(changed))

    tags = ("findings",)
    path_id = Param("finding_id", type="integer", minimum=1, maximum=2**63 - 1)
    return [
        Route("GET", "/api/v1/findings", list_findings,
              "Findings of the detectors, one per event (started, ended, rate, volume in the data's time), with "
              "their lifecycle status, most recently seen first",
              query=FindingsQuery, response=Findings, tags=tags, responses={200: "OK", 400: "bad filter"}),
        Route("GET", "/api/v1/findings/quality", quality,
              "Detection quality from the operators' answers: per detector and kind the findings by status, "
              "the precision among the judged ones and the median hours to the first answer",
              query=QualityQuery, response=Quality, tags=tags, responses={200: "OK", 400: "bad days"}),
        Route("GET", "/api/v1/findings/<finding_id>", get_finding, "One finding with the operators' feedback",
              params=(path_id,), response=Finding, tags=tags, responses={200: "OK", 404: "no such finding"}),
        Route("PATCH", "/api/v1/findings/<finding_id>", patch_finding,
              "Acknowledge, resolve, mark a false alarm or reopen a finding; the note and the user are kept",
              role="operator", params=(path_id,), tags=tags, body=Change, response=Finding,
              responses={200: "the finding after the change", 400: "no or unknown status",
                         404: "no such finding", 409: "the lifecycle does not allow this change"}),
    ]
