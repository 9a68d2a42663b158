"""The night-flow analysis's settings per balance group, and their presets.

One set of numbers does not fit every group: a building whose flats are all
metered has an imbalance of a few litres an hour that only its loss moves; a
district metered only at its inlet has a night flow that is mostly people
awake and wobbles by several percent from night to night; a district whose
buildings are metered is in between. A preset gives each kind its defaults
(``PRESETS``); the configuration and the API change single values on top
(``resolve``). The fields carry their ranges and meaning (``msgspec.Meta``),
so the configuration file, the API and docs/config.md check and show the same
rules.

How an operator tunes them: docs/analytics.md, "Night flow".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal, get_args, get_type_hints

from msgspec import Meta

Preset = Literal["building", "district_inlet", "district_metered"]
PRESET_NAMES: tuple[str, ...] = get_args(Preset)


@dataclass(frozen=True)
class NightFlowSettings:
    """How the night flow of one group is judged (docs/analytics.md, "Night flow")."""

    night_from: Annotated[int, Meta(ge=0, le=23, description=(
        "local hour the night window starts (the night flow is taken over its hours)"))] = 2
    night_to: Annotated[int, Meta(ge=0, le=23, description=(
        "local hour the night window ends, exclusive; smaller than night_from: the window spans midnight"))] = 6
    statistic: Annotated[Literal["mean", "min"], Meta(description=(
        "the night flow of a night: the mean of its hours, or its lowest hour (the classic minimum night flow). "
        "The mean holds where the input moves in coarse steps (a tank's level to the centimetre: the volume "
        "is right over hours, a single hour is not)"))] = "mean"
    baseline_nights: Annotated[int, Meta(ge=7, le=90, description=(
        "nights before a change its baseline is the median of (separately for weekend nights when they differ)"))] = 21
    scale_nights: Annotated[int, Meta(ge=7, le=365, description=(
        "nights the spread is read from (their rise over their own baselines): the longer, the better the odd "
        "nights a group has are known"))] = 70
    search_nights: Annotated[int, Meta(ge=1, le=120, description=(
        "the onset of a new change is looked for among this many latest nights (older ones were judged when "
        "they were new)"))] = 28
    min_nights: Annotated[int, Meta(ge=3, le=60, description=(
        "known nights a baseline needs before anything is judged"))] = 14
    sensitivity: Annotated[float, Meta(ge=0.5, le=20.0, description=(
        "how far above the baseline a night must be to count, in spreads; higher: fewer false alarms, "
        "smaller leaks missed"))] = 2.25
    confirm_nights: Annotated[int, Meta(ge=1, le=14, description=(
        "nights in a row above the baseline that confirm a step (one odd night is no burst)"))] = 3
    min_lph: Annotated[float, Meta(ge=0.0, le=1e7, description=(
        "smallest leak reported, litres per hour"))] = 5.0
    min_pct: Annotated[float, Meta(ge=0.0, le=100.0, description=(
        "smallest leak reported, percent of the group's mean input"))] = 5.0
    resolution_share: Annotated[float, Meta(ge=0.0, le=10.0, description=(
        "the spread is at least this many of the input's measured resolution (its quantisation step): a series "
        "that moves in coarse steps cannot show a smaller change"))] = 0.5
    spread_floor_pct: Annotated[float, Meta(ge=0.0, le=100.0, description=(
        "the spread is at least this percent of the baseline night flow, however quiet the recent nights were"))] = 1.0
    allowance_lph: Annotated[float, Meta(ge=0.0, le=1e9, description=(
        "legitimate night use, litres per hour, where the members are not metered (people awake, night "
        "industry); where they are, their own metered night use is taken instead"))] = 0.0
    night_use_pct: Annotated[float, Meta(ge=0.0, le=100.0, description=(
        "the spread is at least this percent of the legitimate night use: more people awake, more wobble"))] = 10.0
    trend_nights: Annotated[int, Meta(ge=7, le=120, description=(
        "nights over which a slowly growing leak is looked for (a robust Theil-Sen slope)"))] = 28
    trend_confidence: Annotated[float, Meta(ge=0.5, le=0.9999, description=(
        "confidence the slope must be above zero at"))] = 0.99
    trend_pct: Annotated[float, Meta(ge=0.0, le=100.0, description=(
        "a growing leak must have risen by at least this percent of the mean input over trend_nights"))] = 8.0
    end_nights: Annotated[int, Meta(ge=1, le=14, description=(
        "nights back at the baseline that end an event (a repaired leak)"))] = 2

    def __post_init__(self) -> None:
        if self.night_from == self.night_to:
            raise ValueError("night_from and night_to must differ")
        if self.min_nights > self.baseline_nights:
            raise ValueError("min_nights must not exceed baseline_nights")

    @property
    def night(self) -> tuple[int, int]:
        return self.night_from, self.night_to

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # Flats metered: the imbalance at night is the loss itself, litres an hour.
    # Small leaks count, and the floors keep a quiet building's spread from
    # collapsing to one pulse.
    "building": {"min_nights": 5, "min_lph": 5.0, "min_pct": 5.0, "spread_floor_pct": 2.0, "night_use_pct": 10.0,
                 "trend_pct": 5.0},
    # Only an inlet meter: the night flow is mostly people awake and wobbles by
    # several percent from night to night; leaks of a few percent of the mean
    # flow are below what one night can show.
    "district_inlet": {"min_lph": 50.0, "min_pct": 6.0, "spread_floor_pct": 1.0, "night_use_pct": 10.0,
                       "trend_pct": 8.0},
    # Members metered: their night use is taken off; what is left wobbles less.
    "district_metered": {"min_lph": 20.0, "min_pct": 3.0, "spread_floor_pct": 1.0, "night_use_pct": 10.0,
                         "trend_pct": 6.0},
}
"""The defaults of each kind of group; a value given in the configuration or the API wins."""

SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(NightFlowSettings))


def preset_for(level: str, metered_members: bool) -> str:
    """The preset a group gets when none is configured: from whether its members are
    metered and how big it is (its registry level)."""
    if not metered_members:
        return "district_inlet"
    return "building" if level in ("house", "building", "entrance", "apartment") else "district_metered"


def resolve(preset: str, *overrides: dict[str, Any] | None) -> NightFlowSettings:
    """The settings of ``preset`` with the given values on top (later ones win; None
    values are left out). A ValueError names an unknown preset or key."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESET_NAMES)}, got {preset!r}")
    values = dict(PRESETS[preset])
    for layer in overrides:
        for key, value in (layer or {}).items():
            if key not in SETTING_NAMES:
                raise ValueError(f"unknown night-flow setting {key!r}")
            if value is not None:
                values[key] = value
    return NightFlowSettings(**values)


