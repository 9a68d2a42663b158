"""Every route of the served OpenAPI document, fuzzed: no request gets a 5xx.

One real server per module (``balans-edge run`` in a subprocess, every
built-in plugin enabled, the example registry imported, a day of readings) on
a throw-away database. For each operation of ``GET /api/v1/openapi.json``,
hypothesis sends path parameters, query parameters and JSON bodies built from
the document: the registry's own ids next to Unicode text, huge and negative
numbers, times in year 1 or 9999, and bodies with the keys the route names.
Every answer must be below 500 (a 503 only where the route documents it), and
every error must be the documented JSON shape. The admin token reaches every
handler; destructive routes are fine on this database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import TOKENS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
"""Examples per operation: every route is covered and the module runs in well under a minute;
FUZZ_EXAMPLES=300 searches deeper (a few minutes)."""
SCHEMA_EXAMPLES = int(os.environ.get("SCHEMA_EXAMPLES", "5"))
"""schemathesis examples per operation and mode (valid requests, and requests that break the schema)."""
KNOWN_IDS = ["CW-001", "HW-001", "HT-002", "CW-IN", "EL-100", "APT-001", "lesnaya-12-cw", "lesnaya-12-heat", "1",
             "3000101", "B1-A05", "W-1"]
ODD_TIMES = ["0001-01-01", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59", "9999-12-31T23:59:59-12:00",
             "-99999999999", "99999999999999999999999", "2106-02-07T06:28:16Z", "1970-01-01T00:00:00Z", "0",
             "2024-02-30", "2024-01-15T10:00:00Z", "2024-01-16", "2024-13", "0000-01", "9999-12", "2024-01",
             "1e10", "NaN", ""]
HUGE = st.sampled_from([2**31, 2**32, 2**63, 2**64, 10**23, -(2**63) - 1, -1, 0])


def texts() -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=20), st.sampled_from(KNOWN_IDS + ODD_TIMES),
                     st.text("/.%\u200b\u202e ", max_size=5))


def integers() -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(-(2**80), 2**80), HUGE, st.integers(0, 5000))


def times() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(ODD_TIMES),
        st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
        st.integers(-(2**70), 2**70),
        st.integers(1_700_000_000, 1_720_000_000),
        st.text(max_size=10),
    )


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), integers(), st.floats(), texts(), times())
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts(), inner,
                                                                                             max_size=3), max_leaves=8)


def param_value(param: dict[str, Any]) -> st.SearchStrategy[Any]:
    schema = param.get("schema", {})
    if schema.get("format") == "date-time" or param["name"] in ("from", "to"):
        return times()
    choices: list[st.SearchStrategy[Any]] = [texts()]
    if schema.get("enum"):
        choices.append(st.sampled_from(schema["enum"]))
    if schema.get("type") == "integer" or param["name"] in ("limit", "days"):
        choices.append(integers())
    if param["name"] == "month":
        choices.append(st.sampled_from(ODD_TIMES) | st.from_regex(r"-?\d{1,5}-\d{1,3}", fullmatch=True))
    return st.one_of(*choices)


TEMPLATES = {
    "concentrators": {"concentrator_id": 5, "name": "Котельная", "site": "ул. Лесная 12"},
    "modules": {"module_id": 4000001, "concentrator_id": 1, "channels": 3, "rssi": -71},
    "accounts": {"account_id": "Кв-7", "consumer": "Иванов", "area_m2": 54.3},
    "meters": {"meter_id": "Кв-7 вода", "resource": "water", "unit": "m3", "pulse_weight": 0.01,
               "install_time": "2024-01-15T09:00:00Z", "flags": ["virtual"]},
    "groups": {"group_id": "Дом-12", "resource": "water", "unit": "m3", "inputs": ["CW-IN"]},
}
"""A valid object of each registry kind: the fuzzer changes some of its fields, so some requests get through."""


def resolved(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def choices(doc: dict[str, Any], schema: Any, seen: frozenset[str] = frozenset()) -> set[str]:
    """Every enum value a schema lists, however deep (the commands, statuses, targets a body takes)."""
    if isinstance(schema, list):
        return set().union(*(choices(doc, s, seen) for s in schema))
    if not isinstance(schema, dict):
        return set()
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return set() if name in seen else choices(doc, doc["components"]["schemas"][name], seen | {name})
    found = {str(v) for v in schema.get("enum", ()) if isinstance(v, str)}
    return found.union(*(choices(doc, v, seen) for v in schema.values() if isinstance(v, dict | list)))


def described(doc: dict[str, Any], op: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The keys the route's body schema names and the choices it lists."""
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    schema = resolved(doc, body)
    keys = sorted(schema.get("properties", {}))
    return keys, sorted(choices(doc, schema) - set(keys))


