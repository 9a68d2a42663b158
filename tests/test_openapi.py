"""The OpenAPI document and the schema layer of the HTTP API.

The served document is valid OpenAPI 3.1 (``openapi-spec-validator``), every
request body and every JSON success has a real schema (properties, ranges,
choices), and the refusals of the decoder name the key path and what was
expected. Requests go to a real server on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from balans_edge.api.meters import ReadingsBody, reading_batch
from balans_edge.core.text import MAX_TEXT_BYTES
from balans_edge.http_schema import Codec, Refusal
from balans_edge.plugins.dmesh.command_api import ModuleCommand
from balans_edge.plugins.export.api import Resend

from conftest import T0, auth, base_config, small_site


@pytest.fixture
async def document(make_server, client_for, tmp_path) -> dict[str, Any]:
    server = await make_server(base_config(tmp_path))
    r = await client_for(server).get("/api/v1/openapi.json")
    assert r.status_code == 200
    return r.json()


def resolved(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


async def test_the_served_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    errors = [str(e).splitlines()[0] for e in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []
    assert len(operations(document)) > 40  # every built-in plugin's routes and the example's


async def test_every_body_and_every_json_success_has_a_real_schema(document):
    bodies = 0
    for method, path, op in operations(document):
        if "requestBody" in op:
            schema = resolved(document, op["requestBody"]["content"]["application/json"]["schema"])
            assert schema.get("type") == "object" and schema.get("properties"), (method, path, schema)
            bodies += 1
        for status, answer in op["responses"].items():
            content = answer.get("content", {})
            assert content, (method, path, status)  # successes and errors alike say what they carry
            if status.startswith("2") and "application/json" in content:
                schema = resolved(document, content["application/json"]["schema"])
                assert schema.get("properties"), (method, path, status, schema)
            if status.startswith(("4", "5")) or status == "default":
                assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert bodies >= 20
    # Objects checked by a domain validator (registry rows, the vendor's signature file, which vendors
    # extend) are decoded as they came, and still list their keys: no component is a bare object.
    bare = [name for name, schema in document["components"]["schemas"].items()
            if schema.get("type") == "object" and not schema.get("properties")]
    assert bare == []


async def test_schemas_carry_ranges_and_choices(document):
    schemas = document["components"]["schemas"]
    command = schemas["ModuleCommand"]["properties"]
    assert command["command"]["enum"] == ["ping", "profile_request", "set_interval"]
    seconds = {k: v for k, v in command["seconds"]["anyOf"][0].items() if k != "description"}
    assert seconds == {"type": "integer", "minimum": 300, "maximum": 65535}
    assert schemas["Reading"]["required"] == ["module_id", "channel", "ts", "counter"]
    params = {p["name"]: p for p in document["paths"]["/api/v1/findings"]["get"]["parameters"]}
    assert params["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
    assert params["status"]["schema"]["enum"] == sorted(["open", "acknowledged", "resolved", "false_alarm", "accepted"])
    period = {p["name"]: p for p in document["paths"]["/api/v1/groups/{group_id}/balance"]["get"]["parameters"]}
    assert period["from"]["required"] and period["to"]["required"] and not period["step"]["required"]
    assert period["group_id"]["in"] == "path"
    finding = {p["name"]: p for p in document["paths"]["/api/v1/findings/{finding_id}"]["get"]["parameters"]}
    assert finding["finding_id"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
    resend = document["paths"]["/api/v1/export/dead-letters/resend"]["post"]["requestBody"]
    assert resend["required"] is False  # both fields optional: the body may be left out
    note = schemas["Change"]["properties"]["note"]
    assert note["maxLength"] == MAX_TEXT_BYTES


# -- decoding: what a refusal says ------------------------------------------------------------------------------


def refused(codec: Codec, raw: bytes) -> Refusal:
    with pytest.raises(Refusal) as caught:
        codec.decode_body(raw)
    return caught.value


def test_refusals_name_the_key_path_and_what_was_expected():
    readings = Codec(ReadingsBody)
    good = b'{"module_id": 1, "channel": 1, "ts": 1705363200, "counter": 5}'
    bad = refused(readings, b'{"readings": [' + b", ".join([good] * 3) + b', {"module_id": 1, "channel": 1, '
                  b'"ts": 1e3, "counter": 5}]}')
    assert (bad.code, bad.message) == ("bad_body", "readings[3].ts: expected int | str, got float")
    bad = refused(readings, b'{"readings": [{"module_id": 1, "channel": 1, "ts": 1, "counter": 1e40}]}')
    assert bad.message == ("readings[0].counter: expected an integer -4611686018427387903..4611686018427387903, "
                           "got 1e+40")
    bad = refused(readings, b'{"readings": [{"module_id": 1, "channel": 1, "ts": 1}]}')
    assert bad.message == "readings[0].counter: required"
    bad = refused(readings, b"[1, 2]")
    assert bad.message == "request body: expected object, got array"
    assert refused(readings, b'{"readings": [}').code == "bad_json"
    assert refused(readings, b"[" * 100_000 + b"]" * 100_000).message == "request body is nested too deeply"
    deep = b'{"readings": [], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert refused(readings, deep).message == "request body is nested too deeply"
    # A type error found first does not hide that the rest is not JSON.
    assert refused(readings, b'{"readings": 5, "x": [}').code == "bad_json"

    commands = Codec(ModuleCommand)
    assert refused(commands, b'{"command": [], "reason": "r"}').message == (
        "command: expected one of ping, set_interval, profile_request, got []")
    assert refused(commands, b'{"command": "ping", "reason": " "}').message == (
        "reason: a non-empty reason is required for the audit")
    assert refused(commands, b'{"command": "ping"}').message == "reason: a non-empty reason is required for the audit"
    assert refused(commands, b'{"command": "ping", "reason": "' + b"x" * (MAX_TEXT_BYTES + 1) + b'"}').message == (
        f"reason: at most {MAX_TEXT_BYTES} bytes of text (UTF-8), got {MAX_TEXT_BYTES + 1}")
    assert refused(commands, b'{"command": "set_interval", "reason": "r", "seconds": 5}').message == (
        "seconds: expected an integer 300..65535, got 5")
    assert refused(commands, b'{"command": "ping", "reason": "r", "from": "0001-01-01"}').message.startswith(
        "from: expected a time in 1970-01-01T00:00:00Z .. 2106-02-07T06:28:15Z, got '0001-01-01'")

    resend = Codec(Resend | None)
    assert resend.decode_body(b"") is None
    assert refused(resend, b'{"ids": [1, 0]}').message == (
        "ids: expected a list of at most 10000 dead letter ids, got [1, 0]")
    assert refused(resend, b'{"target": "t", "idz": [1]}').message == "idz: unknown field (did you mean ids?)"


def test_path_parameters_are_decoded_into_their_declared_types():
    from balans_edge.http_schema import path_parameter
    from balans_edge.routes import Param

    module = Param("ident", type="integer", minimum=1, maximum=2**32 - 1, label="module_id")
    network = Param("module_id", type="integer", description="404 unless a known module")
    meter = Param("meter_id", description="a meter's id")
    codec = Codec(path=(module,))
    assert codec.decode_path({"ident": "1001"}) == {"ident": 1001}
    for raw, shown in (("0", "0"), ("²", "²"), ("%C2%B2", "²"), ("99999999999999999999999", "99999999999999999999999")):
        with pytest.raises(Refusal) as caught:
            codec.decode_path({"ident": raw})
        assert (caught.value.code, caught.value.message) == (
            "bad_parameter", f"module_id: expected an integer 1..4294967295, got {shown!r}")  # named by its label
    for raw, words in (("%ZZ", "module_id: broken percent-escape in '%ZZ'"),
                       ("%C0%AF", "module_id: percent-escapes that are not UTF-8 in '%C0%AF'")):
        with pytest.raises(Refusal) as caught:
            codec.decode_path({"ident": raw})
        assert caught.value.message == words
    # Text arrives percent-decoded and NFC; an integer without bounds is left to its handler (404 there).
    assert Codec(path=(meter,)).decode_path({"meter_id": "%D0%9A%D0%B2-%D0%B8%CC%86"}) == {"meter_id": "Кв-й"}
    assert Codec(path=(network,)).decode_path({"module_id": "abc"}) == {"module_id": "abc"}
    # The document describes each from the same declaration.
    assert path_parameter(module)["schema"] == {"type": "integer", "minimum": 1, "maximum": 2**32 - 1}
    assert path_parameter(network) == {"name": "module_id", "in": "path", "required": True,
                                       "schema": {"type": "integer"}, "description": "404 unless a known module"}
    assert path_parameter(meter)["schema"] == {"type": "string", "minLength": 1}


def test_query_refusals_keep_the_words_of_the_api():
    from balans_edge.api.findings import FindingsQuery
    from balans_edge.api.tags import HistoryQuery

    findings, history = Codec(query=FindingsQuery), Codec(query=HistoryQuery)
    for raw in ("²", "0", "1001", "99999999999999999999999"):
        with pytest.raises(Refusal) as caught:
            findings.decode_query({"limit": raw})
        assert (caught.value.code, caught.value.message) == (
            "bad_parameter", f"limit: expected an integer 1..1000, got {raw!r}")
    with pytest.raises(Refusal) as caught:
        findings.decode_query({"status": "closed"})
    assert caught.value.message == ("status: expected one of open, acknowledged, resolved, false_alarm, accepted, "
                                    "got 'closed'")
    with pytest.raises(Refusal) as caught:
        history.decode_query({"tag": "a/b", "from": "2024-01-01"})
    assert (caught.value.code, caught.value.message) == ("missing_parameter",
                                                         "query parameter to is required (ISO-8601 time)")
    query = history.decode_query({"tag": "a/b", "from": "2024-01-01", "to": "1704153600"})
    assert (query.tag, query.from_, query.to, query.limit) == ("a/b", 1_704_067_200, 1_704_153_600, 10_000)


def test_times_of_readings_may_be_iso_and_stay_unchecked_for_ingest():
    body = Codec(ReadingsBody).decode_body(
        b'{"readings": [{"module_id": 7, "channel": 2, "ts": "2024-01-16T00:00:00Z", "counter": 9, "status": 1},'
        b' {"module_id": 7, "channel": 9, "ts": -5, "counter": 10}]}')
    batch = reading_batch(body.readings)
    assert batch.ts.tolist() == [1_705_363_200, -5]  # out of range: ingest counts it as rejected
    assert (batch.channel.tolist(), batch.status.tolist()) == ([2, 9], [1, 0])


async def test_typed_requests_over_http(make_server, client_for, tmp_path):
    server = await make_server(base_config(tmp_path))
    await server.storage.registry_apply(small_site())
    http = client_for(server)
    r = await http.post("/api/v1/readings", headers=auth("operator"), json={"readings": [
        {"module_id": 1001, "channel": 1, "ts": T0, "counter": 5},
        {"module_id": 1001, "channel": 9, "ts": T0, "counter": 5}]})
    assert r.status_code == 200 and r.json()["accepted"] == 1 and r.json()["rejected"] == {"invalid": 1}
    r = await http.post("/api/v1/readings", headers=auth("operator"),
                        json={"readings": [{"module_id": 1001, "channel": True, "ts": T0, "counter": 5}]})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("readings[0].channel: expected an integer")
    r = await http.get("/api/v1/commands", params={"limit": "0"}, headers=auth("viewer"))
    assert r.json()["error"] == {"code": "bad_parameter", "message": "limit: expected an integer 1..1000, got '0'"}
    r = await http.get("/api/v1/meters/W-1/consumption", params={"from": T0}, headers=auth("viewer"))
    assert r.json()["error"] == {"code": "missing_parameter",
                                 "message": "query parameter to is required (ISO-8601 time)"}
    r = await http.patch("/api/v1/findings/1", json={"status": "resolved", "nope": 1}, headers=auth("operator"))
    assert r.status_code == 404  # unknown keys of a body are ignored, as before; the finding does not exist
