"""A finding is one event in the data's time: replayed history with a leak, its
repair and a second leak months later gives two findings and two alarms; every
run that sees the same leak updates one finding; a false alarm's mute on
back-filled history expires after its period of that history's time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiosqlite
import numpy as np
import pytest

from balans_edge.core import findings as rules
from balans_edge.core.analytics.base import Scope
from balans_edge.core.components import Finding
from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.core.storage.sqlite_migrations import migrate
from balans_edge.plugins.analytics.plugin import run_analytics
from balans_edge.plugins.dmesh.scenario import Leak, Scenario, generate

from conftest import auth, base_config

START = 1_704_067_200  # 2024-01-01 00:00 UTC
DAY = 86400
DAYS = 90
WINDOW_DAYS = 14
LEAKS = ((10, 20), (75, None))
"""(first day, day of the repair) of the two leaks behind apartment B1-A05's meter."""


@pytest.fixture
async def replayed(tmp_path: Path, make_server: Any, client_for: Any) -> tuple[Any, Any]:
    """Four months of a building back-filled at once, as a concentrator's history arrives."""
    faults = [Leak("B1-A05", 20.0, start=a * 24, end=None if b is None else b * 24) for a, b in LEAKS]
    data = generate(Scenario(buildings=1, apartments=8, start=START, hours=DAYS * 24, seed=4), faults)
    config = base_config(tmp_path, plugins={"analytics": {"interval_s": 0, "detectors": ["consumer-leak"]}})
    server = await make_server(config)
    await server.storage.registry_apply(data.registry())
    hours = list(data.all_batches())
    for i in range(0, len(hours), 7 * 24):  # a week per batch, as a back-fill delivers it
        week = hours[i : i + 7 * 24]
        await server.ingest.ingest(ReadingBatch(*(np.concatenate([getattr(b, f) for b in week])
                                                  for f in ("module", "channel", "ts", "counter", "status"))))
    await server.intervals.process()
    await server.balance.process()
    return server, client_for(server)


async def replay(server: Any, days: range, after_day: Any = None) -> None:
    """The detectors run over the history as they would have run live (every few
    days here) over the last WINDOW_DAYS, in the data's time."""
    for day in days:
        end = START + day * DAY
        await run_analytics(server, Scope(end - WINDOW_DAYS * DAY, end, ["B1"]))
        if after_day is not None:
            await after_day(day)


@pytest.mark.parametrize("resolve", [False, True], ids=["left-open", "resolved"])
async def test_a_leak_its_repair_and_a_second_leak_months_later_are_two_findings(replayed: Any,
                                                                                  resolve: bool) -> None:
    server, client = replayed

    async def operator(day: int) -> None:
        if resolve and day == 29:  # the crew fixed it ten days after the repair's data arrived
            (first,) = await server.storage.findings(kind="consumer_leak")
            await server.storage.set_finding_status(first["id"], "resolved", by="crew")

    await replay(server, range(WINDOW_DAYS, DAYS + 1, 3), operator)
    found = sorted(await server.storage.findings(kind="consumer_leak", limit=100), key=lambda f: f["id"])
    assert [f["subject"] for f in found] == ["B1-A05", "B1-A05"]
    first, second = found
    # Each is its own event, in the data's time, seen by many runs.
    assert START + 9 * DAY <= first["started"] <= START + 11 * DAY
    assert START + 19 * DAY <= first["ended"] <= START + 21 * DAY
    assert START + 74 * DAY <= second["started"] <= START + 76 * DAY
    assert second["ended"] == START + 89 * DAY
    assert first["seen"] >= 5 and second["seen"] >= 5
    for f in found:
        assert f["rate"] == pytest.approx(0.020, rel=0.3)  # m3 per hour
        assert f["volume"] >= f["rate"] * 48
    assert [f["status"] for f in found] == ["resolved" if resolve else "open", "open"]
    alarms = [a for a in await server.storage.journal_list("alarms", 100) if a["source"] == "consumer-leak"]
    assert sorted(a["data"]["finding_id"] for a in alarms) == [first["id"], second["id"]]

    shown = (await client.get(f"/api/v1/findings/{second['id']}", headers=auth("viewer"))).json()
    assert shown["started"].startswith("2024-03-1") and shown["ended"] == "2024-03-30T00:00:00Z"
    assert shown["rate"] == second["rate"] and shown["volume"] == second["volume"]


