"""The backtest: detectors replayed over a stored history with a known injected
leak, run by run as the scheduler would have run them, events kept by the
findings' rules in memory (the database stays as it was), scored against a
truth file; and the command line that does it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from balans_edge import cli as _cli
from balans_edge.config import parse_config
from balans_edge.core.analytics.backtest import (
    Replay,
    ReplayBook,
    ReplayedEvent,
    load_replay_data,
    replay,
    run_times,
)
from balans_edge.core.analytics.backtest_truth import TrueEvent, TruthError, group_subjects, read_truth, score
from balans_edge.core.analytics.base import GroupDetector, Scope
from balans_edge.core.analytics.data import GroupData
from balans_edge.core.analytics.night_flow import GroupLeakDetector
from balans_edge.core.components import Finding
from balans_edge.core.detection import DetectionRun
from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.core.times import DAY, HOUR, iso
from balans_edge.plugin_manager import config_schemas, load_plugins
from balans_edge.plugins.dmesh.scenario import NetworkLeak, Scenario, generate
from balans_edge.server import Server

from conftest import base_config

START = 1_704_067_200  # 2024-01-01 00:00 UTC
DAYS = 28
LEAK_HOUR = 20 * DAY // HOUR + 3
LEAK_START = START + LEAK_HOUR * HOUR  # 2024-01-21 03:00 UTC
LEAK_LPH = 40.0
FROM, TO = START + 14 * DAY, START + DAYS * DAY
UTC = ZoneInfo("UTC")
OLD_FINDING = {"t": START + 4 * DAY, "detector": "group-leak", "subject": "B1", "kind": "burst",
               "severity": "critical", "message": "an earlier burst",
               "data": {"group_id": "B1", "start": START + 3 * DAY, "rate": 0.02, "volume_m3": 0.5}}


async def _build(path: Path) -> None:
    data = generate(Scenario(buildings=1, apartments=20, start=START, hours=DAYS * 24, seed=5),
                    [NetworkLeak("B1", LEAK_LPH, start=LEAK_HOUR)])
    plugins = load_plugins()
    config = parse_config(base_config(path, plugins={"analytics": {"interval_s": 0}}), config_schemas(plugins))
    server = Server(config, plugins)
    await server.start(http=False)
    try:
        await server.storage.registry_apply(data.registry())
        batches = list(data.all_batches())
        for day in range(0, len(batches), 24):  # a day of readings at once, as a back-fill delivers them
            part = batches[day:day + 24]
            await server.ingest.ingest(ReadingBatch(*(np.concatenate([getattr(b, c) for b in part]) for c in
                                                      ("module", "channel", "ts", "counter", "status"))))
        await server.detection.settle()
        await server.storage.record_finding(OLD_FINDING)  # a stored finding a real run would update
    finally:
        await server.stop()


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    """A stored building (20 flats, 28 days) with a 40 l/h burst in its network from day 20, 03:00."""
    folder = tmp_path_factory.mktemp("history")
    asyncio.run(_build(folder))
    return folder / "balans.db"


@pytest.fixture
async def storage(history, tmp_path) -> Any:
    path = tmp_path / "balans.db"
    shutil.copy(history, path)
    s = SqliteStorage(path)
    await s.open()
    yield s
    await s.close()


# The replay -----------------------------------------------------------------


async def test_the_injected_burst_is_reported_once_within_its_bounds(storage) -> None:
    data = await load_replay_data(storage, "B1", FROM, TO, UTC)
    result = replay(data, [GroupLeakDetector()], FROM, TO)
    assert result.runs == 14 * 24 + 1 and (result.t_from, result.t_to) == (FROM, TO)
    (event,) = result.events
    assert (event.detector, event.kind, event.subject, event.group_id) == ("group-leak", "burst", "B1", "B1")
    assert abs(event.start - LEAK_START) <= 3 * HOUR
    # Two loud nights are needed: not before the second night after the onset, well before the third ends.
    assert LEAK_START + DAY <= event.first_reported <= LEAK_START + 3 * DAY
    assert event.delay == event.first_reported - event.start
    assert event.first_rate == pytest.approx(LEAK_LPH / 1000, rel=0.2)
    assert event.rate == pytest.approx(LEAK_LPH / 1000, rel=0.2)
    assert event.volume == pytest.approx(LEAK_LPH / 1000 * (TO - LEAK_START) / HOUR, rel=0.3)
    assert event.first_volume < event.volume  # the estimate at the first report saw less of it
    assert event.end is None  # still leaking at the end
    assert event.reports == (TO - event.first_reported) // HOUR + 1  # every later run saw it again


async def test_the_first_report_is_the_first_scheduled_run_that_would_have_found_it(storage) -> None:
    """The run the replay names reports the burst through the scheduler's own path
    (a scope of window_days ending then, loaded from storage); the run an hour before does not."""
    data = await load_replay_data(storage, "B1", FROM, TO, UTC)
    (event,) = replay(data, [GroupLeakDetector()], FROM, TO).events
    window = 14 * DAY

    async def scheduled(t: int) -> list[Finding]:
        return await GroupLeakDetector().detect(DetectionRun(Scope(t - window, t, ["B1"]), storage, UTC))

    assert [f.kind for f in await scheduled(event.first_reported)] == ["burst"]
    assert await scheduled(event.first_reported - HOUR) == []
    # The slice a run sees is the window a scheduled run loads.
    t = event.first_reported
    (loaded,) = await Scope(t - window, t, ["B1"]).windows(storage, UTC)
    i = int(np.searchsorted(data.t, t - window))
    sliced = data.slice(i, i + window // HOUR)
    for name in ("t", "values", "quality", "status", "input", "others", "local_hour", "weekday"):
        np.testing.assert_array_equal(getattr(sliced, name), getattr(loaded, name), err_msg=name)


class Spy(GroupDetector):
    name = "spy"

    def __init__(self) -> None:
        self.windows: list[tuple[int, int, int]] = []

    def detect_group(self, data: GroupData) -> list[Finding]:
        self.windows.append((int(data.t[0]), int(data.t[-1]) + HOUR, data.hours))
        return []


async def test_each_run_sees_only_the_hours_over_by_then(storage) -> None:
    data = await load_replay_data(storage, "B1", FROM, TO, UTC, step_s=6 * HOUR, window_s=3 * DAY)
    spy = Spy()
    result = replay(data, [spy], FROM + 1, TO, step_s=6 * HOUR, window_s=3 * DAY)
    runs = [FROM + HOUR + k * 6 * HOUR for k in range((TO - FROM - HOUR) // (6 * HOUR) + 1)]
    assert result.runs == len(runs) and result.t_from == FROM + HOUR  # from is rounded up to an hour
    assert spy.windows == [(t - 3 * DAY, t, 72) for t in runs]
    with pytest.raises(ValueError, match="every hour"):
        replay(data, [spy], FROM - DAY, TO, window_s=3 * DAY)  # the history does not reach that far back
    with pytest.raises(ValueError, match="whole number of hours"):
        run_times(FROM, TO, 1800)


class Broken(GroupDetector):
    name = "broken"

    def detect_group(self, data: GroupData) -> list[Finding]:
        raise RuntimeError("boom")


async def test_a_failing_detector_is_counted_and_the_others_still_run(storage) -> None:
    data = await load_replay_data(storage, "B1", FROM, TO, UTC)
    result = replay(data, [Broken(), GroupLeakDetector()], FROM, TO, step_s=DAY)
    assert result.failures == {"broken": 15}
    assert [e.kind for e in result.events] == ["burst"]


async def test_the_book_keeps_events_as_stored_findings_do(storage) -> None:
    """The same reports give the same events in memory as in the findings journal."""
    def report(t: int, start: int | None, volume: float | None, rate: float | None = 0.01,
               end: int | None = None) -> Finding:
        data: dict[str, Any] = {"group_id": "B1"}
        data |= {k: v for k, v in (("start", start), ("end", end), ("volume_m3", volume), ("rate", rate))
                 if v is not None}
        return Finding("det", "B1", "burst", f"at {t}", t=t, data=data)

    T = START + 100 * DAY
    reports = [report(T, T - 5 * HOUR, 1.0), report(T + HOUR, T - 6 * HOUR, 0.5, 0.02),  # smaller: kept estimate
               report(T + 2 * HOUR, T - 4 * HOUR, 2.0, None), report(T + 3 * DAY, None, 3.0),  # gap: new event
               report(T + 3 * DAY + HOUR, T, 4.0, 0.03, end=T + 3 * DAY)]  # start within the gap: same event
    book = ReplayBook()
    for f in reports:
        book.report(f, 0)
        record = dataclasses.asdict(f) | {"severity": str(f.severity)}
        await storage.record_finding(record)
    stored = sorted((f for f in await storage.findings(kind="burst") if f["detector"] == "det"), key=lambda f: f["id"])
    events = book.finish(T + 3 * DAY + HOUR)
    assert len(events) == len(stored) == 2
    for e, f in zip(events, stored, strict=True):
        assert (e.start, e.last, e.rate, e.volume, e.reports, e.first_reported, e.last_reported, e.message) == (
            f["started"], f["ended"], f["rate"], f["volume"], f["seen"], f["first_seen"], f["last_seen"],
            f["message"])
    assert (events[0].first_volume, events[0].volume, events[0].rate) == (1.0, 2.0, 0.01)
    assert events[0].end == T + 2 * HOUR  # not seen for the gap: ended at its last end
    assert events[1].end == T + 3 * DAY  # the newest report states its end before its own time


# Scoring against the truth --------------------------------------------------


def _event(subject: str, first_reported: int, start: int | None = None) -> ReplayedEvent:
    s = first_reported - HOUR if start is None else start
    return ReplayedEvent("d", subject, "burst", "B1", "warning", "", s, first_reported, first_reported, 0.1, 1.0,
                         0.1, 1.0, first_reported)


def _replay(events: list[ReplayedEvent], t_from: int = FROM, t_to: int = TO) -> Replay:
    return Replay("B1", t_from, t_to, HOUR, 14 * DAY, ["d"], (t_to - t_from) // HOUR + 1, events)


def test_the_matching_rule_at_its_bounds() -> None:
    truth = [TrueEvent(2, "B1", "burst", FROM + DAY)]
    for first, hit in ((FROM + DAY, True), (FROM + 8 * DAY, True), (FROM + 8 * DAY + 1, False),
                       (FROM + DAY - 1, False)):
        scores = score(_replay([_event("B1", first)]), truth)
        assert (scores.recall, scores.precision) == ((1.0, 1.0) if hit else (0.0, 0.0)), first
    assert score(_replay([_event("B1-A01", FROM + 2 * DAY)]), truth).recall == 0.0  # another subject
    assert score(_replay([_event("B1", FROM + 2 * DAY)]), truth, deadline_s=DAY - 1).recall == 0.0
    assert score(_replay([_event("B1", FROM + 2 * DAY)]), truth, deadline_s=DAY).recall == 1.0


async def test_one_true_and_one_false_event_score_half(storage) -> None:
    """A real replay with a detector that also raises a false event; the truth file
    holds the burst and a fault nobody reported."""

    class Noisy(GroupDetector):
        name = "noisy"

        def detect_group(self, data: GroupData) -> list[Finding]:
            t1 = int(data.t[-1]) + HOUR
            on = FROM + 2 * DAY <= t1 <= FROM + 3 * DAY
            return [Finding(self.name, "B1-A03", "stuck_meter", "false", t=t1, data={"start": FROM + 2 * DAY})] \
                if on else []

    data = await load_replay_data(storage, "B1", FROM, TO, UTC)
    result = replay(data, [GroupLeakDetector(), Noisy()], FROM, TO)
    assert sorted(e.subject for e in result.events) == ["B1", "B1-A03"]
    truth = read_truth(f"subject,kind,start\nB1,burst,{iso(LEAK_START)}\nB1-A07,stuck,{iso(FROM + 5 * DAY)}\n"
                       f"B2,burst,{iso(LEAK_START)}\nB1,burst,{iso(START)}\n", UTC, "truth.csv")
    scores = score(result, truth, group_subjects(data))
    assert (scores.precision, scores.recall, scores.f1, scores.false_episodes) == (0.5, 0.5, 0.5, 1)
    assert scores.left_out == 2  # another group's, and one before the replay
    assert scores.months == pytest.approx(14 / 30.4375)
    assert scores.false_per_month == pytest.approx(30.4375 / 14)
    stuck, burst = scores.outcomes  # in order of start
    assert (burst.truth.line, burst.event.kind) == (2, "burst")
    assert burst.delay == burst.event.first_reported - LEAK_START
    assert (stuck.truth.line, stuck.event, stuck.delay) == (3, None, None)
    assert [None if m is None else m.line for m in scores.matched] == [
        2 if e.subject == "B1" else None for e in result.events]
    assert scores.by_kind["burst"].recall == 1.0 and scores.by_kind["stuck"].recall == 0.0
    assert scores.median_delay_s == burst.delay


def test_a_truth_file_in_local_time_with_comments_and_no_header() -> None:
    prague = ZoneInfo("Europe/Prague")
    text = "# true events\n\nB1,burst,2024-01-21T04:00\nB1-A07, stuck ,1705800000,2024-01-22T00:00:00Z\n"
    assert read_truth(text, prague) == [
        TrueEvent(3, "B1", "burst", LEAK_START),
        TrueEvent(4, "B1-A07", "stuck", 1705800000, 1705881600),
    ]
    assert read_truth("group,start,kind\nB1,2024-01-21,burst\n", UTC) == [TrueEvent(2, "B1", "burst", START + 20 * DAY)]


@pytest.mark.parametrize(("text", "problem"), [
    ("B1,burst\n", "truth.csv line 1: expected the fields subject,kind,start[,end], got 2"),
    ("# c\n\nsubject,kind,start\nB1,burst,yesterday\n", "truth.csv line 4: start: expected an ISO-8601 time"),
    ("B1,burst,2024-01-21,2024-01-20\n", "truth.csv line 1: end '2024-01-20' is before start '2024-01-21'"),
    ("subject,kind\n", "truth.csv line 1: the header must name subject, kind and start once each"),
    ("subject,kind,start,subject\n", "truth.csv line 1: the header must name"),
    ("B1,burst,2024-01-21\n,burst,2024-01-21\n", "truth.csv line 2: subject is empty"),
    ("B1,burst,2024-01-21,2024-01-22,x\n", "truth.csv line 1: expected the fields subject,kind,start[,end], got 5"),
    ("B1,burst,2024-01-21,99999999999\n", "truth.csv line 1: end: expected a time in"),
    ('B1,"burst\nsplit",2024-01-21\nB1,burst,never\n', "truth.csv line 3: start"),
])
def test_truth_file_errors_name_the_line(text, problem) -> None:
    with pytest.raises(TruthError) as caught:
        read_truth(text, UTC, "truth.csv")
    assert str(caught.value).startswith(problem), str(caught.value)


# The command line -----------------------------------------------------------


def _snapshot(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order."""
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


