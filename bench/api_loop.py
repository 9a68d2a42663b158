"""The HTTP API under its largest requests: does the event loop stay free?

    python bench/api_loop.py [--parallel 4] [--years 50]

A viewer may ask for a meter's or a group's consumption and balance over fifty
years of months (``core.calendar.MAX_POINTS``): some 440,000 stored hours per
request. Concentrators, SCADA (Modbus, OPC UA) and ``/health`` share the
server's event loop with that request, so the hours must be summed where they
are (SQLite, in the storage's bulk-reader thread), never hour by hour in Python
on the loop.

A real server (SQLite in a temporary directory, HTTP on a free port) gets one
meter and one group with an hourly value and balance in every hour of
``--years`` years, written straight into the tables. Then ``--parallel``
requests of each route run at once over HTTP, while a ticker task sleeps 5 ms
at a time and records how late it wakes. Reported: each route's own time (one
request alone), the wall time of the parallel round, and the loop's longest
stall as a share of it: a share near 1 means the loop was blocked throughout,
near 0 that it kept serving. For comparison, the same round is run through the
hour-by-hour path the API used before (every hour read into Python, summed on
the loop), measured the same way in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sqlite3
import tempfile
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import numpy as np
from procs import ticker

from balans_edge.config import parse_config
from balans_edge.core.model import Concentrator, Group, GroupInput, Meter, RadioModule, Resource
from balans_edge.plugin_manager import config_schemas, load_plugins
from balans_edge.server import Server

HOUR = 3600
TZ = ZoneInfo("Europe/Moscow")
TOKEN = "bench-viewer-token-0123456789"
ROUTES = ("/api/v1/meters/IN/consumption", "/api/v1/groups/G/balance", "/api/v1/groups/G/consumption")


def seed(path: Path, t0: int, t1: int) -> int:
    hours = np.arange(t0, t1, HOUR, dtype=np.int64).tolist()
    with sqlite3.connect(path) as db:
        (key,) = db.execute("SELECT id FROM meters WHERE meter_id = 'IN'").fetchone()
        db.executemany("INSERT INTO consumption_hourly (meter, t, value, quality) VALUES (?, ?, 0.001, 0)",
                       ((key, t) for t in hours))
        db.executemany("INSERT INTO balance_hourly (group_id, t, input, consumed, measured, estimated, missing, "
                       "input_measured, input_estimated, input_missing) VALUES ('G', ?, 0.001, 0, 0, 0, 0, 1, 0, 0)",
                       ((t,) for t in hours))
    return len(hours)


async def stalled(work: asyncio.Future | asyncio.Task) -> tuple[float, float]:
    """(wall time of ``work``, the loop's longest stall meanwhile)."""
    stalls: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(stalls, stop))
    await asyncio.sleep(0.02)
    start = time.perf_counter()
    await work
    wall = time.perf_counter() - start
    stop.set()
    await tick
    return wall, max(stalls, default=0.0)


async def old_path(server: Server, key: int, t0: int, t1: int) -> list[float]:
    """What the meter route did before: every stored hour into Python, filled hour by
    hour and summed into local months on the event loop."""
    from balans_edge.core.model import IntervalValue, Quality

    rows = await server.storage.hourly(key, t0, t1)
    by_t = {t: (v, q) for t, v, q in rows}
    buckets: dict[int, list[IntervalValue]] = {}
    for t in range(t0, t1, HOUR):
        v, q = by_t.get(t, (None, Quality.MISSING))
        local = datetime.fromtimestamp(t, TZ).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        buckets.setdefault(int(local.timestamp()), []).append(IntervalValue(t, v, Quality(q)))
    return [sum(h.value for h in hours if h.value is not None) for hours in buckets.values()]


async def main(parallel: int, years: int) -> None:
    plugins = load_plugins()
    t1 = int(datetime(2025, 1, 1, tzinfo=TZ).timestamp())
    t0 = int(datetime(2025 - years, 1, 1, tzinfo=TZ).timestamp())
    with tempfile.TemporaryDirectory() as tmp:
        data = {"server": {"log_level": "warning", "port": 1},
                "storage": {"url": f"sqlite:{Path(tmp) / 'balans.db'}"}, "site": {"timezone": str(TZ)},
                "api": {"users": [{"name": "bench", "role": "viewer", "token": TOKEN}]},
                "plugins": {"analytics": {"interval_s": 0}}}
        config = parse_config(data, config_schemas(plugins))
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, port=0))
        server = Server(config, plugins)
        await server.storage.open()
        await server.storage.registry_apply({
            "concentrators": [Concentrator(7)], "modules": [RadioModule(1001, 7)],
            "meters": [Meter("IN", Resource.WATER, "m3", 0.001, t0, module_id=1001, channel=1)],
            "groups": [Group("G", Resource.WATER, "m3", (GroupInput("IN"),))]})
        await server.storage.close()
        hours = await asyncio.to_thread(seed, Path(tmp) / "balans.db", t0, t1)
        await server.start()
        try:
            key = (await server.storage.meter_keys())["IN"]
            params = {"from": t0, "to": t1, "step": "month"}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http.port}", timeout=600,
                                         headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                print(f"{hours:,} hours per meter and group ({years} years), step=month, {parallel} requests "
                      f"of each route at once")
                for path in ROUTES:
                    start = time.perf_counter()
                    r = await client.get(path, params=params)
                    assert r.status_code == 200, r.text
                    print(f"  {path:<32} alone {time.perf_counter() - start:6.3f} s, {len(r.json()['points'])} points")
                round_ = asyncio.gather(*(client.get(p, params=params) for p in ROUTES for _ in range(parallel)))
                wall, worst = await stalled(round_)
                print(f"summed in SQLite:   round {wall:6.2f} s, longest loop stall {worst * 1000:7.1f} ms "
                      f"= {worst / wall:.3f} of the round")
                old = asyncio.gather(*(old_path(server, key, t0, t1) for _ in range(parallel)))
                old_wall, old_worst = await stalled(old)
                print(f"hour by hour (old): {parallel} meter requests {old_wall:6.2f} s, longest loop stall "
                      f"{old_worst * 1000:7.1f} ms = {old_worst / old_wall:.3f} of the round")
                print(f"stall ratio new/old: {worst / old_worst:.4f}")
        finally:
            await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--years", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.parallel, args.years))
