"""Registry edits keep closed history: parameter periods, the correction of the
past, and the audit of every change (real SQLite files, the real server over HTTP)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balans_edge.core.ingest import Ingest, IngestSettings
from balans_edge.core.intervals import IntervalWorker
from balans_edge.core.model import Meter, RadioModule, RawReading, Resource
from balans_edge.core.periods import MeterPeriod, RegisterTable, corrected
from balans_edge.core.registry import RegistryError, import_registry
from balans_edge.core.storage.base import AuditQuery
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.core.storage.sqlite_migrations import migrate
from balans_edge.core.times import iso

from conftest import T0, auth, base_config, small_site

H = 3600
DAY = 86400
BIN = Path(sys.executable).parent


def push(module: int, channel: int, hours: range, per_hour: int, start: int = 0, t0: int = T0) -> list[dict]:
    return [{"module_id": module, "channel": channel, "ts": t0 + h * H, "counter": start + per_hour * h}
            for h in hours]


async def started(make_server, client_for, tmp_path: Path):
    server = await make_server(base_config(tmp_path))
    await server.storage.registry_apply(small_site())
    return server, client_for(server)


async def ingest(c, readings: list[dict]) -> dict:
    r = await c.post("/api/v1/readings", json={"readings": readings}, headers=auth("operator"))
    assert r.status_code == 200, r.text
    return r.json()


async def days(c, meter_id: str, t0: int, t1: int) -> list[float | None]:
    r = await c.get(f"/api/v1/meters/{meter_id}/consumption",
                    params={"from": iso(t0), "to": iso(t1), "step": "day"}, headers=auth("viewer"))
    assert r.status_code == 200, r.text
    return [p["value"] for p in r.json()["points"]]


async def registers(c, meter_id: str, t0: int, t1: int) -> dict[int, float]:
    r = await c.get(f"/api/v1/meters/{meter_id}/readings", params={"from": iso(t0), "to": iso(t1)},
                    headers=auth("viewer"))
    assert r.status_code == 200, r.text
    return {p["t"]: p["value"] for p in r.json()["readings"]}


async def put_meter(c, meter_id: str, **changes) -> object:
    meter = (await c.get(f"/api/v1/meters/{meter_id}", headers=auth("viewer"))).json()
    return await c.put(f"/api/v1/meters/{meter_id}", json={**meter, **changes}, headers=auth("admin"))


# -- a pulse weight change ------------------------------------------------------------------


async def test_a_weight_change_keeps_past_days_and_values_new_readings(make_server, client_for, tmp_path):
    _, c = await started(make_server, client_for, tmp_path)
    await ingest(c, push(1001, 1, range(49), 100))  # 100 pulses/h x 0.001 m3 = 0.1 m3/h, two days
    assert await days(c, "W-1", T0, T0 + 2 * DAY) == pytest.approx([2.4, 2.4])
    before = await registers(c, "W-1", T0, T0 + 2 * DAY + 1)

    change = T0 + 48 * H + 1800
    r = await put_meter(c, "W-1", pulse_weight=0.01, effective_from=iso(change))
    assert r.status_code == 200, r.text
    assert r.json()["pulse_weight"] == 0.01
    await ingest(c, push(1001, 1, range(49, 73), 100))

    # The closed days are as they were; the new day counts 100 pulses x 0.01 m3 per hour.
    assert await days(c, "W-1", T0, T0 + 3 * DAY) == pytest.approx([2.4, 2.4, 24.0])
    after = await registers(c, "W-1", T0, T0 + 3 * DAY + 1)
    assert {t: after[t] for t in before} == before
    # The register continues from its value at the change: 4.8 m3, then +1 m3 an hour.
    assert after[iso(T0 + 48 * H)] == pytest.approx(4.8)
    assert after[iso(T0 + 49 * H)] == pytest.approx(5.8)
    assert after[iso(T0 + 72 * H)] == pytest.approx(4.8 + 24 * 1.0)

    periods = (await c.get("/api/v1/meters/W-1/periods", headers=auth("viewer"))).json()["periods"]
    assert [(p["valid_from"], p["pulse_weight"]) for p in periods] == [(iso(T0 - DAY), 0.001), (iso(change), 0.01)]
    entry = (await c.get("/api/v1/registry/audit", params={"kind": "meters", "id": "W-1"},
                         headers=auth("viewer"))).json()["audit"][0]
    assert (entry["action"], entry["who"], entry["effective_from"]) == ("update", "api:test-admin", iso(change))
    assert (entry["before"]["pulse_weight"], entry["after"]["pulse_weight"]) == (0.001, 0.01)


async def test_an_edit_cannot_reach_into_stored_readings(make_server, client_for, tmp_path):
    server, c = await started(make_server, client_for, tmp_path)
    await ingest(c, push(1001, 1, range(10), 100))
    r = await put_meter(c, "W-1", pulse_weight=0.01, effective_from=iso(T0 + 5 * H))
    assert r.status_code == 422
    assert "effective_from" in r.text and "correction" in r.text
    future = await put_meter(c, "W-1", pulse_weight=0.01, effective_from="2100-01-01T00:00:00Z")
    assert future.status_code == 422 and "future" in future.text
    assert (await server.storage.registry_get("meters", "W-1")).pulse_weight == 0.001
    audit = await c.get("/api/v1/registry/audit", params={"id": "W-1", "action": "update"}, headers=auth("viewer"))
    assert audit.json()["audit"] == []


# -- a group move --------------------------------------------------------------------------


async def balance(c, group_id: str, t0: int, t1: int) -> list[tuple[float | None, float]]:
    r = await c.get(f"/api/v1/groups/{group_id}/balance", params={"from": iso(t0), "to": iso(t1)},
                    headers=auth("viewer"))
    assert r.status_code == 200, r.text
    return [(p["input"], p["consumed"]) for p in r.json()["points"]]


async def test_a_group_move_keeps_past_balances_and_moves_new_hours(make_server, client_for, tmp_path):
    _, c = await started(make_server, client_for, tmp_path)
    admin = auth("admin")
    for gid, inlet in (("G1", "W-3"), ("G2", "W-2")):
        body = {"group_id": gid, "resource": "water", "unit": "m3", "inputs": [inlet]}
        assert (await c.put(f"/api/v1/groups/{gid}", json=body, headers=admin)).status_code == 201
    assert (await put_meter(c, "W-1", group_id="G1")).status_code == 200  # no readings yet: from installation
    await ingest(c, push(1001, 1, range(25), 100) + push(1002, 3, range(25), 50) + push(1001, 2, range(25), 300))
    past = await balance(c, "G1", T0, T0 + DAY), await balance(c, "G2", T0, T0 + DAY)
    assert past[0][0] == pytest.approx((0.5, 0.1))  # W-3 in, W-1 consumed
    assert past[1][0] == pytest.approx((0.3, 0.0))

    assert (await put_meter(c, "W-1", group_id="G2", effective_from=iso(T0 + 24 * H + 600))).status_code == 200
    await ingest(c, push(1001, 1, range(25, 49), 100) + push(1002, 3, range(25, 49), 50)
                 + push(1001, 2, range(25, 49), 300))
    assert (await balance(c, "G1", T0, T0 + DAY), await balance(c, "G2", T0, T0 + DAY)) == past
    # From the hour of the move on, W-1 counts in G2 and no longer in G1.
    g1, g2 = await balance(c, "G1", T0 + 25 * H, T0 + 48 * H), await balance(c, "G2", T0 + 25 * H, T0 + 48 * H)
    assert [x for pair in g1 for x in pair] == pytest.approx([0.5, 0.0] * 23)
    assert [x for pair in g2 for x in pair] == pytest.approx([0.3, 0.1] * 23)


# -- a module swap -----------------------------------------------------------------------


async def test_readings_follow_the_module_of_their_time_even_back_filled(storage: SqliteStorage):
    t0 = T0
    await storage.registry_apply({
        "modules": [RadioModule(1, channels=1), RadioModule(2, channels=1)],
        "meters": [Meter("A", Resource.WATER, "m3", 0.001, t0 - DAY, module_id=1, channel=1)],
    })
    ingest_ = Ingest(storage, IngestSettings(registry_check_s=0), clock=lambda: t0 + 10 * DAY)
    intervals = IntervalWorker(storage)
    await ingest_.ingest([RawReading(1, 1, t0 + h * H, 100 * h) for h in range(11)])
    await intervals.process()

    # At 10:30 meter A moves to module 2 (counter 5000 then); meter B takes module 1 (counter 1050).
    swap = t0 + 10 * H + 1800
    a = await storage.registry_get("meters", "A")
    await storage.registry_apply({"meters": [Meter("A", Resource.WATER, "m3", 0.001, a.install_time, module_id=2,
                                                   channel=1, base_counter=5000)]}, effective_from={"A": swap})
    await storage.registry_apply({"meters": [Meter("B", Resource.WATER, "m3", 0.001, swap, module_id=1, channel=1,
                                                   base_counter=1050)]})
    await ingest_.ingest([RawReading(1, 1, t0 + h * H, 100 * h) for h in range(11, 14)]
                         + [RawReading(2, 1, t0 + h * H, 5000 + 200 * (h - 10)) for h in range(11, 14)])
    await ingest_.ingest([RawReading(2, 1, t0 + 9 * H, 4900)])  # module 2 was nobody's then
    # A profile reading of module 1 from before the swap arrives late: it is A's.
    late = await ingest_.ingest([RawReading(1, 1, t0 + 10 * H + 900, 1025)])
    assert late.accepted == 1
    await intervals.process()

    keys = await storage.meter_keys()
    a_rows = await storage.readings(keys["A"], 0, 2**40)
    b_rows = await storage.readings(keys["B"], 0, 2**40)
    assert dict(zip(a_rows.ts.tolist(), a_rows.pulses.tolist(), strict=True)) == {
        **{t0 + h * H: 100 * h for h in range(11)}, t0 + 10 * H + 900: 1025,
        **{t0 + h * H: 1025 + 200 * (h - 10) for h in range(11, 14)}}
    assert dict(zip(b_rows.ts.tolist(), b_rows.pulses.tolist(), strict=True)) == {
        t0 + h * H: 100 * h - 1050 for h in range(11, 14)}
    assert [(q["module_id"], q["reason"]) for q in await storage.quarantine()] == [(2, "before_install")]
    # A's register runs on across the swap, from the pulses of its last reading before it.
    table = await storage.register_table([keys["A"]])
    values = table.values(a_rows.meter, a_rows.ts, a_rows.pulses)
    assert values[-4:] == pytest.approx([1.025, 1.225, 1.425, 1.625])
    hours = [v for _, v, _ in await storage.hourly(keys["A"], t0 + 9 * H, t0 + 13 * H)]
    assert hours == pytest.approx([0.1, 0.225, 0.2, 0.2])


# -- corrections ---------------------------------------------------------------------------


async def test_a_correction_changes_the_past_and_is_audited(make_server, client_for, tmp_path):
    server, c = await started(make_server, client_for, tmp_path)
    await ingest(c, push(1001, 1, range(49), 100))
    assert await days(c, "W-1", T0, T0 + 2 * DAY) == pytest.approx([2.4, 2.4])
    body = {"from": iso(T0 - DAY), "changes": {"pulse_weight": 0.01}, "reason": "pulse weight wrong since installation"}
    assert (await c.post("/api/v1/meters/W-1/corrections", json=body, headers=auth("operator"))).status_code == 403
    no_reason = await c.post("/api/v1/meters/W-1/corrections", json={**body, "reason": " "}, headers=auth("admin"))
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    wiring = {**body, "changes": {"module_id": 1002}}
    assert (await c.post("/api/v1/meters/W-1/corrections", json=wiring, headers=auth("admin"))).status_code == 422

    r = await c.post("/api/v1/meters/W-1/corrections", json=body, headers=auth("admin"))
    assert r.status_code == 200, r.text
    assert [p["pulse_weight"] for p in r.json()["before"]] == [0.001]
    assert [p["pulse_weight"] for p in r.json()["after"]] == [0.01]
    assert await days(c, "W-1", T0, T0 + 2 * DAY) == pytest.approx([24.0, 24.0])
    assert (await registers(c, "W-1", T0, T0 + 2 * DAY + 1))[iso(T0 + 48 * H)] == pytest.approx(48.0)
    assert (await server.storage.registry_get("meters", "W-1")).pulse_weight == 0.01

    # A correction of part of the past: the second day only, back to 0.001.
    part = {"from": iso(T0 + DAY), "to": iso(T0 + 2 * DAY), "changes": {"pulse_weight": 0.001}, "reason": "day 2"}
    assert (await c.post("/api/v1/meters/W-1/corrections", json=part, headers=auth("admin"))).status_code == 200
    assert await days(c, "W-1", T0, T0 + 2 * DAY) == pytest.approx([24.0, 2.4])

    audit = (await c.get("/api/v1/registry/audit", params={"action": "correct"}, headers=auth("viewer"))).json()
    newest, first = audit["audit"]
    assert (first["who"], first["reason"], first["effective_from"], first["effective_to"]) == (
        "api:test-admin", "pulse weight wrong since installation", iso(T0 - DAY), None)
    assert (newest["effective_from"], newest["effective_to"]) == (iso(T0 + DAY), iso(T0 + 2 * DAY))
    assert [p["pulse_weight"] for p in newest["after"]] == [0.01, 0.001, 0.01]


# -- the audit -----------------------------------------------------------------------------


async def test_every_kind_of_change_is_audited_with_before_after_and_who(make_server, client_for, tmp_path):
    server = await make_server(base_config(tmp_path))
    c = client_for(server)
    admin = auth("admin")
    objects = {
        "concentrators": ("7", {"concentrator_id": 7, "name": "C7"}, {"name": "C7 north"}),
        "modules": ("1001", {"module_id": 1001, "concentrator_id": 7, "channels": 1}, {"channels": 3}),
        "accounts": ("A-1", {"account_id": "A-1", "consumer": "Flat 1"}, {"consumer": "Flat 1a"}),
        "meters": ("W-9", {"meter_id": "W-9", "resource": "water", "unit": "m3", "pulse_weight": 0.001,
                           "install_time": "2014-01-01T00:00:00Z", "module_id": 1001, "channel": 1},
                   {"flags": ["valve"]}),
        "groups": ("G", {"group_id": "G", "resource": "water", "unit": "m3", "inputs": ["W-9"]}, {"name": "House"}),
    }
    for kind, (_, body, _) in objects.items():
        assert (await c.post(f"/api/v1/{kind}", json=body, headers=admin)).status_code == 201
    for kind, (key, body, change) in objects.items():
        assert (await c.put(f"/api/v1/{kind}/{key}", json={**body, **change}, headers=admin)).status_code == 200
    for kind, (key, _, _) in reversed(objects.items()):
        assert (await c.delete(f"/api/v1/{kind}/{key}", headers=admin)).status_code == 200, kind

    rows = (await c.get("/api/v1/registry/audit", params={"limit": 1000}, headers=auth("viewer"))).json()["audit"]
    assert len(rows) == 15 and {r["who"] for r in rows} == {"api:test-admin"}
    for kind, (key, body, change) in objects.items():
        mine = {r["action"]: r for r in rows if r["kind"] == kind and r["object_id"] == key}
        assert set(mine) == {"create", "update", "delete"}, kind
        assert mine["create"]["before"] is None and mine["delete"]["after"] is None
        (name, value), = change.items()
        assert mine["update"]["after"][name] == value and mine["update"]["before"][name] != value
        assert mine["update"]["before"] == mine["create"]["after"] == {**mine["create"]["after"], **body}
        assert mine["delete"]["before"] == mine["update"]["after"]
    assert (await c.get("/api/v1/registry/audit", params={"limit": 1001}, headers=auth("viewer"))).status_code == 400
    assert (await c.delete("/api/v1/registry/audit", headers=admin)).status_code in (404, 405)
    await server.stop()

    # Not editable at all, not even in SQL.
    db = sqlite3.connect(tmp_path / "balans.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE registry_audit SET who = 'someone else'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM registry_audit")
    db.close()


async def test_configured_groups_are_audited_as_config(make_server, tmp_path):
    server = await make_server(base_config(tmp_path))
    await server.storage.registry_apply(small_site())
    await server.stop()
    config = base_config(tmp_path)
    config["groups"] = [{"group_id": "CFG", "resource": "water", "unit": "m3", "inputs": ["W-1"]}]
    again = await make_server(config)
    rows = await again.storage.registry_audit(AuditQuery(kind="groups"))
    assert [(r["who"], r["action"], r["object_id"]) for r in rows] == [("config", "create", "CFG")]


def test_import_and_audit_from_the_command_line(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:{tmp_path / "db.sqlite"}"\n')
    examples = sorted(str(p) for p in Path("config/registry").glob("*.csv"))
    run = lambda *a: subprocess.run([BIN / "balans-edge", *a], capture_output=True, text=True, timeout=60)  # noqa: E731
    assert run("registry", "import", "-c", str(cfg), *examples).returncode == 0
    out = run("registry", "audit", "-c", str(cfg), "--json", "--limit", "1000")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows and all(r["who"].startswith("cli:") and r["action"] == "create" for r in rows)
    assert {r["kind"] for r in rows} >= {"concentrators", "modules", "meters"}

    fixed = run("registry", "correct", "-c", str(cfg), "HW-001", "--from", "2024-01-15T09:00:00Z",
                "--set", "pulse_weight=0.001", "--reason", "1 pulse per litre, not 10")
    assert fixed.returncode == 0, fixed.stderr
    periods = run("registry", "periods", "-c", str(cfg), "HW-001")
    assert [json.loads(line)["pulse_weight"] for line in periods.stdout.splitlines()] == [0.001]
    refused = run("registry", "correct", "-c", str(cfg), "HW-001", "--from", "2024-01-15T09:00:00Z",
                  "--set", "channel=3", "--reason", "x")
    assert refused.returncode == 1 and "cannot be corrected" in refused.stderr
    audit = run("registry", "audit", "-c", str(cfg), "--action", "correct", "--id", "HW-001")
    assert audit.returncode == 0 and "1 pulse per litre, not 10" in audit.stdout and " cli:" in audit.stdout


async def test_import_is_all_or_nothing_with_its_audit(storage: SqliteStorage, tmp_path):
    await storage.registry_apply(small_site())
    keys = await storage.meter_keys()
    ingest_ = Ingest(storage, IngestSettings(registry_check_s=0), clock=lambda: T0 + 10 * DAY)
    await ingest_.ingest([RawReading(1001, 1, T0 + h * H, 10 * h) for h in range(5)])
    head = "meter_id,resource,unit,pulse_weight,install_time,module_id,channel,effective_from\n"
    good = f"W-2,water,m3,0.01,{iso(T0 - DAY)},1001,2,\n"
    into_history = f"W-1,water,m3,0.01,{iso(T0 - DAY)},1001,1,{iso(T0 + 2 * H)}\n"
    (tmp_path / "meters.csv").write_text(head + good + into_history)
    with pytest.raises(RegistryError) as refused:
        await import_registry(storage, [tmp_path / "meters.csv"], who="cli:test")
    assert [(p.line, p.column) for p in refused.value.problems] == [(3, "effective_from")]
    assert "correction" in refused.value.problems[0].message
    assert await storage.registry_audit(AuditQuery(who="cli:test")) == []
    assert (await storage.registry_get("meters", "W-2")).pulse_weight == 0.001

    later = f"W-1,water,m3,0.01,{iso(T0 - DAY)},1001,1,{iso(T0 + 5 * H)}\n"
    (tmp_path / "meters.csv").write_text(head + good + later)
    report = await import_registry(storage, [tmp_path / "meters.csv"], who="cli:test")
    assert report.updated == 2
    periods = await storage.meter_periods([keys["W-1"]])
    assert [(p.valid_from, p.pulse_weight, p.anchor_pulses) for p in periods[keys["W-1"]]] == [
        (T0 - DAY, 0.001, 0), (T0 + 5 * H, 0.01, 40)]


# -- migration -------------------------------------------------------------------------------


async def test_migration_from_version_10_keeps_history(tmp_path):
    import aiosqlite

    path = tmp_path / "old.db"
    async with aiosqlite.connect(path, isolation_level=None) as db:
        assert await migrate(db, target=10) == 10
        await db.execute("INSERT INTO modules (module_id, channels) VALUES (1001, 7)")
        await db.execute("INSERT INTO meters (id, meter_id, resource, unit, pulse_weight, install_time, module_id, "
                         "channel, base_reading, group_id) VALUES (1, 'W-1', 'water', 'm3', 0.001, ?, 1001, 1, 5.0, "
                         "NULL)", (T0 - DAY,))
        await db.executemany("INSERT INTO readings VALUES (1, ?, ?, ?, 0, 0)",
                             [(T0 + h * H, 100 * h, 100 * h) for h in range(25)])
        await db.executemany("INSERT INTO consumption_hourly VALUES (1, ?, 0.1, 0)", [(T0 + h * H,) for h in range(24)])
    storage = SqliteStorage(path)
    await storage.open()
    try:
        assert await storage.schema_version() >= 11
        periods = await storage.meter_periods()
        assert [(p.valid_from, p.pulse_weight, p.base_reading, p.module_id, p.channel) for p in periods[1]] == [
            (T0 - DAY, 0.001, 5.0, 1001, 1)]
        assert await storage.take_dirty() == []
        w1 = await storage.registry_get("meters", "W-1")
        import dataclasses

        await storage.registry_apply({"meters": [dataclasses.replace(w1, pulse_weight=0.01)]})
        assert await storage.take_dirty() == []  # 0004's whole-history recomputation is gone
        assert [v for _, v, _ in await storage.hourly(1, T0, T0 + DAY)] == pytest.approx([0.1] * 24)
        rows = await storage.readings(1, 0, 2**40)
        values = (await storage.register_table()).values(rows.meter, rows.ts, rows.pulses)
        assert values[-1] == pytest.approx(5.0 + 2400 * 0.001)  # the stored history keeps its weight
        audit = await storage.registry_audit(AuditQuery())
        assert [(r["action"], r["before"]["pulse_weight"], r["after"]["pulse_weight"]) for r in audit] == [
            ("update", 0.001, 0.01)]
    finally:
        await storage.close()


# -- the register formula ------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 1000)), min_size=2, max_size=40),
       changes=st.lists(st.tuples(st.integers(0, 200_000), st.sampled_from([0.001, 0.01, 0.1, 1.0])), max_size=5),
       base=st.floats(0, 1e6))
def test_the_register_is_continuous_and_its_steps_are_consumption(steps, changes, base):
    """With anchors at the last reading before each change (as storage keeps them),
    consecutive register values differ by the pulses times the weight that hourly
    consumption uses (``increment_weights``): no jump at a weight change."""
    ts = np.cumsum([s[0] for s in steps]).astype(np.int64)
    pulses = np.cumsum([s[1] for s in steps]).astype(np.int64)
    periods = [MeterPeriod(0, 0.5, base)]
    for t, w in sorted(set(changes)):
        if t > periods[-1].valid_from:
            before = pulses[ts <= t]
            periods.append(MeterPeriod(t, w, base, anchor_pulses=int(before[-1]) if len(before) else 0))
    table = RegisterTable({7: periods})
    values = table.values(np.full(len(ts), 7), ts, pulses)
    weights = table.increment_weights(7, ts)
    if len(periods) == 1 or ts[0] < periods[1].valid_from:
        assert values[0] == pytest.approx(base + pulses[0] * 0.5)
    assert np.diff(values) == pytest.approx(np.diff(pulses) * weights[1:], rel=1e-9, abs=1e-6)


def test_a_correction_splits_and_merges_periods():
    periods = [MeterPeriod(0, 0.001), MeterPeriod(100, 0.01)]
    assert corrected(periods, {"pulse_weight": 0.01}, 0) == [MeterPeriod(0, 0.01)]
    assert corrected(periods, {"pulse_weight": 0.1}, 50, 150) == [
        MeterPeriod(0, 0.001), MeterPeriod(50, 0.1), MeterPeriod(150, 0.01)]
    assert corrected(periods, {"group_id": "G"}, 100) == [MeterPeriod(0, 0.001), MeterPeriod(100, 0.01, group_id="G")]
    for bad, message in (({"module_id": 5}, "cannot be corrected"), ({}, "nothing to correct")):
        with pytest.raises(ValueError, match=message):
            corrected(periods, bad, 0)
    with pytest.raises(ValueError, match="installation"):
        corrected(periods, {"pulse_weight": 1.0}, -1)
