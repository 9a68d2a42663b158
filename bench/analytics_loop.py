"""Analytics on a running server: does a detector run keep the event loop free?

    python bench/analytics_loop.py [--buildings 20] [--apartments 99] [--days 14]

The scheduler runs every detector over every group each hour. Concentrators,
the HTTP API and the SCADA servers share the server's event loop, so the
numeric work must not hold it: a frame not acknowledged for seconds is resent
by its concentrator, a SCADA poll times out.

A real server (SQLite in a temporary directory, no HTTP) gets a scenario site
(``--buildings`` x ``--apartments`` meters, ``--days`` of hourly readings)
through the real ingest path; once its hourly consumption is computed, the
analytics run is timed while a ticker task sleeps 5 ms at a time and records
how late it wakes. The longest stall is reported next to the run's wall time
(the baseline of the same run): a stall close to the run time means the loop
was blocked throughout.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from procs import ticker

from balans_edge.config import parse_config
from balans_edge.core.analytics.base import Scope
from balans_edge.plugin_manager import config_schemas, load_plugins
from balans_edge.plugins.analytics.plugin import run_analytics
from balans_edge.plugins.dmesh.scenario import Scenario, generate
from balans_edge.server import Server

START = 1_704_067_200  # 2024-01-01 00:00 UTC


async def settle(server: Server) -> None:
    """Wait until hourly consumption and balances are computed."""
    while await server.storage.take_dirty(1) or await server.storage.take_balance_dirty(1):
        await asyncio.sleep(0.2)


async def main(buildings: int, apartments: int, days: int) -> None:
    plugins = load_plugins()
    with tempfile.TemporaryDirectory() as tmp:
        data = {"server": {"log_level": "warning"}, "storage": {"url": f"sqlite:{Path(tmp) / 'balans.db'}"},
                "plugins": {"analytics": {"interval_s": 0}}}
        server = Server(parse_config(data, config_schemas(plugins)), plugins)
        await server.start(http=False)
        try:
            site = generate(Scenario(buildings=buildings, apartments=apartments, start=START, hours=days * 24))
            await server.storage.registry_apply(site.registry())
            t = time.perf_counter()
            for batch in site.all_batches():
                await server.ingest.ingest(batch)
            await settle(server)
            meters = len(site.meters)
            print(f"site: {meters:,} meters x {days} days, ingested and computed in {time.perf_counter() - t:.1f} s")
            stalls: list[float] = []
            stop = asyncio.Event()
            tick = asyncio.create_task(ticker(stalls, stop))
            t = time.perf_counter()
            found = await run_analytics(server, Scope(START, START + days * 86400))
            run = time.perf_counter() - t
            stop.set()
            await tick
            worst = max(stalls, default=0.0)
            print(f"analytics run: {run:.2f} s, {len(found)} findings; ticks {len(stalls)}, "
                  f"longest stall {worst * 1000:.0f} ms = {worst / run:.3f} of the run")
        finally:
            await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buildings", type=int, default=20)
    parser.add_argument("--apartments", type=int, default=99)
    parser.add_argument("--days", type=int, default=14)
    args = parser.parse_args()
    asyncio.run(main(args.buildings, args.apartments, args.days))
