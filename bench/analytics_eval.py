"""Loss detectors scored against sites whose faults are known.

    python bench/analytics_eval.py [--sites 240] [--seed 1] [--days 42] [--quick]

Generates many apartment buildings with the scenario generator
(``plugins/dmesh/scenario.py``): 20-120 apartments, varied household mix and
noise, households drawing water in uses of 5-12 litres, background network
loss, and at most one injected fault each (a slowed
meter, a consumer leak, an unmetered connection, a stuck meter, drips under the
meters' starting flow, a drifting module clock) or an ordinary change of
behaviour that is not a loss, with a random size and start. It then
runs every group detector as the server does: once a day over the last 14 days
(or the longer history a detector asks for) of hourly data (``GroupData``
windows, exactly the arrays the server builds),
from the start of the data to the end. It prints per fault kind the recall
(found, with the right subject, within the deadline), the precision of the
findings of that kind, false findings per 1,000 meter-months, and the median
time to detect; and the run time for a district of 10,000 meters x 90 days of
hourly data (one pass of every detector), next to the target.

A finding is correct when its subject and kind match a fault of the site
(``MATCHES``); any other finding is false. Findings are counted once per site,
subject and kind however many daily runs repeat them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from balans_edge.core.analytics.base import GroupDetector
from balans_edge.core.analytics.data import GroupData
from balans_edge.plugins.analytics.plugin import detector_classes
from balans_edge.plugins.dmesh.scenario import (
    ATTACKS,
    BehaviourChange,
    ClockDrift,
    Dripping,
    Leak,
    Magnet,
    Scenario,
    Stuck,
    Theft,
    Unmetered,
    generate,
)

HOUR = 3600
WINDOW_H = 14 * 24
RUN_EVERY_H = 24

TARGETS = {
    # fault: (deadline in hours, recall, precision)
    "slowed meter": (7 * 24, 0.90, 0.90),
    "consumer leak": (48, 0.95, 0.95),
    "unmetered connection": (7 * 24, 0.80, 0.90),
    "stuck meter": (3 * 24, 0.95, 0.95),
    # No target in the issue: shown for what they are.
    "below starting flow": (7 * 24, None, None),
    "clock drift": (7 * 24, None, None),
}
MATCHES = {
    # fault type -> finding kinds that name it correctly (the first is the one scored for recall)
    Magnet: ("slowed_meter", "magnet", "consumption_drop", "profile_tamper"),
    Leak: ("consumer_leak",),
    Unmetered: ("unmetered_connection", "burst", "background_leak"),
    Stuck: ("stuck_meter", "consumption_drop", "slowed_meter", "profile_tamper"),
    Dripping: ("below_starting_flow", "burst", "background_leak"),
    ClockDrift: ("clock_drift", "profile_tamper"),
}
FAULT_NAMES = {Magnet: "slowed meter", Leak: "consumer leak", Unmetered: "unmetered connection",
               Stuck: "stuck meter", Dripping: "below starting flow", ClockDrift: "clock drift"}
KIND_OF = {"slowed meter": "slowed_meter", "consumer leak": "consumer_leak",
           "unmetered connection": "unmetered_connection", "stuck meter": "stuck_meter",
           "below starting flow": "below_starting_flow", "clock drift": "clock_drift"}


def detectors() -> list[GroupDetector]:
    """Every built-in group detector, as the analytics plugin registers them."""
    return [cls() for cls in detector_classes().values()]


@dataclass
class Site:
    scenario: Scenario
    fault: Any | None
    subject: str | None
    """The meter or group the fault is about."""
    start_h: int | None


def random_site(rng: np.random.Generator, index: int, days: int) -> Site:
    apartments = int(rng.integers(20, 121))
    # Households draw water in uses of 5-12 litres (a Poisson number per hour around
    # the daily profile), so nights have empty hours as real meters show.
    scenario = Scenario(buildings=1, apartments=apartments, hours=days * 24, seed=int(rng.integers(2**31)),
                        noise=float(rng.uniform(0.3, 0.7)), scale_sigma=float(rng.uniform(0.2, 0.6)),
                        network_loss=float(rng.uniform(0.01, 0.06)), utc_offset_h=3,
                        event_litres=float(rng.uniform(5.0, 12.0)))
    kind = index % 8
    start = int(rng.integers(14 * 24, (days - 8) * 24))
    apt = f"B1-A{int(rng.integers(1, apartments + 1)):02d}"
    if kind == 0:
        return Site(scenario, None, None, None)
    if kind == 1:
        # The target is stated for meters of at least 5 % of the group's input: entrances
        # and small houses, or a big consumer. Pick one such apartment of a smaller group.
        scenario = replace(scenario, apartments=int(rng.integers(10, 41)))
        use = generate(scenario).truth.consumption_m3.sum(axis=1)
        heavy = np.flatnonzero(use[1:] >= 0.05 * use[0]) + 1
        if not len(heavy):
            return Site(scenario, None, None, None)
        apt = f"B1-A{int(rng.choice(heavy)):02d}"
        fault = Magnet(apt, float(rng.uniform(0.25, 0.7)), start=start)
    elif kind == 2:
        fault = Leak(apt, float(rng.uniform(10, 40)), start=start)
    elif kind == 3:
        share = float(rng.uniform(0.05, 0.15))
        fault = Unmetered("B1", share * apartments * scenario.mean_lph, start=start)
    elif kind == 4:
        fault = Stuck(apt, start=start)
    elif kind == 6:
        # 10-50 % of the flats dripping 1-3 l/h on average (0.5-1.5 times that each).
        fault = Dripping("B1", float(rng.uniform(0.1, 0.5)), float(rng.uniform(1.0, 3.0)), start=start)
    elif kind == 7:
        # A module clock gaining or losing 2-15 minutes a day.
        fault = ClockDrift(apt, float(rng.choice([-1, 1]) * rng.uniform(120, 900)), start=start)
    else:
        fault = BehaviourChange(apt, float(rng.choice([0.0, 0.3, 0.5, 1.8])), start=start)
    return Site(scenario, fault, "B1" if isinstance(fault, Unmetered | Dripping) else apt, start)


@dataclass
class Tally:
    faults: int = 0
    detected: int = 0
    delays_h: list[float] = field(default_factory=list)


def daily_runs(data: GroupData, dets: list[GroupDetector]) -> dict[tuple[str, str], int]:
    """First hour index at which each (subject, kind) was reported by the daily runs."""
    first: dict[tuple[str, str], int] = {}
    for end in range(WINDOW_H, data.hours + 1, RUN_EVERY_H):
        for det in dets:
            # A detector that asks for a longer history (the night flow's) gets it, as on the server.
            hours = max(WINDOW_H, 24 * getattr(det, "history_days", 0))
            for f in det.detect_group(data.slice(max(0, end - hours), end)):
                first.setdefault((f.subject, f.kind), end)
    return first


def _target(value: float | None) -> str:
    return f"{value:>7.2f}" if value is not None else f"{'-':>7}"


def evaluate(sites: int, seed: int, days: int, verbose: bool = False) -> int:
    rng = np.random.default_rng(seed)
    dets = detectors()
    tallies: dict[str, Tally] = defaultdict(Tally)
    per_kind_found: dict[str, list[bool]] = defaultdict(list)  # finding kind -> correct?
    false_findings = 0
    false_on_behaviour = 0
    meter_months = 0.0
    behaviour_meter_months = 0.0
    t = time.perf_counter()
    for i in range(sites):
        site = random_site(rng, i, days)
        data = generate(site.scenario, [site.fault] if site.fault is not None else [])
        group = data.group_data(0, "Europe/Moscow")
        first = daily_runs(group, dets)
        months = len(group.meter_ids) * days / 30.0
        meter_months += months
        correct_kinds = MATCHES.get(type(site.fault), ())
        for (subject, kind), _ in first.items():
            ok = site.subject is not None and subject == site.subject and kind in correct_kinds
            per_kind_found[kind].append(ok)
            if not ok:
                false_findings += 1
                if verbose:
                    print(f"  false: site {i} ({site.fault!r}): {kind} about {subject}", file=sys.stderr)
                if isinstance(site.fault, BehaviourChange):
                    false_on_behaviour += 1
        if isinstance(site.fault, BehaviourChange):
            behaviour_meter_months += months
        name = FAULT_NAMES.get(type(site.fault))
        if name is None:
            continue
        deadline = TARGETS[name][0]
        tally = tallies[name]
        tally.faults += 1
        hit = first.get((site.subject, KIND_OF[name]))
        if hit is not None and hit - site.start_h <= deadline:
            tally.detected += 1
            tally.delays_h.append(hit - site.start_h)
    elapsed = time.perf_counter() - t
    print(f"{sites} sites x {days} days, {len(dets)} detectors, daily runs over 14-day windows "
          f"({elapsed:.0f} s)")
    print(f"{'fault':<22} {'n':>4} {'recall':>7} {'target':>7} {'precision':>9} {'target':>7} "
          f"{'median h':>8} {'deadline':>8}")
    met = True
    for name, (deadline, recall_target, precision_target) in TARGETS.items():
        tally = tallies[name]
        recall = tally.detected / tally.faults if tally.faults else float("nan")
        kind = KIND_OF[name]
        flags = per_kind_found.get(kind, [])
        precision = sum(flags) / len(flags) if flags else float("nan")
        median = statistics.median(tally.delays_h) if tally.delays_h else float("nan")
        if recall_target is not None:
            met &= recall >= recall_target and (precision >= precision_target or not flags)
        print(f"{name:<22} {tally.faults:>4} {recall:>7.2f} {_target(recall_target)} {precision:>9.2f} "
              f"{_target(precision_target)} {median:>8.0f} {deadline:>8}")
    behaviour_rate = 1000 * false_on_behaviour / behaviour_meter_months if behaviour_meter_months else 0.0
    print(f"{'behaviour change':<22} false findings per 1,000 meter-months: {behaviour_rate:.2f} (target <= 1)")
    print(f"all sites: {false_findings} false findings, "
          f"{1000 * false_findings / meter_months:.2f} per 1,000 meter-months")
    for kind, flags in sorted(per_kind_found.items()):
        print(f"  findings of kind {kind:<22} {len(flags):>4}, correct {sum(flags):>4}")
    return 0 if met and behaviour_rate <= 1.0 else 1


def theft_attacks(sites_per_attack: int, seed: int, days: int) -> None:
    """Recall on the six attacks of Jokar et al. (2016) on heavy consumers' meters:
    any finding about the tampered meter within 7 days counts (a slowed meter, a
    consumption drop, a module flag). h5 and h6 keep every day's total: only the
    hourly balance shows them."""
    rng = np.random.default_rng(seed + 1000)
    dets = detectors()
    print(f"theft attacks (Jokar et al. 2016), {sites_per_attack} buildings each, detection within 7 days:")
    print(f"{'attack':<8} {'recall':>7} {'false':>6}  note")
    for attack in ATTACKS:
        found = false = 0
        for _ in range(sites_per_attack):
            base = random_site(rng, 1, days)  # kind 1: a heavy apartment of a smaller building
            if base.fault is None:
                continue
            fault = Theft(base.subject, attack, alpha=float(rng.uniform(0.2, 0.7)), start=base.start_h)
            group = generate(base.scenario, [fault]).group_data(0, "Europe/Moscow")
            first = daily_runs(group, dets)
            hits = [h for (subject, _), h in first.items() if subject == base.subject]
            found += any(h - base.start_h <= 7 * 24 for h in hits)
            false += sum(subject != base.subject for subject, _ in first)
        note = "daily totals unchanged: hourly balance only" if attack in ("h5", "h6") else ""
        print(f"{attack:<8} {found / sites_per_attack:>7.2f} {false:>6}  {note}")


def district_runtime(buildings: int = 100, apartments: int = 99, days: int = 90) -> None:
    """One pass of every detector over a district of ~10,000 meters x 90 days."""
    dets = detectors()
    data = generate(Scenario(buildings=buildings, apartments=apartments, hours=days * 24, seed=5))
    groups = [data.group_data(b) for b in range(buildings)]
    meters = sum(len(g.meter_ids) for g in groups)
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        for g in groups:
            for det in dets:
                det.detect_group(g)
        best = min(best, time.perf_counter() - t)
    print(f"district: {meters:,} meters x {days} days hourly, every detector once: {best:.1f} s "
          f"(target under 60 s on one core)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=240)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="40 sites, no district run")
    parser.add_argument("--verbose", action="store_true", help="print every false finding")
    args = parser.parse_args()
    status = evaluate(40 if args.quick else args.sites, args.seed, args.days, args.verbose)
    if not args.quick:
        theft_attacks(10, args.seed, args.days)
        district_runtime()
    return status


if __name__ == "__main__":
    sys.exit(main())
