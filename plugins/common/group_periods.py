"""A group balance period as the SCADA bridges show it (the Modbus group
block, the OPC UA period objects): every group's last complete hour and today
so far, with the HTTP API's definitions, computed for
all groups at once (``core.balance_figures``). Both bridges call ``periods``,
so they show the same numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from balans_edge.core.balance_figures import BalanceFigures, balance_figures

DERIVED = ("input", "consumed", "imbalance", "loss_pct", "completeness", "flags")
"""The figures of a period (``core.balance_figures.BalanceFigures``), in the order the bridges list them."""


def bits(*flags: np.ndarray | bool, names: Sequence[str], table: dict[str, int]) -> np.ndarray:
    """A flags word per row: bit ``table[name]`` set where the flag of that name is true."""
    out = np.zeros(np.broadcast(*[np.asarray(f) for f in flags]).shape, dtype=np.int64)
    for flag, name in zip(flags, names, strict=True):
        out |= np.asarray(flag, dtype=np.int64) << table[name]
    return out


@dataclass(frozen=True)
class Period:
    """One period of every group."""

    values: BalanceFigures
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
        "last_hour": Period(balance_figures(last_hour, norms, resolution, threshold, counted=len(last) > 0), hour,
                            int(len(last) > 0)),
        "today": Period(balance_figures(so_far, norms, resolution, threshold, partial=True,
                                        counted=bool(in_today.any())), today, int(in_today.sum())),
    }
