"""A leak in a group's network, from its night flow: bursts and growing leaks.

At night most people sleep, so the group's imbalance at night (its inflow
where no member is metered) is mostly loss plus the few who are awake
(legitimate night use); a leak adds its flow to every hour and lifts it.
Each night's flow (the mean of the night hours, or the lowest hour) is judged
against a baseline of the nights before it:

- the baseline is the median of up to ``baseline_nights`` earlier nights,
  weekend nights apart when they differ;
- its spread cannot collapse: a few quiet nights in a row would make any
  wobble look like a burst. It is the largest of the robust spread (MAD) of
  the nights' rise over their own baselines across ``scale_nights``, the
  input's measured resolution (a tank-derived inflow moves in steps of the
  level's centimetre), a share of the baseline and a share of the
  legitimate night use;
- a burst is a step: ``confirm_nights`` nights in a row above the baseline by
  ``sensitivity`` spreads and the allowance, with its onset (the hour the
  flow rose), its size, and whether it is still there;
- a growing leak is a ramp: a rise that fits a line better than a step, or a
  robust (Theil-Sen) slope over ``trend_nights`` positive at
  ``trend_confidence``; a burst on top of it is a finding of its own;
- a leak that was repaired ends: its nights are back at the baseline for
  ``end_nights``, and its report states the end;
- a leak the operator accepted (finding status ``accepted``) moves the
  baseline on: the nights before it count as if it had always run.

Each finding carries what it was judged on (``info["evidence"]``: the nights'
flows, baselines and thresholds, the onset and size), so an operator sees
why. Rates are in the group's unit per hour (``rate_lph`` in litres per hour).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from balans_edge.core.analytics.base import GroupDetector
from balans_edge.core.analytics.data import GroupData
from balans_edge.core.analytics.night_flow_settings import NightFlowSettings, preset_for, resolve
from balans_edge.core.components import Finding, Severity
from balans_edge.core.times import HOUR

if TYPE_CHECKING:
    from balans_edge.core.detection import DetectionRun
    from balans_edge.core.model import Group

LITRES = 1000.0
MAD = 1.4826
"""MAD to standard deviation for normal noise."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A leak an operator accepted: from ``start`` on, ``rate`` more is normal;
    growth is judged only after ``since`` (when it was last seen)."""

    start: int
    rate: float
    since: int


@dataclass(slots=True)
class Nights:
    """The window's nights, one per local day, oldest first."""

    first: np.ndarray
    """(N,) hour index of the night's first hour in the window."""
    stop: np.ndarray
    """(N,) hour index after its last hour."""
    value: np.ndarray
    """(N,) lowest known hour of the night; NaN with fewer than half the hours known."""
    weekend: np.ndarray
    """(N,) a Saturday or Sunday night."""
    use: np.ndarray
    """(N,) the members' metered use per hour at night (mean), NaN unknown; 0 without members."""

    def __len__(self) -> int:
        return len(self.value)


