"""Export to a real VictoriaMetrics (InfluxDB v2 write API): every kind read back
through its export API with the documented names, tags and values; an outage
of the database with a restart of the edge server in the middle, after which
every acknowledged reading is there exactly once; and back-fill of history
from the command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from export_support import HoldingProxy, VictoriaMetrics, export_state

from balans_edge.core.components import Finding, Severity
from balans_edge.core.model import Concentrator, Group, GroupInput, Meter, RadioModule, Resource
from balans_edge.plugins.dmesh.repository import ModuleRoute

from conftest import T0, TOKENS, auth, base_config, dmesh_repository, eventually, peer

BIN = Path(sys.executable).parent
H = 3600
LEVEL_CHAIN = [("R-1", "region"), ("C-1", "city"), ("D-1", "district"), ("S-1", "street"), ("H-1", "house"),
               ("E-1", "entrance")]
PATH_TAGS = {"region": "R-1", "city": "C-1", "district": "D-1", "street": "S-1", "house": "H-1", "entrance": "E-1"}


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    db = VictoriaMetrics(peer("victoria-metrics"), tmp_path / "vm-data").start()
    yield db
    db.stop()


def export_target(url: str, **overrides: Any) -> dict[str, Any]:
    return {"name": "vm", "url": url, "bucket": "metering", "org": "utility", "batch_size": 500,
            "flush_interval_s": 0.1, "backoff_initial_s": 0.05, "backoff_max_s": 0.3, "timeout_s": 3.0,
            "tags": {"edge": "box-17"}, **overrides}


def registry() -> dict[str, list[Any]]:
    """A six-level group chain down to one entrance with two flats; IN feeds every level."""
    parents = [None] + [g for g, _ in LEVEL_CHAIN[:-1]]
    groups = [Group(g, Resource.WATER, "m3", (GroupInput("IN"),), level=level, parent_id=parent)
              for (g, level), parent in zip(LEVEL_CHAIN, parents, strict=True)]
    meter = {"resource": Resource.WATER, "unit": "m3", "pulse_weight": 0.001, "install_time": T0,
             "module_id": 1001}
    return {
        "concentrators": [Concentrator(7)],
        "modules": [RadioModule(1001, 7, channels=0b111)],
        "meters": [Meter("IN", channel=1, **meter), Meter("F-1", channel=2, group_id="E-1", base_reading=3.5, **meter),
                   Meter("F-2", channel=3, group_id="E-1", **meter)],
        "groups": groups,
    }


def labels(**tags: str) -> dict[str, str]:
    return {"site": "Export site", "edge": "box-17", **tags}


def by_time(samples: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Samples with one per time: a derived point (an hour's consumption, a day's
    balance) may be sent again when it is recomputed, always with the same time."""
    out: dict[int, float] = {}
    for t, v in samples:
        assert out.get(t, v) == pytest.approx(v), f"two values at {t}: {out[t]} and {v}"
        out[t] = v
    return sorted(out.items())


def approx(points: list[tuple[int, float]]) -> list[tuple[int, Any]]:
    return [(t, pytest.approx(v, abs=1e-9)) for t, v in points]


