"""Times as people and programs write them, and the hour arithmetic every
module does on them: one parser, one valid range and one ISO-8601 text for the
HTTP API, the command line, the registry files, the exporters and the bridges.

Times are unix seconds (UTC). Hours are UTC hours, aligned on multiples of
``HOUR``: hourly consumption, balances and their queues are keyed by the start
of their hour (``hour_floor``); days and months of the site's timezone are
``core.calendar``'s.

The range is what a device can express: DMesh stamps readings with unsigned
32-bit unix seconds, so 1970-01-01T00:00:00Z .. 2106-02-07T06:28:15Z covers
every time that can be measured and keeps all arithmetic on times (days,
months in a timezone, ISO text) inside what ``datetime`` can represent: a
year 1 or 9999 given by mistake gets a clear refusal, not a crash.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import numpy as np

TIME_MIN = 0
TIME_MAX = 2**32 - 1
"""Valid times, both inclusive: 1970-01-01T00:00:00Z .. 2106-02-07T06:28:15Z."""
RANGE_TEXT = "1970-01-01T00:00:00Z .. 2106-02-07T06:28:15Z"

_UNIX = re.compile(r"[+-]?\d+")

HOUR = 3600
"""Seconds in an hour: the step of hourly consumption and balances."""
DAY = 24 * HOUR
"""Seconds in a UTC day (a local day may be 23 or 25 hours: see ``core.calendar``)."""

_Times = TypeVar("_Times", int, "np.ndarray")


def hour_floor(t: _Times) -> _Times:
    """Start of the hour holding ``t`` (unix seconds or an integer array of them)."""
    return t - t % HOUR


def hour_ceil(t: _Times) -> _Times:
    """The first hour start at or after ``t``: ``t`` itself when it is one."""
    return -(-t // HOUR) * HOUR


def hour_of_day(t: _Times) -> _Times:
    """Hour of the day (0..23) of unix seconds; of local time when given
    seconds shifted by the site's UTC offset."""
    return (t // HOUR) % 24


def weekday(t: _Times) -> _Times:
    """Day of the week (Monday 0 .. Sunday 6) of unix seconds, or of local time
    when shifted by the UTC offset: 1970-01-01 was a Thursday."""
    return (t // DAY + 3) % 7


def utc(t: int | float) -> datetime:
    """Unix seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(t, UTC)


def unix(dt: datetime) -> int:
    """An aware datetime as unix seconds; ValueError for a naive one (it would
    be off by the offset of whatever timezone the machine runs in)."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime: times must carry a timezone")
    return int(dt.timestamp())


def iso(t: int | float) -> str:
    """ISO-8601 UTC text to the second (``2014-01-20T00:00:00Z``), as the API,
    the audit, the registry files and the command line print times;
    ``read_time`` reads it back equal. A fraction of a second is dropped."""
    return utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_time(raw: Any, tz: tzinfo | None = None) -> int:
    """Unix seconds of ``raw``: an integer, decimal unix seconds, or ISO-8601 (in
    ``tz`` when it has no offset, UTC by default: an operator's command names the
    site's local times; fractions of a second are dropped). The range is not
    checked (see ``parse_time``); ValueError with a message otherwise."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if _UNIX.fullmatch(text):
                return int(text)  # ValueError beyond 4300 digits
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return int((moment if moment.tzinfo else moment.replace(tzinfo=tz or UTC)).timestamp())
        except (ValueError, OverflowError, OSError):
            pass
    raise ValueError(f"expected an ISO-8601 time or unix seconds, got {raw!r}")


def check_time(t: int, raw: Any = None) -> int:
    """``t`` if it lies in the valid range; ValueError naming the range otherwise."""
    if not TIME_MIN <= t <= TIME_MAX:
        raise ValueError(f"expected a time in {RANGE_TEXT}, got {t if raw is None else raw!r}")
    return t


def parse_time(raw: Any, tz: tzinfo | None = None) -> int:
    """A time as ``read_time`` reads it, checked against the valid range."""
    return check_time(read_time(raw, tz), raw)
