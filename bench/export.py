"""Export: the queue's cost on ingest, and points/s from the queue to a real
VictoriaMetrics next to influxdb-client's own batch write of the same points.

    python bench/export.py [--readings 200000] [--points 200000] [--batch 5000] [--dir PATH]

1. Queue overhead on ingest. The synthetic readings of bench/ingest.py (720
   meters on 240 modules, hourly) go through ``Ingest.ingest`` in batches of
   20,000 and of 1,000 into fresh databases with no export target, one
   target (readings, drop_oldest), one target with ``block``, and two
   targets; best of three runs each, interleaved. The difference to "no
   target" per reading is the queue's overhead per point: the trigger's
   insert into the target's queue, in the same transaction. The same rows
   through plain sqlite3 ``executemany`` (no Python ingest work) show the
   trigger cost alone.
2. Sender throughput. The exporter of one target (the plugin's own
   ``TargetExporter``: queue read, line protocol, gzip, HTTP, acknowledgement)
   drains ``--points`` queued readings into VictoriaMetrics started by this
   script (temporary data path, free port of 127.0.0.1); points/s from the
   first request until the queue is empty.
3. Baseline. influxdb-client 1.50's synchronous write API (``enable_gzip``)
   writes the same points, built directly as ``Point`` objects (and, second,
   as ready line-protocol strings), in batches of the same size, to the same
   VictoriaMetrics. The ratio exporter / client is printed.

Every run is checked: the databases hold the readings, VictoriaMetrics holds
every point of three sample meters. No target: the figures are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from procs import free_port

sys.path.insert(0, str(Path(__file__).parent))
from ingest import METERS, Readings, registry, synthesize

from balans_edge.core.bus import EventBus
from balans_edge.core.ingest import Ingest
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugins.export.config import TargetConfig
from balans_edge.plugins.export.exporter import Configurator, TargetExporter
from balans_edge.plugins.export.plugin import MIGRATIONS
from balans_edge.plugins.export.records import ExportTarget
from balans_edge.plugins.export.repository import ExportRepository

SETUPS: dict[str, list[ExportTarget]] = {
    "no target": [],
    "1 target (drop_oldest)": [ExportTarget("a", ("readings",), 10_000_000, "drop_oldest")],
    "1 target (block)": [ExportTarget("a", ("readings",), 10_000_000, "block")],
    "2 targets": [ExportTarget("a", ("readings",), 10_000_000), ExportTarget("b", ("readings",), 10_000_000)],
}
SITE = "bench site"


# 1. overhead on ingest -----------------------------------------------------------------------


async def fresh(path: Path, data: Readings, targets: list[ExportTarget]) -> tuple[SqliteStorage, Ingest]:
    storage = SqliteStorage(path)
    await storage.open(migrations=[MIGRATIONS])
    await storage.registry_apply(registry(data))
    await ExportRepository(storage).configure(targets)
    now = int(data.ts.max()) + 86400
    return storage, Ingest(storage, clock=lambda: now)


async def ingest_run(path: Path, data: Readings, targets: list[ExportTarget], batch: int) -> float:
    storage, ingest = await fresh(path, data, targets)
    batches = [data.batch(slice(i, i + batch)) for i in range(0, len(data), batch)]
    t = time.perf_counter()
    for b in batches:
        await ingest.ingest(b)
    seconds = time.perf_counter() - t
    for target in targets:
        depth = (await ExportRepository(storage).state(target.name))[0]["depth"]
        assert depth == len(data), f"{target.name}: {depth} queued for {len(data)} readings"
    await storage.close()
    return seconds


def raw_run(path: Path, data: Readings, targets: list[ExportTarget], batch: int) -> float:
    """The same rows with plain executemany into a database with the same triggers."""

    async def schema() -> None:
        storage = SqliteStorage(path)
        await storage.open(migrations=[MIGRATIONS])
        await ExportRepository(storage).configure(targets)
        await storage.close()

    asyncio.run(schema())
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    chunks = [data.rows(slice(i, i + batch), key_order=True) for i in range(0, len(data), batch)]
    t = time.perf_counter()
    for rows in chunks:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO readings (meter, ts, counter, pulses, status, flags) VALUES (?, ?, ?, ?, ?, ?)",
                       rows)
        db.execute("COMMIT")
    seconds = time.perf_counter() - t
    db.close()
    return seconds


def overhead(folder: Path, data: Readings, repeats: int) -> None:
    print(f"1. queue overhead on ingest: {len(data):,} readings, best of {repeats}")
    print(f"   {'setup':<24} {'batch':>7} {'ingest r/s':>11} {'µs/reading':>11} {'overhead µs/point':>18}"
          f" {'raw insert µs/row':>18} {'trigger µs/point':>17}")
    for batch in (20_000, 1_000):
        best: dict[str, float] = {}
        raw: dict[str, float] = {}
        for r in range(repeats):
            for label, targets in SETUPS.items():
                path = folder / f"ingest-{batch}-{r}-{len(best)}-{abs(hash(label))}.db"
                best[label] = min(best.get(label, 1e9), asyncio.run(ingest_run(path, data, targets, batch)))
                raw[label] = min(raw.get(label, 1e9), raw_run(path.with_suffix(".raw.db"), data, targets, batch))
        base, raw_base = best["no target"], raw["no target"]
        for label, targets in SETUPS.items():
            per = best[label] / len(data) * 1e6
            extra = (best[label] - base) / len(data) / max(1, len(targets)) * 1e6
            raw_per = raw[label] / len(data) * 1e6
            raw_extra = (raw[label] - raw_base) / len(data) / max(1, len(targets)) * 1e6
            print(f"   {label:<24} {batch:>7,} {len(data) / best[label]:>11,.0f} {per:>11.2f} "
                  f"{(f'{extra:+.2f}' if targets else '-'):>18} {raw_per:>18.2f} "
                  f"{(f'{raw_extra:+.2f}' if targets else '-'):>17}")
    print("   overhead and trigger columns are per point and target (two targets: half the difference each).")
    print()


# 2. and 3. the sender against VictoriaMetrics --------------------------------------------------


@dataclass
class Victoria:
    binary: str
    data: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, f"-storageDataPath={self.data}", f"-httpListenAddr=127.0.0.1:{self.port}",
             "-retentionPeriod=100y", "-search.latencyOffset=0s", "-loggerLevel=ERROR"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise SystemExit("victoria-metrics did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    def count(self, name: str, meter: str) -> int:
        httpx.get(f"{self.url}/internal/force_flush", timeout=30)
        r = httpx.post(f"{self.url}/api/v1/export", data={"match[]": f'{name}{{meter="{meter}"}}'}, timeout=60)
        return sum(len(json.loads(line)["timestamps"]) for line in r.text.splitlines() if line)


async def drain(path: Path, data: Readings, vm: Victoria, batch: int) -> tuple[float, int]:
    """Queue the readings for one target, then time its exporter until the queue is empty."""
    target = TargetConfig(name="vm", url=vm.url, bucket="bench", org="bench", kinds=["readings"], batch_size=batch,
                          flush_interval_s=0.01, max_queue=10_000_000)
    storage, ingest = await fresh(path, data, [target.queue_target()])
    for i in range(0, len(data), 20_000):
        await ingest.ingest(data.batch(slice(i, i + 20_000)))
    context = SimpleNamespace(storage=storage, site=SimpleNamespace(name=SITE, completeness_threshold=0.95),
                              tz=ZoneInfo("UTC"), bus=EventBus(), health=SimpleNamespace(supervise=lambda c, t: t))
    queues = ExportRepository(storage)
    exporter = TargetExporter(context, queues, target, Configurator(queues, SimpleNamespace(targets=[target])))  # type: ignore[arg-type]
    t = time.perf_counter()
    await exporter.start()
    while (await queues.state("vm"))[0]["depth"] > 0:
        await asyncio.sleep(0.05)
    seconds = time.perf_counter() - t
    requests = exporter.counters.batches_sent
    await exporter.stop()
    await storage.close()
    return seconds, requests


def client_points(data: Readings, measurement: str) -> list[Any]:
    """The same readings as influxdb-client ``Point`` objects, built directly from the data."""
    from influxdb_client import Point, WritePrecision

    meter_id = [f"M{m:04d}" for m in range(METERS + 1)]
    points = []
    for meter, ts, counter, pulses in zip(data.meter.tolist(), data.ts.tolist(), data.counter.tolist(),
                                          data.pulses.tolist(), strict=True):
        points.append(Point(measurement).tag("meter", meter_id[meter]).tag("resource", "water").tag("unit", "m3")
                      .tag("site", SITE).field("value", round(pulses * 0.001, 9)).field("pulses", pulses)
                      .field("counter", counter).field("status", 0).field("flags", 0)
                      .time(ts, WritePrecision.S))
    return points


def client_write(vm: Victoria, records: list[Any], batch: int) -> float:
    from influxdb_client import InfluxDBClient, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    with InfluxDBClient(url=vm.url, token="bench", org="bench", enable_gzip=True, timeout=60_000) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        t = time.perf_counter()
        for i in range(0, len(records), batch):
            write.write("bench", "bench", record=records[i : i + batch], write_precision=WritePrecision.S)
        return time.perf_counter() - t


def sender(folder: Path, data: Readings, batch: int, binary: str) -> None:
    vm = Victoria(binary, folder / "vm")
    vm.start()
    try:
        seconds, requests = asyncio.run(drain(folder / "drain.db", data, vm, batch))
        points = client_points(data, "client_reading")
        lines = [p.to_line_protocol() for p in client_points(data, "client_line")]
        client_s = client_write(vm, points, batch)
        line_s = client_write(vm, lines, batch)
        for name in ("reading_pulses", "client_reading_pulses", "client_line_pulses"):
            for key in (1, METERS // 2, METERS):
                got, sent = vm.count(name, f"M{key:04d}"), int((data.meter == key).sum())
                if got != sent:
                    raise SystemExit(f"{name}{{meter=M{key:04d}}}: {got} samples in VictoriaMetrics, {sent} sent")
    finally:
        vm.stop()
    n = len(data)
    print(f"2./3. {n:,} points to VictoriaMetrics (127.0.0.1), batches of {batch:,}, gzip")
    print(f"   {'writer':<52} {'points/s':>10} {'seconds':>8}")
    print(f"   {'exporter: queue -> line protocol -> HTTP -> ack':<52} {n / seconds:>10,.0f} {seconds:>8.2f}"
          f"   ({requests} requests)")
    print(f"   {'influxdb-client write_api, Point objects':<52} {n / client_s:>10,.0f} {client_s:>8.2f}")
    print(f"   {'influxdb-client write_api, line strings':<52} {n / line_s:>10,.0f} {line_s:>8.2f}")
    print(f"   ratio exporter / influxdb-client (Point objects): {client_s / seconds:.2f}; "
          f"(line strings): {line_s / seconds:.2f}")
    print("   the exporter's time includes reading the queue, the acknowledgements (deletes) and fsyncs;")
    print("   the client's includes building line protocol from Points (not building the Points themselves).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=200_000, help="readings for the ingest overhead")
    parser.add_argument("--points", type=int, default=200_000, help="points for the sender throughput")
    parser.add_argument("--batch", type=int, default=5000, help="points per request")
    parser.add_argument("--repeats", type=int, default=3, help="ingest runs per setup (best is kept)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the databases (default: a temp dir)")
    args = parser.parse_args()
    binary = shutil.which("victoria-metrics")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="balans-export-bench-") as tmp:
        folder = Path(tmp)
        overhead(folder, synthesize(args.readings), args.repeats)
        if binary is None:
            print("victoria-metrics is not installed (make peers): sender benchmark skipped")
            return 2
        sender(folder, synthesize(args.points), args.batch, binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
