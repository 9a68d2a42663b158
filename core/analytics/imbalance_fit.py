"""Slowed meters and unmetered connections, told apart by fitting a group's imbalance.

A meter that registers only ``1 - k`` of its flow leaves in the imbalance
``c * x_i(h)`` with ``c = k / (1 - k)``: its own registered hourly values,
hour-to-hour noise included. An unmetered draw (a connection past every
meter) has a household's daily shape too, but none of any one member's noise.
Both detectors share one fit (``fit_group``):

1. *Smooth part removed per day.* Within each local day the imbalance and every
   member's values are projected off ``[1, P(h)]``, where ``P`` is the group's
   mean consumption by hour of day and day type (working day / weekend). What
   is left of a member is its idiosyncratic noise ``e_i``; what is left of the
   imbalance is what no constant background and no consumption-shaped draw can
   produce. An unmetered draw, background leakage or a network burst therefore
   cannot pass for a slowed meter: they are (nearly) orthogonal to every ``e_i``.
2. *Change point per member.* A fault that starts mid-window shows only after
   its start, so for each member the start ``s_i`` maximising the least-squares
   gain of ``c_i * e_i(h) * [h >= s_i]`` is searched at hourly resolution (reverse
   cumulative sums, all members at once), and a heteroscedasticity-robust t
   statistic screens the members.
3. *Joint non-negative fit.* The screened members' columns ``e_i * [h >= s_i]`` are
   fitted together by NNLS (``c_i >= 0``), each coefficient is tested again with
   the joint residuals, and the implied under-registration ``k = c / (1 + c)``
   and the explained volume ``c * sum(x_i)`` must both be meaningful.

The unmetered detector takes the imbalance minus the slowed meters' part,
scans a start ``s`` and fits ``r(h) = b0 + b1 [h >= s] + a (W(h) - 1) [h >= s]``,
``W`` the group's working-day consumption shape (mean 1): ``b1`` takes a
constant rise (a burst, which is no consumption), ``a`` the consumption-shaped
one. It reports a draw only when ``a`` is significant, large enough, its
hour-of-day profile correlates with the consumption shape, and no single
member's hourly values explain the rise as well as the smooth shape does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from balans_edge.core.analytics.base import GroupDetector
from balans_edge.core.analytics.data import GroupData
from balans_edge.core.analytics.meter_checks import change_point
from balans_edge.core.components import Finding, Severity
from balans_edge.core.model import Quality
from balans_edge.core.times import iso

EVIDENCE_HOURS = 168
"""Hours of evidence a finding carries (the last week)."""


# Shared fit -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FitSettings:
    """Thresholds of the slowed-meter fit (see ``SlowedMeterDetector``); ``start_t_share``:
    the start is located among the starts whose t is at least this share of the best one."""

    min_member_share: float = 0.02
    min_fault_hours: int = 48
    screen_t: float = 5.0
    min_t: float = 6.0
    min_under_registration: float = 0.1
    min_share_of_imbalance: float = 0.05
    start_t_share: float = 0.6


@dataclass(frozen=True, slots=True)
class Prepared:
    """The arrays both detectors work on; hours outside ``valid`` are zero in every array."""

    y: np.ndarray
    """(H,) imbalance."""
    x: np.ndarray
    """(M, H) members' registered values (absent meters count 0)."""
    valid: np.ndarray
    """(H,) bool: imbalance and every present member known."""
    qy: np.ndarray
    """(H,) imbalance with the per-day smooth part projected off."""
    e: np.ndarray
    """(M, H) members' values with the per-day smooth part projected off: their own noise."""
    shape: np.ndarray
    """(24,) working-day consumption shape by local hour, mean 1."""


@dataclass(frozen=True, slots=True)
class SlowedMeter:
    """One member the fit says under-registers since ``start`` (an hour index)."""

    row: int
    start: int
    c: float
    t_stat: float

    @property
    def under_registration(self) -> float:
        return self.c / (1.0 + self.c)


