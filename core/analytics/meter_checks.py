"""Checks of single meters, from one group's window.

Each detector is a pure function of a ``GroupData``. The meter checks look
for what a member meter's own series and the group's imbalance say together:
a meter that stopped or slowed down hides consumption, so the imbalance must
rise by about what the meter stopped registering; a meter that merely shows
less use (a tenant moved out, a family went on holiday) leaves the balance
unchanged and is not a fault. Leaks in the group's network are found from
the imbalance at night (``night_flow.py``); leaks behind a consumer's meter
are metered (``consumer_leak.py``).

Volumes are in the group's unit (m3 for water); rates in the findings are
litres per hour for water, i.e. 1000 x unit per hour.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from balans_edge.core.analytics.base import GroupDetector
from balans_edge.core.analytics.data import GroupData
from balans_edge.core.components import Finding, Severity
from balans_edge.core.model import Quality, Status
from balans_edge.core.times import HOUR

LITRES = 1000.0
"""Litres per m3: rates are reported in l/h because leaks are talked about in l/h."""


# Shared helpers -------------------------------------------------------------


def _money(data: GroupData, volume: float) -> float | None:
    """Money lost at the group's price; None when the group has no price."""
    return None if data.group.price is None else round(volume * data.group.price, 2)


def _confidence(score: float, half: float) -> float:
    """A monotone 0..1 score that is 0.5 at ``half`` and tends to 1: a ranking
    of how clear the evidence is, not a calibrated probability."""
    score = max(score, 0.0)
    return round(score**2 / (score**2 + half**2), 3) if half > 0 else 1.0


def _end(data: GroupData) -> int:
    """Time the window's last hour is over: when a finding about it is made."""
    return int(data.t[-1]) + HOUR if data.hours else 0


def _latest_runs(inside: np.ndarray, known: np.ndarray, need: int) -> dict[int, tuple[int, int]]:
    """Per row, the latest run of ``inside`` hours holding at least ``need`` known hours,
    as {row: (first, stop)} trimmed to known hours. Unknown hours must be marked
    inside by the caller so that a gap neither breaks nor lengthens a run."""
    rows, hours = inside.shape
    if not hours:
        return {}
    idx = np.arange(hours)
    last_break = np.maximum.accumulate(np.where(inside, -1, idx[None, :]), axis=1)
    counted = np.cumsum(known, axis=1)
    padded = np.concatenate([np.zeros((rows, 1), dtype=counted.dtype), counted], axis=1)
    in_run = counted - np.take_along_axis(padded, last_break + 1, axis=1)
    ok = inside & (in_run >= need)
    found: dict[int, tuple[int, int]] = {}
    for r in np.flatnonzero(ok.any(axis=1)):
        h = int(hours - 1 - np.argmax(ok[r, ::-1]))
        first = int(last_break[r, h]) + 1
        after = np.flatnonzero(~inside[r, h:])
        stop = h + int(after[0]) if len(after) else hours
        known_hours = np.flatnonzero(known[r, first:stop]) + first
        found[int(r)] = (int(known_hours[0]), int(known_hours[-1]) + 1)
    return found


def _mean_shift(x: np.ndarray, split: int) -> tuple[float, float]:
    """(mean after - mean before, its standard error) of ``x`` split at hour ``split``,
    ignoring NaN; (0, inf) when either side has fewer than 12 known hours."""
    before, after = x[:split], x[split:]
    before, after = before[~np.isnan(before)], after[~np.isnan(after)]
    if len(before) < 12 or len(after) < 12:
        return 0.0, float("inf")
    se = np.sqrt(before.var(ddof=1) / len(before) + after.var(ddof=1) / len(after))
    return float(after.mean() - before.mean()), float(max(se, 1e-9))


def _finding(detector: str, data: GroupData, subject: str, kind: str, message: str, info: dict[str, Any],
             severity: Severity = Severity.WARNING) -> Finding:
    return Finding(detector, subject, kind, message, severity, _end(data), {"group_id": data.group.group_id, **info})




# 3. Stuck meter -------------------------------------------------------------


