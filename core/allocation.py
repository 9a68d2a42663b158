"""Monthly allocation of a house's imbalance to its accounts (ОДН).

A house's imbalance (what entered through its input meters minus what its
accounts' meters recorded) is common-property consumption: stairwell cleaning,
leaks in shared pipes, meters that under-read. The rules let the utility put a
share of it on the accounts, in proportion to their consumption, to their
floor area or equally, but never more than the configured norm per m2; what
the norm does not let through stays with the utility as its loss.

Everything here is a pure function of one group's month: the caller sums the
month's volumes (``core.balance``) and passes them in, so the rules can be
tested and explained without storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from balans_edge.core.model import ALLOCATION_RULES, Group

INCOMPLETE_THRESHOLD = 0.95
"""Share of known member-meter hours below which the month is flagged incomplete."""


@dataclass(frozen=True, slots=True)
class AccountUse:
    """One account's part of a group in a month: its meters' volume and floor area."""

    account_id: str
    consumer: str
    area_m2: float | None
    consumed: float


@dataclass(frozen=True, slots=True)
class AllocationLine:
    """What one account is charged: its share of the imbalance, cut at its cap."""

    account_id: str
    consumer: str
    consumed: float
    area_m2: float | None
    share: float
    """Fraction of the imbalance the rule assigns to the account (shares sum to 1)."""
    cap: float | None
    """Most the norm lets the account take (volume); None without a norm."""
    allocated: float
    amount: float | None
    """``allocated`` x the group's price; None without a price."""

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "consumer": self.consumer,
            "consumed": _vol(self.consumed),
            "area_m2": _vol(self.area_m2),
            "share": _vol(self.share),
            "cap": _vol(self.cap),
            "allocated": _vol(self.allocated),
            "amount": _money(self.amount),
        }