def nights_of(data: GroupData, series: np.ndarray, night: tuple[int, int], statistic: str = "min") -> Nights:
    """The night flow of ``series`` for each night of the window: its lowest hour
    (``min``) or the mean of its hours (``mean``); a night spanning midnight
    (``night[0] > night[1]``) belongs to the day it ends on."""
    lo, hi = night
    hour = data.local_hour
    inside = (hour >= lo) & (hour < hi) if lo < hi else (hour >= lo) | (hour < hi)
    idx = np.flatnonzero(inside)
    empty = np.zeros(0)
    if not len(idx):
        return Nights(empty.astype(np.int64), empty.astype(np.int64), empty, empty.astype(bool), empty)
    day = data.local_day[idx] + ((hour[idx] >= lo) & (lo > hi))
    days, inverse = np.unique(day, return_inverse=True)
    n = len(days)
    x = series[idx]
    known = ~np.isnan(x)
    mins = np.full(n, np.inf)
    np.minimum.at(mins, inverse[known], x[known])
    counts = np.bincount(inverse[known], minlength=n)
    size = np.bincount(inverse, minlength=n)
    first = np.full(n, len(data.t))
    np.minimum.at(first, inverse, idx)
    stop = np.zeros(n, np.int64)
    np.maximum.at(stop, inverse, idx + 1)
    if statistic == "mean":
        mins = np.bincount(inverse[known], weights=x[known], minlength=n) / np.maximum(counts, 1)
    value = np.where(counts * 2 >= np.maximum(size, 2), mins, np.nan)
    weekend = data.weekday[idx][np.r_[0, np.flatnonzero(np.diff(inverse)) + 1]] >= 5 if n else np.zeros(0, bool)
    use = np.zeros(n)
    if data.values.shape[0]:
        metered = np.nansum(data.values[:, idx], axis=0)
        unknown = np.isnan(data.values[:, idx]).all(axis=0)
        total = np.bincount(inverse[~unknown], weights=metered[~unknown], minlength=n)
        hours = np.bincount(inverse[~unknown], minlength=n)
        use = np.divide(total, hours, out=np.full(n, np.nan), where=hours > 0)
    return Nights(first.astype(np.int64), stop, value, weekend.astype(bool), use)


def resolution(x: np.ndarray) -> float:
    """The step a series moves in: the lower quartile of the gaps between its distinct
    values (a series quantised to q has gaps of q, a fine one tiny gaps). Float
    noise (gaps below 1e-9 of the values) is no step; 0 for too short a series."""
    v = x[np.isfinite(x)]
    if len(v) < 24:
        return 0.0
    tol = 1e-9 * max(float(np.max(np.abs(v))), 1e-12)
    gaps = np.diff(np.unique(v))
    gaps = gaps[gaps > tol]
    return float(np.quantile(gaps, 0.25)) if len(gaps) >= 4 else 0.0


@dataclass(slots=True)
class Baseline:
    """The normal night flow before a candidate onset and how much it wobbles."""

    weekday: float
    weekend: float
    spread: float

    def at(self, weekend: np.ndarray) -> np.ndarray:
        return np.where(weekend, self.weekend, self.weekday)


@dataclass(slots=True)
class Context:
    """What every baseline of one window shares: settings, floors and the allowance."""

    settings: NightFlowSettings
    mean_input: float
    step: float
    """The input's (or the imbalance's) measured resolution."""
    legitimate: float
    """Legitimate night use per hour: the members' metered use at night, or the configured allowance."""
    allowance: float
    """Smallest leak reported, per hour."""

    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """(N,) each night's rise over its own baseline of the nights before it (NaN without one)."""

    def level(self, values: np.ndarray, weekend: np.ndarray, need: int) -> tuple[float, float] | None:
        """(weekday, weekend) median of ``values`` (earlier nights; weekend nights apart when
        there are enough of both and they differ); None with fewer than ``need`` known."""
        ok = ~np.isnan(values)
        if ok.sum() < need:
            return None
        v, w = values[ok], weekend[ok]
        level = float(np.median(v))
        if w.sum() >= 4 and (~w).sum() >= 4:
            a, b = float(np.median(v[~w])), float(np.median(v[w]))
            if abs(a - b) > MAD * float(np.median(np.abs(v - level))) / 2:
                return a, b
        return level, level

    def prepare(self, m: np.ndarray, weekend: np.ndarray) -> None:
        """Each night's residual over the nights before it, for the long-window spread."""
        s = self.settings
        self.residuals = np.full(len(m), np.nan)
        for j in range(len(m)):
            earlier = slice(max(0, j - s.baseline_nights), j)
            b = self.level(m[earlier], weekend[earlier], min(7, s.min_nights))
            if b is not None:
                self.residuals[j] = m[j] - (b[1] if weekend[j] else b[0])

    def baseline(self, m: np.ndarray, weekend: np.ndarray, k: int) -> Baseline | None:
        """The baseline of night ``k`` from the nights before it: medians, and a spread that
        cannot collapse: the robust spread of the nights' residuals over the window before
        ``k``, the resolution, and shares of the level and of the legitimate night use."""
        s = self.settings
        earlier = slice(max(0, k - s.baseline_nights), k)
        level = self.level(m[earlier], weekend[earlier], s.min_nights)
        if level is None:
            return None
        r = self.residuals[:k]
        r = r[~np.isnan(r)][-s.scale_nights:]
        if len(r) >= 7:
            spread = MAD * float(np.median(np.abs(r - np.median(r))))
        else:  # a short history: the baseline nights' own spread
            v = m[earlier][~np.isnan(m[earlier])]
            spread = MAD * float(np.median(np.abs(v - np.median(v))))
        floor = max(s.resolution_share * self.step, s.spread_floor_pct / 100 * abs(max(level)),
                    s.night_use_pct / 100 * self.legitimate, 1e-9)
        return Baseline(level[0], level[1], max(spread, floor))