async def test_every_kind_is_read_back_with_its_names_tags_and_values(
    tmp_path: Path, make_server: Any, client_for: Any, vm: VictoriaMetrics
) -> None:
    config = base_config(tmp_path, site={"name": "Export site", "timezone": "Europe/Minsk"},
                         intervals={"debounce_s": 0.05}, balance={"debounce_s": 0.05},
                         plugins={"export": {"targets": [export_target(vm.url)]}})
    server = await make_server(config)
    await server.storage.registry_apply(registry())
    hours = 30
    rows = [{"module_id": 1001, "channel": ch, "ts": T0 + h * H, "counter": h * step}
            for h in range(hours) for ch, step in ((1, 250), (2, 100), (3, 140))]
    client = client_for(server)
    assert (await client.post("/api/v1/readings", json={"readings": rows}, headers=auth("operator"))).status_code == 200
    finding = await server.report_finding(Finding("leaks", "F-1", "consumer_leak", 'leak, "night" flow',
                                                  Severity.CRITICAL, t=T0 + 5 * H,
                                                  data={"group_id": "E-1", "volume_m3": 0.75}))
    await dmesh_repository(server).store_topology(7, T0 + H, [ModuleRoute(1001, 0, 2, -71, 3550, 0x0103, 7, 0)])

    async def settled() -> bool:
        await server.intervals.process()
        await server.balance.process()
        return (await export_state(server, "vm"))[0]["depth"] == 0 and \
            (await server.storage.take_balance_dirty(1)) == []

    assert await eventually(settled, timeout=20)

    # Readings: the register value (base + pulses x weight) and the raw counter, by meter with its group path.
    (series,) = vm.samples("reading_value", meter="F-1").items()
    assert dict(series[0]) == labels(meter="F-1", resource="water", unit="m3", group="E-1", **PATH_TAGS)
    assert series[1] == approx([(T0 + h * H, 3.5 + h * 0.1) for h in range(hours)])
    assert vm.samples("reading_pulses", meter="IN").popitem()[1] == [(T0 + h * H, h * 250) for h in range(hours)]
    assert dict(vm.samples("reading_value", meter="IN").popitem()[0]) == labels(meter="IN", resource="water",
                                                                                unit="m3")

    # Consumption per hour with its quality, equal to what the API answers.
    api = (await client.get("/api/v1/meters/F-2/consumption", headers=auth("viewer"),
                            params={"from": T0, "to": T0 + hours * H})).json()["points"]
    stored = by_time(vm.samples("consumption_value", meter="F-2").popitem()[1])
    assert stored == approx([(T0 + i * H, p["value"]) for i, p in enumerate(api) if p["value"] is not None])
    assert len(stored) == hours - 1 and stored[0][1] == pytest.approx(0.14)
    quality = dict(by_time(vm.samples("consumption_quality_code", meter="F-2").popitem()[1]))
    assert quality == {T0 + i * H: 0 for i in range(hours - 1)}  # the last reading's hour has no end yet

    # Hourly balance of the entrance, with the level and the path up to the region.
    (series,) = vm.samples("balance_consumed", group="E-1").items()
    assert dict(series[0]) == labels(group="E-1", level="entrance", resource="water", unit="m3", **PATH_TAGS)
    balance = (await client.get("/api/v1/groups/E-1/balance", headers=auth("viewer"),
                                params={"from": T0, "to": T0 + (hours - 1) * H})).json()["points"]
    assert by_time(series[1]) == approx([(T0 + i * H, p["consumed"]) for i, p in enumerate(balance)])
    inputs = vm.samples("balance_input", group="R-1").popitem()
    assert dict(inputs[0]) == labels(group="R-1", level="region", resource="water", unit="m3", region="R-1")
    assert [v for _, v in by_time(inputs[1])] == [pytest.approx(0.25)] * (hours - 1)
    imbalance = by_time(vm.samples("balance_imbalance", group="E-1").popitem()[1])
    assert len(imbalance) == hours - 1 and all(v == pytest.approx(0.01) for _, v in imbalance)

    # Daily balance: local days of the site (Europe/Minsk, UTC+3), as the API sums them.
    days = (await client.get("/api/v1/groups/H-1/balance", headers=auth("viewer"),
                             params={"from": T0 - 3 * H, "to": T0 + 45 * H, "step": "day"})).json()["points"]
    daily = by_time(vm.samples("balance_daily_consumed", group="H-1").popitem()[1])
    assert daily == approx([(_unix(d["t"]), d["consumed"]) for d in days])
    assert len(daily) == 2 and daily[0][0] % 86400 == 21 * H  # local midnight
    daily_input = by_time(vm.samples("balance_daily_input", group="H-1").popitem()[1])
    assert daily_input == approx([(_unix(d["t"]), d["input"]) for d in days if d["input"] is not None])
    # The second day's last 16 hours are over and nobody reported them: its input is missing, not 8 hours' worth.
    assert [v for _, v in daily_input] == [pytest.approx(0.25 * 21)]
    assert days[1]["input"] is None and "input_missing" in days[1]["flags"]

    # The finding, the alarm that announced it, and the module's network health.
    (series,) = vm.samples("finding_seen", detector="leaks").items()
    assert dict(series[0]) == labels(detector="leaks", kind="consumer_leak", subject="F-1", group="E-1", **PATH_TAGS)
    assert series[1] == [(T0 + 5 * H, 1.0)]
    assert vm.samples("finding_volume", detector="leaks").popitem()[1] == [(T0 + 5 * H, 0.75)]
    assert vm.samples("finding_id", detector="leaks").popitem()[1] == [(T0 + 5 * H, float(finding.id))]
    alarm = vm.samples("alarm_finding_id", source="leaks").popitem()
    assert dict(alarm[0]) == labels(source="leaks", kind="consumer_leak", subject="F-1", group="E-1", **PATH_TAGS)
    assert alarm[1] == [(T0 + 5 * H, float(finding.id))]
    network = vm.samples("network_battery_mv").popitem()
    assert dict(network[0]) == labels(module="1001", concentrator="7")
    assert network[1] == [(T0 + H, 3550.0)]
    assert vm.samples("network_rssi").popitem()[1] == [(T0 + H, -71.0)]
    assert vm.samples("network_hops").popitem()[1] == [(T0 + H, 2.0)]

    (status,) = (await client.get("/api/v1/export/targets", headers=auth("viewer"))).json()["targets"]
    assert status["queue_depth"] == 0 and status["points_sent"] >= 3 * hours and status["dead_letters"] == 0