@dataclass(frozen=True, slots=True)
class AllocationReport:
    """A group's month: the imbalance, who takes how much of it and what the utility keeps.

    ``utility_loss`` is ``imbalance - allocated``; the ``*_if_fixed`` fields are
    the same allocation run on the imbalance reduced by ``fixable`` (the volume
    the top findings would recover), so the report shows what fixing them is worth
    to the accounts and to the utility.
    """

    group_id: str
    month: str
    unit: str
    rule: str
    """The configured rule."""
    applied_rule: str
    """The rule actually used: "equal" when the configured basis was unusable."""
    input: float | None
    consumed: float
    imbalance: float | None
    allocated: float
    utility_loss: float | None
    price: float | None
    lines: list[AllocationLine]
    fixable: float
    imbalance_if_fixed: float | None
    allocated_if_fixed: float
    utility_loss_if_fixed: float | None
    completeness: float
    flags: list[str]
    missing_area: list[str]
    """Accounts without a floor area where one was needed (rule "area" or a norm)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "month": self.month,
            "unit": self.unit,
            "rule": self.rule,
            "applied_rule": self.applied_rule,
            "input": _vol(self.input),
            "consumed": _vol(self.consumed),
            "imbalance": _vol(self.imbalance),
            "allocated": _vol(self.allocated),
            "utility_loss": _vol(self.utility_loss),
            "price": self.price,
            "amount": _money(None if self.price is None else self.allocated * self.price),
            "utility_loss_amount": _money(_times(self.utility_loss, self.price)),
            "lines": [line.to_json() for line in self.lines],
            "fixable": _vol(self.fixable),
            "imbalance_if_fixed": _vol(self.imbalance_if_fixed),
            "allocated_if_fixed": _vol(self.allocated_if_fixed),
            "utility_loss_if_fixed": _vol(self.utility_loss_if_fixed),
            "completeness": round(self.completeness, 4),
            "flags": list(self.flags),
            "missing_area": list(self.missing_area),
        }


def _vol(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _money(x: float | None) -> float | None:
    return None if x is None else round(float(x), 2)


def _times(x: float | None, price: float | None) -> float | None:
    return None if x is None or price is None else x * price


def _has_area(account: AccountUse) -> bool:
    """An area of zero or below is as unusable as none: it cannot carry a share or a cap."""
    return account.area_m2 is not None and account.area_m2 > 0


def _areas(accounts: Sequence[AccountUse]) -> np.ndarray:
    """Floor areas, NaN where unknown."""
    return np.array([a.area_m2 if _has_area(a) else np.nan for a in accounts], dtype=np.float64)


def _basis(rule: str, accounts: Sequence[AccountUse]) -> tuple[np.ndarray, str]:
    """Weights of the accounts under ``rule`` and the rule actually applied.

    Negative consumption (a meter running backwards) weighs 0: it cannot earn an
    account a refund out of the common imbalance. When the weights sum to 0
    (nobody consumed, no area known) the only fair basis left is equal shares.
    """
    n = len(accounts)
    if rule == "consumption":
        basis = np.clip(np.array([a.consumed for a in accounts], dtype=np.float64), 0.0, None)
    elif rule == "area":
        basis = np.nan_to_num(_areas(accounts), nan=0.0)
    else:
        basis = np.ones(n)
    if n and not basis.sum() > 0:
        return np.ones(n), "equal"
    return basis, rule


def _shares(basis: np.ndarray) -> np.ndarray:
    total = basis.sum()
    return basis / total if total > 0 else np.zeros_like(basis)


def _caps(norm: float | None, accounts: Sequence[AccountUse]) -> np.ndarray | None:
    """Most each account may take under the norm (units per m2 of its floor area).

    An account without a known area gets the norm times the mean area of the
    accounts that have one: a typical flat's cap, rather than 0 (which would
    silently exempt it) or no cap (which would let it take any amount). When no
    account has an area the norm cannot be applied to anyone and every cap is 0:
    nothing is charged that the norm cannot justify.
    """
    if norm is None:
        return None
    areas = _areas(accounts)
    known = ~np.isnan(areas)
    fill = norm * float(areas[known].mean()) if known.any() else 0.0
    return np.where(known, norm * np.nan_to_num(areas, nan=0.0), fill)


def _distribute(shares: np.ndarray, caps: np.ndarray | None, imbalance: float | None) -> np.ndarray:
    """Each account's part of a positive imbalance, cut at its cap.

    What a cap cuts off is not passed on to the other accounts: the norm protects
    each consumer from paying for more than a normal common-property use, and
    moving the excess to the neighbours would charge them beyond it in turn; the
    excess is the utility's loss to find and fix.
    """
    if imbalance is None or imbalance <= 0:
        return np.zeros_like(shares)
    raw = shares * imbalance
    return raw if caps is None else np.minimum(raw, caps)


def _loss(imbalance: float | None, allocated: float) -> float | None:
    """Imbalance left to the utility; float noise of a fully allocated imbalance is 0."""
    if imbalance is None:
        return None
    if imbalance <= 0:
        return imbalance
    return max(imbalance - allocated, 0.0)


def _flags(
    group: Group,
    accounts: Sequence[AccountUse],
    input: float | None,
    imbalance: float | None,
    applied_rule: str,
    capped: bool,
    incomplete: bool,
) -> tuple[list[str], list[str]]:
    """Flags of the report and the accounts missing an area where one was needed."""
    needs_area = group.allocation_rule == "area" or group.odn_norm is not None
    missing = [a.account_id for a in accounts if not _has_area(a)] if needs_area else []
    conditions = {
        "input_missing": input is None,
        "negative_imbalance": imbalance is not None and imbalance < 0,
        "missing_area": bool(missing),
        "fallback_equal": applied_rule != group.allocation_rule,
        "no_accounts": not accounts,
        "capped": capped,
        "incomplete": incomplete,
    }
    return sorted(name for name, on in conditions.items() if on), missing


def _lines(
    accounts: Sequence[AccountUse],
    shares: np.ndarray,
    caps: np.ndarray | None,
    allocated: np.ndarray,
    price: float | None,
) -> list[AllocationLine]:
    cap_list: list[float | None] = [None] * len(accounts) if caps is None else caps.tolist()
    return [
        AllocationLine(
            account_id=a.account_id,
            consumer=a.consumer,
            consumed=a.consumed,
            area_m2=a.area_m2,
            share=share,
            cap=cap,
            allocated=part,
            amount=_times(part, price),
        )
        for a, share, cap, part in zip(accounts, shares.tolist(), cap_list, allocated.tolist(), strict=True)
    ]


def allocate(
    group: Group,
    month: str,
    input: float | None,
    consumed: float,
    accounts: Sequence[AccountUse],
    fixable: float = 0.0,
    completeness: float = 1.0,
    *,
    threshold: float = INCOMPLETE_THRESHOLD,
) -> AllocationReport:
    """Allocate a group's month imbalance (``input - consumed``) to ``accounts``.

    Only a positive imbalance is allocated: a negative one means the accounts'
    meters recorded more than entered, which is a metering error, not something
    to charge; a missing input leaves nothing to allocate either. Each account's
    share follows the group's rule and is capped by ``group.odn_norm`` x its
    area; the rest is the utility's loss. ``fixable`` is the volume the top
    findings would recover this month: the same allocation is run on the reduced
    imbalance to show what fixing them would change.
    """
    if group.allocation_rule not in ALLOCATION_RULES:
        raise ValueError(f"unknown allocation rule {group.allocation_rule!r}")
    imbalance = None if input is None else input - consumed
    basis, applied_rule = _basis(group.allocation_rule, accounts)
    shares = _shares(basis)
    caps = _caps(group.odn_norm, accounts)
    allocated = _distribute(shares, caps, imbalance)
    capped = caps is not None and bool(np.any(_distribute(shares, None, imbalance) > caps))
    if_fixed = None if imbalance is None else max(imbalance - fixable, 0.0)
    allocated_if_fixed = float(_distribute(shares, caps, if_fixed).sum())
    flags, missing = _flags(group, accounts, input, imbalance, applied_rule, capped, completeness < threshold)
    total = float(allocated.sum())
    lines = _lines(accounts, shares, caps, allocated, group.price)
    return AllocationReport(
        group_id=group.group_id,
        month=month,
        unit=group.unit,
        rule=group.allocation_rule,
        applied_rule=applied_rule,
        input=input,
        consumed=consumed,
        imbalance=imbalance,
        allocated=total,
        utility_loss=_loss(imbalance, total),
        price=group.price,
        lines=lines,
        fixable=fixable,
        imbalance_if_fixed=if_fixed,
        allocated_if_fixed=allocated_if_fixed,
        utility_loss_if_fixed=_loss(if_fixed, allocated_if_fixed),
        completeness=completeness,
        flags=flags,
        missing_area=missing,
    )
