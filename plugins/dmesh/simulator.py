"""A simulated DMesh site: scenario buildings, reported as their concentrators would.

The site is a ``scenario.Scenario``: buildings with an input meter and one
water meter per apartment, household profiles, and injected faults whose
ground truth is known. ``SiteModel`` turns it into what concentrators report
over the air: READINGS records with battery, RSSI and hops, the TOPOLOGY of a
mesh in which apartments relay through their neighbours, an EVENT when a
module's status changes, PROFILE values for back-fill, and answers to commands
after a delay that grows with the route's hops. Buildings are served by the
concentrators round-robin.

``TcpDelivery`` runs simulated concentrators (``concentrator.py``) that dial
in to the driver; ``Simulator`` is the server component behind the demo, and
``balans-edge dmesh simulate`` (``simulate_cli.py``) runs the same site as a
separate process against any server. Everything is deterministic for a seed,
and the site's counters are a function of the install time only, so a
restarted simulator continues its stored history instead of inventing a reset.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np

from balans_edge.core.ingest import Ingest, ReadingBatch
from balans_edge.core.model import CONCENTRATOR_MODULES, COUNTER_MODULUS, Status
from balans_edge.core.storage import StorageError
from balans_edge.core.storage.registry_repository import RegistryReader
from balans_edge.core.storage.views import Queries, RegistryEditor
from balans_edge.core.tasks import cancel
from balans_edge.core.times import HOUR, hour_floor
from balans_edge.plugins.dmesh.codec import (
    Command,
    CommandCode,
    CommandResultCode,
    Event,
    ModuleEntry,
    Payload,
    ReadingRecord,
    Readings,
    Topology,
)
from balans_edge.plugins.dmesh.concentrator import STATUS_AFTER, ConcentratorSettings, SimulatedConcentrator
from balans_edge.plugins.dmesh.scenario import (
    AnyFault,
    ClockDrift,
    CounterReset,
    Dripping,
    Leak,
    LostModule,
    LowBattery,
    Magnet,
    NetworkLeak,
    Reversed,
    Scenario,
    ScenarioData,
    Stuck,
    Theft,
    Unmetered,
    counted,
    generate,
)
from balans_edge.settings import setting

log = logging.getLogger(__name__)

FIRST_CONCENTRATOR = 900_001
HORIZON_H = 7 * 24
"""The scenario is generated this far beyond the present, then extended."""
PER_READINGS = 200
"""One-channel records per READINGS frame: (4,096 - 2) // 19 = 215 fit in a payload."""
INGEST_BATCH = 20_000
"""Readings per ingest call when the history goes straight into ingest."""
PER_TOPOLOGY = CONCENTRATOR_MODULES
"""Entries per TOPOLOGY frame: the 240 modules a concentrator may list (255 would fit a payload)."""
RING = 12
"""Apartments per radio ring: a module relays through the one ``RING`` apartments
below it (the floors nearer the concentrator in the basement)."""
FIRMWARE = 0x0104

FAULT_KINDS: dict[str, type] = {
    "leak": Leak, "network_leak": NetworkLeak, "unmetered": Unmetered, "dripping": Dripping, "magnet": Magnet,
    "stuck": Stuck, "reversed": Reversed, "counter_reset": CounterReset, "lost_module": LostModule,
    "low_battery": LowBattery, "clock_drift": ClockDrift, "theft": Theft,
}
EVENT_ON_OFF = {Status.MAGNET: (1, 2), Status.LEAK: (4, 5)}
"""Status flag -> (EVENT code when it appears, when it clears)."""
EVENT_LOW_BATTERY, EVENT_MODULE_JOINED, EVENT_MODULE_LOST, EVENT_COUNTER_RESET = 8, 9, 10, 12


# Configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultConfig:
    """One injected fault: ``kind`` and the keys that apply to it."""

    kind: Annotated[Literal["leak", "network_leak", "unmetered", "dripping", "magnet", "stuck", "reversed",
                            "counter_reset", "lost_module", "low_battery", "clock_drift", "theft"],
                    setting(doc="what goes wrong (plugins/dmesh/README.md describes each kind)")]
    meter: Annotated[str, setting(doc=(
        "the apartment's meter, e.g. B1-A07 (every kind but network_leak, unmetered and dripping)"))] = ""
    building: Annotated[str, setting(doc="the building, e.g. B2 (network_leak, unmetered, dripping)")] = ""
    start_hour: Annotated[int, setting(range=(0, 24 * 3660), doc=(
        "hours after the site's installation (counter_reset: the hour)"))] = 0
    end_hour: Annotated[int, setting(range=(0, 24 * 3660), doc="hour it stops (0: never)")] = 0
    litres_per_hour: Annotated[float, setting(range=(0.0, 100_000.0), doc=(
        "leak, network_leak, unmetered, dripping"))] = 0.0
    fraction: Annotated[float, setting(range=(0.0, 1.0), doc="magnet: share of the flow not registered")] = 0.0
    share: Annotated[float, setting(range=(0.0, 1.0), doc=(
        "dripping: share of the building's apartments with a drip"))] = 0.0
    flag_share: Annotated[float, setting(range=(0.0, 1.0), doc="magnet: share of readings flagged MAGNET")] = 0.3
    sensor: Annotated[bool, setting(doc="leak: the module's leak sensor is wet")] = False
    at: Annotated[float, setting(range=(0.0, 1.0), doc="counter_reset: point of the hour it restarts")] = 0.5
    days: Annotated[float, setting(range=(0.01, 3650.0), doc="low_battery: days from healthy to dead")] = 30.0
    seconds_per_day: Annotated[float, setting(range=(-86400.0, 86400.0), doc=(
        "clock_drift: gain (negative: loss)"))] = 0.0
    attack: Annotated[str, setting(doc="theft: h1..h6 (Jokar et al. 2016)")] = ""
    alpha: Annotated[float, setting(range=(0.0, 0.99), doc=(
        "theft h1: share of the use the meter still registers"))] = 0.5

    def __post_init__(self) -> None:
        self.fault()  # refuses keys that do not apply, with the fault named

    def fault(self) -> AnyFault:
        """The scenario fault this entry describes."""
        cls = FAULT_KINDS[self.kind]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        rename = {"meter": "apartment", "start_hour": "hour" if cls is CounterReset else "start", "end_hour": "end"}
        keys = [f for f in dataclasses.fields(self) if f.name != "kind"]
        given = {f.name: getattr(self, f.name) for f in keys if getattr(self, f.name) != f.default}
        wrong = sorted(k for k in given if rename.get(k, k) not in fields)
        if wrong:
            takes = ", ".join(sorted(f.name for f in keys if rename.get(f.name, f.name) in fields))
            raise ValueError(f"{self.kind}: {', '.join(wrong)} does not apply (it takes {takes})")
        args = {rename.get(k, k): v for k, v in given.items()}
        if cls is CounterReset:
            args["hour"] = self.start_hour  # hour 0 is a valid hour, not "not given"
        back = {v: k for k, v in rename.items()}
        missing = sorted(back.get(n, n) for n, f in fields.items()
                         if f.default is dataclasses.MISSING and n not in args)
        if missing:
            raise ValueError(f"{self.kind}: {', '.join(missing)} is required")
        return cls(**args)


