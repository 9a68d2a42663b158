"""Query parameters, request bodies and responses of the HTTP API as msgspec Structs.

A route declares its query parameters, its body and its answer as types; the
HTTP layer decodes the request into them (``Codec``) and the OpenAPI document
is generated from them (``msgspec.json.schema_components``), so what is parsed
and what is documented are one declaration. A refusal names the key path and
what was expected (``readings[3].channel: expected an integer
-4611686018427387903..4611686018427387903, got true``, ``command: expected one of
ping, set_interval, profile_request, got 'pong'``), in the words the API used
before the schema layer existed.

The shared value types live here: ``Time`` (ISO-8601 or unix seconds within
``core.times``' range), ``Text`` (free text within ``core.text``'s bound),
``Reason`` (non-empty text for the audit), ``Id`` (the registry's id rule).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union
from urllib.parse import unquote

import msgspec
from msgspec import Meta, Struct

from balans_edge.core.calendar import Step
from balans_edge.core.components import SWITCH_CODES
from balans_edge.core.registry_io import BadValue, identifier
from balans_edge.core.text import MAX_TEXT_BYTES, check_text
from balans_edge.core.times import RANGE_TEXT, TIME_MAX, TIME_MIN, parse_time

if TYPE_CHECKING:
    from balans_edge.routes import Param

REF_TEMPLATE = "#/components/schemas/{name}"
INT62 = 2**62
"""Bodies' integers lie strictly within ±2**62: they fit int64 columns and their sums."""


class Time(int):
    """A time of a query or a body: ISO-8601 (UTC when it has no offset) or unix
    seconds, within the valid range of ``core.times``; unix seconds once decoded."""


class Text(str):
    """Free text within ``core.text``'s bound (4 KiB of UTF-8)."""


class Reason(Text):
    """Why a request acts on a device or the registry: non-empty text, for the audit."""


class Id(str):
    """An id of the registry (meter, account, group): the rule of ``core.registry_io.identifier``."""


class IntegerText(str):
    """A path parameter documented as an integer that its handler parses (an id that
    is no number answers 404 there, as an unknown one does)."""


class FreeForm(dict):  # type: ignore[type-arg]
    """A JSON object whose values a domain validator checks, reporting every problem at
    once (the registry: 422 naming each column). A subclass names its keys in
    ``__schema__`` (a JSON Schema) for the document; decoding only checks it is an object."""

    __schema__: dict[str, Any] = {"type": "object"}


def free_form(name: str, doc: str, schema: dict[str, Any]) -> type[FreeForm]:
    return type(name, (FreeForm,), {"__schema__": {"title": name, "description": doc, "type": "object", **schema},
                                    "__doc__": doc})


def _time(value: Any) -> Time:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected an ISO-8601 time or unix seconds, got {value!r}")
    return Time(parse_time(value))


def _text(value: Any) -> Text:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {_shown(value)}")
    return Text(check_text(value))


def _reason(value: Any) -> Reason:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a non-empty reason is required for the audit")
    return Reason(check_text(value).strip())


def _id(value: Any) -> Id:
    try:
        return Id(identifier(value))
    except BadValue as exc:
        raise ValueError(str(exc)) from None


DECODERS: dict[type, Callable[[Any], Any]] = {Time: _time, Reason: _reason, Text: _text, Id: _id,
                                              IntegerText: IntegerText}
SCHEMAS: dict[type, dict[str, Any]] = {
    Time: {"anyOf": [{"type": "integer", "minimum": TIME_MIN, "maximum": TIME_MAX},
                     {"type": "string", "minLength": 1, "maxLength": 64}],
           "description": f"ISO-8601 (UTC when it has no offset) or unix seconds, within {RANGE_TEXT}"},
    Text: {"type": "string", "maxLength": MAX_TEXT_BYTES, "description": f"at most {MAX_TEXT_BYTES} bytes of UTF-8"},
    Reason: {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_BYTES, "pattern": r"\S",
             "description": f"why, for the audit: not blank, at most {MAX_TEXT_BYTES} bytes of UTF-8"},
    Id: {"type": "string", "minLength": 1, "maxLength": 128, "pattern": r"^[^\s/+\-]([^/]*\S)?$",
         "description": "a registry id: printable, NFC, no '/', no blank at either end, not starting with - or +"},
    IntegerText: {"type": "integer"},
}


MISSING: dict[type, str] = {Reason: "a non-empty reason is required for the audit", Time: "required (a time)"}
"""What a refusal says when a field of this type is left out (others: "required")."""


def dec_hook(tp: type, value: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, FreeForm):
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {_shown(value)}")
        return tp(value)
    decode = DECODERS.get(tp)
    if decode is None:
        raise NotImplementedError(f"no decoder for {tp!r}")
    return decode(value)


