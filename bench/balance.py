"""Balance computation: ``core.balance.compute`` against a plain numpy sum.

    python bench/balance.py [--apartments N] [--days N] [--seed N]

Builds a region in six levels (1 region, 4 cities, 5 districts each, 10 streets
each, 10 houses each, 2 entrances each by default: 4,000 entrances) with about
25 apartment meters per entrance (~100,000 member meters) and one input meter
per group, and 31 days of hourly values (744 hours): float64 with ~1 % missing
hours (NaN, code missing) and ~2 % estimated ones. Generation and
``BalanceTree.compile`` are not part of the measurement.

Times ``compute`` over the whole matrix (best of 3) and, in the same run, the
baseline ``values.sum()`` over the same array (best of 3): one sequential read
of the values, the memory-bandwidth floor; both run on one thread. Prints
both and their ratio. The
target: under 5 s and within 10x of the floor; the exit status is 0 when it
is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from balans_edge.core.balance import BalanceTree, compute
from balans_edge.core.model import Group, GroupInput, Meter, Quality, Resource

T_START = 1_704_067_200  # 2024-01-01 00:00:00 UTC
H = 3600
FANOUT = (("city", 4), ("district", 5), ("street", 10), ("house", 10), ("entrance", 2))
"""Children per group at each level below the region."""
TARGET_SECONDS = 5.0
TARGET_RATIO = 10.0
REPEATS = 3


@dataclass
class Site:
    groups: list[Group]
    meters: list[tuple[int, Meter]]


def build_site(apartments: int, rng: np.random.Generator) -> Site:
    """The group tree, one input meter per group, ``apartments`` meters (on average) per entrance."""
    groups: list[Group] = []
    meters: list[tuple[int, Meter]] = []

    def meter(meter_id: str, group_id: str | None) -> str:
        meters.append((len(meters) + 1, Meter(meter_id, Resource.WATER, "m3", 0.001, T_START, group_id=group_id)))
        return meter_id

    def group(group_id: str, level: str, parent: str | None) -> None:
        feed = meter(f"{group_id}/in", None)
        groups.append(Group(group_id, Resource.WATER, "m3", (GroupInput(feed),), level=level, parent_id=parent))

    group("r", "region", None)
    parents = ["r"]
    for level, n in FANOUT:
        children = []
        for p in parents:
            for i in range(n):
                group(f"{p}.{i}", level, p)
                children.append(f"{p}.{i}")
        parents = children
    for entrance in parents:
        for i in range(int(rng.integers(apartments - 5, apartments + 6))):
            meter(f"{entrance}/a{i}", entrance)
    return Site(groups, meters)


def hourly_data(meters: int, hours: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Values in m3 per hour and quality codes: ~1 % missing (NaN), ~2 % estimated."""
    values = rng.gamma(2.0, 0.01, size=(meters, hours))
    quality = np.zeros((meters, hours), np.int8)
    u = rng.random((meters, hours), dtype=np.float32)
    quality[u < 0.03] = Quality.ESTIMATED
    missing = u < 0.01
    quality[missing] = Quality.MISSING
    values[missing] = np.nan
    return values, quality


def best(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apartments", type=int, default=25, help="mean apartment meters per entrance (default 25)")
    parser.add_argument("--days", type=int, default=31, help="days of hourly data (default 31)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    t = time.perf_counter()
    site = build_site(args.apartments, rng)
    t_compile = time.perf_counter()
    tree = BalanceTree.compile(site.groups, site.meters)
    compile_s = time.perf_counter() - t_compile
    hours = args.days * 24
    values, quality = hourly_data(len(tree.meter_keys), hours, rng)
    ts = T_START + H * np.arange(hours, dtype=np.int64)
    print(
        f"{len(tree.group_ids):,} groups, {len(tree.meter_keys):,} meters ({tree.member_rows:,} members), "
        f"{hours:,} hours: values {values.nbytes / 1e6:,.0f} MB float64 + quality {quality.nbytes / 1e6:,.0f} MB"
    )
    print(f"(generated in {time.perf_counter() - t:.1f} s; compile {compile_s:.2f} s; numpy {np.__version__})")

    series = compute(tree, ts, values, quality)
    region = series.group_ids.index("r")
    print(f"region, first hour: input {series.input[region, 0]:.3f} m3, consumed {series.consumed[region, 0]:.3f} m3")

    floor = best(values.sum)
    seconds = best(lambda: compute(tree, ts, values, quality))
    ratio = seconds / floor
    print()
    print(f"values.sum() (floor): {floor:8.3f} s  (best of {REPEATS})")
    print(f"compute:              {seconds:8.3f} s  (best of {REPEATS})")
    print(f"compute / floor:      {ratio:8.1f} x")
    ok = seconds < TARGET_SECONDS and ratio <= TARGET_RATIO
    print(
        f"target: under {TARGET_SECONDS:.0f} s and within {TARGET_RATIO:.0f}x of the floor: "
        + ("met" if ok else "NOT met")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
