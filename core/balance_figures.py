"""What a balance period shows: input, consumed, imbalance, loss % and flags.

One rule for the HTTP API and the exporters (``core.balance.points``, a
group's periods), the loss ranking (``core.losses``) and the Modbus and OPC UA
bridges (every group's last hour and today at once), so that all of them
report the same numbers and raise the same flags for the same period:

- the **input** is known when no input meter is missing and at least one is
  counted (a period in which no input meter was installed has no input: its
  sum of 0 is not a measurement), and the period has begun (``counted``);
  otherwise there is no input, imbalance or loss: the known part of the input
  would make the loss look smaller than it is;
- the **imbalance** is input minus consumed;
- the **loss %** is 100 * imbalance / input, defined only for a positive input;
- the **flags** (``BALANCE_FLAGS``) are decided on the values as reported
  (input, consumed and imbalance rounded to 6 decimals, loss % to 4), so the
  float noise of an exactly balanced group raises none.

Arrays in, arrays out: a row per group (the bridges) or per period (the API),
NaN where a value is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

BALANCE_FLAGS: dict[str, int] = {
    "incomplete": 0,
    "input_missing": 1,
    "input_estimated": 2,
    "norm_exceeded": 3,
    "negative_imbalance": 4,
    "no_members": 5,
    "partial": 6,
}
"""The bit of each flag of a balance period. The API and the exporters give the
names; the Modbus registers ``*_flags`` and the OPC UA ``Flags`` variables these
bits: a bit, once given, never changes its meaning.

- ``incomplete``: members measured or estimated for less than the completeness threshold;
- ``input_missing`` / ``input_estimated``: an input meter's hour was missing / estimated;
- ``norm_exceeded``: the loss % is above the group's ``loss_norm_pct``;
- ``negative_imbalance``: the members consumed more than came in, by more than the
  meters' resolution (a pulse per meter) explains;
- ``no_members``: no member meter was installed in a period that has begun;
- ``partial``: the period is not over, or the span asked for cuts it short."""


def flag_names(bits: int) -> list[str]:
    """The names of the flags set in ``bits``, sorted (as the API lists them)."""
    return sorted(name for name, bit in BALANCE_FLAGS.items() if bits >> bit & 1)


def flag_bits_text() -> str:
    """``0 incomplete, 1 input_missing, ...``: the bits as a device's documentation lists them."""
    return ", ".join(f"{bit} {name}" for name, bit in BALANCE_FLAGS.items())


def loss_pct(imbalance: np.ndarray | float | None, inflow: np.ndarray | float | None) -> np.ndarray:
    """100 * imbalance / input where the input (``inflow``) is positive, NaN
    elsewhere (also where either is NaN or None): a loss is a share of what came in."""
    imbalance, inflow = np.asarray(imbalance, np.float64), np.asarray(inflow, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inflow > 0, 100.0 * imbalance / inflow, np.nan)


def norm_exceeded(loss: np.ndarray | float | None, norm: np.ndarray | float | None) -> np.ndarray:
    """Whether a loss % is above the group's norm (False where either is NaN or None)."""
    loss, norm = np.asarray(loss, np.float64), np.asarray(norm, np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(loss) & np.isfinite(norm) & (loss > norm)


def none_if_nan(value: float) -> float | None:
    """None for NaN: how a value unknown in the arrays goes into JSON."""
    return None if value != value else value


@dataclass(frozen=True, slots=True)
class BalanceFigures:
    """The figures of N balance periods (NaN: unknown)."""

    input: np.ndarray
    consumed: np.ndarray
    imbalance: np.ndarray
    loss_pct: np.ndarray
    share_known: np.ndarray
    """Share of member-meter hours measured or estimated (NaN without members)."""
    flags: np.ndarray
    """int64 bits of ``BALANCE_FLAGS``."""

    @property
    def completeness(self) -> np.ndarray:
        """``share_known`` in 0.01 % (0..10000), rounded, as the bridges carry it."""
        return np.round(self.share_known * 10000)


def balance_figures(
    cols: Mapping[str, np.ndarray],
    norm: np.ndarray | float,
    resolution: np.ndarray | float,
    threshold: float,
    partial: np.ndarray | bool = False,
    counted: np.ndarray | bool = True,
) -> BalanceFigures:
    """The figures of balance periods from their summed columns (the
    ``BalanceSeries.COLUMNS`` of each period: ``input``, ``consumed`` and the
    counts of ``measured``, ``estimated``, ``missing`` member-meter hours and of
    ``input_measured``, ``input_estimated``, ``input_missing`` input-meter hours).

    ``norm``: the group's ``loss_norm_pct`` (NaN: none); ``resolution``: how far
    below zero an imbalance may be from the meters' whole pulses alone (only a
    deficit beyond it is ``negative_imbalance``); ``threshold``: the share of
    known member hours below which a period is ``incomplete``; ``partial``: the
    period is not over or cut short; ``counted``: the period has begun (one in
    which no hour is over yet has no input and is not flagged ``no_members``).
    All broadcast against the columns.
    """
    measured, estimated, missing = (np.asarray(cols[c], np.float64) for c in ("measured", "estimated", "missing"))
    input_missing = np.asarray(cols["input_missing"])
    input_estimated = np.asarray(cols["input_estimated"])
    members = measured + estimated + missing
    consumed = np.round(np.asarray(cols["consumed"], np.float64), 6)
    known = (input_missing == 0) & (np.asarray(cols["input_measured"]) + input_estimated > 0) & counted
    inp = np.where(known, np.round(np.asarray(cols["input"], np.float64), 6), np.nan)
    imbalance = np.round(inp - consumed, 6)
    loss = np.round(loss_pct(imbalance, inp), 4)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(members > 0, (measured + estimated) / np.maximum(members, 1), np.nan)
        conditions = {
            "incomplete": (members > 0) & (share < threshold),
            "input_missing": input_missing > 0,
            "input_estimated": input_estimated > 0,
            "norm_exceeded": norm_exceeded(loss, norm),
            "negative_imbalance": np.isfinite(imbalance) & (imbalance < -np.asarray(resolution, np.float64)),
            "no_members": (members == 0) & counted,
            "partial": partial,
        }
    flags = np.zeros(np.broadcast(*[np.asarray(c) for c in conditions.values()]).shape, np.int64)
    for name, on in conditions.items():
        flags |= np.asarray(on, np.int64) << BALANCE_FLAGS[name]
    return BalanceFigures(inp, consumed, imbalance, loss, share, flags)