@dataclass(slots=True)
class Change:
    """A step (or a ramp) of the night flow from night ``k`` to night ``e``."""

    kind: str
    k: int
    e: int
    size: float
    """Per hour: the step, or the ramp's level reached at night ``e``."""
    score: float
    baseline: Baseline
    ongoing: bool


def _steps(ctx: Context, nights: Nights, m: np.ndarray, lo: int) -> list[Change]:
    """The first step of the night flow with its onset at night ``lo`` or later
    (among the last ``search_nights``): ``confirm_nights`` nights in a row from
    its onset k, each above the baseline of the nights before k by ``sensitivity``
    spreads and the allowance. Night flows have heavy tails (a hydrant, a pool
    filled, a holiday's end), so a step is confirmed by every one of its first
    nights, not by their sum: on the BWDF inflows a likelihood ratio summed over
    nights (clipped at 2.5 spreads) reached F1 0.53, this run rule 0.64."""
    s = ctx.settings
    n = len(m)
    need = s.confirm_nights
    for k in range(max(lo, 1, n - s.search_nights), n - need + 1):
        base = ctx.baseline(m, nights.weekend, k)
        if base is None:
            continue
        threshold = max(s.sensitivity * base.spread, ctx.allowance)
        rise = m - base.at(nights.weekend)
        first = rise[k:k + need]
        if np.isnan(first).any() or float(first.min()) <= threshold:
            continue
        return _shape(ctx, nights, rise, k, base, float(first.min()) / base.spread)
    return []


def _shape(ctx: Context, nights: Nights, rise: np.ndarray, k: int, base: Baseline, score: float) -> list[Change]:
    """How long the change from night ``k`` lasted (it ended when ``end_nights`` known
    nights in a row fell below half its size: repaired) and what it is: a step (a
    burst), a ramp (a growing leak: its rise fits a line from zero better than a
    constant), or a ramp with a step on top (a growing leak, and a burst after it)."""
    s = ctx.settings
    n = len(rise)
    size = float(np.median(rise[k:k + s.confirm_nights]))
    e, ended, below = n - 1, False, 0
    for j in range(k + s.confirm_nights, n):
        if np.isnan(rise[j]):
            continue
        below = below + 1 if rise[j] < size / 2 else 0
        if below >= s.end_nights:
            known = np.flatnonzero(~np.isnan(rise[k:j + 1]) & (rise[k:j + 1] >= size / 2))
            e, ended = k + int(known[-1]), True
            break
    seg = rise[k:e + 1]
    t = np.arange(1, len(seg) + 1, dtype=float)
    ok = ~np.isnan(seg)
    level = max(float(np.median(seg[ok])), 0.0)
    # A burst is abrupt: the night before it is still near the baseline. A growing
    # leak crosses the threshold a little more each night.
    before = rise[k - 1] if k >= 1 and not np.isnan(rise[k - 1]) else 0.0
    abrupt = float(np.median(seg[ok][:s.confirm_nights])) - before >= 0.5 * level
    change = Change("burst" if abrupt else "background_leak", k, e, level, score, base, not ended)
    if ok.sum() < 5:
        return [change]
    y, x = seg[ok], t[ok]
    sse_step = float(np.sum((y - np.median(y)) ** 2))
    slope = float(y @ x / (x @ x))
    sse_ramp = float(np.sum((y - slope * x) ** 2))
    split = _ramp_and_step(y, x, max(s.sensitivity * base.spread, ctx.allowance), s.confirm_nights)
    if split is not None and split[3] < 0.5 * min(sse_step, sse_ramp):
        a, j, jump, _ = split  # a growing leak, and a burst on top of it from night j
        onset = k + int(np.flatnonzero(ok)[j])
        return [Change("background_leak", k, e, a * float(x[-1]), score, base, not ended),
                Change("burst", onset, e, jump, score, base, not ended)]
    if (sse_ramp < 0.7 * sse_step or not abrupt) and slope > 0:
        return [Change("background_leak", k, e, slope * float(x[-1]), score, base, not ended)]
    return [change]


