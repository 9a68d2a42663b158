"""The OPC UA server for SCADA, end to end: a real balans-edge server whose
readings went through ingest, intervals and balances, driven by node-opcua (an
OPC UA stack independent of the server's asyncua) over Basic256Sha256 and
Aes128_Sha256_RsaOaep, and compared with what the HTTP API answers."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from balans_edge.core.components import Command, CommandOutcome, Finding, Severity
from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.model import Concentrator, Group, GroupInput, Meter, RadioModule, Resource, Status
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugins.opcua import pki
from balans_edge.plugins.opcua.server import OpcuaServer

from conftest import TOKENS, auth, base_config, eventually, peer

HOUR = 3600
PER_HOUR = {1: 3217, 2: 1234, 3: 77}
"""Pulses per hour by channel of module 1001: IN (1 l), W-V (1 l), W-R (10 l)."""
BASE_W_V = 12.5
NODE_DIR = Path(__file__).resolve().parent / "opcua_peer"
NS = "urn:balans-edge:opcua"
OPERATOR = ("scada-op", "operator-password-1")
VIEWER = ("test-viewer", TOKENS["viewer"])
"""An HTTP API user (api_users = true): its token is its OPC UA password."""
CLIENT_URI = "urn:balans-edge-tests:node-opcua"
_plans = itertools.count()


def node() -> str:
    """node, with node-opcua installed next to the scenario script (`make test` runs `npm ci` there)."""
    path = peer("node")
    if not (NODE_DIR / "node_modules" / "node-opcua-client").is_dir():
        message = "node-opcua is not installed (run `make test`, or `npm ci --prefix tests/opcua_peer`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return path


# the site ----------------------------------------------------------------------------------------


@dataclass
class Valves:
    """An actuator behind the real actuation service (the DMesh radio path is tested elsewhere)."""

    name: str = "test-valves"
    ok: bool = True
    commands: list[Command] = field(default_factory=list)

    def handles(self, command: Command) -> bool:
        return command.target in ("W-V", "W-R")

    async def execute(self, command: Command) -> CommandOutcome:
        self.commands.append(command)
        return CommandOutcome(self.ok, "moved" if self.ok else "jammed")


@dataclass
class ClientCert:
    """A node-opcua client identity: certificate and key files, its own PKI folder."""

    cert: Path
    key: Path
    pki: Path
    uri: str = CLIENT_URI


def make_client_cert(folder: Path, name: str, uri: str = CLIENT_URI) -> ClientCert:
    folder.mkdir(parents=True, exist_ok=True)
    key = pki.new_key()
    cert = pki.make_certificate(key, name, uri, ["localhost"], client=True, server=False)
    paths = ClientCert(folder / f"{name}.pem", folder / f"{name}-key.pem", folder / f"{name}-pki", uri)
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.write_key(paths.key, key)
    return paths


@dataclass
class Site:
    server: Any
    opcua: OpcuaServer
    client: Any
    hour: int
    """Start of the hour of the newest readings."""
    trusted: ClientCert
    tmp: Path
    valves: Valves

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.opcua.port}/balans-edge/"

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        r = await self.client.get(path, params=params, headers=auth("viewer"))
        assert r.status_code == 200, r.text
        return r.json()

    def session(self, user: tuple[str, str] | None = OPERATOR, cert: ClientCert | None = None,
                policy: str = "Basic256Sha256", mode: str = "SignAndEncrypt") -> dict[str, Any]:
        cert = cert or self.trusted
        conf: dict[str, Any] = {"policy": policy, "mode": mode, "certificate": str(cert.cert),
                                "privateKey": str(cert.key), "pki": str(cert.pki), "applicationUri": cert.uri,
                                "trustServer": str(self.opcua.pki.cert_pem)}
        if user:
            conf["user"], conf["password"] = user
        return conf

    async def run(self, sessions: dict[str, dict[str, Any]], steps: list[dict[str, Any]],
                  on_wait: Callable[[str], Awaitable[None]] | None = None) -> dict[str, dict[str, Any]]:
        """Run one node-opcua scenario; results by step id (or index)."""
        plan = self.tmp / f"plan-{next(_plans)}.json"
        plan.write_text(json.dumps({"endpoint": self.endpoint, "sessions": sessions, "steps": steps}))
        proc = await asyncio.create_subprocess_exec(
            node(), str(NODE_DIR / "scenario.js"), str(plan), cwd=NODE_DIR, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        results: dict[str, dict[str, Any]] = {}

        async def follow() -> None:
            assert proc.stdout is not None and proc.stdin is not None
            while line := await proc.stdout.readline():
                text = line.decode(errors="replace").strip()
                if not text.startswith("@@ "):
                    continue
                report = json.loads(text[3:])
                if report["op"] == "wait" and "step" not in report:
                    if on_wait is not None:
                        await on_wait(report["label"])
                    proc.stdin.write(b"go\n")
                    await proc.stdin.drain()
                    continue
                results[report["id"] or str(report["step"])] = report

        try:
            await asyncio.wait_for(follow(), 60)
            await asyncio.wait_for(proc.wait(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, (await proc.stderr.read()).decode()[-2000:] if proc.stderr else ""
        return results


def site_registry(install: int) -> dict[str, list]:
    return {
        "concentrators": [Concentrator(7, name="North")],
        "modules": [RadioModule(1001, 7, channels=0b111, hops=2, rssi=-71, battery_mv=3550, firmware="1.4.2"),
                    RadioModule(1002, 7, channels=0b001)],
        "meters": [
            Meter("D-IN", Resource.WATER, "m3", 0.001, install, module_id=1002, channel=1),
            Meter("IN", Resource.WATER, "m3", 0.001, install, module_id=1001, channel=1, group_id="D"),
            Meter("W-V", Resource.WATER, "m3", 0.001, install, module_id=1001, channel=2, group_id="G",
                  base_reading=BASE_W_V, flags=frozenset({"valve", "relay"})),
            Meter("W-R", Resource.WATER, "m3", 0.01, install, module_id=1001, channel=3, group_id="G",
                  flags=frozenset({"relay"})),
        ],
        "groups": [Group("D", Resource.WATER, "m3", (GroupInput("D-IN"),), name="District", level="district"),
                   Group("G", Resource.WATER, "m3", (GroupInput("IN"),), name="House 1", parent_id="D",
                         loss_norm_pct=5.0)],
    }


def readings(hour: int, hours: int = 6) -> ReadingBatch:
    """Hourly readings up to ``hour``; the newest of W-V reports its valve closed."""
    rows = []
    for k in range(hours):
        t = hour - (hours - 1 - k) * HOUR
        for channel, rate in PER_HOUR.items():
            status = Status.VALVE_CLOSED if channel == 2 and k == hours - 1 else 0
            rows.append((1001, channel, t, 50_000 + rate * k, int(status)))
        rows.append((1002, 1, t, 10_000 + 4000 * k, 0))
    a = np.array(rows, dtype=np.int64)
    return ReadingBatch(*(a[:, i] for i in range(5)))


MakeSite = Callable[..., Awaitable[Site]]


@pytest.fixture
def make_site(tmp_path: Path, make_server: Any, client_for: Any) -> MakeSite:
    async def start(*, seed: bool = True, ingest: bool = True, **options: Any) -> Site:
        now = int(time.time())
        hour = now - now % HOUR
        if seed:
            storage = SqliteStorage(tmp_path / "balans.db")
            await storage.open()
            await storage.registry_apply(site_registry(hour - 12 * HOUR))
            await storage.close()
        folder = pki.Pki(tmp_path / "server-pki")
        trusted = make_client_cert(tmp_path / "clients", "trusted")
        folder.trusted.mkdir(parents=True, exist_ok=True)
        (folder.trusted / "scada.pem").write_bytes(trusted.cert.read_bytes())
        server_options = {"enabled": True, "port": 0, "pki_dir": str(folder.root), "api_users": True,
                          "users": [{"name": OPERATOR[0], "role": "operator", "password": OPERATOR[1]}],
                          "application_uri": "urn:balans-edge-tests:server", "age_interval_s": 1.0, **options}
        config = base_config(tmp_path, intervals={"debounce_s": 0.0}, balance={"debounce_s": 0.0},
                             plugins={"opcua": {"server": server_options}})
        server = await make_server(config)
        opcua = next(c for _, c in server.components if isinstance(c, OpcuaServer))
        valves = Valves()
        server.actuation.add(valves)
        site = Site(server, opcua, client_for(server), hour, trusted, tmp_path, valves)
        if ingest:
            await server.ingest.ingest(readings(hour))
            await server.intervals.process()
            await server.balance.process()
            await eventually(lambda: opcua.values is not None and opcua.values.periods
                             and opcua.values.hour_t[opcua.values.row_of_meter["W-V"]] == hour - HOUR, 5.0)
        return site

    return start


def unix(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def by_name(refs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["browseName"]: r for r in refs}


def node_id(ident: str) -> str:
    return f"ns={{ns}};s={ident}"


# browsing and reading -------------------------------------------------------------------------------


async def test_browse_by_type_and_read_values_and_units_matching_the_api(make_site: MakeSite) -> None:
    site = await make_site()
    values = ["Value", "Value/EngineeringUnits", "LastHour", "LastHour/EngineeringUnits", "LastHourStart", "Status",
              "DataAge", "LastReadingTime", "Valve", "Relay", "PulseWeight"]
    group_values = ["Input", "Consumed", "Imbalance", "LossPercent", "Completeness", "Flags", "Start", "Hours",
                    "LossPercent/EngineeringUnits"]
    steps = [
        {"op": "endpoints", "id": "endpoints"},
        {"op": "connect", "session": "op", "id": "connect"},
        {"op": "namespace", "session": "op", "uri": NS, "id": "ns"},
        {"op": "browse", "session": "op", "node": "i=58", "referenceType": "HasSubtype", "id": "types"},
        {"op": "translate", "session": "op", "start": "i=85", "path": ["Balans", "Meters", "W-V", "Value"],
         "id": "path"},
        {"op": "browse", "session": "op", "node": node_id("Balans/Meters"), "id": "meters"},
        {"op": "browse", "session": "op", "node": node_id("Balans/Groups"), "id": "groups"},
        {"op": "browse", "session": "op", "node": node_id("Groups/D"), "id": "district"},
        {"op": "browse", "session": "op", "node": node_id("Concentrators/7/Modules"), "id": "modules"},
        {"op": "browse", "session": "op", "node": node_id("Modules/1001"), "id": "module"},
        {"op": "browse", "session": "op", "node": node_id("Meters/W-V"), "id": "w-v"},
        {"op": "browse", "session": "op", "node": node_id("Meters/W-R"), "id": "w-r"},
        {"op": "read", "session": "op", "id": "read-w-v",
         "nodes": [{"node": node_id(f"Meters/W-V/{v}")} for v in values]},
        {"op": "read", "session": "op", "id": "read-w-r",
         "nodes": [{"node": node_id(f"Meters/W-R/{v}")} for v in values]},
        {"op": "read", "session": "op", "id": "types-of-values",
         "nodes": [{"node": node_id(f"Meters/W-V/{v}"), "attribute": "DataType"}
                   for v in ("Value", "Status", "DataAge", "LastReadingTime", "Valve")]},
        {"op": "read", "session": "op", "id": "group",
         "nodes": [{"node": node_id(f"Groups/G/{p}/{v}")} for p in ("LastHour", "Today") for v in group_values]},
        {"op": "read", "session": "op", "id": "module-values",
         "nodes": [{"node": node_id(f"Modules/1001/{v}")} for v in ("Rssi", "Hops", "BatteryVoltage", "Firmware")]},
    ]
    r = await site.run({"op": site.session()}, steps)
    assert all(x["ok"] for x in r.values()), [(x["id"], x.get("message")) for x in r.values() if not x["ok"]]

    # Endpoints: Basic256Sha256 and Aes128_Sha256_RsaOaep, Sign and SignAndEncrypt; no None; user names only.
    offered = {(e["policy"], e["mode"]) for e in r["endpoints"]["endpoints"]}
    assert offered == {(p, m) for p in ("Basic256Sha256", "Aes128_Sha256_RsaOaep") for m in ("Sign", "SignAndEncrypt")}
    assert {t for e in r["endpoints"]["endpoints"] for t in e["tokens"]} == {"UserName"}
    # The server's certificate is the one in pki_dir, and names the server's application URI.
    cert = x509.load_der_x509_certificate(site.opcua.pki.cert_der.read_bytes())
    assert pki.application_uris(cert) == ["urn:balans-edge-tests:server"]
    for e in r["endpoints"]["endpoints"]:
        assert e["applicationUri"] == "urn:balans-edge-tests:server"
        assert x509.load_der_x509_certificate(__import__("base64").b64decode(e["certificate"])) == cert

    assert r["ns"]["index"] == 2
    types = {t["browseName"]: t["nodeId"] for t in r["types"]["references"]}
    meter_type, group_type, module_type = types["MeterType"], types["BalanceGroupType"], types["RadioModuleType"]
    assert (meter_type, group_type) == ("ns=2;s=Types/MeterType", "ns=2;s=Types/BalanceGroupType")
    assert r["path"]["targets"] == ["ns=2;s=Meters/W-V/Value"]

    # Browse by type: every meter is a MeterType, groups nest by parent, modules organize their meters.
    meters = by_name(r["meters"]["references"])
    assert sorted(meters) == ["D-IN", "IN", "W-R", "W-V"]
    assert {m["typeDefinition"] for m in meters.values()} == {meter_type}
    assert meters["W-V"]["nodeId"] == "ns=2;s=Meters/W-V"
    groups = by_name(r["groups"]["references"])
    assert list(groups) == ["D"] and groups["D"]["typeDefinition"] == group_type
    assert groups["D"]["displayName"] == "District"
    district = by_name(r["district"]["references"])
    assert district["G"]["typeDefinition"] == group_type and district["G"]["displayName"] == "House 1"
    assert {"LastHour", "Today", "Name", "Level", "LossNormPercent"} <= set(district)
    modules = by_name(r["modules"]["references"])
    assert sorted(modules) == ["1001", "1002"] and {m["typeDefinition"] for m in modules.values()} == {module_type}
    module = by_name(r["module"]["references"])
    assert {"IN", "W-V", "W-R"} <= set(module) and module["W-V"]["nodeId"] == "ns=2;s=Meters/W-V"
    # Methods only where the meter has a valve or relay.
    w_v, w_r = by_name(r["w-v"]["references"]), by_name(r["w-r"]["references"])
    assert {"CloseValve", "OpenValve", "ShedLoad", "RestoreLoad", "Valve", "Relay"} <= set(w_v)
    assert {"ShedLoad", "RestoreLoad", "Relay"} <= set(w_r) and not {"CloseValve", "Valve"} & set(w_r)
    assert w_v["CloseValve"]["nodeClass"] == 4  # Method

    # Values and units match the HTTP API.
    for meter_id, weight in (("W-V", 0.001), ("W-R", 0.01)):
        got = dict(zip(values, r[f"read-{meter_id.lower()}"]["values"], strict=True))
        api = (await site.get(f"/api/v1/meters/{meter_id}/readings", **{"from": site.hour - 12 * HOUR,
                                                                          "to": site.hour + HOUR}))["readings"][-1]
        assert got["Value"]["status"] == "Good" and got["Value"]["dataType"] == "Double"
        assert got["Value"]["value"] == pytest.approx(api["value"], abs=1e-9)
        assert unix(got["Value"]["sourceTimestamp"]) == unix(api["t"])  # the reading that changed it
        assert unix(got["LastReadingTime"]["value"]) == unix(api["t"])
        assert got["Status"]["value"] == api["status"]
        # DataAge as of its source timestamp (rewritten every age_interval_s, here 1 s).
        age_t = unix(got["DataAge"]["sourceTimestamp"])
        assert got["DataAge"]["value"] == age_t - unix(api["t"]) and 0 <= time.time() - age_t < 30
        for eu in (got["Value/EngineeringUnits"]["value"], got["LastHour/EngineeringUnits"]["value"]):
            assert eu["unitId"] == 5067857 and eu["displayName"]["text"] == "m³"  # UN/CEFACT MTQ
        hour_t = unix(got["LastHourStart"]["value"])
        assert hour_t == site.hour - HOUR
        consumption = await site.get(f"/api/v1/meters/{meter_id}/consumption", **{"from": hour_t, "to": hour_t + HOUR})
        assert got["LastHour"]["value"] == pytest.approx(consumption["points"][0]["value"], abs=1e-9)
        assert got["LastHour"]["value"] == pytest.approx(PER_HOUR[2 if meter_id == "W-V" else 3] * weight)
        assert got["PulseWeight"]["value"] == weight
        assert got["Relay"]["value"] is True and got["Relay"]["status"] == "Good"
    w_v_values = dict(zip(values, r["read-w-v"]["values"], strict=True))
    assert w_v_values["Status"]["value"] & Status.VALVE_CLOSED and w_v_values["Valve"]["value"] is False
    w_r_values = dict(zip(values, r["read-w-r"]["values"], strict=True))
    assert w_r_values["Valve"]["status"] == "BadNodeIdUnknown"  # no valve, no node
    assert [v["value"] for v in r["types-of-values"]["values"]] == ["ns=0;i=11", "ns=0;i=5", "ns=0;i=7",
                                                                    "ns=0;i=13", "ns=0;i=1"]

    # The group's last hour and today, as the API computes them.
    got = r["group"]["values"]
    hourly = dict(zip(group_values, got[: len(group_values)], strict=True))
    today = dict(zip(group_values, got[len(group_values):], strict=True))
    start = unix(hourly["Start"]["value"])
    point = (await site.get("/api/v1/groups/G/balance", **{"from": start, "to": start + HOUR}))["points"][0]
    for name, key in (("Input", "input"), ("Consumed", "consumed"), ("Imbalance", "imbalance"),
                      ("LossPercent", "loss_pct")):
        assert hourly[name]["value"] == pytest.approx(point[key], abs=1e-9), name
    assert hourly["Input"]["value"] == pytest.approx(PER_HOUR[1] * 0.001)
    assert hourly["Completeness"]["value"] == pytest.approx(100 * (point["completeness"]["measured"]
                                                                   + point["completeness"]["estimated"]))
    assert hourly["Flags"]["value"] == 1 << 3 and point["flags"] == ["norm_exceeded"]  # 1.213 of 3.217 lost
    assert hourly["LossPercent/EngineeringUnits"]["value"]["displayName"]["text"] == "%"
    assert hourly["Hours"]["value"] == 1
    day_start = unix(today["Start"]["value"])
    days = (await site.get("/api/v1/groups/G/balance", **{"from": day_start, "to": start + HOUR, "step": "day"})
            )["points"] if day_start < start + HOUR else []
    daily = next((p for p in days if unix(p["t"]) == day_start), None)
    if daily is None:  # the first hour of the day is not over yet
        assert today["Hours"]["value"] == 0 and today["Input"]["status"] == "BadNoData"
    else:
        assert today["Input"]["value"] == pytest.approx(daily["input"], abs=1e-9)
        assert today["LossPercent"]["value"] == pytest.approx(daily["loss_pct"], abs=1e-9)

    module = [v["value"] for v in r["module-values"]["values"]]
    assert module == [-71, 2, 3550, "1.4.2"]


# subscriptions and events ------------------------------------------------------------------------------


async def test_subscription_gets_new_readings_and_an_alarm_event_for_a_new_finding(make_site: MakeSite) -> None:
    site = await make_site()
    t = site.hour + 60
    fields = ["EventType", "SourceNode", "SourceName", "Severity", "Message", "FindingId", "AlarmId", "Kind",
              "Subject"]

    async def act(label: str) -> None:
        # A new reading of W-V (one more hour of pulses) goes through ingest; then a detector's finding.
        rows = np.array([(1001, 2, t, 50_000 + PER_HOUR[2] * 6, 0)], dtype=np.int64)
        await site.server.ingest.ingest(ReadingBatch(*(rows[:, i] for i in range(5))))
        await site.server.report_finding(Finding("test-detector", "W-V", "consumer_leak",
                                                 "continuous flow at W-V for 6 hours", Severity.CRITICAL,
                                                 data={"group_id": "G"}))

    steps = [
        {"op": "connect", "session": "view", "id": "connect"},
        {"op": "namespace", "session": "view", "uri": NS},
        {"op": "subscribe", "session": "view", "name": "s", "nodes": [node_id("Meters/W-V/Value"),
                                                                      node_id("Meters/W-V/Valve")],
         "events": fields},
        {"op": "collect", "name": "s", "timeout": 5000, "id": "initial",
         "until": [{"kind": "changes", "match": {"node": node_id("Meters/W-V/Value")}}]},
        {"op": "wait", "label": "subscribed"},
        {"op": "collect", "name": "s", "timeout": 10000, "id": "after",
         "until": [{"kind": "changes", "match": {"node": node_id("Meters/W-V/Value"),
                                                 "sourceTimestamp": datetime.fromtimestamp(t, UTC).isoformat(
                                                     timespec="milliseconds").replace("+00:00", "Z")}},
                   {"kind": "changes", "match": {"node": node_id("Meters/W-V/Valve"), "value": True}},
                   {"kind": "events", "match": {"Kind": "consumer_leak"}}]},
    ]
    before = (await site.get("/api/v1/meters/W-V/readings", **{"from": site.hour - 12 * HOUR,
                                                               "to": site.hour + 2 * HOUR}))["readings"][-1]
    r = await site.run({"view": site.session(VIEWER, mode="Sign")}, steps, on_wait=act)
    assert r["connect"]["ok"] and r["after"]["complete"], json.dumps(r["after"])
    changes = [c for c in r["after"]["changes"] if c["node"].endswith("W-V/Value")]
    assert changes[0]["value"] == pytest.approx(before["value"])  # the value when subscribed ...
    api = (await site.get("/api/v1/meters/W-V/readings", **{"from": site.hour - 12 * HOUR,
                                                            "to": site.hour + 2 * HOUR}))["readings"][-1]
    assert api["value"] == pytest.approx(before["value"] + PER_HOUR[2] * 0.001)
    assert changes[-1]["value"] == pytest.approx(api["value"])  # ... and the new one after ingest
    assert unix(changes[-1]["sourceTimestamp"]) == unix(api["t"])
    valve = [c["value"] for c in r["after"]["changes"] if c["node"].endswith("W-V/Valve")]
    assert valve == [False, True]  # the new reading no longer reports the valve closed

    (event,) = [e for e in r["after"]["events"] if e["Kind"] == "consumer_leak"]
    (finding,) = (await site.get("/api/v1/findings"))["findings"]
    (alarm,) = await site.server.storage.journal_list("alarms")
    assert event["FindingId"] == finding["id"] and event["AlarmId"] == alarm["id"]
    assert event["SourceNode"] == "ns=2;s=Meters/W-V" and event["SourceName"] == "W-V"
    assert event["Severity"] == 800 and event["Message"]["text"] == "continuous flow at W-V for 6 hours"
    assert event["EventType"] == "ns=2;s=Types/BalansAlarmEventType" and event["Subject"] == "W-V"

    # The same finding again is not new: no second event.
    await site.server.report_finding(Finding("test-detector", "W-V", "consumer_leak", "again", Severity.CRITICAL))
    assert site.opcua.events_sent == 1


async def test_a_value_keeps_the_time_of_its_last_change_and_freshness_has_its_own_variables(
        make_site: MakeSite) -> None:
    """No flow: a new reading repeats W-R's counter. Its Value does not change, so
    neither does its SourceTimestamp (the last change, OPC 10000-4 7.11.3);
    LastReadingTime and DataAge tell how fresh the data is."""
    from asyncua import ua

    site = await make_site()
    client = await ua_client(site)
    async with client:
        def read(name: str) -> Any:
            return client.get_node(ua.NodeId(f"Meters/W-R/{name}", 2)).read_data_value()

        before = await read("Value")
        assert before.SourceTimestamp == datetime.fromtimestamp(site.hour, UTC)
        t = max(int(time.time()) - 5, site.hour + 1)
        rows = np.array([(1001, 3, t, 50_000 + PER_HOUR[3] * 5, 0)], dtype=np.int64)
        await site.server.ingest.ingest(ReadingBatch(*(rows[:, i] for i in range(5))))

        async def fresh() -> bool:
            return (await read("LastReadingTime")).Value.Value == datetime.fromtimestamp(t, UTC)

        assert await eventually(fresh, 5.0)
        after = await read("Value")
        assert after.Value.Value == before.Value.Value and after.SourceTimestamp == before.SourceTimestamp
        async def young() -> bool:  # DataAge is rewritten every age_interval_s (1 s here)
            return (await read("DataAge")).Value.Value <= time.time() - t
        assert await eventually(young, 5.0)


# methods ---------------------------------------------------------------------------------------------


async def test_close_valve_as_operator_is_audited_and_a_viewer_is_denied(make_site: MakeSite) -> None:
    site = await make_site()
    w_v = node_id("Meters/W-V")
    steps = [
        {"op": "connect", "session": "op", "id": "op"},
        {"op": "connect", "session": "view", "id": "view"},
        {"op": "namespace", "session": "op", "uri": NS},
        {"op": "call", "session": "view", "object": w_v, "method": node_id("Meters/W-V/CloseValve"),
         "args": ["viewer tries"], "id": "viewer-call"},
        {"op": "write", "session": "view", "node": node_id("Meters/W-V/Value"), "dataType": "Double", "value": 1.5,
         "id": "viewer-write"},
        {"op": "write", "session": "op", "node": node_id("Meters/W-V/Value"), "dataType": "Double", "value": 1.5,
         "id": "operator-write"},
        {"op": "call", "session": "op", "object": w_v, "method": node_id("Meters/W-V/OpenValve"), "args": ["  "],
         "id": "no-reason"},
        {"op": "call", "session": "op", "object": node_id("Meters/W-R"), "method": node_id("Meters/W-V/CloseValve"),
         "args": ["wrong object"], "id": "wrong-object"},
        {"op": "call", "session": "op", "object": w_v, "method": node_id("Meters/W-V/CloseValve"),
         "args": ["leak in flat 3"], "id": "close"},
        {"op": "read", "session": "op", "nodes": [{"node": node_id("Meters/W-V/Valve")}], "id": "valve"},
        {"op": "call", "session": "op", "object": node_id("Meters/W-R"), "method": node_id("Meters/W-R/ShedLoad"),
         "args": ["peak tariff"], "id": "shed"},
        {"op": "read", "session": "op", "nodes": [{"node": node_id("Meters/W-R/Relay")}], "id": "relay"},
        {"op": "wait", "label": "jam the valve"},
        {"op": "call", "session": "aes", "object": w_v, "method": node_id("Meters/W-V/OpenValve"),
         "args": ["after the repair"], "id": "jammed"},
        {"op": "read", "session": "op", "nodes": [{"node": node_id("Meters/W-V/Valve")}], "id": "still-closed"},
    ]

    async def jam(label: str) -> None:
        site.valves.ok = False

    sessions = {"op": site.session(), "view": site.session(VIEWER),
                "aes": site.session(policy="Aes128_Sha256_RsaOaep", mode="Sign")}
    steps.insert(2, {"op": "connect", "session": "aes", "id": "aes"})
    r = await site.run(sessions, steps, on_wait=jam)
    assert r["op"]["ok"] and r["view"]["ok"] and r["aes"]["ok"]
    assert r["viewer-call"]["status"] == "BadUserAccessDenied"
    # A viewer's Write service is refused as a whole; an operator's reaches the nodes, which are read-only.
    assert (r["viewer-write"]["ok"], r["viewer-write"]["error"]) == (False, "BadUserAccessDenied")
    assert r["operator-write"]["status"] == "BadUserAccessDenied"  # nothing is writable over OPC UA
    assert r["no-reason"]["status"] == "BadInvalidArgument"
    assert r["wrong-object"]["status"] == "BadMethodInvalid"
    assert r["close"]["status"] == "Good", r["close"]
    command_id, outcome, detail = r["close"]["outputs"]
    assert (outcome, detail) == ("done", "test-valves: moved")
    assert r["valve"]["values"][0]["value"] is False
    assert r["shed"]["status"] == "Good" and r["relay"]["values"][0]["value"] is False

    # A command the actuator fails: a Bad status, no state change.
    assert r["jammed"]["status"] == "BadDeviceFailure" and r["jammed"]["outputs"] == []
    assert r["still-closed"]["values"][0]["value"] is False

    # Audited with the OPC UA user; the viewer's attempt never reached the actuators.
    assert [(c.target, str(c.code)) for c in site.valves.commands] == [("W-V", "valve_close"), ("W-R", "relay_off"),
                                                                      ("W-V", "valve_open")]
    jammed, shed, close = await site.server.storage.journal_list("commands")
    assert close["id"] == command_id
    assert (close["requested_by"], close["reason"], close["outcome"]) == ("opcua:scada-op", "leak in flat 3", "done")
    assert (shed["requested_by"], shed["code"]) == ("opcua:scada-op", "relay_off")
    assert (jammed["requested_by"], jammed["outcome"], jammed["detail"]) == ("opcua:scada-op", "failed",
                                                                           "test-valves: jammed")


# security --------------------------------------------------------------------------------------------


async def test_trusted_certificate_is_accepted_and_untrusted_refused(make_site: MakeSite,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    site = await make_site(ingest=False)
    stranger = make_client_cert(site.tmp / "clients", "stranger")
    steps = [
        {"op": "connect", "session": "trusted", "id": "trusted"},
        {"op": "namespace", "session": "trusted", "uri": NS},
        {"op": "read", "session": "trusted", "nodes": [{"node": node_id("Meters/W-V/PulseWeight")}], "id": "read"},
        {"op": "connect", "session": "aes", "id": "aes"},
        {"op": "write", "session": "aes", "node": node_id("Meters/W-V/Value"), "dataType": "Double", "value": 1.5,
         "id": "viewer-write"},
        {"op": "connect", "session": "untrusted", "id": "untrusted"},
        {"op": "connect", "session": "wrong-password", "id": "wrong-password"},
        {"op": "connect", "session": "anonymous", "id": "anonymous"},
    ]
    sessions = {
        "trusted": site.session(),
        "aes": site.session(VIEWER, policy="Aes128_Sha256_RsaOaep"),
        "untrusted": site.session(cert=stranger),
        "wrong-password": site.session((OPERATOR[0], "not-the-password")),
        "anonymous": site.session(None),
    }
    r = await site.run(sessions, steps)
    assert r["trusted"]["ok"] and r["read"]["values"][0]["value"] == 0.001
    assert r["aes"]["ok"], r["aes"]
    assert not r["untrusted"]["ok"] and r["untrusted"]["error"] == "BadCertificateUntrusted", r["untrusted"]
    assert not r["wrong-password"]["ok"] and r["wrong-password"]["error"] == "BadUserAccessDenied"
    assert not r["anonymous"]["ok"]
    # The refused certificate is kept for review; moving it to trusted/ would admit the client.
    stranger_der = x509.load_pem_x509_certificate(stranger.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert [p.read_bytes() for p in site.opcua.pki.rejected.iterdir()] == [stranger_der]
    assert (r["viewer-write"]["ok"], r["viewer-write"]["error"]) == (False, "BadUserAccessDenied")
    # Refusals are logged, passwords never.
    assert "refused a session for user 'scada-op'" in caplog.text and "certificate not trusted" in caplog.text
    assert OPERATOR[1] not in caplog.text and "not-the-password" not in caplog.text and VIEWER[1] not in caplog.text
    # Each refusal once at WARNING with the client's address and the reason; asyncua's fault line at INFO,
    # so nothing a log monitor pages on (ERROR) for a refusal that is the server doing its job.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()]
    peer_of = r"from 127\.0\.0\.1:\d+"
    for reason in (r"refused a session for user 'scada-op' " + peer_of + r" \(unknown user or wrong password\)",
                   r"refused client urn:balans-edge-tests:node-opcua \(.*CN=stranger\) " + peer_of
                   + ": certificate not trusted",
                   r"refused a write of user 'test-viewer' \(viewer\) " + peer_of):
        assert len([w for w in warnings if re.search(reason, w)]) == 1, (reason, warnings)
    answered = [r.getMessage() for r in caplog.records if r.name == "asyncua.server.uaprocessor"]
    assert sorted(re.sub(r":\d+$", "", a) for a in answered) == [
        "opcua: answered BadCertificateUntrusted to 127.0.0.1", "opcua: answered BadUserAccessDenied to 127.0.0.1",
        "opcua: answered BadUserAccessDenied to 127.0.0.1"]


async def test_a_meter_id_holding_the_separator_is_its_own_node(make_site: MakeSite) -> None:
    """Meter ``W-V/Status`` next to meter ``W-V``: two nodes, both served, read by node-opcua."""
    site = await make_site(ingest=False)
    install = site.hour - 12 * HOUR
    await site.server.storage.registry_apply({
        "modules": [RadioModule(1003, 7, channels=0b001)],
        "meters": [Meter("W-V/Status", Resource.WATER, "m3", 0.001, install, module_id=1003, channel=1,
                         flags=frozenset({"valve"}))]})
    assert await eventually(lambda: site.opcua.values is not None and "W-V/Status" in site.opcua.values.row_of_meter)
    rows = np.array([(1001, 2, site.hour, 50_000, int(Status.VALVE_CLOSED)), (1003, 1, site.hour, 4321, 0)],
                    dtype=np.int64)
    await site.server.ingest.ingest(ReadingBatch(*(rows[:, i] for i in range(5))))
    assert await eventually(lambda: np.isfinite(site.opcua.values.value).sum() == 2)
    steps = [
        {"op": "connect", "session": "op", "id": "connect"},
        {"op": "namespace", "session": "op", "uri": NS},
        {"op": "browse", "session": "op", "node": node_id("Balans/Meters"), "id": "meters"},
        {"op": "read", "session": "op", "id": "read", "nodes": [
            {"node": node_id("Meters/W-V/Status")}, {"node": node_id("Meters/W-V%2FStatus/Value")},
            {"node": node_id("Meters/W-V%2FStatus/Status")}, {"node": node_id("Meters/W-V/Value")}]},
        {"op": "call", "session": "op", "object": node_id("Meters/W-V%2FStatus"),
         "method": node_id("Meters/W-V%2FStatus/CloseValve"), "args": ["test"], "id": "close"},
    ]
    r = await site.run({"op": site.session()}, steps)
    assert r["connect"]["ok"] and r["read"]["ok"], r
    meters = by_name(r["meters"]["references"])
    assert meters["W-V/Status"]["nodeId"] == "ns=2;s=Meters/W-V%2FStatus" and meters["W-V"]["nodeId"] == \
        "ns=2;s=Meters/W-V"
    status, other_value, other_status, value = r["read"]["values"]
    assert (status["dataType"], status["value"]) == ("UInt16", int(Status.VALVE_CLOSED))
    assert (other_value["status"], other_value["value"]) == ("Good", pytest.approx(4.321))
    assert (other_status["dataType"], other_status["value"]) == ("UInt16", 0)
    assert value["value"] == pytest.approx(BASE_W_V + 50.0)
    # The method names the meter by its registry id in the audit (no actuator takes it: refused).
    assert r["close"]["status"] == "BadInvalidState"
    (command,) = await site.server.storage.journal_list("commands")
    assert command["target"] == "W-V/Status"
    assert not site.opcua.refresh_failed


def test_only_refusals_are_taken_off_the_error_level() -> None:
    from balans_edge.plugins.opcua.security import FAULT_LINE, RefusalLog

    def record(status: str) -> logging.LogRecord:
        out = logging.LogRecord("asyncua.server.uaprocessor", logging.ERROR, "uaprocessor.py", 181, FAULT_LINE,
                                ("some text", status), None)
        assert RefusalLog().filter(out)
        return out

    refused = record("BadCertificateUntrusted")
    assert (refused.levelno, refused.levelname, refused.getMessage()) == (
        logging.INFO, "INFO", "opcua: answered BadCertificateUntrusted to ?")  # no request served here
    for status in ("BadInternalError", "BadTooManySessions", "NotAStatus"):
        kept = record(status)
        assert (kept.levelno, kept.getMessage()) == (logging.ERROR, f"sending service fault response: some text "
                                                                     f"({status})")


# the registry changes while clients are connected ------------------------------------------------------


async def ua_client(site: Site, user: tuple[str, str] | None = OPERATOR) -> Any:
    """An asyncua client over Basic256Sha256 SignAndEncrypt with the trusted certificate."""
    from asyncua import Client
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    client = Client(site.endpoint)
    client.application_uri = CLIENT_URI
    await client.set_security(SecurityPolicyBasic256Sha256, str(site.trusted.cert), str(site.trusted.key),
                              server_certificate=str(site.opcua.pki.cert_der),
                              mode=__import__("asyncua").ua.MessageSecurityMode.SignAndEncrypt)
    if user:
        client.set_user(user[0])
        client.set_password(user[1])
    return client


async def test_address_space_follows_the_registry(make_site: MakeSite) -> None:
    from asyncua import ua

    site = await make_site()
    storage = site.server.storage
    client = await ua_client(site)
    async with client:
        def node(ident: str) -> Any:
            return client.get_node(ua.NodeId(ident, 2))

        async def names(ident: str) -> list[str]:
            return sorted([(await c.read_browse_name()).Name for c in await node(ident).get_children()])

        assert "W-R" in await names("Balans/Meters")
        install = site.hour - 12 * HOUR
        await storage.registry_apply(
            {"meters": [Meter("W-NEW", Resource.WATER, "m3", 0.001, install, module_id=1002, channel=2,
                              flags=frozenset({"valve"}))],
             "modules": [RadioModule(1002, 7, channels=0b011)],
             "groups": [Group("G", Resource.WATER, "m3", (GroupInput("IN"),), name="House 1 (renamed)",
                              loss_norm_pct=4.0)]},
            {"meters": ["W-R"]})

        async def applied() -> bool:
            try:
                return "W-NEW" in await names("Balans/Meters")
            except ua.UaStatusCodeError:  # a child listed, then removed by the rebuild before it was read
                return False

        assert await eventually(applied, 5.0)
        assert await names("Balans/Meters") == ["D-IN", "IN", "W-NEW", "W-V"]
        # W-R is gone with every node below it, and from its module and group.
        bad = await node("Meters/W-R/Value").read_data_value(raise_on_bad_status=False)
        assert bad.StatusCode.value == ua.StatusCodes.BadNodeIdUnknown
        assert "W-R" not in await names("Modules/1001")
        assert "W-NEW" in await names("Modules/1002")
        assert "CloseValve" in await names("Meters/W-NEW")
        # G lost its parent: it moved from under D to the Groups folder; its new name and norm show.
        assert await names("Balans/Groups") == ["D", "G"]
        assert "G" not in await names("Groups/D")
        assert (await node("Groups/G").read_display_name()).Text == "House 1 (renamed)"
        assert await node("Groups/G/LossNormPercent").read_value() == 4.0
        assert (await node("Groups/G").get_parent()).nodeid == ua.NodeId("Balans/Groups", 2)
        # No reference points at a node that no longer exists.
        aspace = site.opcua.space.aspace
        nodes = list(aspace.keys())  # an AddressSpace is not iterable
        dangling = [(n, r.NodeId) for n in nodes if n.NamespaceIndex == 2
                    for r in aspace[n].references if r.NodeId not in aspace]
        assert dangling == []

        # The new meter's values follow its readings.
        rows = np.array([(1002, 2, site.hour - HOUR, 700, 0), (1002, 2, site.hour, 1900, 0)], dtype=np.int64)
        await site.server.ingest.ingest(ReadingBatch(*(rows[:, i] for i in range(5))))
        await site.server.intervals.process()

        async def valued() -> bool:
            dv = await node("Meters/W-NEW/LastHour").read_data_value(raise_on_bad_status=False)
            return dv.StatusCode.is_good() and dv.Value.Value == pytest.approx(1.2)

        assert await eventually(valued, 5.0)
        assert await node("Meters/W-NEW/Value").read_value() == pytest.approx(1.9)
        assert await node("Meters/W-NEW/Valve").read_value() is True


async def test_a_session_on_an_unsecured_channel_can_do_nothing(make_site: MakeSite,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the None policy, a client that opens an unsecured channel (allowed,
    to ask for the endpoints) and ignores the endpoint list gets a session that
    can do nothing."""
    from asyncua import Client, ua

    site = await make_site(ingest=False, anonymous_role="viewer")
    secure = await ua_client(site, user=None)
    async with secure:  # anonymous viewers may read on a secure channel
        assert await secure.get_node(ua.NodeId("Meters/W-V/PulseWeight", 2)).read_value() == 0.001
    monkeypatch.setattr(Client, "find_endpoint", staticmethod(lambda endpoints, mode, uri: endpoints[0]))
    plain = Client(site.endpoint)
    async with plain:
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await plain.get_node(ua.NodeId("Meters/W-V/PulseWeight", 2)).read_value()