@dataclass
class StuckMeterDetector(GroupDetector):
    """A meter whose counter stopped while water still flows through it.

    An empty apartment also registers nothing, so zero alone is no fault: the
    meter must have consumed normally before, and the group's imbalance must
    have risen since by about what it used to register (the water still
    flows, now unmetered).
    """

    min_hours: int = 24
    """Measured hours in a row with zero delta."""
    min_usual_lph: float = 1.0
    """Usual use before the stop below this (or one pulse an hour) is too little to compare."""
    history_hours: int = 48
    """Known hours before the stop needed for the usual use."""
    match: float = 0.5
    """The imbalance must rise by at least this share of the usual use..."""
    max_match: float = 3.0
    """...and at most this multiple of it..."""
    z: float = 3.0
    """...and the rise must be this many standard errors..."""
    align_hours: int = 48
    """...and the imbalance's own change point must lie this close to the stop."""
    name: str = "stuck-meter"

    def detect_group(self, data: GroupData) -> list[Finding]:
        measured = (data.quality == Quality.MEASURED) & ~np.isnan(data.values)
        zero = measured & (data.values == 0)
        runs = _latest_runs(zero | ~measured, zero, self.min_hours)
        out = []
        imbalance = data.imbalance
        for r, (first, stop) in runs.items():
            before = data.values[r, :first]
            if np.count_nonzero(~np.isnan(before)) < self.history_hours:
                continue
            usual = float(np.nanmean(before))
            if usual < max(self.min_usual_lph / LITRES, data.pulse_weight[r]):
                continue
            rise, se = _mean_shift(imbalance[: stop], first)
            if not self.match * usual <= rise <= self.max_match * usual or rise / se < self.z:
                continue  # too small a rise, or far more than the meter ever used: another cause
            shift = change_point(imbalance[:stop])
            if shift is None or abs(shift - first) > self.align_hours:
                continue  # the imbalance rose at another time: an empty flat next to another loss
            out.append(self._finding(data, r, first, stop, usual, rise / se))
        return out

    def _finding(self, data: GroupData, r: int, first: int, stop: int, usual: float, z: float) -> Finding:
        volume = usual * (stop - first)
        meter = data.meter_ids[r]
        info = {"start": int(data.t[first]), "end": int(data.t[stop - 1]) + HOUR, "usual_lph": round(usual * LITRES, 2),
                "rate": round(usual, 6), "volume_m3": round(volume, 4), "money": _money(data, volume),
                "confidence": _confidence(z, 2 * self.z)}
        message = (f"Meter {meter}: registers nothing for {stop - first} h although it used to register about "
                   f"{usual * LITRES:.1f} l/h and the group's imbalance rose by as much; about {volume:.2f} "
                   f"{data.group.unit} unmetered.")
        return _finding(self.name, data, meter, "stuck_meter", message, info)


# 4. Reversed meter ----------------------------------------------------------


@dataclass
class ReverseMeterDetector(GroupDetector):
    """A meter mounted backwards: its counter runs down, and its module may say REVERSE.

    Meters allowed to run backwards (registry flag ``reverse_allowed``: a
    feed-in, a bidirectional meter) are not reported.
    """

    min_hours: int = 3
    """Hours with a negative delta needed without the REVERSE flag (one may be a correction)."""
    name: str = "reverse-meter"

    def detect_group(self, data: GroupData) -> list[Finding]:
        negative = np.nan_to_num(data.values) < 0
        flagged = (data.status & Status.REVERSE) != 0
        hit = (negative.sum(axis=1) >= self.min_hours) | flagged.any(axis=1)
        out = []
        for r in np.flatnonzero(hit):
            meter = data.meter_ids[r]
            if meter in data.reverse_allowed:
                continue
            seen = np.flatnonzero(negative[r] | flagged[r])
            first = int(seen[0])
            volume = float(-np.nansum(np.where(negative[r], data.values[r], 0.0)))
            both = negative[r].any() and flagged[r].any()
            info = {"start": int(data.t[first]), "end": int(data.t[seen[-1]]) + HOUR, "volume_m3": round(volume, 4),
                    "money": _money(data, volume),
                    "confidence": 0.99 if both else 0.9 if negative[r].any() else 0.7}
            message = (f"Meter {meter}: runs backwards ({int(negative[r].sum())} h with a falling counter); "
                       f"about {volume:.2f} {data.group.unit} counted down.")
            out.append(_finding(self.name, data, meter, "reverse_meter", message, info))
        return out


# 5. Module status flags -----------------------------------------------------


STATUS_KINDS: dict[str, Status] = {
    "magnet": Status.MAGNET,
    "tamper": Status.TAMPER,
    "cable_cut": Status.CABLE_CUT,
    "counter_reset": Status.COUNTER_RESET,
}
"""Status flags that are findings on their own: someone at the meter, or a restart that lost pulses."""
ESCALATING = frozenset({"magnet", "tamper", "cable_cut"})
"""Kinds that become critical when they recur: a deliberate act rather than a glitch."""


