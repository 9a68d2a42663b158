"""Building scenarios with injected faults: the counters they report and the
ground truth they keep, checked exactly on small noise-free scenarios."""

from __future__ import annotations

import numpy as np
import pytest

from balans_edge.core.ingest import Ingest, IngestSettings, ReadingBatch
from balans_edge.core.model import COUNTER_MODULUS, ReadingFlag, Status
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugins.dmesh.scenario import (
    ClockDrift,
    CounterReset,
    Leak,
    LostModule,
    LowBattery,
    Magnet,
    NetworkLeak,
    Reversed,
    Scenario,
    Stuck,
    Unmetered,
    generate,
)

H = 3600
EXACT = Scenario(buildings=1, apartments=5, hours=72, seed=7, noise=0.0)
"""Noise-free and 3 whole days (a Monday to a Wednesday), so daily shapes average out."""


def litres(data, meter_id: str, a: int, b: int) -> int:
    """Signed pulses a meter counted between readings a and b (wrap-aware)."""
    c = data.counter[data.row(meter_id)]
    d = int(c[b] - c[a]) % COUNTER_MODULUS
    return d - COUNTER_MODULUS if d >= COUNTER_MODULUS // 2 else d


def true_litres(data, meter_id: str, a: int, b: int) -> float:
    return float(data.truth.consumption_m3[data.row(meter_id), a:b].sum()) * 1000


def test_meters_and_modules() -> None:
    data = generate(Scenario(buildings=2, apartments=(3, 2), hours=4))
    assert [m.meter_id for m in data.meters] == ["B1-IN", "B1-A01", "B1-A02", "B1-A03", "B2-IN", "B2-A01", "B2-A02"]
    assert len({m.module_id for m in data.meters}) == 7  # one module per meter
    assert all(m.channel == 1 and m.pulse_weight == 0.001 and m.unit == "m3" for m in data.meters)
    assert [m.group_id for m in data.meters] == [None, "B1", "B1", "B1", None, "B2", "B2"]  # inputs feed, not members
    groups = data.registry()["groups"]
    assert [(g.group_id, [i.meter_id for i in g.inputs]) for g in groups] == [("B1", ["B1-IN"]), ("B2", ["B2-IN"])]
    assert all(m.install_time == data.ts[0] and m.base_counter == data.counter[i, 0] for i, m in enumerate(data.meters))
    assert data.is_input.tolist() == [True, False, False, False, True, False, False]
    assert data.counter.shape == data.status.shape == (7, 5)
    assert ((data.counter >= 0) & (data.counter < COUNTER_MODULUS)).all()
    b = data.batch(2)
    assert b.ts.tolist() == [data.ts[2]] * 7 and b.module.tolist() == data.module.tolist()


def test_profile_shape() -> None:
    data = generate(Scenario(apartments=1, hours=7 * 24, noise=0.0, scale_sigma=0.0))
    use = data.truth.consumption_m3[1].reshape(7, 24)  # 2024-01-01 is a Monday
    weekday, weekend = use[0], use[5]
    assert weekday[[7, 8]].min() > 2 * weekday[[1, 2, 3]].max()  # morning peak over night minimum
    assert weekday[[19, 20, 21]].min() > 2 * weekday[[1, 2, 3]].max()
    assert weekend.sum() > weekday.sum()
    assert weekend.argmax() > weekday[:12].argmax()  # mornings start later at weekends
    assert np.isclose(weekday.mean() * 1000, 10.0)  # mean_lph


def test_balance_without_faults() -> None:
    week = Scenario(buildings=1, apartments=5, hours=7 * 24, seed=7, noise=0.0)
    data = generate(week)
    n = week.hours
    apartments = sum(litres(data, f"B1-A{a:02d}", 0, n) for a in range(1, 6))
    assert abs(litres(data, "B1-IN", 0, n) - apartments / (1 - 0.03)) <= 6  # one pulse of rounding per meter
    # With noise the truth balances exactly too, and the loss share holds over weeks.
    noisy = generate(Scenario(apartments=20, hours=4 * 7 * 24, seed=7))
    t = noisy.truth
    assert np.allclose(t.consumption_m3[0], t.consumption_m3[1:].sum(axis=0) + t.network_loss_m3[0])
    assert np.isclose(t.network_loss_m3.sum(), 0.03 * t.consumption_m3[0].sum(), rtol=0.03)
    assert np.array_equal(t.metered_m3, t.consumption_m3)
    assert (noisy.status == 0).all() and noisy.present.all()
    assert ((noisy.battery_mv >= 3300) & (noisy.battery_mv < 3650)).all()


