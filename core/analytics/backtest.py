"""Replaying the detectors over stored history, as the scheduler would have run them.

A backtest answers "when would the server have told us, and what would it have
said?" for a period already stored: at each step (every hour by default, as
the scheduler runs) the detectors see the window the scheduler would have
given them then (the ``window_s`` of hours over by that time, nothing later),
and their reports go through the same event rules as stored findings
(``core.findings.match``, ``event_of``, ``fuller``), kept in memory: a
backtest never writes a finding, an alarm or anything else.

The group's history is loaded once (``load_replay_data``, the scheduler's own
loader over the whole span) and each step's window is a slice of it
(``GroupData.slice``): the same arrays a scheduled run would have loaded for
that window, without a query per step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.core import findings as rules
from balans_edge.core.analytics.base import DEFAULT_WINDOW_DAYS, GroupDetector, Scope
from balans_edge.core.analytics.data import GroupData
from balans_edge.core.components import Finding
from balans_edge.core.times import DAY, HOUR, hour_ceil

log = logging.getLogger(__name__)

DEFAULT_STEP_S = HOUR
"""The scheduler's default interval (``[plugins.analytics] interval_s``)."""


@dataclass(slots=True)
class ReplayedEvent:
    """One event as the findings journal would hold it after the replay, with
    what it said when it was first reported."""

    detector: str
    subject: str
    kind: str
    group_id: str | None
    severity: str
    message: str
    """The message of the fullest report (as a stored finding keeps it)."""
    start: int
    """The earliest start any report stated (data time)."""
    last: int
    """The latest end any report stated (a stored finding's ``ended``)."""
    first_reported: int
    """The run that first reported it (its window's end): when the alarm would have gone off."""
    first_rate: float | None
    first_volume: float | None
    rate: float | None
    """Estimates of the fullest report (``findings.fuller``), as the stored finding keeps them."""
    volume: float | None
    last_reported: int
    reports: int = 1
    stated_end: int | None = None
    """The end the newest report stated, when it lies before that report's own time
    (the detector says the event is over: repaired)."""
    end: int | None = None
    """When the event ended, set at the end of the replay (``ReplayBook.finish``); None: still going."""

    @property
    def delay(self) -> int:
        """Seconds from the event's start to its first report."""
        return self.first_reported - self.start


class ReplayBook:
    """The findings journal's event rules, in memory: what ``record_finding`` does
    with a report (a new event, or seen again: start the earliest, end the latest,
    the fullest report's estimates), without operators (every event stays open)."""

    def __init__(self, suppress_s: int = rules.SUPPRESS_S, gap_s: int = rules.EVENT_GAP_S) -> None:
        self.suppress_s = suppress_s
        self.gap_s = gap_s
        self.events: list[ReplayedEvent] = []
        self._newest: dict[tuple[str, str, str], ReplayedEvent] = {}

    def report(self, finding: Finding, t: int) -> tuple[ReplayedEvent, bool]:
        """Record one report made by a run at ``t`` (used when the finding has no
        time of its own, as the server uses the clock): (its event, whether new)."""
        at = int(finding.t or t)
        event = rules.event_of({"t": at, "data": finding.data})
        key = (finding.detector, finding.subject, finding.kind)
        newest = self._newest.get(key)
        what = "new" if newest is None else rules.match(rules.OPEN, newest.start, newest.last, event,
                                                         self.suppress_s, self.gap_s)
        stated = event.end if event.end < at else None
        if newest is not None and what == "update":
            fuller = rules.fuller(newest.volume, event)
            newest.last_reported = max(newest.last_reported, at)
            newest.reports += 1
            newest.start = min(newest.start, event.start)
            newest.last = max(newest.last, event.end)
            newest.stated_end = stated
            if fuller:
                newest.message, newest.severity = finding.message, str(finding.severity)
                newest.rate = newest.rate if event.rate is None else event.rate
                newest.volume = newest.volume if event.volume is None else event.volume
            return newest, False
        created = ReplayedEvent(
            finding.detector, finding.subject, finding.kind, rules.group_of(finding.data), str(finding.severity),
            finding.message, event.start, event.end, at, event.rate, event.volume, event.rate, event.volume, at,
            stated_end=stated)
        self.events.append(created)
        self._newest[key] = created
        return created, True

    def finish(self, t: int) -> list[ReplayedEvent]:
        """Close the replay at ``t``: an event has ended when its newest report stated
        an end (at that end), or when no run reported it in the last ``gap_s``
        (a later report would be a new event; at its latest end). The others go on."""
        for e in self.events:
            if e.stated_end is not None:
                e.end = e.stated_end
            elif e.last_reported + self.gap_s <= t:
                e.end = e.last
            else:
                e.end = None
        return self.events