def _optional(tp: Any) -> Any:
    return tp | None


GroupNightFlow = dataclasses.make_dataclass(
    "GroupNightFlow",
    [("group", Annotated[str, Meta(min_length=1, description="the balance group's id; `*`: every group (a group's "
                                                            "own entry wins)")]),
     ("preset", Annotated[Preset | None, Meta(description=(
         "building, district_inlet or district_metered (default: from the group: members metered or not, "
         "and its level)"))], dataclasses.field(default=None)),
     *((name, _optional(tp), dataclasses.field(default=None))
       for name, tp in get_type_hints(NightFlowSettings, include_extras=True).items())],
    frozen=True,
    namespace={"__doc__": "The group-leak detector's night-flow settings of one group (docs/analytics.md, \"Night "
                          "flow\"): its preset and the values that differ from it (left out: the preset's). Values set "
                          "through the API (`PUT /api/v1/analytics/night-flow/{group}`) win.",
               "__module__": __name__},
)
"""A group's entry: ``group``, ``preset`` and any setting (None: the preset's)."""


def values_of(entry: Any) -> dict[str, Any]:
    """The settings an entry (``NightFlowConfig``, ``GroupNightFlow``) gives: those not None."""
    return {name: getattr(entry, name) for name in SETTING_NAMES if getattr(entry, name) is not None}


EVERY_GROUP = "*"
"""The ``group`` of an entry that applies to every group (a group's own entry wins)."""


def settings_for(entries: Sequence[Any], group_id: str, level: str, metered_members: bool,
                 stored: dict[str, Any] | None = None) -> tuple[str, NightFlowSettings]:
    """(preset, settings) of a group: its preset (set through the API, configured for
    the group, for every group, or from the group), then the values of the entry for
    every group, of the group's own entry and those set through the API, later ones
    winning."""
    every = next((e for e in entries if e.group == EVERY_GROUP), None)
    own = next((e for e in entries if e.group == group_id), None)
    stored = dict(stored or {})
    preset = (stored.pop("preset", None) or (own.preset if own is not None else None)
              or (every.preset if every is not None else None) or preset_for(level, metered_members))
    layers = [values_of(e) for e in (every, own) if e is not None]
    return preset, resolve(preset, *layers, stored)


def check_entries(entries: Sequence[Any]) -> None:
    """No group twice, and every entry's values make valid settings with every preset
    (a ValueError names the group)."""
    seen: set[str] = set()
    every = next((e for e in entries if e.group == EVERY_GROUP), None)
    for entry in entries:
        if entry.group in seen:
            raise ValueError(f"group {entry.group!r} is given twice")
        seen.add(entry.group)
        for preset in PRESET_NAMES:
            try:
                resolve(entry.preset or preset, values_of(every) if every is not None else {}, values_of(entry))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"group {entry.group!r}: {exc}") from None
