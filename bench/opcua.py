"""OPC UA server: address space build time and data changes per second for 10,000 meters.

    python bench/opcua.py [--meters 10000] [--rounds 5] [--baseline-variables 10000]

Starts ``balans-edge run`` as its own process on a fresh database holding
``--meters`` meters (on radio modules of 3 inputs, 240 modules per
concentrator, in balance groups of 100) with its OPC UA server on a free port
of 127.0.0.1, and reads from its log how long the address space took to
build: the registry read, the model, every node, and the live values read
from storage. The baseline is asyncua's own bare server in another process
with ``--baseline-variables`` plain Double variables added the naive way
(``Node.add_variable`` one after the other into one folder, as asyncua's
examples do) and a method that rewrites all of them.

Then one asyncua client in this process subscribes to the ``Value`` of every
meter (one monitored item each, sampling interval 0, publishing interval
100 ms) and, ``--rounds`` times, every value changes: for balans-edge one
reading per meter pushed through ``POST /api/v1/readings`` (ingest, commit,
bus, refresh from storage, publish), for the baseline one call of its method.
A round ends when the client has the new value of every item; data changes
per second = items / round time. The server process's CPU time per data
change (``/proc/PID/stat``) is printed too: it does not depend on whether the
client kept up. Both servers run with security policy None (no signing or
encryption costs on either side), on core 0 when there are two or more
cores; the client runs on core 1. No target: the figures are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import cpu_seconds, free_port, pin

BIN = Path(sys.executable).parent
TOKEN = "bench-operator-token-0123456789"
NS = "urn:balans-edge:opcua"
PUBLISHING_MS = 100
SETTLE_S = 1.5
"""Wait after each round, inside the CPU window, for the server's background work (hourly
consumption, balances) to finish, so rounds with and without OPC UA are comparable."""


# balans-edge --------------------------------------------------------------------------------------


def seed(db: Path, meters: int, install: int) -> None:
    from balans_edge.core.model import Concentrator, Group, GroupInput, Meter, RadioModule, Resource
    from balans_edge.core.storage.sqlite import SqliteStorage

    modules = [RadioModule(1 + i, 1 + i // 240, channels=0b111) for i in range((meters + 2) // 3)]
    registry = {
        "concentrators": [Concentrator(c) for c in sorted({m.concentrator_id for m in modules})],
        "modules": modules,
        "meters": [Meter(f"M{i:05d}", Resource.WATER, "m3", 0.001, install, module_id=1 + i // 3,
                         channel=i % 3 + 1, group_id=None if i % 100 == 0 else f"G{i // 100:03d}",
                         flags=frozenset({"valve"}) if i % 50 == 1 else frozenset())
                   for i in range(meters)],
        "groups": [Group(f"G{g:03d}", Resource.WATER, "m3", (GroupInput(f"M{g * 100:05d}"),))
                   for g in range((meters + 99) // 100)],
    }

    async def write() -> None:
        storage = SqliteStorage(db)
        await storage.open()
        await storage.registry_apply(registry)
        await storage.close()

    asyncio.run(write())


def start_balans_edge(work: Path, http: int, port: int | None, meters: int,
                      install: int) -> tuple[subprocess.Popen, Path]:
    """balans-edge on a fresh database; with its OPC UA server unless ``port`` is None.
    The analytics scheduler is off: its detector runs are not what is measured."""
    work.mkdir(parents=True, exist_ok=True)
    db = work / "bench.db"
    seed(db, meters, install)
    config = work / "bench.toml"
    opcua = (f'[plugins.opcua.server]\nenabled = true\nport = {port}\nsecurity_policies = ["None"]\n'
             f'anonymous_role = "viewer"\npki_dir = "{work / "pki"}"\nage_interval_s = 3600\n' if port else "")
    config.write_text(
        f'[server]\nport = {http}\nlog_level = "info"\n\n[storage]\nurl = "sqlite:{db}"\n\n'
        f'[ingest]\nclock_tolerance_s = 300\n\n'
        f'[[api.users]]\nname = "bench"\nrole = "operator"\ntoken = "{TOKEN}"\n\n'
        f'[plugins.analytics]\nenabled = false\n\n{opcua}', encoding="utf-8")
    log = work / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([BIN / "balans-edge", "run", "-c", str(config)], stdout=subprocess.DEVNULL,
                                stderr=out)
    return proc, log


def built_line(log: Path, timeout: float = 600) -> tuple[int, float]:
    """(nodes, seconds) from the server's "address space of N nodes built in S s" line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"address space of (\d+) nodes built in ([\d.]+) s", log.read_text(errors="replace"))
        if found:
            return int(found[1]), float(found[2])
        time.sleep(0.1)
    raise RuntimeError(f"no build line in {log}:\n{log.read_text()[-3000:]}")


# the baseline: asyncua's bare server -----------------------------------------------------------------


