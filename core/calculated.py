"""Calculated inputs: a balance group's input as a formula over meters and tags.

Real districts with tanks are metered this way: the inflow is not one meter
but what the pumps deliver less what the tank stores, ``tag:PS1/flow -
150 * d(tag:PS1/level)/dt`` (docs/balance.md, "Calculated inputs"). A group
whose ``formula`` is set has it as its input, in the balance and in analytics
alike; the rule is written here once:

- a **meter** term is the meter's hourly consumption with its quality (an hour
  the meter was not installed in is missing);
- a **tag** term is the tag's *time-weighted mean* over the hour: samples are
  stored on change and as heartbeats (``core.tags``), so each holds until the
  next one; a plain average of samples would weigh a busy minute more than a
  quiet hour. A flow in m3/h averaged over an hour is the hour's volume in m3;
- a **rate** term ``d(tag)/dt`` is the tag's change over the hour, from its
  *last value* at each of the hour's edges, not from hourly means: the tank's
  volume change in an hour is exactly the level at its end less the level at
  its start, and these changes add up over any span to the level's whole
  change; a difference of means would smear a fill across two hours;
- quality: a term is measured, estimated or missing; the formula's hour is as
  bad as its worst term, and missing (NaN) when any term is (``core.formula``).

A stored tag sample holds for at most ``TAG_HOLD_S``: a recorder that stopped
storing (a server down) leaves a gap, not an old value carried on. A tag's
mean over an hour it covers only in part (at least ``TAG_COVER``) is
estimated; an edge whose held value is not good is estimated by interpolating
the good samples on both sides within ``TAG_HOLD_S``, else missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from balans_edge.core.formula import Formula, FormulaError, Series, parse
from balans_edge.core.model import Group, GroupInput, Quality
from balans_edge.core.times import HOUR

if TYPE_CHECKING:
    from balans_edge.core.tags import TagSource

log = logging.getLogger(__name__)

TAG_HOLD_S = HOUR
"""Longest a stored tag sample holds: above any sane heartbeat (``store_every_s``
is 60 s by default)."""
TAG_COVER = 0.5
"""Share of an hour a tag's good samples must cover for its mean to be estimated
(below it the hour is missing; all of it: measured)."""


@dataclass(frozen=True, slots=True)
class TagSeries:
    """Stored samples of one tag, oldest first."""

    ts: np.ndarray
    """(N,) int64 unix seconds, increasing."""
    value: np.ndarray
    """(N,) float64; NaN where the sample was not good (stale, comm_fail)."""

    @classmethod
    def empty(cls) -> TagSeries:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float64))

    @classmethod
    def of(cls, rows: Iterable[tuple[int, float | None]]) -> TagSeries:
        """From (ts, value or None) pairs in time order."""
        pairs = list(rows)
        return cls(np.array([t for t, _ in pairs], np.int64),
                   np.array([np.nan if v is None else v for _, v in pairs], np.float64))


class TagSamples(Protocol):
    """Where the balance and analytics read tags' samples from."""

    def known(self) -> set[str] | None:
        """Ids of the tags that are read now; None: not known (nothing is checked)."""
        ...

    async def read(self, tags: Iterable[str], t0: int, t1: int) -> dict[str, TagSeries]:
        """Samples of each tag enough to evaluate the hours [t0, t1); a tag that
        cannot be read is left out (its terms are then missing)."""
        ...