def body_value(key: str, words: list[str]) -> st.SearchStrategy[Any]:
    if key in ("from", "to", "ts", "t", "install_time", "removed_time", "last_seen"):
        return times()
    if key == "readings":
        return st.lists(st.dictionaries(st.sampled_from(["module_id", "channel", "ts", "counter", "status"]),
                                        st.one_of(integers(), times()), max_size=5), max_size=3)
    if key == "ids":
        return st.lists(integers(), max_size=4) | json_values()
    return st.one_of(st.sampled_from(words), texts(), json_values()) if words else json_values()


def bodies(doc: dict[str, Any], path: str, op: dict[str, Any]) -> st.SearchStrategy[bytes | None]:
    if "requestBody" not in op:
        return st.none() | st.just(b"{}")
    keys, words = described(doc, op)
    kind = path.split("/")[3]
    template = TEMPLATES.get(kind, {}) if path.count("/") <= 4 else {}
    if path.endswith("{ident}"):  # the key comes from the path
        template = dict(list(template.items())[1:])
    extras = {"reason", "command", "from", "to", "group", "status", "note", "x"} - set(keys) - set(template)
    plausible = st.fixed_dictionaries(
        {**{k: st.one_of(st.just(v), st.just(v), body_value(k, words)) for k, v in template.items()},
         **{k: body_value(k, words) for k in keys}},
        optional={k: body_value(k, words) for k in sorted(extras)},
    )
    encoded = st.one_of(plausible, plausible, json_values()).map(lambda b: json.dumps(b).encode())
    deep = st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n)
    broken = st.sampled_from([b"{not json", b"\xff\xfe", b'{"a": 1e999999}', b'{"reason": "' + b"x" * 70_000 + b'"}'])
    return st.one_of(encoded, encoded, encoded, deep, broken)


def path_values(param: dict[str, Any]) -> st.SearchStrategy[str]:
    known = st.sampled_from(KNOWN_IDS)
    raw = st.one_of(param_value(param), known, known).map(lambda v: quote(str(v), safe=""))
    return raw | st.sampled_from(["%ZZ", "%C0%AF", "..", "%2E%2E", "%00"])


def requests(doc: dict[str, Any], path: str,
             op: dict[str, Any]) -> st.SearchStrategy[tuple[str, dict[str, str], bytes | None]]:
    """(URL, query, body) for one operation; the strategies are built once (building them is the slow part)."""
    params = op.get("parameters", [])
    path_strategies = {p["name"]: path_values(p) for p in params if p["in"] == "path"}
    query_strategies = {p["name"]: (param_value(p), bool(p.get("required"))) for p in params if p["in"] == "query"}
    body_strategy = bodies(doc, path, op)

    @st.composite
    def build(draw: st.DrawFn) -> tuple[str, dict[str, str], bytes | None]:
        url = path
        for name, values in path_strategies.items():
            url = url.replace("{" + name + "}", draw(values))
        query = {name: str(draw(values)) for name, (values, required) in query_strategies.items()
                 if required or draw(st.booleans())}
        if "from" in query and draw(st.booleans()):  # a period that makes sense, so the handler does its work
            query["from"], query["to"] = draw(PERIODS)
        return url, query, draw(body_strategy)

    return build()


