"""TOML tables -> typed sections, with errors that name the key path.

A section is a dataclass whose fields carry their rules in their types:
``port: Annotated[int, setting(range=(0, 65535), doc="TCP port")] = 8080``
(``setting`` makes the ``msgspec.Meta``; a plain ``Meta(ge=..., le=...,
description=...)`` works as well), allowed values come from ``Literal``, and
``secret=True`` lets the value come from an environment variable named by
``<key>_env`` instead of the file. msgspec converts the values
(``core.schema``); this module adds what a person editing the file on a box
at a pumping station needs: every problem at once, each naming its key path
(``[plugins.dmesh] port: expected an integer 0..65535, got "abc"``), a "did
you mean" for a misspelt key, and no secret ever repeated in a message.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from collections.abc import Callable
from typing import Any

import msgspec

from balans_edge.core import schema
from balans_edge.core.redact import redact_text
from balans_edge.core.schema import Field

__all__ = ["ConfigError", "parse_section", "setting"]


class ConfigError(Exception):
    """One or more configuration problems, each naming its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def setting(*default: Any, range: tuple[float, float] | None = None, doc: str = "", secret: bool = False,
            check: Callable[[Any], str | None] | None = None, **meta: Any) -> msgspec.Meta:
    """The ``msgspec.Meta`` of a configuration field: ``range=(lo, hi)`` inclusive,
    ``doc`` its description (docs/config.md), ``secret`` (may come from ``<key>_env``
    and is never shown), ``check(value)`` a rule on the converted value returning a
    message when it is broken; other keywords go to ``Meta`` as they are."""
    if default or "default_factory" in meta:  # the form before the rules moved into the type
        raise TypeError("setting() goes into the field's type and the default after it: "
                        "`port: Annotated[int, setting(range=(1, 65535))] = 502` (docs/plugins.md)")
    extra: dict[str, Any] = {}
    if secret:
        extra["secret"] = True
    if check is not None:
        extra["check"] = _raising(check)
    if range is not None:
        meta |= {"ge": range[0], "le": range[1]}
    return msgspec.Meta(description=doc or None, extra=extra or None, **meta)


def _raising(check: Callable[[Any], str | None]) -> Callable[[Any], Any]:
    def run(value: Any) -> Any:
        message = check(value)
        if message:
            raise ValueError(message)
        return value

    return run


@functools.cache
def _undeclared(cls: type) -> str | None:
    """Field metadata the rules used to be given in: it would be ignored, and the range
    or the secret with it, so the section is refused with a pointer to the new form."""
    for f in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ():
        old = sorted(set(f.metadata) & {"range", "secret", "check", "doc"})
        if old:
            return (f"{cls.__qualname__}.{f.name}: {', '.join(old)} in the field's metadata is not read; give it in "
                    f"the type: Annotated[..., setting({old[0]}=...)] (docs/plugins.md)")
    return None


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return schema.shown(value)


def _label(path: list[str]) -> str:
    return "[" + ".".join(path) + "]" if path else "[top level]"


class _Parser:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: list[str], key: str, message: str, secret: bool = False) -> None:
        # check-config prints these: a secret's value is never repeated, nor a URL's password.
        if secret and ", got " in message:
            message = message.split(", got ")[0] + " (the value is a secret: not shown)"
        message = redact_text(message)
        self.problems.append(f"{_label(path)} {key}: {message}")

    def section(self, cls: type, table: Any, path: list[str]) -> Any:
        undeclared = _undeclared(cls)
        if undeclared:
            self.problems.append(f"{_label(path)}: {undeclared}")
            return None
        if not isinstance(table, dict):
            self.problems.append(f"{_label(path)}: expected a table, got {_show(table)}")
            return None
        fields = {f.name: f for f in schema.fields_of(cls)}
        reported = len(self.problems)
        known = set(fields) | {f"{n}_env" for n, f in fields.items() if f.secret}
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                self.fail(path, key, f"unknown key{hint}")
        values: dict[str, Any] = {}
        for name, f in fields.items():
            present = name in table
            raw = table.get(name)
            if f.secret and f"{name}_env" in table:
                var = table[f"{name}_env"]
                if present:
                    self.fail(path, name, f'give either "{name}" or "{name}_env", not both')
                    continue
                if not isinstance(var, str) or not var:
                    self.fail(path, f"{name}_env", f"expected the name of an environment variable, got {_show(var)}")
                    continue
                if var not in os.environ:
                    self.fail(path, f"{name}_env", f"environment variable {var} is not set")
                    continue
                raw, present = os.environ[var], True
            if not present:
                if f.required:
                    self.fail(path, name, "required key is missing")
                continue
            ok, value = self.value(f, raw, path)
            if ok:
                values[name] = value
        if len(self.problems) > reported:
            return None  # the checks across keys (``__post_init__``) would only repeat a reported problem
        try:
            return msgspec.convert(values, cls, strict=True)
        except msgspec.ValidationError as exc:  # a check across keys
            self.problems.append(f"{_label(path)}: {redact_text(schema.reason(exc))}")
            return None

    def value(self, f: Field, raw: Any, path: list[str]) -> tuple[bool, Any]:
        inner = schema.nested(f)
        if inner is not None and inner[0] == "table":
            parsed = self.section(inner[1], raw, [*path, f.name])
            return parsed is not None, parsed
        if inner is not None:
            if not isinstance(raw, list):
                self.fail(path, f.name, f"expected a list of tables, got {_show(raw)}")
                return False, None
            items = [self.section(inner[1], item, [*path, f"{f.name}[{i}]"]) for i, item in enumerate(raw)]
            return all(item is not None for item in items), items
        try:
            return True, schema.convert_field(f, raw, strict=True, show=_show)
        except schema.Refusal as exc:
            self.fail(path, f.name + exc.at, exc.message, f.secret)
            return False, None


def parse_section(cls: type, table: Any, path: list[str]) -> Any:
    """Validate one table into ``cls``; raise ConfigError listing every problem."""
    parser = _Parser()
    result = parser.section(cls, table, path)
    if parser.problems:
        raise ConfigError(parser.problems)
    return result
