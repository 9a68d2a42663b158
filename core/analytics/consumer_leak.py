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

from balans_edge.core.analytics.base import GroupDetector
from balans_edge.core.analytics.data import GroupData
from balans_edge.core.analytics.meter_checks import LITRES, _confidence, _finding, _latest_runs, _money
from balans_edge.core.components import Finding
from balans_edge.core.model import Status
from balans_edge.core.times import HOUR


def _onset_of_floor(stretch: np.ndarray, share: float = 0.75) -> int:
    """Index where a constant flow began within a stretch of continuous flow: the stretch
    may begin with the household's own daytime use before the leak, which dips
    below the floor the leak sets later; the floor is the minimum of the second half."""
    filled = np.where(np.isnan(stretch), np.inf, stretch)
    floor = float(filled[len(filled) // 2:].min())
    suffix_min = np.minimum.accumulate(filled[::-1])[::-1]
    return int(np.argmax(suffix_min >= share * floor))


@dataclass
class ConsumerLeakDetector(GroupDetector):
    """Continuous flow at a consumer's meter: a running toilet or a dripping pipe.

    People sleep and leave home, so a healthy household's meter stands still
    for at least an hour now and then; a leak keeps it turning. A big family's
    night use can stay above a few litres an hour for a day, so a low rate
    needs a longer stretch: over many simulated buildings no leak-free meter
    stayed above 5 l/h for 48 h (2 in 4,000 meter-months) nor above 8 l/h for
    24 h (none), while a 10 l/h leak is above both from its first hour.
    """

    min_lph: float = 5.0
    """Lowest flow counted as continuous over ``min_hours``."""
    min_hours: int = 48
    fast_lph: float = 8.0
    """A higher flow that is convincing sooner, over ``fast_hours``."""
    fast_hours: int = 24
    min_pulses: float = 2.0
    """Resolution: a threshold is never below this many pulses an hour."""
    min_rate_share: float = 0.8
    """A stretch is reported only when its leak estimate (the household's own night use
    taken off) is at least this share of ``min_lph``: a big family is no leak."""
    quantile: float = 0.05
    """Low quantile of hourly flow that the leak shifts (its estimate)."""
    history_hours: int = 48
    """Known hours before the stretch needed to take the household's own night use off."""
    natural_p: float = 1e-6
    """How unlikely a stretch must be for the household as it was: see ``_convincing``.
    Every meter is tested on every run, so the bar is high: over 240 simulated
    buildings 1e-4 let three heavy households (30-40 l/h) through as leaks, 1e-6
    none, and still found 29 of 30 leaks of 10-40 l/h within 48 h."""
    night: tuple[int, int] = (1, 5)
    """Local hours [from, to) in which a household is usually quiet."""
    name: str = "consumer-leak"

    def detect_group(self, data: GroupData) -> list[Finding]:
        values = data.values
        known = ~np.isnan(values)
        floor = self.min_pulses * data.pulse_weight[:, None]
        runs: dict[int, tuple[int, int]] = {}
        for lph, hours in ((self.min_lph, self.min_hours), (self.fast_lph, self.fast_hours)):
            threshold = np.maximum(lph / LITRES, floor)
            found = _latest_runs((values >= threshold) | ~known, known, hours)
            for r, run in found.items():
                if r not in runs or run[0] < runs[r][0]:
                    runs[r] = run
        sensor = (data.status & Status.LEAK) != 0
        out = []
        for r in sorted(set(runs) | set(np.flatnonzero(sensor.any(axis=1)).tolist())):
            if r in runs and not sensor[r].any() and not self._convincing(data, r, runs[r]):
                continue
            found = self._finding(data, r, runs.get(r), sensor[r])
            if found.data.get("sensor") or found.data["leak_lph"] >= self.min_rate_share * self.min_lph:
                out.append(found)
        return out

    def _finding(self, data: GroupData, r: int, run: tuple[int, int] | None, sensor: np.ndarray) -> Finding:
        flagged = np.flatnonzero(sensor)
        first, stop = run if run is not None else (int(flagged[0]), data.hours)
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

    def _convincing(self, data: GroupData, r: int, run: tuple[int, int]) -> bool:
        """Could the household, as it was before, have kept the meter turning this long?

        The share q of its night hours outside the stretch that were quiet makes a
        night hour without a pause happen with probability 1 - q; the stretch is a
        leak when its night hours without a pause are less likely than
        ``natural_p``. A household that was never quiet at night (a large family, a
        small business) cannot be told from a leak by continuity: no finding. Too
        few nights outside the stretch to judge: the thresholds alone decide.
        """
        first, stop = run
        values, hour = data.values[r], data.local_hour
        at_night = (hour >= self.night[0]) & (hour < self.night[1])
        outside = at_night & ~np.isnan(values)
        outside[first:stop] = False
        before = values[outside]
        if len(before) < self.history_hours // 6:  # about two nights
            return True
        # Quiet means below the level the stretch never left: a big leak keeps the meter
        # far above what the household's busiest nights show, and convinces sooner.
        stretch = values[first:stop][~np.isnan(values[first:stop])]
        level = 0.8 * float(np.quantile(stretch, self.quantile)) if len(stretch) else 0.0
        threshold = max(self.min_lph / LITRES, self.min_pulses * float(data.pulse_weight[r]), level)
        quiet = float(np.mean(before < threshold))
        if quiet <= 0.0:
            return False
        nights = int(np.count_nonzero(at_night[first:stop] & ~np.isnan(values[first:stop])))
        return quiet >= 1.0 or nights * np.log(1.0 - quiet) <= np.log(self.natural_p)

    def _rate(self, before: np.ndarray, stretch: np.ndarray) -> float:
        """The leak adds a constant to every hour, so it shifts the low quantile of the
        hourly flow by its rate: the household's own night use, seen before the
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
