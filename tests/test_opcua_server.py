"""The OPC UA server for SCADA, end to end, its address space and values: a real
balans-edge server whose readings went through ingest, intervals and balances,
browsed, read and subscribed to by node-opcua (an OPC UA stack independent of
the server's asyncua) and compared with what the HTTP API answers; the address
space follows the registry while clients are connected. Methods, sessions and
certificates: ``test_opcua_server_security.py``."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from opcua_server_site import (
    BASE_W_V,
    HOUR,
    NS,
    PER_HOUR,
    VIEWER,
    MakeSite,
    by_name,
    node_id,
    site_factory,
    ua_client,
    unix,
)

from balans_edge.core.components import Finding, Severity
from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.model import Group, GroupInput, Meter, RadioModule, Resource, Status
from balans_edge.plugins.opcua import pki

from conftest import eventually


@pytest.fixture
def make_site(tmp_path: Path, make_server: Any, client_for: Any) -> MakeSite:
    return site_factory(tmp_path, make_server, client_for)


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


# node ids -----------------------------------------------------------------------------------------


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


# the registry changes while clients are connected ------------------------------------------------------


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

