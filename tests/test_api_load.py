"""The largest consumption and balance requests a viewer may make must not hold the
server: while several of them run, SCADA's Modbus reads and ``/health`` (probed from
a process of their own, tests/loop_probe.py) answer within 200 ms. Beyond the
largest, a request is refused with a 400 that names the limit and the step."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import pytest

from balans_edge.core.calendar import MAX_POINTS
from balans_edge.core.model import Concentrator, Group, GroupInput, Meter, RadioModule, Resource
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugins.modbus.server import ModbusServer

from conftest import auth, base_config

HOUR = 3600
TZ = ZoneInfo("Europe/Moscow")
START = int(datetime(1975, 1, 1, tzinfo=TZ).timestamp())
END = int(datetime(2025, 1, 1, tzinfo=TZ).timestamp())
"""Fifty years of local months: the most one request may ask for (MAX_POINTS["month"])."""
PER_HOUR = 0.001
LATENCY_S = 0.2
PARALLEL = 6
PROBES = 10
"""Answers of each kind that must arrive while the requests run."""


def seed(path: Path) -> None:
    """A meter and a group with an hourly value and an hourly balance in every hour of
    the fifty years (438,000 rows each), written straight into the tables."""
    hours = np.arange(START - START % HOUR, END, HOUR, dtype=np.int64).tolist()
    with sqlite3.connect(path) as db:
        (key,) = db.execute("SELECT id FROM meters WHERE meter_id = 'IN'").fetchone()
        db.executemany("INSERT INTO consumption_hourly (meter, t, value, quality) VALUES (?, ?, ?, 0)",
                       ((key, t, PER_HOUR) for t in hours))
        db.executemany("INSERT INTO balance_hourly (group_id, t, input, consumed, measured, estimated, missing, "
                       "input_measured, input_estimated, input_missing) VALUES ('G', ?, ?, 0, 0, 0, 0, 1, 0, 0)",
                       ((t, PER_HOUR) for t in hours))


async def probe_process(http_port: int, modbus_port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("loop_probe.py")), str(http_port), str(modbus_port),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
    return proc


@pytest.fixture
async def loaded(tmp_path: Path, make_server: Any, client_for: Any) -> Any:
    storage = SqliteStorage(tmp_path / "balans.db")
    await storage.open()
    await storage.registry_apply({
        "concentrators": [Concentrator(7)], "modules": [RadioModule(1001, 7)],
        "meters": [Meter("IN", Resource.WATER, "m3", 0.001, START, module_id=1001, channel=1)],
        "groups": [Group("G", Resource.WATER, "m3", (GroupInput("IN"),))],
    })
    await storage.close()
    await asyncio.to_thread(seed, tmp_path / "balans.db")
    config = base_config(tmp_path, site={"timezone": str(TZ)},
                         plugins={"modbus": {"server": {"enabled": True, "port": 0}}})
    server = await make_server(config)
    return server, client_for(server)


async def test_modbus_and_health_answer_while_the_largest_requests_run(loaded: Any) -> None:
    server, client = loaded
    modbus = next(c for _, c in server.components if isinstance(c, ModbusServer))
    period = {"from": START, "to": END, "step": "month"}
    paths = ["/api/v1/meters/IN/consumption", "/api/v1/groups/G/balance", "/api/v1/groups/G/consumption"]
    probe = await probe_process(server.http.port, modbus.port)
    durations: list[float] = []
    answers: list[httpx.Response] = []

    async def request(path: str) -> None:
        start = time.perf_counter()
        answers.append(await client.get(path, params=period, headers=auth("viewer")))
        durations.append(time.perf_counter() - start)

    probes: list[dict[str, Any]] = []

    async def read_probes() -> None:
        async for line in probe.stdout:
            probes.append(json.loads(line))

    reader = asyncio.create_task(read_probes())
    windows = []
    try:
        # Rounds of requests in parallel until enough probes were answered meanwhile
        # (on any machine: a faster one runs more rounds).
        for _ in range(20):
            begin = time.time()
            await asyncio.gather(*(request(paths[i % len(paths)]) for i in range(PARALLEL)))
            windows.append((begin, time.time()))
            during = [p for p in probes if any(a <= p["t"] and p["t"] + p["s"] <= b for a, b in windows)]
            if min(sum(p["kind"] == k for p in during) for k in ("modbus", "health")) >= PROBES:
                break
    finally:
        probe.stdin.close()
        await asyncio.wait_for(probe.wait(), 30)
        await reader
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    assert max(durations) > LATENCY_S, "the load is too light to prove anything: seed more"
    overlapping = [p for p in probes if any(p["t"] < b and p["t"] + p["s"] > a for a, b in windows)]
    assert all(p["ok"] for p in overlapping)
    for kind in ("modbus", "health"):
        taken = [p["s"] for p in overlapping if p["kind"] == kind]
        assert len(taken) >= PROBES
        assert max(taken) < LATENCY_S, f"{kind}: {max(taken) * 1000:.0f} ms while the requests ran"

    # ... and the answers are the whole fifty years, month by month.
    meter = next(r.json() for r in answers if r.url.path.startswith("/api/v1/meters"))
    assert len(meter["points"]) == MAX_POINTS["month"]
    assert meter["points"][0]["t"] == "1974-12-31T21:00:00Z"
    assert meter["points"][0]["value"] == pytest.approx(744 * PER_HOUR)
    assert {p["quality"] for p in meter["points"]} == {"measured"}
    assert sum(p["value"] for p in meter["points"]) == pytest.approx((END - START) / HOUR * PER_HOUR)
    balance = next(r.json() for r in answers if r.url.path.endswith("/balance"))
    assert [p["input"] for p in balance["points"]] == [p["value"] for p in meter["points"]]


@pytest.mark.parametrize(("step", "to"), [("hour", START + (MAX_POINTS["hour"] + 1) * HOUR),
                                          ("day", int((datetime(1975, 1, 1, tzinfo=TZ)
                                                       + timedelta(days=MAX_POINTS["day"] + 1)).timestamp())),
                                          ("month", int(datetime(2025, 1, 2, tzinfo=TZ).timestamp()))])
async def test_one_point_too_many_is_refused_naming_the_limit_and_the_step(loaded: Any, step: str, to: int) -> None:
    _, client = loaded
    for path in ("/api/v1/meters/IN/consumption", "/api/v1/groups/G/balance", "/api/v1/groups/G/consumption"):
        r = await client.get(path, params={"from": START, "to": to, "step": step}, headers=auth("viewer"))
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert f"at most {MAX_POINTS[step]} points" in message and f"step={step}" in message
        assert f"holds {MAX_POINTS[step] + 1}" in message
        r = await client.get(path, params={"from": START, "to": to - HOUR if step == "hour" else to - 86400,
                                           "step": step}, headers=auth("viewer"))
        assert r.status_code == 200, r.text
        assert len(r.json()["points"]) == MAX_POINTS[step]
