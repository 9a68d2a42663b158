"""The one rule for what a balance period shows (core.balance_figures): the flag
bits the bridges carry, input / imbalance / loss % with their unknowns, and the
vectorised rule against a period-by-period transcription of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balans_edge.core.balance_figures import (
    BALANCE_FLAGS,
    balance_figures,
    flag_bits_text,
    flag_names,
    loss_pct,
    norm_exceeded,
)

COUNTS = ("measured", "estimated", "missing", "input_measured", "input_estimated", "input_missing")


def period(input: float = 10.0, consumed: float = 9.0, measured: int = 4, estimated: int = 0, missing: int = 0,
           input_measured: int = 1, input_estimated: int = 0, input_missing: int = 0) -> dict[str, np.ndarray]:
    values = {"input": input, "consumed": consumed, "measured": measured, "estimated": estimated, "missing": missing,
              "input_measured": input_measured, "input_estimated": input_estimated, "input_missing": input_missing}
    return {k: np.array([v], np.float64 if k in ("input", "consumed") else np.int64) for k, v in values.items()}


def one(f, name):
    return getattr(f, name)[0]


def test_the_flag_bits_are_the_wire_format():
    """Modbus ``*_flags`` registers and OPC UA ``Flags`` carry these bits: they never move."""
    assert BALANCE_FLAGS == {"incomplete": 0, "input_missing": 1, "input_estimated": 2, "norm_exceeded": 3,
                             "negative_imbalance": 4, "no_members": 5, "partial": 6}
    assert flag_bits_text() == ("0 incomplete, 1 input_missing, 2 input_estimated, 3 norm_exceeded, "
                                "4 negative_imbalance, 5 no_members, 6 partial")
    assert flag_names(0b1011000) == ["negative_imbalance", "norm_exceeded", "partial"]
    assert flag_names(0) == []


def test_loss_pct_is_a_share_of_a_positive_input():
    got = loss_pct(np.array([1.0, 1.0, 1.0, np.nan]), np.array([4.0, 0.0, -2.0, 4.0]))
    assert got[0] == 25.0 and np.isnan(got[1:]).all()  # no input, a negative one, an unknown imbalance
    assert math.isnan(loss_pct(None, 4.0)) and math.isnan(loss_pct(1.0, None))
    assert norm_exceeded(np.array([5.0, 5.0, np.nan, 5.0]), np.array([4.0, 5.0, 1.0, np.nan])).tolist() == [
        True, False, False, False]
    assert not norm_exceeded(None, 3.0)


def test_a_balanced_period_has_its_loss_and_no_flag():
    f = balance_figures(period(10.0, 9.0), norm=15.0, resolution=0.0, threshold=0.95)
    assert (one(f, "input"), one(f, "consumed"), one(f, "imbalance"), one(f, "loss_pct")) == (10.0, 9.0, 1.0, 10.0)
    assert one(f, "flags") == 0 and one(f, "share_known") == 1.0 and one(f, "completeness") == 10000


def test_flags_are_decided_on_rounded_values():
    # float noise of an exactly balanced group is no negative imbalance
    f = balance_figures(period(0.1 + 0.2, 0.3), norm=np.nan, resolution=0.0, threshold=0.95)
    assert one(f, "imbalance") == 0.0 and one(f, "flags") == 0
    # 5.00004 % rounds to 5.0: not above a 5 % norm; 5.0001 is
    assert one(balance_figures(period(100.0, 94.999996), 5.0, 0.0, 0.95), "flags") == 0
    f = balance_figures(period(100.0, 94.9999), 5.0, 0.0, 0.95)
    assert one(f, "loss_pct") == 5.0001 and flag_names(one(f, "flags")) == ["norm_exceeded"]


def test_an_unknown_input_has_no_imbalance_nor_loss():
    cases = {
        "an input meter missing": (period(input_missing=1), ["input_missing"]),
        "no input meter counted (none installed)": (period(input_measured=0), []),
        "not begun": (period(), []),
    }
    for what, (cols, flags) in cases.items():
        f = balance_figures(cols, 1.0, 0.0, 0.95, counted=what != "not begun")
        assert math.isnan(one(f, "input")) and math.isnan(one(f, "imbalance")), what
        assert math.isnan(one(f, "loss_pct")) and one(f, "consumed") == 9.0, what
        assert flag_names(one(f, "flags")) == flags, what


def test_members_incomplete_missing_and_negative_imbalance():
    f = balance_figures(period(10.0, 12.0, measured=2, estimated=1, missing=1, input_estimated=1), 5.0,
                        resolution=1.0, threshold=0.95, partial=True)
    assert one(f, "share_known") == 0.75 and one(f, "completeness") == 7500
    assert flag_names(one(f, "flags")) == ["incomplete", "input_estimated", "negative_imbalance", "partial"]
    # within the resolution a deficit is the meters' whole pulses, not a flag
    assert one(balance_figures(period(10.0, 10.5), 5.0, 1.0, 0.95), "flags") == 0
    # no members: no share, flagged once the period has begun
    f = balance_figures(period(10.0, 0.0, measured=0), np.nan, 0.0, 0.95)
    assert math.isnan(one(f, "share_known")) and math.isnan(one(f, "completeness"))
    assert flag_names(one(f, "flags")) == ["no_members"]
    assert one(balance_figures(period(10.0, 0.0, measured=0), np.nan, 0.0, 0.95, counted=False), "flags") == 0


def test_arrays_of_groups_with_their_own_norms_and_resolutions():
    cols = {k: np.concatenate([v, v]) for k, v in period(10.0, 9.0).items()}
    f = balance_figures(cols, norm=np.array([5.0, 15.0]), resolution=np.array([0.0, 0.0]), threshold=0.95)
    assert f.flags.tolist() == [1 << BALANCE_FLAGS["norm_exceeded"], 0]
    assert f.loss_pct.tolist() == [10.0, 10.0]


def reference(c: dict[str, float], norm: float | None, resolution: float, threshold: float, partial: bool,
              counted: bool) -> tuple[float | None, float, float | None, float | None, list[str]]:
    """The rule period by period, in plain Python (as the API wrote it before it was vectorised)."""
    members = c["measured"] + c["estimated"] + c["missing"]
    consumed = round(c["consumed"], 6)
    known = c["input_missing"] == 0 and c["input_measured"] + c["input_estimated"] > 0
    inp = round(c["input"], 6) if counted and known else None
    imbalance = None if inp is None else round(inp - consumed, 6)
    loss = round(100.0 * imbalance / inp, 4) if inp is not None and imbalance is not None and inp > 0 else None
    share = (c["measured"] + c["estimated"]) / members if members else None
    flags = ["partial"] if partial else []
    if share is None:
        if counted:
            flags.append("no_members")
    elif share < threshold:
        flags.append("incomplete")
    if c["input_missing"]:
        flags.append("input_missing")
    if c["input_estimated"]:
        flags.append("input_estimated")
    if loss is not None and norm is not None and loss > norm:
        flags.append("norm_exceeded")
    if imbalance is not None and imbalance < -resolution:
        flags.append("negative_imbalance")
    return inp, consumed, imbalance, loss, sorted(flags)


volume = st.integers(-10**6, 10**7).map(lambda k: k / 1000)
count = st.integers(0, 3)
periods = st.lists(st.fixed_dictionaries({"input": volume, "consumed": volume, **{c: count for c in COUNTS}}),
                   min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(periods=periods, norm=st.none() | st.integers(0, 100).map(float), resolution=st.sampled_from([0.0, 0.001, 2.0]),
       partial=st.booleans(), counted=st.booleans())
def test_the_vectorised_rule_is_the_periods_rule(periods, norm, resolution, partial, counted):
    cols = {k: np.array([p[k] for p in periods], np.float64 if k in ("input", "consumed") else np.int64)
            for k in periods[0]}
    f = balance_figures(cols, np.nan if norm is None else norm, resolution, 0.95, partial, counted)
    for i, p in enumerate(periods):
        inp, consumed, imbalance, loss, flags = reference(p, norm, resolution, 0.95, partial, counted)
        got = [None if math.isnan(x) else x for x in (f.input[i], f.imbalance[i], f.loss_pct[i])]
        assert got == [inp, imbalance, None if loss is None else pytest.approx(loss, abs=1e-4)]
        assert f.consumed[i] == consumed
        assert flag_names(int(f.flags[i])) == flags
