"""Times as people and programs write them: one parser and one valid range for
the HTTP API, the command line and the registry files.

The range is what a device can express: DMesh stamps readings with unsigned
32-bit unix seconds, so 1970-01-01T00:00:00Z .. 2106-02-07T06:28:15Z covers
every time that can be measured and keeps all arithmetic on times (days,
months in a timezone, ISO text) inside what ``datetime`` can represent: a
year 1 or 9999 given by mistake gets a clear refusal, not a crash.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

TIME_MIN = 0
TIME_MAX = 2**32 - 1
"""Valid times, both inclusive: 1970-01-01T00:00:00Z .. 2106-02-07T06:28:15Z."""
RANGE_TEXT = "1970-01-01T00:00:00Z .. 2106-02-07T06:28:15Z"

_UNIX = re.compile(r"[+-]?\d+")


def read_time(raw: Any) -> int:
    """Unix seconds of ``raw``: an integer, decimal unix seconds, or ISO-8601 (UTC
    when it has no offset; fractions of a second are dropped). The range is not
    checked (see ``parse_time``); ValueError with a message otherwise."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if _UNIX.fullmatch(text):
                return int(text)  # ValueError beyond 4300 digits
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())
        except (ValueError, OverflowError, OSError):
            pass
    raise ValueError(f"expected an ISO-8601 time or unix seconds, got {raw!r}")


def check_time(t: int, raw: Any = None) -> int:
    """``t`` if it lies in the valid range; ValueError naming the range otherwise."""
    if not TIME_MIN <= t <= TIME_MAX:
        raise ValueError(f"expected a time in {RANGE_TEXT}, got {t if raw is None else raw!r}")
    return t


def parse_time(raw: Any) -> int:
    """A time as ``read_time`` reads it, checked against the valid range."""
    return check_time(read_time(raw), raw)
