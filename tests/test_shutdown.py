"""SIGTERM while readings are being pushed: every acknowledged reading is on disk."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import T0, TOKENS

BIN = Path(sys.executable).parent
BATCH = 400


def write_config(tmp_path: Path) -> Path:
    users = ",\n".join(f'  {{ name = "{r}", role = "{r}", token = "{t}" }}' for r, t in TOKENS.items())
    path = tmp_path / "server.toml"
    path.write_text(
        f'[server]\nport = 8080\nlog_level = "info"\nshutdown_timeout_s = 10\n'
        f'[storage]\nurl = "sqlite:{tmp_path / "balans.db"}"\n'
        f"[api]\nusers = [\n{users}\n]\n"
    )
    return path


async def wait_listening(proc: subprocess.Popen) -> str:
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = await loop.run_in_executor(None, proc.stdout.readline)
        if line.startswith("listening on "):
            return line.split()[-1]
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")


async def feeder(client: httpx.AsyncClient, channel: int, acked: dict[int, int], stop: asyncio.Event) -> None:
    """Push consecutive batches for one meter until the server goes away."""
    headers = {"Authorization": f"Bearer {TOKENS['operator']}"}
    k = 0
    while True:
        rows = [
            {"module_id": 1001, "channel": channel, "ts": T0 + (k * BATCH + i) * 60, "counter": (k * BATCH + i) * 7}
            for i in range(BATCH)
        ]
        try:
            r = await client.post("/api/v1/readings", json={"readings": rows}, headers=headers)
        except httpx.HTTPError:
            return  # the server stopped accepting: this batch was not acknowledged
        if r.status_code != 200:
            return
        assert r.json()["accepted"] == BATCH
        acked[channel] = (k + 1) * BATCH
        k += 1
        if stop.is_set() and k > 1000:
            return


async def test_sigterm_with_data_in_flight_loses_nothing(tmp_path):
    config = write_config(tmp_path)
    proc = subprocess.Popen(
        [BIN / "balans-edge", "run", "-c", str(config), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        base = await wait_listening(proc)
        admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            assert (await c.put("/api/v1/concentrators/7", json={}, headers=admin)).status_code == 201
            assert (await c.put("/api/v1/modules/1001", json={"concentrator_id": 7, "channels": 7},
                                headers=admin)).status_code == 201
            for ch in (1, 2, 3):
                meter = {"resource": "water", "unit": "m3", "pulse_weight": 0.001,
                         "install_time": "2014-01-01T00:00:00Z", "module_id": 1001, "channel": ch}
                assert (await c.put(f"/api/v1/meters/M-{ch}", json=meter, headers=admin)).status_code == 201

        acked: dict[int, int] = {1: 0, 2: 0, 3: 0}
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            tasks = [asyncio.create_task(feeder(client, ch, acked, stop)) for ch in (1, 2, 3)]
            while sum(acked.values()) < 6 * BATCH:  # traffic is flowing
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
        stderr = proc.stderr.read() if proc.stderr else ""
        assert code == 0, stderr
        assert "stopped cleanly" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    db = sqlite3.connect(tmp_path / "balans.db")
    stored = dict(db.execute(
        "SELECT m.meter_id, count(*) FROM readings r JOIN meters m ON m.id = r.meter GROUP BY m.meter_id"
    ).fetchall())
    for ch, n in acked.items():
        assert n > 0
        assert stored.get(f"M-{ch}", 0) >= n, f"meter M-{ch}: {n} acknowledged, {stored.get(f'M-{ch}')} stored"
        # acknowledged readings are exactly the first n, with their pulses
        rows = db.execute(
            "SELECT r.ts, r.pulses FROM readings r JOIN meters m ON m.id = r.meter WHERE m.meter_id = ? "
            "ORDER BY r.ts LIMIT ?", (f"M-{ch}", n)
        ).fetchall()
        assert rows == [(T0 + i * 60, i * 7) for i in range(n)]
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