class TagSources:
    """The components that read tags now (the Modbus and OPC UA clients), offered by
    themselves: a tag client adds itself when it starts (``context.tag_sources``)
    and leaves when it stops, so nothing searches the server's components.

    The tag listing (``GET /api/v1/tags``) shows every source's tags; samples are
    read through any one of them, since every protocol's samples are in one store,
    the protocol plugins' (core does not reach it itself). ``known`` and ``read``
    make it the ``TagSamples`` of calculated inputs."""

    def __init__(self, sources: Iterable[TagSource] = ()) -> None:
        self._sources: list[TagSource] = list(sources)

    def add(self, source: TagSource) -> None:
        if source not in self._sources:
            self._sources.append(source)

    def discard(self, source: TagSource) -> None:
        if source in self._sources:
            self._sources.remove(source)

    def __iter__(self) -> Iterator[TagSource]:
        return iter(list(self._sources))

    def known(self) -> set[str]:
        return {str(row["tag"]) for source in self for row in source.tag_snapshot() if "tag" in row}

    async def read(self, tags: Iterable[str], t0: int, t1: int) -> dict[str, TagSeries]:
        source = next(iter(self), None)
        if source is None:
            return {}
        return {tag: await source.tag_series(tag, t0 - TAG_HOLD_S, t1 + TAG_HOLD_S + 1) for tag in tags}


# -- the group's side -----------------------------------------------------------------------


def formula_of(group: Group) -> Formula | None:
    """The group's parsed formula (cached by its text), None without one. A stored
    formula was checked when it was written; one that no longer parses (a later,
    stricter rule) is None too: its group's input is then missing, rather than
    the balance of every group stopping."""
    if not group.formula:
        return None
    try:
        return parse(group.formula)
    except FormulaError as exc:
        log.warning("group %s: its formula does not parse (%s); its input is missing", group.group_id, exc)
        return None


def input_meters(group: Group) -> tuple[GroupInput, ...]:
    """The meters through which the group's input is measured: its input meters,
    or the meters its formula reads, with the sign the formula gives them."""
    if not group.formula:
        return group.inputs
    formula = formula_of(group)
    if formula is None:
        return ()
    signs = formula.meter_signs()
    return tuple(GroupInput(m, signs[m]) for m in formula.meters)


def formula_problems(group: Group, meters: Mapping[str, Any], incomplete: bool, tags: set[str] | None) -> list[str]:
    """What is wrong with the group's formula against the registry's meters
    (``incomplete``: the meters could not all be read, unknown ones are not
    reported) and the tags read now (None: not checked). Each message names the
    formula's character where the problem is."""
    try:
        formula = parse(group.formula)
    except FormulaError as exc:
        return [str(exc)]
    out = []
    for term in formula.terms:
        where = f"at character {term.position} ({term}): "
        if term.kind == "meter":
            meter = meters.get(term.id)
            if term.id not in meters and not incomplete:
                out.append(f'{where}unknown meter "{term.id}"')
            elif meter is not None and meter.resource != group.resource:
                out.append(f'{where}meter "{term.id}" measures {meter.resource}, the group balances '
                           f"{group.resource}")
        elif tags is not None and term.id not in tags:
            known = ", ".join(sorted(tags)[:10]) or "none: no Modbus or OPC UA client reads tags"
            out.append(f'{where}unknown tag "{term.id}" (tags read now: {known})')
    return out


# -- hourly terms ------------------------------------------------------------------------------


def _edges(t: np.ndarray) -> np.ndarray:
    """Edges of the hours ``t`` (consecutive hour starts)."""
    t = np.asarray(t, np.int64)
    return np.r_[t, t[-1] + HOUR] if len(t) else np.zeros(0, np.int64)


def _missing(hours: int) -> Series:
    return np.full(hours, np.nan), np.full(hours, Quality.MISSING, np.int8)


