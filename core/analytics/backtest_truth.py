"""Scoring a backtest against a truth file: the events that really happened.

The truth file is CSV, one true event a line: ``subject,kind,start[,end]``
(``group`` is accepted for ``subject``; a header line naming the columns is
optional, lines starting with ``#`` and blank lines are skipped). Times are
ISO-8601 (the site's local time when they carry no offset) or unix seconds.
The subject is what the findings are about: the group's id for a leak in its
network, a meter's id for a fault of that meter. The kind is a label for the
tables (``burst``, ``ramp``, ...): matching does not compare it, since a
growing leak may well be found by a burst and a detector's kinds need not be
the truth's words (choose the detectors with ``--detectors``).

The matching rule: a reported event matches a true event of the same subject
when it is first reported within ``deadline_s`` after the true start
(``start <= first report <= start + deadline``). A true event is detected
when some report matches it (its delay is the earliest such report's); a
report that matches no true event is a false episode. Precision is the share
of reports that match a true event, recall the share of true events
detected. Only true events starting within the replay's runs count towards
recall, but a report matching any true event of the file is not false.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo

from balans_edge.core.analytics.backtest import Replay, ReplayedEvent
from balans_edge.core.analytics.data import GroupData
from balans_edge.core.times import DAY, parse_time

COLUMNS = ("subject", "kind", "start", "end")
REQUIRED = 3
ALIASES = {"group": "subject"}
DEFAULT_DEADLINE_S = 7 * DAY
MONTH_S = 30.4375 * DAY
"""An average month of the Gregorian calendar."""


class TruthError(ValueError):
    """A truth file that cannot be read: the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class TrueEvent:
    line: int
    """The line of the truth file it was read from."""
    subject: str
    kind: str
    start: int
    end: int | None = None


def _header(cells: list[str]) -> list[str] | None:
    """The columns a header line names, or None when the line is not a header."""
    names = [ALIASES.get(c.strip().lower(), c.strip().lower()) for c in cells]
    return names if names and all(n in COLUMNS for n in names) else None


def _time(raw: str, name: str, tz: tzinfo | None, fail: Callable[[str], TruthError]) -> int | None:
    try:
        return parse_time(raw, tz) if raw else None
    except ValueError as exc:
        raise fail(f"{name}: {exc}") from None


def read_truth(text: str, tz: tzinfo | None = None, source: str = "truth") -> list[TrueEvent]:
    """The true events of a truth file; TruthError naming ``source`` and the line of the first problem."""
    reader = csv.reader(io.StringIO(text))
    columns: list[str] | None = None
    found: list[TrueEvent] = []
    first = True
    for row in reader:
        line = reader.line_num

        def fail(problem: str, line: int = line) -> TruthError:
            return TruthError(f"{source} line {line}: {problem}")

        if not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if first:
            first = False
            columns = _header(row)
            if columns is not None:
                missing = [c for c in COLUMNS[:REQUIRED] if c not in columns]
                twice = sorted({c for c in columns if columns.count(c) > 1})
                if missing or twice:
                    raise fail(f"the header must name subject, kind and start once each (end is optional); "
                               f"{'missing ' + ', '.join(missing) if missing else 'repeated ' + ', '.join(twice)}")
                continue
        names = columns or list(COLUMNS)
        cells = [c.strip() for c in row]
        while len(cells) > len(names) and not cells[-1]:
            cells.pop()
        needed = 1 + max(names.index(c) for c in COLUMNS[:REQUIRED])
        if not needed <= len(cells) <= len(names):
            expected = ",".join(names) if columns else "subject,kind,start[,end]"
            raise fail(f"expected the fields {expected}, got {len(cells)}")
        values = dict(zip(names, cells, strict=False))
        for name in ("subject", "kind", "start"):
            if not values.get(name):
                raise fail(f"{name} is empty")
        start, end = (_time(values.get(name) or "", name, tz, fail) for name in ("start", "end"))
        if start is None:
            raise fail("start is empty")
        if end is not None and end < start:
            raise fail(f"end {values['end']!r} is before start {values['start']!r}")
        found.append(TrueEvent(line, values["subject"], values["kind"], start, end))
    return found


