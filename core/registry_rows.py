"""The columns of the registry: one msgspec Struct per kind, for files and HTTP bodies alike.

A row is what people write: a CSV line (every cell text), an item of
registry.json, the body of ``PUT /api/v1/meters/{id}``. Its Struct says which
columns exist, their types, ranges, defaults and meaning; msgspec checks them
(lax about numbers written as text, as a spreadsheet writes them) and gives
the JSON Schema of request and response bodies. Columns with a domain rule
msgspec cannot express (the id rule, ISO times, a unit's spelling, ``M1;-M2``
group inputs) name the rule's parser in their ``Meta`` (``core.schema``); the
parsers are in ``core.registry_io``. ``decode_row`` turns a row into the
domain object (``core.model``), collecting every problem of the row.

The Structs describe the columns in the model's field order and with the
model's required fields (a test holds them together).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from balans_edge.core import schema
from balans_edge.core.model import ALLOCATION_RULES, MAX_HOPS, METER_FLAGS, Resource
from balans_edge.core.registry_io import (
    MAX_ID_LENGTH,
    BadValue,
    Problem,
    Where,
    choice,
    flag_list,
    group_inputs,
    identifier,
    iso_time,
    plain_text,
    resource_name,
    unit_name,
)
from balans_edge.core.storage.base import REGISTRY_KINDS

U32_MAX = (1 << 32) - 1

# Physical ranges of the registry's numbers (docs/registry.md). Generous for any real
# site, tight enough that no product of them overflows: a pulse weight of 1e300 made
# register values infinite, and one infinite field makes InfluxDB refuse a whole batch.
MAX_PULSE_WEIGHT = 1000.0
"""Units per pulse (a bulk water meter: 1 m3 per pulse; 1000 leaves room for a district heat meter in GJ)."""
MAX_BASE_READING = 1e9
"""A dial has at most nine whole digits."""
MAX_AREA_M2 = 1e6
"""Floor area of one account (a square kilometre: a factory site)."""
MAX_PRICE = 1e6
"""Money per unit (heat is about 3000 per Gcal)."""
MAX_ODN_NORM = 100.0
"""Common-use consumption per m2 per month (water about 0.03 m3, heat 0.02 Gcal, electricity a few kWh)."""


def _ruled(parse: Callable[[Any], Any], **meta: Any) -> Meta:
    """The Meta of a column whose domain rule is ``parse`` (``core.schema``)."""
    return Meta(extra={"parse": parse}, **meta)


Id = Annotated[str, Meta(max_length=MAX_ID_LENGTH), _ruled(identifier)]
"""An id (docs/registry.md, "Ids"); a number is taken as its text."""
Text = Annotated[str, _ruled(plain_text)]
"""Free text: no control characters, at most 4096 bytes of UTF-8, surrounding blanks dropped."""
Time = Annotated[str, _ruled(iso_time, extra_json_schema={"format": "date-time"})]
"""ISO-8601 with a timezone, whole seconds (``core.times``)."""
U32 = Annotated[int, Meta(ge=1, le=U32_MAX)]
ResourceName = Annotated[Resource, _ruled(resource_name)]
"""water, gas, heat or electricity, in any letter case."""
Unit = Annotated[str, _ruled(unit_name, description="water and gas m3; heat GJ or Gcal; electricity kWh (letter "
                                                    "case is corrected)")]
Flag = Literal[tuple(sorted(METER_FLAGS))]  # type: ignore[valid-type]


def _doc(text: str) -> Meta:
    return Meta(description=text)


class Row(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A registry row (the base of every kind's row)."""


class ConcentratorRow(Row):
    """A concentrator (concentrators.csv)."""

    concentrator_id: Annotated[U32, _doc("the concentrator's network id")]
    name: Annotated[Text, _doc("display name")] = ""
    site: Annotated[Text, _doc("where it is")] = ""
    description: Annotated[Text, _doc("anything useful to the next technician")] = ""