@dataclass
class ModuleStatusDetector(GroupDetector):
    """What the radio modules report about themselves, once per meter and kind."""

    critical_days: int = 3
    """Different local days with a tampering flag that make it critical."""
    name: str = "module-status"

    def detect_group(self, data: GroupData) -> list[Finding]:
        day = data.local_day
        out = []
        for kind, flag in STATUS_KINDS.items():
            hit = (data.status & flag) != 0
            for r in np.flatnonzero(hit.any(axis=1)):
                hours = np.flatnonzero(hit[r])
                days = len(np.unique(day[hours]))
                severe = kind in ESCALATING and days >= self.critical_days
                meter = data.meter_ids[r]
                info = {"hours": len(hours), "first": int(data.t[hours[0]]), "last": int(data.t[hours[-1]]),
                        "start": int(data.t[hours[0]]), "end": int(data.t[hours[-1]]) + HOUR}
                message = (f"Meter {meter}: module reports {kind.replace('_', ' ')} in {len(hours)} h "
                           f"on {days} day(s).")
                out.append(_finding(self.name, data, meter, kind, message, info,
                                    Severity.CRITICAL if severe else Severity.WARNING))
        return out


# 6. Consumption drop with a matching imbalance rise -----------------------------


def _lagged_median(values: np.ndarray, lag: int, count: int, need: int) -> np.ndarray:
    """(M, H) median of the values ``lag``, 2 x ``lag`` .. ``count`` x ``lag`` hours
    earlier; NaN where fewer than ``need`` of them are known. A loop over lags only."""
    rows, hours = values.shape
    stack = np.full((count, rows, hours), np.nan)
    for k in range(1, count + 1):
        if k * lag < hours:
            stack[k - 1, :, k * lag:] = values[:, : hours - k * lag]
    enough = np.count_nonzero(~np.isnan(stack), axis=0) >= need
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # hours without history: NaN, masked below
        median = np.nanmedian(stack, axis=0) if count else np.full((rows, hours), np.nan)
    return np.where(enough, median, np.nan)


def forecast(values: np.ndarray, weeks: int = 4, days: int = 14) -> np.ndarray:
    """(M, H) each hour's expected consumption from the same hour of the earlier weeks
    (median, at least 2 of them), else of the earlier days (at least 3): robust to a
    shower or a party, and using only the past so that a change shows up in the residual."""
    weekly = _lagged_median(values, 168, weeks, 2)
    daily = _lagged_median(values, 24, days, 3)
    return np.where(np.isnan(weekly), daily, weekly)