def test_magnet_registers_the_rest() -> None:
    data = generate(EXACT, [Magnet("B1-A02", 0.4, start=10, end=58)])
    true = true_litres(data, "B1-A02", 10, 58)
    assert abs(litres(data, "B1-A02", 10, 58) - 0.6 * true) < 1
    assert abs(litres(data, "B1-A02", 0, 10) - true_litres(data, "B1-A02", 0, 10)) < 1
    (ft,) = data.truth.faults
    assert ft.meter_id == "B1-A02" and np.isclose(ft.volume_m3 * 1000, 0.4 * true)
    assert ft.hourly_m3[:10].sum() == ft.hourly_m3[58:].sum() == 0
    magnet = (data.status[data.row("B1-A02")] & Status.MAGNET) != 0
    assert not magnet[:11].any() and not magnet[59:].any()
    assert 0 < magnet[11:59].sum() < 48  # some readings of the window, not all
    assert (data.status[data.row("B1-A01")] == 0).all()


def test_stuck_counter() -> None:
    data = generate(EXACT, [Stuck("B1-A03", start=20, end=30)])
    c = data.counter[data.row("B1-A03")]
    assert (c[20:31] == c[20]).all()
    assert c[31] != c[30] and c[19] != c[20]
    assert np.isclose(data.truth.faults[0].volume_m3 * 1000, true_litres(data, "B1-A03", 20, 30))
    # The input still sees the water.
    assert litres(data, "B1-IN", 20, 30) == litres(generate(EXACT), "B1-IN", 20, 30)


