"""The domain model: what a meter, a radio module and a reading are.

Plain dataclasses with no behaviour beyond validation of their own fields, so
every layer (storage, ingest, API, plugins) speaks the same vocabulary.
Times are UTC everywhere inside; they are carried as integer unix seconds on
hot paths (ingest, intervals) and as aware ``datetime`` objects at the edges.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

COUNTER_MODULUS = 1 << 32
"""DMesh pulse counters are u32 and wrap modulo 2^32."""

CONCENTRATOR_MODULES = 240
"""Radio modules one concentrator serves at most: the DMesh J100UC's capacity
(the vendor's protocol document, one subnet). The registry refuses more."""
CONCENTRATOR_METERS = 720
"""Meters one concentrator serves at most (J100UC: 240 modules x 3 inputs)."""
MAX_HOPS = 30
"""Radio relay hops between a module and its concentrator at most (J100UC)."""


class Resource(enum.StrEnum):
    WATER = "water"
    GAS = "gas"
    HEAT = "heat"
    ELECTRICITY = "electricity"


UNITS: dict[Resource, frozenset[str]] = {
    Resource.WATER: frozenset({"m3"}),
    Resource.GAS: frozenset({"m3"}),
    Resource.HEAT: frozenset({"GJ", "Gcal"}),
    Resource.ELECTRICITY: frozenset({"kWh"}),
}
"""Units a meter of each resource may be registered in."""


class Quality(enum.IntEnum):
    """How an hour's value was obtained, from best to worst (docs/intervals.md).

    The integer is the code stored in ``consumption_hourly.quality`` and carried
    in int8 quality matrices: the values never change. Worse is larger, so the
    quality of a span is the maximum of its hours'. The API and the exporters
    print ``label``."""

    MEASURED = 0
    """A reading lies within the tolerance of both of the hour's boundaries."""
    ESTIMATED = 1
    """A boundary is interpolated across a gap of at most ``max_gap_s``."""
    MISSING = 2
    """Unknown: no reading on one side, a longer gap or a counter restart; no value."""
    ABSENT = 3
    """Only in the quality matrices of balances and analytics, never stored: the
    meter was not installed in that hour, so it is no member then."""

    @property
    def label(self) -> str:
        """The name the API, the exporters and the bridges print (``measured``, ...)."""
        return self.name.lower()


class Status(enum.IntFlag):
    """Module status flags as sent by the radio module (DMesh READINGS)."""

    MAGNET = 1 << 0
    TAMPER = 1 << 1
    REVERSE = 1 << 2
    LEAK = 1 << 3
    LOW_BATTERY = 1 << 4
    VALVE_CLOSED = 1 << 5
    CABLE_CUT = 1 << 6
    COUNTER_RESET = 1 << 7
    RELAY_OFF = 1 << 8


class ReadingFlag(enum.IntFlag):
    """Flags the ingest path derives and stores with each reading."""

    EPOCH_START = 1 << 0
    """First reading after a counter reset: the interval since the previous
    reading is incomplete (pulses between the two are unknown)."""
    IMPLICIT_RESET = 1 << 1
    """The counter went backwards without a COUNTER_RESET flag."""
    BACKWARDS = 1 << 2
    """The counter ran backwards (it lost less than it still holds, or the meter
    is ``reverse_allowed``): negative pulses, no reset."""


METER_FLAGS = frozenset({"valve", "relay", "virtual", "reverse_allowed"})
"""Flags a meter may carry in the registry (documented in docs/registry.md)."""


@dataclass(frozen=True, slots=True)
class Concentrator:
    concentrator_id: int
    name: str = ""
    site: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class RadioModule:
    module_id: int
    concentrator_id: int | None = None
    channels: int = 0b001
    """Bit mask of wired inputs (bit0..bit2 = inputs 1..3)."""
    parent_id: int | None = None
    hops: int | None = None
    rssi: int | None = None
    battery_mv: int | None = None
    firmware: str = ""
    last_seen: int | None = None
    """Unix time of the last reading or topology report."""


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    consumer: str = ""
    contact: str = ""
    tariff_plan: str = ""
    address: str = ""
    area_m2: float | None = None


@dataclass(frozen=True, slots=True)
class Meter:
    meter_id: str
    resource: Resource
    unit: str
    pulse_weight: float
    """Quantity per pulse in the meter's unit (1 pulse per litre = 0.001 m3)."""
    install_time: int
    module_id: int | None = None
    channel: int | None = None
    base_reading: float = 0.0
    """Register reading on the meter's dial at ``install_time``."""
    base_counter: int = 0
    """Module counter value at ``install_time`` (pulses before it are not this meter's)."""
    account_id: str | None = None
    group_id: str | None = None
    accuracy_class: str = ""
    flags: frozenset[str] = field(default_factory=frozenset)
    removed_time: int | None = None
    """Set when the meter was replaced or removed; readings after it are not its own."""


LEVELS = ("entrance", "house", "street", "district", "city", "region")
"""The usual levels of a balance group, from the smallest; any other name is a custom level."""
ALLOCATION_RULES = ("consumption", "area", "equal")
"""How a house's imbalance is shared among its accounts (ОДН): in proportion to
their consumption, to their floor area, or equally."""


@dataclass(frozen=True, slots=True)
class GroupInput:
    """A meter through which a balance group's resource enters (sign +1, a feed)
    or leaves (sign -1, a transit or outgoing pipe metered inside the group)."""

    meter_id: str
    sign: int = 1


@dataclass(frozen=True, slots=True)
class Group:
    """A balance group: what its input meters measure should equal what its
    members consumed; the difference is the group's imbalance (loss).

    Members are the meters whose ``group_id`` is this group and the groups whose
    ``parent_id`` is this group; a member group counts with its input (what
    flowed into it), so a group appears in its parent just as a meter does.
    """

    group_id: str
    resource: Resource
    unit: str
    inputs: tuple[GroupInput, ...] = ()
    """Input meters; empty when ``formula`` gives the input."""
    name: str = ""
    level: str = "house"
    parent_id: str | None = None
    loss_norm_pct: float | None = None
    """Imbalance as a share of the input that is accepted as normal (technical losses)."""
    price: float | None = None
    """Money per unit of the resource, for money lost and the allocation report."""
    allocation_rule: str = "consumption"
    odn_norm: float | None = None
    """Most a month's imbalance may put on the accounts (ОДН), in units per m2 of
    their floor area; None: no cap."""
    formula: str = ""
    """A calculated input instead of input meters, e.g. ``tag:PS1/flow - 150 *
    d(tag:PS1/level)/dt`` (``core.formula``, ``core.calculated``); empty: none."""


@dataclass(frozen=True, slots=True)
class RawReading:
    """One counter value as a driver received it."""

    module_id: int
    channel: int
    ts: int
    counter: int
    status: int = 0


@dataclass(frozen=True, slots=True)
class RegisterValue:
    """A stored reading of a meter: the module's counter turned into its register."""

    ts: int
    counter: int
    pulses: int
    value: float
    status: int
    flags: int


@dataclass(frozen=True, slots=True)
class IntervalValue:
    """Consumption of one meter over one period starting at ``t`` (unix UTC)."""

    t: int
    value: float | None
    quality: Quality