def schema_hook(tp: type) -> dict[str, Any]:
    if isinstance(tp, type) and issubclass(tp, FreeForm):
        return dict(tp.__schema__)
    if tp in SCHEMAS:
        return dict(SCHEMAS[tp])
    raise NotImplementedError(f"no schema for {tp!r}")


def expected(text: str) -> Meta:
    """Metadata of a field whose refusals say ``<field>: expected <text>, got <value>``
    whatever inside it was wrong (a list of ids: the list is named, not its item)."""
    return Meta(extra={"expected": text})


# -- refusals ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal(Exception):
    """What is wrong with a request: ``code`` for the error and a message that names the key path."""

    code: str
    message: str

    def __str__(self) -> str:
        return self.message


_AT = re.compile(r"(?s)(.*) - at `\$(.*)`")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_MISSING = re.compile(r"Object missing required field `(.+)`")
_INT_WORDS = re.compile(r"Expected `int`( |,|$)")
_UNKNOWN = re.compile(r"Object contains unknown field `(.+)`")


def _steps(path: str) -> list[str | int]:
    return [m[1] if m[1] is not None else int(m[2]) for m in _STEP.finditer(path)]


def _render(steps: list[str | int]) -> str:
    out = ""
    for s in steps:
        out += f"[{s}]" if isinstance(s, int) else (f".{s}" if out else s)
    return out


def _shown(value: Any) -> str:
    return f"{value!r:.200}"


def _strip(tp: Any) -> tuple[Any, dict[str, Any]]:
    """The type under ``Annotated`` and the ``extra`` of its metadata."""
    extra: dict[str, Any] = {}
    while typing.get_origin(tp) is Annotated:
        for meta in tp.__metadata__:
            if isinstance(meta, Meta) and meta.extra:
                extra |= meta.extra
        tp = tp.__origin__
    return tp, extra


def _extra(tp: Any) -> dict[str, Any]:
    """The ``extra`` metadata of a type, or of the members of its union (``Month | None``)."""
    bare, extra = _strip(tp)
    for member in _members(bare):
        extra = _strip(member)[1] | extra
    return extra


def _members(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)


def _field_type(tp: Any, name: str) -> Any:
    for member in _members(_strip(tp)[0]):
        member = _strip(member)[0]
        if isinstance(member, type) and issubclass(member, Struct):
            for f in msgspec.structs.fields(member):
                if f.encode_name == name:
                    return f.type
    return None


def _field_names(tp: Any) -> list[str]:
    return [f.encode_name for member in _members(_strip(tp)[0]) if isinstance(member, type)
            and issubclass(member, Struct) for f in msgspec.structs.fields(member)]


def _item_type(tp: Any) -> Any:
    for member in _members(_strip(tp)[0]):
        member = _strip(member)[0]
        if typing.get_origin(member) in (list, tuple, set, frozenset):
            return typing.get_args(member)[0]
        if typing.get_origin(member) is dict:
            return typing.get_args(member)[1]
    return None


def _value_at(value: Any, step: str | int) -> Any:
    try:
        return value[step]
    except (KeyError, IndexError, TypeError):
        return None


def _bounds(tp: Any) -> tuple[int, int] | None:
    """lo..hi of an int type (``Annotated[int, Meta(ge=.., le=..)]``, maybe ``| None``)."""
    for member in (tp, *_members(_strip(tp)[0])):
        if typing.get_origin(member) is not Annotated or _strip(member)[0] is not int:
            continue
        lo = hi = None
        for meta in member.__metadata__:
            if isinstance(meta, Meta):
                lo = meta.ge if meta.ge is not None else (meta.gt + 1 if meta.gt is not None else lo)
                hi = meta.le if meta.le is not None else (meta.lt - 1 if meta.lt is not None else hi)
        if lo is not None and hi is not None:
            return lo, hi
    return None


def _choices(tp: Any) -> tuple[Any, ...] | None:
    for member in _members(_strip(tp)[0]):
        member = _strip(member)[0]
        if typing.get_origin(member) is Literal:
            return typing.get_args(member)
    return None


def _said(message: str) -> str:
    """msgspec's words in the API's style: ``Expected `int` >= 0`` -> ``expected int >= 0``."""
    text = message.replace("`", "")
    return text[:1].lower() + text[1:]


