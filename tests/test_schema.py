"""The schema layer (core/schema.py): msgspec types say what a field takes; the words
of a refusal come from the same constraints; registry rows describe files and bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Generic, Literal, TypeVar

import msgspec
import pytest

from balans_edge.core import schema
from balans_edge.core.model import Group, GroupInput, Meter, RadioModule, Resource
from balans_edge.core.registry import COLUMNS, ROWS, format_object, parse_object
from balans_edge.settings import ConfigError, parse_section, setting


@pytest.mark.parametrize(("tp", "words"), [
    (Annotated[int, msgspec.Meta(ge=0, le=65535)], "an integer 0..65535"),
    (Annotated[int, msgspec.Meta(gt=0, lt=8)], "an integer 1..7"),
    (Annotated[float, msgspec.Meta(gt=0, le=1e6)], "a number > 0 and <= 1000000"),
    (Annotated[float, msgspec.Meta(ge=0.000001)], "a number >= 0.000001"),
    (bool, "true or false"),
    (Literal["viewer", "operator", "admin"], "one of viewer, operator, admin"),
    (Resource, "one of water, gas, heat, electricity"),
    (bool | int | float | str, "true or false, a number or a string"),
    (Annotated[int, msgspec.Meta(ge=1)] | None, "an integer >= 1"),
    (list[str], "a list"),
    (dict[str, int], "a table"),
])
def test_expected_words_come_from_the_constraints(tp, words):
    assert schema.expected(tp) == words


@dataclass(frozen=True)
class Inner:
    """A nested table."""

    size: Annotated[int, setting(range=(1, 9), doc="how big")] = 1


@dataclass(frozen=True)
class Section:
    """A section with every kind of field."""

    port: Annotated[int, setting(range=(0, 65535), doc="TCP port")] = 80
    mode: Annotated[Literal["fast", "safe"], setting(doc="how it runs")] = "safe"
    token: Annotated[str, setting(secret=True, check=lambda v: None if len(v) > 3 else "too short")] = ""
    limits: Annotated[dict[str, float], setting(doc="per resource")] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    inners: list[Inner] = field(default_factory=list)


def problems(table: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_section(Section, table, ["s"])
    return info.value.problems


def test_every_problem_of_a_section_at_once_with_its_key_path():
    assert problems({"port": "80", "mode": "slow", "prot": 1, "limits": {"water": 1, "gas": "x"},
                     "inner": {"size": 10}, "inners": [{"size": 0}, {"sise": 2}]}) == [
        '[s] prot: unknown key (did you mean "port"?)',
        '[s] port: expected an integer 0..65535, got "80"',
        '[s] mode: expected one of fast, safe, got "slow"',
        '[s] limits.gas: expected a number, got "x"',
        "[s.inner] size: expected an integer 1..9, got 10",
        "[s.inners[0]] size: expected an integer 1..9, got 0",
        '[s.inners[1]] sise: unknown key (did you mean "size"?)',
    ]
    section = parse_section(Section, {"port": 0, "limits": {"water": 6}, "inners": [{}]}, ["s"])
    assert section == Section(port=0, limits={"water": 6.0}, inners=[Inner()])


def test_a_secret_is_never_shown_and_its_check_runs(monkeypatch):
    assert problems({"token": 123456}) == ["[s] token: expected a string (the value is a secret: not shown)"]
    assert problems({"token": "abc"}) == ["[s] token: too short"]
    monkeypatch.setenv("SECTION_TOKEN", "long enough")
    assert parse_section(Section, {"token_env": "SECTION_TOKEN"}, ["s"]).token == "long enough"


def test_rules_in_field_metadata_are_refused_not_ignored():
    @dataclass(frozen=True)
    class Old:
        port: int = field(default=80, metadata={"range": (1, 65535)})

    with pytest.raises(ConfigError) as info:
        parse_section(Old, {"port": 0}, ["old"])
    assert info.value.problems[0].startswith("[old]: ") and "Annotated[..., setting(range=...)]" in \
        info.value.problems[0]
    with pytest.raises(TypeError, match="goes into the field's type"):
        setting(80, range=(1, 65535))


ItemT = TypeVar("ItemT")


@dataclass(frozen=True)
class Listing(Generic[ItemT]):
    """A section whose items' type its subclass names (as a protocol's device names its tag type)."""

    items: Annotated[list[ItemT], setting(doc="the items")] = field(default_factory=list)


@dataclass(frozen=True)
class InnerListing(Listing[Inner]):
    pass


def test_a_generic_base_s_fields_are_read_with_the_type_its_subclass_binds():
    (items,) = schema.fields_of(InnerListing)
    assert schema.nested(items) == ("tables", Inner) and items.description == "the items"
    assert parse_section(InnerListing, {"items": [{"size": 3}]}, ["s"]) == InnerListing(items=[Inner(size=3)])
    with pytest.raises(ConfigError) as info:
        parse_section(InnerListing, {"items": [{"size": 0}, {"sise": 1}]}, ["s"])
    assert info.value.problems == ["[s.items[0]] size: expected an integer 1..9, got 0",
                                   '[s.items[1]] sise: unknown key (did you mean "size"?)']


def test_the_json_schema_carries_ranges_and_descriptions():
    doc = msgspec.json.schema(Section)["$defs"]["Section"]["properties"]
    assert doc["port"] == {"description": "TCP port", "type": "integer", "minimum": 0, "maximum": 65535,
                           "default": 80}
    assert doc["mode"]["enum"] == ["fast", "safe"]


# -- registry rows -------------------------------------------------------------------

SITE = [
    RadioModule(5, channels=3, rssi=-71, hops=2, firmware="2.1", last_seen=1_704_067_200),
    Meter("Кв-1", Resource.WATER, "m3", 0.001, 1_704_067_200, module_id=5, channel=1, flags=frozenset({"valve"}),
          removed_time=1_704_153_600),
    Group("G", Resource.WATER, "m3", (GroupInput("Кв-1"), GroupInput("OUT", -1)), price=2.5),
]


@pytest.mark.parametrize("obj", SITE, ids=lambda o: type(o).__name__)
def test_what_the_api_and_exports_show_is_a_valid_row(obj):
    """A row as format_object writes it fits its Struct with JSON's own types (the response
    schema), and reads back equal."""
    kind = {RadioModule: "modules", Meter: "meters", Group: "groups"}[type(obj)]
    shown = format_object(obj)
    msgspec.convert({k: v for k, v in shown.items() if v is not None}, ROWS[kind], strict=True)
    assert parse_object(kind, shown) == obj


def test_every_column_is_described_in_the_row_schema():
    for kind, row in ROWS.items():
        properties = msgspec.json.schema(row)["$defs"][row.__name__]["properties"]
        assert list(properties) == list(COLUMNS[kind])
        for name, prop in properties.items():
            described = prop.get("description") or any("description" in p for p in prop.get("anyOf", []))
            assert described, f"{kind}.{name}"


def test_a_row_collects_every_problem_and_names_the_column():
    with pytest.raises(Exception) as info:
        parse_object("meters", {"meter_id": "a/b", "resource": "steam", "unit": "m3", "pulse_weight": "1,5",
                                "install_time": 1, "channel": "007", "colour": "red"}, "PUT x")
    assert [str(p) for p in info.value.problems] == [
        'PUT x: column "colour": unknown column (expected: ' + ", ".join(COLUMNS["meters"]) + ")",
        'PUT x: column "meter_id": an id may not contain "/" nor be "." or "..", got "a/b"',
        'PUT x: column "resource": expected one of electricity, gas, heat, water, got "steam"',
        'PUT x: column "pulse_weight": expected a number > 0 and <= 1000, got "1,5" (use a dot as the decimal '
        "separator)",
        'PUT x: column "install_time": expected an ISO-8601 time with a timezone such as 2014-01-01T00:00:00Z, '
        "got 1",
        'PUT x: column "channel": expected an integer 1..3, got "007" (write it without a leading zero or plus sign)',
    ]