def serve_baseline(port: int, count: int) -> None:
    """asyncua's own server: ``count`` Double variables added one by one into one
    folder, and a method Bump(k) that writes k into all of them."""
    from asyncua import Server, ua, uamethod

    logging.getLogger("asyncua").setLevel(logging.ERROR)

    async def run() -> None:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/baseline/")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NS)
        folder = await server.nodes.objects.add_folder(ua.NodeId("Meters", idx), "Meters")
        t0 = time.perf_counter()
        variables = [await folder.add_variable(ua.NodeId(f"Meters/M{i:05d}/Value", idx), f"M{i:05d}", 0.0)
                     for i in range(count)]
        built = time.perf_counter() - t0

        @uamethod
        async def bump(parent: ua.NodeId, k: float) -> None:
            for v in variables:
                await server.write_attribute_value(v.nodeid, ua.DataValue(ua.Variant(float(k), ua.VariantType.Double)))

        await folder.add_method(ua.NodeId("Bump", idx), "Bump", bump, [ua.VariantType.Double], [])
        async with server:
            print(f"BUILT {count} {built:.3f}", flush=True)
            await asyncio.Event().wait()

    asyncio.run(run())


def start_baseline(port: int, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--serve-baseline", str(port), "--size", str(count)],
                            stdout=subprocess.PIPE, text=True)


# the client ---------------------------------------------------------------------------------------------


@dataclass
class Collector:
    """Counts items that reached the value of the current round."""

    target: float | None = None
    """The value every item must reach; None: any value (the first reading)."""
    seen: set = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0
    notifications: int = 0

    def datachange_notification(self, node, val, data) -> None:
        self.notifications += 1
        if val is not None and (self.target is None or abs(val - self.target) < 1e-6):
            self.seen.add(node.nodeid)
            if len(self.seen) >= self.expected:
                self.done.set()

    def status_change_notification(self, status: object) -> None:
        print(f"subscription status change: {status}", file=sys.stderr)

    def reset(self, target: float | None) -> None:
        self.target, self.seen, self.done = target, set(), asyncio.Event()


@dataclass
class Result:
    name: str
    items: int
    built_nodes: int
    build_s: float
    rates: list[float]
    after_trigger: list[float]
    cpu_us: float

    @property
    def rate(self) -> float:
        return sorted(self.rates)[len(self.rates) // 2]


async def subscribe(url: str, node_ids: list[str], collector: Collector) -> tuple[object, object]:
    from asyncua import Client, ua

    # A long watchdog: asyncua's client probes the server every second with a one-second
    # timeout, which its own decoding of 10,000 notifications can exceed.
    client = Client(url, timeout=120, watchdog_intervall=30)
    await client.connect()
    ns = await client.get_namespace_index(NS)
    sub = await client.create_subscription(PUBLISHING_MS, collector)
    nodes = [client.get_node(ua.NodeId(n, ns)) for n in node_ids]
    for i in range(0, len(nodes), 5000):
        await sub.subscribe_data_change(nodes[i : i + 5000], queuesize=1, sampling_interval=0)
    return client, ns


async def measure_balans_edge(http: int, port: int, meters: int, rounds: int, pid: int,
                              start_t: int) -> tuple[list[float], list[float], float]:
    import httpx
    from asyncua import ua

    collector = Collector(expected=meters)
    client, ns = await subscribe(f"opc.tcp://127.0.0.1:{port}/balans-edge/",
                                 [f"Meters/M{i:05d}/Value" for i in range(meters)], collector)
    rates, after, cpu, first = [], [], 0.0, 0.0
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http}", timeout=300,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            for k in range(rounds + 1):
                collector.reset(first + k if k else None)
                cpu0, t0 = cpu_seconds(pid), time.perf_counter()
                t_ack = await push(api, meters, start_t, k)
                await asyncio.wait_for(collector.done.wait(), 300)
                t1 = time.perf_counter()
                await asyncio.sleep(SETTLE_S)
                if not k:  # the first readings (a meter's first state): not counted
                    first = await client.get_node(ua.NodeId("Meters/M00000/Value", ns)).read_value()
                else:
                    rates.append(meters / (t1 - t0))
                    after.append(t1 - t_ack)
                    cpu += cpu_seconds(pid) - cpu0
    finally:
        await client.disconnect()
    return rates, after, 1e6 * cpu / (meters * rounds)


async def push(api: object, meters: int, start_t: int, k: int) -> float:
    """Round k's readings through the HTTP API (answered after commit); when it was answered.
    Round 0 gives every meter its first reading; then 1000 pulses (1 m3) more per round."""
    body = {"readings": [{"module_id": 1 + i // 3, "channel": i % 3 + 1, "ts": start_t + 60 * k,
                          "counter": 100_000 + 1000 * k} for i in range(meters)]}
    r = await api.post("/api/v1/readings", json=body)  # type: ignore[attr-defined]
    if r.status_code != 200 or r.json().get("accepted") != meters:
        raise RuntimeError(f"push refused: {r.status_code} {r.text[:300]}")
    return time.perf_counter()


