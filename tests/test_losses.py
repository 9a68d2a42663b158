"""Loss ranking: totals, money per month, trend, and the recommendations per group."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from balans_edge.core.balance import BalanceSeries
from balans_edge.core.losses import LossEntry, local_hours, rank, sort_entries
from balans_edge.core.model import Group, GroupInput, Resource

TZ = ZoneInfo("Europe/Moscow")
"""UTC+3 all year: local hour = hour index modulo 24 from a local midnight."""
T0 = int(datetime(2024, 3, 4, tzinfo=TZ).timestamp())
DAYS = 14
HOURS = DAYS * 24
HOUR = np.arange(HOURS) % 24
DAY = np.arange(HOURS) // 24
DAYTIME = (HOUR >= 8) & (HOUR < 20)
"""Twelve local hours in which people consume."""
WAVE = np.where(np.arange(DAYS) % 2 == 0, 0.5, -0.5)
"""Day-to-day noise of the growing group's daily imbalance (sums to 0)."""


def group(gid: str, price: float | None, norm: float | None = None) -> Group:
    return Group(
        gid, Resource.WATER, "m3", (GroupInput(f"in-{gid}"),), name=gid.upper(), price=price, loss_norm_pct=norm
    )


GROUPS = [group("leak", 50.0, norm=10.0), group("grow", None), group("gaps", 10.0), group("blind", 10.0)]
MEMBERS = {"gaps": ["m-g1", "m-g2", "m-g3", "m-g4"], "grow": ["m-b1"]}


def series(days: int = DAYS) -> BalanceSeries:
    """Hourly balance of four groups.

    leak:  consumes 10/h by day and 1/h by night, loses 2/h every hour (672 in 14 days).
    grow:  consumes 20/h by day; loses 10 + d (+-0.5) on day d, by day only (231).
    gaps:  consumes 1/h, loses 0.5/h by day only (84); one of four member meters missing.
    blind: its input meter never reported.
    """
    hours = days * 24
    daytime, day = DAYTIME[:hours], DAY[:hours]
    consumed = np.zeros((4, hours))
    loss = np.zeros((4, hours))
    consumed[0] = np.where(daytime, 10.0, 1.0)
    loss[0] = 2.0
    consumed[1] = np.where(daytime, 20.0, 0.0)
    loss[1] = np.where(daytime, (10.0 + day + WAVE[day]) / 12.0, 0.0)
    consumed[2] = 1.0
    loss[2] = np.where(daytime, 0.5, 0.0)
    consumed[3] = 5.0
    members = np.array([2, 3, 4, 1])[:, None] * np.ones((1, hours), np.int64)
    missing = np.zeros((4, hours), np.int64)
    missing[2] = 1
    estimated = np.zeros((4, hours), np.int64)
    estimated[1] = 1
    input_missing = np.zeros((4, hours), np.int64)
    input_missing[3] = 1
    return BalanceSeries(
        group_ids=[g.group_id for g in GROUPS],
        t=T0 + 3600 * np.arange(hours, dtype=np.int64),
        input=np.where(input_missing > 0, 0.0, consumed + loss),
        consumed=consumed,
        measured=members - missing - estimated,
        estimated=estimated,
        missing=missing,
        input_measured=1 - input_missing,
        input_estimated=np.zeros((4, hours), np.int64),
        input_missing=input_missing,
    )


FINDINGS = [
    {"subject": "m-g1", "detector": "reverse", "kind": "reverse_flow", "severity": "warning", "message": "m1",
     "data": {"volume_m3": 10.0}},
    {"subject": "m-g2", "detector": "tamper", "kind": "magnet", "severity": "critical", "message": "m2",
     "data": {"volume_m3": 40.0}},
    {"subject": "m-g3", "detector": "stuck", "kind": "stuck", "severity": "critical", "message": "m3", "data": {}},
    {"subject": "m-g4", "detector": "under", "kind": "under_reading", "severity": "info", "message": "m4",
     "data": {"volume": 25}},
    {"subject": "m-g2", "detector": "stuck", "kind": "stuck", "severity": "info", "message": "m2 again",
     "data": {"volume_m3": 5.0}},
    {"subject": "m-elsewhere", "detector": "stuck", "kind": "stuck", "severity": "critical", "message": "x",
     "data": {"volume_m3": 99.0}},
]  # fmt: skip


def ranked(order: str = "absolute", days: int = DAYS) -> dict[str, LossEntry]:
    entries = rank(GROUPS, series(days), TZ, FINDINGS, MEMBERS, order=order)  # type: ignore[arg-type]
    return {e.group_id: e for e in entries}