class ModuleRow(Row):
    """A radio module (modules.csv); the network reports parent_id, hops, rssi, battery_mv,
    firmware and last_seen (an empty cell keeps the reported value)."""

    module_id: Annotated[U32, _doc("the module's radio id (decimal)")]
    concentrator_id: Annotated[U32, _doc("the concentrator it belongs to; must exist")] | None = None
    channels: Annotated[int, Meta(ge=1, le=7, description="bit mask of wired inputs: 1 = input 1, 2 = input 2, "
                                                          "4 = input 3")] = 1
    parent_id: Annotated[U32, _doc("mesh parent (reported by the network)")] | None = None
    hops: Annotated[int, Meta(ge=1, le=MAX_HOPS, description="hops to the concentrator (reported)")] | None = None
    rssi: Annotated[int, Meta(ge=-128, le=127, description="signal strength in dBm (reported)")] | None = None
    battery_mv: Annotated[int, Meta(ge=0, le=65535, description="battery voltage in mV (reported)")] | None = None
    firmware: Annotated[Id, _doc("firmware version (reported)")] = ""
    last_seen: Annotated[Time, _doc("last reading or topology report; never imported")] | None = None


class AccountRow(Row):
    """An account: who consumes (accounts.csv)."""

    account_id: Annotated[Id, _doc("the account's number or code")]
    consumer: Annotated[Text, _doc("who consumes")] = ""
    contact: Annotated[Text, _doc("phone, e-mail")] = ""
    tariff_plan: Annotated[Text, _doc("name of the tariff plan")] = ""
    address: Annotated[Text, _doc("postal address")] = ""
    area_m2: Annotated[float, Meta(gt=0, le=MAX_AREA_M2, description="heated area, for per-m2 reports")] | None = None


class MeterRow(Row):
    """A meter (meters.csv); without module_id and channel it is virtual or read by hand."""

    meter_id: Annotated[Id, _doc("the meter's number (serial or asset tag)")]
    resource: Annotated[ResourceName, _doc("what it measures")]
    unit: Annotated[Unit, _doc("unit of pulse_weight and readings")]
    pulse_weight: Annotated[float, Meta(gt=0, le=MAX_PULSE_WEIGHT, description=(
        "quantity per pulse, in unit (1 pulse per litre = 0.001 m3)"))]
    install_time: Annotated[Time, _doc("when the meter was wired; earlier pulses are not its own")]
    module_id: Annotated[U32, _doc("the module it is wired to (with channel); must exist")] | None = None
    channel: Annotated[int, Meta(ge=1, le=3, description="the module's input (with module_id); must be wired in "
                                                         "its channels")] | None = None
    base_reading: Annotated[float, Meta(ge=0, le=MAX_BASE_READING, description=(
        "the dial reading at install_time"))] = 0.0
    base_counter: Annotated[int, Meta(ge=0, le=U32_MAX, description="the module's counter at install_time")] = 0
    account_id: Annotated[Id, _doc("the consumer; must exist")] | None = None
    group_id: Annotated[Id, _doc("the balance group the meter is a member of; must exist")] | None = None
    accuracy_class: Annotated[Text, _doc("as on the meter's certificate")] = ""
    flags: Annotated[list[Flag] | str, _ruled(flag_list, description=(
        "valve, relay, virtual, reverse_allowed; CSV: ;-separated (valve;relay), JSON: a list"))] = []
    removed_time: Annotated[Time, _doc("when it was removed or replaced; later pulses are not its own")] | None = None


