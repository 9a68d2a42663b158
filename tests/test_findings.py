"""Findings end to end on a real server and a real SQLite file: deduplication
across detector runs, one alarm per new finding, the lifecycle over HTTP with
the operators' feedback, false-alarm suppression, recurrence, filters, the
command line, and findings stored before the lifecycle existed."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import balans_edge_example
import httpx
import pytest

from balans_edge.core import findings as rules
from balans_edge.core.components import Finding, Severity
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.core.storage.sqlite_migrations import migrate

from conftest import auth, base_config

BIN = Path(sys.executable).parent
DAY = 86400
MakeServer = Callable[..., Awaitable[Any]]


@pytest.fixture(autouse=True)
def reset_example_state() -> None:
    balans_edge_example.STATE.update(readings=0, findings=[], alarms=[], commands=[], notified=[])


@pytest.fixture
async def served(tmp_path: Path, make_server: MakeServer, client_for: Any) -> tuple[Any, httpx.AsyncClient]:
    server = await make_server(base_config(tmp_path))
    return server, client_for(server)


def slowed(t: int, volume: float = 0.2, subject: str = "B1-A02", group: str | None = "B1") -> Finding:
    data: dict[str, Any] = {"volume_m3": volume}
    if group is not None:
        data["group_id"] = group
    return Finding("magnet", subject, "slowed_meter", f"{subject} under-registers {volume} m3",
                   Severity.WARNING, t=t, data=data)


async def alarms(server: Any) -> list[dict[str, Any]]:
    return await server.storage.journal_list("alarms", 1000)


async def patch(client: httpx.AsyncClient, finding_id: int, role: str = "operator", **body: Any) -> httpx.Response:
    return await client.patch(f"/api/v1/findings/{finding_id}", headers=auth(role), json=body)


async def listing(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/api/v1/findings", params=params, headers=auth("viewer"))
    assert r.status_code == 200, r.text
    return r.json()["findings"]


# deduplication and alarms ---------------------------------------------------------


async def test_same_finding_twice_is_one_row_with_the_newest_estimate(served: Any) -> None:
    server, client = served
    now = int(time.time())
    first = await server.report_finding(slowed(now - 3600, 0.2))
    again = await server.report_finding(slowed(now, 0.5))
    assert first.id == again.id and again.t == now

    (row,) = await server.storage.findings()
    assert (row["id"], row["status"], row["seen"], row["group_id"]) == (first.id, "open", 2, "B1")
    assert (row["first_seen"], row["last_seen"], row["t"]) == (now - 3600, now, now - 3600)
    assert row["data"] == {"volume_m3": 0.5, "group_id": "B1"} and "0.5 m3" in row["message"]
    assert row["feedback"] == []

    # One alarm, through the notifiers and observers, pointing back at the finding.
    (alarm,) = await alarms(server)
    assert (alarm["source"], alarm["severity"], alarm["t"]) == ("magnet", "warning", now - 3600)
    assert alarm["data"] == {"finding_id": first.id, "subject": "B1-A02", "kind": "slowed_meter", "group_id": "B1"}
    assert balans_edge_example.STATE["notified"] == [first.message]
    assert balans_edge_example.STATE["findings"] == [first]

    shown = (await client.get(f"/api/v1/findings/{first.id}", headers=auth("viewer"))).json()
    assert (shown["first_seen"], shown["seen"]) == (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600)), 2)


async def test_other_subject_or_kind_is_another_finding(served: Any) -> None:
    server, _ = served
    now = int(time.time())
    a = await server.report_finding(slowed(now))
    b = await server.report_finding(slowed(now, subject="B1-A03"))
    c = await server.report_finding(Finding("magnet", "B1-A02", "reverse_flow", "backwards", t=now))
    assert len({a.id, b.id, c.id}) == 3
    assert len(await alarms(server)) == 3


# lifecycle over HTTP ----------------------------------------------------------------


async def test_lifecycle_keeps_the_operators_feedback(served: Any) -> None:
    server, client = served
    finding = await server.report_finding(slowed(int(time.time())))

    r = await patch(client, finding.id, status="acknowledged", note="  crew sent  ")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "acknowledged"
    r = await patch(client, finding.id, status="acknowledged")
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert "cannot become acknowledged" in r.json()["error"]["message"]
    r = await patch(client, finding.id, role="admin", status="resolved", note="magnet removed")
    assert r.status_code == 200
    r = await patch(client, finding.id, status="acknowledged")
    assert r.status_code == 409 and "allowed: open" in r.json()["error"]["message"]

    body = (await client.get(f"/api/v1/findings/{finding.id}", headers=auth("viewer"))).json()
    assert body["status"] == "resolved"
    assert [(e["by"], e["status"], e["note"]) for e in body["feedback"]] == [
        ("test-operator", "acknowledged", "crew sent"),
        ("test-admin", "resolved", "magnet removed"),
    ]
    assert all(e["t"].endswith("Z") for e in body["feedback"])


async def test_patch_errors(served: Any) -> None:
    server, client = served
    finding = await server.report_finding(slowed(int(time.time())))
    r = await patch(client, finding.id, role="viewer", status="acknowledged")
    assert r.status_code == 403
    assert (await patch(client, finding.id, note="no status")).status_code == 400
    r = await patch(client, finding.id, status="closed")
    assert r.status_code == 400 and "expected one of open, acknowledged" in r.json()["error"]["message"]
    assert (await patch(client, finding.id + 100, status="resolved")).status_code == 404
    assert (await patch(client, finding.id, status="resolved", note=3)).status_code == 400
    r = await client.patch(f"/api/v1/findings/{finding.id}", headers=auth("operator"), content=b"{")
    assert r.status_code == 400
    assert (await client.get("/api/v1/findings/999", headers=auth("viewer"))).status_code == 404
    assert (await client.get("/api/v1/findings/x", headers=auth("viewer"))).status_code == 400
    assert (await client.get("/api/v1/findings")).status_code == 401
    assert (await server.storage.finding(finding.id))["status"] == "open"  # nothing changed


async def test_recurrence_after_resolved_is_a_new_finding(served: Any) -> None:
    server, client = served
    now = int(time.time())
    first = await server.report_finding(slowed(now - DAY))
    assert (await patch(client, first.id, status="resolved")).status_code == 200
    second = await server.report_finding(slowed(now))
    assert second.id != first.id
    assert len(await alarms(server)) == 2
    assert [f["status"] for f in await server.storage.findings()] == ["open", "resolved"]
    # The old one cannot be reopened while the new one tracks the problem.
    r = await patch(client, first.id, status="open")
    assert r.status_code == 409 and f"finding {second.id} already tracks" in r.json()["error"]["message"]


async def test_false_alarm_suppresses_reports_then_expires(served: Any) -> None:
    server, client = served
    now = int(time.time())
    finding = await server.report_finding(slowed(now))
    assert (await patch(client, finding.id, status="false_alarm", note="meter was replaced")).status_code == 200

    again = await server.report_finding(slowed(now + 60, 0.9))
    assert again.id == finding.id
    (row,) = await server.storage.findings()
    assert (row["status"], row["seen"], row["data"]["volume_m3"]) == ("false_alarm", 1, 0.2)  # untouched
    assert len(await alarms(server)) == 1

    # Past the suppression window the detector is believed again.
    later = await server.report_finding(slowed(now + rules.SUPPRESS_S + DAY))
    assert later.id != finding.id
    assert len(await alarms(server)) == 2


async def test_reopened_false_alarm_collects_the_next_reports(served: Any) -> None:
    server, client = served
    now = int(time.time())
    finding = await server.report_finding(slowed(now))
    assert (await patch(client, finding.id, status="false_alarm")).status_code == 200
    r = await patch(client, finding.id, status="open", note="it was real after all")
    assert r.status_code == 200
    assert [e["status"] for e in r.json()["feedback"]] == ["false_alarm", "open"]
    again = await server.report_finding(slowed(now + 60))
    assert again.id == finding.id
    assert (await server.storage.finding(finding.id))["seen"] == 2
    assert len(await alarms(server)) == 1


async def test_suppression_window_is_a_parameter(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "s.db")
    await storage.open()
    try:
        record = {"detector": "d", "subject": "W-1", "kind": "k", "severity": "info", "message": "m", "t": 1000}
        finding_id, new = await storage.record_finding(record)
        assert new
        await storage.set_finding_status(finding_id, "false_alarm", by="op", t=1000)
        assert await storage.record_finding({**record, "t": 1100}, suppress_s=200) == (finding_id, False)
        other, new = await storage.record_finding({**record, "t": 1300}, suppress_s=200)
        assert new and other != finding_id
        assert await storage.set_finding_status(999, "open", by="op") is None
        with pytest.raises(ValueError, match="expected one of"):
            await storage.set_finding_status(other, "done", by="op")
    finally:
        await storage.close()


# listing and filters ----------------------------------------------------------------------


async def test_list_filters(served: Any) -> None:
    server, client = served
    now = int(time.time())
    a = await server.report_finding(slowed(now - 300, subject="B1-A02", group="B1"))
    b = await server.report_finding(slowed(now - 200, subject="B2-A01", group="B2"))
    c = await server.report_finding(Finding("net", "module:7", "low_battery", "battery low", t=now - 100))
    assert (await patch(client, b.id, status="acknowledged")).status_code == 200

    assert [f["id"] for f in await listing(client)] == [c.id, b.id, a.id]  # most recently seen first
    assert [f["id"] for f in await listing(client, group="B1")] == [a.id]
    assert [f["id"] for f in await listing(client, kind="slowed_meter")] == [b.id, a.id]
    assert [f["id"] for f in await listing(client, status="acknowledged")] == [b.id]
    assert [f["id"] for f in await listing(client, status="open", kind="slowed_meter")] == [a.id]
    assert [f["id"] for f in await listing(client, subject="module:7")] == [c.id]
    assert [f["id"] for f in await listing(client, limit=1)] == [c.id]
    assert await listing(client, group="B9") == []
    (shown,) = await listing(client, group="B2")
    assert shown["last_seen"].endswith("Z") and shown["group_id"] == "B2" and shown["data"]["volume_m3"] == 0.2
    for bad in ({"status": "closed"}, {"limit": "0"}, {"limit": "x"}):
        r = await client.get("/api/v1/findings", params=bad, headers=auth("viewer"))
        assert r.status_code == 400, bad


async def test_routes_in_openapi(served: Any) -> None:
    _, client = served
    paths = (await client.get("/api/v1/openapi.json")).json()["paths"]
    assert "patch" in paths["/api/v1/findings/{finding_id}"] and "get" in paths["/api/v1/findings"]


# command line -------------------------------------------------------------------------


async def cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "balans-edge"), *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_lists_findings_from_the_database(tmp_path: Path, served: Any) -> None:
    server, client = served
    now = int(time.time())
    a = await server.report_finding(slowed(now - 60, group="B1"))
    b = await server.report_finding(Finding("net", "module:7", "low_battery", "battery low", t=now - 30))
    await server.report_finding(slowed(now, group="B1"))
    assert (await patch(client, b.id, status="resolved")).status_code == 200
    config = tmp_path / "edge.toml"
    config.write_text(f'[storage]\nurl = "sqlite:{tmp_path / "balans.db"}"\n', encoding="utf-8")

    code, out, err = await cli("analytics", "findings", "-c", str(config), cwd=tmp_path)
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["id", "status", "kind", "subject"]
    assert [line.split()[:5] for line in lines] == [
        [str(a.id), "open", "slowed_meter", "B1-A02", "B1"],
        [str(b.id), "resolved", "low_battery", "module:7", "—"],
    ]
    assert lines[0].split()[-5] == "2" and lines[0].endswith("B1-A02 under-registers 0.2 m3")

    code, out, err = await cli("analytics", "findings", "-c", str(config), "--status", "open", "--group", "B1",
                               "--kind", "slowed_meter", "--json", cwd=tmp_path)
    assert code == 0, err
    (found,) = json.loads(out)["findings"]
    assert (found["id"], found["seen"], found["first_seen"], found["last_seen"]) == (a.id, 2, now - 60, now)

    code, out, _ = await cli("analytics", "findings", "-c", str(config), "--kind", "nothing", cwd=tmp_path)
    assert (code, out.strip()) == (0, "no findings")
    code, _, err = await cli("analytics", "findings", "-c", str(config), "--status", "closed", cwd=tmp_path)
    assert code == 2 and "closed" in err


# detection quality from the operators' answers -----------------------------------------


async def test_quality_counts_the_operators_answers_per_detector_and_kind(tmp_path: Path, served: Any) -> None:
    server, client = served
    now = int(time.time())
    made = [await server.report_finding(slowed(now - 7200, subject=f"B1-A{i:02d}")) for i in range(1, 6)]
    old = await server.report_finding(slowed(now - 400 * DAY, subject="B1-A09"))
    leak = await server.report_finding(Finding("leaks", "B1-A07", "consumer_leak", "leak", t=now - 3600))
    for finding, status in zip(made, ["resolved", "resolved", "resolved", "false_alarm", "acknowledged"],
                               strict=True):
        assert (await patch(client, finding.id, status=status)).status_code == 200
    assert (await patch(client, old.id, status="false_alarm")).status_code == 200

    r = await client.get("/api/v1/findings/quality", params={"days": 30}, headers=auth("viewer"))
    assert r.status_code == 200, r.text
    rows = {(q["detector"], q["kind"]): q for q in r.json()["detectors"]}
    assert set(rows) == {("magnet", "slowed_meter"), ("leaks", "consumer_leak")}  # the old one is out of range
    magnet = rows[("magnet", "slowed_meter")]
    assert (magnet["findings"], magnet["resolved"], magnet["false_alarm"], magnet["acknowledged"],
            magnet["judged"], magnet["precision"]) == (5, 3, 1, 1, 4, 0.75)
    assert 1.9 < magnet["median_hours_to_answer"] < 2.1  # answered about two hours after the first report
    assert (rows[("leaks", "consumer_leak")]["open"], rows[("leaks", "consumer_leak")]["precision"]) == (1, None)
    assert leak.id is not None

    r = await client.get("/api/v1/findings/quality", params={"days": 3660}, headers=auth("viewer"))
    assert {q["kind"]: q["false_alarm"] for q in r.json()["detectors"]}["slowed_meter"] == 2
    r = await client.get("/api/v1/findings/quality", params={"days": "0"}, headers=auth("viewer"))
    assert r.status_code == 400 and "days" in r.json()["error"]["message"]

    config = tmp_path / "edge.toml"
    config.write_text(f'[storage]\nurl = "sqlite:{tmp_path / "balans.db"}"\n', encoding="utf-8")
    code, out, err = await cli("analytics", "quality", "-c", str(config), "--days", "30", cwd=tmp_path)
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:3] == ["detector", "kind", "findings"]
    assert [line.split()[:3] + line.split()[-2:-1] for line in lines] == [
        ["leaks", "consumer_leak", "1", "-"], ["magnet", "slowed_meter", "5", "0.75"]]


# rules and migration ----------------------------------------------------------------


def test_transitions() -> None:
    rules.check_transition("open", "acknowledged")
    rules.check_transition("acknowledged", "open")
    rules.check_transition("false_alarm", "open")
    for current, new in [("open", "open"), ("resolved", "false_alarm"), ("false_alarm", "resolved")]:
        with pytest.raises(rules.TransitionError):
            rules.check_transition(current, new)
    with pytest.raises(ValueError, match="got 'gone'"):
        rules.check_transition("open", "gone")


async def test_findings_stored_before_the_lifecycle_are_open_and_seen_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with aiosqlite.connect(path, isolation_level=None) as db:
        assert await migrate(db, target=6) == 6
        await db.execute(
            "INSERT INTO findings (t, detector, subject, kind, severity, message, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (1000, "magnet", "B1-A02", "slowed_meter", "warning", "old", '{"group_id": "B1"}'),
        )
    storage = SqliteStorage(path)
    await storage.open()
    try:
        (row,) = await storage.findings(group="B1")
        assert (row["status"], row["first_seen"], row["last_seen"], row["seen"], row["feedback"]) == (
            "open", 1000, 1000, 1, [])
        record = {"detector": "magnet", "subject": "B1-A02", "kind": "slowed_meter", "severity": "warning",
                  "message": "new", "t": 2000, "data": {"group_id": "B1"}}
        assert await storage.record_finding(record) == (row["id"], False)
    finally:
        await storage.close()
