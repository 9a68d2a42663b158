"""One schema layer: typed records from plain data with msgspec, and what to say when data does not fit.

Configuration sections, registry rows and HTTP bodies declare their fields as
types: ``Annotated[int, msgspec.Meta(ge=1, le=7, description="...")]``. msgspec
validates them (``msgspec.convert``) and gives their JSON Schema (OpenAPI 3.1,
docs/config.md). Three things msgspec leaves to us live here:

- People's input (a TOML file, a spreadsheet) should get every problem at
  once, not the first one: ``convert_field`` converts one field, so that a
  caller can walk a record field by field and collect problems.
- Domain rules msgspec cannot express (an id is NFC-normalised, a time is
  ISO-8601 with a timezone, a time zone exists) attach to a type as
  ``Meta(extra={"check": fn})`` (``fn`` validates the converted value and may
  normalise it) or ``Meta(extra={"parse": fn})`` (``fn`` reads what people
  write, including what the declared type would refuse, such as a number as
  an id, and says what is wrong in its own words). msgspec ignores ``extra``.
- Messages in words people read, built from the same constraints msgspec
  checks, so the two never disagree: ``expected an integer 0..65535, got "x"``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec
from msgspec import inspect as mi

__all__ = ["NO_DEFAULT", "Field", "Meta", "Refusal", "allowed_words", "convert_field", "expected", "explain",
           "fields_of", "is_record", "kind_words", "nested", "reason", "shown"]

Meta = msgspec.Meta
NO_DEFAULT = dataclasses.MISSING


class Refusal(ValueError):
    """A value that does not fit its field. ``at`` is the place inside the value
    (``"[2]"``, ``".host"``, or ``""`` for the value itself); the message
    completes ``key: ...``."""

    def __init__(self, at: str, message: str) -> None:
        super().__init__(message)
        self.at = at
        self.message = message


@dataclass(frozen=True)
class Field:
    """One field of a record type as this layer and its docs see it."""

    name: str
    type: Any
    """The declared type, with its ``Annotated`` constraints (what msgspec converts with)."""
    required: bool
    default: Any
    """The default value (a factory's product), or ``NO_DEFAULT``."""
    description: str
    secret: bool
    checks: tuple[Callable[[Any], Any], ...]
    parse: Callable[[Any], Any] | None


def shown(value: Any) -> str:
    """A value quoted as it was given (text in quotes), cut to a readable length."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # a circular structure
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _metas(tp: Any) -> Iterator[msgspec.Meta]:
    """The Meta objects of a field's type, through ``Optional`` (not into list items)."""
    if get_origin(tp) is Annotated:
        base, *extras = get_args(tp)
        yield from (m for m in extras if isinstance(m, msgspec.Meta))
        yield from _metas(base)
    elif get_origin(tp) in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            yield from _metas(arg)


def _field(name: str, tp: Any, required: bool, default: Any) -> Field:
    metas = list(_metas(tp))
    extra: dict[str, Any] = {}
    for meta in metas:  # as msgspec reads them: a later Meta (the field's own, around an alias) wins
        extra.update(meta.extra or {})
    description = next((m.description for m in reversed(metas) if m.description), "")
    checks = tuple(m.extra["check"] for m in metas if m.extra and m.extra.get("check"))
    return Field(name, tp, required, default, description, bool(extra.get("secret")), checks, extra.get("parse"))


@functools.cache
def fields_of(cls: type) -> tuple[Field, ...]:
    """The fields of a dataclass or a msgspec Struct, in declaration order."""
    if isinstance(cls, type) and issubclass(cls, msgspec.Struct):
        out = []
        for f in msgspec.structs.fields(cls):
            required = f.required
            default = NO_DEFAULT if required else (f.default_factory() if f.default is msgspec.NODEFAULT
                                                   else f.default)
            out.append(_field(f.name, f.type, required, default))
        return tuple(out)
    hints = _bound_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not NO_DEFAULT:
            default = f.default
        elif f.default_factory is not NO_DEFAULT:
            default = f.default_factory()
        else:
            default = NO_DEFAULT
        out.append(_field(f.name, hints[f.name], default is NO_DEFAULT, default))
    return tuple(out)


def _bound_hints(cls: type) -> dict[str, Any]:
    """A dataclass's field types with the type parameters of its generic bases bound
    as the class binds them (``class DeviceConfig(ClientDevice[TagConfig])``: its
    ``tags: list[TagT]`` is a ``list[TagConfig]``), as msgspec converts it."""
    bound: dict[Any, Any] = {}
    for klass in reversed(cls.__mro__):
        for base in getattr(klass, "__orig_bases__", ()):
            params = getattr(get_origin(base), "__parameters__", ())
            bound.update(zip(params, (_bind(arg, bound) for arg in get_args(base)), strict=False))
    return {name: _bind(tp, bound) for name, tp in typing.get_type_hints(cls, include_extras=True).items()}


def _bind(tp: Any, bound: dict[Any, Any]) -> Any:
    """``tp`` with the type variables ``bound`` names replaced (``list[T]`` -> ``list[X]``)."""
    if isinstance(tp, typing.TypeVar):
        return bound.get(tp, tp)
    params = () if isinstance(tp, type) else getattr(tp, "__parameters__", ())  # a class is not an alias to fill
    return tp[tuple(bound.get(p, p) for p in params)] if params else tp


def _bare(tp: Any) -> Any:
    """The type without ``Annotated`` and without ``| None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def is_record(tp: Any) -> bool:
    """A dataclass or a msgspec Struct: a table of its own."""
    return isinstance(tp, type) and (dataclasses.is_dataclass(tp) or issubclass(tp, msgspec.Struct))


def nested(f: Field) -> tuple[Literal["table", "tables"], type] | None:
    """A field holding one record (a TOML table) or a list of records (an array of tables), and the record type."""
    tp = _bare(f.type)
    if is_record(tp):
        return "table", tp
    if get_origin(tp) is list and is_record(_bare(get_args(tp)[0])):
        return "tables", _bare(get_args(tp)[0])
    return None


def convert_field(f: Field, raw: Any, *, strict: bool, show: Callable[[Any], str] = shown) -> Any:
    """``raw`` as the field's value: msgspec's conversion, then the field's checks.
    Raises Refusal naming what was expected."""
    if f.parse is not None:
        try:
            return f.parse(raw)
        except ValueError as exc:
            raise Refusal("", str(exc)) from None
    try:
        value = msgspec.convert(raw, f.type, strict=strict)
    except msgspec.ValidationError as exc:
        raise explain(exc, f.type, raw, show, strict) from None
    for check in f.checks:
        if value is not None:
            try:
                value = check(value)
            except ValueError as exc:
                raise Refusal("", str(exc)) from None
    return value


def reason(exc: msgspec.ValidationError) -> str:
    """msgspec's message without its place (``... - at `$.x```): what a record's own
    check (``__post_init__``) said."""
    return str(exc).rsplit(" - at `", 1)[0]


_STEP = re.compile(r"\[(\d+|\.\.\.)\]|\.([^.\[]+)")


def explain(exc: msgspec.ValidationError, tp: Any, raw: Any, show: Callable[[Any], str] = shown,
            strict: bool = True) -> Refusal:
    """A Refusal for msgspec's error: the place inside the value, and what was
    expected there in words (from the type's own constraints) with what was given."""
    message, _, at = str(exc).partition(" - at `")
    at = at.rstrip("`").removeprefix("$")
    place = ""
    for match in _STEP.finditer(at):
        index, name = match.groups()
        if index == "..." and isinstance(raw, dict):  # a table's value: msgspec does not say which
            item_type = _step(tp, True)
            for key, value in raw.items():
                try:
                    msgspec.convert(value, item_type, strict=strict)
                except msgspec.ValidationError as inner:
                    deeper = explain(inner, item_type, value, show, strict)
                    return Refusal(f"{place}.{key}{deeper.at}", deeper.message)
        place += match.group(0)
        tp = _step(tp, index is not None)
        if index is not None and index != "..." and isinstance(raw, list | tuple) and int(index) < len(raw):
            raw = raw[int(index)]
        elif name is not None and isinstance(raw, dict):
            if is_record(_bare(tp)):
                tp = next((f.type for f in fields_of(_bare(tp)) if f.name == name), Any)
            raw = raw.get(name)
    if message.startswith(("Object contains unknown field", "Object missing required field")):
        return Refusal(place, message[0].lower() + message[1:].replace("Object", "table").replace("`", '"'))
    hint = ""
    words = expected(tp)
    if isinstance(raw, str):
        if "," in raw and "number" in words:
            hint = " (use a dot as the decimal separator)"
        elif re.fullmatch(r"\+\d+|[+-]?0\d+", raw) and "integer" in words:
            hint = " (write it without a leading zero or plus sign)"
    return Refusal(place, f"expected {words}, got {show(raw)}{hint}")


def _step(tp: Any, item: bool) -> Any:
    """The type one step inside ``tp``: a list's item or a table's value."""
    tp = _bare(tp)
    if get_origin(tp) in (typing.Union, types.UnionType):  # the member a list or table can be
        tp = next((a for a in map(_bare, get_args(tp)) if get_origin(a) in (list, tuple, set, frozenset, dict)
                   or is_record(a)), tp)
    args = get_args(tp)
    if get_origin(tp) is dict and len(args) == 2:
        return args[1]
    if item and args:
        return args[0]
    return tp  # a record: its field is looked up by the caller


def _plain(x: float) -> str:
    """A bound as people write it: 1000000, 0.000001 (not 1e+06, 1e-06)."""
    return str(x) if isinstance(x, int) else format(x, "f").rstrip("0").rstrip(".")


def _bounds(t: mi.IntType | mi.FloatType) -> str:
    lo, lo_in = (t.ge, True) if t.ge is not None else (t.gt, False)
    hi, hi_in = (t.le, True) if t.le is not None else (t.lt, False)
    if isinstance(t, mi.IntType):  # whole numbers: a strict bound is the next number
        lo, lo_in = (lo + 1 if lo is not None and not lo_in else lo), True
        hi, hi_in = (hi - 1 if hi is not None and not hi_in else hi), True
    if lo is not None and hi is not None:
        if lo_in and hi_in:
            return f" {_plain(lo)}..{_plain(hi)}"
        return f" {'>=' if lo_in else '>'} {_plain(lo)} and {'<=' if hi_in else '<'} {_plain(hi)}"
    if lo is not None:
        return f" {'>=' if lo_in else '>'} {_plain(lo)}"
    if hi is not None:
        return f" {'<=' if hi_in else '<'} {_plain(hi)}"
    return ""


def expected(tp: Any) -> str:
    """What a value of this type is, in words: "an integer 1..7", "true or false"."""
    bare = _bare(tp)
    if get_origin(bare) is Literal:  # in the order declared (msgspec sorts them)
        return "one of " + ", ".join(map(str, get_args(bare)))
    try:
        info = mi.type_info(tp)
    except (TypeError, ValueError):
        return "a value"
    return _words(info)


def _words(t: mi.Type) -> str:
    if isinstance(t, mi.Metadata):
        return _words(t.type)
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.IntType):
        return "an integer" + _bounds(t)
    if isinstance(t, mi.FloatType):
        return "a number" + _bounds(t)
    if isinstance(t, mi.StrType):
        if t.max_length is not None:
            return f"a string of at most {t.max_length} characters"
        return "a non-empty string" if t.min_length else "a string"
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(map(str, t.values))
    if isinstance(t, mi.EnumType):
        return "one of " + ", ".join(str(m.value) for m in t.cls)
    if isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        if t.max_length is not None:
            return f"a list of at most {t.max_length} items"
        return "a list"
    if isinstance(t, mi.DictType | mi.StructType | mi.DataclassType | mi.TypedDictType):
        return "a table"
    if isinstance(t, mi.UnionType):
        words = list(dict.fromkeys(_words(a) for a in t.types if not isinstance(a, mi.NoneType)))
        if "a number" in words and "an integer" in words:  # an integer is a number
            words.remove("an integer")
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
    if isinstance(t, mi.NoneType):
        return "nothing"
    return "a value"


def kind_words(tp: Any) -> str:
    """The type as a docs table names it: "integer", "list of strings", "one of a, b"."""
    t = mi.type_info(tp)
    return _kind(t)


def _kind(t: mi.Type) -> str:
    if isinstance(t, mi.Metadata):
        return _kind(t.type)
    simple = {mi.BoolType: "boolean", mi.IntType: "integer", mi.FloatType: "number", mi.StrType: "string",
              mi.DictType: "table", mi.StructType: "table", mi.DataclassType: "table"}
    for cls, word in simple.items():
        if isinstance(t, cls):
            return word
    if isinstance(t, mi.LiteralType | mi.EnumType):
        return "string" if all(isinstance(v, str) for v in _values(t)) else "value"
    if isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        item = _kind(t.item_type)
        return "list of tables" if item == "table" else f"list of {item}s"
    if isinstance(t, mi.UnionType):
        return " or ".join(dict.fromkeys(_kind(a) for a in t.types if not isinstance(a, mi.NoneType)))
    return "value"


def _values(t: mi.LiteralType | mi.EnumType) -> tuple[Any, ...]:
    return t.values if isinstance(t, mi.LiteralType) else tuple(m.value for m in t.cls)


def allowed_words(tp: Any) -> str:
    """The range or the choices of a type, for a docs table: "0..65535", "viewer, operator, admin", or ""."""
    bare = _bare(tp)
    if get_origin(bare) is Literal:  # in the order declared (msgspec sorts them)
        return ", ".join(map(str, get_args(bare)))
    if get_origin(bare) in (typing.Union, types.UnionType):
        return "; ".join(filter(None, (allowed_words(a) for a in get_args(bare) if a is not type(None))))
    t = mi.type_info(tp)
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):  # an Annotated union
        return "; ".join(filter(None, (_allowed(a) for a in t.types if not isinstance(a, mi.NoneType))))
    return _allowed(t)


def _allowed(t: mi.Type) -> str:
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.IntType | mi.FloatType):
        return _bounds(t).strip()
    if isinstance(t, mi.LiteralType | mi.EnumType):
        return ", ".join(map(str, _values(t)))
    if isinstance(t, mi.StrType) and t.max_length is not None:
        return f"at most {t.max_length} characters"
    return ""
