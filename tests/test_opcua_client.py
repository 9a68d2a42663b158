"""The OPC UA client against a small pumping station served by asyncua on
127.0.0.1: values, units, quality and source timestamps through the real
server's HTTP API and storage, subscriptions and polling, scale and offset, a
bad status code, the server stopping and coming back on the same port, one
device's fault not touching another, a flow totaliser that becomes a meter with
hourly consumption, a secure session (Basic256Sha256 SignAndEncrypt, a user
and password, trusted certificates both ways), and the command line."""

from __future__ import annotations

import asyncio
import stat
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from asyncua import ua
from cryptography.hazmat.primitives.serialization import Encoding
from modbus_support import plc
from opcua_support import NAMESPACE, Station, station
from totaliser_support import ReplayedTotaliser

from balans_edge.config import parse_config
from balans_edge.core.bus import TagValues
from balans_edge.core.model import Meter, RadioModule, Resource
from balans_edge.core.times import iso
from balans_edge.plugin_manager import config_schemas, load_plugins
from balans_edge.plugins.common.tag_repository import TagRepository
from balans_edge.plugins.opcua import client as client_module
from balans_edge.plugins.opcua import pki
from balans_edge.plugins.opcua.client import OpcuaClient
from balans_edge.plugins.opcua.client_config import DeviceConfig
from balans_edge.plugins.opcua.client_pki import ensure_client_certificate
from balans_edge.settings import ConfigError

from conftest import auth, base_config, eventually

BIN = Path(sys.executable).parent
FAST = {"timeout_s": 0.5, "watchdog_s": 0.2, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2,
        "publishing_interval_s": 0.05, "keepalive_s": 0.2, "store_every_s": 0.0}