def _ramp_and_step(y: np.ndarray, x: np.ndarray, threshold: float, need: int,
                   ) -> tuple[float, int, float, float] | None:
    """The best fit of a line from zero plus a step at some night j (at least three
    nights of the line before it, ``need`` after): (slope, j, step, squared error);
    None when no step is above ``threshold``."""
    best = None
    for j in range(3, len(y) - need + 1):
        design = np.c_[x, (np.arange(len(y)) >= j).astype(float)]
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        a, jump = float(coef[0]), float(coef[1])
        if jump <= threshold or a <= 0:
            continue
        sse = float(np.sum((y - design @ coef) ** 2))
        if best is None or sse < best[3]:
            best = (a, j, jump, sse)
    return best


def _trend(ctx: Context, nights: Nights, m: np.ndarray, lo: int) -> Change | None:
    """A slowly growing leak: the Theil-Sen slope of the last ``trend_nights`` nights
    (from night ``lo``), positive at ``trend_confidence``, that rose by at least
    ``trend_pct`` of the mean input and the allowance; onset where the line leaves
    the baseline of the nights before."""
    from scipy.stats import theilslopes

    s = ctx.settings
    n = len(m)
    start = max(lo, n - s.trend_nights)
    x = np.arange(start, n, dtype=float)
    y = m[start:]
    ok = ~np.isnan(y)
    if ok.sum() < max(14, s.trend_nights // 2):
        return None
    slope, icept, low, _ = theilslopes(y[ok], x[ok], alpha=s.trend_confidence)
    rise = slope * (n - 1 - start)
    needed = max(ctx.allowance, s.trend_pct / 100 * ctx.mean_input)
    if low <= 0 or rise < needed:
        return None
    before = ctx.baseline(m, nights.weekend, start)
    line = icept + slope * np.arange(n)
    if before is None:
        before = Baseline(float(line[start]), float(line[start]), max(ctx.step, 1e-9))
    level = (before.weekday + before.weekend) / 2
    k = int(np.clip(math.ceil((level - icept) / slope), 0, n - 1)) if slope > 0 else start
    size = float(line[n - 1] - level)
    if size < needed:
        return None
    resid = y[ok] - line[start:][ok]
    spread = max(MAD * float(np.median(np.abs(resid))), before.spread, 1e-9)
    return Change("background_leak", k, n - 1, size, float(rise / spread), before, True)


def _onset(data: GroupData, nights: Nights, change: Change) -> int:
    """Hour index the change began: between the last night before it and the end of
    its first night, the hour after which the flow stays above the same hours of
    the earlier days by about the step (their median per local hour). A ramp
    starts at its first night."""
    k = change.k
    lo = int(nights.stop[k - 1]) if k >= 1 else int(nights.first[k])
    hi = int(nights.stop[k])
    if change.kind != "burst" or hi <= lo:
        return int(nights.first[k]) if change.kind != "burst" else lo
    series = data.imbalance
    earlier = np.arange(lo) if lo else np.zeros(0, np.int64)
    hours = data.local_hour
    profile = np.full(24, np.nan)
    for h in range(24):
        v = series[earlier[hours[earlier] == h]]
        v = v[~np.isnan(v)]
        if len(v) >= 3:
            profile[h] = float(np.median(v[-28:]))
    u = series[lo:hi] - profile[hours[lo:hi]] - change.size / 2
    u = np.nan_to_num(u)
    tail = np.cumsum(u[::-1])[::-1]  # sum of u from each hour to the end of the first night
    return lo + int(np.argmax(tail)) if len(tail) else lo


def _series(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), 6) for v in values]