async def test_none_policy_only_when_listed(make_site: MakeSite) -> None:
    from asyncua import Client

    site = await make_site(ingest=False, security_policies=["None", "Basic256Sha256"], security_modes=["Sign"])
    endpoints = await Client(site.endpoint).connect_and_get_server_endpoints()
    offered = {(e.SecurityPolicyUri.rsplit("#", 1)[1], e.SecurityMode.name) for e in endpoints}
    assert offered == {("None", "None_"), ("Basic256Sha256", "Sign")}


# the server's certificate ------------------------------------------------------------------------------


async def test_certificate_is_made_once_and_must_name_the_application_uri(tmp_path: Path, make_site: MakeSite,
                                                                         make_server: Any) -> None:
    first = await make_site(ingest=False)
    folder = first.opcua.pki
    assert first.opcua.certificate_created
    der = folder.cert_der.read_bytes()
    assert folder.key_pem.stat().st_mode & 0o777 == 0o600
    cert = x509.load_der_x509_certificate(der)
    assert pki.application_uris(cert) == ["urn:balans-edge-tests:server"]
    usages = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usages.digital_signature and usages.key_encipherment and usages.data_encipherment
    await first.server.stop()

    again = await make_site(seed=False, ingest=False)
    assert not again.opcua.certificate_created and folder.cert_der.read_bytes() == der
    await again.server.stop()

    # Another application URI: the certificate must be replaced deliberately, so the plugin fails to start.
    config = base_config(tmp_path, plugins={"opcua": {"server": {
        "enabled": True, "port": 0, "pki_dir": str(folder.root), "application_uri": "urn:another:server"}}})
    server = await make_server(config)
    info = server.plugins.info["opcua"]
    assert info.state == "failed" and "was made for urn:balans-edge-tests:server" in info.error
    assert not [c for _, c in server.components if isinstance(c, OpcuaServer)]
    assert folder.cert_der.read_bytes() == der


def test_configuration_is_checked() -> None:
    from balans_edge.config import parse_config
    from balans_edge.plugin_manager import config_schemas, load_plugins
    from balans_edge.settings import ConfigError

    schemas = config_schemas(load_plugins())
    config = parse_config({"plugins": {"opcua": {"server": {"enabled": True}}}}, schemas)
    server = config.plugins["opcua"].server
    assert server.security_policies == ["Basic256Sha256", "Aes128_Sha256_RsaOaep"]
    assert (server.host, server.port, server.path, server.anonymous_role) == ("127.0.0.1", 4840, "/balans-edge/",
                                                                              "none")
    bad = {"security_policies": ["Basic128Rsa15"],
           "users": [{"name": "a", "role": "operator", "password": "short"}]}
    with pytest.raises(ConfigError) as err:
        parse_config({"plugins": {"opcua": {"server": bad}}}, schemas)
    text = str(err.value)
    assert "expected at least 8 characters" in text and "short" not in text.replace("expected", "")
    with pytest.raises(ConfigError, match="unknown 'Basic128Rsa15'"):
        parse_config({"plugins": {"opcua": {"server": {"security_policies": ["Basic128Rsa15"]}}}}, schemas)