@dataclass(slots=True)
class Replay:
    """What a backtest saw: its runs and every event, in order of first report."""

    group_id: str
    t_from: int
    t_to: int
    step_s: int
    window_s: int
    detectors: list[str]
    runs: int
    events: list[ReplayedEvent]
    failures: dict[str, int] = field(default_factory=dict)
    """Runs in which a detector raised (the scheduler logs and skips it too)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time each detector took over all runs."""


def run_times(t_from: int, t_to: int, step_s: int) -> np.ndarray:
    """The times of the runs: ``t_from`` rounded up to an hour, then every ``step_s``
    up to ``t_to`` (a run at ``t`` sees the hours over by ``t``)."""
    if step_s < HOUR or step_s % HOUR:
        raise ValueError(f"step: expected a whole number of hours, got {step_s} s")
    first = hour_ceil(t_from)
    if t_to < first:
        raise ValueError("to must not be earlier than from")
    return np.arange(first, t_to + 1, step_s, dtype=np.int64)


def history_span(t_from: int, t_to: int, step_s: int, window_s: int) -> tuple[int, int]:
    """The hours [t0, t1) a replay reads: the first run's window to the last run."""
    times = run_times(t_from, t_to, step_s)
    return int(times[0]) - window_s, int(times[-1])


async def load_replay_data(storage: Any, group_id: str, t_from: int, t_to: int, tz: ZoneInfo,
                           step_s: int = DEFAULT_STEP_S, window_s: int = DEFAULT_WINDOW_DAYS * DAY) -> GroupData:
    """The group's history a replay needs, loaded once by the scheduler's own loader
    (``Scope.windows``); read-only. KeyError when the group is not in the registry."""
    if await storage.registry_get("groups", group_id) is None:
        raise KeyError(group_id)
    t0, t1 = history_span(t_from, t_to, step_s, window_s)
    (data,) = await Scope(t0, t1, [group_id]).windows(storage, tz)
    return data


def detector_window(detector: GroupDetector, window_s: int) -> int:
    """The seconds of history a scheduled run gives ``detector``: the run's window,
    or the longer history the detector asks for (``history_days``, as
    ``Scope.windows`` gives it)."""
    days = getattr(detector, "history_days", None)
    return max(window_s, int(days) * DAY) if days else window_s


def replay(data: GroupData, detectors: Sequence[GroupDetector], t_from: int, t_to: int, *,
           step_s: int = DEFAULT_STEP_S, window_s: int = DEFAULT_WINDOW_DAYS * DAY,
           book: ReplayBook | None = None) -> Replay:
    """Run ``detectors`` on ``data`` at every run time of [t_from, t_to] over the
    window the scheduler would have given them (``detector_window``), in
    registration order, and keep their reports as events. ``data`` must hold every
    hour of ``history_span`` (hours before it are missing to a scheduled run too;
    here it is a mistake); a detector that asks for a longer history gets what
    ``data`` holds of it."""
    times = run_times(t_from, t_to, step_s)
    if window_s < HOUR or window_s % HOUR:
        raise ValueError(f"window: expected a whole number of hours, got {window_s} s")
    windows = [detector_window(d, window_s) for d in detectors]
    t0, t1 = int(times[0]) - window_s, int(times[-1])
    if not data.hours or data.t[0] > t0 or data.t[-1] < t1 - HOUR or np.any(np.diff(data.t) != HOUR):
        raise ValueError(f"the history must hold every hour from {t0} to {t1}")
    book = book or ReplayBook()
    failures: dict[str, int] = {}
    lo = {w: np.searchsorted(data.t, times - w).tolist() for w in set(windows)}
    hi = np.searchsorted(data.t, times).tolist()
    seconds = dict.fromkeys((d.name for d in detectors), 0.0)
    for i, t in enumerate(times.tolist()):
        slices = {w: data.slice(starts[i], hi[i]) for w, starts in lo.items()}
        for detector, w in zip(detectors, windows, strict=True):
            began = time.perf_counter()
            try:
                found = detector.detect_group(slices[w])
            except Exception:
                # Logged once per detector: a broken one would fail in every run.
                if detector.name not in failures:
                    log.exception("detector %s failed on the window ending %d", detector.name, t)
                failures[detector.name] = failures.get(detector.name, 0) + 1
                continue
            finally:
                seconds[detector.name] += time.perf_counter() - began
            for finding in found:
                book.report(finding, t)
    events = book.finish(int(times[-1]))
    return Replay(data.group.group_id, int(times[0]), int(times[-1]), step_s, window_s,
                  [d.name for d in detectors], len(times), events, failures, seconds)
