"""The lifecycle of a stored finding: which status may follow which.

A finding is ``open`` when a detector first reports it. An operator
acknowledges it (someone is looking), resolves it (fixed on site) or marks it
a false alarm (the detector was wrong). Either end can be reopened. The
operators' answers are kept with the finding, so the share of false alarms per
detector and kind can be measured on real sites, not only on simulations.
"""

from __future__ import annotations

import time
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
