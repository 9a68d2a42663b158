"""Register values from pulses (core.periods.RegisterTable.values): the one
vectorised function the API, the exporter, Modbus and OPC UA call."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from balans_edge.core.model import COUNTER_MODULUS, Meter, Resource
from balans_edge.core.periods import MeterPeriod, RegisterTable

from ingest_support import RESET, T0, key, meter, new_ingest, open_storage, r

H = 3600


def test_a_meter_never_edited_reads_base_plus_pulses_times_weight():
    meters = [(1, Meter("A", Resource.WATER, "m3", 0.001, T0, base_reading=12.5)),
              (2, Meter("B", Resource.HEAT, "Gcal", 0.01, T0))]
    table = RegisterTable.of_meters(meters)
    got = table.values(np.array([1, 2, 1, 7]), np.array([T0, T0 + H, T0 - H, T0]), np.array([1000, 250, 4, 1]))
    assert got[:3].tolist() == pytest.approx([12.5 + 1.0, 2.5, 12.5 + 0.004])  # before install: the first period
    assert math.isnan(got[3])  # meter 7 is unknown
    assert table.value(1, T0, 1000) == pytest.approx(13.5)
    assert table.values(np.zeros(0), np.zeros(0), np.zeros(0)).shape == (0,)


def test_no_meter_known_is_nan_not_an_error():
    assert np.isnan(RegisterTable({}).values(np.array([1, 2]), np.array([T0, T0]), np.array([5, 6]))).all()


def test_a_weight_change_continues_the_register_from_its_anchor():
    """From the change on, the new pulses count with the new weight; the register
    at the change (anchor: pulses at the last reading before it) does not jump."""
    change = MeterPeriod(T0 + 10 * H, 0.01, 100.0, anchor_pulses=5000)
    table = RegisterTable({1: [MeterPeriod(T0, 0.001, 100.0), change]})
    ts = np.array([T0 + 9 * H, T0 + 10 * H, T0 + 11 * H])
    pulses = np.array([5000, 5000, 5300])
    assert table.values(np.ones(3), ts, pulses).tolist() == pytest.approx([105.0, 105.0, 105.0 + 300 * 0.01])
    # the pulses counted up to a reading exactly at the change are the old period's
    assert table.increment_weights(1, ts).tolist() == [0.001, 0.001, 0.01]


def test_a_new_base_reading_restarts_the_register():
    dial_read = MeterPeriod(T0 + 10 * H, 0.001, 500.0, anchor_pulses=5000)
    table = RegisterTable({1: [MeterPeriod(T0, 0.001, 100.0), dial_read]})
    got = table.values(np.ones(2), np.array([T0 + 9 * H, T0 + 11 * H]), np.array([5000, 5300]))
    assert got.tolist() == pytest.approx([105.0, 500.0 + 0.3])  # the dial was read anew: not consumption


def test_many_meters_with_their_own_periods_at_once():
    table = RegisterTable({
        3: [MeterPeriod(T0, 1.0), MeterPeriod(T0 + H, 2.0, anchor_pulses=10)],
        1: [MeterPeriod(T0, 0.5, 7.0)],
    })
    got = table.values(np.array([3, 1, 3, 1]), np.array([T0, T0, T0 + 2 * H, T0 + 2 * H]), np.array([10, 4, 15, 6]))
    assert got.tolist() == pytest.approx([10.0, 9.0, 20.0, 10.0])


async def test_register_values_run_on_across_counter_restarts_and_bases(tmp_path: Path):
    """The counter and its base never enter: ingest turns them into pulses since
    installation, chained across a restart and a wrap, and the register follows them."""
    storage = await open_storage(tmp_path / "edge.db", meters=[meter("W1", base_counter=COUNTER_MODULUS - 100,
                                                                     base_reading=40.0)])
    try:
        await new_ingest(storage).ingest([r(T0, COUNTER_MODULUS - 50), r(T0 + H, 150), r(T0 + 2 * H, 7, RESET)])
        rows = await storage.readings(await key(storage), 0, 2**40)
        assert rows.pulses.tolist() == [50, 250, 257]  # from the base counter, across the wrap, then the new epoch
        values = (await storage.register_table()).values(rows.meter, rows.ts, rows.pulses)
        assert values.tolist() == pytest.approx([40.05, 40.25, 40.257])
    finally:
        await storage.close()
