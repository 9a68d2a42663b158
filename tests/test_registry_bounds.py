"""Every number of the registry is finite and within its physical range, through
every path that creates registry objects (the parser all of them use, and the
HTTP API on a real server)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balans_edge.core.registry import RegistryError, parse_object
from balans_edge.plugins.common.tag_settings import TagSettings

from conftest import auth, base_config

BASE = {
    "meters": {"meter_id": "M", "resource": "water", "unit": "m3", "pulse_weight": 0.001,
               "install_time": "2024-01-01T00:00:00Z"},
    "accounts": {"account_id": "A"},
    "groups": {"group_id": "G", "resource": "water", "unit": "m3", "inputs": "IN"},
}
# (kind, column, whether the low end itself is accepted, low end, high end)
BOUNDS = [
    ("meters", "pulse_weight", False, 0.0, 1000.0),
    ("meters", "base_reading", True, 0.0, 1e9),
    ("accounts", "area_m2", False, 0.0, 1e6),
    ("groups", "loss_norm_pct", True, 0.0, 100.0),
    ("groups", "price", True, 0.0, 1e6),
    ("groups", "odn_norm", True, 0.0, 100.0),
]


def accepted(kind: str, column: str, value: object) -> bool:
    try:
        parse_object(kind, {**BASE[kind], column: value})
    except RegistryError as exc:
        assert column in str(exc)
        return False
    return True


@given(bound=st.sampled_from(BOUNDS),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from(["1e300", "inf", "-inf", "nan", "1e-300", "1000.0000001", "999999999"])))
def test_every_registry_number_is_finite_and_in_its_physical_range(bound, value):
    kind, column, low_inclusive, lo, hi = bound
    number = float(value)
    inside = math.isfinite(number) and (lo <= number if low_inclusive else lo < number) and number <= hi
    assert accepted(kind, column, value) == inside, (column, value)


@pytest.mark.parametrize(("kind", "column", "low_inclusive", "lo", "hi"), BOUNDS)
def test_the_ends_of_each_range(kind, column, low_inclusive, lo, hi):
    assert accepted(kind, column, hi)
    assert not accepted(kind, column, hi * 1.000001)
    assert accepted(kind, column, lo) == low_inclusive


async def test_the_api_refuses_a_pulse_weight_beyond_the_range(make_server, client_for, tmp_path):
    server = await make_server(base_config(tmp_path))
    c = client_for(server)
    meter = {"resource": "water", "unit": "m3", "pulse_weight": 1e300, "install_time": "2024-01-01T00:00:00Z"}
    r = await c.put("/api/v1/meters/M-1", json=meter, headers=auth("admin"))
    assert r.status_code == 422
    assert 'pulse_weight' in r.json()["error"]["message"] and "<= 1000" in r.json()["error"]["message"]
    assert (await c.get("/api/v1/meters/M-1", headers=auth("viewer"))).status_code == 404
    meter["pulse_weight"] = 1000
    assert (await c.put("/api/v1/meters/M-1", json=meter, headers=auth("admin"))).status_code == 201


@pytest.mark.parametrize(("resolution", "ok"), [(0.001, True), (1000.0, True), (1000.5, False), (1e9, False)])
def test_a_totaliser_tags_resolution_is_a_pulse_weight_and_bounded_alike(resolution, ok):
    tag = TagSettings(name="total", unit="m3", meter_id="PLC-1", module_id=900001, resolution=resolution)
    assert (tag.problems() == []) == ok