PERIODS = st.tuples(st.integers(1_705_000_000, 1_706_000_000), st.sampled_from([3600, 86400, 40 * 86400, 400 * 86400]),
                    st.sampled_from([str, lambda t: datetime.fromtimestamp(t, UTC).isoformat()])).map(
    lambda a: (a[2](a[0]), a[2](a[0] + a[1])))


def write_config(folder: Path) -> Path:
    key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    users = ",\n".join(f'  {{ name = "fuzz-{r}", role = "{r}", token = "{t}" }}' for r, t in TOKENS.items())
    text = f"""
[server]
host = "127.0.0.1"
log_level = "warning"
shutdown_timeout_s = 5

[site]
timezone = "Europe/Moscow"

[storage]
url = "sqlite:{folder / 'fuzz.db'}"

[api]
users = [
{users}
]

[plugins.dmesh]
port = 0
backfill = false
firmware_public_key = "{key}"
concentrators = [{{ id = 1, key = "fuzz-concentrator-1-key" }}]

[plugins.modbus.server]
enabled = true
port = 0

[plugins.analytics]
interval_s = 0

[[plugins.export.targets]]
name = "fuzz"
url = "http://127.0.0.1:9"
bucket = "b"
backoff_initial_s = 60
"""
    path = folder / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "balans_edge", *args]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("fuzz")
    config = write_config(folder)
    subprocess.run(cli("registry", "import", "-c", str(config), str(ROOT / "config" / "registry")), check=True,
                   capture_output=True, timeout=60)
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(cli("run", "-c", str(config), "--port", "0"), stdout=subprocess.PIPE, stderr=log,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), (line, (folder / "server.log").read_text())
        base = line.split()[-1]
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKENS['admin']}"}, timeout=60) as c:
            start = 1_705_363_200  # 2024-01-16, after the example meters' installation
            rows = [{"module_id": 3000101, "channel": ch, "ts": start + i * 900, "counter": 100 + i * 7}
                    for ch in (1, 2) for i in range(96)]
            assert c.post("/api/v1/readings", json={"readings": rows}).json()["accepted"] == len(rows)
            yield c
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every operation of the document; deletions last, so the others still find the example registry."""
    ops = [(path, method.upper(), op) for path, ops in doc["paths"].items() for method, op in ops.items()]
    return sorted(ops, key=lambda o: o[1] == "DELETE")


def fuzz(client: httpx.Client, doc: dict[str, Any], path: str, method: str, op: dict[str, Any],
         statuses: set[int]) -> None:
    """Send EXAMPLES generated requests to one operation; fail on a 5xx or an error that is not the JSON shape."""

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(requests(doc, path, op))
    def call(request: tuple[str, dict[str, str], bytes | None]) -> None:
        url, query, body = request
        headers = {"Content-Type": "application/json"} if body is not None else {}
        r = client.request(method, url, params=query, content=body, headers=headers)
        statuses.add(r.status_code)
        documented_503 = r.status_code == 503 and "503" in op["responses"]
        assert r.status_code < 500 or documented_503, f"{method} {url} {query} {body!r:.300}: {r.text}"
        if r.status_code >= 400:
            error = r.json()["error"]
            assert set(error) == {"code", "message"} and error["message"], r.text

    call()


def test_no_route_answers_5xx(served: httpx.Client):
    doc = served.get("/api/v1/openapi.json").json()
    ops = operations(doc)
    assert len(ops) > 40  # every built-in plugin's routes are served
    seen: dict[tuple[str, str], set[int]] = {}
    failures = []
    for path, method, op in ops:
        try:
            fuzz(served, doc, path, method, op, seen.setdefault((method, path), set()))
        except AssertionError as exc:  # every route is tried; all failures are reported together
            failures.append(str(exc).splitlines()[0])
    assert not failures, "\n".join(failures)
    assert set(seen) == {(m, p) for p, m, _ in ops}
    # The fuzzer reaches the handlers: most routes answered something other than a refusal at least once.
    reached = [k for k, codes in seen.items() if codes & {200, 201, 404, 409, 422}]
    assert len(reached) > len(seen) * 0.8, {k: v for k, v in seen.items() if k not in reached}


def test_server_still_healthy_after_fuzzing(served: httpx.Client):
    r = served.get("/api/v1/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


KNOWN_PATHS = {"meter_id": "CW-001", "group_id": "lesnaya-12-cw", "module_id": "3000101", "concentrator_id": "1",
               "finding_id": "1", "target": "CW-001"}
KNOWN_IDENTS = {"concentrators": "1", "modules": "3000101", "accounts": "APT-001", "meters": "CW-001",
                "groups": "lesnaya-12-cw"}
KNOWN_QUERY = {"from": "2024-01-16T00:00:00Z", "to": "2024-01-17T00:00:00Z", "month": "2024-01"}
"""Objects and a period the served site has (readings of CW-001 and HW-001 on 2024-01-16), so that
generated requests also reach the handlers' answers, whose schemas are then checked."""