def kinds(entry: LossEntry) -> list[str]:
    return [r.kind for r in entry.recommendations]


def test_totals_loss_and_money_per_month() -> None:
    e = ranked()
    leak, grow, gaps = e["leak"], e["grow"], e["gaps"]
    assert leak.days == 14.0
    assert leak.input == pytest.approx(2520.0)
    assert leak.consumed == pytest.approx(1848.0)
    assert leak.imbalance == pytest.approx(672.0)
    assert leak.loss_pct == pytest.approx(100.0 * 672 / 2520)
    assert leak.norm == 10.0
    assert leak.norm_exceeded is True
    assert leak.money_per_month == pytest.approx(672 * 50 * 30 / 14)
    assert grow.imbalance == pytest.approx(231.0)
    assert grow.loss_pct == pytest.approx(100.0 * 231 / 3591)
    assert grow.norm_exceeded is False
    assert grow.money_per_month is None
    assert gaps.imbalance == pytest.approx(84.0)
    assert gaps.loss_pct == pytest.approx(20.0)
    assert gaps.money_per_month == pytest.approx(1800.0)


def test_completeness_counts_measured_and_estimated_member_hours() -> None:
    e = ranked()
    assert e["leak"].completeness == 1.0
    assert e["grow"].completeness == 1.0
    assert e["gaps"].completeness == 0.75
    assert e["leak"].input_coverage == 1.0
    assert e["blind"].input_coverage == 0.0


def test_steady_night_loss_is_a_worn_network() -> None:
    leak = ranked()["leak"]
    assert leak.night_rate == pytest.approx(2.0)
    assert kinds(leak) == ["worn_network"]
    message = leak.recommendations[0].message
    assert "2 m3/h" in message
    assert "100% of 14 nights" in message
    assert leak.recommendations[0].subject == "leak"


def test_loss_that_follows_consumption_is_not_a_worn_network() -> None:
    e = ranked()
    assert e["grow"].night_rate == 0.0
    assert e["gaps"].night_rate == 0.0
    assert "worn_network" not in kinds(e["grow"])
    assert "worn_network" not in kinds(e["gaps"])


def test_too_few_nights_say_nothing_about_the_network() -> None:
    leak = ranked(days=4)["leak"]
    assert leak.night_rate is None
    assert leak.recommendations == []


def test_growing_loss_has_a_significant_positive_trend() -> None:
    e = ranked()
    grow = e["grow"]
    # Least squares of 10 + d +- 0.5 over d = 0..13: slope 1 - 3.5 / 227.5 = 64/65 per day.
    assert grow.trend == pytest.approx(30 * 64 / 65)
    assert grow.trend_pct == pytest.approx(100 * (30 * 64 / 65) / 16.5)
    x = np.arange(DAYS, dtype=float)
    y = 10 + x + WAVE
    residual = y - np.polyval(np.polyfit(x, y, 1), x)
    se = np.sqrt(residual @ residual / (DAYS - 2) / ((x - x.mean()) @ (x - x.mean())))
    assert grow.trend_t == pytest.approx((64 / 65) / se)
    assert grow.trend_days == 14
    assert grow.growing is True
    assert e["leak"].trend == 0.0
    assert e["leak"].growing is False
    assert e["gaps"].growing is False


def test_a_short_rise_is_not_called_growing() -> None:
    grow = ranked(days=6)["grow"]
    assert grow.trend is not None and grow.trend > 0
    assert grow.trend_days == 6
    assert grow.growing is False


def test_gaps_and_suspect_meters_come_first_most_severe_then_biggest_volume() -> None:
    gaps = ranked()["gaps"]
    assert kinds(gaps) == ["metering_gaps", "suspect_meter", "suspect_meter", "suspect_meter"]
    assert "75.0%" in gaps.recommendations[0].message
    # Critical ones first (the one stating a volume before the one that does not), then the warning.
    assert [r.subject for r in gaps.recommendations[1:]] == ["m-g2", "m-g3", "m-g1"]
    # These findings carry no times: the volume they state is not turned into a rate.
    assert gaps.recommendations[1].message == "magnet (tamper, critical): m2; about 40 m3"


def test_a_critical_burst_is_not_hidden_behind_a_warning_about_the_same_group() -> None:
    day = 86400
    findings = [
        {"subject": "leak", "detector": "unmetered-connection", "kind": "unmetered_connection",
         "severity": "warning", "message": "draw", "first_seen": T0, "last_seen": T0 + 14 * day,
         "data": {"volume_m3": 50.0, "start": T0}},
        {"subject": "leak", "detector": "group-leak", "kind": "burst", "severity": "critical", "message": "burst",
         "first_seen": T0 + 13 * day, "last_seen": T0 + 14 * day, "data": {}},
    ]
    (leak,) = [e for e in rank(GROUPS, series(), TZ, findings, MEMBERS) if e.group_id == "leak"]
    suspects = [r for r in leak.recommendations if r.kind == "suspect_meter"]
    assert [r.message.split(" ")[0] for r in suspects] == ["burst", "unmetered_connection"]


