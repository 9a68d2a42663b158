"""HTTP routes of the export plugin: the targets' state, their dead letters, and
the same figures as Prometheus metrics.

Metrics are served for scraping (``GET /api/v1/export/metrics``, Prometheus
text format 0.0.4) rather than written to the target itself: an exporter
that reports its own failures through the link that is failing says nothing
when it matters most.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from msgspec import Meta, Struct
from sanic import response
from sanic.request import Request

from balans_edge.http_schema import expected
from balans_edge.plugins.export.exporter import TargetExporter
from balans_edge.plugins.export.repository import ExportRepository
from balans_edge.routes import ApiError, Route, json

log = logging.getLogger(__name__)

METRICS = (
    ("queue_depth", "gauge", "Points waiting in the target's queue.", "queue_depth"),
    ("queue_max", "gauge", "Points the target's queue holds at most.", "max_queue"),
    ("oldest_point_age_seconds", "gauge", "How long the oldest queued point has waited (0: queue empty).",
     "oldest_age_s"),
    ("points_sent_total", "counter", "Points the target accepted.", "points_sent"),
    ("retries_total", "counter", "Requests repeated after a transient failure.", "retries"),
    ("dead_letter_points_total", "counter", "Points the target refused, kept in the dead letters.", "dead_letters"),
    ("dropped_points_total", "counter", "Points dropped from a full queue (when_full = drop_oldest).", "dropped"),
    ("non_finite_fields_total", "counter", "Fields left out of their points as NaN or infinite (since start).",
     "since_start.non_finite_fields"),
)
PREFIX = "balans_export_"
MAX_RESEND_IDS = 10_000
"""Dead letter ids one resend request may list."""


class DeadLettersQuery(Struct):
    target: Annotated[str | None, Meta(description="only this target")] = None
    limit: Annotated[int, Meta(ge=1, le=10_000, description="at most this many")] = 100


class Resend(Struct, forbid_unknown_fields=True):
    """Which dead letters to send again (both optional: all of every target)."""

    target: Annotated[str | None, Meta(description="only this target's"), expected("a target's name")] = None
    ids: Annotated[list[Annotated[int, Meta(gt=0, le=2**63 - 1)]], Meta(max_length=MAX_RESEND_IDS),
                   expected(f"a list of at most {MAX_RESEND_IDS} dead letter ids")] | None = None


class Marked(Struct):
    marked: Annotated[int, Meta(ge=0)]


class Targets(Struct):
    targets: list[dict[str, Any]]


class DeadLetters(Struct):
    dead_letters: list[dict[str, Any]]




def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _figure(status: dict[str, Any], key: str) -> Any:
    """A status figure by its dotted path (``since_start.non_finite_fields``)."""
    value: Any = status
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def prometheus(statuses: list[dict[str, Any]]) -> str:
    """The exporters' figures in Prometheus text format, one series per target."""
    lines = []
    for name, kind, text, key in METRICS:
        lines += [f"# HELP {PREFIX}{name} {text}", f"# TYPE {PREFIX}{name} {kind}"]
        for s in statuses:
            lines.append(f'{PREFIX}{name}{{target="{_label(s["target"])}"}} {_figure(s, key) or 0}')
    lines += [f"# HELP {PREFIX}up 1 unless the target's last request failed and is being retried.",
              f"# TYPE {PREFIX}up gauge"]
    for s in statuses:
        lines.append(f'{PREFIX}up{{target="{_label(s["target"])}"}} {0 if s["state"] == "retrying" else 1}')
    return "\n".join(lines) + "\n"


def routes(repository: ExportRepository, exporters: list[TargetExporter]) -> list[Route]:
    async def fresh() -> list[dict[str, Any]]:
        out = []
        for exporter in exporters:
            await exporter.refresh()
            out.append(exporter.status())
        return out

    async def export_targets(request: Request) -> Any:
        return json({"targets": await fresh()})

    async def export_metrics(request: Request) -> Any:
        return response.text(prometheus(await fresh()), content_type="text/plain; version=0.0.4; charset=utf-8")

    async def export_dead_letters(request: Request, query: DeadLettersQuery) -> Any:
        limit, target = query.limit, query.target
        known = {e.target for e in exporters}
        if target is not None and target not in known:
            raise ApiError(404, "not_found", f"no export target {target!r}")
        return json({"dead_letters": await repository.dead_letters(target, limit)})

    async def export_resend(request: Request, body: Resend | None) -> Any:
        target, ids = (body.target, body.ids) if body is not None else (None, None)
        if target is not None and target not in {e.target for e in exporters}:
            raise ApiError(404, "not_found", f"no export target {target!r}")
        marked = await repository.resend(target, ids)
        log.info("export: %s marked %d dead letter(s) to be sent again", request.ctx.user, marked)
        return json({"marked": marked})

    tags = ("export",)
    return [
        Route("GET", "/api/v1/export/targets", export_targets,
              "Export targets: queue depth, oldest point age, points sent, retries, dead letters, dropped, "
              "last error", response=Targets, tags=tags),
        Route("GET", "/api/v1/export/dead-letters", export_dead_letters,
              "Batches an export target refused for good, with its answer and the refused lines, newest first",
              query=DeadLettersQuery, response=DeadLetters, tags=tags, responses={200: "OK", 404: "no such target"}),
        Route("POST", "/api/v1/export/dead-letters/resend", export_resend,
              "Send dead letters again once the target is fixed (all, one target's, or the listed ids); "
              "refused again, they stay with the new answer", role="admin", tags=tags,
              body=Resend | None, response=Marked,
              responses={200: "how many were marked: {\"marked\": n}", 400: "bad body", 404: "no such target"}),
        Route("GET", "/api/v1/export/metrics", export_metrics,
              "The export targets' figures in Prometheus text format (for scraping)", tags=tags,
              content_type="text/plain; version=0.0.4; charset=utf-8"),
    ]
