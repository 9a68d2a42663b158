"""Input that used to answer 500 answers 400 with a message naming the parameter
and, for times, the valid range; real server on 127.0.0.1."""

from __future__ import annotations

import pytest

from balans_edge.core.model import Group, GroupInput, Resource

from conftest import auth, base_config, small_site

RANGE = "1970-01-01T00:00:00Z .. 2106-02-07T06:28:15Z"
ODD = ["0001-01-01", "9999-12-31T23:59:59", "-99999999999", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"]


@pytest.fixture
async def http(make_server, client_for, tmp_path):
    server = await make_server(base_config(tmp_path))
    site = small_site()
    site["groups"] = [Group("G", Resource.WATER, "m3", (GroupInput("W-1"),))]
    await server.storage.registry_apply(site)
    return client_for(server)


def bad(r, words: str) -> None:
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in ("bad_parameter", "bad_body", "bad_json"), r.text
    assert words in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("odd", ODD)
async def test_times_out_of_range_in_queries_and_bodies(http, odd):
    viewer, operator = auth("viewer"), auth("operator")
    ok = "2014-01-20T00:00:00Z"
    for url in ("/api/v1/meters/W-1/consumption", "/api/v1/meters/W-1/readings", "/api/v1/groups/G/balance",
                "/api/v1/groups/G/consumption", "/api/v1/losses"):
        bad(await http.get(url, params={"from": odd, "to": ok}, headers=viewer), f"from: expected a time in {RANGE}")
        bad(await http.get(url, params={"from": ok, "to": odd}, headers=viewer), f"to: expected a time in {RANGE}")
    bad(await http.post("/api/v1/analytics/run", json={"from": odd, "to": ok}, headers=operator),
        f"from: expected a time in {RANGE}")


@pytest.mark.parametrize("month", ["0001-01", "9999-12", "0000-01", "2107-01"])
async def test_months_out_of_range(http, month):
    for url in ("/api/v1/meters/W-1/forecast", "/api/v1/groups/G/forecast", "/api/v1/groups/G/allocation"):
        bad(await http.get(url, params={"month": month}, headers=auth("viewer")), f"within {RANGE}")


async def test_balance_in_year_one_is_refused_not_misprinted(http):
    r = await http.get("/api/v1/groups/G/balance", params={"from": "0001-01-01", "to": "0001-01-02", "step": "day"},
                       headers=auth("viewer"))
    bad(r, "from: expected a time in")


async def test_deeply_nested_json_is_bad_json(http):
    body = b"[" * 100_000 + b"]" * 100_000
    for method, url, role in (("POST", "/api/v1/readings", "operator"), ("POST", "/api/v1/meters", "admin"),
                              ("POST", "/api/v1/analytics/run", "operator"),
                              ("POST", "/api/v1/meters/W-1/commands", "operator")):
        r = await http.request(method, url, content=body, headers=auth(role))
        bad(r, "nested too deeply")


@pytest.mark.parametrize(("url", "words"), [
    ("/api/v1/findings/99999999999999999999999", "finding_id: expected an integer 1..9223372036854775807"),
    ("/api/v1/findings/²", "finding_id: expected an integer"),
    ("/api/v1/findings?limit=99999999999999999999999", "limit: expected an integer 1..1000"),
    ("/api/v1/findings?limit=²", "limit: expected an integer 1..1000"),
    ("/api/v1/findings/quality?days=99999999999999999999999", "days: expected an integer 1..3660"),
    ("/api/v1/quarantine?limit=²", "limit: expected an integer"),
    ("/api/v1/modules/99999999999999999999999", "module_id: expected an integer 1..4294967295"),
    ("/api/v1/tags/history?tag=a/b&from=0&to=1&limit=²", "limit: expected an integer 1..100000"),
])
async def test_integers_are_bounded(http, url, words):
    bad(await http.get(url, headers=auth("viewer")), words)


@pytest.mark.parametrize(("url", "body", "words"), [
    ("/api/v1/dmesh/modules/1001/commands", {"command": [], "reason": "r"}, "command: expected one of ping"),
    ("/api/v1/export/dead-letters/resend", {"target": []}, "target: expected a target's name"),
    ("/api/v1/export/dead-letters/resend", {"ids": [2**70]}, "ids: expected a list of at most 10000"),
    ("/api/v1/export/dead-letters/resend", {"ids": list(range(1, 40_000))}, "ids: expected a list of at most 10000"),
])
async def test_values_of_the_wrong_type_in_bodies(http, url, body, words):
    bad(await http.post(url, json=body, headers=auth("admin")), words)
