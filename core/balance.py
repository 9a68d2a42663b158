"""Hourly balance of balance groups: input, consumed, imbalance and completeness.

A group's input is the signed sum of its input meters, or its formula's value
(a calculated input, ``core.calculated``); what it consumed is the
sum of its member meters plus the inputs of its member groups (a child group
appears in its parent with what flowed into it, just as a meter does). The
imbalance, input minus consumed, is the group's loss. Only direct members are
summed: a child group's own members are already behind its input meters.

``BalanceTree.compile`` turns the registry's groups into index arrays once;
``compute`` then evaluates every group for every hour with whole-array numpy,
``aggregate`` sums hours into local days or months and ``points`` renders one
group's periods for the API. Nothing here touches storage or the web layer.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np

from balans_edge.core.balance_figures import balance_figures, flag_names, none_if_nan
from balans_edge.core.calculated import TagSeries, formula_of
from balans_edge.core.calculated import evaluate as calculated_input
from balans_edge.core.calendar import local_starts
from balans_edge.core.formula import Formula
from balans_edge.core.model import Group, Meter, Quality
from balans_edge.core.periods import MeterPeriod
from balans_edge.core.times import HOUR, hour_floor, iso

BLOCK_ROWS = 256
"""Meter rows processed at once: a block of a month's hours (1.5 MB of float64)
stays in the CPU cache while it is cleaned, summed and counted. A group's
member list longer than this is cut into pieces of at most BLOCK_ROWS rows."""
HOURS_BLOCK = 768
"""Hours processed at once (a month fits in one block)."""
_BITS = 10
"""Width of each count field in the packed uint32 words."""
_FIELD_MAX = (1 << _BITS) - 1
"""Most rows one packed sum may count: BLOCK_ROWS member rows, or a group's input meters."""


@dataclass(frozen=True, slots=True)
class Scatter:
    """Adds source rows into target rows, several sources possibly per target.

    Sources are split by rank (the first source of each target, the second,
    ...), so that within a rank the targets are unique and a plain fancy-index
    ``out[t] += src[s]`` is correct. Measured on (6,000 x 744) arrays this is
    about 10x faster than ``np.add.at`` and than ``np.add.reduceat`` along
    axis 0, whose inner loop strides across rows. The number of ranks is the
    largest fan-in (inputs per group, member groups per parent), usually a
    handful; a parent of thousands of groups costs thousands of small steps.
    """

    ranks: tuple[tuple[np.ndarray, np.ndarray], ...]
    """(source rows, target rows) per rank."""
    identity: bool
    """Source row i goes to target row i and nowhere else: ``sum`` returns the source."""

    @classmethod
    def build(cls, targets: np.ndarray, sources: np.ndarray | None = None) -> Scatter:
        """``targets[i]``: output row of source row ``sources[i]`` (default ``i``)."""
        targets = np.asarray(targets, np.int64)
        sources = np.arange(len(targets)) if sources is None else np.asarray(sources, np.int64)
        order = np.argsort(targets, kind="stable")
        sorted_t = targets[order]
        run_start = np.flatnonzero(np.r_[True, sorted_t[1:] != sorted_t[:-1]]) if len(targets) else np.zeros(0, int)
        lengths = np.diff(np.r_[run_start, len(targets)])
        rank = np.arange(len(targets)) - np.repeat(run_start, lengths)
        ranks = []
        for r in range(int(lengths.max()) if len(lengths) else 0):
            i = order[rank == r]
            ranks.append((sources[i], targets[i]))
        identity = np.array_equal(targets, np.arange(len(targets))) and np.array_equal(sources, targets)
        return cls(tuple(ranks), bool(identity))

    def add_into(self, out: np.ndarray, src: np.ndarray) -> None:
        for rows, targets in self.ranks:
            out[targets] += src[rows]

    def sum(self, src: np.ndarray, n_out: int, dtype: type) -> np.ndarray:
        """(n_out, ...) sums; target rows without sources are 0."""
        if self.identity and len(src) == n_out:
            return src.astype(dtype, copy=False)
        out = np.zeros((n_out, *src.shape[1:]), dtype=dtype)
        for i, (rows, targets) in enumerate(self.ranks):
            if i == 0:
                out[targets] = src[rows]
            else:
                out[targets] += src[rows]
        return out


