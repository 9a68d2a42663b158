"""How meters register flow: below their starting flow, and by a clock that drifts.

Two faults that lose or move water without any single hour looking wrong,
both found by regressing the group's hourly imbalance on what the members'
series say:

- A meter's impeller does not turn under its starting flow (a few litres an
  hour for a household water meter): a dripping tap or cistern then flows
  unmetered in every hour the household draws nothing else, and is
  registered in the hours it does. The imbalance therefore grows with the
  number of members standing still in an hour: ``y = a + b * idle + c *
  consumed``, with ``b`` the flow lost per meter at rest. A leak in the
  network is in ``a`` (steady) and a loss shaped like consumption (an
  unmetered tap, a slowed meter) in ``c`` or against ``idle``; what is left in
  ``b`` is what the members' count explains, which is the issue's "steady small
  night imbalance matching the members' count".
- A module whose clock runs fast latches its counters early: the reading
  stamped with an hour holds ``1 - f`` of that hour's use and ``f`` of the
  hour before (``f`` the offset as a share of an hour), so the imbalance gets
  ``f * (use_h - use_h-1)``; a slow clock gives ``-f * (use_h+1 - use_h)``.
  Regressing the imbalance on a member's own hour-to-hour differences finds
  ``f``; with a term growing in time it also finds the drift per day. Daily
  totals stay right, but hourly balances, time-of-use tariffs and the
  detectors that read hours (``profile-tamper``) go wrong.

Both need fine meters: a meter with coarse pulses (10 l) shows a zero hour
while up to a pulse of use builds up unseen, which looks like a loss at rest
and like a slow clock; such meters are left out (``max_pulse_litres``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from balans_edge.core.analytics.base import GroupDetector
from balans_edge.core.analytics.data import GroupData
from balans_edge.core.analytics.meter_checks import LITRES, _confidence, _finding, _money
from balans_edge.core.components import Finding, Severity
from balans_edge.core.model import Quality
from balans_edge.core.times import HOUR


def least_squares(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ordinary least squares of ``y`` (n,) on each stack of regressors ``x`` (..., n, p)
    at once: (coefficients (..., p), their covariance (..., p, p)). A singular stack
    (a regressor without variation) gets NaN."""
    n, p = x.shape[-2:]
    xtx = np.einsum("...np,...nq->...pq", x, x)
    xty = np.einsum("...np,n->...p", x, y)
    singular = np.linalg.cond(xtx) > 1e12
    xtx = np.where(singular[..., None, None], np.eye(p), xtx)
    inverse = np.linalg.inv(xtx)
    coef = np.einsum("...pq,...q->...p", inverse, xty)
    residual = y - np.einsum("...np,...p->...n", x, coef)
    sigma2 = np.einsum("...n,...n->...", residual, residual) / max(n - p, 1)
    cov = sigma2[..., None, None] * inverse
    coef = np.where(singular[..., None], np.nan, coef)
    return coef, np.where(singular[..., None, None], np.nan, cov)


def offset_share(beta: np.ndarray) -> np.ndarray:
    """The clock's offset as a share f of an hour from the fitted coefficient.

    The fit sees registered volumes, themselves shifted: with hourly uses
    independent from hour to hour the coefficient is
    beta = f (2 - 3f) / (6f^2 - 6f + 2), which is f for small offsets but 0.36 at
    f = 0.25. Solved for f on the branch through 0 (the coefficient peaks at
    0.577 near f = 0.37; beyond it the offset is reported as half an hour, the
    most a shift between two hours can be told apart from)."""
    b = np.minimum(np.abs(beta), 1 / np.sqrt(3))
    f = (3 * b + 1 - np.sqrt(np.maximum(1 - 3 * b**2, 0.0))) / (6 * b + 3)
    return np.sign(beta) * np.where(np.abs(beta) >= 1 / np.sqrt(3), 0.5, f)


def _fine(data: GroupData, max_pulse_litres: float) -> np.ndarray:
    """(M,) members that are seen (not blind) and resolve a few litres."""
    return ~data.blind & (data.pulse_weight * LITRES <= max_pulse_litres)


@dataclass
class StartingFlowDetector(GroupDetector):
    """Water lost under the members' starting flow (dripping taps and cisterns)."""

    min_lph_per_meter: float = 0.3
    """Smallest flow lost per meter at rest that counts."""
    min_lph: float = 5.0
    """...and the loss at night (every such meter at rest) must be at least this."""
    min_pct: float = 1.0
    """...and this percentage of the group's mean input."""
    z: float = 6.0
    """t statistic the per-meter loss needs."""
    fit_hours: int = 168
    """The fit looks at the window's latest hours: drips start and stop, and a week
    holds every hour of the week once."""
    min_hours: int = 72
    """Known hours the fit needs."""
    max_pulse_litres: float = 2.0
    name: str = "starting-flow"

    def detect_group(self, data: GroupData) -> list[Finding]:
        fine = _fine(data, self.max_pulse_litres)
        imbalance = data.imbalance
        known = ~np.isnan(imbalance)
        known[: max(data.hours - self.fit_hours, 0)] = False
        if fine.sum() < 3 or known.sum() < self.min_hours:
            return []
        at_rest = (data.quality[fine] == Quality.MEASURED) & (data.values[fine] == 0)
        idle = at_rest.sum(axis=0).astype(np.float64)
        consumed = data.consumed
        x = np.stack([np.ones(int(known.sum())), idle[known], consumed[known]], axis=1)
        coef, cov = least_squares(x, imbalance[known])
        b, se = float(coef[1]), float(np.sqrt(cov[1, 1]))
        if not np.isfinite(b) or se <= 0:
            return []
        night_idle = float(np.quantile(idle[known], 0.9))  # nearly everyone at rest
        night_loss = b * night_idle
        mean_input = float(np.nanmean(data.input)) if (~np.isnan(data.input)).any() else 0.0
        if (b * LITRES < self.min_lph_per_meter or b / se < self.z or night_loss * LITRES < self.min_lph
                or night_loss < self.min_pct / 100 * mean_input):
            return []
        first = int(np.argmax(known))
        volume = b * float(idle[known].sum()) * (data.hours - first) / int(known.sum())
        gid = data.group.group_id
        info = {"per_meter_lph": round(b * LITRES, 2), "night_lph": round(night_loss * LITRES, 1),
                "rate": round(night_loss, 6),
                "meters": int(fine.sum()), "volume_m3": round(volume, 4), "money": _money(data, volume),
                "confidence": _confidence(b / se, 2 * self.z), "start": int(data.t[first])}
        message = (f"Group {gid}: about {night_loss * LITRES:.0f} l/h is lost at night under the meters' starting "
                   f"flow (about {b * LITRES:.1f} l/h for each meter standing still: dripping taps and cisterns); "
                   f"about {volume:.2f} {data.group.unit} over the last {(data.hours - first) // 24} days. Meters "
                   f"with a lower starting flow or fixing the drips would recover it.")
        return [_finding(self.name, data, gid, "below_starting_flow", message, info)]