def explain(error: msgspec.ValidationError, target: Any, data: Any) -> tuple[list[str | int], str]:
    """The key path and the message of a refusal of ``data`` (the request's plain
    JSON, or its query) as ``target``: an integer names its range, a choice its
    options, a field with ``expected(...)`` metadata says that text, each with
    the value that was given."""
    text = str(error)
    found = _AT.fullmatch(text)
    message, steps = (found[1], _steps(found[2])) if found else (text, [])
    missing, unknown = _MISSING.fullmatch(message), _UNKNOWN.fullmatch(message)
    tp, value = target, data
    for step in steps if missing or unknown else ():
        tp = _field_type(tp, step) if isinstance(step, str) else _item_type(tp)
    if missing:
        said = MISSING.get(_strip(_field_type(tp, missing[1]))[0], "required")
        return [*steps, missing[1]], said
    if unknown:
        close = difflib.get_close_matches(unknown[1], _field_names(tp), n=1)
        return [*steps, unknown[1]], "unknown field" + (f" (did you mean {close[0]}?)" if close else "")
    for i, step in enumerate(steps):
        tp = _field_type(tp, step) if isinstance(step, str) else _item_type(tp)
        value = _value_at(value, step)
        if tp is None:
            break
        said = _extra(tp).get("expected")
        if said:
            return steps[: i + 1], f"expected {said}, got {_shown(value)}"
    if tp is not None and steps:
        if (choices := _choices(tp)) is not None:
            return steps, f"expected one of {', '.join(map(str, choices))}, got {_shown(value)}"
        if (bounds := _bounds(tp)) is not None and _INT_WORDS.match(message):
            return steps, f"expected an integer {bounds[0]}..{bounds[1]}, got {_shown(value)}"
    return steps, _said(message)


# -- codecs -----------------------------------------------------------------------------------------------------


