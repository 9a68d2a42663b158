"""A group balance period as the SCADA bridges show it (the Modbus group
block, the OPC UA period objects): every group's last complete hour and today
so far, with the HTTP API's definitions (``core.balance.points``) computed for
all groups at once with numpy. Both bridges call ``periods``, so they show the
same numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from balans_edge.core.losses import GROUP_FLAGS

DERIVED = ("input", "consumed", "imbalance", "loss_pct", "completeness", "flags")
"""The values of ``Derived``, in the order the bridges list them."""


def bits(*flags: np.ndarray | bool, names: Sequence[str], table: dict[str, int]) -> np.ndarray:
    """A flags word per row: bit ``table[name]`` set where the flag of that name is true."""
    out = np.zeros(np.broadcast(*[np.asarray(f) for f in flags]).shape, dtype=np.int64)
    for flag, name in zip(flags, names, strict=True):
        out |= np.asarray(flag, dtype=np.int64) << table[name]
    return out


@dataclass
class Derived:
    """A group balance period turned into what the bridges show (arrays of groups)."""

    input: np.ndarray
    consumed: np.ndarray
    imbalance: np.ndarray
    loss_pct: np.ndarray
    completeness: np.ndarray
    """Share of members with a value, in 1/100 %."""
    flags: np.ndarray
    """``GROUP_FLAGS`` bits."""


def derive(cols: dict[str, np.ndarray], norms: np.ndarray, resolution: np.ndarray, threshold: float,
           partial: bool = False) -> Derived:
    """The API's definitions (``core.balance.points``), for all groups at once:
    no input, imbalance or loss while an input meter is missing; flags decided
    on values rounded as the API reports them. ``partial``: the period is not
    over (today so far), as the API flags a day cut short."""
    members = cols["measured"] + cols["estimated"] + cols["missing"]
    consumed = np.round(cols["consumed"], 6)
    known = cols["input_missing"] == 0
    inp = np.where(known, np.round(cols["input"], 6), np.nan)
    imbalance = np.round(inp - consumed, 6)
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = np.where(known & (inp > 0), np.round(100.0 * imbalance / inp, 4), np.nan)
        share = np.where(members > 0, (cols["measured"] + cols["estimated"]) / np.maximum(members, 1), np.nan)
    flags = bits(
        (members > 0) & (share < threshold), ~known, cols["input_estimated"] > 0,
        np.isfinite(loss) & np.isfinite(norms) & (loss > norms), np.isfinite(imbalance) & (imbalance < -resolution),
        members == 0, partial,
        names=("incomplete", "input_missing", "input_estimated", "norm_exceeded", "negative_imbalance",
               "no_members", "partial"),
        table=GROUP_FLAGS,
    )
    return Derived(inp, consumed, imbalance, loss, np.round(share * 10000), flags)


@dataclass(frozen=True)
class Period:
    """One period of every group."""

    values: Derived
    start: int
    """Unix time the period starts (the hour's start, or local midnight)."""
    hours: int
    """Hours of the series in it (0: the period has no data yet)."""


def periods(series: Any, hour: int, today: int, norms: np.ndarray, resolution: np.ndarray,
            threshold: float) -> dict[str, Period]:
    """``last_hour`` and ``today`` of every group from a stored hourly balance
    series that covers the hour starting at ``hour`` and every hour of today (an
    hour belongs to today when it starts at or after ``today``, as in the API's
    days)."""
    n = len(norms)
    cols = {c: np.asarray(getattr(series, c), dtype=np.float64) for c in series.COLUMNS}
    last = np.flatnonzero(series.t == hour)
    in_today = series.t >= today
    last_hour = {c: (a[:, last[0]] if len(last) else np.zeros(n)) for c, a in cols.items()}
    so_far = {c: a[:, in_today].sum(axis=1) for c, a in cols.items()}
    return {
        "last_hour": Period(derive(last_hour, norms, resolution, threshold), hour, int(len(last) > 0)),
        "today": Period(derive(so_far, norms, resolution, threshold, partial=True), today, int(in_today.sum())),
    }
