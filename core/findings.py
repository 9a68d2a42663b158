"""The lifecycle of a stored finding: which status may follow which.

A finding is ``open`` when a detector first reports it. An operator
acknowledges it (someone is looking), resolves it (fixed on site) or marks it
a false alarm (the detector was wrong). Either end can be reopened. The
operators' answers are kept with the finding, so the share of false alarms per
detector and kind can be measured on real sites, not only on simulations.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any

OPEN = "open"
ACKNOWLEDGED = "acknowledged"
RESOLVED = "resolved"
FALSE_ALARM = "false_alarm"

STATUSES = (OPEN, ACKNOWLEDGED, RESOLVED, FALSE_ALARM)
ACTIVE = (OPEN, ACKNOWLEDGED)
"""A new report of the same detector, subject and kind updates an active finding instead of adding one."""

TRANSITIONS: dict[str, tuple[str, ...]] = {
    OPEN: (ACKNOWLEDGED, RESOLVED, FALSE_ALARM),
    ACKNOWLEDGED: (RESOLVED, FALSE_ALARM, OPEN),
    RESOLVED: (OPEN,),
    FALSE_ALARM: (OPEN,),
}

SUPPRESS_S = 30 * 86400
"""How long a false alarm keeps the same detector, subject and kind from being reported again."""


class TransitionError(ValueError):
    """A status change the lifecycle does not allow (the API answers 409)."""


def check_status(status: Any) -> str:
    """The status if it is one of the known ones; a ValueError naming them otherwise."""
    if status not in STATUSES:
        raise ValueError(f"status: expected one of {', '.join(STATUSES)}, got {status!r}")
    return status


def check_transition(current: str, new: str) -> None:
    """Refuse a change the lifecycle does not allow, saying what would be allowed."""
    check_status(new)
    allowed = TRANSITIONS.get(current, ())
    if new not in allowed:
        raise TransitionError(
            f"finding is {current}: cannot become {new} (allowed: {', '.join(allowed) or 'nothing'})"
        )


def feedback_entry(status: str, by: str, note: str = "", t: int | None = None) -> dict[str, Any]:
    """One operator answer as kept in a finding's feedback list."""
    return {"t": int(time.time()) if t is None else int(t), "by": by, "status": status, "note": note}


def group_of(data: dict[str, Any] | None) -> str | None:
    """The balance group a finding is about, when its detector says so."""
    value = (data or {}).get("group_id")
    return None if value is None else str(value)


def quality(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How the operators judged the findings, per detector and kind: counts by
    status, the precision among the judged ones (resolved / (resolved + false
    alarms)) and the median hours from first report to the first answer.

    A finding counts in its current status (a reopened false alarm is open
    again); precision is None until one of a kind is judged."""
    by_kind: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for finding in found:
        by_kind[(finding["detector"], finding["kind"])].append(finding)
    rows = []
    for (detector, kind), items in sorted(by_kind.items()):
        counts = {status: sum(f["status"] == status for f in items) for status in STATUSES}
        judged = counts[RESOLVED] + counts[FALSE_ALARM]
        waits = [(f["feedback"][0]["t"] - (f.get("first_seen") or f["t"])) / 3600 for f in items if f["feedback"]]
        rows.append({
            "detector": detector, "kind": kind, "findings": len(items), **counts, "judged": judged,
            "precision": round(counts[RESOLVED] / judged, 3) if judged else None,
            "median_hours_to_answer": round(statistics.median(waits), 1) if waits else None,
        })
    return rows
