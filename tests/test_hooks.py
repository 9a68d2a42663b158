"""Every hook, end to end: the example plugin (an installed third-party
distribution found through its entry point) and small in-test plugins
contribute through each hook of a real server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import balans_edge_example
import pytest
from balans_edge_example import ExampleConfig

from balans_edge import hookimpl
from balans_edge.config import parse_config
from balans_edge.core.components import Alarm, Command, CommandCode, Finding, Severity
from balans_edge.core.context import Plugin
from balans_edge.plugin_manager import Plugins, config_schemas
from balans_edge.plugins.analytics.plugin import DETECTOR_NAMES
from balans_edge.settings import ConfigError

from conftest import auth, base_config, eventually, small_site

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def reset_example_state() -> None:
    balans_edge_example.STATE.update(readings=0, findings=[], alarms=[], commands=[], notified=[])


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "balans-edge"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)



def reading(module: int, channel: int, ts: int, counter: int) -> dict[str, int]:
    return {"module_id": module, "channel": channel, "ts": ts, "counter": counter}


class Probe:
    """A component that records when it starts and stops."""

    def __init__(self, name: str, log: list[tuple[str, str, Any]], plugins: Plugins) -> None:
        self.name = name
        self.log = log
        self.plugins = plugins

    def heartbeat_running(self) -> bool:
        beat = self.plugins.pm.get_plugin("example").heartbeat
        return beat._task is not None and not beat._task.done()

    async def start(self) -> None:
        self.log.append(("start", self.name, self.heartbeat_running()))

    async def stop(self) -> None:
        self.log.append(("stop", self.name, self.heartbeat_running()))


class Recorder(Plugin):
    """An in-test plugin: components that record their order, observers that record what they saw."""

    def __init__(self, plugins: Plugins) -> None:
        self.plugins = plugins
        self.log: list[tuple[str, str, Any]] = []
        self.seen: dict[str, list[Any]] = {"readings": [], "findings": [], "alarms": [], "commands": []}

    @hookimpl
    def register_components(self) -> list[Probe]:
        return [Probe("probe-a", self.log, self.plugins), Probe("probe-b", self.log, self.plugins)]

    @hookimpl
    def observe_readings(self, event: Any) -> None:
        self.seen["readings"].append(event)

    @hookimpl
    async def observe_findings(self, finding: Finding) -> None:
        stored = await self.context.queries.journal_list("findings")
        self.seen["findings"].append((finding, [r["id"] for r in stored]))

    @hookimpl
    def observe_alarms(self, alarm: Alarm) -> None:
        # The notifiers were asked first.
        self.seen["alarms"].append((alarm, list(balans_edge_example.STATE["notified"])))

    @hookimpl
    async def observe_commands(self, command: Command) -> None:
        stored = await self.context.queries.journal_list("commands")
        self.seen["commands"].append((command, [r["id"] for r in stored]))


class Raiser:
    """An in-test plugin whose every notifier, detector and observer raises."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def boom(self, where: str) -> None:
        self.calls.append(where)
        raise RuntimeError(f"raiser is broken ({where})")

    @hookimpl
    def register_notifiers(self) -> list[Any]:
        raiser = self

        class BrokenNotifier:
            name = "broken-notifier"

            async def notify(self, alarm: Alarm) -> None:
                raiser.boom("notify")

        return [BrokenNotifier()]

    @hookimpl
    def register_detectors(self) -> list[Any]:
        raiser = self

        class BrokenDetector:
            name = "broken-detector"

            async def detect(self, run: Any) -> list[Finding]:
                raiser.boom("detect")
                return []

        return [BrokenDetector()]

    @hookimpl
    def observe_readings(self, event: Any) -> None:
        self.boom("observe_readings")

    @hookimpl
    async def observe_findings(self, finding: Finding) -> None:
        self.boom("observe_findings")

    @hookimpl
    def observe_alarms(self, alarm: Alarm) -> None:
        self.boom("observe_alarms")

    @hookimpl
    async def observe_commands(self, command: Command) -> None:
        self.boom("observe_commands")


def raiser_first() -> tuple[Plugins, Raiser]:
    """Plugins with the raiser registered before every other plugin, so it is called first."""
    plugins = Plugins()
    raiser = Raiser()
    plugins.register(raiser, "raiser")
    plugins.load()
    assert list(plugins.info) == ["raiser", "dmesh", "analytics", "modbus", "opcua", "export", "example"]
    return plugins, raiser