def prepare(data: GroupData) -> Prepared | None:
    """The cleaned arrays, or None when the window has too few known hours to fit anything."""
    x = np.where(data.quality == Quality.ABSENT, 0.0, data.values).astype(np.float64)
    y = np.asarray(data.imbalance, dtype=np.float64)
    valid = np.isfinite(y) & np.isfinite(x).all(axis=0)
    if valid.sum() < 72 or not len(data.meter_ids):
        return None
    x = np.where(valid[None, :], np.nan_to_num(x), 0.0)
    y = np.where(valid, y, 0.0)
    total = x.sum(axis=0)
    weekend = data.weekday >= 5
    working = _mean_by(total, valid & ~weekend, data.local_hour, 24)
    rest = _mean_by(total, valid & weekend, data.local_hour, 24)
    overall = _mean_by(total, valid, data.local_hour, 24)
    profiles = np.nan_to_num(np.where(np.isfinite([working, rest]), [working, rest], overall))
    shape = profiles[0] / profiles[0].mean() if profiles[0].mean() > 0 else np.ones(24)
    basis = _day_basis(data.local_hour, profiles)
    resid = _project_off(basis, np.vstack([y, x]), valid)
    return Prepared(y, x, valid, resid[0], resid[1:], np.nan_to_num(shape, nan=1.0))


def prepared(data: GroupData) -> Prepared | None:
    """``prepare(data)``, once per window: both detectors here start from it."""
    if "prepared" not in data.derived:
        data.derived["prepared"] = prepare(data)
    return data.derived["prepared"]


def fitted(data: GroupData, p: Prepared, settings: FitSettings) -> list[SlowedMeter]:
    """``fit_group`` once per window and settings: the unmetered detector takes off
    what the slowed-meter detector's fit explains, with the same settings by default."""
    key = ("fit", settings)
    if key not in data.derived:
        data.derived[key] = fit_group(p, settings)
    return data.derived[key]


