"""Loss ranking of balance groups and where to look first.

Groups are ranked by absolute loss, relative loss or its trend over a period,
the loss is priced per month with the group's tariff, and each group gets
recommendations in the order an engineer would act on them: fill metering gaps
first (without data every other conclusion is shaky), then check the meters
analytics already suspects, then the network itself when the loss runs steadily
through the night, when nobody consumes (worn pipes, background leakage).

Pure functions over an hourly ``BalanceSeries``; nothing here reads storage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.core.balance import BalanceSeries, aggregate
from balans_edge.core.findings import finding_volume
from balans_edge.core.model import Group

MONTH_DAYS = 30.0
"""Days in the month that money and trends are expressed per."""
DAY_S = 86400
NIGHT_HOURS = (2, 5)
"""First and last local hour (inclusive) of the night window: consumption is lowest then."""
MIN_NIGHT_HOURS = 2
"""Known night hours a night needs to count: one hour alone is too noisy."""
MIN_NIGHTS = 5
NIGHT_POSITIVE_SHARE = 0.8
NIGHT_TO_MEAN = 0.5
"""Night imbalance, as a share of the mean hourly imbalance, from which the loss
is taken not to follow consumption."""
MIN_DAY_HOURS = 12
"""Hours a day needs to enter the trend: shorter edge days are scaled to 24 h and
would weigh as much as full ones with half the evidence."""
MIN_TREND_DAYS = 7
MIN_T_STAT = 2.0
MAX_SUSPECTS = 3
_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
GROUP_FLAGS = {"incomplete": 0, "input_missing": 1, "input_estimated": 2, "norm_exceeded": 3,
               "negative_imbalance": 4, "no_members": 5, "partial": 6}
"""Bit of each flag of a group's balance period (as the HTTP API names them) in
the flags word the SCADA bridges show: a Modbus register, an OPC UA variable."""

Order = Literal["absolute", "relative", "trend"]


@dataclass(frozen=True, slots=True)
class Recommendation:
    kind: str
    """metering_gaps | suspect_meter | worn_network | inflow_only"""
    message: str
    subject: str
    """The group, or the meter to check."""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "subject": self.subject}


@dataclass(frozen=True, slots=True)
class Trend:
    """Least-squares line through the daily imbalance."""

    slope: float | None
    """Change of the daily imbalance per day."""
    t_stat: float | None
    days: int
    mean: float | None
    """Mean daily imbalance of the days in the fit."""

    @property
    def growing(self) -> bool:
        """Only a rise that noise is unlikely to explain counts: t > 2 over at least a week."""
        return (
            self.slope is not None
            and self.slope > 0
            and self.days >= MIN_TREND_DAYS
            and self.t_stat is not None
            and self.t_stat > MIN_T_STAT
        )


@dataclass(frozen=True, slots=True)
class LossEntry:
    """A group's loss over the period.

    Volumes are over the hours in which the group's input is known (``days`` of
    them): an hour without input has no imbalance, and counting its consumption
    would make the loss look smaller than it is. A group whose input is never
    known reports what its members consumed over the whole period and no loss.
    """

    group_id: str
    name: str
    unit: str
    days: float
    """Length of the period the volumes cover, in days of known input."""
    input: float | None
    consumed: float
    imbalance: float | None
    loss_pct: float | None
    norm: float | None
    norm_exceeded: bool
    completeness: float | None
    """Share of member-meter hours measured or estimated; None without members."""
    input_coverage: float
    """Share of the period's hours in which the input is known."""
    price: float | None
    money_per_month: float | None
    trend: float | None
    """Change of the daily imbalance over 30 days (volume per day per 30 days)."""
    trend_pct: float | None
    """``trend`` as a percentage of the mean daily imbalance."""
    trend_t: float | None
    trend_days: int
    growing: bool
    night_rate: float | None
    """Median night imbalance per hour (local hours 2..5); None with too few nights."""
    recommendations: list[Recommendation]

    def to_json(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "name": self.name,
            "unit": self.unit,
            "days": round(self.days, 4),
            "input": _round(self.input, 6),
            "consumed": _round(self.consumed, 6),
            "imbalance": _round(self.imbalance, 6),
            "loss_pct": _round(self.loss_pct, 4),
            "norm": self.norm,
            "norm_exceeded": self.norm_exceeded,
            "completeness": _round(self.completeness, 4),
            "input_coverage": _round(self.input_coverage, 4),
            "price": self.price,
            "money_per_month": _round(self.money_per_month, 2),
            "trend": _round(self.trend, 6),
            "trend_pct": _round(self.trend_pct, 4),
            "trend_t": _round(self.trend_t, 4),
            "trend_days": self.trend_days,
            "growing": self.growing,
            "night_rate": _round(self.night_rate, 6),
            "recommendations": [r.to_json() for r in self.recommendations],
        }