@dataclass
class NightFlowDetector(GroupDetector):
    """A leak in the group's network, from the night flow of its imbalance: a burst
    (a step) or a growing background leak (a slope), with its onset, size, duration
    and volume lost so far, and the evidence it was judged on.

    Settings per group (``settings_for``): a preset for the kind of group
    (``night_flow_settings``) with the configured and API-set values on top."""

    settings_for: Callable[[Group, bool], NightFlowSettings] | None = None
    """(group, members metered) -> its settings; None: the preset the group's kind gets."""
    before_run: Callable[[], Awaitable[None]] | None = None
    """Called before each run (the plugin loads the API-set settings)."""
    history_days: int = 84
    """Days of history each run looks at (longer than the scheduler's window: a
    spread read from weeks of nights, a baseline of four and the nights since)."""
    accepted: Sequence[Accepted] = field(default_factory=tuple)
    """Accepted leaks of the group judged by ``detect_group`` (``detect`` reads them from storage)."""
    name: str = "group-leak"

    def settings(self, data: GroupData) -> NightFlowSettings:
        metered = bool(data.values.shape[0]) or bool(np.any(np.nan_to_num(data.others) != 0))
        if self.settings_for is not None:
            return self.settings_for(data.group, metered)
        return resolve(preset_for(data.group.level, metered))

    async def detect(self, run: DetectionRun) -> list[Finding]:
        if self.before_run is not None:
            await self.before_run()
        found: list[Finding] = []
        for data in await run.scope.windows(run.queries, run.tz, run.tags, self.history_days):
            accepted = await accepted_leaks(run.queries, data.group.group_id, self.name)
            found += await asyncio.to_thread(self.analyse, data, self.settings(data), accepted)
        return found

    def detect_group(self, data: GroupData) -> list[Finding]:
        return self.analyse(data, self.settings(data), self.accepted)

    def analyse(self, data: GroupData, s: NightFlowSettings, accepted: Sequence[Accepted] = ()) -> list[Finding]:
        imbalance = data.imbalance
        nights = nights_of(data, imbalance, s.night, s.statistic)
        if len(nights) < s.min_nights + 1:
            return []
        m = nights.value.copy()
        ends = data.t[np.minimum(nights.stop, data.hours) - 1] + HOUR
        lo, trend_lo = 0, 0
        for a in accepted:  # the accepted leak is the new normal: earlier nights as if it had run
            m[ends <= a.start] += a.rate
            lo = max(lo, int(np.searchsorted(ends, a.start, side="right")))
            trend_lo = max(trend_lo, int(np.searchsorted(ends, a.since, side="right")))
        use = nights.use[~np.isnan(nights.use)]
        metered = float(np.median(use)) if len(use) and data.values.shape[0] else 0.0
        mean_input = float(np.nanmean(data.input)) if np.any(~np.isnan(data.input)) else 0.0
        step = max(resolution(data.input), resolution(imbalance))
        ctx = Context(s, max(mean_input, 0.0), step, metered or s.allowance_lph / LITRES,
                      max(s.min_lph / LITRES, s.min_pct / 100 * max(mean_input, 0.0)))
        ctx.prepare(m, nights.weekend)
        changes: list[Change] = []
        start = lo
        while start < len(m) and len(changes) < 3:  # an ended change, then what came after it
            found = _steps(ctx, nights, m, start)
            if not found:
                break
            changes += found
            if found[0].ongoing:
                break
            start = found[0].e + 1 + s.end_nights
        flat = m.copy()
        for change in changes:  # the steps taken off, so that they are no slope
            if change.kind == "burst":
                flat[change.k:change.e + 1] -= change.size
        out = [self._finding(data, nights, m, ends, ctx, change) for change in changes]
        if not any(c.kind == "background_leak" and c.ongoing for c in changes):
            trend = _trend(ctx, nights, flat, max(lo, trend_lo))
            if trend is not None:
                out.append(self._finding(data, nights, flat, ends, ctx, trend))
        return out

    def _finding(self, data: GroupData, nights: Nights, m: np.ndarray, ends: np.ndarray, ctx: Context,
                 change: Change) -> Finding:
        first = _onset(data, nights, change)
        start = int(data.t[first])
        end = int(ends[change.e])
        hours = max((end - start) / HOUR, 1.0)
        rate = change.size
        volume = rate * hours if change.kind == "burst" else rate * hours / 2
        base = change.baseline
        s = ctx.settings
        one_night = max(s.sensitivity * base.spread, ctx.allowance)
        baseline = np.full(len(m), np.nan)
        for j in range(len(m)):  # each night's own baseline before the change, the change's from it on
            if j < change.k:
                b = ctx.baseline(m, nights.weekend, j)
                baseline[j] = np.nan if b is None else float(b.at(nights.weekend[j:j + 1])[0])
            else:
                baseline[j] = float(base.at(nights.weekend[j:j + 1])[0])
        evidence = {
            "night_hours": list(s.night), "statistic": s.statistic, "nights": [int(t) for t in ends],
            "night_flow": _series(m),
            "baseline": _series(baseline), "threshold": _series(baseline + one_night),
            "spread": round(base.spread, 6), "resolution": round(ctx.step, 6),
            "legitimate_night_use": round(ctx.legitimate, 6), "allowance": round(ctx.allowance, 6),
            "onset": start, "size": round(rate, 6), "score": round(change.score, 2),
        }
        # An ongoing leak states no end: the event goes on to the report's time, not to the last night.
        info = {"rate_lph": round(rate * LITRES, 2), "rate": round(rate, 6), "start": start,
                "end": None if change.ongoing else end,
                "ongoing": change.ongoing, "hours": round(hours, 1), "volume_m3": round(volume, 4),
                "money": None if data.group.price is None else round(volume * data.group.price, 2),
                "confidence": round(change.score**2 / (change.score**2 + (2 * s.sensitivity) ** 2), 3),
                "evidence": evidence}
        gid = data.group.group_id
        state = "still running" if change.ongoing else "back at the baseline since (repaired)"
        if change.kind == "burst":
            message = (f"Group {gid}: the night flow stepped up by about {rate * LITRES:.0f} l/h, a burst in its "
                       f"network, {state}; about {volume:.2f} {data.group.unit} lost over {hours:.0f} h.")
            severity = Severity.CRITICAL
        else:
            message = (f"Group {gid}: the night flow grew by about {rate * LITRES:.0f} l/h, a growing background "
                       f"leak, {state}; about {volume:.2f} {data.group.unit} lost over {hours:.0f} h.")
            severity = Severity.WARNING
        return Finding(self.name, gid, change.kind, message, severity, end if not change.ongoing else
                       int(data.t[-1]) + HOUR, {"group_id": gid, **info})


async def accepted_leaks(storage: Any, group_id: str, detector: str) -> list[Accepted]:
    """The group's leaks of ``detector`` an operator accepted, oldest first."""
    found = await storage.findings(subject=group_id, status="accepted", limit=1000)
    out = []
    for f in found:
        data = f.get("data") or {}
        if f.get("detector") != detector or not isinstance(data.get("rate"), int | float):
            continue
        start = f.get("started") if f.get("started") is not None else data.get("start", f["t"])
        since = f.get("ended") if f.get("ended") is not None else f.get("last_seen") or f["t"]
        out.append(Accepted(int(start), float(data["rate"]), int(since)))
    return sorted(out, key=lambda a: a.start)


GroupLeakDetector = NightFlowDetector
"""The name the detector had when it lived with the meter checks."""