@dataclass(frozen=True)
class SimulatorConfig:
    """``[plugins.dmesh.simulator]``: the simulated site of the demo and of ``dmesh simulate``."""

    enabled: Annotated[bool, setting(doc="run the simulated site inside the server")] = False
    transport: Annotated[Literal["ingest", "tcp"], setting(doc=(
        "ingest: readings go straight into ingest; tcp: simulated concentrators dial in to the driver and speak the "
        "protocol (their ids need keys under concentrators)"))] = "ingest"
    concentrators: Annotated[int, setting(range=(1, 50), doc=(
        "concentrators 900001, 900002, ...; buildings round-robin"))] = 1
    buildings: Annotated[int, setting(range=(1, 50), doc="buildings B1, B2, ... of the site")] = 2
    apartments: Annotated[int, setting(range=(1, 999), doc="apartments (meters) per building")] = 40
    mean_lph: Annotated[float, setting(range=(0.0, 10_000.0), doc="an average apartment's use, litres per hour")] = 10.0
    network_loss: Annotated[float, setting(range=(0.0, 0.9), doc=(
        "background leakage of each building's network"))] = 0.03
    event_litres: Annotated[float, setting(range=(0.0, 1000.0), doc=(
        "mean volume of one use of water (0: use flows continuously)"))] = 8.0
    interval_s: Annotated[int, setting(range=(1, 86400), doc="reporting period of the live site")] = 60
    history_hours: Annotated[int, setting(range=(0, 24 * 90), doc="hours of history sent at start (fast-forward)")] = 48
    hop_delay_s: Annotated[float, setting(range=(0.0, 600.0), doc="a command's delay per radio hop")] = 0.2
    valves: Annotated[bool, setting(doc="apartment meters have a shut-off valve that commands close and open")] = True
    seed: Annotated[int, setting(range=(0, 2**31), doc="the same seed makes the same site and the same use")] = 1
    faults: Annotated[list[FaultConfig], setting(doc="`[[plugins.dmesh.simulator.faults]]`: faults injected into "
                                                     "the site")] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Each fault against the site (meter names, hour windows), so that the error names it.
        for i, entry in enumerate(self.faults):
            fault = entry.fault()
            hours = max(getattr(fault, "hour", 0), fault.start, fault.end or 0) + 1
            try:
                generate(self.scenario(start=0, hours=hours), [fault])
            except ValueError as exc:
                message = str(exc).removeprefix(f"{fault!r}: ")
                raise ValueError(f"faults[{i}] ({entry.kind}): {message}") from None

    def scenario(self, start: int, hours: int, utc_offset_h: int = 0) -> Scenario:
        return Scenario(buildings=self.buildings, apartments=self.apartments, start=start, hours=hours,
                        seed=self.seed, network_loss=self.network_loss, mean_lph=self.mean_lph,
                        utc_offset_h=utc_offset_h, event_litres=self.event_litres, valves=self.valves)

    def concentrator_ids(self) -> list[int]:
        return [FIRST_CONCENTRATOR + c for c in range(self.concentrators)]


# The site ------------------------------------------------------------------------------


SUPPLY_SWITCHES: dict[CommandCode, tuple[int, bool]] = {
    CommandCode.VALVE_CLOSE: (Status.VALVE_CLOSED, True), CommandCode.VALVE_OPEN: (Status.VALVE_CLOSED, False),
    CommandCode.RELAY_OFF: (Status.RELAY_OFF, True), CommandCode.RELAY_ON: (Status.RELAY_OFF, False),
}
"""Commands that switch a module's supply -> (its status flag, whether it turns the supply off)."""


@dataclass
class Supply:
    """A module's valve and relay as commands left them."""

    flags: int = 0
    """VALVE_CLOSED and RELAY_OFF as they are now (0: open and on)."""
    periods: list[list[int | None]] = field(default_factory=list)
    """[from, until) of each time nothing flowed (until None: still off)."""


