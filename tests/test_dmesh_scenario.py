"""Building scenarios with injected faults: the counters they report and the
ground truth they keep, checked exactly on small noise-free scenarios."""

from __future__ import annotations

import numpy as np
import pytest

from balans_edge.core.ingest import Ingest, IngestSettings
from balans_edge.core.model import COUNTER_MODULUS, ReadingFlag, Status
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugins.dmesh.scenario import (
    CounterReset,
    Leak,
    LostModule,
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
    assert [m.group_id for m in data.meters] == ["B1"] * 4 + ["B2"] * 3
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
    data = generate(EXACT)
    n = EXACT.hours
    apartments = sum(litres(data, f"B1-A{a:02d}", 0, n) for a in range(1, 6))
    assert abs(litres(data, "B1-IN", 0, n) - apartments / (1 - 0.03)) <= 6  # one pulse of rounding per meter
    # With noise the truth balances exactly too.
    noisy = generate(Scenario(apartments=5, hours=72, seed=7))
    t = noisy.truth
    assert np.allclose(t.consumption_m3[0], t.consumption_m3[1:].sum(axis=0) + t.network_loss_m3[0])
    assert np.isclose(t.network_loss_m3.sum(), 0.03 * t.consumption_m3[0].sum())
    assert np.array_equal(t.metered_m3, t.consumption_m3)
    assert (noisy.status == 0).all() and noisy.present.all()


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


@pytest.mark.parametrize(
    ("scenario", "faults"),
    [
        (Scenario(start=1_704_067_201), []),
        (Scenario(network_loss=1.0), []),
        (EXACT, [Magnet("B1-A99", 0.2)]),
        (EXACT, [Leak("B1-IN", 5.0)]),
        (EXACT, [NetworkLeak("B2", 5.0)]),
        (EXACT, [Stuck("B1-A01", start=80)]),
        (EXACT, [CounterReset("B1-A01", 72)]),
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
    assert resets == 1 + 2  # the flagged restart, and the reversed hours seen as counters gone backwards
    keys = await storage.meter_keys()
    rows = await storage.readings(keys["B1-A01"], int(data.ts[0]), int(data.ts[-1]) + 1)
    flagged = rows.ts[(rows.flags & ReadingFlag.EPOCH_START) != 0].tolist()
    assert flagged == [int(data.ts[11])]
    rows = await storage.readings(keys["B1-IN"], int(data.ts[0]), int(data.ts[-1]) + 1)
    assert rows.pulses[-1] == litres(data, "B1-IN", 0, 30)