def known(operation: Any) -> dict[str, Any]:
    """Fixed path and query values of the served site for an operation (the rest is generated)."""
    params = operation.definition.raw.get("parameters", [])
    path = {p["name"]: KNOWN_PATHS.get(p["name"], KNOWN_IDENTS.get(operation.path.split("/")[3]))
            for p in params if p["in"] == "path"}
    query = {p["name"]: KNOWN_QUERY[p["name"]] for p in params if p["in"] == "query" and p["name"] in KNOWN_QUERY}
    return {"path_parameters": path, "query": query}


def schema_checked(operation: Any, mode: Any, fixed: dict[str, Any], base: str, token: dict[str, str],
                   statuses: set[int]) -> None:
    """SCHEMA_EXAMPLES requests schemathesis builds for one operation in one mode (``fixed``: path
    and query values that are kept); fails on a 5xx that is not a documented 503, or on an answer
    that does not match its declared schema."""
    from schemathesis.checks import response_schema_conformance

    responses = operation.definition.raw.get("responses", {})

    @settings(max_examples=SCHEMA_EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def call(case: Any) -> None:
        response = case.call(base_url=base, headers=token, timeout=60)
        statuses.add(response.status_code)
        documented_503 = response.status_code == 503 and "503" in responses
        assert response.status_code < 500 or documented_503, (
            f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}: "
            f"{response.status_code} {response.text[:300]}")
        case.validate_response(response, checks=[response_schema_conformance])

    call()


def test_schemathesis_gets_no_5xx_and_answers_match_their_schemas(served: httpx.Client):
    """schemathesis builds requests from the served document alone, valid ones and ones that
    break it (wrong types, values out of range, missing fields), for every operation: no
    answer is a 5xx (a 503 only where documented), and every answer, success or error,
    matches the schema the document declares for its status."""
    import schemathesis

    schema = schemathesis.openapi.from_dict(served.get("/api/v1/openapi.json").json())
    base = str(served.base_url).rstrip("/")
    token = {"Authorization": served.headers["Authorization"]}
    failures: list[str] = []
    answered: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        positive, negative = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
        runs = [("generated", positive, {})]
        if {"parameters", "requestBody"} & set(operation.definition.raw):  # something to fix, something to break
            runs += [("on the site's objects", positive, known(operation)), ("breaking the schema", negative, {})]
        for what, mode, fixed in runs:
            try:
                schema_checked(operation, mode, fixed, base, token, answered.setdefault(operation.label, set()))
            except Exception as exc:  # every operation is tried; all failures are reported together
                failures.append(f"{operation.label} ({what}): {str(exc).strip()[:1500]}")
    assert not failures, "\n\n".join(failures)
    assert len(answered) > 40
    # Valid requests get through to the handlers: most operations answered something other than a refusal.
    reached = [label for label, codes in answered.items() if codes & {200, 201, 404, 409, 422}]
    assert len(reached) > len(answered) * 0.6, {k: v for k, v in answered.items() if k not in reached}
