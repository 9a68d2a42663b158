"""The one time parser (core.times): formats, the valid range, and nothing but
ValueError for any input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balans_edge.core.times import TIME_MAX, TIME_MIN, parse_time, read_time


@pytest.mark.parametrize(("raw", "t"), [
    ("2014-01-20T00:00:00Z", 1390176000), ("2014-01-20T03:00:00+03:00", 1390176000), ("2014-01-20", 1390176000),
    ("2014-01-20T00:00:00.9Z", 1390176000), ("1390176000", 1390176000), (" 1390176000 ", 1390176000),
    (1390176000, 1390176000), ("0", 0), ("1970-01-01T00:00:00Z", 0), ("2106-02-07T06:28:15Z", TIME_MAX),
])
def test_times_people_write(raw, t):
    assert parse_time(raw) == t


@pytest.mark.parametrize("raw", [
    "0001-01-01", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59", "9999-12-31T23:59:59-12:00", "-99999999999",
    "99999999999999999999999", "2106-02-07T06:28:16Z", "1969-12-31T23:59:59Z", -1, 2**32, 10**30,
])
def test_times_out_of_range_are_refused_with_the_range(raw):
    with pytest.raises(ValueError, match=r"expected a time in 1970-01-01T00:00:00Z \.\. 2106-02-07T06:28:15Z"):
        parse_time(raw)


@pytest.mark.parametrize("raw", ["yesterday", "", "1e9", "NaN", "2024-02-30", None, 1.5, True, [1], "9" * 5000])
def test_what_is_not_a_time(raw):
    with pytest.raises(ValueError, match="expected an ISO-8601 time or unix seconds"):
        parse_time(raw)


def test_read_time_leaves_the_range_to_the_caller():
    assert read_time("0001-01-01T00:00:00Z") == -62135596800
    assert read_time(-5) == -5


@given(st.one_of(st.text(), st.integers(), st.datetimes(timezones=st.none() | st.timezones()).map(str),
                 st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())))
def test_any_input_is_a_time_in_range_or_a_value_error(raw):
    try:
        t = parse_time(raw)
    except ValueError:
        return
    assert TIME_MIN <= t <= TIME_MAX
