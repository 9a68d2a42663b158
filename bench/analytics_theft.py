"""Theft attacks on realistic households: the detectors on pysimdeum end-use demand.

    pip install pysimdeum 'pandas<3'     # for this benchmark only (pysimdeum predates pandas 3)
    python bench/analytics_theft.py [--houses 30] [--buildings 8] [--seed 1]

pysimdeum simulates each household's water end uses (toilet, shower, tap,
washing machine ...) second by second from Dutch survey statistics. A pool of
households, each with a week of simulated days, is summed into hourly litres;
a building takes its apartments from the pool and, for each of 35 days, one
of the household's simulated days at random. Its input meter measures the
apartments' true use plus a steady background loss of 3 % of the mean. From a random hour
of day 21-28, one apartment's meter is tampered with one of the six attacks of
Jokar et al. (2016) (``scenario.Theft``: h1 scaled by a constant, h2 zero for
a daily interval, h3 scaled per hour, h4 a fraction of the day's mean, h5 the
day's mean, h6 the day reversed). h5 and h6 keep every day's total, so only
hourly balances can see them. Every detector runs daily over 14-day windows as
the server does; an attack is found when a finding names the tampered meter
within 7 days of its start, and every other finding is false.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

from balans_edge.core.analytics.data import GroupData
from balans_edge.core.model import Group, GroupInput, Resource
from balans_edge.plugins.dmesh.scenario import ATTACKS, Theft, attacked

START = 1_704_067_200  # 2024-01-01 00:00 UTC, a Monday
DAYS = 35


def household_days(houses: int, days: int, seed: int) -> np.ndarray:
    """(houses, days, 24) litres per hour of simulated household days."""
    try:
        from pysimdeum.core.house import Property
        from pysimdeum.core.statistics import Statistics
    except ImportError:
        sys.exit("this benchmark needs pysimdeum: pip install pysimdeum 'pandas<3'")
    np.random.seed(seed)  # pysimdeum draws from numpy's global generator
    stats = Statistics()
    pool = np.zeros((houses, days, 24))
    for h in range(houses):
        house = Property(statistics=stats).built_house(house_type="")
        house.populate_house()
        house.furnish_house()
        for user in house.users:
            user.compute_presence(statistics=stats)
        flow = house.simulate(num_patterns=days).sel(flowtypes="totalflow").sum(["user", "enduse"]).values
        pool[h] = flow[: 24 * 3600].reshape(24, 3600, days).sum(axis=1).T  # litres per second -> per hour
    return pool


def building(pool: np.ndarray, rng: np.random.Generator, attack: str | None) -> tuple[GroupData, str | None, int]:
    """A building of every pool household, one apartment tampered with ``attack``."""
    houses, patterns, _ = pool.shape
    use = pool[np.arange(houses)[:, None], rng.integers(0, patterns, (houses, DAYS))].reshape(houses, DAYS * 24)
    t = START + np.arange(DAYS * 24, dtype=np.int64) * 3600
    hour = (t // 3600) % 24
    registered = use.copy()
    subject, start = None, 0
    if attack is not None:
        share = use.sum(axis=1) / use.sum()
        candidates = np.flatnonzero(share >= 0.05)
        row = int(rng.choice(candidates)) if len(candidates) else int(np.argmax(share))
        start = int(rng.integers(21 * 24, 28 * 24))
        fault = Theft(f"B1-A{row + 1:02d}", attack, alpha=float(rng.uniform(0.2, 0.7)), start=start)
        registered[row, start:] = attacked(fault, use[row, start:], hour[start:], rng)
        subject = fault.apartment
    # Whole litres on the meters (pulses); the input also sees the background loss.
    counters = np.floor(np.cumsum(registered, axis=1))
    values = np.diff(np.concatenate([np.zeros((houses, 1)), counters], axis=1)) / 1000
    total = use.sum(axis=0)
    inflow = (total + 0.03 * total.mean()) / 1000  # background leakage is pressure-driven: steady
    ids = [f"B1-A{i + 1:02d}" for i in range(houses)]
    group = Group("B1", Resource.WATER, "m3", (GroupInput("B1-IN"),))
    data = GroupData(group, t, ids, values, np.zeros(values.shape, np.int8), np.zeros(values.shape, np.int64),
                     inflow, np.zeros(len(t)), hour, (t // 86400 + 3) % 7, np.full(houses, 0.001))
    return data, subject, start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--houses", type=int, default=30)
    parser.add_argument("--buildings", type=int, default=8, help="buildings per attack")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from analytics_eval import daily_runs, detectors  # the same schedule as the synthetic evaluation

    warnings.simplefilter("ignore")
    t = time.perf_counter()
    pool = household_days(args.houses, 7, args.seed)
    print(f"pysimdeum: {args.houses} households x 7 simulated days ({time.perf_counter() - t:.0f} s), "
          f"mean {pool.mean() * 24:.0f} l/day per household; buildings of {args.houses} apartments, {DAYS} days")
    rng = np.random.default_rng(args.seed)
    dets = detectors()
    clean_false = 0
    for _ in range(args.buildings):
        data, _, _ = building(pool, rng, None)
        clean_false += len(daily_runs(data, dets))
    print(f"{'attack':<8} {'recall':>7} {'false':>6}  note")
    for attack in ATTACKS:
        found = false = 0
        for _ in range(args.buildings):
            data, subject, start = building(pool, rng, attack)
            first = daily_runs(data, dets)
            found += any(s == subject and h - start <= 7 * 24 for (s, _), h in first.items())
            false += sum(s != subject for s, _ in first)
        note = "daily totals unchanged: hourly balance only" if attack in ("h5", "h6") else ""
        print(f"{attack:<8} {found / args.buildings:>7.2f} {false:>6}  {note}")
    print(f"clean buildings: {clean_false} false findings in {args.buildings} buildings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