def hourly_mean(series: TagSeries, t: np.ndarray) -> Series:
    """The tag's time-weighted mean over each hour of ``t`` (consecutive hour
    starts), each sample holding until the next one (at most ``TAG_HOLD_S``)."""
    hours = len(t)
    ts, v = np.asarray(series.ts, np.int64), np.asarray(series.value, np.float64)
    if not hours or not len(ts):
        return _missing(hours)
    edges = _edges(t)
    end = np.minimum(np.r_[ts[1:], np.iinfo(np.int64).max], ts + TAG_HOLD_S)
    good = ~np.isnan(v)
    level = np.where(good, v, 0.0)
    span = np.where(good, end - ts, 0).astype(np.float64)
    area_before = np.r_[0.0, np.cumsum(level * span)]
    span_before = np.r_[0.0, np.cumsum(span)]
    i = np.searchsorted(ts, edges, side="right") - 1
    j = np.maximum(i, 0)
    part = np.where(good[j], np.clip(np.minimum(edges, end[j]) - ts[j], 0, None), 0).astype(np.float64)
    area = np.where(i >= 0, area_before[j] + level[j] * part, 0.0)
    covered = np.where(i >= 0, span_before[j] + part, 0.0)
    d_area, d_cover = np.diff(area), np.diff(covered)
    with np.errstate(all="ignore"):
        mean = d_area / d_cover
    share = d_cover / HOUR
    quality = np.where(share >= 1 - 1e-9, Quality.MEASURED,
                       np.where(share >= TAG_COVER, Quality.ESTIMATED, Quality.MISSING)).astype(np.int8)
    return np.where(quality < Quality.MISSING, mean, np.nan), quality


def values_at(series: TagSeries, moments: np.ndarray) -> Series:
    """The tag's value at each moment: the last sample at or before it when good
    and held (measured), else interpolated between the good samples around it
    within ``TAG_HOLD_S`` (estimated), else missing."""
    moments = np.asarray(moments, np.int64)
    ts, v = np.asarray(series.ts, np.int64), np.asarray(series.value, np.float64)
    value, quality = _missing(len(moments))
    if not len(ts) or not len(moments):
        return value, quality
    i = np.searchsorted(ts, moments, side="right") - 1
    j = np.maximum(i, 0)
    held = (i >= 0) & ~np.isnan(v[j]) & (moments - ts[j] <= TAG_HOLD_S)
    value = np.where(held, v[j], np.nan)
    quality = np.where(held, Quality.MEASURED, Quality.MISSING).astype(np.int8)
    good = ~np.isnan(v)
    gts, gv = ts[good], v[good]
    if len(gts) >= 2:
        p = np.searchsorted(gts, moments, side="right") - 1
        pp, nn = np.clip(p, 0, len(gts) - 1), np.clip(p + 1, 0, len(gts) - 1)
        near = ((p >= 0) & (p + 1 < len(gts)) & (moments - gts[pp] <= TAG_HOLD_S)
                & (gts[nn] - moments <= TAG_HOLD_S) & ~held)
        with np.errstate(all="ignore"):  # where not ``near``, pp == nn: the weights there are never used
            w = (moments - gts[pp]) / (gts[nn] - gts[pp])
            value = np.where(near, gv[pp] + w * (gv[nn] - gv[pp]), value)
        quality = np.where(near, np.int8(Quality.ESTIMATED), quality).astype(np.int8)
    return value, quality


def hourly_change(series: TagSeries, t: np.ndarray) -> Series:
    """The tag's change over each hour of ``t``: its value at the hour's end less
    its value at the hour's start (``values_at``), as bad as the worse edge."""
    if not len(t):
        return _missing(0)
    value, quality = values_at(series, _edges(t))
    return np.diff(value), np.maximum(quality[:-1], quality[1:])


def evaluate(formula: Formula, t: np.ndarray, meters: Mapping[str, Series],
             tags: Mapping[str, TagSeries]) -> Series:
    """The formula over the hours ``t``: ``meters`` by id hold each meter's hourly
    consumption and quality, ``tags`` each tag's samples (a term not given is missing)."""
    terms: dict[Any, Series] = {}
    for term in formula.terms:
        if term.kind == "meter" and term.id in meters:
            terms[term.key] = meters[term.id]
        elif term.kind == "tag" and term.id in tags:
            terms[term.key] = hourly_mean(tags[term.id], t)
        elif term.kind == "rate" and term.id in tags:
            terms[term.key] = hourly_change(tags[term.id], t)
    return formula.evaluate(terms, len(t))


def tags_of(groups: Sequence[Group]) -> list[str]:
    """Every tag the groups' formulas read, each once."""
    out: dict[str, None] = {}
    for g in groups:
        formula = formula_of(g)
        if formula is not None:
            out.update(dict.fromkeys(formula.tags))
    return list(out)