class SiteModel:
    """The scenario of a site as time goes by, in the concentrators' terms.

    The scenario is generated from the install time to a horizon beyond the
    present and regenerated further when the clock passes it; a longer
    scenario starts with the same readings, so nothing jumps.
    """

    def __init__(self, config: SimulatorConfig, install_time: int, utc_offset_h: int = 0) -> None:
        self.config = config
        self.install_time = hour_floor(install_time)
        self.utc_offset_h = utc_offset_h
        self.faults = [f.fault() for f in config.faults]
        ids = config.concentrator_ids()
        self.concentrator_of = {b: ids[b % len(ids)] for b in range(config.buildings)}
        self.data = self._generate(HORIZON_H)
        d = self.data
        self.row_concentrator = np.array([self.concentrator_of[int(b)] for b in d.building], dtype=np.int64)
        self.parent, self.hops, self.rssi = _mesh(d)
        self._rows = {int(m): i for i, m in enumerate(d.module)}
        self._supply: dict[int, Supply] = {}

    def _generate(self, hours: int) -> ScenarioData:
        scenario = self.config.scenario(self.install_time, hours, self.utc_offset_h)
        return generate(scenario, self.faults)

    def ensure(self, t: int) -> ScenarioData:
        """The scenario, generated at least up to time ``t``."""
        if t > self.data.ts[-1]:
            self.data = self._generate((t - self.install_time) // HOUR + 1 + HORIZON_H)
        return self.data

    def registry(self) -> dict[str, list]:
        return self.data.registry(self.concentrator_of)

    def closing_reading(self, t: int) -> int:
        """Index of the reading that closes the hour ``t`` is in (``t`` itself at a reading time)."""
        return -(-(t - self.install_time) // HOUR)

    def records(self, batch: ReadingBatch) -> dict[int, list[ReadingRecord]]:
        """READINGS records per concentrator for readings latched at one time."""
        if not len(batch):
            return {}
        t = int(batch.ts[0])
        d = self.ensure(t)
        rows = np.searchsorted(d.module, batch.module)
        battery = d.battery_mv[rows, self.closing_reading(t)]
        counter, status = self._switched(batch.module, batch.counter, batch.status, t)
        records: dict[int, list[ReadingRecord]] = {}
        for j, i in enumerate(rows.tolist()):
            records.setdefault(int(self.row_concentrator[i]), []).append(ReadingRecord(
                int(d.module[i]), t, int(status[j]), int(battery[j]), int(self.rssi[i]), int(self.hops[i]),
                1, (int(counter[j]),)))
        return records

    # valves and relays -------------------------------------------------------------

    def switch(self, module_id: int, code: int, t: int) -> None:
        """A command the module carried out at ``t``: a closed valve or a relay
        switched off stops its meter until both are open and on again."""
        if code not in SUPPLY_SWITCHES or module_id not in self._rows:
            return
        flag, off = SUPPLY_SWITCHES[CommandCode(code)]
        supply = self._supply.setdefault(module_id, Supply())
        was = supply.flags
        supply.flags = was | flag if off else was & ~flag
        if supply.flags and not was:
            supply.periods.append([t, None])
        elif was and not supply.flags:
            supply.periods[-1][1] = t

    def _switched(self, modules: np.ndarray, counter: np.ndarray, status: np.ndarray,
                  t: int) -> tuple[np.ndarray, np.ndarray]:
        """Counters less what did not flow while supply was off, and the VALVE_CLOSED
        and RELAY_OFF flags, of readings latched at ``t``."""
        if not self._supply:
            return counter, status
        counter, status = counter.copy(), status.copy()
        for j, module in enumerate(modules.tolist()):
            supply = self._supply.get(module)
            if supply is None:
                continue
            i = self._rows[module]
            held = sum(self._flow(i, t0, t if t1 is None else min(t1, t)) for t0, t1 in supply.periods if t0 < t)
            counter[j] = (int(counter[j]) - held) % COUNTER_MODULUS
            if supply.periods and supply.periods[-1][1] is None and t >= supply.periods[-1][0]:
                status[j] |= supply.flags
        return counter, status

    def _flow(self, i: int, t0: int, t1: int) -> int:
        """Pulses the scenario counts on row ``i`` from ``t0`` to ``t1``."""
        d = self.ensure(t1)
        return int(counted(d.counter_at(i, t0), d.counter_at(i, t1)))

    def readings(self, batch: ReadingBatch) -> dict[int, list[Payload]]:
        """READINGS frames per concentrator for readings latched at one time."""
        return {cid: list(frames(r)) for cid, r in self.records(batch).items()}

    def topology(self, t: int) -> dict[int, list[Payload]]:
        """TOPOLOGY frames per concentrator: the mesh as it is at ``t``."""
        d = self.ensure(t)
        k = self.closing_reading(t)
        entries: dict[int, list[ModuleEntry]] = {}
        for i in range(len(d.module)):
            entries.setdefault(int(self.row_concentrator[i]), []).append(ModuleEntry(
                int(d.module[i]), int(self.parent[i]), int(self.hops[i]), int(self.rssi[i]),
                int(d.battery_mv[i, k]), FIRMWARE, 1, 0 if d.present[i, k] else 1))
        return {cid: [Topology(tuple(e[j : j + PER_TOPOLOGY])) for j in range(0, len(e), PER_TOPOLOGY)]
                for cid, e in entries.items()}

    def events(self, k: int) -> dict[int, list[Payload]]:
        """EVENT frames per concentrator for what changed between readings ``k - 1`` and ``k``."""
        if k < 1:
            return {}
        d = self.ensure(int(self.install_time + k * HOUR))
        t = int(d.ts[k])
        before, now = d.status[:, k - 1], d.status[:, k]
        was, is_ = d.present[:, k - 1], d.present[:, k]
        found: list[tuple[int, int, int]] = []  # (row, code, value)
        for flag, (on, off) in EVENT_ON_OFF.items():
            found += [(i, on, 0) for i in np.flatnonzero(is_ & (now & flag != 0) & (before & flag == 0))]
            found += [(i, off, 0) for i in np.flatnonzero(is_ & was & (now & flag == 0) & (before & flag != 0))]
        low = Status.LOW_BATTERY
        found += [(i, EVENT_LOW_BATTERY, int(d.battery_mv[i, k]))
                  for i in np.flatnonzero(is_ & (now & low != 0) & (before & low == 0))]
        found += [(i, EVENT_COUNTER_RESET, 0) for i in np.flatnonzero(is_ & (now & Status.COUNTER_RESET != 0))]
        found += [(i, EVENT_MODULE_LOST, 0) for i in np.flatnonzero(was & ~is_)]
        found += [(i, EVENT_MODULE_JOINED, int(self.hops[i])) for i in np.flatnonzero(~was & is_)]
        frames: dict[int, list[Payload]] = {}
        for i, code, value in sorted(found):
            frames.setdefault(int(self.row_concentrator[i]), []).append(Event(int(d.module[i]), t, code, value))
        return frames

    def profile(self, module_id: int, channel: int, t0: int, t1: int, now: int) -> list[int | None]:
        """Hourly counters a module kept, for a PROFILE_REQUEST (None: not recorded)."""
        i = self._rows.get(module_id)
        hours = range(t0, t1, HOUR)
        if i is None or channel != 1:
            return [None for _ in hours]
        d = self.ensure(min(t1, now))
        out: list[int | None] = []
        for t in hours:
            k = (t - self.install_time) // HOUR
            ok = 0 <= k < len(d.ts) and t <= now and bool(d.present[i, k])
            if ok:
                counter, _ = self._switched(np.array([module_id]), d.counter[[i], k], np.zeros(1, np.int64), t)
                out.append(int(counter[0]))
            else:
                out.append(None)
        return out

    def answer(self, module_id: int, code: int, now: int) -> tuple[int, int, float]:
        """COMMAND_RESULT (result, status, delay) of a command to a module: the
        answer takes ``hop_delay_s`` per hop there and back."""
        i = self._rows.get(module_id)
        if i is None:
            return CommandResultCode.UNKNOWN_MODULE, 0, self.config.hop_delay_s
        delay = 2 * self.config.hop_delay_s * int(self.hops[i])
        d = self.ensure(now)
        if not d.present[i, self.closing_reading(now)]:
            return CommandResultCode.NO_ROUTE, 0, delay
        return CommandResultCode.DONE, STATUS_AFTER.get(CommandCode(code), 0), delay


def frames(records: list[ReadingRecord]) -> Iterator[Readings]:
    for k in range(0, len(records), PER_READINGS):
        yield Readings(tuple(records[k : k + PER_READINGS]))


def _mesh(d: ScenarioData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(parent module, hops, RSSI) of every module. The input meter's module sits
    by the concentrator; apartment ``a`` is ``(a - 1) // RING`` rings further
    and relays through the apartment of the same position one ring lower."""
    base = d.module - d.module % 1000  # the building's input module
    a = d.module % 1000
    ring = np.where(a == 0, 0, (a - 1) // RING)
    hops = np.minimum(ring + 1, 30)
    parent = np.where(hops == 1, 0, base + 1 + (np.minimum(ring, 29) - 1) * RING + (a - 1) % RING)
    rssi = -58 - (a * 37) % 35  # -58 .. -92 dBm
    return parent, hops, rssi


# Delivery ----------------------------------------------------------------------------


class TcpDelivery:
    """Simulated concentrators that dial in to the driver and send what the site reports."""

    def __init__(self, site: SiteModel, keys: dict[int, bytes], port: Callable[[], int | None],
                 host: str = "127.0.0.1", clock: Callable[[], float] = time.time) -> None:
        self.check_keys(site.config, keys)
        self.site = site
        self.keys = keys
        self.port = port
        self.host = host
        self.clock = clock
        self.concentrators: dict[int, SimulatedConcentrator] = {}

    @staticmethod
    def check_keys(config: SimulatorConfig, keys: dict[int, bytes]) -> None:
        missing = [cid for cid in config.concentrator_ids() if cid not in keys]
        if missing:
            raise ValueError(f"simulated concentrators {missing} need keys in [plugins.dmesh] concentrators")

    async def start(self) -> None:
        port = self.port()
        if port is None:
            raise RuntimeError("the DMesh driver is not listening: the simulator cannot dial in")
        modules = np.bincount(np.searchsorted(self.site.config.concentrator_ids(), self.site.row_concentrator))
        for c, cid in enumerate(self.site.config.concentrator_ids()):
            n = int(modules[c]) if c < len(modules) else 0
            con = SimulatedConcentrator(
                ConcentratorSettings(cid, self.keys[cid], host=self.host, port=port, modules=n, meters=n),
                self.clock, on_command=self._answer, profile=self._profile)
            con.start()
            self.concentrators[cid] = con

    def _answer(self, command: Command) -> tuple[int, int, float]:
        now = int(self.clock())
        result = self.site.answer(command.module_id, command.code, now)
        if result[0] == CommandResultCode.DONE:
            self.site.switch(command.module_id, command.code, now)
        return result

    def _profile(self, module_id: int, channel: int, t0: int, t1: int) -> list[int | None]:
        return self.site.profile(module_id, channel, t0, t1, int(self.clock()))

    def submit(self, frames: dict[int, list[Payload]]) -> None:
        """Queue frames per concentrator; they go out as each one's window allows."""
        for cid, payloads in frames.items():
            for payload in payloads:
                self.concentrators[cid].submit(payload)

    async def drained(self) -> None:
        await asyncio.gather(*(c.drained() for c in self.concentrators.values()))

    async def stop(self) -> None:
        for con in self.concentrators.values():
            await con.stop()
        self.concentrators.clear()


class SiteRunner:
    """Feeds a site's history (fast-forward) and then its live readings to a
    delivery: TCP through simulated concentrators, or straight into ingest."""

    def __init__(self, site: SiteModel, tcp: TcpDelivery | None = None, ingest: Ingest | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if (tcp is None) == (ingest is None):
            raise ValueError("give either a TCP delivery or an ingest")
        self.site = site
        self.tcp = tcp
        self.ingest = ingest
        self.clock = clock

    async def send_hours(self, hours: Iterable[int]) -> int:
        """The hourly readings (and events) of these reading indexes; returns the
        readings sent. Consecutive hours share frames (a concentrator empties
        its buffer so after an outage) and ingest batches, so that a month goes
        through in seconds."""
        sent = 0
        pending: dict[int, list[ReadingRecord]] = {}
        batches: list[ReadingBatch] = []
        for k in hours:
            batch = self.site.ensure(self.site.install_time + k * HOUR).batch(k)
            sent += len(batch)
            if self.tcp is None:
                batches.append(batch)
                if sum(map(len, batches)) >= INGEST_BATCH:
                    await self._ingest(batches)
                continue
            for cid, records in self.site.records(batch).items():
                buffer = pending.setdefault(cid, [])
                buffer += records
                if len(buffer) >= PER_READINGS:
                    full = len(buffer) // PER_READINGS * PER_READINGS
                    self.tcp.submit({cid: list(frames(buffer[:full]))})
                    del buffer[:full]
            self.tcp.submit(self.site.events(k))
        if self.tcp is not None:
            self.tcp.submit({cid: list(frames(r)) for cid, r in pending.items() if r})
        await self._ingest(batches)
        return sent

    async def _ingest(self, batches: list[ReadingBatch]) -> None:
        if self.ingest is not None and batches:
            columns = [np.concatenate([getattr(b, name) for b in batches])
                       for name in ("module", "channel", "ts", "counter", "status")]
            batches.clear()
            await self.ingest.ingest(ReadingBatch(*columns))

    async def history(self, hours: int) -> int:
        """Fast-forward: the last ``hours`` hourly readings up to now, then the topology."""
        now = int(self.clock())
        last = (now - self.site.install_time) // HOUR
        sent = await self.send_hours(range(max(0, last - hours), last + 1))
        if self.tcp is not None:
            self.tcp.submit(self.site.topology(now))
        return sent

    async def live(self, interval_s: int) -> None:
        """Report every ``interval_s`` and at every hour mark (with events and topology), forever."""
        while True:
            now = self.clock()
            tick = (int(now) // interval_s + 1) * interval_s
            mark = (int(now) // HOUR + 1) * HOUR
            t = min(tick, mark)
            await asyncio.sleep(max(0.0, t - self.clock()))
            try:
                if t == mark:
                    await self.send_hours([(t - self.site.install_time) // HOUR])
                    if self.tcp is not None:
                        self.tcp.submit(self.site.topology(t))
                elif self.tcp is not None:
                    self.tcp.submit(self.site.readings(self.site.ensure(t).batch_at(t)))
                else:
                    await self._ingest([self.site.ensure(t).batch_at(t)])
            except StorageError as exc:
                log.warning("simulated readings not stored (%s); the next round carries the counters", exc)


async def install_time(registry: RegistryReader, now: int, history_hours: int) -> int:
    """When the simulated site was installed: as stored, or ``history_hours`` ago."""
    stored = await registry.registry_get("meters", "B1-IN")
    if stored is not None:
        return int(stored.install_time)
    return hour_floor(now - history_hours * HOUR)


async def replay_switches(queries: Queries, site: SiteModel) -> int:
    """Valves and relays as the audited DMesh commands left them. The model
    starts every run open, so a restarted simulator would otherwise let water
    through a valve an operator closed, and report what the valve held back as
    a burst. Returns how many commands were replayed."""
    from balans_edge.plugins.dmesh.commands import ACTUATING

    codes = {str(code): dmesh for code, (dmesh, _) in ACTUATING.items()}
    done = [c for c in reversed(await queries.journal_list("commands", 1_000_000))
            if c["outcome"] == "done" and c["code"] in codes and c["detail"].startswith("dmesh:")]
    if not done:
        return 0
    meters = {m.meter_id: m for m in await queries.registry_list("meters")}
    replayed = 0
    for c in done:
        meter = meters.get(c["target"])
        if meter is not None and meter.module_id is not None:
            site.switch(meter.module_id, codes[c["code"]], int(c["t"]))
            replayed += 1
    return replayed


class Simulator:
    """Server component: registers the simulated site and feeds its readings."""

    name = "dmesh-simulator"

    def __init__(self, queries: Queries, editor: RegistryEditor, ingest: Ingest, config: SimulatorConfig,
                 utc_offset_h: int, tcp: Callable[[SiteModel], TcpDelivery] | None = None) -> None:
        self.queries = queries
        self.editor = editor
        self.ingest = ingest
        self.config = config
        self.utc_offset_h = utc_offset_h
        self.make_tcp = tcp
        self.tcp: TcpDelivery | None = None
        self.site: SiteModel | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        now = int(time.time())
        start = await install_time(self.queries, now, self.config.history_hours)
        self.site = site = SiteModel(self.config, start, self.utc_offset_h)
        site.ensure(now)
        await self.editor.apply(site.registry(), reason="the simulated demo site")
        if await replay_switches(self.queries, site):
            log.info("dmesh simulator: valves and relays set as the audited commands left them")
        if self.make_tcp is not None:
            self.tcp = self.make_tcp(site)
            await self.tcp.start()
        runner = SiteRunner(site, self.tcp, None if self.tcp else self.ingest)
        await runner.history(self.config.history_hours)
        self._task = asyncio.create_task(runner.live(self.config.interval_s), name=self.name)

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        if self.tcp is not None:
            await self.tcp.stop()