def _round(x: float | None, digits: int) -> float | None:
    """Rounded for JSON, which has no infinity: the t-statistic of a perfect line becomes null."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def _offset(ts: int, tz: ZoneInfo) -> int:
    off = datetime.fromtimestamp(ts, tz).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def local_hours(t: np.ndarray, tz: ZoneInfo) -> np.ndarray:
    """Local wall-clock hour (0..23) of each unix time.

    The UTC offset is looked up once per UTC day (at its first and last second);
    only the hours of a day in which the offset changes (a DST switch) are
    looked up one by one, so the Python work is per day, not per hour.
    """
    t = np.asarray(t, np.int64)
    if not len(t):
        return np.zeros(0, np.int64)
    utc_day = t // 86400
    days = np.unique(utc_day)
    first = np.array([_offset(d * 86400, tz) for d in days.tolist()], np.int64)
    last = np.array([_offset(d * 86400 + 86399, tz) for d in days.tolist()], np.int64)
    at = np.searchsorted(days, utc_day)
    offset = first[at]
    switching = first[at] != last[at]
    if switching.any():
        offset[switching] = [_offset(x, tz) for x in t[switching].tolist()]
    return ((t + offset) // 3600) % 24


def _fit(x: np.ndarray, y: np.ndarray) -> Trend:
    """Ordinary least squares of y on x with the t-statistic of the slope.

    A perfect fit has no residual: its t-statistic is infinite (any non-zero
    slope is certain) rather than undefined, and that of a flat line is 0.
    """
    n = len(x)
    if n < 2:
        return Trend(None, None, n, float(y.mean()) if n else None)
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if sxx == 0:
        return Trend(None, None, n, float(y.mean()))
    slope = float(dx @ (y - y.mean())) / sxx
    if n < 3:
        return Trend(slope, None, n, float(y.mean()))
    residual = y - y.mean() - slope * dx
    se = math.sqrt(float(residual @ residual) / (n - 2) / sxx)
    scale = 1e-12 * (abs(float(y.mean())) + abs(slope) + 1e-300)
    if se > scale:
        return Trend(slope, slope / se, n, float(y.mean()))
    # A perfect line up to float noise.
    return Trend(slope, math.copysign(math.inf, slope) if abs(slope) > scale else 0.0, n, float(y.mean()))


@dataclass(frozen=True, slots=True)
class _Days:
    """Local days of the period: the daily series and each hour's day."""

    daily: BalanceSeries
    day_of_hour: np.ndarray
    hours: np.ndarray
    """Hours of the series in each day (23 or 25 on DST days, fewer at the edges)."""
    x: np.ndarray
    """Day number from the first day."""


def _days(hourly: BalanceSeries, tz: ZoneInfo) -> _Days:
    daily = aggregate(hourly, "day", tz)
    day_of_hour = np.searchsorted(daily.t, hourly.t, side="right") - 1
    hours = np.bincount(day_of_hour, minlength=len(daily.t))
    x = np.round((daily.t - daily.t[0]) / 86400.0) if len(daily.t) else np.zeros(0)
    return _Days(daily, day_of_hour, hours, x)


def _trend(days: _Days, row: int) -> Trend:
    """Trend of the daily imbalance of one group, each day scaled to 24 hours.

    Only days whose input is known in every hour enter: a day with a gap in the
    input has no imbalance.
    """
    d = days.daily
    ok = d.input_known()[row] & (days.hours >= MIN_DAY_HOURS)
    y = (d.input[row] - d.consumed[row])[ok] * 24.0 / days.hours[ok]
    return _fit(days.x[ok], y)