@pytest.fixture
def site(history, tmp_path) -> Path:
    """A copy of the history and a configuration file using it (the site in Prague's time)."""
    shutil.copy(history, tmp_path / "balans.db")
    config = tmp_path / "site.toml"
    config.write_text(f'[site]\ntimezone = "Europe/Prague"\n\n[storage]\nurl = "sqlite:{tmp_path / "balans.db"}"\n')
    return config


def main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``balans-edge ARGS`` through the console script's entry point: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["balans-edge", *args])
    with pytest.raises(SystemExit) as done:
        _cli.main()
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


def test_the_command_prints_every_event_and_scores_them(site, tmp_path, monkeypatch, capsys) -> None:
    truth = tmp_path / "truth.csv"
    truth.write_text(f"subject,kind,start\nB1,burst,{iso(LEAK_START)}\nB1-A07,stuck,2024-01-20T12:00\n")
    before = _snapshot(tmp_path / "balans.db")
    assert len(before["findings"]) == 1
    code, out, err = main(monkeypatch, capsys, "analytics", "backtest", "-c", str(site), "--group", "B1",
                          "--from", "2024-01-15", "--to", str(TO), "--detectors", "group-leak,stuck-meter",
                          "--truth", str(truth), "--format", "json")
    assert code == 0, err
    body = json.loads(out)
    assert (body["from"], body["to"], body["timezone"]) == (FROM - HOUR, TO, "Europe/Prague")  # local midnight
    assert body["detectors"] == ["group-leak", "stuck-meter"] and body["runs"] == 14 * 24 + 2
    (event,) = body["events"]
    assert (event["kind"], event["subject"], event["true_event_line"], event["end"]) == ("burst", "B1", 2, None)
    assert LEAK_START + DAY <= event["first_reported"] <= LEAK_START + 3 * DAY
    assert event["delay_s"] == event["first_reported"] - event["start"]
    assert event["first"]["rate"] == pytest.approx(0.04, rel=0.2) and event["end_estimate"]["volume"] > 5
    s = body["scores"]
    assert (s["true_events"], s["detected"], s["precision"], s["recall"], s["false_episodes"]) == (2, 1, 1.0, 0.5, 0)
    assert [(t["line"], t["detected"]) for t in body["truth"]] == [(3, False), (2, True)]  # in order of start
    # Nothing was written: every table holds what it held, the earlier finding is as it was.
    assert _snapshot(tmp_path / "balans.db") == before

    code, out, err = main(monkeypatch, capsys, "analytics", "backtest", "-c", str(site), "--group", "B1",
                          "--from", "2024-01-15", "--to", "2024-01-29", "--detectors", "group-leak",
                          "--truth", str(truth))
    assert code == 0, err
    lines = out.splitlines()
    assert "Europe/Prague" in lines[0] and "group-leak" in lines[0]
    row = next(line for line in lines if line.startswith("group-leak"))
    assert "burst" in row and "B1" in row and "2024-01-21 0" in row
    assert "precision 1.000  recall 0.500  F1 0.667  false episodes 0" in out
    assert "stuck: 0/1 detected" in out and "missed" in out

    code, out, err = main(monkeypatch, capsys, "analytics", "backtest", "-c", str(site), "--group", "B1",
                          "--from", str(FROM), "--to", str(TO), "--step", "6h", "--detectors", "group-leak",
                          "--format", "csv")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split(",")[:6] == ["detector", "kind", "subject", "start", "first_reported", "delay_h"]
    cells = row.split(",")
    assert cells[:3] == ["group-leak", "burst", "B1"] and cells[4].endswith("+01:00")
    assert _snapshot(tmp_path / "balans.db") == before