@dataclass(frozen=True, slots=True)
class Blocks:
    """Member-meter rows cut into blocks of equal-length pieces.

    Each group's direct member meters are contiguous rows cut into pieces of
    at most BLOCK_ROWS rows, and the pieces are ordered by length. A block is
    a run of ``count`` pieces of the same ``length``: its rows reshape to
    (count, length, hours) and one ``np.add.reduce`` over axis 1 sums every
    piece, a single sequential pass over the rows. (``np.add.reduceat`` would
    do it in one call for pieces of any length, but along axis 0 it was
    measured 3-5x slower: its inner loop walks down columns.)
    """

    row: np.ndarray
    """First meter row of each block."""
    count: np.ndarray
    length: np.ndarray
    piece: np.ndarray
    """Index of the block's first piece."""
    piece_group: np.ndarray
    """Group row of each piece."""

    @classmethod
    def build(cls, piece_length: np.ndarray, piece_group: np.ndarray) -> Blocks:
        """Blocks for pieces already in row order (sorted by length)."""
        row, count, length, piece = [], [], [], []
        first_row = np.cumsum(piece_length) - piece_length
        bounds = np.flatnonzero(np.r_[True, piece_length[1:] != piece_length[:-1], True]) if len(piece_length) else [0]
        for a, b in itertools.pairwise(bounds):  # one run per distinct length
            per_block = max(1, BLOCK_ROWS // int(piece_length[a]))
            for p in range(int(a), int(b), per_block):
                row.append(int(first_row[p]))
                count.append(min(per_block, int(b) - p))
                length.append(int(piece_length[a]))
                piece.append(p)
        as_array = (np.array(x, dtype=np.int64) for x in (row, count, length, piece))
        return cls(*as_array, np.asarray(piece_group, np.int64))


def _pieces(member_group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut each group's run of members (``member_group`` sorted) into pieces of at
    most BLOCK_ROWS rows; return (row order of the members, piece lengths, piece groups)
    with the pieces ordered by length, then group."""
    n = len(member_group)
    run_start = np.flatnonzero(np.r_[True, member_group[1:] != member_group[:-1]]) if n else np.zeros(0, np.int64)
    run_len = np.diff(np.r_[run_start, n])
    per_run = -(-run_len // BLOCK_ROWS)
    run_of_piece = np.repeat(np.arange(len(run_len)), per_run)
    k = np.arange(len(run_of_piece)) - np.repeat(np.cumsum(per_run) - per_run, per_run)
    start = run_start[run_of_piece] + k * BLOCK_ROWS
    length = np.minimum(BLOCK_ROWS, run_len[run_of_piece] - k * BLOCK_ROWS)
    group = member_group[start] if n else np.zeros(0, np.int64)
    order = np.lexsort((group, length))
    start, length, group = start[order], length[order], group[order]
    rows = np.repeat(start - (np.cumsum(length) - length), length) + np.arange(int(length.sum()))
    return rows.astype(np.int64), length.astype(np.int64), group.astype(np.int64)


def _as_slice(rows: np.ndarray) -> np.ndarray | slice:
    if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        return slice(int(rows[0]), int(rows[0]) + len(rows))
    return rows


@dataclass(slots=True)
class BalanceTree:
    """Groups compiled into index arrays for ``compute``.

    Meter rows are ordered so that each group's direct member meters are
    contiguous: member sums are then reductions over consecutive rows (see
    ``Blocks``), one sequential pass over the values near the memory-bandwidth
    floor, where a sparse member-by-meter product would gather through an
    index per element (and scipy is not a dependency). Input meters that are
    members of no group come last; input meters are gathered by index (a few
    per group). Member groups' inputs are added with a ``Scatter`` over
    groups: a group-sized operation, small next to the meters.
    """

    group_ids: list[str]
    """Row order of the results (the order the groups were given in)."""
    meter_keys: np.ndarray
    """Storage keys (int64) in the row order the values must be given in."""
    meter_ids: list[str]
    member_rows: int
    """Rows [0, member_rows) are member meters; the rest are input meters only."""
    blocks: Blocks
    pieces: Scatter
    """Pieces of member rows into their groups."""
    input_rows: np.ndarray | slice
    """Meter row of each input (a slice when they are consecutive rows: a view, not a copy)."""
    input_sign: np.ndarray
    """Sign (+1.0 or -1.0) of each input, aligned with ``input_rows``."""
    inputs: Scatter
    """Inputs into their groups."""
    children: Scatter
    """Member groups' rows into their parents' rows."""

    row_from: np.ndarray
    """Per meter row, the first hour (unix, hour-aligned) it counts in its group."""
    row_until: np.ndarray
    """Per meter row, the hour it stops counting in its group (a member row of a
    meter that moved to another group; input rows count always)."""
    calculated: tuple[CalculatedInput, ...] = ()
    """The groups whose input is a formula (``core.calculated``)."""

    @property
    def tags(self) -> list[str]:
        """Every tag the calculated inputs read, each once."""
        return list(dict.fromkeys(tag for c in self.calculated if c.formula is not None for tag in c.formula.tags))

    @classmethod
    def compile(cls, groups: Sequence[Group], meters: Sequence[tuple[int, Meter]],
                periods: Mapping[int, Sequence[MeterPeriod]] | None = None) -> BalanceTree:
        """Index arrays for ``groups`` (assumed valid: no cycles, inputs present,
        no meter twice); meters that no group refers to are left out.

        With the meters' ``periods``, a meter that moved between groups has one
        member row per stretch of time in a group: it counts in the old group for
        the hours before the move and in the new one from the hour of the move
        on (``row_from`` / ``row_until``), so past balances stay as they were."""
        group_ids = [g.group_id for g in groups]
        row_of_group = {gid: i for i, gid in enumerate(group_ids)}
        stays = [(row_of_group[g], m.meter_id, lo, hi, key)
                 for key, m in meters for g, lo, hi in _memberships(m, (periods or {}).get(key))
                 if g in row_of_group]
        members = sorted(stays)
        order, piece_length, piece_group = _pieces(np.array([s[0] for s in members], dtype=np.int64))
        member_rows = [members[i] for i in order.tolist()]
        # Input meters in order of use, so that one input per group is a plain slice of rows.
        # An input meter is read from its member row only when that row counts at all times.
        whole = {s[1]: i for i, s in enumerate(member_rows) if s[2] == _ALWAYS[0] and s[3] == _ALWAYS[1]}
        key_of = {m.meter_id: key for key, m in meters}
        formulas = {g.group_id: f for g in groups if (f := formula_of(g)) is not None}
        read = [i.meter_id for g in groups for i in g.inputs] + [m for f in formulas.values() for m in f.meters]
        input_only = [m for m in dict.fromkeys(read) if m not in whole and m in key_of]
        row_of_input = whole | {mid: len(member_rows) + i for i, mid in enumerate(input_only)}
        flat_inputs = [(row_of_group[g.group_id], row_of_input[i.meter_id], i.sign) for g in groups for i in g.inputs]
        child_pairs = [(row_of_group[g.parent_id], i) for i, g in enumerate(groups) if g.parent_id in row_of_group]
        inputs = Scatter.build(np.array([g for g, _, _ in flat_inputs], dtype=np.int64))
        if len(inputs.ranks) > _FIELD_MAX:
            raise ValueError(f"a group has more than {_FIELD_MAX} input meters")
        input_rows = np.array([r for _, r, _ in flat_inputs], dtype=np.int64)
        spans = [(s[2], s[3]) for s in member_rows] + [_ALWAYS] * len(input_only)
        calculated = tuple(
            CalculatedInput(row_of_group[g.group_id], formulas.get(g.group_id),
                            {m: row_of_input[m] for m in _formula_meters(formulas, g) if m in row_of_input})
            for g in groups if g.formula)
        return cls(
            group_ids=group_ids,
            meter_keys=np.array([s[4] for s in member_rows] + [key_of[mid] for mid in input_only], dtype=np.int64),
            meter_ids=[s[1] for s in member_rows] + input_only,
            member_rows=len(member_rows),
            blocks=Blocks.build(piece_length, piece_group),
            pieces=Scatter.build(piece_group),
            input_rows=_as_slice(input_rows),
            input_sign=np.array([s for _, _, s in flat_inputs], dtype=np.float64),
            inputs=inputs,
            children=Scatter.build(
                np.array([p for p, _ in child_pairs], dtype=np.int64), np.array([c for _, c in child_pairs], np.int64)
            ),
            row_from=np.array([lo for lo, _ in spans], dtype=np.int64).reshape(-1),
            row_until=np.array([hi for _, hi in spans], dtype=np.int64).reshape(-1),
            calculated=calculated,
        )


_ALWAYS = (-(2**62), 2**62)


def _formula_meters(formulas: Mapping[str, Formula], group: Group) -> tuple[str, ...]:
    formula = formulas.get(group.group_id)
    return formula.meters if formula is not None else ()


@dataclass(frozen=True, slots=True)
class CalculatedInput:
    """A group whose input is its formula: its row, the formula (None: a stored
    formula that no longer parses, whose input is missing) and the meter row of
    each meter the formula reads."""

    group_row: int
    formula: Formula | None
    meter_rows: dict[str, int]

    def evaluate(self, t: np.ndarray, values: np.ndarray, quality: np.ndarray,
                 tags: Mapping[str, TagSeries]) -> tuple[np.ndarray, np.ndarray]:
        """(values, quality codes) of the input over the hours ``t``; quality ABSENT
        where the formula reads only meters and none of them was installed (the
        group had no input then, as a group of input meters has none)."""
        if self.formula is None:
            return np.full(len(t), np.nan), np.full(len(t), Quality.MISSING, np.int8)
        meters = {m: (values[r], quality[r]) for m, r in self.meter_rows.items()}
        value, code = calculated_input(self.formula, t, meters, tags)
        if self.formula.meters and not self.formula.tags and len(self.meter_rows) == len(self.formula.meters):
            absent = np.all(np.stack([quality[r] for r in self.meter_rows.values()]) == Quality.ABSENT, axis=0)
            code = np.where(absent, np.int8(Quality.ABSENT), code)
        return value, code


def _memberships(meter: Meter, periods: Sequence[MeterPeriod] | None) -> list[tuple[str | None, int, int]]:
    """(group, first hour, hour it ends) of each stretch of the meter's time in one
    group; a change counts from the hour it falls in."""
    if not periods:
        return [(meter.group_id, *_ALWAYS)]
    out: list[tuple[str | None, int, int]] = []
    for p in sorted(periods, key=lambda p: p.valid_from):
        if out and out[-1][0] == p.group_id:
            continue
        start = hour_floor(p.valid_from)
        if out:
            out[-1] = (out[-1][0], out[-1][1], start)
        out.append((p.group_id, start if out else _ALWAYS[0], _ALWAYS[1]))
    return out


@dataclass(slots=True)
class BalanceSeries:
    """Balance of groups (rows) over periods (columns).

    Volumes are in each group's unit. Counts are of meters: ``measured`` +
    ``estimated`` + ``missing`` is the number of member meters active in the
    period (a member group counts with its input meters); the ``input_*``
    counts are of the group's own input meters. Summing a series over periods
    (days, months) sums the counts too, so shares stay exact.
    """

    group_ids: list[str]
    t: np.ndarray
    """Start of each period (unix UTC), shape (P,)."""
    input: np.ndarray
    """Signed sum of the input meters' values that exist (G, P)."""
    consumed: np.ndarray
    """Sum of the members' values that exist (G, P)."""
    measured: np.ndarray
    estimated: np.ndarray
    missing: np.ndarray
    input_measured: np.ndarray
    input_estimated: np.ndarray
    input_missing: np.ndarray

    COLUMNS = (
        "input",
        "consumed",
        "measured",
        "estimated",
        "missing",
        "input_measured",
        "input_estimated",
        "input_missing",
    )
    """The (G, P) arrays, all summed when periods are merged."""

    def input_known(self) -> np.ndarray:
        """(G, P): no input meter missing and at least one counted. A period in which
        no input meter was installed has no input: its sum of 0 is not a measurement."""
        return (self.input_missing == 0) & (self.input_measured + self.input_estimated > 0)


def _unpack(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of measured, estimated and missing from sums of packed words."""
    mask = np.uint32(_FIELD_MAX)
    return packed & mask, (packed >> np.uint32(_BITS)) & mask, (packed >> np.uint32(2 * _BITS)) & mask


def _pack(codes: np.ndarray, out: np.ndarray) -> None:
    """``out`` = 1 << (bits * code): summing the words counts all qualities in one
    pass instead of three comparisons and three sums. ABSENT lands in the top
    field, which wraps harmlessly and is never read."""
    np.multiply(codes, _BITS, out=out, casting="unsafe")
    np.left_shift(out.dtype.type(1), out, out=out)


def _effective_codes(nan: np.ndarray, quality: np.ndarray, out: np.ndarray) -> None:
    """Quality codes with a NaN value of a measured or estimated hour turned into
    missing: a value that is not there cannot be counted as known."""
    np.multiply(nan.view(np.int8), np.int8(Quality.MISSING), out=out)
    np.maximum(out, quality, out=out)


@dataclass(slots=True)
class _Scratch:
    """Flat buffers reused by every block, so the hot loop allocates nothing."""

    clean: np.ndarray
    nan: np.ndarray
    codes: np.ndarray
    words: np.ndarray

    @classmethod
    def new(cls, cells: int) -> _Scratch:
        return cls(np.empty(cells), np.empty(cells, bool), np.empty(cells, np.int8), np.empty(cells, np.uint32))

    def view(self, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
        n = shape[0] * shape[1]
        return tuple(a[:n].reshape(shape) for a in (self.clean, self.nan, self.codes, self.words))


def _member_pieces(tree: BalanceTree, values: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per piece of member rows: sum of the values that exist, and packed counts.

    Hand-written blocking rather than one expression over the whole matrix:
    cleaning the NaNs of a block while it is in the cache, then summing it and
    counting its codes right away reads the values once from memory instead of
    writing and re-reading whole-matrix temporaries (measured 4x faster at
    100,000 meters). One thread: two threads on a 2-core machine were not
    reliably faster, the pass being bound by memory.
    """
    b, hours = tree.blocks, values.shape[1]
    npieces = len(b.piece_group)
    sums = np.zeros((npieces, hours))
    packed = np.zeros((npieces, hours), np.uint32)
    if not npieces or not hours:
        return sums, packed
    cells = int((b.count * b.length).max()) * min(hours, HOURS_BLOCK)
    columns = (b.row.tolist(), b.count.tolist(), b.length.tolist(), b.piece.tolist())
    jobs = [
        (row, count, length, piece, c0, min(c0 + HOURS_BLOCK, hours))
        for c0 in range(0, hours, HOURS_BLOCK)
        for row, count, length, piece in zip(*columns, strict=True)
    ]

    scratch = _Scratch.new(cells)
    for row, count, length, piece, c0, c1 in jobs:
        n, width = count * length, c1 - c0
        clean, nan, codes, words = scratch.view((n, width))
        x = values[row : row + n, c0:c1]
        np.isnan(x, out=nan)
        np.copyto(clean, x)
        np.copyto(clean, 0.0, where=nan)
        np.add.reduce(clean.reshape(count, length, width), axis=1, out=sums[piece : piece + count, c0:c1])
        _effective_codes(nan, quality[row : row + n, c0:c1], codes)
        _pack(codes, words)
        np.add.reduce(words.reshape(count, length, width), axis=1, out=packed[piece : piece + count, c0:c1])
    return sums, packed


def _inputs(tree: BalanceTree, values: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, ...]:
    """Signed input of every group and the counts of its input meters by quality."""
    g = len(tree.group_ids)
    x = values[tree.input_rows]
    nan = np.isnan(x)
    signed = np.where(nan, 0.0, x) * tree.input_sign[:, None]
    codes = np.empty(x.shape, np.int8)
    _effective_codes(nan, quality[tree.input_rows], codes)
    words = np.empty(x.shape, np.uint32)
    _pack(codes, words)
    counts = (c.astype(np.int64) for c in _unpack(tree.inputs.sum(words, g, np.uint32)))
    return tree.inputs.sum(signed, g, np.float64), *counts


def compute(tree: BalanceTree, t: np.ndarray, values: np.ndarray, quality: np.ndarray,
            tags: Mapping[str, TagSeries] | None = None) -> BalanceSeries:
    """Balance of every group for every hour.

    ``values`` (float64, NaN where missing) and ``quality`` (int8 ``Quality``
    codes; ``ABSENT`` where the meter was not installed: no member then) are
    (meters x hours) with rows in ``tree.meter_keys`` order; ``t`` holds the
    hour starts. Missing values are left out of the sums and counted as missing
    (a NaN value counts as missing whatever its code). Counts are int64.

    A group with a formula (``tree.calculated``) has the formula's value as its
    input, evaluated from the meter rows and the ``tags``' samples (a tag not
    given is missing), and counts as one input of the formula's quality.
    """
    values = np.asarray(values, dtype=np.float64)
    quality = np.asarray(quality, dtype=np.int8)
    if values.shape != (len(tree.meter_keys), len(t)) or quality.shape != values.shape:
        expected = (len(tree.meter_keys), len(t))
        raise ValueError(f"values {values.shape} and quality {quality.shape} must be (meters, hours) = {expected}")
    g = len(tree.group_ids)
    sums, packed = _member_pieces(tree, values, quality)
    consumed = tree.pieces.sum(sums, g, np.float64)
    measured, estimated, missing = (tree.pieces.sum(c, g, np.int64) for c in _unpack(packed))
    inp, *input_counts = _inputs(tree, values, quality)
    for calculated in tree.calculated:
        value, code = calculated.evaluate(np.asarray(t, np.int64), values, quality, tags or {})
        row = calculated.group_row
        inp[row] = np.where(np.isnan(value), 0.0, value)
        for count, wanted in zip(input_counts, (Quality.MEASURED, Quality.ESTIMATED, Quality.MISSING), strict=True):
            count[row] = code == wanted
    # A member group counts in its parent with its input and its input meters.
    for total, own in zip((consumed, measured, estimated, missing), (inp, *input_counts), strict=True):
        tree.children.add_into(total, own)
    t = np.asarray(t, np.int64)
    return BalanceSeries(list(tree.group_ids), t, inp, consumed, measured, estimated, missing, *input_counts)


def aggregate(series: BalanceSeries, step: Literal["hour", "day", "month"], tz: ZoneInfo) -> BalanceSeries:
    """Sum hours into local days or months of the site's timezone (every column,
    counts included, so completeness shares of a day are exact)."""
    if step == "hour":
        return series
    if step not in ("day", "month"):
        raise ValueError(f"unknown step {step!r}")
    order = np.argsort(series.t, kind="stable")
    t = series.t[order]
    columns = {name: getattr(series, name)[:, order] for name in BalanceSeries.COLUMNS}
    if not len(t):
        return BalanceSeries(list(series.group_ids), t, **columns)
    bounds = local_starts(int(t[0]), int(t[-1]) + HOUR, step, tz)
    period = np.searchsorted(bounds, t, side="right") - 1
    first = np.flatnonzero(np.r_[True, period[1:] != period[:-1]])
    summed = {name: np.add.reduceat(col, first, axis=1) for name, col in columns.items()}
    return BalanceSeries(list(series.group_ids), bounds[period[first]], **summed)


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much of each period a series holds: its hours that are over and inside
    the span asked for, against the period's whole length (hours)."""

    hours: np.ndarray
    length: np.ndarray

    @property
    def partial(self) -> np.ndarray:
        """Periods cut short by the span asked for, still running, or not begun."""
        return self.hours < self.length


def points(series: BalanceSeries, row: int, group: Group, threshold: float,
           resolution: float = 0.0, coverage: Coverage | None = None) -> list[dict[str, Any]]:
    """JSON-ready periods of one group (row ``row`` of ``series``).

    ``resolution`` is how far below zero an imbalance may be from the meters'
    whole pulses alone (a pulse per meter, whatever the period's length, since
    counters are cumulative); only a deficit beyond it is flagged
    ``negative_imbalance``.

    Input, imbalance, loss % and flags are ``core.balance_figures``'s rule.
    With a ``coverage`` a period is flagged ``partial`` when the series holds
    only part of it, and one with no hour counted at all (not begun) has no
    input and no other flag.
    """
    cols = {name: getattr(series, name)[row] for name in BalanceSeries.COLUMNS}
    norm = np.nan if group.loss_norm_pct is None else group.loss_norm_pct
    partial = coverage.partial if coverage is not None else False
    counted = coverage.hours > 0 if coverage is not None else True
    f = balance_figures(cols, norm, resolution, threshold, partial, counted)
    rows = zip(series.t.tolist(), f.input.tolist(), f.consumed.tolist(), f.imbalance.tolist(), f.loss_pct.tolist(),
               cols["measured"].tolist(), cols["estimated"].tolist(), cols["missing"].tolist(), f.flags.tolist(),
               strict=True)
    out = []
    for t, inp, consumed, imbalance, loss, m, e, x, flags in rows:
        members = m + e + x
        out.append(
            {
                "t": iso(t),
                "input": none_if_nan(inp),
                "consumed": consumed,
                "imbalance": none_if_nan(imbalance),
                "loss_pct": none_if_nan(loss),
                "completeness": {
                    "measured": round(m / members, 4) if members else 0.0,
                    "estimated": round(e / members, 4) if members else 0.0,
                    "missing": round(x / members, 4) if members else 0.0,
                },
                "flags": flag_names(flags),
            }
        )
    return out