def _night_rates(hourly: BalanceSeries, row: int, night: np.ndarray, days: _Days) -> np.ndarray:
    """Mean imbalance per hour of each night with enough known night hours."""
    use = night & hourly.input_known()[row]
    day = days.day_of_hour[use]
    n_days = len(days.hours)
    count = np.bincount(day, minlength=n_days)
    total = np.bincount(day, weights=(hourly.input[row] - hourly.consumed[row])[use], minlength=n_days)
    keep = count >= MIN_NIGHT_HOURS
    return total[keep] / count[keep]


def _worn_network(group: Group, rates: np.ndarray, mean_hourly: float | None) -> Recommendation | None:
    """A steady night imbalance, not much below the average, means the loss does
    not follow consumption: the network itself leaks (worn pipes, background leakage)."""
    if len(rates) < MIN_NIGHTS or mean_hourly is None or mean_hourly <= 0:
        return None
    positive = float(np.mean(rates > 0))
    median = float(np.median(rates))
    if positive < NIGHT_POSITIVE_SHARE or median < NIGHT_TO_MEAN * mean_hourly:
        return None
    message = (
        f"steady night imbalance of {median:.6g} {group.unit}/h (local {NIGHT_HOURS[0]:02d}:00-"
        f"{NIGHT_HOURS[1] + 1:02d}:00) in {positive:.0%} of {len(rates)} nights, "
        f"{median / mean_hourly:.0%} of the mean hourly imbalance: the loss does not follow consumption; "
        "look for a worn network or background leakage"
    )
    return Recommendation("worn_network", message, group.group_id)


def _inflow_only(group: Group, rates: np.ndarray) -> Recommendation:
    """A group with input meters and no member active (a district metered only at its inlet):
    its imbalance would be its whole input, a 100 % "loss" that says nothing. What it can
    tell is its night flow, when legitimate use is lowest."""
    night = (f"; its median night inflow is {float(np.median(rates)):.6g} {group.unit}/h "
             f"(local {NIGHT_HOURS[0]:02d}:00-{NIGHT_HOURS[1] + 1:02d}:00, {len(rates)} nights)"
             if len(rates) >= MIN_NIGHTS else "")
    message = (f"inflow-only group: input meters and no member meter or group to balance them against, "
               f"so there is no loss % to compute{night}. Watch its night flow: the group-leak detector "
               "reports bursts and background leakage from it (minimum night flow analysis)")
    return Recommendation("inflow_only", message, group.group_id)


def _metering_gaps(
    group: Group, completeness: float | None, coverage: float, threshold: float
) -> Recommendation | None:
    parts = []
    if coverage < threshold:
        parts.append(
            "input meters reported no hour of the period: the loss cannot be computed"
            if coverage == 0
            else f"input known in {coverage:.1%} of hours"
        )
    if completeness is not None and completeness < threshold:
        parts.append(f"member meters reported {completeness:.1%} of meter-hours")
    if not parts:
        return None
    message = "; ".join(parts) + f" (below {threshold:.0%}): fill the metering gaps first"
    return Recommendation("metering_gaps", message, group.group_id)