def _unix(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


# a real outage, with real processes ---------------------------------------------------------


def write_config(tmp_path: Path, target: dict[str, Any]) -> Path:
    users = ",\n".join(f'  {{ name = "{r}", role = "{r}", token = "{t}" }}' for r, t in TOKENS.items())
    fields = "\n".join(f"{k} = {json.dumps(v)}" for k, v in target.items() if k != "tags")
    path = tmp_path / "edge.toml"
    path.write_text(
        f'[server]\nport = 8080\nlog_level = "warning"\nshutdown_timeout_s = 10\n'
        f'[storage]\nurl = "sqlite:{tmp_path / "edge.db"}"\n'
        f"[api]\nusers = [\n{users}\n]\n"
        f"[intervals]\ndebounce_s = 0.2\n"
        f"[[plugins.export.targets]]\n{fields}\n", encoding="utf-8")
    return path


class Edge:
    """``balans-edge run`` as its own process."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> Edge:
        self.proc = subprocess.Popen([BIN / "balans-edge", "run", "-c", str(self.config), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), self.proc.stderr.read() if self.proc.poll() is not None else line
        self.url = line.split()[-1]
        return self

    def stop(self) -> str:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        stderr = self.proc.stderr.read()
        assert code == 0, stderr
        self.proc = None
        return stderr

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def consumption(self, meter: str) -> list[tuple[int, float]]:
        """(hour, value) of the meter's measured hours, as the API answers."""
        r = httpx.get(f"{self.url}/api/v1/meters/{meter}/consumption", headers=auth("viewer"), timeout=10,
                      params={"from": T0, "to": T0 + 48 * H})
        return [(_unix(p["t"]), p["value"]) for p in r.json()["points"] if p["value"] is not None]

    def health(self) -> dict[str, Any]:
        health = httpx.get(f"{self.url}/api/v1/health", headers=auth("viewer"), timeout=10).json()
        return health["exporters"]["export:vm"]


async def push(edge: Edge, batch: int, acked: dict[int, list[tuple[int, int]]], size: int = 40) -> None:
    """A batch of readings for three meters; what the server acknowledged is remembered."""
    rows = [{"module_id": 1001, "channel": ch, "ts": T0 + (batch * size + i) * 300, "counter": (batch * size + i) * ch}
            for ch in (1, 2, 3) for i in range(size)]
    async with httpx.AsyncClient(base_url=edge.url, timeout=30) as c:
        r = await c.post("/api/v1/readings", json={"readings": rows}, headers=auth("operator"))
    assert r.status_code == 200 and r.json()["accepted"] == len(rows)
    for row in rows:
        acked.setdefault(row["channel"], []).append((row["ts"], row["counter"]))


async def register(edge: Edge) -> None:
    admin = auth("admin")
    async with httpx.AsyncClient(base_url=edge.url, timeout=30) as c:
        assert (await c.put("/api/v1/concentrators/7", json={}, headers=admin)).status_code == 201
        assert (await c.put("/api/v1/modules/1001", json={"concentrator_id": 7, "channels": 7},
                            headers=admin)).status_code == 201
        for ch in (1, 2, 3):
            meter = {"resource": "water", "unit": "m3", "pulse_weight": 0.001, "install_time": "2014-01-01T00:00:00Z",
                     "module_id": 1001, "channel": ch}
            assert (await c.put(f"/api/v1/meters/M-{ch}", json=meter, headers=admin)).status_code == 201


async def test_outage_of_the_database_and_a_restart_of_the_edge_lose_nothing_and_send_nothing_twice(
    tmp_path: Path, vm: VictoriaMetrics
) -> None:
    config = write_config(tmp_path, export_target(vm.url, kinds=["readings", "consumption"], batch_size=100))
    edge = Edge(config).start()
    acked: dict[int, list[tuple[int, int]]] = {}
    try:
        await register(edge)
        for b in range(3):
            await push(edge, b, acked)
        assert await eventually(lambda: edge.health()["points_sent"] >= 3 * 120, timeout=15)

        vm.stop()  # the database goes away; ingest goes on
        for b in range(3, 6):
            await push(edge, b, acked)
        assert await eventually(lambda: (s := edge.health())["state"] == "retrying" and s["queue_depth"] >= 3 * 120,
                                timeout=15)
        queued_before = edge.health()["queue_depth"]

        edge.stop()  # the edge restarts during the outage: the queue is on disk
        edge.start()
        assert edge.health()["queue_depth"] >= queued_before
        for b in range(6, 9):
            await push(edge, b, acked)

        vm.start()  # same port, same data path
        # Hours are computed a debounce after their readings: the queue is empty for good
        # once every hour of the last batch has a value.
        assert await eventually(lambda: len(edge.consumption("M-2")) == 9 * 40 * 300 // H - 1, timeout=30)
        assert await eventually(lambda: edge.health()["queue_depth"] == 0, timeout=30)
        hours = edge.consumption("M-2")
        final = edge.health()
        assert final["dead_letters"] == 0 and final["retries"] > 0
    finally:
        if edge.proc is not None:
            edge.stop()
        edge.kill()

    for ch, points in acked.items():
        (series,) = vm.samples("reading_pulses", meter=f"M-{ch}").values()
        assert len(series) == len(points) == 9 * 40, f"M-{ch}: {len(series)} samples for {len(points)} readings"
        assert series == sorted(points)  # every acknowledged reading once, none twice, with its value
    (consumption,) = vm.samples("consumption_value", meter="M-2").values()
    assert by_time(consumption) == approx(hours)  # the hours of the outage and of the restart are there too


@pytest.mark.parametrize("dedup", [False, True], ids=["plain", "dedup"])
async def test_a_batch_sent_again_after_a_kill_is_stored_once_with_deduplication(tmp_path: Path, dedup: bool) -> None:
    """docs/export.md: delivery is at least once. The edge is killed after VictoriaMetrics
    stored a batch and before the edge heard so; after the restart the batch is sent
    again, to the same series and times. Plain VictoriaMetrics keeps both samples;
    with -dedup.minScrapeInterval=1ms it keeps one."""
    flags = ("-dedup.minScrapeInterval=1ms",) if dedup else ()
    db = VictoriaMetrics(peer("victoria-metrics"), tmp_path / "vm-data", flags=flags).start()
    proxy = HoldingProxy(db.url, hold=True)
    edge = Edge(write_config(tmp_path, export_target(proxy.url, kinds=["readings"], batch_size=1000)))
    acked: dict[int, list[tuple[int, int]]] = {}
    try:
        edge.start()
        await register(edge)
        await push(edge, 0, acked)
        assert await eventually(lambda: proxy.passed >= 1, timeout=15)  # stored, the answer held back
        edge.kill()
        proxy.release()
        edge.start()
        assert await eventually(lambda: edge.health()["queue_depth"] == 0, timeout=30)
        edge.stop()
        assert proxy.passed >= 2  # sent again
        for ch, points in acked.items():
            (series,) = db.samples("reading_pulses", meter=f"M-{ch}").values()
            assert sorted(set(series)) == sorted(points)
            assert len(series) == len(points) * (1 if dedup else 2), f"M-{ch}: {len(series)} samples"
    finally:
        edge.kill()
        proxy.close()
        db.stop()


async def test_backfill_queues_history_that_the_server_then_sends(
    tmp_path: Path, make_server: Any, vm: VictoriaMetrics
) -> None:
    # History stored before any target was configured.
    server = await make_server(base_config(tmp_path, intervals={"debounce_s": 0.05}))
    await server.storage.registry_apply(registry())
    rows = [(1001, ch, T0 + h * H, h * 100 * ch) for h in range(48) for ch in (1, 2, 3)]
    from balans_edge.core.model import RawReading

    await server.ingest.ingest([RawReading(*r) for r in rows])
    await server.intervals.process()
    await server.stop()

    cfg = tmp_path / "export.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:{tmp_path / "balans.db"}"\n'
                   f'[[plugins.export.targets]]\nname = "vm"\nurl = "{vm.url}"\nbucket = "b"\n'
                   f'kinds = ["readings", "consumption"]\nflush_interval_s = 0.1\nbatch_size = 1000\n'
                   f"max_queue = 50\n", encoding="utf-8")
    env = {**os.environ, "COLUMNS": "120"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BIN / "balans-edge", "export", *args, "-c", str(cfg)], capture_output=True,
                              text=True, timeout=120, env=env)

    # The queue holds 50 points: back-fill waits for a running server to drain it.
    server = await make_server({**base_config(tmp_path, intervals={"debounce_s": 0.05}),
                                "plugins": {"export": {"targets": [export_target(vm.url, bucket="b",
                                                                                 kinds=["readings", "consumption"],
                                                                                 max_queue=50)]}}})
    result = await asyncio.to_thread(cli, "backfill", "--from", "2014-01-20T12:00:00Z", "--to",
                                     "2014-01-21T12:00:00Z", "--kind", "readings", "--kind", "consumption")
    assert result.returncode == 0, result.stderr
    assert "vm: queued 72 readings, 72 consumption" in result.stdout
    assert await eventually(lambda: _drained(server), timeout=20)

    for ch in (1, 2, 3):
        pulses = vm.samples("reading_pulses", meter=["IN", "F-1", "F-2"][ch - 1]).popitem()[1]
        assert pulses == [(T0 + h * H, h * 100 * ch) for h in range(12, 36)]
        consumption = vm.samples("consumption_value", meter=["IN", "F-1", "F-2"][ch - 1]).popitem()[1]
        assert consumption == [(T0 + h * H, pytest.approx(0.1 * ch)) for h in range(12, 36)]

    status = await asyncio.to_thread(cli, "status", "--json")
    (row,) = json.loads(status.stdout)["targets"]
    assert (row["target"], row["state"], row["queue_depth"], row["points_sent"], row["dead_letters"]) == \
        ("vm", "idle", 0, 144, 0)
    text = await asyncio.to_thread(cli, "status")
    assert text.stdout.splitlines()[1].split()[:3] == ["vm", "idle", "0"]


async def _depth(server: Any) -> int:
    return (await export_state(server, "vm"))[0]["depth"]


async def _drained(server: Any) -> bool:
    return await _depth(server) == 0 and (await export_state(server, "vm"))[0]["sent"] == 144