class GroupRow(Row):
    """A balance group (groups.csv, ``[[groups]]``): what its input meters measure
    should equal what its members consumed."""

    group_id: Annotated[Id, _doc("the group's id")]
    resource: Annotated[ResourceName, _doc("what it balances")]
    unit: Annotated[Unit, _doc("every input, member and member group uses it")]
    inputs: Annotated[list[str] | str, _ruled(group_inputs, description=(
        "input meters; CSV ;-separated, JSON a list; - before an id marks an outgoing or transit meter; "
        "empty when formula gives the input"))] = []
    name: Annotated[Text, _doc("shown in reports")] = ""
    level: Annotated[Id, _doc("entrance, house, street, district, city, region or your own")] = "house"
    parent_id: Annotated[Id, _doc("the group it is a member of")] | None = None
    loss_norm_pct: Annotated[float, Meta(ge=0, le=100, description=(
        "accepted loss as % of the input (technical losses)"))] | None = None
    price: Annotated[float, Meta(ge=0, le=MAX_PRICE, description=(
        "money per unit, for money lost and the allocation"))] | None = None
    allocation_rule: Annotated[Literal[ALLOCATION_RULES], _ruled(  # type: ignore[valid-type]
        choice(ALLOCATION_RULES), description="how the imbalance is shared among accounts (ОДН)")] = "consumption"
    odn_norm: Annotated[float, Meta(ge=0, le=MAX_ODN_NORM, description=(
        "most an account may be allocated per month, in unit per m2 of its area"))] | None = None
    formula: Annotated[Text, _doc(
        "a calculated input instead of input meters, evaluated hourly: numbers, + - * / and parentheses over "
        "meter:ID (hourly consumption), tag:DEVICE/NAME (mean over the hour) and d(tag:DEVICE/NAME)/dt (change "
        "over the hour); quote ids with blanks (meter:\"Ввод 1\"); e.g. tag:PS1/flow - 150 * d(tag:PS1/level)/dt "
        "(docs/balance.md)")] = ""


ROWS: dict[str, type[Row]] = {"concentrators": ConcentratorRow, "modules": ModuleRow, "accounts": AccountRow,
                              "meters": MeterRow, "groups": GroupRow}
"""The row of each registry kind, in dependency order (as ``REGISTRY_KINDS``)."""


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a kind: its name, whether a row needs it, and its field in the row."""

    name: str
    required: bool
    field: schema.Field

    def parse(self, value: Any) -> Any:
        """One value of this column (text or JSON) as the model holds it; BadValue says why not."""
        try:
            return schema.convert_field(self.field, value, strict=False)
        except schema.Refusal as exc:
            raise BadValue(exc.message) from None


COLUMNS: dict[str, dict[str, Column]] = {
    kind: {f.name: Column(f.name, f.required, f) for f in schema.fields_of(row)} for kind, row in ROWS.items()
}
"""Columns of each kind in file order (the model's field order)."""


def empty(value: Any) -> bool:
    """No value: a missing key, null, or a blank cell."""
    return value is None or (isinstance(value, str) and not value.strip())


def unknown_column(kind: str) -> str:
    return f"unknown column (expected: {', '.join(COLUMNS[kind])})"


def decode_row(kind: str, data: Mapping[str, Any], where: Where) -> tuple[Any | None, list[Problem]]:
    """The model object of one row, or None and every problem found in it.

    msgspec converts the row in one call; when that fails, each column is
    converted on its own so that every problem is named, with its column."""
    columns = COLUMNS[kind]
    problems = [where.problem(str(name), unknown_column(kind)) for name in data if name not in columns]
    given = {name: value for name, value in data.items() if name in columns and not empty(value)}
    for name, column in columns.items():
        if column.required and name not in given:
            problems.append(where.problem(name, "required, but empty" if name in data else "required, but missing"))
    values: dict[str, Any] = {}
    row = None
    if not problems:
        try:
            row = msgspec.convert(given, ROWS[kind], strict=False)
        except msgspec.ValidationError:
            row = None
    for name in given:
        field = columns[name].field
        try:
            if row is None:
                values[name] = schema.convert_field(field, given[name], strict=False)
            else:
                values[name] = getattr(row, name) if field.parse is None else field.parse(getattr(row, name))
        except schema.Refusal as exc:
            problems.append(where.problem(name + exc.at, exc.message))
        except ValueError as exc:
            problems.append(where.problem(name, str(exc)))
    if problems:
        return None, problems
    return REGISTRY_KINDS[kind](**values), []
