"""A stored finding: the event it is, and its lifecycle (which status may follow which).

A finding is one event a detector saw: a leak, a stopped meter, a silent
module, with when it started and ended in the data's time (not the wall
clock: history is replayed and back-filled), its rate and its volume.
Detectors report what their window shows on every run; ``match`` decides
whether a report continues the newest stored finding of its detector,
subject and kind or is a new event (a new finding and a new alarm).

A finding is ``open`` when a detector first reports it. An operator
acknowledges it (someone is looking), resolves it (fixed on site), marks it
a false alarm (the detector was wrong) or accepts it (a real leak left running
for now: a repair planned, or too small to dig for; the night-flow detector
then takes it as the new normal). Each end can be reopened. The
operators' answers are kept with the finding, so the share of false alarms per
detector and kind can be measured on real sites, not only on simulations.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from balans_edge.core.times import DAY, HOUR

OPEN = "open"
ACKNOWLEDGED = "acknowledged"
RESOLVED = "resolved"
FALSE_ALARM = "false_alarm"
ACCEPTED = "accepted"

STATUSES = (OPEN, ACKNOWLEDGED, RESOLVED, FALSE_ALARM, ACCEPTED)
ACTIVE = (OPEN, ACKNOWLEDGED)
"""A new report of the same detector, subject and kind updates an active finding instead of adding one."""

TRANSITIONS: dict[str, tuple[str, ...]] = {
    OPEN: (ACKNOWLEDGED, RESOLVED, FALSE_ALARM, ACCEPTED),
    ACKNOWLEDGED: (RESOLVED, FALSE_ALARM, ACCEPTED, OPEN),
    RESOLVED: (OPEN,),
    FALSE_ALARM: (OPEN,),
    ACCEPTED: (RESOLVED, OPEN),
}

SUPPRESS_S = 30 * DAY
"""How long (of data time after the event's end) a false alarm keeps the same
detector, subject and kind from being reported again."""
EVENT_GAP_S = 2 * DAY
"""An event its detector has not seen for this long (of data time) has ended: a
report of the same detector, subject and kind that starts later is a new event.
Longer than the detectors' run interval, so a report that states no start of its
own (it starts when it is made) still continues the event seen one run before."""

Match = Literal["new", "update", "ignore"]


@dataclass(frozen=True, slots=True)
class Event:
    """What one report says happened, in the data's time."""

    start: int
    end: int
    rate: float | None
    """Volume per hour in the subject's unit, when the detector states one."""
    volume: float | None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def finding_volume(finding: Mapping[str, Any]) -> float | None:
    """The volume a finding states, if it states one as a number."""
    data = finding.get("data") or {}
    return _number(data.get("volume_m3", data.get("volume")))


def event_of(record: Mapping[str, Any]) -> Event:
    """The event a report describes: ``data["start"]`` and ``data["end"]`` when the
    detector states them (else the report's own time ``t``), ``data["rate"]``, the volume."""
    data = record.get("data") or {}
    t = int(record["t"])
    start, end = _number(data.get("start")), _number(data.get("end"))
    end_t = t if end is None else int(end)
    start_t = min(end_t, t if start is None else int(start))
    return Event(start_t, end_t, _number(data.get("rate")), finding_volume(record))


def fuller(stored_volume: float | None, event: Event) -> bool:
    """Whether a report of a stored event saw at least as much of it as the stored
    estimate did (its volume is not smaller): then its message, rate and data
    become the finding's. A window that has slid past most of the event sees
    less of it and estimates it worse; without volumes the newest report wins."""
    return stored_volume is None or event.volume is None or event.volume >= stored_volume


def match(status: str, started: int, ended: int, event: Event, suppress_s: int = SUPPRESS_S,
          gap_s: int = EVENT_GAP_S) -> Match:
    """What a report of ``event`` does to the newest finding of its detector, subject
    and kind (its status and its event's start and end), all in the data's time:

    - ``open`` or ``acknowledged``: the report continues it (``update``) unless the
      event starts a gap after the finding's end: then that one ended, this is ``new``;
    - ``resolved`` or ``accepted``: closed; a report of the event as it was when
      closed (starting no later than its end: a detector's window still shows it,
      an accepted leak still runs) is ``ignore``d, a later start is a ``new`` event;
    - ``false_alarm``: muted: reports of events seen until ``suppress_s`` after its
      end are ``ignore``d, later ones are ``new``.
    """
    if status in ACTIVE:
        return "update" if event.start < ended + gap_s else "new"
    if status in (RESOLVED, ACCEPTED):
        return "ignore" if event.start <= ended else "new"
    if status == FALSE_ALARM:
        return "ignore" if event.end < ended + suppress_s else "new"
    raise ValueError(f"unknown status {status!r}")


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
    status, the precision among the judged ones ((resolved + accepted) /
    (resolved + accepted + false alarms): an accepted leak is a real one) and
    the median hours from first report to the first answer.

    A finding counts in its current status (a reopened false alarm is open
    again); precision is None until one of a kind is judged."""
    by_kind: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for finding in found:
        by_kind[(finding["detector"], finding["kind"])].append(finding)
    rows = []
    for (detector, kind), items in sorted(by_kind.items()):
        counts = {status: sum(f["status"] == status for f in items) for status in STATUSES}
        right = counts[RESOLVED] + counts[ACCEPTED]
        judged = right + counts[FALSE_ALARM]
        waits = [(f["feedback"][0]["t"] - (f.get("first_seen") or f["t"])) / HOUR for f in items if f["feedback"]]
        rows.append({
            "detector": detector, "kind": kind, "findings": len(items), **counts, "judged": judged,
            "precision": round(right / judged, 3) if judged else None,
            "median_hours_to_answer": round(statistics.median(waits), 1) if waits else None,
        })
    return rows
