"""The one time module (core.times): the parser with its formats, the valid range
and nothing but ValueError for any input; the ISO text it reads back; hour and
day arithmetic on unix seconds and on arrays of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from balans_edge.core.times import (
    DAY,
    HOUR,
    TIME_MAX,
    TIME_MIN,
    hour_ceil,
    hour_floor,
    hour_of_day,
    iso,
    parse_time,
    read_time,
    unix,
    utc,
    weekday,
)


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


def test_iso_is_utc_to_the_second_and_reads_back():
    assert iso(1390176000) == "2014-01-20T00:00:00Z"
    assert iso(0) == "1970-01-01T00:00:00Z" and iso(TIME_MAX) == "2106-02-07T06:28:15Z"
    assert iso(1390176000.9) == "2014-01-20T00:00:00Z"  # a fraction is dropped, not rounded up


@given(st.integers(TIME_MIN, TIME_MAX))
def test_iso_round_trips_every_valid_time(t):
    assert parse_time(iso(t)) == t


def test_utc_and_unix_are_inverse_and_refuse_a_naive_time():
    assert utc(1390176000) == datetime(2014, 1, 20, tzinfo=UTC)
    assert unix(datetime(2014, 1, 20, 3, tzinfo=timezone(timedelta(hours=3)))) == 1390176000
    with pytest.raises(ValueError, match="naive"):
        unix(datetime(2014, 1, 20))


def test_hour_floor_and_ceil_of_times_and_arrays():
    t0 = 1390176000
    assert (HOUR, DAY) == (3600, 86400)
    assert hour_floor(t0) == t0 and hour_floor(t0 + 1) == t0 and hour_floor(t0 + HOUR - 1) == t0
    assert hour_ceil(t0) == t0 and hour_ceil(t0 + 1) == t0 + HOUR and hour_ceil(t0 - 1) == t0
    t = np.array([t0 - 1, t0, t0 + 1, t0 + HOUR], np.int64)
    assert hour_floor(t).tolist() == [t0 - HOUR, t0, t0, t0 + HOUR]
    assert hour_ceil(t).tolist() == [t0, t0, t0 + HOUR, t0 + HOUR]
    assert hour_floor(-1) == -HOUR and hour_ceil(-1) == 0  # floor division below 1970 too


@given(st.integers(TIME_MIN, TIME_MAX))
def test_hour_of_day_and_weekday_agree_with_datetime(t):
    moment = utc(t)
    assert hour_of_day(t) == moment.hour
    assert weekday(t) == moment.weekday()
    assert weekday(np.array([t], np.int64)).tolist() == [moment.weekday()]