MakeServer = Callable[..., Awaitable[Any]]


# config_schema ---------------------------------------------------------------


async def test_hook_config_schema(tmp_path: Path, plugins: Plugins, make_server: MakeServer) -> None:
    schemas = config_schemas(plugins)
    assert schemas["example"] is ExampleConfig

    bad = base_config(tmp_path, plugins={"example": {"interval_s": 0, "greting": "hi", "required": "yes"}})
    with pytest.raises(ConfigError) as exc:
        parse_config(bad, schemas)
    assert exc.value.problems == [
        '[plugins.example] required: expected true or false, got "yes"',
        '[plugins.example] greting: unknown key (did you mean "greeting"?)',
        "[plugins.example] interval_s: expected a number 0.01..3600, got 0",
    ]

    # Defaults when the table is absent.
    assert parse_config(base_config(tmp_path), schemas).plugins["example"] == ExampleConfig()

    good = base_config(tmp_path, plugins={"example": {"greeting": "privet", "interval_s": 0.5, "enabled": True}})
    server = await make_server(good, http=False)
    assert server.config.plugins["example"] == ExampleConfig(greeting="privet", interval_s=0.5)
    assert server.config.plugin_flags["example"].enabled is True

    # The command line reports the same problem with the file's name, and exits 2.
    config_file = tmp_path / "bad.toml"
    config_file.write_text("[plugins.example]\ninterval_s = 7200\n", encoding="utf-8")
    result = cli("check-config", str(config_file), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"config error: {config_file}: [plugins.example] interval_s: expected a number 0.01..3600, got 7200" in (
        result.stderr
    )


# register_components ---------------------------------------------------------


async def test_hook_register_components(tmp_path: Path, plugins: Plugins, make_server: MakeServer) -> None:
    recorder = Recorder(plugins)
    plugins.register(recorder, "recorder")
    server = await make_server(base_config(tmp_path, plugins={"example": {"interval_s": 0.01}}), http=False)

    assert [(n, c.name) for n, c in server.components] == [
        ("analytics", "analytics-scheduler"),
        ("export", "export-queues"),
        ("example", "example-heartbeat"),
        ("recorder", "probe-a"),
        ("recorder", "probe-b"),
    ]
    heartbeat = server.components[2][1]
    assert await eventually(lambda: heartbeat.ticks >= 5)
    assert recorder.log == [("start", "probe-a", True), ("start", "probe-b", True)]

    await server.stop()
    # Reverse order of start: the probes stop while the heartbeat (started first) still runs.
    assert recorder.log[2:] == [("stop", "probe-b", True), ("stop", "probe-a", True)]
    assert heartbeat._task.done()
    ticks = heartbeat.ticks
    await asyncio.sleep(0.05)
    assert heartbeat.ticks == ticks


# register_routes ---------------------------------------------------------------


async def test_hook_register_routes(tmp_path: Path, make_server: MakeServer, client_for: Callable[[Any], Any]) -> None:
    server = await make_server(base_config(tmp_path, plugins={"example": {"greeting": "salam"}}))
    client = client_for(server)

    r = await client.get("/api/v1/example/summary", headers=auth("viewer"))
    assert r.status_code == 200
    assert r.json() == {"greeting": "salam", "meters": 0, "readings_seen": 0}

    await server.storage.registry_apply(small_site())
    r = await client.get("/api/v1/example/summary", headers=auth("viewer"))
    assert r.json()["meters"] == 3

    r = await client.get("/api/v1/example/summary")
    assert r.status_code == 401
    assert r.json() == {"error": {"code": "unauthorized", "message": "missing or invalid bearer token"}}

    spec = (await client.get("/api/v1/openapi.json")).json()
    op = spec["paths"]["/api/v1/example/summary"]["get"]
    assert op["summary"] == "Example plugin summary"
    assert op["x-role"] == "viewer"
    assert op["tags"] == ["example"]


# register_commands ---------------------------------------------------------------


def test_hook_register_commands(tmp_path: Path) -> None:
    result = cli("example-hello", "--name", "Gulnara", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello, Gulnara, from the example plugin\n"

    result = cli("--help", cwd=tmp_path)
    assert "example-hello" in result.stdout
    assert "Say hello" in result.stdout


# register_detectors ----------------------------------------------------------------


async def test_hook_register_detectors(
    tmp_path: Path, make_server: MakeServer, client_for: Callable[[Any], Any]
) -> None:
    plugins, raiser = raiser_first()
    server = await make_server(base_config(tmp_path), plugins_=plugins)
    client = client_for(server)
    assert [(n, d.name) for n, d in server.detection.detectors] == [
        ("raiser", "broken-detector"),
        *(("analytics", name) for name in DETECTOR_NAMES),  # built-in, registered like any plugin's
        ("example", "example-quarantine"),
    ]

    assert await server.run_detectors() == []  # nothing in the quarantine yet
    assert raiser.calls == ["detect"]
    assert plugins.info["raiser"].errors == 1

    now = int(time.time())
    r = await client.post(
        "/api/v1/readings",
        headers=auth("operator"),
        json={"readings": [reading(4242, 1, now - 60, 10), reading(4242, 2, now - 60, 20)]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["quarantined"] == 2

    found = await server.run_detectors()
    # The broken detector ran first and did not stop the example one; the
    # raiser's observer failed on the example's finding, and the example's saw it.
    assert raiser.calls == ["detect", "detect", "observe_findings", "notify", "observe_alarms"]
    assert plugins.info["raiser"].errors == 5
    assert len(found) == 1
    finding = found[0]
    assert (finding.detector, finding.subject, finding.kind, finding.severity) == (
        "example-quarantine",
        "module:4242",
        "unregistered_module",
        Severity.INFO,
    )
    assert finding.id is not None and finding.t > 0

    stored = await server.storage.journal_list("findings")
    assert [(r["id"], r["detector"], r["subject"], r["kind"], r["severity"]) for r in stored] == [
        (finding.id, "example-quarantine", "module:4242", "unregistered_module", "info")
    ]
    assert balans_edge_example.STATE["findings"] == [finding]


# register_actuators ------------------------------------------------------------------


async def test_hook_register_actuators(tmp_path: Path, make_server: MakeServer) -> None:
    server = await make_server(base_config(tmp_path), http=False)

    done = await server.actuation.execute(
        Command("example:valve-7", CommandCode.VALVE_CLOSE, requested_by="test-operator", reason="leak on riser 3")
    )
    assert done.outcome == "done"
    assert done.detail == "example-actuator: valve_close on example:valve-7"

    refused = await server.actuation.execute(
        Command("W-404", CommandCode.RELAY_OFF, requested_by="policy:night", reason="debt")
    )
    assert refused.outcome == "refused"
    assert refused.detail == "no actuator handles relay_off for W-404"

    stored = await server.storage.journal_list("commands")
    assert [
        {k: r[k] for k in ("id", "target", "code", "requested_by", "reason", "outcome", "detail")} for r in stored
    ] == [
        {
            "id": refused.id,
            "target": "W-404",
            "code": "relay_off",
            "requested_by": "policy:night",
            "reason": "debt",
            "outcome": "refused",
            "detail": "no actuator handles relay_off for W-404",
        },
        {
            "id": done.id,
            "target": "example:valve-7",
            "code": "valve_close",
            "requested_by": "test-operator",
            "reason": "leak on riser 3",
            "outcome": "done",
            "detail": "example-actuator: valve_close on example:valve-7",
        },
    ]
    assert all(r["t"] > 0 for r in stored)

    with pytest.raises(ValueError, match="requested_by and reason"):
        await server.actuation.execute(Command("example:valve-7", CommandCode.VALVE_OPEN, "", ""))
    assert len(await server.storage.journal_list("commands")) == 2


# register_notifiers ---------------------------------------------------------------------


async def test_hook_register_notifiers(tmp_path: Path, make_server: MakeServer) -> None:
    plugins, raiser = raiser_first()
    alarm_file = tmp_path / "alarms.jsonl"
    server = await make_server(
        base_config(tmp_path, plugins={"example": {"alarm_file": str(alarm_file)}}), http=False, plugins_=plugins
    )
    assert [(n, x.name) for n, x in server.notifiers] == [
        ("raiser", "broken-notifier"),
        ("example", "example-notifier"),
    ]

    alarm = await server.raise_alarm(Alarm("PS-2", "pressure low at PS-2", Severity.CRITICAL))

    assert raiser.calls == ["notify", "observe_alarms"]  # the broken notifier was asked first and raised
    assert plugins.info["raiser"].errors == 2
    lines = alarm_file.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"source": "PS-2", "message": "pressure low at PS-2"}]
    stored = await server.storage.journal_list("alarms")
    assert [(r["id"], r["source"], r["severity"], r["message"]) for r in stored] == [
        (alarm.id, "PS-2", "critical", "pressure low at PS-2")
    ]


# register_exporters ---------------------------------------------------------------------


async def test_hook_register_exporters(
    tmp_path: Path, make_server: MakeServer, client_for: Callable[[Any], Any]
) -> None:
    server = await make_server(base_config(tmp_path))
    client = client_for(server)
    exporter = next(e for n, e in server.exporters if n == "example")

    health = (await client.get("/api/v1/health", headers=auth("viewer"))).json()
    assert health["exporters"] == {"example-exporter": {"running": True, "readings_seen": 0}}
    assert health["plugins"]["example"] == "started"

    await server.storage.registry_apply(small_site())
    now = int(time.time())
    r = await client.post(
        "/api/v1/readings",
        headers=auth("operator"),
        json={"readings": [reading(1001, 1, now - 120, 5), reading(1001, 1, now - 60, 9)]},
    )
    assert r.json()["accepted"] == 2, r.text

    async def seen() -> int:
        health = (await client.get("/api/v1/health", headers=auth("viewer"))).json()
        return health["exporters"]["example-exporter"]["readings_seen"]

    deadline = time.monotonic() + 5
    while await seen() != 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)

    await server.stop()
    assert exporter.status()["running"] is False


# observers ---------------------------------------------------------------------------------


async def test_hook_observe_readings(
    tmp_path: Path, plugins: Plugins, make_server: MakeServer, client_for: Callable[[Any], Any]
) -> None:
    recorder = Recorder(plugins)
    plugins.register(recorder, "recorder")
    server = await make_server(base_config(tmp_path))
    client = client_for(server)
    await server.storage.registry_apply(small_site())
    keys = await server.storage.meter_keys()

    now = int(time.time())
    batch = [
        reading(1001, 1, now - 300, 100),
        reading(1002, 3, now - 200, 7),
        reading(1001, 1, now - 100, 104),
        reading(5555, 1, now - 100, 1),
    ]
    r = await client.post("/api/v1/readings", headers=auth("operator"), json={"readings": batch})
    assert r.status_code == 200
    assert (r.json()["accepted"], r.json()["quarantined"]) == (3, 1)

    assert await eventually(lambda: recorder.seen["readings"])
    (event,) = recorder.seen["readings"]
    assert event.meters == tuple(sorted((keys["W-1"], keys["W-3"])))
    assert (event.count, event.t_min, event.t_max) == (3, now - 300, now - 100)
    assert await eventually(lambda: balans_edge_example.STATE["readings"] == 3)


async def test_slow_observer_does_not_delay_acknowledgements(
    tmp_path: Path, plugins: Plugins, make_server: MakeServer, client_for: Callable[[Any], Any]
) -> None:
    class Stuck:
        calls = 0

        @hookimpl
        async def observe_readings(self) -> None:
            Stuck.calls += 1
            await asyncio.Event().wait()  # never returns

    plugins.register(Stuck(), "stuck")
    server = await make_server(base_config(tmp_path))
    client = client_for(server)
    await server.storage.registry_apply(small_site())
    now = int(time.time())
    for i in range(5):
        started = time.monotonic()
        r = await client.post(
            "/api/v1/readings", headers=auth("operator"), json={"readings": [reading(1001, 2, now - 600 + i, i)]}
        )
        assert r.status_code == 200 and r.json()["accepted"] == 1
        assert time.monotonic() - started < 2.0
    assert await eventually(lambda: Stuck.calls == 1)
    rows = await server.storage.readings((await server.storage.meter_keys())["W-2"], now - 600, now)
    assert rows.counter.tolist() == [0, 1, 2, 3, 4]


async def test_hook_observe_findings(tmp_path: Path, make_server: MakeServer) -> None:
    plugins, raiser = raiser_first()
    recorder = Recorder(plugins)
    plugins.register(recorder, "recorder")
    server = await make_server(base_config(tmp_path), http=False, plugins_=plugins)

    finding = await server.report_finding(
        Finding("test-detector", "W-1", "reverse_flow", "counter went backwards", Severity.CRITICAL, data={"d": -3})
    )
    assert finding.id is not None and finding.t > 0
    assert balans_edge_example.STATE["findings"] == [finding]  # after the raiser's observer failed
    assert raiser.calls == ["observe_findings", "notify", "observe_alarms"]
    assert plugins.info["raiser"].errors == 3
    ((observed, stored_ids),) = recorder.seen["findings"]
    assert observed == finding
    assert observed.data == {"d": -3}
    assert stored_ids == [finding.id]  # stored before the observers ran


async def test_hook_observe_alarms(tmp_path: Path, make_server: MakeServer) -> None:
    plugins, raiser = raiser_first()
    recorder = Recorder(plugins)
    plugins.register(recorder, "recorder")
    server = await make_server(base_config(tmp_path), http=False, plugins_=plugins)

    alarm = await server.raise_alarm(Alarm("leak-policy", "night flow on W-2", data={"flow": 0.4}))
    assert alarm.id is not None and alarm.severity == Severity.WARNING
    assert balans_edge_example.STATE["alarms"] == [alarm]
    assert raiser.calls == ["notify", "observe_alarms"]
    assert plugins.info["raiser"].errors == 2
    ((observed, notified_before),) = recorder.seen["alarms"]
    assert observed == alarm
    assert notified_before == ["night flow on W-2"]


async def test_hook_observe_commands(tmp_path: Path, make_server: MakeServer) -> None:
    plugins, raiser = raiser_first()
    recorder = Recorder(plugins)
    plugins.register(recorder, "recorder")
    server = await make_server(base_config(tmp_path), http=False, plugins_=plugins)

    done = await server.actuation.execute(
        Command("example:pump-1", CommandCode.PUMP_STOP, requested_by="opcua:engineer", reason="maintenance")
    )
    refused = await server.actuation.execute(
        Command("nowhere", CommandCode.PUMP_START, requested_by="opcua:engineer", reason="test")
    )
    assert balans_edge_example.STATE["commands"] == [done, refused]
    assert [c.outcome for c in balans_edge_example.STATE["commands"]] == ["done", "refused"]
    assert raiser.calls == ["observe_commands", "observe_commands"]
    assert plugins.info["raiser"].errors == 2
    assert [(c, ids[0]) for c, ids in recorder.seen["commands"]] == [(done, done.id), (refused, refused.id)]


async def test_observer_errors_are_counted_per_plugin(
    tmp_path: Path, make_server: MakeServer, client_for: Callable[[Any], Any]
) -> None:
    plugins, raiser = raiser_first()
    server = await make_server(base_config(tmp_path), plugins_=plugins)
    client = client_for(server)
    await server.storage.registry_apply(small_site())

    r = await client.post(
        "/api/v1/readings", headers=auth("operator"), json={"readings": [reading(1002, 3, int(time.time()) - 5, 3)]}
    )
    assert r.status_code == 200
    assert await eventually(lambda: balans_edge_example.STATE["readings"] == 1)
    await server.report_finding(Finding("d", "W-3", "k", "m"))
    await server.actuation.execute(Command("example:v", CommandCode.VALVE_OPEN, "api:admin", "restore"))

    assert raiser.calls == ["observe_readings", "observe_findings", "notify", "observe_alarms", "observe_commands"]
    assert plugins.info["raiser"].errors == 5
    assert plugins.info["example"].errors == 0
    assert len(balans_edge_example.STATE["findings"]) == len(balans_edge_example.STATE["commands"]) == 1

    listing = (await client.get("/api/v1/plugins", headers=auth("viewer"))).json()["plugins"]
    states = {p["name"]: (p["state"], p["errors"]) for p in listing}
    assert states == {"dmesh": ("started", 0), "analytics": ("started", 0), "modbus": ("started", 0),
                      "opcua": ("started", 0), "export": ("started", 0), "example": ("started", 0),
                      "raiser": ("started", 5)}
    assert (await client.get("/api/v1/health")).json()["status"] == "ok"
