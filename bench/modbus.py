"""Modbus TCP server: read requests per second for 10 concurrent clients.

    python bench/modbus.py [--clients 10] [--registers 100] [--seconds 5] [--meters 720]

Starts ``balans-edge run`` as its own process on a fresh database with the
registry of one concentrator (``--meters`` meters, 24 registers each, in
balance groups of 40) and its Modbus server on a free port of 127.0.0.1, and
pymodbus 3.16's own ``ModbusTcpServer`` in another process with a static
datastore (``SimDevice``/``SimData``) of the same number of registers: the
bare library, nothing computed. Then, for each server in turn, ``--clients``
concurrent clients (raw asyncio sockets, one request in flight each, in this
process) read ``--registers`` holding registers (function 3) at addresses
spread over the map for ``--seconds`` after a one-second warm-up.

Prints requests/s, the server process's CPU time per request (from
/proc/PID/stat: independent of whether the clients kept it busy), the
clients' round-trip p50/p99, and the ratio balans-edge / pymodbus. On a
machine with two or more cores the servers run on core 0 and the clients on
core 1. Every answer's function code and length are checked, and
balans-edge's system block (layout version, meter count) once at the end.
No target: the figures are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from procs import cpu_seconds, free_port, pin

BIN = Path(sys.executable).parent
T_INSTALL = 1_704_067_200
METER_BLOCK = 24
METERS_BASE = 10000


async def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


# the servers -------------------------------------------------------------------


def seed(db: Path, meters: int) -> None:
    """The registry of one concentrator (every 40th meter feeds a group of the
next 39): the server builds its map from it at start."""
    from balans_edge.core.model import Concentrator, Group, GroupInput, Meter, RadioModule, Resource
    from balans_edge.core.storage.sqlite import SqliteStorage

    modules = [RadioModule(1_000_000 + i, 1, channels=0b111) for i in range((meters + 2) // 3)]
    registry = {
        "concentrators": [Concentrator(1)],
        "modules": modules,
        "meters": [Meter(f"M{i:04d}", Resource.WATER, "m3", 0.001, T_INSTALL, module_id=1_000_000 + i // 3,
                         channel=i % 3 + 1, group_id=None if i % 40 == 0 else f"G{i // 40:02d}")
                   for i in range(meters)],
        "groups": [Group(f"G{g:02d}", Resource.WATER, "m3", (GroupInput(f"M{g * 40:04d}"),))
                   for g in range((meters + 39) // 40)],
    }

    async def write() -> None:
        storage = SqliteStorage(db)
        await storage.open()
        await storage.registry_apply(registry)
        await storage.close()

    asyncio.run(write())


def start_balans_edge(work: Path, port: int, meters: int) -> subprocess.Popen:
    db = work / "bench.db"
    seed(db, meters)
    config = work / "bench.toml"
    config.write_text(
        f'[server]\nport = {free_port()}\nlog_level = "warning"\n\n[storage]\nurl = "sqlite:{db}"\n\n'
        f'[plugins.modbus.server]\nenabled = true\nport = {port}\nmax_connections = 64\n', encoding="utf-8")
    return subprocess.Popen([BIN / "balans-edge", "run", "-c", str(config)], stdout=subprocess.DEVNULL)


def serve_pymodbus(port: int, registers: int) -> None:
    """pymodbus's own server, a static block of registers (run in its own process)."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    logging.getLogger("pymodbus").setLevel(logging.ERROR)

    async def run() -> None:
        device = SimDevice(1, simdata=[SimData(0, count=registers, values=0x1234, datatype=DataType.REGISTERS)])
        server = ModbusTcpServer(device, address=("127.0.0.1", port))
        await server.serve_forever()

    asyncio.run(run())