def test_reversed_counter() -> None:
    data = generate(EXACT, [Reversed("B1-A01", start=5, end=15)])
    c = data.counter[data.row("B1-A01")]
    steps = (np.diff(c[5:16]) % COUNTER_MODULUS).astype(np.int64)
    assert (steps >= COUNTER_MODULUS // 2).all()  # every hour goes backwards
    assert abs(litres(data, "B1-A01", 5, 15) + true_litres(data, "B1-A01", 5, 15)) < 1
    reverse = (data.status[data.row("B1-A01")] & Status.REVERSE) != 0
    assert reverse[6:16].all() and not reverse[:6].any() and not reverse[16:].any()
    assert np.isclose(data.truth.faults[0].volume_m3 * 1000, 2 * true_litres(data, "B1-A01", 5, 15))


def test_reversed_counter_wraps_below_zero() -> None:
    # Restart at the very end of hour 0 (counter 0), then run backwards: the u32 counter wraps.
    data = generate(EXACT, [CounterReset("B1-A01", 0, at=1.0), Reversed("B1-A01", start=1, end=3)])
    c = data.counter[data.row("B1-A01")]
    assert c[1] == 0
    assert COUNTER_MODULUS - 100 < c[2] < COUNTER_MODULUS and c[3] < c[2]
    assert litres(data, "B1-A01", 1, 3) == -int(np.ceil(true_litres(data, "B1-A01", 1, 3) - 1e-9))


def test_counter_reset() -> None:
    data = generate(EXACT, [CounterReset("B1-A04", 30, at=0.25)])
    i = data.row("B1-A04")
    c, s = data.counter[i], data.status[i]
    hour = data.truth.metered_m3[i, 30] * 1000
    assert c[31] == np.floor(0.75 * hour)  # pulses since the restart
    assert c[31] <= hour
    reset = (s & Status.COUNTER_RESET) != 0
    assert reset.tolist() == [k == 31 for k in range(73)]
    assert abs(int(c[-1] - c[31]) - true_litres(data, "B1-A04", 31, 72)) < 1  # counting goes on from there
    (ft,) = data.truth.faults
    assert np.isclose(ft.volume_m3 * 1000, 0.25 * hour) and ft.hourly_m3[30] == ft.volume_m3


def test_lost_module() -> None:
    data = generate(EXACT, [LostModule("B1-A05", start=10, end=20)])
    ts, _, _ = data.readings("B1-A05")
    lo, hi = data.ts[0] + 10 * H, data.ts[0] + 20 * H
    assert not ((ts > lo) & (ts <= hi)).any()
    assert len(ts) == 73 - 10
    module = data.meters[data.row("B1-A05")].module_id
    assert module not in data.batch(15).module.tolist() and len(data.batch(15)) == 5
    assert module in data.batch(10).module.tolist() and module in data.batch(21).module.tolist()
    # The first reading after the gap carries the whole gap.
    assert abs(litres(data, "B1-A05", 10, 21) - true_litres(data, "B1-A05", 10, 21)) < 1
    assert np.isclose(data.truth.faults[0].volume_m3 * 1000, true_litres(data, "B1-A05", 10, 20))


def test_network_leak_and_unmetered_only_reach_the_input() -> None:
    base = generate(EXACT)
    leak = generate(EXACT, [NetworkLeak("B1", 50.0, start=5, end=29)])
    drawn = generate(EXACT, [Unmetered("B1", 30.0)])
    apts = ~base.is_input
    for data in (leak, drawn):
        assert np.array_equal(data.counter[apts], base.counter[apts])
        assert np.array_equal(data.truth.consumption_m3[apts], base.truth.consumption_m3[apts])
    assert abs(litres(leak, "B1-IN", 0, 72) - litres(base, "B1-IN", 0, 72) - 50 * 24) <= 1
    assert abs(litres(leak, "B1-IN", 0, 5) - litres(base, "B1-IN", 0, 5)) <= 1
    assert np.isclose(leak.truth.faults[0].volume_m3, 1.2)
    assert abs(litres(drawn, "B1-IN", 0, 72) - litres(base, "B1-IN", 0, 72) - 30 * 72) <= 1
    extra = drawn.truth.consumption_m3[0] - base.truth.consumption_m3[0]
    assert np.isclose(extra.sum(), drawn.truth.faults[0].volume_m3) and np.isclose(extra.mean() * 1000, 30.0)
    assert extra.max() > 3 * extra.min() > 0  # shaped like consumption, not a constant
    assert drawn.truth.faults[0].meter_id == "B1-IN"


def test_leak_is_metered_and_true() -> None:
    base = generate(EXACT)
    data = generate(EXACT, [Leak("B1-A02", 20.0, start=0, end=24, sensor=True)])
    assert abs(litres(data, "B1-A02", 0, 24) - litres(base, "B1-A02", 0, 24) - 480) <= 1
    assert abs(litres(data, "B1-IN", 0, 24) - litres(base, "B1-IN", 0, 24) - 480) <= 1
    assert np.isclose(true_litres(data, "B1-A02", 0, 24) - true_litres(base, "B1-A02", 0, 24), 480)
    leak = (data.status[data.row("B1-A02")] & Status.LEAK) != 0
    assert leak[1:25].all() and not leak[0] and not leak[25:].any()
    assert np.isclose(data.truth.faults[0].volume_m3, 0.48)


def test_truth_lists_faults_in_order() -> None:
    faults = [CounterReset("B1-A01", 3), Unmetered("B1", 5.0), Magnet("B1-A02", 0.5), Stuck("B1-A03", start=1, end=2)]
    data = generate(EXACT, faults)
    assert [ft.fault for ft in data.truth.faults] == faults
    assert [ft.meter_id for ft in data.truth.faults] == ["B1-A01", "B1-IN", "B1-A02", "B1-A03"]


def test_deterministic() -> None:
    scenario = Scenario(buildings=2, apartments=6, hours=48, seed=3)
    faults = [Magnet("B1-A01", 0.3, start=4), LostModule("B2-A02", start=2, end=5)]
    a, b = generate(scenario, faults), generate(scenario, faults)
    for name in ("counter", "status", "present", "module", "ts"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert np.array_equal(a.truth.consumption_m3, b.truth.consumption_m3)
    c = generate(Scenario(buildings=2, apartments=6, hours=48, seed=4), faults)
    assert not np.array_equal(a.counter, c.counter)
    assert not np.array_equal(a.truth.consumption_m3, c.truth.consumption_m3)


def test_faults_after_the_end_are_not_active_yet() -> None:
    """A running site generates a short scenario first: later faults wait for a longer one."""
    later = [Stuck("B1-A01", start=80), CounterReset("B1-A02", 72), Unmetered("B1", 5.0, start=100, end=120)]
    data = generate(EXACT, later)
    plain = generate(EXACT)
    assert np.array_equal(data.counter, plain.counter) and np.array_equal(data.status, plain.status)
    assert [ft.fault for ft in data.truth.faults] == later
    assert all(ft.volume_m3 == 0 for ft in data.truth.faults)
    longer = generate(Scenario(buildings=1, apartments=5, hours=130, seed=7, noise=0.0), later)
    assert np.array_equal(longer.counter[:, : EXACT.hours + 1], data.counter)
    assert all(ft.volume_m3 > 0 for ft in longer.truth.faults)


@pytest.mark.parametrize(
    ("scenario", "faults"),
    [
        (Scenario(start=1_704_067_201), []),
        (Scenario(network_loss=1.0), []),
        (EXACT, [Magnet("B1-A99", 0.2)]),
        (EXACT, [Leak("B1-IN", 5.0)]),
        (EXACT, [NetworkLeak("B2", 5.0)]),
        (EXACT, [Stuck("B1-A01", start=10, end=10)]),
        (EXACT, [LostModule("B1-A01", start=-1)]),
        (EXACT, [CounterReset("B1-A01", -1)]),
        (EXACT, [CounterReset("B1-A01", 5, at=1.5)]),
        (EXACT, [LowBattery("B1-A01", days=0)]),
        (EXACT, [LowBattery("B1-A01", days=-1.0)]),
        (EXACT, [ClockDrift("B1-A99", 60.0)]),
    ],
)
def test_invalid(scenario: Scenario, faults: list) -> None:
    with pytest.raises(ValueError, match=r"."):
        generate(scenario, faults)


def test_month_of_two_buildings() -> None:
    scenario = Scenario(buildings=2, apartments=40, hours=720, seed=11)
    data = generate(scenario, [Magnet("B1-A07", 0.5, start=100, end=300), Unmetered("B2", 40.0, start=200)])
    assert data.counter.shape == (82, 721)
    assert sum(len(b) for b in data.all_batches()) == 82 * 721


async def test_ingest_accepts_the_readings(storage: SqliteStorage) -> None:
    scenario = Scenario(apartments=3, hours=30, seed=5)
    data = generate(scenario, [CounterReset("B1-A01", 10), LostModule("B1-A02", start=4, end=8),
                               Reversed("B1-A03", start=20, end=22)])
    await storage.registry_apply(data.registry())
    ingest = Ingest(storage, IngestSettings(registry_check_s=0), clock=lambda: int(data.ts[-1]))
    accepted = resets = 0
    for batch in data.all_batches():
        res = await ingest.ingest(batch)
        assert res.quarantined == 0 and not res.rejected
        accepted, resets = accepted + res.accepted, resets + res.resets
    assert accepted == int(data.present.sum())
    assert resets == 1  # the flagged restart; the reversed hours are a counter running backwards, not resets
    keys = await storage.meter_keys()
    rows = await storage.readings(keys["B1-A01"], int(data.ts[0]), int(data.ts[-1]) + 1)
    flagged = rows.ts[(rows.flags & ReadingFlag.EPOCH_START) != 0].tolist()
    assert flagged == [int(data.ts[11])]
    rows = await storage.readings(keys["B1-IN"], int(data.ts[0]), int(data.ts[-1]) + 1)
    assert rows.pulses[-1] == litres(data, "B1-IN", 0, 30)
    rows = await storage.readings(keys["B1-A03"], int(data.ts[0]), int(data.ts[-1]) + 1)
    assert rows.ts[(rows.flags & ReadingFlag.BACKWARDS) != 0].tolist() == [int(data.ts[21]), int(data.ts[22])]
    ran_back = (rows.counter[20:22] - rows.counter[21:23]) % 2**32  # what the counter lost in each hour
    assert np.diff(rows.pulses)[20:22].tolist() == (-ran_back).tolist()


def test_longer_scenario_begins_with_the_shorter_one() -> None:
    """A simulator extending its horizon must not see its history change."""
    faults = [
        Magnet("B1-A01", 0.4, start=5, end=30),
        LostModule("B1-A02", start=10, end=20),
        CounterReset("B2-A01", 12, at=0.3),
        LowBattery("B2-A02", days=1.0, start=20),
        ClockDrift("B1-A03", 600.0, start=8),
        Leak("B2-A03", 15.0, start=3, end=40, sensor=True),
    ]
    short = generate(Scenario(buildings=2, apartments=(4, 3), hours=48, seed=9), faults)
    long = generate(Scenario(buildings=2, apartments=(4, 3), hours=100, seed=9), faults)
    assert not short.present[short.row("B2-A02"), -1]  # the battery died within the short horizon
    for name in ("counter", "status", "present", "battery_mv"):
        assert np.array_equal(getattr(short, name), getattr(long, name)[:, :49]), name
    assert np.array_equal(short.ts, long.ts[:49])
    for name in ("consumption_m3", "metered_m3", "network_loss_m3"):
        assert np.array_equal(getattr(short.truth, name), getattr(long.truth, name)[:, :48]), name
    for a, b in zip(short.truth.faults, long.truth.faults, strict=True):
        assert np.array_equal(a.hourly_m3, b.hourly_m3[:48]), a.fault
    assert [a.area_m2 for a in short.accounts] == [a.area_m2 for a in long.accounts]


def test_low_battery() -> None:
    base = generate(EXACT)
    data = generate(EXACT, [LowBattery("B1-A03", days=2.0, start=10)])
    i = data.row("B1-A03")
    mv, present = data.battery_mv[i], data.present[i]
    healthy = int(mv[0])
    assert 3300 <= healthy < 3650 and (mv[:11] == healthy).all()
    # A straight line from the healthy level to 2,500 mV over 48 hours: dead at reading 58.
    slope = (healthy - 2500) / 48
    assert ((-np.diff(mv[10:59]) >= np.floor(slope)) & (-np.diff(mv[10:59]) <= np.ceil(slope))).all()
    assert abs(mv[34] - (healthy + 2500) / 2) <= 1
    assert mv[57] > 2500 and (mv[58:] == 2500).all()
    low = (data.status[i] & Status.LOW_BATTERY) != 0
    assert low[present].tolist() == (mv[present] < 3000).tolist()
    assert low[present].any() and not low[present].all()
    assert present.tolist() == [k < 58 for k in range(73)]
    assert data.meters[i].module_id not in data.batch(58).module.tolist() and len(data.batch(58)) == 5
    # The hours after the death (closed by readings 58..72) are never reported.
    (ft,) = data.truth.faults
    assert ft.meter_id == "B1-A03"
    assert (ft.hourly_m3[:57] == 0).all()
    assert np.array_equal(ft.hourly_m3[57:], data.truth.consumption_m3[i, 57:])
    assert np.isclose(ft.volume_m3 * 1000, true_litres(data, "B1-A03", 57, 72))
    # The meter itself keeps counting; nothing else changes.
    assert np.array_equal(data.counter, base.counter)
    others = np.arange(len(data.meters)) != i
    for name in ("status", "present", "battery_mv"):
        assert np.array_equal(getattr(data, name)[others], getattr(base, name)[others]), name


def test_low_battery_past_the_end_never_dies() -> None:
    data = generate(EXACT, [LowBattery("B1-A01", days=30.0, start=60)])
    i = data.row("B1-A01")
    assert data.present.all() and data.battery_mv[i, -1] > 3000
    assert data.battery_mv[i, 60] > data.battery_mv[i, 61] > data.battery_mv[i, -1]
    assert (data.status == 0).all() and data.truth.faults[0].volume_m3 == 0


def test_clock_drift() -> None:
    base = generate(EXACT)
    # 2 hours a day fast from hour 24: the clock is 300 s ahead per hour gone by,
    # half an hour ahead at reading 30, one hour at 36, four hours at 72.
    data = generate(EXACT, [ClockDrift("B1-A02", 7200.0, start=24)])
    i = data.row("B1-A02")
    m = data.truth.metered_m3[i] * 1000
    cum = np.concatenate([[0.0], np.cumsum(m)])
    assert np.array_equal(data.ts, base.ts)
    assert np.array_equal(data.counter[i, :25], base.counter[i, :25])
    for k, expected in [(24, cum[24]), (30, cum[29] + 0.5 * m[29]), (36, cum[35]), (48, cum[46]),
                        (72, cum[68])]:
        assert 0 <= expected - litres(data, "B1-A02", 0, k) < 1 + 1e-9, k
    behind = [litres(data, "B1-A02", 0, k) - litres(base, "B1-A02", 0, k) for k in range(25, 73)]
    assert max(behind) <= 0 and sum(d < 0 for d in behind) > 40  # latched before the hour
    # In total only the last four hours are missing.
    total = litres(data, "B1-A02", 0, 72)
    assert abs(total - (litres(base, "B1-A02", 0, 72) - (cum[72] - cum[68]))) <= 1
    (ft,) = data.truth.faults
    assert ft.meter_id == "B1-A02" and np.abs(ft.hourly_m3[:24]).max() < 1e-12  # float rounding only
    reported = np.array([litres(data, "B1-A02", k, k + 1) for k in range(72)], dtype=float)
    assert np.abs(ft.hourly_m3 * 1000 - (reported - m)).max() <= 1
    assert np.isclose(ft.volume_m3 * 1000, -(cum[72] - cum[68]))
    assert ft.hourly_m3[24:].min() < 0  # volume moves to later hours
    # The truth and every other meter are those of the scenario without the fault.
    assert np.array_equal(data.truth.consumption_m3, base.truth.consumption_m3)
    assert np.array_equal(data.truth.metered_m3, base.truth.metered_m3)
    others = np.arange(len(data.meters)) != i
    assert np.array_equal(data.counter[others], base.counter[others])
    assert np.array_equal(data.status, base.status) and data.present.all()


def test_slow_clock_latches_later() -> None:
    base = generate(EXACT)
    data = generate(EXACT, [ClockDrift("B1-A02", -7200.0, start=24)])
    i = data.row("B1-A02")
    m = data.truth.metered_m3[i] * 1000
    cum = np.concatenate([[0.0], np.cumsum(m)])
    assert 0 <= cum[30] + 0.5 * m[30] - litres(data, "B1-A02", 0, 30) < 1 + 1e-9
    assert 0 <= cum[37] - litres(data, "B1-A02", 0, 36) < 1 + 1e-9
    # Readings that would be latched past the end are latched at the end.
    # Reading 68 is latched 3 h 40 min late, at 71:40; 69 would be at 72:45.
    assert 0 <= cum[71] + m[71] * 2 / 3 - litres(data, "B1-A02", 0, 68) < 1 + 1e-9
    assert np.array_equal(data.counter[i, 69:], np.repeat(base.counter[i, -1], 4))
    assert data.counter[i, 68] < data.counter[i, 69]


def assert_same_batch(a: ReadingBatch, b: ReadingBatch) -> None:
    for name in ("module", "channel", "ts", "counter", "status"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_batch_at_between_readings() -> None:
    faults = [Reversed("B1-A01", start=5, end=15), LostModule("B1-A05", start=10, end=20), CounterReset("B1-A04", 30)]
    data = generate(EXACT, faults)
    t0 = int(data.ts[0])
    for k in (0, 3, 15, 31, 72):  # on the hour: the reading itself
        assert_same_batch(data.batch_at(t0 + k * H), data.batch(k))
    assert len(data.batch_at(t0 + 15 * H)) == 5
    half = data.batch_at(t0 + 40 * H + 1800)
    assert half.module.tolist() == data.module.tolist()
    assert (half.ts == t0 + 40 * H + 1800).all() and (half.channel == 1).all()
    c0, c1 = data.counter[:, 40], data.counter[:, 41]
    assert (c1 > c0).all()  # no wrap in this hour, so plain integers suffice
    assert half.counter.tolist() == (c0 + (c1 - c0) // 2).tolist()
    assert half.status.tolist() == data.status[:, 41].tolist()
    quarter = data.batch_at(t0 + 40 * H + 900)
    assert quarter.counter.tolist() == (c0 + (c1 - c0) // 4).tolist()
    # The reversed meter counts down in between, and its status says so.
    r = data.row("B1-A01")
    rev = data.batch_at(t0 + 5 * H + 1800)  # the first reversed hour: REVERSE is on reading 6, not 5
    j = rev.module.tolist().index(data.module[r])
    step = litres(data, "B1-A01", 5, 6)
    assert step < 0
    assert rev.counter[j] == (data.counter[r, 5] + step // 2) % COUNTER_MODULUS
    assert rev.status[j] == Status.REVERSE and data.status[r, 5] == 0
    # Missing closing reading, or a restart in the hour: the meter reports nothing in between.
    lost = data.meters[data.row("B1-A05")].module_id
    assert lost not in data.batch_at(t0 + 12 * H + 1800).module.tolist()
    assert len(data.batch_at(t0 + 12 * H + 1800)) == 5
    reset = data.meters[data.row("B1-A04")].module_id
    assert reset not in data.batch_at(t0 + 30 * H + 1800).module.tolist()
    assert len(data.batch_at(t0 + 30 * H + 1800)) == 5
    assert reset in data.batch_at(t0 + 31 * H + 1800).module.tolist()


def test_batch_at_wraps_a_reversed_counter() -> None:
    """Counting down through zero must land just below 2^32, not near 2^31."""
    data = generate(EXACT, [CounterReset("B1-A01", 0, at=1.0), Reversed("B1-A01", start=1, end=3)])
    r = data.row("B1-A01")
    c1, c2 = int(data.counter[r, 1]), int(data.counter[r, 2])
    assert c1 == 0 and c2 > COUNTER_MODULUS // 2
    b = data.batch_at(int(data.ts[1]) + 1800)
    j = b.module.tolist().index(data.module[r])
    below = COUNTER_MODULUS - c2  # pulses counted down in hour 1
    assert b.counter[j] == COUNTER_MODULUS - (below + 1) // 2
    assert c2 <= b.counter[j] < COUNTER_MODULUS


@pytest.mark.parametrize("offset", [-1, 72 * H + 1, -H])
def test_batch_at_outside_the_scenario(offset: int) -> None:
    data = generate(EXACT)
    with pytest.raises(ValueError, match="outside"):
        data.batch_at(int(data.ts[0]) + offset)


def test_registry() -> None:
    data = generate(Scenario(buildings=2, apartments=(3, 2), hours=4, noise=0.0))
    reg = data.registry({0: 900001, 1: 900002})
    assert [c.concentrator_id for c in reg["concentrators"]] == [900001, 900002]
    assert [m.module_id for m in reg["modules"]] == data.module.tolist()
    assert [m.concentrator_id for m in reg["modules"]] == [900001] * 4 + [900002] * 3
    assert [m.channels for m in reg["modules"]] == [0b001] * 7
    apartments = ["B1-A01", "B1-A02", "B1-A03", "B2-A01", "B2-A02"]
    assert [a.account_id for a in reg["accounts"]] == apartments
    assert all(a.area_m2 is not None and 25 <= a.area_m2 <= 140 for a in reg["accounts"])
    assert {m.meter_id: m.account_id for m in reg["meters"]} == {
        "B1-IN": None, "B1-A01": "B1-A01", "B1-A02": "B1-A02", "B1-A03": "B1-A03",
        "B2-IN": None, "B2-A01": "B2-A01", "B2-A02": "B2-A02",
    }
    plain = data.registry()
    assert plain["concentrators"] == []
    assert [m.concentrator_id for m in plain["modules"]] == [None] * 7
    assert plain["accounts"] == reg["accounts"] and plain["meters"] == reg["meters"]


def test_bigger_households_live_in_bigger_flats() -> None:
    data = generate(Scenario(apartments=60, hours=24, noise=0.0, scale_sigma=1.0, seed=2))
    use = data.truth.consumption_m3[1:].sum(axis=1)
    area = np.array([a.area_m2 for a in data.accounts])
    assert ((area >= 25) & (area <= 140)).all()
    assert (np.diff(area[np.argsort(use)]) >= 0).all()
    assert area.max() - area.min() > 30


async def test_registry_with_concentrators_and_accounts_applies(storage: SqliteStorage) -> None:
    data = generate(Scenario(buildings=2, apartments=(3, 2), hours=6, seed=5))
    await storage.registry_apply(data.registry({0: 900001, 1: 900002}))
    concentrators = await storage.registry_list("concentrators")
    assert [c.concentrator_id for c in concentrators] == [900001, 900002]
    modules = {m.module_id: m.concentrator_id for m in await storage.registry_list("modules")}
    assert modules == {int(m): 900001 + int(b) for m, b in zip(data.module, data.building, strict=True)}
    accounts = await storage.registry_list("accounts")
    assert {a.account_id: a.area_m2 for a in accounts} == {a.account_id: a.area_m2 for a in data.accounts}
    meter = await storage.registry_get("meters", "B2-A02")
    assert meter is not None and meter.account_id == "B2-A02"
    ingest = Ingest(storage, IngestSettings(registry_check_s=0), clock=lambda: int(data.ts[-1]))
    accepted = 0
    for batch in data.all_batches():
        res = await ingest.ingest(batch)
        assert res.quarantined == 0 and not res.rejected
        accepted += res.accepted
    assert accepted == 7 * 7  # 7 readings of 7 meters


def test_behaviour_change_moves_meter_and_input_together() -> None:
    """Less real use is no loss: the apartment and the input both drop, the balance stays."""
    from balans_edge.plugins.dmesh.scenario import BehaviourChange

    plain = generate(EXACT)
    data = generate(EXACT, [BehaviourChange("B1-A02", 0.5, start=24)])
    row = data.row("B1-A02")
    t, p = data.truth, plain.truth
    assert np.allclose(t.consumption_m3[row, 24:], 0.5 * p.consumption_m3[row, 24:])
    assert np.allclose(t.consumption_m3[row, :24], p.consumption_m3[row, :24])
    dropped = p.consumption_m3[row, 24:].sum() * 0.5
    assert t.consumption_m3[0].sum() == pytest.approx(p.consumption_m3[0].sum() - dropped)
    assert np.allclose(t.network_loss_m3, p.network_loss_m3)
    assert data.truth.faults[0].volume_m3 == pytest.approx(-dropped)
    with pytest.raises(ValueError, match="behaviour change"):
        generate(EXACT, [BehaviourChange("B1-IN", 0.5)])


def test_households_drawing_water_in_uses_have_empty_night_hours() -> None:
    """With uses of ~8 l, most night hours have no use at all, while the mean stays the profile's."""
    events = Scenario(apartments=40, hours=14 * 24, seed=1, event_litres=8.0)
    data = generate(events)
    use = data.truth.consumption_m3[1:] * 1000  # litres
    nights = use.reshape(40, 14, 24)[:, :, 1:5]
    assert (nights == 0).mean() > 0.6
    assert use.mean() == pytest.approx(generate(Scenario(apartments=40, hours=14 * 24, seed=1)).truth
                                       .consumption_m3[1:].mean() * 1000, rel=0.1)
    longer = generate(Scenario(apartments=40, hours=20 * 24, seed=1, event_litres=8.0))
    assert np.array_equal(longer.counter[:, : 14 * 24 + 1], data.counter)  # still prefix-stable
    with pytest.raises(ValueError, match="event_litres"):
        generate(Scenario(event_litres=-1.0))


@pytest.mark.parametrize("attack", ["h1", "h2", "h3", "h4", "h5", "h6"])
def test_theft_attacks(attack: str) -> None:
    """The six attacks on a tampered meter: h1-h4 hide volume, h5 and h6 keep each day's total."""
    from balans_edge.plugins.dmesh.scenario import Theft

    s = Scenario(apartments=5, hours=5 * 24, seed=3)
    plain, data = generate(s), generate(s, [Theft("B1-A02", attack, alpha=0.3, start=24)])
    row = data.row("B1-A02")
    true, metered = data.truth.consumption_m3[row], data.truth.metered_m3[row]
    assert np.array_equal(true, plain.truth.consumption_m3[row])  # the water still flows
    assert np.array_equal(metered[:24], true[:24])
    hidden = data.truth.faults[0].hourly_m3
    assert np.allclose(hidden, true - metered)
    days = hidden[24:].reshape(4, 24).sum(axis=1)
    if attack in ("h5", "h6"):
        assert np.allclose(days, 0.0) and np.abs(hidden[24:]).max() > 0  # daily totals kept, hours moved
    else:
        assert (days > 0).all()
    if attack == "h1":
        assert np.allclose(metered[24:], 0.3 * true[24:])
    if attack == "h2":
        hour = np.arange(24, 5 * 24) % 24
        assert np.all(metered[24:][(hour >= 8) & (hour < 18)] == 0)
    if attack == "h6":
        assert np.allclose(metered[24:48], true[24:48][::-1])
