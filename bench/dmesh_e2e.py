"""DMesh end to end: simulated concentrators report over TCP to one server process.

    python bench/dmesh_e2e.py [--concentrators 50] [--hours 12]

A real ``balans-edge run`` is started as its own process with a fresh SQLite
database holding the registry of every concentrator (240 radio modules x 3
meters = 720 meters each). The benchmark process runs the simulated
concentrators (``plugins/dmesh/concentrator.py``: HELLO/AUTH, up to 8 frames
in flight, retransmission), each sending one READINGS round per simulated
hour (two frames of 120 modules, as the 4,096-byte payload limit requires).
It prints the readings per second stored end to end (from the first frame
sent to the last ACK, every ACK meaning "committed") and the time from a
frame's first transmission to its ACK (p50, p99). The baseline in the same
run is the same readings pushed through ``Ingest.ingest`` in-process in
batches of one frame, without TCP, sessions or a second process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from balans_edge.core.ingest import Ingest
from balans_edge.core.model import RawReading
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugins.dmesh.codec import ReadingRecord, Readings
from balans_edge.plugins.dmesh.concentrator import ConcentratorSettings, SimulatedConcentrator

MODULES = 240
PER_FRAME = 120
FIRST_CID = 500_001
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def module_id(c: int, m: int) -> int:
    return 10_000_000 + c * 1000 + m


def write_site(folder: Path, concentrators: int) -> None:
    folder.mkdir()
    (folder / "concentrators.csv").write_text(
        "concentrator_id\n" + "".join(f"{FIRST_CID + c}\n" for c in range(concentrators)))
    rows = ["module_id,concentrator_id,channels"]
    meters = ["meter_id,resource,unit,pulse_weight,install_time,module_id,channel"]
    for c in range(concentrators):
        for m in range(MODULES):
            mid = module_id(c, m)
            rows.append(f"{mid},{FIRST_CID + c},7")
            meters += [f"M-{mid}-{ch},water,m3,0.001,2020-01-01T00:00:00Z,{mid},{ch}" for ch in (1, 2, 3)]
    (folder / "modules.csv").write_text("\n".join(rows) + "\n")
    (folder / "meters.csv").write_text("\n".join(meters) + "\n")


def frames_for(c: int, hour: int, t0: int) -> list[Readings]:
    t = t0 + hour * 3600
    records = [
        ReadingRecord(module_id(c, m), t, 0, 3600, -70, 1 + m % 10, 0b111,
                      tuple((hour * 37 + m * 3 + ch) % (1 << 32) for ch in range(3)))
        for m in range(MODULES)
    ]
    return [Readings(tuple(records[i : i + PER_FRAME])) for i in range(0, MODULES, PER_FRAME)]


async def run_concentrators(port: int, keys: dict[int, str], hours: int, t0: int) -> tuple[float, list[float], int]:
    cons = [SimulatedConcentrator(ConcentratorSettings(cid, key.encode(), port=port, reconnect_s=0.2))
            for cid, key in keys.items()]
    for con in cons:
        con.start()
    async with asyncio.timeout(60):
        for con in cons:
            await con.connected.wait()
    start = time.perf_counter()
    frames = 0
    for hour in range(hours):
        for i, con in enumerate(cons):
            for f in frames_for(i, hour, t0):
                con.submit(f)
                frames += 1
    async with asyncio.timeout(1800):
        for con in cons:
            await con.drained()
    elapsed = time.perf_counter() - start
    latencies = [x for con in cons for x in con.counters.ack_latency_s]
    for con in cons:
        await con.stop()
    assert sum(len(con.acked) for con in cons) == frames
    return elapsed, latencies, frames


async def baseline(db: Path, site: Path, concentrators: int, hours: int, t0: int) -> float:
    from balans_edge.core.registry import import_registry

    storage = SqliteStorage(db)
    await storage.open()
    await import_registry(storage, [site])
    ingest = Ingest(storage)
    batches = []
    for hour in range(hours):
        for c in range(concentrators):
            for f in frames_for(c, hour, t0):
                batches.append([RawReading(r.module_id, ch, r.ts, n, r.status)
                                for r in f.records for ch, n in zip(r.channels, r.counters, strict=True)])
    start = time.perf_counter()
    for b in batches:
        await ingest.ingest(b)
    elapsed = time.perf_counter() - start
    await storage.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concentrators", type=int, default=50)
    parser.add_argument("--hours", type=int, default=12)
    args = parser.parse_args()
    return run(args.concentrators, args.hours)


def run(n: int, hours: int) -> int:
    """The whole end-to-end benchmark for ``n`` concentrators and ``hours`` rounds."""
    t0 = (int(time.time()) - 40 * 86400) // 3600 * 3600
    keys = {FIRST_CID + c: f"bench-key-{c:04d}-0123456789" for c in range(n)}
    readings = n * hours * MODULES * 3
    tmp = Path(tempfile.mkdtemp(prefix="balans-dmesh-bench-"))
    try:
        site = tmp / "site"
        write_site(site, n)
        port = free_port()
        config = tmp / "server.toml"
        entries = ", ".join(f'{{ id = {cid}, key = "{key}" }}' for cid, key in keys.items())
        config.write_text(
            f'[server]\nport = {free_port()}\nlog_level = "warning"\n[storage]\nurl = "sqlite:{tmp / "e2e.db"}"\n'
            f"[plugins.dmesh]\nport = {port}\nconcentrators = [{entries}]\n"
        )
        t = time.perf_counter()
        subprocess.run([BIN / "balans-edge", "registry", "import", "-c", str(config), str(site)], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"{n} concentrators x {MODULES * 3} meters ({n * MODULES * 3:,} meters; registry imported in "
              f"{time.perf_counter() - t:.1f} s), {hours} hourly rounds: {readings:,} readings "
              f"in {n * hours * MODULES // PER_FRAME:,} READINGS frames")
        server = subprocess.Popen([BIN / "balans-edge", "run", "-c", str(config)], stdout=subprocess.DEVNULL)
        try:
            elapsed, latencies, frames = asyncio.run(run_concentrators(port, keys, hours, t0))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
        with sqlite3.connect(tmp / "e2e.db") as db:
            stored = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        assert stored == readings, f"{stored} stored, {readings} sent"
        base = asyncio.run(baseline(tmp / "base.db", site, n, hours, t0))
        p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
        print(f"{'path':<44} {'readings/s':>12} {'vs baseline':>12}")
        print(f"{'in-process Ingest.ingest, one frame a batch':<44} {readings / base:>12,.0f} {'100%':>12}")
        print(f"{'TCP: concentrators -> driver -> ingest':<44} {readings / elapsed:>12,.0f} "
              f"{base / elapsed:>12.0%}")
        print(f"frame sent -> ACK: p50 {p50:,.0f} ms, p99 {p99:,.0f} ms over {frames:,} frames "
              f"(up to 8 in flight per concentrator, all submitted at once)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