async def test_every_run_that_sees_the_same_leak_updates_one_finding(replayed: Any) -> None:
    server, _ = replayed
    runs = range(24, 36)  # daily, while the first leak is in the window and after it
    await replay(server, runs)
    (leak,) = await server.storage.findings(kind="consumer_leak")
    assert leak["seen"] >= 8
    assert (leak["first_seen"], leak["last_seen"]) == (START + 24 * DAY, leak["last_seen"])
    assert leak["ended"] <= START + 21 * DAY  # it stopped at the repair, whenever the runs saw it
    assert len([a for a in await server.storage.journal_list("alarms", 100) if a["source"] == "consumer-leak"]) == 1


def report(t: int, start: int | None = None, volume: float = 0.5) -> Finding:
    data: dict[str, Any] = {"group_id": "B1", "volume_m3": volume}
    if start is not None:
        data["start"] = start
    return Finding("leaks", "B1-A05", "consumer_leak", f"leak, {volume} m3", t=t, data=data)


async def test_a_false_alarm_on_back_filled_history_is_muted_for_its_period_of_that_history(
        tmp_path: Path, make_server: Any) -> None:
    server = await make_server(base_config(tmp_path))
    past = START - 3 * 365 * DAY  # history from three years ago, back-filled today
    finding = await server.report_finding(report(past))
    await server.storage.set_finding_status(finding.id, "false_alarm", by="op", note="a filled pool")
    assert time.time() - past > 1000 * DAY
    muted = await server.report_finding(report(past + 10 * DAY))
    assert muted.id == finding.id
    again = await server.report_finding(report(past + rules.SUPPRESS_S + DAY))
    assert again.id != finding.id
    alarms = await server.storage.journal_list("alarms", 100)
    assert sorted(a["data"]["finding_id"] for a in alarms) == [finding.id, again.id]


async def test_an_event_that_starts_after_the_last_one_ended_is_new(tmp_path: Path, make_server: Any) -> None:
    server = await make_server(base_config(tmp_path))
    t = START
    first = await server.report_finding(report(t, start=t - DAY))
    same = await server.report_finding(report(t + DAY, start=t - DAY, volume=0.9))
    assert same.id == first.id
    stored = await server.storage.finding(first.id)
    assert (stored["started"], stored["ended"], stored["volume"], stored["seen"]) == (t - DAY, t + DAY, 0.9, 2)
    # A window that saw less of the event (a smaller volume) does not replace the estimate.
    await server.report_finding(report(t + 2 * DAY, start=t - DAY, volume=0.4))
    stored = await server.storage.finding(first.id)
    assert (stored["volume"], stored["message"], stored["ended"], stored["seen"]) == (0.9, "leak, 0.9 m3",
                                                                                      t + 2 * DAY, 3)
    # Unseen for less than the gap: still the same event; beyond it: a new one.
    within = t + 2 * DAY + rules.EVENT_GAP_S - 3600
    assert (await server.report_finding(report(within + DAY, start=within))).id == first.id
    later = within + DAY + rules.EVENT_GAP_S
    new = await server.report_finding(report(later + DAY, start=later))
    assert new.id != first.id
    assert len(await server.storage.journal_list("alarms", 100)) == 2


async def test_findings_stored_before_their_events_get_them_from_their_reports(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with aiosqlite.connect(path, isolation_level=None) as db:
        assert await migrate(db, target=10) == 10
        await db.executemany(
            "INSERT INTO findings (t, detector, subject, kind, severity, message, data, first_seen, last_seen) "
            "VALUES (?, 'leaks', ?, 'consumer_leak', 'warning', 'old', ?, ?, ?)",
            [(1000, "A", '{"start": 400, "volume_m3": 0.5, "rate": 0.02}', 1000, 5000),
             (2000, "B", '{"volume_m3": "much"}', 2000, 2000), (3000, "C", '{"start": "soon"}', 3000, 3000)])
    storage = SqliteStorage(path)
    await storage.open()
    try:
        rows = {r["subject"]: r for r in await storage.findings()}
        got = {s: (r["started"], r["ended"], r["rate"], r["volume"]) for s, r in rows.items()}
        assert got == {"A": (400, 5000, 0.02, 0.5), "B": (2000, 2000, None, None), "C": (3000, 3000, None, None)}
        # The next report of A's leak, two days of data after it was last seen, continues it.
        record = {"detector": "leaks", "subject": "A", "kind": "consumer_leak", "severity": "warning",
                  "message": "new", "t": 5000 + DAY, "data": {"start": 400, "volume_m3": 0.7}}
        assert await storage.record_finding(record) == (rows["A"]["id"], False)
    finally:
        await storage.close()