class Codec:
    """Decodes one route's path parameters, query parameters and JSON body into their declared types."""

    def __init__(self, body: Any = None, query: type | None = None, path: Sequence[Param] = ()) -> None:
        self.body = body
        self.query = query
        self.path = path_struct(path)
        self._labels = {p.name: p.label or p.name for p in path}
        self._decoder = msgspec.json.Decoder(body, dec_hook=dec_hook) if body is not None else None

    def decode_path(self, raw: dict[str, str]) -> dict[str, Any]:
        """The path parameters as the client meant them (``path_text``), converted to
        their declared types (``path_field``); keyed by the handler's argument names."""
        if self.path is None:
            return {}
        values = {self._labels[name]: path_text(text, self._labels[name]) for name, text in raw.items()}
        try:
            decoded = msgspec.convert(values, self.path, strict=False, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            steps, message = explain(exc, self.path, values)
            raise Refusal("bad_parameter", f"{_render(steps[:1])}: {message}") from None
        return {name: getattr(decoded, label) for name, label in self._labels.items()}

    def decode_body(self, raw: bytes) -> Any:
        if self._decoder is None:
            raise TypeError("the route declares no body")
        try:
            return self._decoder.decode(raw or b"null")
        except RecursionError:
            raise Refusal("bad_json", "request body is nested too deeply") from None
        except msgspec.ValidationError as exc:  # a subclass of DecodeError: first
            try:  # the body as plain JSON, to show the value that was refused (only on this path)
                data = msgspec.json.decode(raw or b"null")
            except RecursionError:
                # A typed decoder stops at the first wrong type; a deep body is deep whatever its shape.
                raise Refusal("bad_json", "request body is nested too deeply") from None
            except msgspec.DecodeError as bad:  # broken after the first wrong type: broken is what to say
                raise Refusal("bad_json", f"request body is not valid JSON: {bad}") from None
            steps, message = explain(exc, self.body, data)
            raise Refusal("bad_body", f"{_render(steps) or 'request body'}: {message}") from None
        except msgspec.DecodeError as exc:
            raise Refusal("bad_json", f"request body is not valid JSON: {exc}") from None

    def decode_query(self, args: dict[str, str]) -> Any:
        if self.query is None:
            raise TypeError("the route declares no query")
        try:
            return msgspec.convert(args, self.query, strict=False, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            steps, message = explain(exc, self.query, args)
            name = _render(steps[:1])
            if _MISSING.match(str(exc)):
                hint = query_hint(self.query, name)
                raise Refusal("missing_parameter",
                              f"query parameter {name} is required" + (f" ({hint})" if hint else "")) from None
            raise Refusal("bad_parameter", f"{name}: {message}") from None


_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def path_text(raw: str, name: str) -> str:
    """A path parameter as the client meant it: percent-decoded (as UTF-8) and
    NFC-normalised, so ``/meters/%D0%9A%D0%B2-1`` names meter "Кв-1" in either
    Unicode form. Sanic matches routes on the raw path and hands the segment
    over still encoded. A broken escape or bytes that are not UTF-8 are the
    client's error (400 naming the parameter)."""
    if _ESCAPE.search(raw):
        raise Refusal("bad_parameter", f"{name}: broken percent-escape in {raw!r}")
    try:
        text = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise Refusal("bad_parameter", f"{name}: percent-escapes that are not UTF-8 in {raw!r}") from None
    return unicodedata.normalize("NFC", text)


def path_field(param: Param) -> Any:
    """The declared type of a path parameter: text of at least one character, or an
    integer within both of its bounds. An integer without both bounds stays text,
    documented as an integer: its handler parses it (some answer 404 for an id
    that is no number)."""
    described = {"description": param.description} if param.description else {}
    if param.checked:
        return Annotated[int, Meta(ge=param.minimum, le=param.maximum, **described)]
    if param.type == "integer":
        return Annotated[IntegerText, Meta(**described)]
    return Annotated[str, Meta(min_length=1, **described)]


def path_struct(params: Sequence[Param]) -> type[Struct] | None:
    """A Struct of a route's path parameters, each under the name its refusals use (``label``)."""
    if not params:
        return None
    return msgspec.defstruct("Path", [(p.label or p.name, path_field(p)) for p in params])


def path_parameter(param: Param) -> dict[str, Any]:
    """The OpenAPI parameter (``in: path``) of a path parameter, from its declared type."""
    schema = msgspec.json.schema(path_field(param), schema_hook=schema_hook)
    out: dict[str, Any] = {"name": param.name, "in": "path", "required": True}
    description = schema.pop("description", "")
    out["schema"] = schema
    if description:
        out["description"] = description
    return out


def query_hint(query: type, name: str) -> str:
    tp = _strip(_field_type(query, name))[0]
    if tp is Time:
        return "ISO-8601 time"
    field_type = _field_type(query, name)
    for member in (field_type, *_members(_strip(field_type)[0])):
        for meta in getattr(member, "__metadata__", ()):
            if isinstance(meta, Meta) and meta.description:
                return meta.description
    return ""


def optional(tp: Any) -> tuple[Any, bool]:
    """``(T, True)`` for a body declared as ``T | None`` (it may be left out), ``(tp, False)`` otherwise."""
    members = _members(tp)
    if type(None) in members and len(members) == 2:
        return next(m for m in members if m is not type(None)), True
    return tp, False


# -- OpenAPI ----------------------------------------------------------------------------------------------------


def components(types_: Iterable[Any]) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    """JSON Schemas of ``types_`` (refs into ``#/components/schemas``) and the components they refer to."""
    unique = list(dict.fromkeys(types_))
    refs, defs = msgspec.json.schema_components(unique, schema_hook=schema_hook, ref_template=REF_TEMPLATE)
    return dict(zip(unique, refs, strict=True)), defs


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without the ``null`` of ``X | None = None``: a
    parameter is left out, never null."""
    prop = {k: v for k, v in prop.items() if not (k == "default" and v is None)}
    options = [o for o in prop.get("anyOf", ()) if o != {"type": "null"}]
    if "anyOf" in prop and len(options) == 1:
        del prop["anyOf"]
        prop = {**options[0], **prop}  # the field's description over its type's
    return prop


def query_parameters(ref: dict[str, str], defs: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAPI parameters (``in: query``) of a query Struct, from its component schema (``ref``)."""
    schema = defs[ref["$ref"].rsplit("/", 1)[1]]
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = _not_null(prop)
        description = prop.pop("description", "")
        param = {"name": name, "in": "query", "required": name in schema.get("required", ()), "schema": prop}
        if description:
            param["description"] = description
        out.append(param)
    return out


class Error(Struct):
    code: str
    message: Annotated[str, Meta(min_length=1)]


class ErrorBody(Struct):
    """Every refusal and failure: ``{"error": {"code": "...", "message": "..."}}``."""

    error: Error


Bounded = Annotated[int, Meta(gt=-INT62, lt=INT62)]


class Period(Struct):
    """A period of a query: from <= t < to (ISO-8601 or unix seconds)."""

    from_: Time = msgspec.field(name="from")
    to: Time


Month = Annotated[str, Meta(pattern=r"^[0-9]{4}-[0-9]{2}$", description="YYYY-MM in the site's timezone",
                            extra={"expected": f"YYYY-MM within {RANGE_TEXT}"})]


class StepPeriod(Period):
    """A period and its step: hours (UTC), days or months (of the site's timezone)."""

    step: Annotated[Step, Meta(description="default hour")] = "hour"


class CommandRecord(Struct):
    """An audited command."""

    id: int
    t: str
    target: str
    code: str
    requested_by: str
    reason: str
    outcome: str
    detail: str


SwitchCommandCode = Literal[tuple(str(c) for c in SWITCH_CODES)]  # type: ignore[valid-type]
"""What the actuator routes accept: valves, relays and pumps (device commands have routes of their own)."""


class CommandBody(Struct):
    """A command to a valve, pump or relay, and why (for the audit)."""

    command: SwitchCommandCode
    reason: Reason