@dataclass
class ClockDriftDetector(GroupDetector):
    """A module whose clock is off: its hourly volumes are shifted between hours.

    Every member's own differences are fitted next to the group's: the daily
    rhythm all households share is in the group's differences, so a member is
    named only for what its own irregular use explains."""

    min_offset_s: float = 600.0
    """Smallest offset (mean over the latest ``fit_hours``) that is reported."""
    z: float = 6.0
    """t statistic the offset needs (one test per member: a high bar)."""
    fit_hours: int = 168
    min_hours: int = 72
    max_pulse_litres: float = 2.0
    name: str = "clock-drift"

    def detect_group(self, data: GroupData) -> list[Finding]:
        fine = np.flatnonzero(_fine(data, self.max_pulse_litres))
        if not len(fine):
            return []
        recent = self._offsets(data, fine, data.hours - self.fit_hours, data.hours)
        if recent is None:
            return []
        offset, se = recent
        before = self._offsets(data, fine, data.hours - 2 * self.fit_hours, data.hours - self.fit_hours)
        days = self.fit_hours / 24
        out = []
        for i in np.flatnonzero((np.abs(offset) >= self.min_offset_s) & (np.abs(offset) >= self.z * se)):
            rate = (offset[i] - before[0][i]) / days if before is not None else None
            out.append(self._finding(data, int(fine[i]), float(offset[i]), rate, float(offset[i] / se[i])))
        return out

    def _offsets(self, data: GroupData, rows: np.ndarray, start: int, stop: int
                 ) -> tuple[np.ndarray, np.ndarray] | None:
        """(offset in seconds, its standard error) of each member in ``rows`` over hours
        [start, stop): positive for a fast clock; None with too few known hours."""
        imbalance = data.imbalance
        known = ~np.isnan(imbalance)
        usable = known & np.roll(known, 1) & np.roll(known, -1)  # the differences need the neighbours
        usable[[0, -1]] = False
        usable[: max(start, 0)] = False
        usable[stop:] = False
        h = np.flatnonzero(usable)
        if len(h) < self.min_hours:
            return None
        v = np.nan_to_num(data.values[rows])
        consumed = data.consumed
        ones = np.ones((len(rows), len(h)))

        def shared(series: np.ndarray) -> np.ndarray:
            return np.broadcast_to(series[h], ones.shape)

        back = v - np.roll(v, 1, axis=1)  # use_h - use_h-1: a fast clock
        ahead = np.roll(v, -1, axis=1) - v  # use_h+1 - use_h: a slow clock
        x = np.stack([ones, shared(consumed), v[:, h], back[:, h], ahead[:, h],
                      shared(consumed - np.roll(consumed, 1)), shared(np.roll(consumed, -1) - consumed)], axis=2)
        coef, cov = least_squares(x, imbalance[h])
        # A slow clock has a negative coefficient on ``ahead``: the sum is signed.
        beta = coef[:, 3] + coef[:, 4]
        se = np.sqrt(cov[:, 3, 3] + cov[:, 4, 4] + 2 * cov[:, 3, 4])
        share = offset_share(beta)
        # The standard error scaled as the offset is: the test is the coefficient's own.
        return HOUR * share, HOUR * se * np.abs(np.divide(share, beta, out=np.ones_like(beta), where=beta != 0))

    def _finding(self, data: GroupData, r: int, offset: float, rate: float | None, t_stat: float) -> Finding:
        meter = data.meter_ids[r]
        way = "fast" if offset > 0 else "slow"
        size = "at least 30" if abs(offset) >= HOUR / 2 else f"about {abs(offset) / 60:.0f}"
        drift = f" and drifting about {rate / 60:+.1f} min a day" if rate is not None else ""
        info = {"offset_s": round(offset), "drift_s_per_day": None if rate is None else round(rate, 1),
                "start": int(data.t[max(data.hours - self.fit_hours, 0)]), "volume_m3": 0.0, "money": None,
                "confidence": _confidence(abs(t_stat), 2 * self.z)}
        message = (f"Meter {meter}: its module's clock is {size} min {way} over the last "
                   f"{self.fit_hours // 24} days{drift}: its hourly volumes are shifted between hours, daily totals "
                   f"are right. Have the concentrator set the module's clock.")
        return _finding(self.name, data, meter, "clock_drift", message, info, Severity.INFO)
