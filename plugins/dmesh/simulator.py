"""A simulated DMesh site for the demo and for benchmarks.

It registers concentrators, radio modules and meters, back-fills their
history and then reports counters every ``interval_s`` through the real ingest
path, as a concentrator's READINGS would. Consumption follows a daily profile
(night minimum, morning and evening peaks) with noise, so hourly charts and
balances look like a real building's. Deterministic for a given seed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from balans_edge.core.ingest import Ingest, ReadingBatch
from balans_edge.core.model import Account, Concentrator, Meter, RadioModule, Resource
from balans_edge.core.storage import Storage, StorageError
from balans_edge.core.tasks import cancel
from balans_edge.plugins.dmesh.codec import ReadingRecord, Readings
from balans_edge.plugins.dmesh.concentrator import ConcentratorSettings, SimulatedConcentrator

log = logging.getLogger(__name__)

FIRST_CONCENTRATOR = 900_001
FIRST_MODULE = 1_000_001
# (resource, unit, pulse weight in unit per pulse, mean hourly use in unit)
KINDS = [
    (Resource.WATER, "m3", 0.001, 0.012),
    (Resource.WATER, "m3", 0.001, 0.006),
    (Resource.ELECTRICITY, "kWh", 0.01, 0.35),
]
PROFILE = np.array([0.3, 0.2, 0.2, 0.2, 0.3, 0.6, 1.4, 2.0, 1.6, 1.0, 0.8, 0.8,
                    0.9, 0.9, 0.8, 0.8, 0.9, 1.2, 1.7, 2.0, 1.8, 1.4, 0.9, 0.5])
"""Relative hourly use over a local day (mean 1.0 over the day, roughly)."""


@dataclass(frozen=True)
class SiteShape:
    concentrators: int
    modules_per_concentrator: int
    seed: int


def build_site(shape: SiteShape, install_time: int, base_counters: np.ndarray) -> dict[str, list]:
    """Registry objects of the simulated site: each module carries 3 meters
    whose base counters are the module's counters at installation."""
    concentrators, modules, accounts, meters = [], [], [], []
    for c in range(shape.concentrators):
        cid = FIRST_CONCENTRATOR + c
        concentrators.append(Concentrator(cid, name=f"Simulated concentrator {c + 1}", site="demo"))
        for m in range(shape.modules_per_concentrator):
            mid = FIRST_MODULE + c * 1000 + m
            modules.append(RadioModule(mid, cid, channels=0b111))
            account = f"SIM-{c + 1:02d}-{m + 1:03d}"
            accounts.append(Account(account, consumer=f"Flat {m + 1}", tariff_plan="standard",
                                    area_m2=float(40 + (m * 7) % 50)))
            for ch, (resource, unit, weight, _) in enumerate(KINDS, start=1):
                meters.append(Meter(
                    f"SIM-{mid}-{ch}", resource, unit, weight, install_time, module_id=mid, channel=ch,
                    base_counter=int(base_counters[len(meters)]), account_id=account, group_id=f"sim-house-{c + 1}",
                ))
    return {"concentrators": concentrators, "modules": modules, "accounts": accounts, "meters": meters}


class SiteSimulator:
    """Counters of every simulated meter as a pure function of time.

    The counter at time t depends only on the seed and t (noise is drawn per
    hour from a generator seeded with the hour), so a restarted demo continues
    exactly where the stored history ends instead of inventing a reset.
    """

    def __init__(self, shape: SiteShape, start: int) -> None:
        self.shape = shape
        rng = np.random.default_rng(shape.seed)
        n_modules = shape.concentrators * shape.modules_per_concentrator
        self.module = np.repeat(
            np.array([FIRST_MODULE + c * 1000 + m for c in range(shape.concentrators)
                      for m in range(shape.modules_per_concentrator)], dtype=np.int64), len(KINDS))
        self.channel = np.tile(np.arange(1, len(KINDS) + 1, dtype=np.int64), n_modules)
        weights = np.tile([k[2] for k in KINDS], n_modules)
        mean_use = np.tile([k[3] for k in KINDS], n_modules) * rng.uniform(0.5, 1.5, len(self.module))
        self.pulses_per_hour = mean_use / weights
        self.start_hour = start // 3600
        self._cum = [rng.integers(0, 2**32, len(self.module)).astype(np.float64)]
        """Counters (unwrapped) at the start of each hour since start_hour."""

    def _hour_use(self, hour: int) -> np.ndarray:
        noise = np.random.default_rng([self.shape.seed, hour]).gamma(4.0, 0.25, len(self.module))
        return self.pulses_per_hour * PROFILE[hour % 24] * noise

    def counters_at(self, t: int) -> np.ndarray:
        hour, into = divmod(t, 3600)
        offset = max(hour - self.start_hour, 0)
        while len(self._cum) <= offset + 1:
            h = self.start_hour + len(self._cum) - 1
            self._cum.append(self._cum[-1] + self._hour_use(h))
        a, b = self._cum[offset], self._cum[offset + 1]
        return np.floor(a + (b - a) * (into / 3600)).astype(np.int64) % (1 << 32)

    def batch(self, t: int) -> ReadingBatch:
        counters = self.counters_at(t)
        n = len(counters)
        return ReadingBatch(self.module.copy(), self.channel.copy(), np.full(n, t, dtype=np.int64),
                            counters, np.zeros(n, dtype=np.int64))