def _time(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def finding_span(finding: Mapping[str, Any]) -> tuple[float, float] | None:
    """The time its stated volume covers: from the ``start`` its data give (else when it was
    first seen) to when it was last seen, at least a day; None when the finding has no times.
    A finding seen again keeps the newest estimate, so this is the newest report's span."""
    start = _time((finding.get("data") or {}).get("start"))
    if start is None:
        start = _time(finding.get("first_seen")) or _time(finding.get("t"))
    end = _time(finding.get("last_seen")) or _time(finding.get("t"))
    if start is None or end is None:
        return None
    return start, max(end, start + DAY_S)


def finding_rate(finding: Mapping[str, Any]) -> float | None:
    """Volume per second the finding states over its span (a negative volume counts as 0)."""
    volume, span = finding_volume(finding), finding_span(finding)
    if volume is None or span is None:
        return None
    return max(volume, 0.0) / (span[1] - span[0])


def finding_active(finding: Mapping[str, Any]) -> tuple[float, float] | None:
    """From when to when the problem was there: the earlier of its first report and of the
    newest report's start, to its last report (at least a day)."""
    span = finding_span(finding)
    if span is None:
        return None
    first = _time(finding.get("first_seen")) or _time(finding.get("t")) or span[0]
    return min(first, span[0]), span[1]


def volume_between(finding: Mapping[str, Any], t0: float, t1: float) -> float | None:
    """The volume a finding puts on [t0, t1): its rate over the part of the time it was
    active that falls inside, not an estimate made over another window or month."""
    rate, active = finding_rate(finding), finding_active(finding)
    if rate is None or active is None:
        return None
    return rate * max(0.0, min(active[1], t1) - max(active[0], t0))


def _monthly(finding: Mapping[str, Any]) -> float | None:
    rate = finding_rate(finding)
    return None if rate is None else rate * MONTH_DAYS * DAY_S


def _suspects(group: Group, findings: Sequence[Mapping[str, Any]]) -> list[Recommendation]:
    """One recommendation per subject and kind: the most severe first, then the biggest volume
    per month (findings stating none after those that do, within a severity).

    Severity leads: a critical burst stating no volume must not hide behind a warning that
    states one, about the same group or not.
    """
    best: dict[tuple[str, str], tuple[tuple[int, bool, float], Mapping[str, Any]]] = {}
    for f in findings:
        volume = _monthly(f)
        if volume is None:
            volume = finding_volume(f)
        key = (_SEVERITY_RANK.get(str(f.get("severity", "")), 3), volume is None, -(volume or 0.0))
        about = (str(f.get("subject")), str(f.get("kind")))
        if about not in best or key < best[about][0]:
            best[about] = (key, f)
    ranked = sorted(best.items(), key=lambda item: item[1][0])[:MAX_SUSPECTS]
    return [Recommendation("suspect_meter", _suspect_message(group, f), s) for (s, _), (_, f) in ranked]


def _suspect_message(group: Group, finding: Mapping[str, Any]) -> str:
    volume, monthly, span = finding_volume(finding), _monthly(finding), finding_span(finding)
    if monthly is not None and span is not None and volume is not None:
        days = (span[1] - span[0]) / DAY_S
        about = (f"; about {monthly:.6g} {group.unit} per month ({volume:.6g} {group.unit} "
                 f"in {days:.3g} day{'s' if days != 1 else ''})")
    elif volume is not None:
        about = f"; about {volume:.6g} {group.unit}"
    else:
        about = ""
    detector, kind = finding.get("detector", ""), finding.get("kind", "")
    return f"{kind} ({detector}, {finding.get('severity', '')}): {finding.get('message', '')}{about}"


def _findings_by_group(
    groups: Sequence[Group], findings: Sequence[Mapping[str, Any]], members: Mapping[str, Sequence[str]] | None
) -> dict[str, list[Mapping[str, Any]]]:
    """Findings attached to the groups they concern: the group itself or one of its member meters."""
    owners: dict[str, list[str]] = {g.group_id: [g.group_id] for g in groups}
    for gid, meter_ids in (members or {}).items():
        for mid in meter_ids:
            owners.setdefault(mid, []).append(gid)
    out: dict[str, list[Mapping[str, Any]]] = {g.group_id: [] for g in groups}
    for f in findings:
        for gid in owners.get(str(f.get("subject")), []):
            if gid in out:
                out[gid].append(f)
    return out


@dataclass(frozen=True, slots=True)
class _Totals:
    """Whole-array sums over the period, one value per group."""

    known_hours: np.ndarray
    input: np.ndarray
    consumed_known: np.ndarray
    consumed_all: np.ndarray
    members_known: np.ndarray
    members_all: np.ndarray
    hours: int


def _totals(hourly: BalanceSeries) -> _Totals:
    known = hourly.input_known()
    known_members = hourly.measured + hourly.estimated
    return _Totals(
        known_hours=known.sum(axis=1),
        input=np.where(known, hourly.input, 0.0).sum(axis=1),
        consumed_known=np.where(known, hourly.consumed, 0.0).sum(axis=1),
        consumed_all=hourly.consumed.sum(axis=1),
        members_known=known_members.sum(axis=1),
        members_all=(known_members + hourly.missing).sum(axis=1),
        hours=len(hourly.t),
    )


def _entry(
    group: Group,
    row: int,
    totals: _Totals,
    trend: Trend,
    rates: np.ndarray,
    suspects: list[Recommendation],
    threshold: float,
) -> LossEntry:
    known_hours = int(totals.known_hours[row])
    days = known_hours / 24.0
    inp = float(totals.input[row]) if known_hours else None
    consumed = float(totals.consumed_known[row] if known_hours else totals.consumed_all[row])
    members_all = int(totals.members_all[row])
    inflow_only = not members_all and totals.hours > 0
    if inflow_only:  # nothing to balance against: its input is not a loss
        trend = Trend(None, None, 0, None)
    imbalance = None if inp is None or inflow_only else inp - consumed
    loss_pct = 100.0 * imbalance / inp if inp is not None and imbalance is not None and inp > 0 else None
    completeness = int(totals.members_known[row]) / members_all if members_all else None
    coverage = known_hours / totals.hours if totals.hours else 0.0
    money = imbalance * group.price * MONTH_DAYS / days if imbalance is not None and group.price is not None else None
    slope_30 = None if trend.slope is None else trend.slope * MONTH_DAYS
    trend_pct = 100.0 * slope_30 / trend.mean if slope_30 is not None and trend.mean and trend.mean > 0 else None
    mean_hourly = imbalance / known_hours if imbalance is not None else None
    recommendations = [
        r
        for r in (
            _metering_gaps(group, completeness, coverage, threshold),
            _inflow_only(group, rates) if inflow_only else None,
            *suspects,
            _worn_network(group, rates, mean_hourly),
        )
        if r is not None
    ]
    return LossEntry(
        group_id=group.group_id,
        name=group.name,
        unit=group.unit,
        days=days,
        input=inp,
        consumed=consumed,
        imbalance=imbalance,
        loss_pct=loss_pct,
        norm=group.loss_norm_pct,
        norm_exceeded=loss_pct is not None and group.loss_norm_pct is not None and loss_pct > group.loss_norm_pct,
        completeness=completeness,
        input_coverage=coverage,
        price=group.price,
        money_per_month=money,
        trend=slope_30,
        trend_pct=trend_pct,
        trend_t=trend.t_stat,
        trend_days=trend.days,
        growing=trend.growing,
        night_rate=float(np.median(rates)) if len(rates) >= MIN_NIGHTS else None,
        recommendations=recommendations,
    )


_ORDER_KEYS: dict[str, Callable[[LossEntry], float | None]] = {
    "absolute": lambda e: e.imbalance,
    "relative": lambda e: e.loss_pct,
    "trend": lambda e: e.trend,
}


def sort_entries(entries: Sequence[LossEntry], order: Order = "absolute") -> list[LossEntry]:
    """Largest first by the chosen measure; entries without it last, in their given order."""
    if order not in _ORDER_KEYS:
        raise ValueError(f"unknown order {order!r}")
    key = _ORDER_KEYS[order]

    def sort_key(e: LossEntry) -> tuple[bool, float]:
        v = key(e)
        return (v is None, -v if v is not None else 0.0)

    return sorted(entries, key=sort_key)


def rank(
    groups: Sequence[Group],
    hourly: BalanceSeries,
    tz: ZoneInfo,
    findings: Sequence[Mapping[str, Any]] = (),
    members: Mapping[str, Sequence[str]] | None = None,
    threshold: float = 0.95,
    order: Order = "absolute",
) -> list[LossEntry]:
    """Rank ``groups`` by loss over the hours of ``hourly`` and recommend where to look.

    ``hourly`` holds one row per group (found by group id); ``findings`` are
    stored findings as mappings, attached to a group when their subject is the
    group or one of its meters in ``members``. ``tz`` is the site's timezone: it
    decides the local days of the trend and the local night hours.
    """
    rows = {gid: i for i, gid in enumerate(hourly.group_ids)}
    missing = [g.group_id for g in groups if g.group_id not in rows]
    if missing:
        raise ValueError(f"groups not in the series: {missing}")
    totals = _totals(hourly)
    days = _days(hourly, tz)
    hour = local_hours(hourly.t, tz)
    night = (hour >= NIGHT_HOURS[0]) & (hour <= NIGHT_HOURS[1])
    attached = _findings_by_group(groups, findings, members)
    entries = [
        _entry(
            g,
            rows[g.group_id],
            totals,
            _trend(days, rows[g.group_id]),
            _night_rates(hourly, rows[g.group_id], night, days),
            _suspects(g, attached[g.group_id]),
            threshold,
        )
        for g in groups
    ]
    return sort_entries(entries, order)