def test_a_windows_volume_is_turned_into_a_monthly_one() -> None:
    """50 m3 found over a 14-day window is about 107 m3 a month, not "50 m3 per month"."""
    day = 86400
    finding = {"subject": "m-g1", "detector": "slowed-meter", "kind": "slowed_meter", "severity": "warning",
               "message": "slow", "first_seen": T0 + 20 * day, "last_seen": T0 + 34 * day,
               "data": {"volume_m3": 50.0, "start": T0 + 20 * day}}
    (gaps,) = [e for e in rank(GROUPS, series(), TZ, [finding], MEMBERS) if e.group_id == "gaps"]
    (suspect,) = [r for r in gaps.recommendations if r.kind == "suspect_meter"]
    assert suspect.message.endswith("; about 107.143 m3 per month (50 m3 in 14 days)")


def test_findings_about_the_group_itself_and_without_volume() -> None:
    findings = [
        {"subject": "grow", "detector": "trend", "kind": "rising", "severity": "warning", "message": "up", "data": {}},
        {"subject": "m-b1", "detector": "stuck", "kind": "stuck", "severity": "critical", "message": "s"},
    ]
    entries = rank(GROUPS, series(), TZ, findings, MEMBERS)
    grow = next(e for e in entries if e.group_id == "grow")
    # Neither states a volume: the critical one first.
    assert [(r.kind, r.subject) for r in grow.recommendations] == [("suspect_meter", "m-b1"), ("suspect_meter", "grow")]
    leak = next(e for e in entries if e.group_id == "leak")
    assert kinds(leak) == ["worn_network"]


def test_group_without_input_stays_with_no_loss_and_a_gap() -> None:
    blind = ranked()["blind"]
    assert blind.input is None
    assert blind.imbalance is None
    assert blind.loss_pct is None
    assert blind.money_per_month is None
    assert blind.consumed == pytest.approx(5.0 * HOURS)
    assert blind.trend is None
    assert blind.growing is False
    assert kinds(blind) == ["metering_gaps"]
    assert "no hour" in blind.recommendations[0].message


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("absolute", ["leak", "grow", "gaps", "blind"]),
        ("relative", ["leak", "gaps", "grow", "blind"]),
        ("trend", ["grow", "leak", "gaps", "blind"]),
    ],
)
def test_order(order: str, expected: list[str]) -> None:
    entries = rank(GROUPS, series(), TZ, FINDINGS, MEMBERS, order=order)  # type: ignore[arg-type]
    assert [e.group_id for e in entries] == expected


def test_unknown_order_and_missing_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown order"):
        sort_entries([], "loudest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not in the series"):
        rank([*GROUPS, group("other", None)], series(), TZ)


def test_json_is_rounded_and_serialisable() -> None:
    entries = rank(GROUPS, series(), TZ, FINDINGS, MEMBERS)
    out = [e.to_json() for e in entries]
    assert json.loads(json.dumps(out)) == out
    leak = out[0]
    assert leak["group_id"] == "leak"
    assert leak["money_per_month"] == 72000.0
    assert leak["loss_pct"] == 26.6667
    assert leak["imbalance"] == 672.0
    assert leak["recommendations"][0]["kind"] == "worn_network"


def test_local_hours_follow_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 2024-03-31: clocks jump from 02:00 CET to 03:00 CEST at 01:00 UTC.
    start = int(datetime(2024, 3, 30, 22, tzinfo=ZoneInfo("UTC")).timestamp())
    t = start + 3600 * np.arange(5)
    assert local_hours(t, berlin).tolist() == [23, 0, 1, 3, 4]
    assert local_hours(t, TZ).tolist() == [1, 2, 3, 4, 5]


def test_empty_period_reports_a_gap_and_no_loss() -> None:
    empty = np.zeros((1, 0))
    counts = np.zeros((1, 0), np.int64)
    s = BalanceSeries(["leak"], np.zeros(0, np.int64), empty, empty, *([counts] * 6))
    (entry,) = rank(GROUPS[:1], s, TZ)
    assert entry.imbalance is None
    assert entry.completeness is None
    assert entry.trend is None
    assert kinds(entry) == ["metering_gaps"]
