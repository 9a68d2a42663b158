"""Bounded text and tables: free text at most 4 KiB, a quarantine that ages out
and is capped (counted when it drops), a replay in pages, and CSV cells a
spreadsheet does not run as formulas while the registry still re-imports equal."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balans_edge.core.ingest import REPLAY_CHUNK, IngestSettings
from balans_edge.core.model import Account, Concentrator, RadioModule
from balans_edge.core.quarantine import QuarantineRetention
from balans_edge.core.registry import export_registry, import_registry
from balans_edge.core.spreadsheet import TRIGGERS, read_cell, safe_cell
from balans_edge.core.storage import IngestWrite
from balans_edge.core.text import MAX_TEXT_BYTES
from balans_edge.plugins.modbus.regmap import MapRow, to_csv

from conftest import T0, auth, base_config, eventually, small_site

BIG = "x" * (5 * 1024 * 1024)
FITS = "я" * (MAX_TEXT_BYTES // 2)  # 4096 bytes of UTF-8
ONE_TOO_MANY = FITS + "x"


# -- free text ------------------------------------------------------------------------


async def test_free_text_is_bounded_and_the_refusal_names_the_field(make_server, client_for, tmp_path):
    server = await make_server(base_config(tmp_path))
    await server.storage.registry_apply(small_site())
    http = client_for(server)
    finding_id, _ = await server.storage.record_finding(
        {"detector": "d", "subject": "W-1", "kind": "k", "severity": "info", "message": "m", "t": T0})

    for note, status in ((BIG, 400), (ONE_TOO_MANY, 400), (FITS, 200)):
        r = await http.patch(f"/api/v1/findings/{finding_id}", json={"status": "acknowledged", "note": note},
                             headers=auth("operator"))
        assert r.status_code == status, r.text[:300]
        if status == 400:
            assert r.json()["error"]["message"].startswith(f"note: at most {MAX_TEXT_BYTES} bytes of text (UTF-8)")
    stored = await server.storage.finding(finding_id)
    assert [f["note"] for f in stored["feedback"]] == [FITS]

    for reason in (BIG, ONE_TOO_MANY):
        r = await http.post("/api/v1/meters/W-1/commands", json={"command": "valve_close", "reason": reason},
                            headers=auth("operator"))
        assert r.status_code == 400, r.text[:300]
        assert r.json()["error"]["message"].startswith(f"reason: at most {MAX_TEXT_BYTES} bytes")
    assert await server.storage.journal_list("commands") == []

    # A correction of a meter's past holds its reason to the same bound, counted in bytes.
    correction = {"from": "2014-01-20T00:00:00Z", "changes": {"pulse_weight": 0.01}, "reason": ONE_TOO_MANY}
    r = await http.post("/api/v1/meters/W-1/corrections", json=correction, headers=auth("admin"))
    assert r.status_code == 422, r.text[:300]
    assert f'column "reason": at most {MAX_TEXT_BYTES} bytes' in r.json()["error"]["message"]
    assert (await server.storage.registry_get("meters", "W-1")).pulse_weight != 0.01

    for column in ("consumer", "contact", "tariff_plan", "address"):
        r = await http.put("/api/v1/accounts/A-2", json={column: ONE_TOO_MANY}, headers=auth("admin"))
        assert r.status_code == 422, r.text[:300]
        assert f'column "{column}": at most {MAX_TEXT_BYTES} bytes' in r.json()["error"]["message"]
    assert (await http.put("/api/v1/accounts/A-2", json={"address": FITS}, headers=auth("admin"))).status_code == 201


# -- the quarantine -----------------------------------------------------------------------


def unknown(module: int, count: int, received_at: int, t0: int = T0) -> IngestWrite:
    return IngestWrite(quarantine=[(module, 1, t0 + i * 60, i, 0, "unknown_module") for i in range(count)],
                       received_at=received_at)


async def test_quarantine_ages_out_and_is_capped_counting_what_it_drops(storage):
    day = 86400
    now = T0 + 200 * day
    await storage.commit_ingest(unknown(5001, 30, now - 100 * day))  # older than the 90 days kept
    await storage.commit_ingest(unknown(5002, 1200, now - 10 * day))
    await storage.commit_ingest(unknown(5003, 300, now - day))
    retention = QuarantineRetention(storage, IngestSettings(quarantine_max_rows=1000), clock=lambda: now)

    assert await retention.prune() == {"age": 30, "size": 500}
    stats = await storage.quarantine_stats()
    assert stats["rows"] == 1000 and stats["dropped"] == {"age": 30, "size": 500}
    kept = await storage.quarantine(10_000)
    assert {r["module_id"] for r in kept} == {5002, 5003}
    assert sum(r["module_id"] == 5003 for r in kept) == 300  # the newest received stay, the oldest go first
    assert await retention.prune() == {"age": 0, "size": 0}
    assert (await storage.quarantine_stats())["dropped"] == {"age": 30, "size": 500}  # counted, never reset


async def test_quarantine_bounds_are_held_by_the_running_server(make_server, client_for, tmp_path):
    server = await make_server(base_config(tmp_path, ingest={"quarantine_max_rows": 1000,
                                                             "quarantine_check_s": 0.05}))
    http = client_for(server)
    rows = [{"module_id": 9000 + i // 100, "channel": 1, "ts": T0 + i % 100 * 60, "counter": i} for i in range(1500)]
    assert (await http.post("/api/v1/readings", json={"readings": rows},
                            headers=auth("operator"))).json()["quarantined"] == 1500

    async def capped() -> dict | None:
        body = (await http.get("/api/v1/quarantine?limit=10", headers=auth("viewer"))).json()
        return body if body["total"] == 1000 else None

    body = await eventually(capped, timeout=10)
    assert body is not None
    assert body["dropped"] == {"age": 0, "size": 500}
    assert (body["max_rows"], body["max_age_days"], len(body["readings"])) == (1000, 90, 10)
    too_many = await http.get("/api/v1/quarantine?limit=10001", headers=auth("viewer"))
    assert too_many.status_code == 400 and "limit: expected an integer 1..10000" in too_many.text


async def test_replay_works_in_pages_and_reaches_every_claimable_reading(make_server, tmp_path):
    server = await make_server(base_config(tmp_path), http=False)
    site = small_site()
    await server.storage.registry_apply(site)
    # Module 1001 is registered (its readings are claimed now); 1 and 8000 are not and stay.
    await server.storage.commit_ingest(unknown(8000, 7, T0 + 99))
    await server.storage.commit_ingest(unknown(1001, 12, T0 - 5))
    await server.storage.commit_ingest(unknown(1, 4, T0 + 50))
    steps = []
    ingest = server.ingest.ingest

    async def counted(batch, **kw):
        steps.append(len(batch))
        return await ingest(batch, **kw)

    server.ingest.ingest = counted
    result = await server.ingest.replay_quarantine(chunk=5)
    assert result.accepted == 12
    assert steps == [5, 5, 5, 5, 3]  # every page its own transaction, none larger than the chunk
    assert sorted({r["module_id"] for r in await server.storage.quarantine(100)}) == [1, 8000]
    assert REPLAY_CHUNK == 10_000


# -- CSV cells -------------------------------------------------------------------------------


@given(st.text())
def test_safe_cells_read_back_equal_and_never_start_a_formula(text):
    cell = safe_cell(text)
    assert read_cell(cell) == text
    assert not cell.startswith(TRIGGERS)


@pytest.mark.parametrize(("text", "cell"), [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+7 900", "'+7 900"), ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"), ("'quoted", "''quoted"), ("Иванов", "Иванов"),
])
def test_cells_a_spreadsheet_would_run_are_escaped(text, cell):
    assert safe_cell(text) == cell


async def test_registry_export_escapes_text_cells_and_reimports_equal(storage, tmp_path: Path):
    hostile = {
        "concentrators": [Concentrator(1, name="=cmd|' /C calc'!A0", site="@SUM(1+1)", description="-2+3")],
        "modules": [RadioModule(100, 1, channels=1, rssi=-71, hops=2)],
        "accounts": [Account("=A1", consumer="=HYPERLINK(\"http://evil\")", contact="+7 900 000-00-01",
                             address="'already quoted", area_m2=54.3)],
    }
    await storage.registry_apply(hostile)
    paths = await export_registry(storage, tmp_path / "out", "csv")
    cells = {p.stem: list(csv.reader(io.StringIO(p.read_text(encoding="utf-8")))) for p in paths}
    assert cells["concentrators"][1] == ["1", "'=cmd|' /C calc'!A0", "'@SUM(1+1)", "'-2+3"]
    assert cells["modules"][1][cells["modules"][0].index("rssi")] == "-71"  # a number stays a number
    account = dict(zip(cells["accounts"][0], cells["accounts"][1], strict=True))
    assert (account["account_id"], account["consumer"], account["contact"], account["address"]) == (
        "'=A1", "'=HYPERLINK(\"http://evil\")", "'+7 900 000-00-01", "''already quoted")
    report = await import_registry(storage, paths)
    assert (report.created, report.updated) == (0, 0)
    assert await storage.registry_list("accounts") == hostile["accounts"]


def test_modbus_map_csv_escapes_text_cells():
    row = MapRow(12, "holding", "meter:=1+2", "=1+2/value", "float32", "ABCD", 2, "m3", "no", "-reading")
    lines = list(csv.reader(io.StringIO(to_csv([row]))))
    assert lines[1] == ["12", "holding", "meter:=1+2", "'=1+2/value", "float32", "ABCD", "2", "m3", "no",
                        "'-reading"]