@pytest.mark.parametrize(("args", "problem"), [
    (["--group", "NOPE"], "group 'NOPE' is not in the registry"),
    (["--group", "B1", "--detectors", "group-leak,psychic"], "unknown detectors ['psychic']"),
    (["--group", "B1", "--step", "90m"], "expected whole hours"),
    (["--group", "B1", "--step", "soon"], "expected a duration"),
    (["--group", "B1", "--to", str(FROM - 1)], "no run between --from"),
    (["--group", "B1", "--deadline", "0d"], "expected a duration"),
])
def test_the_command_refuses_what_it_cannot_do(site, monkeypatch, capsys, args, problem) -> None:
    code, _, err = main(monkeypatch, capsys, "analytics", "backtest", "-c", str(site), "--from", str(FROM),
                        "--to", str(TO), *args)
    assert code in (1, 2) and problem in " ".join(err.split()), err


def test_the_command_names_the_bad_line_of_a_truth_file(site, tmp_path, monkeypatch, capsys) -> None:
    truth = tmp_path / "truth.csv"
    truth.write_text("subject,kind,start\nB1,burst,2024-01-21\nB1,burst,the 21st\n")
    code, out, err = main(monkeypatch, capsys, "analytics", "backtest", "-c", str(site), "--group", "B1",
                          "--from", "2024-01-15", "--to", "yesterday", "--truth", str(truth))
    assert code == 2 and "--to" in err  # the times are checked first
    code, out, err = main(monkeypatch, capsys, "analytics", "backtest", "-c", str(site), "--group", "B1",
                          "--from", "2024-01-15", "--to", "2024-01-16", "--truth", str(truth))
    assert code == 1 and f"{truth} line 3: start: expected an ISO-8601 time" in err and out == ""
