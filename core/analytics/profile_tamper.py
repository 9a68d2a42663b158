"""A meter that moves its registration between hours: only the hourly balance sees it.

Some tampering keeps every day's total and changes when the water is said to
have flowed: a meter that registers the day's mean every hour, or the day's
hours in reverse order (attacks h5 and h6 of Jokar et al. 2016). A daily
balance cannot see it. An hourly one can: the real flow did not change, so
whatever the meter now registers less at some hour of the day and more at
another shows up in the group's imbalance at exactly those hours, with the
opposite sign. A household that changes its habits moves its registered
profile too, but the input meter sees the same change, and the imbalance does
not move.

So for each member the recent days' mean profile by hour of day is compared
with the earlier days', and the change is matched against the change of the
group's imbalance profile over the same split: a strong correlation with a
slope near one, well above the imbalance profile's own day-to-day noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from balans_edge.core.analytics.base import GroupDetector
from balans_edge.core.analytics.data import GroupData
from balans_edge.core.components import Finding, Severity

LITRES = 1000.0


def _profile(values: np.ndarray, hour: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(..., 24) mean by local hour of day over the hours in ``mask`` (NaN skipped)."""
    out = np.full((*values.shape[:-1], 24), np.nan)
    for h in range(24):  # 24 slices, each over the whole array
        sel = mask & (hour == h)
        if sel.any():
            with np.errstate(invalid="ignore"):
                out[..., h] = np.nanmean(values[..., sel], axis=-1)
    return out


@dataclass
class ProfileTamperDetector(GroupDetector):
    """Registration moved between hours of the day while the daily total stays."""

    recent_days: int = 4
    """The recent days compared with the earlier ones."""
    min_earlier_days: int = 6
    """Earlier days needed for the comparison."""
    min_correlation: float = 0.8
    """Correlation of the meter's profile change with the imbalance's, opposite sign."""
    slope: tuple[float, float] = (0.6, 1.6)
    """The imbalance's change must be about as large as the meter's."""
    min_noise_ratio: float = 3.0
    """The imbalance's profile change must stand this far above its own noise."""
    min_lph: float = 3.0
    """A smaller moved flow (standard deviation over the hours) is not reported."""
    name: str = "profile-tamper"

    def detect_group(self, data: GroupData) -> list[Finding]:
        hours = data.hours
        split = hours - self.recent_days * 24
        if split < self.min_earlier_days * 24 or not data.meter_ids:
            return []
        idx = np.arange(hours)
        before, after = idx < split, idx >= split
        imbalance = data.imbalance
        change = _profile(imbalance, data.local_hour, after) - _profile(imbalance, data.local_hour, before)
        # Noise: the same comparison between two halves of the earlier days, where nothing moved.
        half = split // 2
        noise = _profile(imbalance, data.local_hour, before & (idx >= half)) - _profile(
            imbalance, data.local_hour, idx < half)
        if np.isnan(change).any() or np.isnan(noise).any():
            return []
        sigma = float(np.std(noise - noise.mean()))
        moved = _profile(data.values, data.local_hour, before) - _profile(data.values, data.local_hour, after)
        c = change - change.mean()
        if float(np.std(c)) < self.min_noise_ratio * sigma:
            return []
        out = []
        for r in np.flatnonzero(~np.isnan(moved).any(axis=1)):
            m = moved[r] - moved[r].mean()
            spread = float(np.std(m))
            if spread * LITRES < self.min_lph:
                continue
            corr = float(np.dot(m, c) / (np.linalg.norm(m) * np.linalg.norm(c)))
            slope = float(np.dot(m, c) / np.dot(m, m))
            if corr >= self.min_correlation and self.slope[0] <= slope <= self.slope[1]:
                out.append(self._finding(data, int(r), split, spread, corr, m))
        return out[:1] if len(out) == 1 else []  # two meters cannot both explain one change

    def _finding(self, data: GroupData, r: int, split: int, spread: float, corr: float,
                 moved: np.ndarray) -> Finding:
        meter, gid = data.meter_ids[r], data.group.group_id
        volume = float(np.clip(moved, 0, None).sum()) * self.recent_days
        message = (f"Meter {meter} registers its water at other hours than before while the group's hourly "
                   f"imbalance moved the opposite way (about {spread * LITRES:.1f} l/h shifted between hours, "
                   f"correlation {corr:.2f}): tampering that keeps the daily total")
        return Finding(self.name, meter, "profile_tamper", message, Severity.WARNING, int(data.t[-1]),
                       {"group_id": gid, "start": int(data.t[split]), "moved_lph": round(spread * LITRES, 2),
                        "rate": round(spread, 6),
                        "volume_m3": round(volume, 4), "confidence": round(min(1.0, max(0.0, (corr - 0.5) * 2)), 3),
                        "evidence": {"hour_of_day": list(range(24)),
                                     "meter_change": [round(float(v), 6) for v in moved]}})
