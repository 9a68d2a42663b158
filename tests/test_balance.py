"""Balance of groups: hand-computed trees, local days and months, API points,
and properties of random trees (balanced inputs give zero imbalance at every level)."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balans_edge.core.balance import (
    BLOCK_ROWS,
    BalanceSeries,
    BalanceTree,
    aggregate,
    compute,
    points,
)
from balans_edge.core.model import Group, GroupInput, Meter, Quality, Resource

T0 = 1_390_176_000  # 2014-01-20 00:00:00 UTC
H = 3600
Data = dict[str, list[float | None]]


def meter(meter_id: str, group_id: str | None = None) -> Meter:
    return Meter(meter_id, Resource.WATER, "m3", 0.001, T0, group_id=group_id)


def group(group_id: str, *inputs: str | tuple[str, int], parent: str | None = None, norm: float | None = None) -> Group:
    feeds = tuple(GroupInput(i) if isinstance(i, str) else GroupInput(*i) for i in inputs)
    return Group(group_id, Resource.WATER, "m3", feeds, parent_id=parent, loss_norm_pct=norm)


def run(
    groups: list[Group],
    meters: list[Meter],
    data: Data,
    codes: dict[str, list[int]] | None = None,
    t0: int = T0,
) -> tuple[BalanceTree, BalanceSeries]:
    """Compile and compute; a value None is missing (NaN, code missing) unless ``codes`` says otherwise."""
    tree = BalanceTree.compile(groups, [(100 + i, m) for i, m in enumerate(meters)])
    hours = len(next(iter(data.values())))
    values = np.array([[np.nan if v is None else v for v in data[m]] for m in tree.meter_ids]).reshape(-1, hours)
    quality = np.where(np.isnan(values), Quality.MISSING, Quality.MEASURED).astype(np.int8)
    for i, m in enumerate(tree.meter_ids):
        if codes and m in codes:
            quality[i] = codes[m]
    t = t0 + H * np.arange(hours, dtype=np.int64)
    return tree, compute(tree, t, values, quality)


def col(series: BalanceSeries, name: str, group_id: str) -> list:
    return getattr(series, name)[series.group_ids.index(group_id)].tolist()


def house() -> tuple[list[Group], list[Meter]]:
    """Two feeds, an outgoing transit pipe metered inside the house, three apartments."""
    groups = [group("h", "f1", "f2", ("transit", -1))]
    meters = [meter(m) for m in ("f1", "f2", "transit", "unrelated")] + [meter(f"a{i}", "h") for i in (1, 2, 3)]
    return groups, meters


def test_house_with_two_feeds_and_transit() -> None:
    groups, meters = house()
    data: Data = {"f1": [10, 4], "f2": [6, 2], "transit": [3, 1], "a1": [4, 1], "a2": [5, 2], "a3": [2.5, 1.5]}
    tree, s = run(groups, meters, data, codes={"a2": [0, 1], "f2": [0, 1]})
    assert "unrelated" not in tree.meter_ids  # meters no group refers to are not read
    keys = dict(zip(tree.meter_ids, tree.meter_keys.tolist(), strict=True))
    assert keys == {"a1": 104, "a2": 105, "a3": 106, "f1": 100, "f2": 101, "transit": 102}
    assert col(s, "input", "h") == [13.0, 5.0]
    assert col(s, "consumed", "h") == [11.5, 4.5]
    assert col(s, "measured", "h") == [3, 2]
    assert col(s, "estimated", "h") == [0, 1]
    assert col(s, "missing", "h") == [0, 0]
    assert col(s, "input_measured", "h") == [3, 2]
    assert col(s, "input_estimated", "h") == [0, 1]
    assert s.t.tolist() == [T0, T0 + H]


def nested() -> tuple[list[Group], list[Meter]]:
    groups = [group("s", "s_in"), group("h1", "h1_in", parent="s"), group("h2", "h2_in", parent="s")]
    meters = [meter("s_in"), meter("h1_in"), meter("h2_in"), meter("lamp", "s")]
    meters += [meter("a", "h1"), meter("b", "h1"), meter("c", "h2")]
    return groups, meters


def test_nested_street_counts_house_inputs_and_direct_meter() -> None:
    groups, meters = nested()
    data: Data = {"s_in": [20], "h1_in": [8], "h2_in": [7], "lamp": [3], "a": [3], "b": [4], "c": [6]}
    _, s = run(groups, meters, data)
    assert col(s, "consumed", "s") == [18.0]  # 8 + 7 from the houses' inputs, 3 direct
    assert col(s, "input", "s") == [20.0]
    assert col(s, "consumed", "h1") == [7.0]
    assert col(s, "consumed", "h2") == [6.0]
    assert col(s, "measured", "s") == [3]  # lamp and the two house input meters
    assert col(s, "measured", "h1") == [2]
    assert col(s, "input_measured", "s") == [1]


def test_missing_members_are_left_out_and_counted() -> None:
    groups = [group("h", "in")]
    meters = [meter("in")] + [meter(f"a{i}", "h") for i in range(4)]
    data: Data = {"in": [16], "a0": [1], "a1": [2], "a2": [None], "a3": [4]}
    _, s = run(groups, meters, data)
    assert col(s, "consumed", "h") == [7.0]
    assert (col(s, "measured", "h"), col(s, "missing", "h")) == ([3], [1])
    (p,) = points(s, 0, groups[0], threshold=0.9)
    assert p["completeness"] == {"measured": 0.75, "estimated": 0.0, "missing": 0.25}
    assert p["flags"] == ["incomplete"]
    assert p["input"] == 16.0 and p["imbalance"] == 9.0 and p["loss_pct"] == 56.25
    assert points(s, 0, groups[0], threshold=0.75)[0]["flags"] == []


def test_nan_with_a_known_code_counts_as_missing() -> None:
    groups = [group("h", "in")]
    data: Data = {"in": [3], "a": [None], "b": [2]}
    _, s = run(groups, [meter("in"), meter("a", "h"), meter("b", "h")], data, codes={"a": [Quality.ESTIMATED]})
    assert (col(s, "consumed", "h"), col(s, "estimated", "h"), col(s, "missing", "h")) == ([2.0], [0], [1])


def test_absent_meter_is_not_a_member() -> None:
    groups = [group("h", "in")]
    meters = [meter("in"), meter("a", "h"), meter("b", "h"), meter("new", "h")]
    data: Data = {"in": [5, 5], "a": [1, 1], "b": [2, 2], "new": [None, 1]}
    _, s = run(groups, meters, data, codes={"new": [Quality.ABSENT, Quality.MEASURED]})
    assert col(s, "measured", "h") == [2, 3]
    assert col(s, "missing", "h") == [0, 0]
    assert col(s, "consumed", "h") == [3.0, 4.0]
    assert points(s, 0, groups[0], threshold=1.0)[0]["completeness"]["measured"] == 1.0


def test_missing_input_hides_input_and_loss() -> None:
    groups, meters = house()
    data: Data = {"f1": [None], "f2": [6], "transit": [3], "a1": [1], "a2": [1], "a3": [1]}
    _, s = run(groups, meters, data)
    assert col(s, "input", "h") == [3.0]  # the known part, for sums over longer periods
    assert col(s, "input_missing", "h") == [1]
    (p,) = points(s, 0, groups[0], threshold=0.5)
    assert (p["input"], p["imbalance"], p["loss_pct"], p["consumed"]) == (None, None, None, 3.0)
    assert p["flags"] == ["input_missing"]


def test_group_of_groups_and_group_without_members() -> None:
    groups = [group("p", "p_in"), group("c1", "c1_in", parent="p"), group("c2", "c2_in", parent="p")]
    groups.append(group("empty", "e_in"))
    meters = [meter(m) for m in ("p_in", "c1_in", "c2_in", "e_in")] + [meter("x", "c1")]
    data: Data = {"p_in": [9], "c1_in": [4], "c2_in": [3.5], "e_in": [2], "x": [4]}
    _, s = run(groups, meters, data)
    assert col(s, "consumed", "p") == [7.5]
    assert col(s, "measured", "p") == [2]
    assert col(s, "consumed", "c2") == [0.0]
    assert col(s, "consumed", "empty") == [0.0]
    assert col(s, "measured", "empty") == [0]
    (p,) = points(s, s.group_ids.index("empty"), groups[3], threshold=0.9)
    assert p["completeness"] == {"measured": 0.0, "estimated": 0.0, "missing": 0.0}
    assert p["flags"] == ["no_members"]
    assert (p["imbalance"], p["loss_pct"]) == (2.0, 100.0)


def test_long_member_lists_are_cut_into_pieces() -> None:
    """More members than BLOCK_ROWS: a group spans several pieces and blocks."""
    n = 2 * BLOCK_ROWS + 37
    groups = [group(f"g{k}", f"in{k}") for k in range(40)]
    meters = [meter(f"in{k}") for k in range(40)] + [meter(f"m{k}.{i}", f"g{k}") for k in range(40) for i in range(n)]
    rng = np.random.default_rng(1)
    data: Data = {m.meter_id: [float(v) for v in rng.integers(0, 100, 3)] for m in meters}
    data["m3.5"] = [None, 1.0, None]
    _, one = run(groups, meters, data)
    for k in (0, 3, 39):
        expect = [sum(data[f"m{k}.{i}"][h] or 0.0 for i in range(n)) for h in range(3)]
        assert col(one, "consumed", f"g{k}") == expect
    assert col(one, "missing", "g3") == [1, 0, 1]
    assert col(one, "measured", "g3") == [n - 1, n, n - 1]


def daily(tz: str, start: datetime, hours: int, step: Literal["day", "month"] = "day") -> BalanceSeries:
    groups = [group("h", "in")]
    data: Data = {"in": [1.0] * hours, "a": [0.25] * hours, "b": [0.5] * hours}
    _, s = run(groups, [meter("in"), meter("a", "h"), meter("b", "h")], data, t0=int(start.timestamp()))
    return aggregate(s, step, ZoneInfo(tz))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_aggregate_to_local_days_in_moscow() -> None:
    s = daily("Europe/Moscow", utc(2014, 1, 20), 48)  # UTC+4 until October 2014: days start at 20:00 UTC
    assert s.t.tolist() == [T0 - 4 * H, T0 + 20 * H, T0 + 44 * H]
    assert col(s, "consumed", "h") == [0.75 * 20, 0.75 * 24, 0.75 * 4]
    assert col(s, "input", "h") == [20.0, 24.0, 4.0]
    assert col(s, "measured", "h") == [40, 48, 8]
    assert col(s, "input_measured", "h") == [20, 24, 4]
    later = daily("Europe/Moscow", utc(2015, 1, 20), 24)  # UTC+3 since: days start at 21:00 UTC
    assert later.t.tolist() == [int(utc(2015, 1, 19, 21).timestamp()), int(utc(2015, 1, 20, 21).timestamp())]
    assert col(later, "input", "h") == [21.0, 3.0]
    assert aggregate(s, "hour", ZoneInfo("Europe/Moscow")) is s


@pytest.mark.parametrize(
    ("start", "lengths"),
    [
        (utc(2024, 3, 29, 23), [24, 23]),  # local 2024-03-30 and the 23-hour 2024-03-31
        (utc(2024, 10, 26, 22), [25, 24]),  # the 25-hour 2024-10-27, then 2024-10-28
    ],
)
def test_aggregate_across_dst_in_berlin(start: datetime, lengths: list[int]) -> None:
    s = daily("Europe/Berlin", start, sum(lengths))
    starts = [int(start.timestamp()), int(start.timestamp()) + lengths[0] * H]
    assert s.t.tolist() == starts
    assert [datetime.fromtimestamp(t, ZoneInfo("Europe/Berlin")).hour for t in starts] == [0, 0]
    assert col(s, "input", "h") == [float(n) for n in lengths]
    assert col(s, "consumed", "h") == [0.75 * n for n in lengths]
    assert col(s, "measured", "h") == [2 * n for n in lengths]


def test_aggregate_to_local_months() -> None:
    s = daily("Europe/Berlin", utc(2024, 3, 31, 20), 6, step="month")  # 22:00 and 23:00 CEST are still March
    assert s.t.tolist() == [int(utc(2024, 2, 29, 23).timestamp()), int(utc(2024, 3, 31, 22).timestamp())]
    assert col(s, "input", "h") == [2.0, 4.0]
    assert col(s, "measured", "h") == [4, 8]


def test_points_flags() -> None:
    groups = [group("h", "in", "in2", norm=5.0)]
    meters = [meter("in"), meter("in2"), meter("a", "h")]
    data: Data = {"in": [60, 5, 0], "in2": [40, 5, 0], "a": [90, 12, 0]}
    _, s = run(groups, meters, data, codes={"in2": [0, 1, 0]})
    over, negative, empty = points(s, 0, groups[0], threshold=0.9)
    assert over == {
        "t": "2014-01-20T00:00:00Z",
        "input": 100.0,
        "consumed": 90.0,
        "imbalance": 10.0,
        "loss_pct": 10.0,
        "completeness": {"measured": 1.0, "estimated": 0.0, "missing": 0.0},
        "flags": ["norm_exceeded"],
    }
    assert negative["t"] == "2014-01-20T01:00:00Z"
    assert (negative["imbalance"], negative["loss_pct"]) == (-2.0, -20.0)
    assert negative["flags"] == ["input_estimated", "negative_imbalance"]
    assert (empty["loss_pct"], empty["flags"]) == (None, [])
    # Within the meters' pulse resolution a deficit is rounding, not a metering problem.
    assert points(s, 0, groups[0], threshold=0.9, resolution=2.0)[1]["flags"] == ["input_estimated"]
    assert points(s, 0, groups[0], threshold=0.9, resolution=1.999)[1]["flags"] == [
        "input_estimated", "negative_imbalance"]


def test_balanced_float_noise_raises_no_flag() -> None:
    groups = [group("h", "in", norm=0.0)]
    _, s = run(groups, [meter("in"), meter("a", "h"), meter("b", "h")], {"in": [0.3], "a": [0.1], "b": [0.2]})
    (p,) = points(s, 0, groups[0], threshold=1.0)
    assert (p["imbalance"], p["flags"]) == (0.0, [])


@st.composite
def balanced_sites(draw: st.DrawFn) -> tuple[list[Group], list[Meter], Data, dict[str, list[str]]]:
    """A random tree whose every group's inputs add up exactly to what its members consume.

    Values are integers, so sums in float64 are exact."""
    hours = draw(st.integers(1, 3))
    depth = draw(st.integers(1, 5))
    ids = itertools.count()
    groups: list[Group] = []
    meters: list[Meter] = []
    data: Data = {}
    direct: dict[str, list[str]] = {}
    volume = st.lists(st.integers(0, 1000), min_size=hours, max_size=hours)

    def build(parent: str | None, level: int) -> np.ndarray:
        gid = f"g{next(ids)}"
        total = np.zeros(hours)
        direct[gid] = []
        for _ in range(draw(st.integers(0, 3))):
            mid = f"m{next(ids)}"
            meters.append(meter(mid, gid))
            data[mid] = [float(v) for v in draw(volume)]
            direct[gid].append(mid)
            total += data[mid]
        for _ in range(draw(st.integers(0, 3)) if level < depth else 0):
            total += build(gid, level + 1)
        inputs: list[tuple[str, int]] = []
        remaining = total.copy()
        for _ in range(draw(st.integers(1, 3)) - 1):  # extra feeds or transit pipes, drawn freely
            mid, sign = f"i{next(ids)}", draw(st.sampled_from([1, -1]))
            data[mid] = [float(v) for v in draw(volume)]
            remaining -= sign * np.array(data[mid])
            inputs.append((mid, sign))
        last = f"i{next(ids)}"
        data[last] = remaining.tolist()  # the last feed closes the balance exactly
        inputs.append((last, 1))
        meters.extend(meter(mid) for mid, _ in inputs)
        groups.append(group(gid, *inputs, parent=parent))
        return total

    build(None, 1)
    return groups, meters, data, direct


@settings(max_examples=60, deadline=None)
@given(balanced_sites())
def test_balanced_inputs_give_zero_imbalance_at_every_level(
    site: tuple[list[Group], list[Meter], Data, dict[str, list[str]]],
) -> None:
    groups, meters, data, direct = site
    _, s = run(groups, meters, data)
    assert np.array_equal(s.input, s.consumed)
    for g in groups:
        children = [c.group_id for c in groups if c.parent_id == g.group_id]
        expect = sum((np.array(col(s, "input", c)) for c in children), np.zeros(s.input.shape[1]))
        expect += sum((np.array(data[m]) for m in direct[g.group_id]), np.zeros(s.input.shape[1]))
        assert col(s, "input", g.group_id) == expect.tolist()
        members = len(direct[g.group_id]) + sum(len(c.inputs) for c in groups if c.parent_id == g.group_id)
        assert col(s, "measured", g.group_id) == [members] * s.input.shape[1]


def reference(groups: list[Group], data: Data, codes: dict[str, list[int]], hours: int) -> dict[str, dict]:
    """The semantics written out with plain loops, one group and hour at a time."""

    def known(m: str, h: int) -> float:
        v = data[m][h]
        return 0.0 if v is None else v

    def code(m: str, h: int) -> int:
        return Quality.MISSING if data[m][h] is None and codes[m][h] < Quality.MISSING else codes[m][h]

    def counts(ms: list[str], h: int) -> list[int]:
        return [sum(code(m, h) == c for m in ms) for c in (Quality.MEASURED, Quality.ESTIMATED, Quality.MISSING)]

    out = {}
    for g in groups:
        children = [c for c in groups if c.parent_id == g.group_id]
        members = [m for m in data if m.startswith("m") and m.split("@")[1] == g.group_id]
        counted = members + [i.meter_id for c in children for i in c.inputs]
        out[g.group_id] = {
            "input": [sum(i.sign * known(i.meter_id, h) for i in g.inputs) for h in range(hours)],
            "consumed": [
                sum(known(m, h) for m in members)
                + sum(i.sign * known(i.meter_id, h) for c in children for i in c.inputs)
                for h in range(hours)
            ],
            "counts": [counts(counted, h) for h in range(hours)],
            "input_counts": [counts([i.meter_id for i in g.inputs], h) for h in range(hours)],
        }
    return out


@settings(max_examples=40, deadline=None)
@given(balanced_sites(), st.randoms(use_true_random=False))
def test_matches_reference_with_missing_estimated_and_absent_hours(
    site: tuple[list[Group], list[Meter], Data, dict[str, list[str]]], rnd: random.Random
) -> None:
    groups, meters, data, _ = site
    hours = len(next(iter(data.values())))
    renamed = {m.meter_id: f"{m.meter_id}@{m.group_id}" if m.group_id else m.meter_id for m in meters}
    meters = [Meter(renamed[m.meter_id], m.resource, m.unit, 1.0, T0, group_id=m.group_id) for m in meters]
    groups = [
        Group(
            g.group_id,
            g.resource,
            g.unit,
            tuple(GroupInput(renamed[i.meter_id], i.sign) for i in g.inputs),
            parent_id=g.parent_id,
        )
        for g in groups
    ]
    data = {renamed[m]: v for m, v in data.items()}
    codes = {m: [rnd.choice([0, 0, 0, 1, 2, 3]) for _ in range(hours)] for m in data}
    data = {
        m: [None if c in (2, 3) or rnd.random() < 0.1 else v for v, c in zip(vs, codes[m], strict=True)]
        for m, vs in data.items()
    }
    _, s = run(groups, meters, data, codes=codes)
    for gid, want in reference(groups, data, codes, hours).items():
        assert col(s, "input", gid) == pytest.approx(want["input"], abs=1e-9)
        assert col(s, "consumed", gid) == pytest.approx(want["consumed"], abs=1e-9)
        got = zip(col(s, "measured", gid), col(s, "estimated", gid), col(s, "missing", gid), strict=True)
        assert [list(c) for c in got] == want["counts"]
        got = zip(*(col(s, f"input_{q}", gid) for q in ("measured", "estimated", "missing")), strict=True)
        assert [list(c) for c in got] == want["input_counts"]


def test_empty_tree_and_no_hours() -> None:
    tree = BalanceTree.compile([], [])
    s = compute(tree, np.zeros(0, np.int64), np.zeros((0, 0)), np.zeros((0, 0), np.int8))
    assert s.group_ids == [] and s.input.shape == (0, 0)
    groups, meters = house()
    tree = BalanceTree.compile(groups, list(enumerate(meters)))
    s = compute(tree, np.zeros(0, np.int64), np.zeros((6, 0)), np.zeros((6, 0), np.int8))
    assert s.consumed.shape == (1, 0)
    assert aggregate(s, "day", ZoneInfo("UTC")).t.tolist() == []
    assert points(s, 0, groups[0], 0.9) == []
    with pytest.raises(ValueError, match="must be"):
        compute(tree, np.zeros(2, np.int64), np.zeros((6, 1)), np.zeros((6, 1), np.int8))
