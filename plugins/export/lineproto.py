"""InfluxDB line protocol, written the way influxdb-client writes it.

The escaping rules (which characters need a backslash in measurements, tag
keys, tag values, field keys and string values, and the trailing-backslash
case of a tag value) come from influxdb-client itself, pinned to one version in
pyproject.toml, so a meter id or a finding message with spaces, commas,
quotes or newlines is escaped exactly as the client library escapes it (a test
compares every line with ``Point.to_line_protocol``). What this module adds is
speed: a series key (measurement and tags) is escaped once per meter or group
and reused for every point of it, instead of building a ``Point`` per value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from influxdb_client.client.write.point import (  # the library's own escaping rules
    _ESCAPE_MEASUREMENT,
    _escape_key,
    _escape_string,
    _escape_tag_value,
)

FieldValue = float | int | bool | str | None


def series(measurement: str, tags: Mapping[str, str | None]) -> str:
    """``measurement,k1=v1,k2=v2`` with tags sorted by key; empty tags are left out."""
    parts = [_escape_key(measurement, _ESCAPE_MEASUREMENT)]
    for key in sorted(tags):
        value = tags[key]
        if value is None:
            continue
        k, v = _escape_key(key), _escape_tag_value(value)
        if k and v:
            parts.append(f"{k}={v}")
    return ",".join(parts)


def number(value: float) -> str:
    """A float as the client writes it: Python's shortest repr, without a trailing '.0'."""
    text = str(value)
    return text[:-2] if text.endswith(".0") else text


_FIELD_KEYS: dict[str, str] = {}
"""Escaped field keys: the exporter uses a few dozen fixed names, escaped once each."""


def _field_key(key: str) -> str:
    escaped = _FIELD_KEYS.get(key)
    if escaped is None:
        escaped = _escape_key(key)
        if len(_FIELD_KEYS) < 10_000:
            _FIELD_KEYS[key] = escaped
    return escaped


def _value(key: str, value: object) -> str | None:
    """A field value's text; None when it is left out (None, NaN, infinity)."""
    kind = type(value)
    if kind is float:
        return number(value) if math.isfinite(value) else None  # type: ignore[arg-type]
    if kind is int:
        return f"{value}i"
    if kind is str:
        return f'"{_escape_string(value)}"'
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{int(value)}i"
    if isinstance(value, float):
        return number(float(value)) if math.isfinite(value) else None
    if isinstance(value, str):
        return f'"{_escape_string(value)}"'
    raise TypeError(f"field {key}: unsupported type {type(value).__name__}")


def fields(values: Mapping[str, FieldValue], omitted: list[str] | None = None) -> str:
    """The field set, sorted by key: floats as they are, integers with ``i``, strings
    quoted; None and non-finite floats are left out (line protocol has no null, and
    InfluxDB refuses a whole batch for one ``inf``). The keys of non-finite values
    left out are added to ``omitted``, so the caller can count and report them."""
    parts = []
    for key in sorted(values):
        value = values[key]
        text = _value(key, value)
        if text is not None:
            parts.append(f"{_field_key(key)}={text}")
        elif omitted is not None and value is not None:
            omitted.append(key)
    return ",".join(parts)


def line(series_key: str, values: Mapping[str, Any], t: int, omitted: list[str] | None = None) -> str | None:
    """One point at unix second ``t``; None when no field has a value."""
    field_set = fields(values, omitted)
    return f"{series_key} {field_set} {int(t)}" if field_set else None