PER_FRAME = 120
"""Modules per READINGS frame: 120 x (15 + 3 x 4) bytes stay under the 4,096-byte payload limit."""


class TcpDelivery:
    """Delivers the site's readings as its concentrators would: READINGS frames
    over TCP to the DMesh driver, through simulated concentrators."""

    def __init__(self, shape: SiteShape, keys: dict[int, bytes], port: Callable[[], int | None]) -> None:
        missing = [FIRST_CONCENTRATOR + c for c in range(shape.concentrators) if FIRST_CONCENTRATOR + c not in keys]
        if missing:
            raise ValueError(f"simulated concentrators {missing} need keys in [plugins.dmesh] concentrators")
        self.shape = shape
        self.keys = keys
        self.port = port
        self.concentrators: list[SimulatedConcentrator] = []

    async def start(self) -> None:
        port = self.port()
        if port is None:
            raise RuntimeError("the DMesh driver is not listening: the simulator cannot dial in")
        for c in range(self.shape.concentrators):
            cid = FIRST_CONCENTRATOR + c
            con = SimulatedConcentrator(ConcentratorSettings(cid, self.keys[cid], port=port,
                                                             modules=self.shape.modules_per_concentrator,
                                                             meters=self.shape.modules_per_concentrator * len(KINDS)))
            con.start()
            self.concentrators.append(con)

    async def deliver(self, batch: ReadingBatch) -> None:
        """Queue the readings as frames; the concentrators send them as the window allows."""
        k = len(KINDS)
        modules, counters = batch.module[::k], batch.counter.reshape(-1, k)
        t = int(batch.ts[0])
        for c, con in enumerate(self.concentrators):
            own = np.flatnonzero((modules - FIRST_MODULE) // 1000 == c)
            records = [
                ReadingRecord(int(modules[i]), t, 0, 3600 - int(i % 7) * 20, -60 - int(i % 30), 1 + int(i % 5),
                              (1 << k) - 1, tuple(counters[i].tolist()))
                for i in own
            ]
            for j in range(0, len(records), PER_FRAME):
                con.submit(Readings(tuple(records[j : j + PER_FRAME])))

    async def stop(self) -> None:
        for con in self.concentrators:
            await con.stop()
        self.concentrators.clear()


class Simulator:
    """Component: registers the simulated site and feeds its readings, straight
    into ingest or over TCP through simulated concentrators."""

    name = "dmesh-simulator"

    def __init__(self, storage: Storage, ingest: Ingest, shape: SiteShape, interval_s: int,
                 history_hours: int, tcp: TcpDelivery | None = None) -> None:
        self.storage = storage
        self.ingest = ingest
        self.tcp = tcp
        self.shape = shape
        self.interval_s = interval_s
        self.history_hours = history_hours
        self._task: asyncio.Task[None] | None = None
        self.sim: SiteSimulator | None = None

    async def start(self) -> None:
        now = int(time.time())
        start = (now - self.history_hours * 3600) // 3600 * 3600
        stored = {m.meter_id: m for m in await self.storage.registry_list("meters")}
        first = stored.get(f"SIM-{FIRST_MODULE}-1")
        if first is not None:
            start = first.install_time  # continue the same simulated history
        self.sim = SiteSimulator(self.shape, start)
        site = build_site(self.shape, start, self.sim.counters_at(start))
        if not all(m.meter_id in stored for m in site["meters"]):
            await self.storage.registry_apply(site)
        if self.tcp is not None:
            await self.tcp.start()
        # Hourly history up to now (already stored hours come back as duplicates).
        for t in range(max(start, now - self.history_hours * 3600) // 3600 * 3600, now + 1, 3600):
            await self._deliver(self.sim.batch(t))
        self._task = asyncio.create_task(self._run(self.sim), name=self.name)

    async def _deliver(self, batch: ReadingBatch) -> None:
        if self.tcp is not None:
            await self.tcp.deliver(batch)
        else:
            await self.ingest.ingest(batch)

    async def _run(self, sim: SiteSimulator) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self._deliver(sim.batch(int(time.time())))
            except StorageError as exc:
                log.warning("simulated readings not stored (%s); the next round carries the counters", exc)

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        if self.tcp is not None:
            await self.tcp.stop()