async def measure_ingest_only(http: int, meters: int, rounds: int, pid: int, start_t: int) -> float:
    """Server CPU per reading of the same rounds without the OPC UA server (the reference)."""
    import httpx

    cpu = 0.0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http}", timeout=300,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        for k in range(rounds + 1):
            cpu0 = cpu_seconds(pid)
            await push(api, meters, start_t, k)
            await asyncio.sleep(SETTLE_S)
            if k:
                cpu += cpu_seconds(pid) - cpu0
    return 1e6 * cpu / (meters * rounds)


async def measure_baseline(port: int, count: int, rounds: int, pid: int) -> tuple[list[float], list[float], float]:
    from asyncua import ua

    collector = Collector(expected=count)
    client, ns = await subscribe(f"opc.tcp://127.0.0.1:{port}/baseline/",
                                 [f"Meters/M{i:05d}/Value" for i in range(count)], collector)
    rates, after, cpu = [], [], 0.0
    try:
        folder = client.get_node(ua.NodeId("Meters", ns))
        for k in range(rounds + 1):
            collector.reset(float(k + 1))
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            await folder.call_method(ua.NodeId("Bump", ns), ua.Variant(float(k + 1), ua.VariantType.Double))
            t_ack = time.perf_counter()
            await asyncio.wait_for(collector.done.wait(), 300)
            t1 = time.perf_counter()
            await asyncio.sleep(SETTLE_S)
            if k:
                rates.append(count / (t1 - t0))
                after.append(t1 - t_ack)
                cpu += cpu_seconds(pid) - cpu0
    finally:
        await client.disconnect()
    return rates, after, 1e6 * cpu / (count * rounds)


async def wait_http(port: int, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/api/v1/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("balans-edge did not start")
            await asyncio.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(15)
    if proc.poll() is None:
        proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-variables", type=int, default=10_000)
    parser.add_argument("--serve-baseline", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline is not None:
        serve_baseline(args.serve_baseline, args.size)
        return 0
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    pin(os.getpid(), 1)
    now = int(time.time())
    start_t = now - 60 * (args.rounds + 2)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        http, port = free_port(), free_port()
        proc, log = start_balans_edge(Path(tmp), http, port, args.meters, start_t - 86400)
        try:
            pin(proc.pid, 0)
            nodes, build_s = built_line(log)
            rates, after, cpu_us = asyncio.run(measure_balans_edge(http, port, args.meters, args.rounds, proc.pid,
                                                                   start_t))
            results.append(Result("balans-edge", args.meters, nodes, build_s, rates, after, cpu_us))
        except BaseException:
            print("".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:]), file=sys.stderr)
            raise
        finally:
            stop(proc)
        http = free_port()
        proc, log = start_balans_edge(Path(tmp) / "reference", http, None, args.meters, start_t - 86400)
        try:
            pin(proc.pid, 0)
            asyncio.run(wait_http(http))
            ingest_cpu_us = asyncio.run(measure_ingest_only(http, args.meters, args.rounds, proc.pid, start_t))
        finally:
            stop(proc)
        port = free_port()
        base = start_baseline(port, args.baseline_variables)
        try:
            pin(base.pid, 0)
            line = base.stdout.readline() if base.stdout else ""
            if not line.startswith("BUILT"):
                raise RuntimeError(f"baseline server did not start: {line!r}")
            _, count, seconds = line.split()
            rates, after, cpu_us = asyncio.run(measure_baseline(port, args.baseline_variables, args.rounds, base.pid))
            results.append(Result("asyncua 2.1 bare", int(count), int(count), float(seconds), rates, after, cpu_us))
        finally:
            stop(base)

    ours, theirs = results
    print(f"OPC UA server: {args.meters} meters (balans-edge) and {args.baseline_variables} plain variables "
          f"(asyncua bare), security None, 1 subscribing client, {args.rounds} rounds")
    print(f"{'server':<20}{'items':>8}{'nodes built':>13}{'build s':>10}{'us/node':>9}"
          f"{'changes/s':>12}{'after trigger s':>17}{'CPU us/change':>15}")
    for r in results:
        print(f"{r.name:<20}{r.items:>8,}{r.built_nodes:>13,}{r.build_s:>10.2f}{1e6 * r.build_s / r.built_nodes:>9.1f}"
              f"{r.rate:>12,.0f}{sorted(r.after_trigger)[len(r.after_trigger) // 2]:>17.3f}{r.cpu_us:>15.1f}")
    print(f"reference: the same readings without the OPC UA server cost {ingest_cpu_us:.1f} us of server CPU "
          f"per meter; the OPC UA server adds {ours.cpu_us - ingest_cpu_us:.1f} us per data change")
    per_node = (theirs.build_s / theirs.built_nodes) / (ours.build_s / ours.built_nodes)
    print(f"ratio balans-edge / asyncua bare: build {theirs.build_s / ours.build_s:.1f}x faster for "
          f"{ours.built_nodes / theirs.built_nodes:.1f}x the nodes ({per_node:.0f}x less time per node); "
          f"data changes/s {ours.rate / theirs.rate:.2f}x; server CPU per change {ours.cpu_us / theirs.cpu_us:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
