"""A leak behind a consumer's meter: a running toilet, a dripping pipe.

The water goes through the meter and is registered (and paid for), so the
imbalance does not show it; the meter's own series does. A leak adds a
constant flow to every hour: the hours in which the household drew nothing,
which every household has (people sleep and leave home), stop showing zero
and show the leak's rate instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from balans_edge.core.analytics.base import GroupDetector
from balans_edge.core.analytics.data import GroupData
from balans_edge.core.analytics.meter_checks import LITRES, _confidence, _finding, _latest_runs, _money
from balans_edge.core.components import Finding
from balans_edge.core.model import Quality, Status
from balans_edge.core.times import HOUR


def _onset_of_floor(stretch: np.ndarray, share: float = 0.75) -> int:
    """Index where a constant flow began within a stretch of continuous flow: the stretch
    may begin with the household's own daytime use before the leak, which dips
    below the floor the leak sets later; the floor is the minimum of the second half."""
    filled = np.where(np.isnan(stretch), np.inf, stretch)
    floor = float(filled[len(filled) // 2:].min())
    suffix_min = np.minimum.accumulate(filled[::-1])[::-1]
    return int(np.argmax(suffix_min >= share * floor))


def _quiet_shares(quiet: np.ndarray, seen: np.ndarray, hour: np.ndarray, confidence: float) -> np.ndarray:
    """(24,) per local hour of the day, a low estimate of the share of a household's
    hours that were ``quiet``, from its ``seen`` hours: pooled with the hours either
    side (a household's day is smooth, and three hours give three times the
    samples), and taken at the lower bound that the share exceeds with
    ``confidence`` (the Jeffreys interval), so that a share seen on few hours
    claims little: 0 for an hour of the day never seen."""
    k = np.bincount(hour[quiet & seen], minlength=24).astype(float)
    n = np.bincount(hour[seen], minlength=24).astype(float)
    k = k + np.roll(k, 1) + np.roll(k, -1)
    n = n + np.roll(n, 1) + np.roll(n, -1)
    return np.where(n > 0, beta.ppf(1.0 - confidence, k + 0.5, n - k + 0.5), 0.0)


@dataclass
class ConsumerLeakDetector(GroupDetector):
    """Continuous flow at a consumer's meter: a running toilet or a dripping pipe.

    People sleep and leave home, so a healthy household's meter shows less than
    a few litres in many hours, at night in most; a leak adds a constant flow
    to every hour, so from its onset the meter never again shows less than the
    leak's rate. A stretch of at least ``min_hours`` measured hours at
    ``min_lph`` or more is a candidate. Its floor (the least it showed since
    the flow began) is held against the household as it was before: how often,
    at each hour of the day, it showed less than that floor. The chance that
    the household kept above the floor for every hour of the stretch is the
    product of those hours' chances; under ``natural_p`` the stretch is
    continuous beyond what the household does. Every hour counts, not the
    night's alone: a day of a 10 l/h leak on a household of 5-12 litre uses is
    about 20 nats of evidence (the bar is 14), so a daily run reports it within
    48 h of its onset. A household that was seldom below the floor (a big
    family, a small business) gives little evidence: no finding, unless the
    flow lasts.

    A leak is also constant: in the hours the household draws nothing the meter
    shows the leak's rate and no more, so the stretch sits on its floor about as
    often as the household used to be quiet (``flat_share``). A new habit that
    keeps the meter turning at night draws a varying volume each hour, and few
    of its hours sit on its least: no finding.

    Without history before the stretch (a leak older than the window) the
    rates alone decide: over many simulated buildings no leak-free meter stayed
    above 5 l/h for 48 h (2 in 4,000 meter-months) nor above 8 l/h for 24 h
    (none).
    """

    min_lph: float = 5.0
    """Lowest flow counted as continuous."""
    min_hours: int = 24
    """Measured hours the flow must last: a daily run then reports a leak within 48 h."""
    min_pulses: float = 2.0
    """Resolution: the flow counted as continuous is never below this many pulses an hour."""
    natural_p: float = 1e-6
    """How unlikely the stretch must be for the household as it was. Every meter is
    tested on every run, so the bar is high: over 3,840 simulated buildings
    (250,000 meters, 42 days each, run daily) the least likely stretch of a
    leak-free meter had a chance of 3e-6, while 478 of 480 leaks of 10-40 l/h
    went under the bar within 48 h."""
    confidence: float = 0.99
    """The household's quiet shares are taken this sure not to be overstated: a share
    seen on a few days claims little."""
    history_hours: int = 48
    """Measured hours before the stretch needed to judge it against the household; with
    fewer, the hours after a stretch that is over count too (a leak repaired)..."""
    min_use_share: float = 0.1
    """...when the meter turned in at least this share of them: a meter stuck since, or
    a flat left empty, shows no household to judge by."""
    lone_lph: float = 8.0
    """Without that history: a flow that is a leak after ``min_hours``..."""
    lone_hours: int = 48
    """...and how long a flow of ``min_lph`` must last."""
    min_rate_share: float = 0.8
    """A stretch is reported only when its leak estimate (the household's own low use
    taken off) is at least this share of ``min_lph``: a big family is no leak."""
    quantile: float = 0.05
    """Low quantile of hourly flow that the leak shifts (its estimate)."""
    tolerance: float = 0.1
    """An hour shows the leak's floor up to this share of it either side (at least a
    pulse, as a constant flow's hourly count varies by one): a real leak follows
    the pressure a little."""
    flat_share: float = 0.5
    """The stretch must sit on its floor in at least this share of the hours the
    household used to be quiet in (each hour weighed by how often it was quiet
    then)..."""
    flat_min: float = 2.0
    """...when those hours are enough to tell (their weights' squares add up to this):
    over 478 simulated leaks of 10-40 l/h the least share was 0.71; of 36 busy
    households that took to drawing 5-45 litres in every hour of the night, and
    whose meters never stood still since, 1 sat on a floor (21 were leaks by
    continuity alone)."""
    name: str = "consumer-leak"

    def detect_group(self, data: GroupData) -> list[Finding]:
        values = data.values
        # An estimated hour is interpolated across a gap: it cannot show a pause.
        measured = ~np.isnan(values) & (data.quality == Quality.MEASURED)
        threshold = np.maximum(self.min_lph / LITRES, self.min_pulses * data.pulse_weight)[:, None]
        runs = _latest_runs((values >= threshold) | ~measured, measured, self.min_hours)
        sensor = (data.status & Status.LEAK) != 0
        out = []
        for r in sorted(set(runs) | set(np.flatnonzero(sensor.any(axis=1)).tolist())):
            leak = self._leak(data, measured[r], r, runs[r]) if r in runs else None
            if leak is None and not sensor[r].any():
                continue
            found = self._finding(data, r, leak, sensor[r])
            if found.data.get("sensor") or found.data["leak_lph"] >= self.min_rate_share * self.min_lph:
                out.append(found)
        return out

    def _leak(self, data: GroupData, measured: np.ndarray, r: int, run: tuple[int, int]) -> tuple[int, int] | None:
        """(onset, stop) of the constant flow in a stretch of continuous flow, when the
        household as it was cannot explain it; None when it can."""
        first, stop = run
        values, hour = data.values[r], data.local_hour
        onset = _onset_of_floor(np.where(measured[first:stop], values[first:stop], np.nan)) + first
        if np.count_nonzero(measured[onset:stop]) < self.min_hours:
            onset = first  # too short a floor to judge alone: the whole stretch
        level = float(values[onset:stop][measured[onset:stop]].min())
        lone = level >= self.lone_lph / LITRES or np.count_nonzero(measured[first:stop]) >= self.lone_hours
        seen = measured.copy()
        seen[onset:] = False  # the household as it was, before the flow began
        if np.count_nonzero(seen) < self.history_hours:
            if stop == data.hours:
                return (onset, stop) if lone else None  # a flow older than the window
            # Over, with too little before it (a leak since repaired): the hours after it
            # stand in for the household, a weaker witness (it may have changed since), so
            # the rates must hold as without history too.
            after = measured.copy()
            after[:stop] = False
            seen |= after
            if (not lone or np.count_nonzero(seen) < self.history_hours
                    or np.mean(values[after] > 0) < self.min_use_share):
                return None
        inside = measured[onset:stop]
        if self._evidence(values < level, seen, hour, hour[onset:stop][inside]) < -np.log(self.natural_p):
            return None
        return (onset, stop) if self._flat(values[onset:stop][inside], hour[onset:stop][inside], values, seen, hour,
                                           float(data.pulse_weight[r])) else None

    def _evidence(self, below: np.ndarray, seen: np.ndarray, hour: np.ndarray, inside: np.ndarray) -> float:
        """-log of the chance that the household, as its ``seen`` hours show it, was not
        ``below`` the floor in any of the stretch's hours (``inside``: their local
        hours of the day), taking the hours as independent."""
        quiet = _quiet_shares(below, seen, hour, self.confidence)
        return -float(np.log1p(-quiet[inside]).sum())

    def _flat(self, x: np.ndarray, at: np.ndarray, values: np.ndarray, seen: np.ndarray, hour: np.ndarray,
              pulse: float) -> bool:
        """Does the stretch (``x`` at local hours ``at``) sit on one floor in the hours the
        household used to be quiet in? A leak is constant: in an hour the household
        draws nothing the meter shows the leak's rate and no more, so the hours the
        household was quiet in show the floor (the least of the stretch's later half,
        where the leak is surely on, up to ``tolerance``), each about as often as
        it was quiet then. A new habit that keeps the meter turning at night draws
        a varying volume each hour, and its least is a chance low: its night hours
        seldom sit on it. The hours are weighed by their quiet share, as the hours
        the household was seldom quiet in tell little either way."""
        floor = float(x[len(x) // 2:].min())
        tol = max(pulse, self.tolerance * floor)
        quiet = _quiet_shares(values <= tol, seen, hour, self.confidence)[at]
        expected = float(quiet @ quiet)
        return expected < self.flat_min or float(quiet @ (np.abs(x - floor) <= tol)) >= self.flat_share * expected

    def _finding(self, data: GroupData, r: int, run: tuple[int, int] | None, sensor: np.ndarray) -> Finding:
        flagged = np.flatnonzero(sensor)
        first, stop = run if run is not None else (int(flagged[0]), data.hours)
        if run is None:
            first = _onset_of_floor(data.values[r, first:stop]) + first
        rate = self._rate(data.values[r, :first], data.values[r, first:stop])
        volume = rate * (stop - first)
        score = rate / (self.min_lph / LITRES) * (stop - first) / self.min_hours
        info = {"leak_lph": round(rate * LITRES, 2), "start": int(data.t[first]), "end": int(data.t[stop - 1]) + HOUR,
                "rate": round(rate, 6), "volume_m3": round(volume, 4), "money": _money(data, volume),
                "confidence": max(_confidence(score, 1.0), 0.9 * bool(len(flagged)))}
        if len(flagged):
            info["sensor"] = True
        meter = data.meter_ids[r]
        how = "its leak sensor is wet" if run is None else f"it has not stood still for {stop - first} h"
        message = (f"Meter {meter}: continuous flow of about {rate * LITRES:.1f} l/h, {how}; "
                   f"about {volume:.2f} {data.group.unit} since the leak began.")
        return _finding(self.name, data, meter, "consumer_leak", message, info)

    def _rate(self, before: np.ndarray, stretch: np.ndarray) -> float:
        """The leak adds a constant to every hour, so it shifts the low quantile of the
        hourly flow by its rate: the household's own low use, seen before the
        stretch, is taken off. Without enough history the stretch's minimum (leak
        plus the least the household used) is the estimate."""
        stretch = stretch[~np.isnan(stretch)]
        before = before[~np.isnan(before)]
        if not len(stretch):
            return 0.0
        low = float(np.quantile(stretch, self.quantile))
        if len(before) >= self.history_hours:
            return max(low - float(np.quantile(before, self.quantile)), 0.0)
        return max(float(stretch.min()), 0.0)