def _mean_by(values: np.ndarray, mask: np.ndarray, key: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``values`` over ``mask`` per integer key 0..n-1 (NaN where a key has no hour)."""
    total = np.bincount(key[mask], weights=values[mask], minlength=n)
    count = np.bincount(key[mask], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def _day_basis(local_hour: np.ndarray, profiles: np.ndarray) -> np.ndarray:
    """(H, 3 D) block design: per local day a constant and the working-day and weekend
    consumption profiles (``profiles`` (2, 24)), so the background, its day-to-day
    drift and any household-shaped component of any amplitude (an unmetered
    draw keeps its working-day shape at weekends) are removed day by day."""
    day = np.cumsum(np.r_[0, (np.diff(local_hour) < 0).astype(np.int64)])
    days = int(day[-1]) + 1
    basis = np.zeros((len(day), 3 * days))
    rows = np.arange(len(day))
    basis[rows, 3 * day] = 1.0
    basis[rows, 3 * day + 1] = profiles[0][local_hour]
    basis[rows, 3 * day + 2] = profiles[1][local_hour]
    return basis


def _project_off(basis: np.ndarray, z: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Rows of ``z`` minus their least-squares fit on ``basis`` over the valid hours (0 elsewhere)."""
    out = np.zeros_like(z)
    coef, *_ = np.linalg.lstsq(basis[valid], z[:, valid].T, rcond=None)
    out[:, valid] = z[:, valid] - (basis[valid] @ coef).T
    return out


def _reverse_cumsum(a: np.ndarray) -> np.ndarray:
    """Sum over hours ``h..H-1`` for each ``h`` (last axis)."""
    return np.flip(np.cumsum(np.flip(a, axis=-1), axis=-1), axis=-1)


def scan_starts(p: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """Per member and start hour ``s``: the least-squares gain of ``c e_i [h >= s]`` and
    the t statistic of ``c`` with heteroscedasticity-robust (HC0) variance from the
    residuals of that fit (the noise of a multiplicative consumption is larger at
    peak hours, and the residual, not the raw imbalance, is what is left unexplained)."""
    e2 = p.e**2
    ey = p.e * p.qy[None, :]
    s1 = _reverse_cumsum(ey)
    s2 = _reverse_cumsum(e2)
    yy = _reverse_cumsum(ey**2)
    ye3 = _reverse_cumsum(ey * e2)
    e4 = _reverse_cumsum(e2**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = s1 / s2
        gain = np.where(s1 > 0, s1 * c, 0.0)
        var = np.maximum(yy - 2 * c * ye3 + c**2 * e4, 1e-18)
        t = c * s2 / np.sqrt(var)
    return np.nan_to_num(gain), np.nan_to_num(t)


def fit_group(p: Prepared, settings: FitSettings) -> list[SlowedMeter]:
    """Members whose registered noise shows in the imbalance, scaled by ``c >= 0``."""
    known_after = _reverse_cumsum(p.valid.astype(np.float64))
    allowed = known_after >= settings.min_fault_hours
    gain, t = scan_starts(p)
    t[:, ~allowed] = -np.inf
    t_at = t.max(axis=1)
    # The largest t points at the fault; among the starts whose t is close to it the
    # least-squares gain locates the start best (t alone favours late starts).
    gain[t < settings.start_t_share * t_at[:, None]] = -1.0
    start = np.argmax(gain, axis=1)
    share = p.x.sum(axis=1) / max(float(p.x.sum() + p.y.sum()), 1e-12)
    screened = np.flatnonzero((t_at >= settings.screen_t) & (share >= settings.min_member_share))
    if not len(screened):
        return []
    hours = np.arange(len(p.y))
    cols = np.where(hours[None, :] >= start[screened, None], p.e[screened], 0.0)
    c, _ = nnls(cols[:, p.valid].T, p.qy[p.valid])
    resid = p.qy - c @ cols
    num = (cols**2).sum(axis=1)
    den = np.sqrt(((cols * resid[None, :]) ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        t_joint = np.nan_to_num(c * num / den)
    found = []
    for j, r in enumerate(screened):
        after = p.valid & (hours >= start[r])
        explained = c[j] * p.x[r, after].sum()
        imbalance = p.y[after].sum()
        if (t_joint[j] >= settings.min_t and c[j] / (1 + c[j]) >= settings.min_under_registration
                and imbalance > 0 and explained >= settings.min_share_of_imbalance * imbalance):
            found.append(SlowedMeter(int(r), int(start[r]), float(c[j]), float(t_joint[j])))
    return found


def _confidence(t_stat: float, threshold: float) -> float:
    """0 at the threshold, approaching 1 as the statistic grows: how far past the bar the evidence is."""
    return round(float(np.clip(1.0 - (threshold / max(t_stat, 1e-9)) ** 2, 0.0, 1.0)), 3)


def _series(a: np.ndarray, valid: np.ndarray) -> list[float | None]:
    """JSON-friendly values: None where unknown."""
    return [round(float(v), 6) if ok else None for v, ok in zip(a, valid, strict=True)]


# Slowed meters --------------------------------------------------------------


class SlowedMeterDetector(GroupDetector):
    """Meters under-registering a share of their flow (a magnet, a worn impeller).

    Thresholds:
    ``min_member_share`` (0.02): a candidate registers at least this share of the
    group's consumption plus imbalance, so that its loss can be told from noise;
    ``min_fault_hours`` (48): a start leaves at least this many known hours;
    ``screen_t`` (5.0): robust t of the single-member scan to enter the joint fit;
    ``min_t`` (6.0): robust t of the coefficient in the joint fit (many members
    and starts are tried, so the bar is well above the usual 2-3);
    ``min_under_registration`` (0.1): smallest reported k;
    ``min_share_of_imbalance`` (0.05): the explained volume must be at least this
    share of the imbalance since the start;
    ``critical_at`` (0.5): k from which the finding is critical.
    """

    name = "slowed-meter"
    kind = "slowed_meter"

    def __init__(self, min_member_share: float = 0.02, min_fault_hours: int = 48, screen_t: float = 5.0,
                 min_t: float = 6.0, min_under_registration: float = 0.1, min_share_of_imbalance: float = 0.05,
                 critical_at: float = 0.5) -> None:
        self.settings = FitSettings(min_member_share, min_fault_hours, screen_t, min_t, min_under_registration,
                                    min_share_of_imbalance)
        self.critical_at = critical_at

    def detect_group(self, data: GroupData) -> list[Finding]:
        p = prepared(data)
        if p is None:
            return []
        found = sorted(fitted(data, p, self.settings), key=lambda s: -s.c)
        seen: set[str] = set()
        out = []
        for s in found:
            meter = data.meter_ids[s.row]
            if meter not in seen:
                seen.add(meter)
                out.append(self._finding(data, p, s))
        return out

    def _finding(self, data: GroupData, p: Prepared, s: SlowedMeter) -> Finding:
        meter = data.meter_ids[s.row]
        hours = np.arange(len(p.y))
        after = hours >= s.start
        scaled = np.where(after, s.c * p.x[s.row], 0.0)
        volume = float(scaled[p.valid].sum())
        price = data.group.price
        k = s.under_registration
        start_t = int(data.t[s.start])
        last = slice(max(0, len(hours) - EVIDENCE_HOURS), len(hours))
        message = (f"meter {meter} under-registers about {k * 100:.0f} % since {iso(start_t)[:10]}: "
                   f"the imbalance of group {data.group.group_id} follows its hourly consumption, "
                   f"about {volume:.2f} {data.group.unit} unregistered in the window")
        return Finding(
            self.name, meter, self.kind, message,
            Severity.CRITICAL if k >= self.critical_at else Severity.WARNING, int(data.t[-1]),
            {"group_id": data.group.group_id, "under_registration_pct": round(k * 100, 1),
             "volume_m3": round(volume, 4), "money": round(volume * price, 2) if price is not None else None,
             "rate": round(volume / max(int(after.sum()), 1), 6),
             "confidence": _confidence(s.t_stat, self.settings.min_t), "start": start_t,
             "evidence": {"t": [int(v) for v in data.t[last]], "imbalance": _series(p.y[last], p.valid[last]),
                          "scaled_profile": _series(scaled[last], p.valid[last])}})


# Unmetered connections ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Draw:
    """A consumption-shaped rise of the imbalance since hour index ``start``."""

    start: int
    amplitude: float
    t_stat: float
    volume: float
    residual_profile: np.ndarray
    correlation: float


def _shape_fit(r: np.ndarray, w: np.ndarray, valid: np.ndarray, start: int) -> tuple[float, float]:
    """(a, t) of ``r = b0 + b1 [h >= s] + a w [h >= s]`` over the valid hours."""
    step = (np.arange(len(r)) >= start).astype(np.float64)
    cols = [np.ones(len(r)), w * step] if start == 0 else [np.ones(len(r)), step, w * step]
    design = np.column_stack(cols)[valid]
    coef, *_ = np.linalg.lstsq(design, r[valid], rcond=None)
    resid = r[valid] - design @ coef
    dof = max(len(resid) - design.shape[1], 1)
    cov = np.linalg.pinv(design.T @ design) * (resid @ resid / dof)
    return float(coef[-1]), float(coef[-1] / np.sqrt(max(cov[-1, -1], 1e-18)))


def _best_member_r2(r: np.ndarray, x: np.ndarray, mask: np.ndarray) -> float:
    """Largest squared correlation of ``r`` with any one member's hourly values over ``mask``."""
    rc = r[mask] - r[mask].mean()
    xc = x[:, mask] - x[:, mask].mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (xc @ rc) / np.sqrt((xc**2).sum(axis=1) * (rc @ rc))
    return float(np.nanmax(corr**2)) if len(corr) else 0.0


def _member_explains(values: np.ndarray, start: int, rate: float, guard: int = 24, span: int = 48,
                     align: int = 48, min_drop: float = 0.3) -> bool:
    """A member meter that registers less since the rise by at least half of its rate
    (and by ``min_drop`` of its own use), its own change within ``align`` hours of the
    rise: the water still flows through its pipe, unregistered (a stuck meter, a
    magnet). That is the meter detectors' finding, about the meter, not an
    unmetered connection of the group. The member's use is compared over ``span``
    hours on either side of the rise, leaving out the hours within ``guard`` of its
    start (known only to a few hours); a meter that stopped days later (another
    fault) does not explain the rise."""
    hours = values.shape[1]
    before = values[:, max(start - guard - span, 0): max(start - guard, 0)]
    after = values[:, min(start + guard, hours): min(start + guard + span, hours)]
    if before.shape[1] < guard or after.shape[1] < guard:
        return False
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # members without a known hour: NaN, never chosen
        usual = np.nanmean(before, axis=1)
        drop = usual - np.nanmean(after, axis=1)
    for r in np.flatnonzero((drop >= 0.5 * rate) & (drop >= min_drop * usual)):
        shift = change_point(values[r])
        if shift is not None and abs(shift - start) <= align:
            return True
    return False


class UnmeteredDetector(GroupDetector):
    """Water drawn past every meter: an imbalance rise with a household's daily shape.

    Thresholds:
    ``min_share`` (0.02): the draw is at least this share of the group input since its start;
    ``min_t`` (8.0): t statistic of the shape coefficient (starts are scanned);
    ``min_correlation`` (0.6): correlation of the rise's hour-of-day profile with the consumption shape;
    ``start_step_hours`` (6): resolution of the start scan;
    ``min_fault_hours`` (48): known hours a start leaves after it;
    ``min_before_hours`` (48): known hours before the start: a rise must be seen
    rising. A draw older than the window is the same data as a member meter
    stuck before it (its water, in its household's shape, in the imbalance from
    the first hour), so it is left to the finding made when it began;
    the slowed-meter thresholds are the shared fit's (``FitSettings``), so that the
    part of the imbalance a slowed meter explains is removed first.
    """

    name = "unmetered-connection"
    kind = "unmetered_connection"

    def __init__(self, min_share: float = 0.02, min_t: float = 8.0, min_correlation: float = 0.6,
                 start_step_hours: int = 6, min_fault_hours: int = 48, min_before_hours: int = 48,
                 fit: FitSettings | None = None) -> None:
        self.min_share = min_share
        self.min_t = min_t
        self.min_correlation = min_correlation
        self.start_step_hours = start_step_hours
        self.min_fault_hours = min_fault_hours
        self.min_before_hours = min_before_hours
        self.fit = fit or FitSettings()

    def detect_group(self, data: GroupData) -> list[Finding]:
        p = prepared(data)
        if p is None:
            return []
        draw = self.find_draw(data, p)
        return [] if draw is None else [self._finding(data, p, draw)]

    def residual(self, data: GroupData, p: Prepared) -> np.ndarray:
        """The imbalance minus what the slowed meters explain."""
        hours = np.arange(len(p.y))
        r = p.y.copy()
        for s in fitted(data, p, self.fit):
            r -= np.where(hours >= s.start, s.c * p.x[s.row], 0.0)
        return r

    def find_draw(self, data: GroupData, p: Prepared) -> Draw | None:
        r = self.residual(data, p)
        w = p.shape[data.local_hour] - 1.0
        hours = np.arange(len(r))
        known_after = _reverse_cumsum(p.valid.astype(np.float64))
        known_before = np.cumsum(p.valid) - p.valid
        starts = [int(s) for s in range(0, len(r), self.start_step_hours)
                  if known_after[s] >= self.min_fault_hours and known_before[s] >= self.min_before_hours]
        fits = [(_shape_fit(r, w, p.valid, s), s) for s in starts]
        if not fits:
            return None
        (a, t_stat), start = max(fits, key=lambda f: f[0][1])
        if a <= 0 or t_stat < self.min_t:
            return None
        after = hours >= start
        volume = a * float(p.shape[data.local_hour][after].sum())
        input_ = float(np.nansum(data.input[after]))
        if input_ <= 0 or volume < self.min_share * input_:
            return None
        mask = p.valid & after
        before = p.valid & ~after
        profile = _mean_by(r, mask, data.local_hour, 24)
        if before.sum() >= 48:
            profile = profile - _mean_by(r, before, data.local_hour, 24)
        profile = np.nan_to_num(profile - np.nanmean(profile))
        corr = float(np.corrcoef(profile, p.shape)[0, 1]) if profile.std() > 0 else 0.0
        if corr < self.min_correlation:
            return None
        r2_shape = _best_member_r2(r, (w * after)[None, :], mask)
        if _best_member_r2(r, p.x, mask) >= r2_shape:
            return None
        if _member_explains(data.values, start, volume / max(int(after.sum()), 1)):
            return None
        return Draw(start, a, t_stat, volume, profile, corr)

    def _finding(self, data: GroupData, p: Prepared, d: Draw) -> Finding:
        gid = data.group.group_id
        after = np.arange(len(p.y)) >= d.start
        input_ = float(np.nansum(data.input[after]))
        start_t = int(data.t[d.start])
        share = d.volume / input_ * 100
        rate = d.volume / max(int(after.sum()), 1) * 1000
        message = (f"group {gid} loses about {rate:.0f} l/h ({share:.1f} % of its input) since "
                   f"{iso(start_t)[:10]} with a household's daily shape that no member meter explains: "
                   "an unmetered connection")
        return Finding(
            self.name, gid, self.kind, message, Severity.WARNING, int(data.t[-1]),
            {"group_id": gid, "volume_m3": round(d.volume, 4), "rate_lph": round(rate, 1),
             "rate": round(d.volume / max(int(after.sum()), 1), 6),
             "share_of_input_pct": round(share, 2), "start": start_t,
             "confidence": _confidence(d.t_stat, self.min_t) * float(np.clip(d.correlation, 0.0, 1.0)),
             "evidence": {"hour_of_day": list(range(24)), "residual_profile": [round(float(v), 6) for v in
                                                                              d.residual_profile],
                          "consumption_profile": [round(float(v), 4) for v in p.shape]}})