def device(name: str, url: str, tags: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {"name": name, "endpoint": url, **FAST, **kw, "tags": tags}


async def start(make_server, tmp_path: Path, devices: list[dict], **sections: Any):
    server = await make_server(base_config(tmp_path, plugins={"opcua": {"devices": devices}}, **sections))
    client = next(c for _, c in server.components if isinstance(c, OpcuaClient))
    return server, client


def tags_of(client: OpcuaClient) -> dict[str, dict[str, Any]]:
    return {t["tag"]: t for t in client.snapshot()}


def quality(client: OpcuaClient, tag: str) -> str:
    return tags_of(client)[tag]["quality"]


async def get(http: httpx.AsyncClient, path: str) -> Any:
    r = await http.get(path, headers=auth("viewer"))
    assert r.status_code == 200, r.text
    return r.json()


# -- configuration ---------------------------------------------------------------------


def test_config_errors_name_the_device_and_the_tag():
    schemas = config_schemas(load_plugins())

    def problems(opcua: dict) -> list[str]:
        with pytest.raises(ConfigError) as info:
            parse_config({"plugins": {"opcua": opcua}}, schemas)
        return info.value.problems

    url = "opc.tcp://10.20.0.7:4840/"
    bad = problems({"devices": [{"name": "PS2", "endpoint": url, "security_policy": "Basic256Sha256",
                                 "username": "scada", "tags": [
        {"name": "level", "node_id": "ns=2;s=Tank.Level"},
        {"name": "level", "node_id": "ns=2;s=Tank.Level2"},
        {"name": "total", "node_id": "ns=2;i=1001", "meter_id": "PS2-OUT", "unit": "kWh", "resolution": 0.001},
    ]}]})
    assert bad == [
        '[plugins.opcua.devices[0]]: device "PS2": security_policy Basic256Sha256 needs server_certificate (the '
        "server's certificate to trust) or trust_on_first_use = true; "
        "device \"PS2\": username 'scada' needs password (or password_env); "
        'device "PS2" tag "level" is listed more than once; '
        'device "PS2" tag "total": meter_id needs module_id, a virtual module number 1..4294967295; '
        'device "PS2" tag "total": unit "kWh" is not a unit of water (allowed: m3)'
    ]
    bad = problems({"devices": [{"name": "PS2", "endpoint": "http://plc", "security_mode": "Encrypt", "tags": [
        {"name": "level", "node_id": "Tank.Level", "read": "sometimes"}, {"name": "flow", "node_id": "ns=2;i=abc"}]}]})
    assert bad == [
        '[plugins.opcua.devices[0]] endpoint: expected an endpoint URL such as "opc.tcp://10.20.0.7:4840/", '
        'got "http://plc"',
        '[plugins.opcua.devices[0]] security_mode: expected one of Sign, SignAndEncrypt, got "Encrypt"',
        '[plugins.opcua.devices[0].tags[0]] node_id: "Tank.Level" is not a node id (expected e.g. '
        '"ns=2;s=Tank.Level" or "nsu=urn:plc:station;s=Tank.Level")',
        '[plugins.opcua.devices[0].tags[0]] read: expected one of subscription, poll, got "sometimes"',
        '[plugins.opcua.devices[0].tags[1]] node_id: "ns=2;i=abc": a numeric node id (i=) needs digits',
    ]
    bad = problems({"devices": [
        {"name": "A", "endpoint": url, "tags": [{"name": "t", "node_id": "ns=2;s=T", "meter_id": "M", "module_id": 9,
                                                 "resolution": 1.0, "unit": "m3"}]},
        {"name": "A", "endpoint": url, "tags": [{"name": "u", "node_id": "ns=2;s=U", "meter_id": "M", "module_id": 9,
                                                 "resolution": 1.0, "unit": "m3"}]},
    ]})
    assert bad == ['[plugins.opcua]: device "A" is listed more than once; device "A" tag "u": meter "M" is already '
                   'made by device "A" tag "t"; device "A" tag "u": module_id 9 is already used by device "A" tag "t"']
    assert repr(DeviceConfig(name="X", endpoint=url, username="u", password="do-not-show")).count("do-not-show") == 0


# -- values and quality -------------------------------------------------------------------


async def test_values_quality_and_source_times_through_http_and_storage(make_server, client_for, tmp_path):
    async with station() as s, plc() as p:
        changed_at = time.time() - 30  # the level last changed half a minute ago, at the station
        await s.set("level", 3.5, at=changed_at)
        await s.set("pump", True)
        await s.set("pressure", 452)
        await p.set_value(1, "holding", 0, 7)
        tags = [
            {"name": "level", "node_id": f"nsu={NAMESPACE};s=Tank.Level", "unit": "m", "interval_s": 0.02},
            {"name": "pump", "node_id": s.node_id("pump")},
            {"name": "pressure", "node_id": s.node_id("pressure"), "read": "poll", "interval_s": 0.05,
             "scale": 0.01, "offset": -1.0, "unit": "bar"},
            {"name": "missing", "node_id": "ns=2;s=Tank.Nothing"},
            {"name": "elsewhere", "node_id": "nsu=urn:no-such-namespace;s=Tank.Level"},
        ]
        modbus = {"devices": [{"name": "PLC1", "port": p.port, "timeout_s": 0.3, "store_every_s": 0.0,
                               "tags": [{"name": "speed", "address": 0, "interval_s": 0.05}]}]}
        # One session throughout (asserted below): a watchdog that tolerates a loaded machine's pauses.
        ps2 = device("PS2", s.url, tags, watchdog_s=2.0, timeout_s=2.0, keepalive_s=0.5)
        server = await make_server(base_config(tmp_path, plugins={"opcua": {"devices": [ps2]},
                                                                  "modbus": modbus}))
        client = next(c for _, c in server.components if isinstance(c, OpcuaClient))
        http = client_for(server)

        async def ready() -> Any:
            body = await get(http, "/api/v1/tags?protocol=opcua")
            rows = {r["tag"]: r for r in body["tags"]}
            return rows if all(rows[f"PS2/{n}"]["t"] for n in ("level", "pump", "pressure", "missing")) else None

        rows = await eventually(ready)
        assert rows, tags_of(client)
        level = rows["PS2/level"]
        assert (level["value"], level["unit"], level["quality"], level["protocol"]) == (3.5, "m", "good", "opcua")
        assert level["t"] == iso(int(changed_at))  # the source timestamp, not the time it was received
        assert (rows["PS2/pump"]["value"], rows["PS2/pump"]["quality"]) == (1.0, "good")
        assert rows["PS2/pressure"]["value"] == pytest.approx(3.52)  # 452 * 0.01 - 1
        assert rows["PS2/pressure"]["read"] == "poll" and rows["PS2/pressure"]["unit"] == "bar"
        assert (rows["PS2/missing"]["quality"], rows["PS2/missing"]["detail"]) == (
            "stale", "not subscribed: BadNodeIdUnknown")
        assert (rows["PS2/elsewhere"]["quality"], rows["PS2/elsewhere"]["detail"]) == (
            "stale", "namespace urn:no-such-namespace is not on the server")
        # One list for every protocol: the Modbus PLC's tag is there too.
        everything = await eventually(lambda: _tags_with(http, "PLC1/speed"))
        assert {r["protocol"] for r in everything} == {"modbus", "opcua"}

        # A data change reaches storage through the subscription (the level is never polled).
        reads = client.devices["PS2"].reads
        await s.set("level", 3.75)
        assert await eventually(lambda: tags_of(client)["PS2/level"]["value"] == 3.75)

        async def stored_level() -> Any:  # the state changes at once; its recording follows in a batch
            await server.storage.flush()
            found = await get(http, "/api/v1/tags/history?tag=PS2/level&from=0&to=4294967295")
            return found if found["samples"] and found["samples"][-1]["value"] == 3.75 else None

        history = await eventually(stored_level)
        assert history, "the new level was not stored"
        assert [(x["value"], x["quality"]) for x in history["samples"]] == [(3.5, "good"), (3.75, "good")]
        assert history["samples"][0]["ts"] == iso(int(changed_at))
        assert client.devices["PS2"].notifications >= 3
        assert await eventually(lambda: client.devices["PS2"].reads > reads + 2)  # and the polls go on
        latest = {r["tag"]: r for r in await TagRepository(server.storage).latest_tag_values()}
        assert latest["PS2/pressure"]["value"] == pytest.approx(3.52)
        status = (await get(http, "/api/v1/opcua/devices"))["devices"][0]
        assert status["up"] and status["connects"] == 1 and status["tags_by_read"] == {"subscription": 4, "poll": 1}


async def _tags_with(http: httpx.AsyncClient, tag: str) -> Any:
    rows = (await get(http, "/api/v1/tags"))["tags"]
    return rows if any(r["tag"] == tag and r["quality"] == "good" for r in rows) else None


async def test_a_bad_status_code_makes_the_tag_stale_with_its_name(make_server, tmp_path):
    async with station() as s:
        tags = [{"name": "level", "node_id": s.node_id("level"), "unit": "m", "interval_s": 0.02},
                {"name": "pressure", "node_id": s.node_id("pressure"), "read": "poll", "interval_s": 0.05}]
        server, client = await start(make_server, tmp_path, [device("PS2", s.url, tags, store_every_s=0.3)])
        sub = server.bus.subscribe(TagValues)
        assert await eventually(lambda: all(t["quality"] == "good" for t in client.snapshot()))
        notified = client.devices["PS2"].notifications
        await asyncio.sleep(1.25)  # storage keeps one sample per second: a second that ended good
        # The level did not change: no notification, but the keep-alives confirm it, so it is stored again.
        assert client.devices["PS2"].notifications == notified
        await server.storage.flush()
        stored = await TagRepository(server.storage).tag_values("PS2/level", 0, 2**40)
        assert len(stored) >= 2 and {(r["value"], r["quality"]) for r in stored} == {(3.25, "good")}
        await s.set("level", 4.0, status=ua.StatusCodes.BadSensorFailure)
        await s.set("pressure", 0, status=ua.StatusCodes.UncertainLastUsableValue)
        got = await eventually(lambda: tags_of(client) if all(
            t["quality"] == "stale" for t in client.snapshot()) else None)
        assert got, tags_of(client)
        assert (got["PS2/level"]["value"], got["PS2/level"]["detail"]) == (None, "BadSensorFailure")
        assert got["PS2/level"]["last_good_value"] == 3.25
        assert got["PS2/pressure"]["detail"] == "UncertainLastUsableValue"
        samples: list[tuple[str, str, str]] = []

        def published() -> bool:  # the state changes at once; the recording (and the event) follows in a batch
            while not sub.queue.empty():
                samples.extend((x.tag, x.quality, x.detail) for x in sub.queue.get_nowait().samples)
            return ("PS2/level", "stale", "BadSensorFailure") in samples

        assert await eventually(published), samples
        await server.storage.flush()
        latest = {r["tag"]: r for r in await TagRepository(server.storage).latest_tag_values()}
        assert (latest["PS2/level"]["quality"], latest["PS2/level"]["value"]) == ("stale", None)
        assert latest["PS2/level"]["last_good_value"] == 3.25
        assert client.devices["PS2"].up  # a bad value is not a bad connection
        await s.set("level", 4.5)
        assert await eventually(lambda: tags_of(client)["PS2/level"]["value"] == 4.5)


async def test_comm_fail_when_the_server_stops_and_fresh_values_after_it_restarts(make_server, tmp_path):
    async with station() as s:
        tags = [{"name": "level", "node_id": s.node_id("level"), "interval_s": 0.02},
                {"name": "pressure", "node_id": s.node_id("pressure"), "read": "poll", "interval_s": 0.05}]
        _, client = await start(make_server, tmp_path, [device("PS2", s.url, tags)])
        ps2 = client.devices["PS2"]
        assert await eventually(lambda: tags_of(client)["PS2/level"]["value"] == 3.25)
        await s.stop()
        down = await eventually(lambda: all(t["quality"] == "comm_fail" for t in client.snapshot()), timeout=3)
        assert down, tags_of(client)
        await asyncio.sleep(0.5)  # several failed attempts: the back-off grows
        assert ps2.backoff.failures >= 2 and not ps2.up
        assert tags_of(client)["PS2/level"]["detail"].startswith(f"cannot connect to {s.url}: ")
        assert tags_of(client)["PS2/level"]["last_good_value"] == 3.25
        await s.start()  # the same port, a new server process: subscriptions must be made anew
        await s.set("level", 2.5)
        await s.set("pressure", 120)
        back = await eventually(lambda: tags_of(client)["PS2/level"]["value"] == 2.5
                                and tags_of(client)["PS2/pressure"]["value"] == 120, timeout=5)
        assert back, tags_of(client)
        assert ps2.connects == 2 and ps2.backoff.failures == 0 and ps2.restarts == 0
        notified = ps2.notifications
        await s.set("level", 2.0)  # the level is only subscribed: a change arrives by the new subscription
        assert await eventually(lambda: tags_of(client)["PS2/level"]["value"] == 2.0)
        assert ps2.notifications > notified


async def test_a_fault_in_one_device_does_not_stop_another(make_server, tmp_path, monkeypatch):
    broken = True
    subscribe = client_module.OpcuaDevice._subscribe

    async def failing(self, *args: Any) -> None:  # a fault in A's own code, as a bug would cause
        if self.name == "A" and broken:
            raise RuntimeError("subscription setup broke")
        await subscribe(self, *args)

    monkeypatch.setattr(client_module.OpcuaDevice, "_subscribe", failing)
    async with station() as a, station() as b:
        tags = [{"name": "level", "node_id": a.node_id("level"), "interval_s": 0.02}]
        _, client = await start(make_server, tmp_path, [device("A", a.url, tags), device("B", b.url, tags)])
        device_a, device_b = client.devices["A"], client.devices["B"]
        assert await eventually(lambda: device_a.restarts >= 2)
        assert quality(client, "A/level") == "stale"
        assert tags_of(client)["A/level"]["detail"] == "client failed: RuntimeError: subscription setup broke"
        assert device_a.last_crash == "RuntimeError: subscription setup broke"
        assert await eventually(lambda: quality(client, "B/level") == "good")
        await b.set("level", 6.0)
        assert await eventually(lambda: tags_of(client)["B/level"]["value"] == 6.0)
        broken = False  # the loop keeps trying after its back-off, and comes back by itself
        await a.set("level", 5.0)
        assert await eventually(lambda: tags_of(client)["A/level"]["value"] == 5.0, timeout=5)
        assert device_b.restarts == 0 and device_b.connects == 1  # B's session was never touched
        assert device_a.connects == device_a.restarts + 1  # every attempt connected; our own code failed


# -- totalisers as meters -------------------------------------------------------------------


async def test_totaliser_becomes_a_meter_with_readings_and_hourly_consumption(make_server, client_for, tmp_path,
                                                                               monkeypatch):
    totaliser = ReplayedTotaliser()
    monkeypatch.setattr(client_module, "wall_clock", totaliser.clock)
    async with station() as s:

        async def show(at: float, litres: int) -> None:  # in litres, stamped by the station
            await s.set("total", litres, at=at)

        running = asyncio.create_task(totaliser.run(show))
        await asyncio.sleep(0.02)
        tags = [{"name": "outflow", "node_id": s.node_id("total"), "scale": 0.001, "unit": "m3",
                 "interval_s": 0.02, "meter_id": "PS2-OUT", "module_id": 900002, "resolution": 0.001,
                 "reading_every_s": 60.0}]
        server, _ = await start(make_server, tmp_path, [device("PS2", s.url, tags)], intervals={"debounce_s": 0.0})
        try:
            meter = await server.storage.registry_get("meters", "PS2-OUT")
            assert meter == Meter("PS2-OUT", Resource.WATER, "m3", 0.001, totaliser.t0, module_id=900002, channel=1)
            assert await server.storage.registry_get("modules", 900002) == RadioModule(900002, None, channels=1)
            http = client_for(server)
            await totaliser.start(http, "PS2-OUT")
            await asyncio.sleep(2.6)
        finally:
            running.cancel()
    await totaliser.check(http, "PS2-OUT", min_readings=20)
    assert server.ingest.totals.quarantined == 0 and not server.ingest.totals.rejected


async def test_a_different_existing_meter_is_not_overwritten(make_server, tmp_path):
    await (await make_server(base_config(tmp_path), http=False)).storage.registry_apply({
        "modules": [RadioModule(900002, None)],
        "meters": [Meter("PS2-OUT", Resource.WATER, "m3", 0.01, 1_390_000_000, module_id=900002, channel=1)],
    })
    tags = [{"name": "outflow", "node_id": "ns=2;s=Outflow.Total", "unit": "m3", "meter_id": "PS2-OUT",
             "module_id": 900002, "resolution": 0.001}]
    opcua = {"devices": [device("PS2", "opc.tcp://127.0.0.1:4840/", tags)]}
    server = await make_server(base_config(tmp_path, plugins={"opcua": opcua}))
    info = server.plugins.info["opcua"]
    assert info.state == "failed"
    assert ('[plugins.opcua] device "PS2" tag "outflow": meter "PS2-OUT" is in the registry with pulse_weight '
            "0.01") in info.error
    assert (await server.storage.registry_get("meters", "PS2-OUT")).pulse_weight == 0.01  # untouched
    assert not any(isinstance(c, OpcuaClient) for _, c in server.components)  # nothing is read


# -- security -------------------------------------------------------------------------------


async def test_secure_session_with_user_password_and_trusted_certificates(make_server, tmp_path, monkeypatch):
    client_pki = tmp_path / "client-pki"
    secure = {"security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt", "pki_dir": str(client_pki),
              "username": "scada", "timeout_s": 2.0, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    first = DeviceConfig(name="probe", endpoint="opc.tcp://127.0.0.1:4840/", pki_dir=str(client_pki))
    assert not first.certificate_path.exists()
    cert_path, key_path, uri = ensure_client_certificate(first)  # what the client does on first use
    assert cert_path == client_pki / "own" / "client_cert.der" and stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert pki.application_uris(pki.load_certificate(cert_path)) == [uri]
    s = Station(folder=tmp_path / "station", users={"scada": "pumps-at-night"})
    s.trust(cert_path)  # the station's administrator trusts our certificate
    await s.start()
    try:
            monkeypatch.setenv("PS2_OPCUA_PASSWORD", "pumps-at-night")
            level = [{"name": "level", "node_id": s.node_id("level"), "interval_s": 0.02}]
            other = tmp_path / "other"
            other.mkdir()
            (other / "server.der").write_bytes(pki.make_certificate(pki.new_key(), "impostor", "urn:impostor", [])
                                               .public_bytes(Encoding.DER))
            devices = [
                device("PS2", s.url, level, **secure, password_env="PS2_OPCUA_PASSWORD",
                       server_certificate=str(s.cert_path)),
                device("tofu", s.url, level, **secure, password="pumps-at-night", trust_on_first_use=True),
                device("wrong-password", s.url, level, **secure, password="not-the-one",
                       server_certificate=str(s.cert_path)),
                device("untrusted", s.url, level, **{**secure, "pki_dir": str(tmp_path / "stranger")},
                       password="pumps-at-night", server_certificate=str(s.cert_path)),
                device("impostor", s.url, level, **secure, password="pumps-at-night",
                       server_certificate=str(other / "server.der")),
            device("aes-sign", s.url, level, **{**secure, "security_policy": "Aes128_Sha256_RsaOaep",
                                                  "security_mode": "Sign"},
                   password="pumps-at-night", server_certificate=str(s.cert_path)),
            device("not-offered", s.url, level, **{**secure, "security_policy": "Aes128_Sha256_RsaOaep"},
                   password="pumps-at-night", server_certificate=str(s.cert_path)),
            ]
            _, client = await start(make_server, tmp_path, devices)

            def settled() -> dict[str, dict[str, Any]] | None:
                rows = tags_of(client)
                good = all(rows[f"{d}/level"]["quality"] == "good" for d in ("PS2", "tofu", "aes-sign"))
                return rows if good and all(r["t"] for r in rows.values()) else None

            rows = await eventually(settled, timeout=10)
            assert rows, tags_of(client)
            assert rows["PS2/level"]["value"] == 3.25
            kept = client_pki / "servers" / "tofu.der"
            assert kept.read_bytes() == pki.load_certificate(s.cert_path).public_bytes(Encoding.DER)
            assert (rows["wrong-password/level"]["quality"], rows["wrong-password/level"]["detail"]) == (
                "comm_fail", "BadUserAccessDenied")
            assert rows["untrusted/level"]["quality"] == "comm_fail"
            assert rows["untrusted/level"]["detail"] == "BadCertificateUntrusted"
            assert rows["impostor/level"]["quality"] == "comm_fail"
            assert rows["impostor/level"]["detail"].startswith("the server shows certificate ")
            assert "not the trusted" in rows["impostor/level"]["detail"]
            assert (tmp_path / "stranger" / "own" / "client_cert.der").exists()  # made on first use, then refused
            assert (rows["not-offered/level"]["quality"], rows["not-offered/level"]["detail"]) == (
                "comm_fail", "the server offers no Aes128_Sha256_RsaOaep SignAndEncrypt endpoint (it offers: "
                             "Aes128_Sha256_RsaOaep Sign, Basic256Sha256 SignAndEncrypt)")
            await s.set("level", 1.5)
            assert await eventually(lambda: tags_of(client)["PS2/level"]["value"] == 1.5)
            assert client.devices["PS2"].connects == 1 and client.devices["wrong-password"].connects == 0
    finally:
        await s.stop()


# -- command line ---------------------------------------------------------------------------


async def test_command_line_reads_a_device_once(tmp_path):
    async with station() as s:
        await s.set("level", 3.75)
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""\
            [storage]
            url = "sqlite:{tmp_path / 'balans.db'}"

            [[plugins.opcua.devices]]
            name = "PS2"
            endpoint = "{s.url}"
            timeout_s = 2.0

            [[plugins.opcua.devices.tags]]
            name = "level"
            node_id = "{s.node_id('level')}"
            unit = "m"

            [[plugins.opcua.devices.tags]]
            name = "pump_running"
            node_id = "{s.node_id('pump')}"
            read = "poll"

            [[plugins.opcua.devices.tags]]
            name = "missing"
            node_id = "ns=2;s=Nowhere"
            """), encoding="utf-8")
        proc = await asyncio.create_subprocess_exec(BIN / "balans-edge", "opcua", "read", "--device", "PS2", "-c",
                                                    str(config), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode()
        lines = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:] if line.strip()}
        assert lines["level"][:3] == ["3.75", "m", "good"], text
        assert lines["pump_running"][:2] == ["0", "good"]
        assert lines["missing"][:3] == ["-", "stale", "BadNodeIdUnknown"]
        assert proc.returncode == 1  # not every tag is good