def cusum_down(residual: np.ndarray, k: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided CUSUM S_h = max(0, S_{h-1} + r_h - k) of each row, in closed form
    (S_h = C_h - min(0, min_{j<=h} C_j) with C the cumulative sum of r - k), and for
    each hour the first hour of the excursion it belongs to."""
    rows, hours = residual.shape
    c = np.cumsum(residual - k, axis=1)
    padded = np.concatenate([np.zeros((rows, 1)), c], axis=1)  # C_{-1} = 0
    low = np.minimum.accumulate(padded, axis=1)
    at_low = padded == low
    idx = np.where(at_low, np.arange(hours + 1)[None, :], 0)
    onset = np.maximum.accumulate(idx, axis=1)  # last position of the running minimum
    return c - low[:, 1:], onset[:, :-1] if hours else onset


def change_point(y: np.ndarray, min_side: int = 24) -> int | None:
    """Index where the mean of ``y`` (NaN skipped) shifts most: the split with the
    largest standardised difference of the means on either side, each side at
    least ``min_side`` known values long."""
    idx = np.flatnonzero(~np.isnan(y))
    v = y[idx]
    n = len(v)
    if n < 2 * min_side:
        return None
    c = np.cumsum(v)
    k = np.arange(1, n)
    score = np.abs((c[-1] - c[:-1]) / (n - k) - c[:-1] / k) * np.sqrt(k * (n - k) / n)
    score[: min_side - 1] = 0.0
    score[n - min_side :] = 0.0
    return int(idx[int(np.argmax(score)) + 1])


def _by_local_hour(data: GroupData, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(24,) mean of ``x`` per local hour of the day over ``mask`` (NaN skipped; NaN where none)."""
    ok = mask & ~np.isnan(x)
    total = np.bincount(data.local_hour[ok], weights=x[ok], minlength=24)
    count = np.bincount(data.local_hour[ok], minlength=24)
    return np.divide(total, count, out=np.full(24, np.nan), where=count > 0)


def _profile_correlation(data: GroupData, values: np.ndarray, imbalance: np.ndarray, first: int) -> float:
    """Correlation over the hours of the day of a meter's drop (before - after) with the
    imbalance's rise (after - before) at hour ``first``; 0 when either has no shape."""
    after = np.arange(data.hours) >= first
    drop = _by_local_hour(data, values, ~after) - _by_local_hour(data, values, after)
    rise = _by_local_hour(data, imbalance, after) - _by_local_hour(data, imbalance, ~after)
    ok = ~np.isnan(drop) & ~np.isnan(rise)
    if ok.sum() < 12 or drop[ok].std() == 0 or rise[ok].std() == 0:
        return 0.0
    return float(np.corrcoef(drop[ok], rise[ok])[0, 1])


@dataclass
class ConsumptionDropDetector(GroupDetector):
    """A meter that registers less while the group loses more: slowed (a magnet, a worn
    impeller) rather than used less.

    A lasting drop against the meter's own forecast is found with a one-sided
    CUSUM; it is a finding only if the group's imbalance rose at the same time
    by a matching amount. Without that rise the drop is a change of behaviour
    (a holiday, a tenant moving out) and no one's business.
    """

    k: float = 0.15
    """CUSUM allowance, in units of the meter's typical level per hour."""
    h: float = 12.0
    """CUSUM decision threshold, same units."""
    min_drop_pct: float = 20.0
    """Smaller drops are not reported."""
    match: float = 0.67
    """The imbalance must rise by at least this share of the drop..."""
    max_match: float = 1.5
    """...and at most this multiple of it (a much bigger rise has another cause: with
    looser bounds, households that happen to use less next to another loss were named)..."""
    z: float = 3.0
    """...and the rise must be this many standard errors."""
    history_hours: int = 72
    """Known hours before the drop needed to compare with."""
    min_profile_correlation: float = 0.1
    """The water a meter stops registering shows up in the imbalance at the hours it
    flows: the drop's profile over the hours of the day must go with the rise's.
    Over 240 simulated buildings this kept 47 of 50 right findings and dropped 11
    of 17 households that happened to use less when a loss began (a drip at night
    rises when households use water by day)."""
    align_hours: int = 48
    """The imbalance's own change point must lie this close to the drop's start."""
    name: str = "consumption-drop"

    def detect_group(self, data: GroupData) -> list[Finding]:
        values = data.values
        expected = forecast(values)
        counted = np.maximum(np.count_nonzero(~np.isnan(values), axis=1), 1)
        level = np.maximum(np.nansum(values, axis=1) / counted, data.pulse_weight)  # typical use per hour
        residual = np.nan_to_num((expected - values) / level[:, None])  # a drop is positive
        s, onset = cusum_down(residual, self.k)
        alarm = s > self.h
        imbalance = data.imbalance
        shift = change_point(imbalance)
        candidates = []
        for r in np.flatnonzero(alarm.any(axis=1)):
            first = int(onset[r, int(np.argmax(alarm[r]))])
            found = self._check(data, int(r), first, imbalance, shift)
            if found is not None:
                candidates.append(found)
        # One rise of the imbalance has one cause: the meter whose drop matches it best.
        # Other meters that happen to use less at the same time are households, not
        # losses; and when a stopped meter matches best, it is the stuck-meter detector's.
        best = min(candidates, key=lambda c: c[0], default=None)
        return [] if best is None or best[1] is None else [best[1]]

    def _check(self, data: GroupData, r: int, first: int, imbalance: np.ndarray,
               shift: int | None) -> tuple[float, Finding | None] | None:
        """(how far the drop is from the imbalance's rise, the finding), the drop
        measured as mean before - mean after; a stopped or reversed meter competes
        for the rise but is left to its own detector."""
        before, after = data.values[r, :first], data.values[r, first:]
        after_known = after[~np.isnan(after)]
        stopped = not (after_known > 0).any() or bool((after_known < 0).any())
        # A stopped meter blocks with less history: an apartment that used water for
        # half a day and then nothing while the imbalance rose is the stuck one.
        needed = 12 if stopped else self.history_hours
        if np.count_nonzero(~np.isnan(before)) < needed or len(after_known) < 12:
            return None
        usual = float(np.nanmean(before))
        drop = usual - float(after_known.mean())
        if usual <= 0 or drop / usual * 100 < self.min_drop_pct:
            return None
        rise, se = _mean_shift(imbalance, first)
        if not self.match * drop <= rise <= self.max_match * drop or rise / se < self.z:
            return None
        if shift is None or abs(shift - first) > self.align_hours:
            return None  # the imbalance changed at another time: another cause, a coincidental drop
        if stopped:
            return abs(rise - drop), None
        if _profile_correlation(data, data.values[r], imbalance, first) < self.min_profile_correlation:
            return None
        volume = drop * (data.hours - first)
        meter = data.meter_ids[r]
        pct = drop / usual * 100
        info = {"start": int(data.t[first]), "drop_pct": round(pct, 1), "rate": round(drop, 6),
                "volume_m3": round(volume, 4),
                "money": _money(data, volume), "confidence": _confidence(rise / se, 2 * self.z)}
        message = (f"Meter {meter}: registers {pct:.0f} % less (about {drop * LITRES:.1f} l/h) while the group's "
                   f"imbalance rose by about {rise * LITRES:.1f} l/h; about {volume:.2f} {data.group.unit} "
                   f"unmetered.")
        return abs(rise - drop), _finding(self.name, data, meter, "consumption_drop", message, info)