def start_pymodbus(port: int, registers: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--serve-pymodbus", str(port), "--size", str(registers)])


# the clients ---------------------------------------------------------------------


class Client(asyncio.Protocol):
    """One connection, one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= 6:
            size = 6 + int.from_bytes(self.buffer[4:6], "big")
            if len(self.buffer) >= size and self.waiter is not None and not self.waiter.done():
                frame, self.buffer = bytes(self.buffer[:size]), self.buffer[size:]
                self.waiter.set_result(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed by the server"))

    async def request(self, frame: bytes) -> bytes:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(frame)
        return await self.waiter


@dataclass
class Load:
    requests: int = 0
    latencies: list[float] = field(default_factory=list)


def read_request(tid: int, address: int, count: int) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, 1, 3, address, count)


async def drive(port: int, clients: int, count: int, addresses: np.ndarray, seconds: float, load: Load) -> None:
    loop = asyncio.get_running_loop()
    conns = [(await loop.create_connection(Client, "127.0.0.1", port))[1] for _ in range(clients)]
    stop = loop.time() + seconds
    expected = 9 + 2 * count

    async def one(k: int, conn: Client) -> None:
        tid = 0
        i = k
        while loop.time() < stop:
            tid = (tid + 1) & 0xFFFF
            address = int(addresses[i % len(addresses)])
            i += clients
            t0 = time.perf_counter()
            answer = await conn.request(read_request(tid, address, count))
            load.latencies.append(time.perf_counter() - t0)
            if len(answer) != expected or answer[7] != 3:
                raise RuntimeError(f"bad answer to a read of {count} registers at {address}: {answer[:12].hex()}")
            load.requests += 1

    try:
        await asyncio.gather(*(one(k, c) for k, c in enumerate(conns)))
    finally:
        for c in conns:
            c.transport.close()


@dataclass
class Result:
    name: str
    rate: float
    cpu_us: float
    p50_ms: float
    p99_ms: float


def measure(name: str, pid: int, port: int, args: argparse.Namespace, addresses: np.ndarray) -> Result:
    asyncio.run(drive(port, args.clients, args.registers, addresses, 1.0, Load()))  # warm-up
    load = Load()
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    asyncio.run(drive(port, args.clients, args.registers, addresses, args.seconds, load))
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    lat = np.array(load.latencies) * 1000
    return Result(name, load.requests / elapsed, 1e6 * cpu / max(load.requests, 1), float(np.percentile(lat, 50)),
                  float(np.percentile(lat, 99)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--registers", type=int, default=100, help="registers per read (1..125)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--meters", type=int, default=720)
    parser.add_argument("--serve-pymodbus", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_pymodbus is not None:
        serve_pymodbus(args.serve_pymodbus, args.size)
        return 0

    size = METERS_BASE + args.meters * METER_BLOCK
    rng = np.random.default_rng(1)
    # Reads spread over the meter area (a SCADA polling block after block), never past its end.
    addresses = rng.integers(0, size - args.registers, 4096)
    pin(os.getpid(), 1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ours_port, theirs_port = free_port(), free_port()
        servers = {"balans-edge": start_balans_edge(Path(tmp), ours_port, args.meters),
                   "pymodbus 3.16 bare": start_pymodbus(theirs_port, size)}
        try:
            for name, port in (("balans-edge", ours_port), ("pymodbus 3.16 bare", theirs_port)):
                pin(servers[name].pid, 0)
                asyncio.run(wait_port(port))
                results.append(measure(name, servers[name].pid, port, args, addresses))
                if name == "balans-edge":
                    probe = asyncio.run(probe_system(port))
                    if probe[:2] != (1, args.meters):
                        raise RuntimeError(f"unexpected system block {probe}")
        finally:
            for proc in servers.values():
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)

    print(f"Modbus TCP reads: {args.clients} clients, {args.registers} registers per request (function 3), "
          f"{args.seconds:g} s each, {size} registers in the map ({args.meters} meters)")
    print(f"{'server':<22}{'requests/s':>12}{'CPU us/req':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for r in results:
        print(f"{r.name:<22}{r.rate:>12,.0f}{r.cpu_us:>12.1f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}")
    ours, theirs = results
    print(f"ratio balans-edge / pymodbus: {ours.rate / theirs.rate:.2f}x requests/s, "
          f"{theirs.cpu_us / ours.cpu_us:.2f}x less server CPU per request")
    return 0


async def probe_system(port: int) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Client, "127.0.0.1", port)
    try:
        answer = await conn.request(read_request(1, 0, 16))
    finally:
        conn.transport.close()
    regs = struct.unpack(">16H", answer[9:])
    return regs[0], regs[14]


if __name__ == "__main__":
    sys.exit(main())
