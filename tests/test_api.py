"""The HTTP API v1 against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balans_edge.core.model import Status

from conftest import T0, auth, base_config, small_site


async def started(make_server, tmp_path: Path, **sections):
    server = await make_server(base_config(tmp_path, **sections))
    await server.storage.registry_apply(small_site())
    return server


def reading(module: int, channel: int, ts: int, counter: int, status: int = 0) -> dict:
    return {"module_id": module, "channel": channel, "ts": ts, "counter": counter, "status": status}


async def test_health_is_public_and_reports_state(make_server, client_for, tmp_path):
    server = await started(make_server, tmp_path)
    anonymous = await client_for(server).get("/api/v1/health")
    assert anonymous.status_code == 200
    assert anonymous.json() == {"status": "ok"}  # the rest maps the box for whoever asks: a viewer's
    r = await client_for(server).get("/api/v1/health", headers=auth("viewer"))
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["storage"]["schema_version"] == await server.storage.schema_version()
    assert body["plugins"]["dmesh"] == "started"


async def test_authentication_and_roles(make_server, client_for, tmp_path):
    server = await started(make_server, tmp_path)
    c = client_for(server)
    assert (await c.get("/api/v1/meters")).status_code == 401
    bad = await c.get("/api/v1/meters", headers={"Authorization": "Bearer not-a-token-at-all"})
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "unauthorized"
    assert (await c.get("/api/v1/meters", headers=auth("viewer"))).status_code == 200
    denied = await c.put("/api/v1/accounts/A-9", json={"consumer": "x"}, headers=auth("viewer"))
    assert denied.status_code == 403
    assert "admin" in denied.json()["error"]["message"]
    assert (await c.post("/api/v1/readings", json={"readings": []}, headers=auth("viewer"))).status_code == 403
    assert (await c.post("/api/v1/readings", json={"readings": []}, headers=auth("operator"))).status_code == 200


async def test_registry_crud(make_server, client_for, tmp_path):
    server = await started(make_server, tmp_path)
    c = client_for(server)
    admin = auth("admin")
    meters = (await c.get("/api/v1/meters", headers=auth("viewer"))).json()["meters"]
    assert [m["meter_id"] for m in meters] == ["W-1", "W-2", "W-3"]

    new = {"meter_id": "W-4", "resource": "water", "unit": "m3", "pulse_weight": 0.001,
           "install_time": "2014-01-01T00:00:00Z", "module_id": 1001}
    bad = await c.post("/api/v1/meters", json=new, headers=admin)
    assert bad.status_code == 422  # module without channel
    assert "channel" in bad.json()["error"]["message"]
    new["channel"] = 3  # not wired in module 1001 (mask 0b011)
    bad = await c.post("/api/v1/meters", json=new, headers=admin)
    assert bad.status_code == 422
    new["module_id"] = 1002
    created = await c.post("/api/v1/meters", json=new, headers=admin)
    assert created.status_code == 422  # W-3 already owns module 1002 channel 3
    new.update(module_id=None, channel=None)
    created = await c.post("/api/v1/meters", json=new, headers=admin)
    assert created.status_code == 201, created.text
    assert (await c.post("/api/v1/meters", json=new, headers=admin)).status_code == 409

    got = await c.get("/api/v1/meters/W-4", headers=auth("viewer"))
    assert got.json()["install_time"] == "2014-01-01T00:00:00Z"
    put = await c.put("/api/v1/meters/W-4", json={**new, "pulse_weight": 0.01}, headers=admin)
    assert put.status_code == 200
    assert (await server.storage.registry_get("meters", "W-4")).pulse_weight == 0.01

    # a module still referenced by meters cannot go; an unused account can
    assert (await c.delete("/api/v1/modules/1001", headers=admin)).status_code == 409
    await c.put("/api/v1/accounts/A-9", json={"consumer": "Flat 9"}, headers=admin)
    assert (await c.delete("/api/v1/accounts/A-9", headers=admin)).status_code == 200
    assert (await c.get("/api/v1/accounts/A-9", headers=auth("viewer"))).status_code == 404
    assert (await c.get("/api/v1/modules/abc", headers=auth("viewer"))).status_code == 400


async def test_meter_with_readings_cannot_be_deleted(make_server, client_for, tmp_path):
    server = await started(make_server, tmp_path)
    c = client_for(server)
    await c.post("/api/v1/readings", json={"readings": [reading(1001, 1, T0, 5)]}, headers=auth("operator"))
    r = await c.delete("/api/v1/meters/W-1", headers=auth("admin"))
    assert r.status_code == 409
    assert "removed_time" in r.json()["error"]["message"]


async def test_push_readings_and_consumption(make_server, client_for, tmp_path):
    server = await started(make_server, tmp_path)
    c = client_for(server)
    rows = [reading(1001, 1, T0 + i * 900, 1000 + i * 250) for i in range(0, 13)]  # every 15 min, 3 h
    rows.append(reading(4242, 1, T0, 1))  # unknown module
    r = await c.post("/api/v1/readings", json={"readings": rows}, headers=auth("operator"))
    assert r.status_code == 200
    assert r.json() == {"accepted": 13, "duplicates": 0, "conflicts": 0, "quarantined": 1, "rejected": {},
                        "resets": 0}
    again = await c.post("/api/v1/readings", json={"readings": rows}, headers=auth("operator"))
    assert again.json()["duplicates"] == 13

    v = auth("viewer")
    readings = (await c.get(f"/api/v1/meters/W-1/readings?from={T0}&to={T0 + 3600}", headers=v)).json()
    assert readings["unit"] == "m3"
    # base_counter 0: the first counter (1000 pulses of 1 l) is already 1 m3 on the register
    assert [p["value"] for p in readings["readings"]] == [1.0, 1.25, 1.5, 1.75]

    q = "from=2014-01-20T00:00:00Z&to=2014-01-20T04:00:00Z"
    hourly = (await c.get(f"/api/v1/meters/W-1/consumption?{q}&step=hour", headers=v)).json()
    assert hourly["meter_id"] == "W-1" and hourly["step"] == "hour"
    assert [p["t"] for p in hourly["points"]] == [f"2014-01-20T0{h}:00:00Z" for h in range(4)]
    assert [p["value"] for p in hourly["points"]] == [1.0, 1.0, 1.0, None]
    assert [p["quality"] for p in hourly["points"]] == ["measured"] * 3 + ["missing"]

    daily = (await c.get(f"/api/v1/meters/W-1/consumption?{q}&step=day", headers=v)).json()
    assert daily["points"] == [{"t": "2014-01-20T00:00:00Z", "value": 3.0, "quality": "missing"}]

    unknown = (await c.get("/api/v1/quarantine", headers=v)).json()["readings"]
    assert [(u["module_id"], u["reason"]) for u in unknown] == [(4242, "unknown_channel")]


async def test_counter_reset_over_http_marks_hours_missing(make_server, client_for, tmp_path):
    server = await started(make_server, tmp_path)
    c = client_for(server)
    rows = [reading(1001, 2, T0 + i * 600, 5000 + i * 100) for i in range(7)]  # 00:00..01:00
    rows += [reading(1001, 2, T0 + 2 * 3600 + 600, 40, int(Status.COUNTER_RESET))]  # restart, then 40 pulses
    rows += [reading(1001, 2, T0 + 2 * 3600 + 600 + i * 600, 40 + i * 100) for i in range(1, 12)]
    r = await c.post("/api/v1/readings", json={"readings": rows}, headers=auth("operator"))
    assert r.json()["resets"] == 1
    body = (await c.get(f"/api/v1/meters/W-2/consumption?from={T0}&to={T0 + 4 * 3600}", headers=auth("viewer"))).json()
    assert [p["quality"] for p in body["points"]] == ["measured", "missing", "missing", "measured"]
    assert body["points"][0]["value"] == 0.6
    assert body["points"][1]["value"] is None
    assert body["points"][3]["value"] == 0.6


async def test_hostile_requests_get_json_errors(make_server, client_for, tmp_path):
    server = await started(make_server, tmp_path)
    c = client_for(server)
    op = auth("operator")
    cases = [
        await c.post("/api/v1/readings", content=b"{not json", headers=op),
        await c.post("/api/v1/readings", json={"readings": [{"module_id": "x"}]}, headers=op),
        await c.post("/api/v1/readings", json={"readings": [reading(1, 1, 10**30, 1)]}, headers=op),
        await c.post("/api/v1/readings", json=[1, 2], headers=op),
        await c.get("/api/v1/meters/W-1/consumption?from=yesterday&to=now", headers=op),
        await c.get("/api/v1/meters/W-1/consumption?from=2014-01-02&to=2014-01-01", headers=op),
        await c.get("/api/v1/meters/W-1/consumption?from=2014-01-01&to=2014-01-02&step=week", headers=op),
        await c.get("/api/v1/meters/W-1/consumption?from=2000-01-01&to=2014-01-02&step=hour", headers=op),
    ]
    for r in cases:
        assert r.status_code == 400, r.text
        assert set(r.json()["error"]) == {"code", "message"}
    missing = await c.get("/api/v1/meters/NOPE/consumption?from=2014-01-01&to=2014-01-02", headers=op)
    assert missing.status_code == 404
    assert "NOPE" in missing.json()["error"]["message"]
    nowhere = await c.get("/api/v1/nowhere", headers=op)
    assert nowhere.status_code == 404
    assert nowhere.json()["error"]["code"] == "not_found"
    wrong_method = await c.delete("/api/v1/health")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


async def test_body_size_limit(make_server, client_for, tmp_path):
    server = await started(make_server, tmp_path, api={"max_body_bytes": 2048})
    r = await client_for(server).post("/api/v1/readings", content=b"x" * 4096, headers=auth("operator"))
    assert r.status_code == 413


async def test_openapi_documents_every_route(make_server, client_for, tmp_path):
    server = await started(make_server, tmp_path)
    doc = (await client_for(server).get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    for route in server.routes:
        op = doc["paths"][route.openapi_path][route.method.lower()]
        assert op["summary"]
        assert ("security" in op) == (route.role is not None)
    params = doc["paths"]["/api/v1/meters/{meter_id}/consumption"]["get"]["parameters"]
    assert {p["name"] for p in params} == {"meter_id", "from", "to", "step"}


async def test_quarantine_replay_after_registration(make_server, client_for, tmp_path):
    server = await started(make_server, tmp_path)
    c = client_for(server)
    rows = [reading(2001, 1, T0 + i * 600, 100 + i * 10) for i in range(7)] + [reading(3003, 1, T0, 1)]
    first = await c.post("/api/v1/readings", json={"readings": rows}, headers=auth("operator"))
    assert first.json()["quarantined"] == 8

    admin = auth("admin")
    assert (await c.put("/api/v1/modules/2001", json={"concentrator_id": 7, "channels": 1},
                        headers=admin)).status_code == 201
    meter = {"resource": "water", "unit": "m3", "pulse_weight": 0.001, "install_time": "2014-01-01T00:00:00Z",
             "module_id": 2001, "channel": 1, "base_counter": 100}
    assert (await c.put("/api/v1/meters/W-20", json=meter, headers=admin)).status_code == 201
    assert (await c.post("/api/v1/quarantine/replay", headers=auth("operator"))).status_code == 403
    replay = (await c.post("/api/v1/quarantine/replay", headers=admin)).json()
    assert replay["accepted"] == 7
    assert replay["remaining"] == 1

    unknown = (await c.get("/api/v1/quarantine", headers=auth("viewer"))).json()["readings"]
    assert [u["module_id"] for u in unknown] == [3003]
    hours = (await c.get(f"/api/v1/meters/W-20/consumption?from={T0}&to={T0 + 3600}", headers=auth("viewer"))).json()
    assert hours["points"] == [{"t": "2014-01-20T00:00:00Z", "value": 0.06, "quality": "measured"}]
    again = (await c.post("/api/v1/quarantine/replay", headers=admin)).json()
    assert again["accepted"] == 0 and again["remaining"] == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["readings", "module_id", "channel", "ts", "counter", "status", "x"]), inner, max_size=6),
    max_leaves=20,
)


async def test_fuzzed_push_bodies_get_json_answers_never_500(make_server, client_for, tmp_path):
    """Whatever a client sends, the answer is 200 or a JSON 4xx, and stored data stays consistent."""
    server = await started(make_server, tmp_path)
    base = f"http://127.0.0.1:{server.http.port}"
    statuses: list[int] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(json_values)
    def post(body) -> None:
        # json.dumps writes NaN and Infinity as a careless client would
        r = httpx.post(f"{base}/api/v1/readings", content=json.dumps(body), headers=auth("operator"), timeout=30)
        statuses.append(r.status_code)
        assert r.status_code in (200, 400, 413), r.text
        if r.status_code != 200:
            assert set(r.json()["error"]) == {"code", "message"}

    await asyncio.to_thread(post)
    assert 400 in statuses
    health = (await client_for(server).get("/api/v1/health")).json()
    assert health["status"] == "ok"
