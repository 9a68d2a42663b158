"""TOML tables -> typed dataclasses, with errors that name the key path.

Written by hand rather than with a validation library because the error text is
part of the product: an engineer editing the file on a box at a pumping station
must read ``[plugins.dmesh] port: expected integer 1..65535, got "abc"`` and
know what to change. Plugins describe their own section with an ordinary
dataclass; field metadata adds ranges (``range=(lo, hi)``), allowed values come
from ``Literal``, and ``secret=True`` lets the value come from an environment
variable named by ``<key>_env`` instead of the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin

from balans_edge.core.redact import redact_text

MISSING = dataclasses.MISSING


class ConfigError(Exception):
    """One or more configuration problems, each naming its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def setting(default: Any = MISSING, *, range: tuple[float, float] | None = None, secret: bool = False,
            check: Callable[[Any], str | None] | None = None, doc: str = "", default_factory: Any = MISSING) -> Any:
    """A dataclass field with validation metadata."""
    meta = {"range": range, "secret": secret, "check": check, "doc": doc}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value).lower() if isinstance(value, bool) else repr(value)


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

    def dataclass(self, cls: type, table: Any, path: list[str]) -> Any:
        if not isinstance(table, dict):
            self.problems.append(f"{_label(path)}: expected a table, got {_show(table)}")
            return None
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        values: dict[str, Any] = {}
        reported = len(self.problems)
        known = set(fields) | {f"{n}_env" for n, f in fields.items() if f.metadata.get("secret")}
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                self.fail(path, key, f"unknown key{hint}")
        for name, f in fields.items():
            raw, present = table.get(name, MISSING), name in table
            if f.metadata.get("secret") and f"{name}_env" in table:
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
                if f.default is MISSING and f.default_factory is MISSING:
                    self.fail(path, name, "required key is missing")
                continue
            ok, value = self.value(hints[name], raw, path, name, f.metadata)
            if ok:
                values[name] = value
        if len(self.problems) > reported:
            return None  # the checks across keys (``__post_init__``) would only repeat a reported problem
        try:
            return cls(**values)
        except TypeError:
            return None  # already reported as a missing key
        except ValueError as exc:
            self.problems.append(f"{_label(path)}: {exc}")
            return None

    def value(self, hint: Any, raw: Any, path: list[str], key: str, meta: Any = None) -> tuple[bool, Any]:
        meta = meta or {}
        origin = get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in get_args(hint) if a is not type(None)]
            if len(args) == 1:
                return self.value(args[0], raw, path, key, meta)
        if origin is Literal:
            choices = get_args(hint)
            if raw not in choices:
                self.fail(path, key, f"expected one of {', '.join(map(str, choices))}, got {_show(raw)}")
                return False, None
            return True, raw
        if origin is list:
            (item,) = get_args(hint)
            if not isinstance(raw, list):
                self.fail(path, key, f"expected a list, got {_show(raw)}")
                return False, None
            out, ok = [], True
            for i, element in enumerate(raw):
                if dataclasses.is_dataclass(item):
                    parsed = self.dataclass(item, element, [*path, f"{key}[{i}]"])
                    ok &= parsed is not None
                    out.append(parsed)
                else:
                    good, v = self.value(item, element, path, f"{key}[{i}]", meta)
                    ok &= good
                    out.append(v)
            return ok, out
        if origin is dict:
            if not isinstance(raw, dict):
                self.fail(path, key, f"expected a table, got {_show(raw)}")
                return False, None
            return True, dict(raw)
        if dataclasses.is_dataclass(hint):
            parsed = self.dataclass(hint, raw, [*path, key])
            return parsed is not None, parsed
        return self.scalar(hint, raw, path, key, meta)

    def scalar(self, hint: Any, raw: Any, path: list[str], key: str, meta: Any) -> tuple[bool, Any]:
        lo_hi = meta.get("range")
        secret = bool(meta.get("secret"))
        if hint is bool:
            if not isinstance(raw, bool):
                self.fail(path, key, f"expected true or false, got {_show(raw)}", secret)
                return False, None
            value = raw
        elif hint is int:
            if isinstance(raw, bool) or not isinstance(raw, int) or (lo_hi and not lo_hi[0] <= raw <= lo_hi[1]):
                span = f" {lo_hi[0]}..{lo_hi[1]}" if lo_hi else ""
                self.fail(path, key, f"expected integer{span}, got {_show(raw)}", secret)
                return False, None
            value = raw
        elif hint is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float) or (lo_hi and not lo_hi[0] <= raw <= lo_hi[1]):
                span = f" {lo_hi[0]}..{lo_hi[1]}" if lo_hi else ""
                self.fail(path, key, f"expected number{span}, got {_show(raw)}", secret)
                return False, None
            value = float(raw)
        elif hint is str:
            if not isinstance(raw, str):
                self.fail(path, key, f"expected a string, got {_show(raw)}", secret)
                return False, None
            value = raw
        else:
            value = raw
        check = meta.get("check")
        if check is not None:
            message = check(value)
            if message:
                self.fail(path, key, message, secret)
                return False, None
        return True, value


def parse_section(cls: type, table: Any, path: list[str]) -> Any:
    """Validate one table into ``cls``; raise ConfigError listing every problem."""
    parser = _Parser()
    result = parser.dataclass(cls, table, path)
    if parser.problems:
        raise ConfigError(parser.problems)
    return result
