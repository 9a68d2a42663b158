"""Findings over HTTP: list and read them, and move them through their
lifecycle (acknowledge, resolve, false alarm, reopen) with the operator's note."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sanic.request import Request

from balans_edge.core import findings as rules
from balans_edge.core.times import DAY, iso
from balans_edge.routes import ApiError, Param, Route, body_json, bounded_text, int_value, json, query_int

if TYPE_CHECKING:
    from balans_edge.server import Server

MAX_LIMIT = 1000
MAX_DAYS = 3660
MAX_QUALITY_FINDINGS = 1_000_000
"""Findings the quality figures look at (far more than a site collects in years)."""
TIME_FIELDS = ("t", "first_seen", "last_seen", "started", "ended")


def present(finding: dict[str, Any]) -> dict[str, Any]:
    """A stored finding as the API shows it: times, the feedback's too, as ISO-8601 UTC."""
    out = dict(finding)
    for name in TIME_FIELDS:
        out[name] = None if out.get(name) is None else iso(out[name])
    out["feedback"] = [{**entry, "t": iso(entry["t"])} for entry in out.get("feedback") or []]
    return out


def _status_filter(request: Request) -> str | None:
    status = request.args.get("status") or None
    if status is not None and status not in rules.STATUSES:
        raise ApiError(400, "bad_parameter", f"status: expected one of {', '.join(rules.STATUSES)}, got {status!r}")
    return status


def _finding_id(raw: str) -> int:
    return int_value(raw, "finding_id", 1, 2**63 - 1)


def _change(request: Request) -> tuple[str, str]:
    """Status and note of a PATCH body; the status is checked against the known ones."""
    body = body_json(request)
    if not isinstance(body, dict) or "status" not in body:
        raise ApiError(400, "bad_body", 'expected {"status": ..., "note": ...}')
    note = body.get("note", "")
    if not isinstance(note, str):
        raise ApiError(400, "bad_body", "note: expected a string")
    note = bounded_text(note.strip(), "note")
    try:
        return rules.check_status(body["status"]), note
    except ValueError as exc:
        raise ApiError(400, "bad_body", str(exc)) from None


def routes(server: Server) -> list[Route]:
    storage = server.storage

    async def list_findings(request: Request) -> Any:
        found = await storage.findings(
            group=request.args.get("group") or None, kind=request.args.get("kind") or None,
            status=_status_filter(request), subject=request.args.get("subject") or None,
            limit=query_int(request, "limit", 100, 1, MAX_LIMIT),
        )
        return json({"findings": [present(f) for f in found]})

    async def quality(request: Request) -> Any:
        since = int(time.time()) - query_int(request, "days", 365, 1, MAX_DAYS) * DAY
        found = await storage.findings(since=since, limit=MAX_QUALITY_FINDINGS)
        return json({"since": iso(since), "detectors": rules.quality(found)})

    async def get_finding(request: Request, finding_id: str) -> Any:
        found = await storage.finding(_finding_id(finding_id))
        if found is None:
            raise ApiError(404, "not_found", f"finding {finding_id} does not exist")
        return json(present(found))

    async def patch_finding(request: Request, finding_id: str) -> Any:
        number = _finding_id(finding_id)
        status, note = _change(request)
        try:
            changed = await storage.set_finding_status(number, status, by=request.ctx.user, note=note)
        except ValueError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        if changed is None:
            raise ApiError(404, "not_found", f"finding {finding_id} does not exist")
        return json(present(changed))

    tags = ("findings",)
    path_id = Param("finding_id", "path", "integer")
    return [
        Route("GET", "/api/v1/findings", list_findings,
              "Findings of the detectors, one per event (started, ended, rate, volume in the data's time), with "
              "their lifecycle status, most recently seen first",
              params=(Param("group", description="only findings about this balance group"),
                      Param("kind", description="only this kind (slowed_meter, low_battery, ...)"),
                      Param("status", enum=rules.STATUSES), Param("subject", description="meter or group id"),
                      Param("limit", type="integer", description=f"1..{MAX_LIMIT}, default 100")),
              tags=tags, responses={200: "OK", 400: "bad filter"}),
        Route("GET", "/api/v1/findings/quality", quality,
              "Detection quality from the operators' answers: per detector and kind the findings by status, "
              "the precision among the judged ones and the median hours to the first answer",
              params=(Param("days", type="integer", description=f"findings first seen in the last 1..{MAX_DAYS} "
                                                                "days, default 365"),),
              tags=tags, responses={200: "OK", 400: "bad days"}),
        Route("GET", "/api/v1/findings/<finding_id>", get_finding, "One finding with the operators' feedback",
              params=(path_id,), tags=tags, responses={200: "OK", 404: "no such finding"}),
        Route("PATCH", "/api/v1/findings/<finding_id>", patch_finding,
              "Acknowledge, resolve, mark a false alarm or reopen a finding; the note and the user are kept",
              role="operator", params=(path_id,), tags=tags,
              body='{"status": "acknowledged"|"resolved"|"false_alarm"|"open", "note": "..."}',
              responses={200: "the finding after the change", 400: "no or unknown status",
                         404: "no such finding", 409: "the lifecycle does not allow this change"}),
    ]
