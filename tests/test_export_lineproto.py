"""Line protocol as influxdb-client writes it, the balance-group path tags, and
the validation of ``[plugins.export]``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision

from balans_edge.config import parse_config
from balans_edge.core.model import Group, GroupInput, Meter, Resource
from balans_edge.plugin_manager import config_schemas, load_plugins
from balans_edge.plugins.export.lineproto import line, series
from balans_edge.plugins.export.points import group_path, reading_line
from balans_edge.plugins.export.sender import Answer, backoff, retry_after
from balans_edge.settings import ConfigError

# Text with every character line protocol treats specially, and some that it does not.
text = st.text(alphabet=st.sampled_from(list('ab Z,=" \\\n\t\rйü1#')), min_size=1, max_size=12)
values = st.one_of(st.integers(-(2**62), 2**62), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), text)


@settings(max_examples=300, deadline=None)
@given(measurement=text.filter(lambda m: not m.startswith("#")), tags=st.dictionaries(text, text, max_size=4),
       fields=st.dictionaries(text, values, min_size=1, max_size=4), t=st.integers(0, 2**33))
def test_lines_are_what_influxdb_client_writes(measurement: str, tags: dict[str, str], fields: dict, t: int) -> None:
    point = Point(measurement)
    for k, v in tags.items():
        point.tag(k, v)
    for k, v in fields.items():
        point.field(k, v)
    expected = point.time(t, WritePrecision.S).to_line_protocol()
    assert (line(series(measurement, tags), fields, t) or "") == expected


@settings(max_examples=100, deadline=None)
@given(pulses=st.integers(0, 2**40), counter=st.integers(0, 2**32 - 1), status=st.integers(0, 2**16 - 1),
       flags=st.integers(0, 3), weight=st.sampled_from([0.001, 0.01, 1.0, 0.1, 10.0, 1e308]),
       base=st.floats(0, 1e7, allow_nan=False), ts=st.integers(0, 2**33))
def test_the_reading_fast_path_writes_the_generic_line(pulses: int, counter: int, status: int, flags: int,
                                                       weight: float, base: float, ts: int) -> None:
    """Also when the value overflows (a pulse weight from before the registry's
    bounds): both leave the field out and say so."""
    meter = Meter("W,1 x", Resource.WATER, "m3", weight, 0, base_reading=base)
    key = series("reading", {"meter": meter.meter_id})
    row = {"pulses": pulses, "counter": counter, "status": status, "flags": flags, "ts": ts}
    value = round(base + pulses * weight, 9)
    fast: list[str] = []
    generic: list[str] = []
    fields = {"value": value, "pulses": pulses, "counter": counter, "status": status, "flags": flags}
    assert reading_line(key, meter, row, omitted=fast) == line(key, fields, ts, generic)
    assert fast == generic == ([] if value < float("inf") else ["value"])


def test_a_point_without_values_is_no_line() -> None:
    assert line(series("consumption", {"meter": "W 1"}), {"value": None, "x": float("nan")}, 1) is None
    assert line(series("consumption", {"meter": "W 1", "group": None}), {"value": 1.0}, 7) == \
        "consumption,meter=W\\ 1 value=1 7"


def g(group_id: str, level: str, parent: str | None) -> Group:
    return Group(group_id, Resource.WATER, "m3", (GroupInput("IN"),), level=level, parent_id=parent)


def test_group_path_names_the_nearest_group_of_each_level() -> None:
    groups = {x.group_id: x for x in [
        g("R", "region", None), g("C", "city", "R"), g("D", "district", "C"), g("S", "street", "D"),
        g("H", "house", "S"), g("E", "entrance", "H"), g("ZONE", "pressure_zone", "D"), g("H2", "house", "ZONE"),
        g("LOOP-A", "house", "LOOP-B"), g("LOOP-B", "street", "LOOP-A"),
    ]}
    assert group_path(groups, "E") == {"entrance": "E", "house": "H", "street": "S", "district": "D", "city": "C",
                                       "region": "R"}
    # A custom level is skipped; the levels above it are still found.
    assert group_path(groups, "H2") == {"house": "H2", "district": "D", "city": "C", "region": "R"}
    assert group_path(groups, "LOOP-A") == {"house": "LOOP-A", "street": "LOOP-B"}  # a cycle ends the walk
    assert group_path(groups, None) == {} == group_path(groups, "unknown")


def test_answers_are_classified_as_the_store_and_forward_rules_say() -> None:
    assert Answer(204).accepted and not Answer(204).transient
    assert all(Answer(s).transient for s in (0, 408, 429, 500, 502, 503, 401, 403, 404))
    assert not any(Answer(s).transient for s in (400, 413, 422))
    assert Answer(413).too_large
    assert retry_after("7") == 7.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after("soon") is None and retry_after(None) is None
    delays = [backoff(n, 1.0, 30.0) for n in range(1, 10)]
    assert all(2 ** (n - 2) <= d <= 2 ** (n - 1) for n, d in zip(range(1, 6), delays, strict=False))
    assert all(15.0 <= d <= 30.0 for d in delays[5:])


def export_config(table: dict) -> object:
    return parse_config({"plugins": {"export": table}}, config_schemas(load_plugins()))


def test_export_configuration_is_validated() -> None:
    ok = export_config({"targets": [{"name": "central", "url": "http://127.0.0.1:8086", "bucket": "b",
                                     "kinds": ["readings"], "tags": {"edge": "box-1"}}]})
    target = ok.plugins["export"].targets[0]
    assert (target.kinds, target.when_full, target.max_queue) == (["readings"], "drop_oldest", 1_000_000)
    bad = {
        "kinds": ["readings", "weather"],
        "when_full": "wait",
        "url": "influx:8086",
        "tags": {"meter": "x"},
        "batch_size": 0,
    }
    for key, value in bad.items():
        table = {"name": "c", "url": "http://h", "bucket": "b", key: value}
        with pytest.raises(ConfigError) as err:
            export_config({"targets": [table]})
        assert key in str(err.value) or "target c" in str(err.value), (key, str(err.value))
    twice = {"name": "c", "url": "http://h", "bucket": "b"}
    with pytest.raises(ConfigError, match="used more than once"):
        export_config({"targets": [twice, twice]})