def group_subjects(data: GroupData) -> set[str]:
    """What findings about a group may be about: the group, its members and its input meters."""
    return {data.group.group_id, *data.meter_ids, *(i.meter_id for i in data.group.inputs)}


def matches(event: ReplayedEvent, truth: TrueEvent, deadline_s: int = DEFAULT_DEADLINE_S) -> bool:
    """The matching rule: the same subject, first reported within the deadline after the true start."""
    return event.subject == truth.subject and truth.start <= event.first_reported <= truth.start + deadline_s


@dataclass(slots=True)
class Outcome:
    """One true event of the replay's period and its earliest matching report."""

    truth: TrueEvent
    event: ReplayedEvent | None

    @property
    def delay(self) -> int | None:
        return None if self.event is None else self.event.first_reported - self.truth.start


@dataclass(slots=True)
class KindScore:
    true_events: int
    detected: int
    recall: float | None
    median_delay_s: float | None


@dataclass(slots=True)
class Scores:
    deadline_s: int
    outcomes: list[Outcome]
    """The true events that count (of the group, starting within the replay), in order of start."""
    matched: list[TrueEvent | None]
    """Per replayed event (in the replay's order), the true event it matches (the latest
    started of those it matches), None for a false episode."""
    left_out: int
    """True events of the file that do not count: about other subjects, or starting outside the replay."""
    precision: float | None
    recall: float | None
    f1: float | None
    false_episodes: int
    months: float
    false_per_month: float | None
    median_delay_s: float | None
    by_kind: dict[str, KindScore] = field(default_factory=dict)

    @property
    def detected(self) -> int:
        return sum(o.event is not None for o in self.outcomes)


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _median(values: list[int]) -> float | None:
    return float(statistics.median(values)) if values else None


def score(replay: Replay, truth: list[TrueEvent], subjects: set[str] | None = None,
          deadline_s: int = DEFAULT_DEADLINE_S) -> Scores:
    """Precision, recall, F1, delays and false episodes per month of ``replay``
    against ``truth`` (of ``subjects`` only, when given) by the matching rule."""
    if deadline_s < 0:
        raise ValueError("deadline must not be negative")
    ours = [t for t in truth if subjects is None or t.subject in subjects]
    counted = sorted((t for t in ours if replay.t_from <= t.start <= replay.t_to), key=lambda t: (t.start, t.line))
    matched: list[TrueEvent | None] = []
    for event in replay.events:
        hits = [t for t in ours if matches(event, t, deadline_s)]
        matched.append(max(hits, key=lambda t: (t.start, t.line)) if hits else None)
    outcomes = []
    for t in counted:
        hits = [e for e in replay.events if matches(e, t, deadline_s)]
        outcomes.append(Outcome(t, min(hits, key=lambda e: e.first_reported) if hits else None))
    detected = sum(o.event is not None for o in outcomes)
    true_reports = sum(m is not None for m in matched)
    precision, recall = _ratio(true_reports, len(replay.events)), _ratio(detected, len(counted))
    f1 = None if precision is None or recall is None else (
        2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    false_episodes = len(replay.events) - true_reports
    months = (replay.t_to - replay.t_from) / MONTH_S
    by_kind = {}
    for kind in sorted({o.truth.kind for o in outcomes}):
        of_kind = [o for o in outcomes if o.truth.kind == kind]
        found = [o.delay for o in of_kind if o.delay is not None]
        by_kind[kind] = KindScore(len(of_kind), len(found), _ratio(len(found), len(of_kind)), _median(found))
    return Scores(deadline_s, outcomes, matched, len(truth) - len(counted), precision, recall, f1, false_episodes,
                  months, false_episodes / months if months else None,
                  _median([o.delay for o in outcomes if o.delay is not None]), by_kind)
