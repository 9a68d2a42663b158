"""Buildings with known faults: hourly DMesh counters plus the ground truth behind them.

Balance and loss detectors can only be scored against data whose truth is
known. A scenario generates, for apartment buildings with one input meter at
the building entry and one water meter per apartment, what the concentrators
would report (hourly u32 counters and status flags) and, separately, what
really flowed (per meter and per hour) and how much each injected fault hid,
lost or drew. The readings come out as ``ReadingBatch`` columns, ready for the
real ingest path.

Time convention: hour ``h`` is the interval ``[t_h, t_h+1)`` with
``t_h = start + h * 3600``; reading ``k`` is latched at ``t_k`` and closes hour
``k - 1``. A fault over hours ``[start, end)`` acts on the flow of those hours;
its flags and gaps sit on the readings that close them (``k = start+1 .. end``).

Everything is numpy over whole arrays (meters x hours); Python loops run per
fault only. Pure: no I/O, deterministic for a seed, and a fault draws its own
randomness from a generator seeded with (seed, fault index), so adding a fault
never changes the rest of the scenario. A longer scenario begins with exactly
the readings of a shorter one (hourly noise is drawn hour by hour and nothing
depends on the length), so a running simulator can extend its horizon, and a
restarted one continue its stored history, without a jump.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from balans_edge.core.ingest import ReadingBatch
from balans_edge.plugins.dmesh.faults import (
    ATTACKS,
    AnyFault,
    BehaviourChange,
    ClockDrift,
    CounterReset,
    Dripping,
    Leak,
    LostModule,
    LowBattery,
    Magnet,
    NetworkLeak,
    Reversed,
    Stuck,
    Theft,
    Unmetered,
    attacked,
)

if TYPE_CHECKING:
    from balans_edge.core.analytics.data import GroupData
from balans_edge.core.model import (
    COUNTER_MODULUS,
    Account,
    Concentrator,
    Group,
    GroupInput,
    Meter,
    RadioModule,
    Resource,
    Status,
)
from balans_edge.core.times import DAY, HOUR, hour_of_day, weekday

PULSE_WEIGHT = 0.001
"""m3 per pulse: 1 pulse per litre, so volumes in litres are pulse counts."""

WEEKDAY = np.array([0.20, 0.15, 0.15, 0.15, 0.20, 0.45, 1.10, 2.20, 2.40, 1.70, 0.90, 0.80,
                    0.85, 0.80, 0.75, 0.80, 0.90, 1.10, 1.40, 2.00, 2.30, 2.20, 1.60, 0.80])
"""Relative hourly use on a working day (local time): night minimum, morning
peak 7-9 before work, evening peak 19-22 (cooking, washing, showers)."""
WEEKDAY = WEEKDAY / WEEKDAY.mean()
WEEKEND = np.array([0.30, 0.22, 0.18, 0.15, 0.15, 0.18, 0.30, 0.60, 1.20, 2.10, 2.50, 2.20,
                    1.80, 1.50, 1.30, 1.20, 1.20, 1.40, 1.70, 2.00, 2.40, 2.30, 1.80, 1.00])
"""Relative hourly use at weekends: people sleep longer (peak 9-12) and stay
at home, so the day uses more water than a working day."""
WEEKEND = WEEKEND / WEEKEND.mean() * 1.2
WEEK_MEAN = (5 * WEEKDAY.mean() + 2 * WEEKEND.mean()) / 7
"""Mean of the relative profile over a whole week."""
BATTERY_LOW_MV = 3000
"""Below this the module sets LOW_BATTERY (the vendor's document)."""
BATTERY_DEAD_MV = 2500
"""A module's radio stops below this voltage."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """What to generate: the site, the period and the household behaviour."""

    buildings: int = 1
    apartments: int | tuple[int, ...] = 40
    """Apartments per building: one number for all, or one per building."""
    start: int = 1_704_067_200
    """Unix time of the first reading (hour-aligned). Default 2024-01-01 00:00 UTC."""
    hours: int = 720
    seed: int = 0
    network_loss: float = 0.03
    """Background leakage of each building's network as a share of what its
    input meter measures without faults, over whole weeks (the rate follows
    the expected use, not the drawn noise, so it does not depend on the
    scenario's length)."""
    mean_lph: float = 10.0
    """Mean use of an average apartment on a working day, litres per hour."""
    scale_sigma: float = 0.4
    """Spread (lognormal sigma) of the per-apartment scale factor: a pensioner
    alone and a family of five share a building."""
    noise: float = 0.5
    """Coefficient of variation of the multiplicative gamma noise per apartment
    and hour; 0 makes consumption the exact profile (for exact tests)."""
    event_litres: float = 0.0
    """0: use flows continuously (the profile times the noise). Above 0, a
    household's water is drawn in uses (a flush, a shower, the dishes) of this
    mean volume, a Poisson number of them per hour around the profile: at night
    most hours have none, as real meters show (a leak is then a flow that never
    stops)."""
    utc_offset_h: int = 0
    """Local time offset of the site, for the daily profile."""
    valves: bool = False
    """Apartment meters have a shut-off valve on their module (registry flag ``valve``)."""
    first_module: int = 2_000_000
    """Module of building b's input meter is first_module + (b-1)*1000; its
    apartment a has first_module + (b-1)*1000 + a."""

    def counts(self) -> list[int]:
        if isinstance(self.apartments, int):
            return [self.apartments] * self.buildings
        if len(self.apartments) != self.buildings:
            raise ValueError(f"apartments: {len(self.apartments)} counts for {self.buildings} buildings")
        return list(self.apartments)

    def validate(self) -> None:
        if self.start % HOUR:
            raise ValueError("start must be hour-aligned")
        if self.buildings < 1 or self.hours < 1:
            raise ValueError("a scenario needs at least one building and one hour")
        if any(not 1 <= n <= 999 for n in self.counts()):
            raise ValueError("apartments per building must be 1..999")
        if not 0.0 <= self.network_loss < 1.0:
            raise ValueError("network_loss must be in [0, 1)")
        if self.noise < 0 or self.mean_lph < 0 or self.scale_sigma < 0 or self.event_litres < 0:
            raise ValueError("noise, mean_lph, scale_sigma and event_litres must not be negative")


# Output ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultTruth:
    """What a fault really did, for scoring a detector.

    ``volume_m3`` is, by fault type: Leak the leaked volume; NetworkLeak the
    lost volume; Unmetered the drawn volume; Dripping the drips in the hours
    their meters stood still (lost); Magnet, Stuck and Reversed the
    flow the meter failed to register (true - metered, so twice the flow for a
    reversed meter); CounterReset the pulses between the last reading and the
    restart (registered by the meter, unknown to the host); LostModule the flow
    in the hours whose readings are missing (recoverable from the next reading);
    LowBattery the flow in the hours after the module died (never reported);
    ClockDrift, per hour, what the readings put into that hour minus what the
    meter registered in it (signed: volume moved between hours, about zero in
    total); BehaviourChange the change of real use (negative for less; no
    loss); Theft the flow its meter did not register (per hour; for h5 and h6
    it sums to about zero each day). ``hourly_m3`` spreads it over the scenario's hours.
    """

    fault: AnyFault
    meter_id: str
    """The affected meter: the apartment's, or the building's input meter."""
    hourly_m3: np.ndarray

    @property
    def volume_m3(self) -> float:
        return float(self.hourly_m3.sum())


@dataclass(slots=True)
class Truth:
    """What really happened, per meter (rows as ``ScenarioData.meters``) and hour."""

    consumption_m3: np.ndarray
    """True flow through each meter's pipe (meters x hours)."""
    metered_m3: np.ndarray
    """What each meter registered (signed; before pulse rounding)."""
    network_loss_m3: np.ndarray
    """Background leakage of each building's network (buildings x hours)."""
    faults: list[FaultTruth]
    """One per fault, in the order the faults were given."""


def counted(c0: Any, c1: Any) -> Any:
    """Signed pulses from counter ``c0`` to ``c1`` (a reversed meter counts down; counters wrap)."""
    half = COUNTER_MODULUS // 2
    return (c1 - c0 + half) % COUNTER_MODULUS - half


def between(c0: Any, c1: Any, into: int) -> Any:
    """The counter ``into`` seconds into the hour from reading ``c0`` to ``c1``: moved on in proportion."""
    return (c0 + counted(c0, c1) * into // HOUR) % COUNTER_MODULUS


@dataclass(slots=True)
class ScenarioData:
    """Generated readings (meters x readings) and the truth behind them."""

    scenario: Scenario
    meters: list[Meter]
    module: np.ndarray
    channel: np.ndarray
    building: np.ndarray
    """Building index (0-based) of each meter."""
    is_input: np.ndarray
    ts: np.ndarray
    """Reading times, hours + 1 of them (the first is the install time)."""
    counter: np.ndarray
    """u32 counter values (meters x readings, int64)."""
    status: np.ndarray
    present: np.ndarray
    """False where a reading never arrives."""
    battery_mv: np.ndarray
    """Battery voltage each module reports with each reading (meters x readings)."""
    truth: Truth
    accounts: list[Account] = field(default_factory=list)
    """One account per apartment (the input meters have none)."""
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {m.meter_id: i for i, m in enumerate(self.meters)}

    def registry(self, concentrators: Mapping[int, int] | None = None) -> dict[str, list]:
        """Concentrators, radio modules, accounts, meters and the buildings' balance groups, as
        ``Storage.registry_apply`` takes them. ``concentrators`` maps a
        building index to the concentrator its modules report to."""
        concentrators = concentrators or {}
        modules = [RadioModule(int(m), concentrators.get(int(b)), channels=0b001)
                   for m, b in zip(self.module, self.building, strict=True)]
        return {
            "concentrators": [Concentrator(cid, name=f"Concentrator of building {b + 1}")
                              for b, cid in sorted(concentrators.items())],
            "modules": modules,
            "accounts": list(self.accounts),
            "meters": list(self.meters),
            "groups": [Group(f"B{b + 1}", Resource.WATER, "m3", (GroupInput(f"B{b + 1}-IN"),),
                             name=f"Building {b + 1}", level="house", allocation_rule="area")
                       for b in range(self.scenario.buildings)],
        }

    def row(self, meter_id: str) -> int:
        return self._index[meter_id]

    def batch(self, k: int) -> ReadingBatch:
        """The readings latched at reading time ``k`` (0 .. hours)."""
        rows = np.flatnonzero(self.present[:, k])
        return ReadingBatch(self.module[rows], self.channel[rows], np.full(len(rows), self.ts[k], dtype=np.int64),
                            self.counter[rows, k], self.status[rows, k])

    def batch_at(self, t: int) -> ReadingBatch:
        """What the modules latch at any time ``t`` of the scenario, for a site
        that reports more often than hourly: at a reading time the reading
        itself, in between the counters moved on in proportion to the hour
        gone by. A meter whose closing reading never arrives, or restarts,
        reports nothing in between."""
        if not self.ts[0] <= t <= self.ts[-1]:
            raise ValueError(f"time {t} is outside the scenario ({self.ts[0]} .. {self.ts[-1]})")
        k, into = divmod(int(t) - int(self.ts[0]), HOUR)
        if into == 0:
            return self.batch(k)
        after = self.status[:, k + 1]
        rows = np.flatnonzero(self.present[:, k] & self.present[:, k + 1] & ((after & Status.COUNTER_RESET) == 0))
        counter = between(self.counter[rows, k], self.counter[rows, k + 1], into)
        return ReadingBatch(self.module[rows], self.channel[rows], np.full(len(rows), t, dtype=np.int64),
                            counter, after[rows])

    def counter_at(self, row: int, t: int) -> int:
        """Row ``row``'s counter at any time ``t`` of the scenario, as ``batch_at`` has it."""
        k, into = divmod(int(t) - int(self.ts[0]), HOUR)
        c0 = int(self.counter[row, k])
        return c0 if into == 0 else int(between(c0, int(self.counter[row, k + 1]), into))

    def all_batches(self) -> Iterator[ReadingBatch]:
        for k in range(len(self.ts)):
            yield self.batch(k)

    def hourly(self) -> tuple[np.ndarray, np.ndarray]:
        """(meters x hours) registered consumption per hour in m3, as the server's
        hourly intervals give it for readings on the hour, and quality codes:
        measured, or missing where a reading does not arrive (the gap is
        interpolated by the server only when readings surround it: left missing
        here, which is what a detector must cope with anyway) or after a restart."""
        delta = (np.diff(self.counter, axis=1) + COUNTER_MODULUS // 2) % COUNTER_MODULUS - COUNTER_MODULUS // 2
        values = delta * PULSE_WEIGHT
        broken = ~self.present[:, 1:] | ~self.present[:, :-1] | ((self.status[:, 1:] & Status.COUNTER_RESET) != 0)
        values = np.where(broken, np.nan, values)
        quality = np.where(broken, 2, 0).astype(np.int8)
        return values, quality

    def group_data(self, building: int, tz: str = "UTC") -> GroupData:
        """What the loss detectors see of building ``building`` (0-based) over the whole scenario."""
        from zoneinfo import ZoneInfo

        from balans_edge.core.analytics.data import GroupData, local_calendar

        values, quality = self.hourly()
        rows = np.flatnonzero((self.building == building) & ~self.is_input)
        inp = int(np.flatnonzero((self.building == building) & self.is_input)[0])
        t = self.ts[:-1]
        local_hour, weekday = local_calendar(t, ZoneInfo(tz))
        group = self.registry()["groups"][building]
        status = self.status[rows, 1:].astype(np.int64)
        return GroupData(group, t, [self.meters[r].meter_id for r in rows], values[rows], quality[rows], status,
                         values[inp], np.zeros(len(t)), local_hour, weekday, np.full(len(rows), PULSE_WEIGHT))

    def readings(self, meter_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ts, counter, status) of one meter's readings that arrive."""
        i = self.row(meter_id)
        ok = self.present[i]
        return self.ts[ok], self.counter[i, ok], self.status[i, ok]


# Generation --------------------------------------------------------------


def profile(scenario: Scenario) -> np.ndarray:
    """Mean use of an average apartment per hour of the scenario, litres."""
    t = scenario.start + np.arange(scenario.hours, dtype=np.int64) * HOUR + scenario.utc_offset_h * HOUR
    hour = hour_of_day(t)
    weekend = weekday(t) >= 5
    return scenario.mean_lph * np.where(weekend, WEEKEND[hour], WEEKDAY[hour])


def generate(scenario: Scenario, faults: Sequence[AnyFault] = ()) -> ScenarioData:
    """Readings and truth of a scenario with the given faults injected."""
    scenario.validate()
    counts = scenario.counts()
    hours = scenario.hours
    rng = np.random.default_rng(scenario.seed)

    # Meters: per building the input first, then its apartments.
    ids: list[str] = []
    module: list[int] = []
    building: list[int] = []
    for b, n in enumerate(counts):
        base = scenario.first_module + b * 1000
        ids.append(f"B{b + 1}-IN")
        module.append(base)
        building.extend([b] * (n + 1))
        ids.extend(f"B{b + 1}-A{a:02d}" for a in range(1, n + 1))
        module.extend(base + a for a in range(1, n + 1))
    index = {m: i for i, m in enumerate(ids)}
    n_meters = len(ids)
    bld = np.array(building, dtype=np.int64)
    is_input = np.zeros(n_meters, dtype=bool)
    is_input[[index[f"B{b + 1}-IN"] for b in range(scenario.buildings)]] = True
    apt = np.flatnonzero(~is_input)

    base_counter = rng.integers(0, COUNTER_MODULUS, n_meters)
    scale = rng.lognormal(-scenario.scale_sigma**2 / 2, scenario.scale_sigma, len(apt))
    # Hour by hour from a generator of its own, so that a longer scenario draws
    # the same noise for its first hours.
    hourly_rng = np.random.default_rng([scenario.seed, 2])
    expected = scale[:, None] * profile(scenario)[None, :]
    if scenario.event_litres > 0:
        # Uses per hour ~ Poisson; each use's volume ~ gamma with CV ``noise``, so the
        # sum of n uses is gamma with n times the shape.
        k = 1.0 / max(scenario.noise, 1e-6) ** 2
        uses = hourly_rng.poisson((expected / scenario.event_litres).T).T
        volumes = np.random.default_rng([scenario.seed, 4]).gamma(np.maximum(uses, 1).T * k, scenario.event_litres / k)
        use = np.where(uses > 0, volumes.T, 0.0)
    elif scenario.noise > 0:
        k = 1.0 / scenario.noise**2
        use = expected * hourly_rng.gamma(k, 1.0 / k, (hours, len(apt))).T
    else:
        use = expected
    healthy_mv = np.random.default_rng([scenario.seed, 3]).integers(3300, 3650, n_meters)

    # True flow, litres (= pulses) per meter and hour.
    true = np.zeros((n_meters, hours))
    true[apt] = use
    onehot = bld[None, :] == np.arange(scenario.buildings)[:, None]  # buildings x meters
    members = onehot & ~is_input[None, :]
    # Background leakage is pressure-driven, so roughly constant over the day;
    # its rate makes it network_loss of the expected fault-free input.
    expected = (members[:, apt].astype(float) @ scale) * scenario.mean_lph * WEEK_MEAN
    loss_rate = expected * scenario.network_loss / (1.0 - scenario.network_loss)
    network_loss = np.repeat(loss_rate[:, None], hours, axis=1)
    bypass = network_loss.copy()  # flow past the apartment meters, per building

    truths: list[tuple[int, FaultTruth]] = []  # by fault position
    effects: list[tuple[int, int, AnyFault, slice]] = []  # (fault position, meter row, fault, hours)
    resets: list[tuple[int, int, CounterReset]] = []
    drips: list[tuple[int, Dripping, np.ndarray, np.ndarray, slice]] = []  # (position, fault, rows, l/h, hours)

    def meter_of(name: str, what: str) -> int:
        if name not in index:
            raise ValueError(f"{what}: unknown meter {name!r}")
        return index[name]

    def building_of(name: str) -> int:
        if name not in {f"B{b + 1}" for b in range(scenario.buildings)}:
            raise ValueError(f"unknown building {name!r}")
        return int(name[1:]) - 1

    local_hour = (scenario.start // HOUR + scenario.utc_offset_h + np.arange(hours)) % 24
    for j, fault in enumerate(faults):
        if isinstance(fault, CounterReset):
            if fault.hour < 0 or not 0.0 <= fault.at <= 1.0:
                raise ValueError(f"{fault!r}: negative hour or 'at' outside [0, 1]")
            resets.append((j, meter_of(fault.apartment, repr(fault)), fault))
        elif isinstance(fault, Leak):
            i, w = meter_of(fault.apartment, repr(fault)), fault.window(hours)
            if is_input[i]:
                raise ValueError(f"{fault!r}: a Leak is behind an apartment's meter")
            hourly = np.zeros(hours)
            hourly[w] = fault.litres_per_hour
            true[i] += hourly
            truths.append((j, FaultTruth(fault, fault.apartment, hourly * PULSE_WEIGHT)))
            effects.append((j, i, fault, w))
        elif isinstance(fault, BehaviourChange):
            i, w = meter_of(fault.apartment, repr(fault)), fault.window(hours)
            if is_input[i] or fault.factor < 0:
                raise ValueError(f"{fault!r}: a behaviour change is an apartment's, with a factor >= 0")
            before = true[i].copy()
            true[i, w] *= fault.factor
            truths.append((j, FaultTruth(fault, fault.apartment, (true[i] - before) * PULSE_WEIGHT)))
        elif isinstance(fault, NetworkLeak | Unmetered):
            b, w = building_of(fault.building), fault.window(hours)
            hourly = np.zeros(hours)
            shape = WEEKDAY[local_hour] if isinstance(fault, Unmetered) else np.ones(hours)
            hourly[w] = fault.litres_per_hour * shape[w]
            bypass[b] += hourly
            truths.append((j, FaultTruth(fault, f"B{b + 1}-IN", hourly * PULSE_WEIGHT)))
        elif isinstance(fault, Dripping):
            b, w = building_of(fault.building), fault.window(hours)
            if scenario.event_litres <= 0 or not 0.0 < fault.share <= 1.0 or fault.litres_per_hour <= 0:
                raise ValueError(f"{fault!r}: needs event_litres > 0, share in (0, 1] and a positive rate")
            drip_rng = np.random.default_rng([scenario.seed, 5, j])
            flats = np.flatnonzero(members[b])
            rows = np.sort(drip_rng.choice(flats, max(1, round(fault.share * len(flats))), replace=False))
            drips.append((j, fault, rows, fault.litres_per_hour * drip_rng.uniform(0.5, 1.5, len(rows)), w))
        elif isinstance(fault, Theft):
            if fault.attack not in ATTACKS or not 0.0 <= fault.alpha < 1.0:
                raise ValueError(f"{fault!r}: attack one of {', '.join(ATTACKS)}, alpha in [0, 1)")
            effects.append((j, meter_of(fault.apartment, repr(fault)), fault, fault.window(hours)))
        elif isinstance(fault, Magnet | Stuck | Reversed | LostModule | LowBattery | ClockDrift):
            effects.append((j, meter_of(fault.apartment, repr(fault)), fault, fault.window(hours)))
        else:
            raise TypeError(f"not a scenario fault: {fault!r}")

    # A drip goes unregistered in the hours its household draws nothing (decided after
    # every other fault has set the apartments' flow).
    unregistered = []
    for j, fault, rows, rates, w in drips:
        idle = true[rows, w] == 0
        true[rows, w] += rates[:, None]
        unregistered.append((rows, w, np.where(idle, rates[:, None], 0.0)))
        lost = np.zeros(hours)
        lost[w] = unregistered[-1][2].sum(axis=0)
        truths.append((j, FaultTruth(fault, f"B{building_of(fault.building) + 1}-IN", lost * PULSE_WEIGHT)))
    true[is_input] = onehot[:, ~is_input].astype(float) @ true[~is_input] + bypass
    metered = true.copy()
    for rows, w, lost_per_row in unregistered:
        metered[rows, w] -= lost_per_row
    status = np.zeros((n_meters, hours + 1), dtype=np.int64)
    present = np.ones((n_meters, hours + 1), dtype=bool)
    battery = np.repeat(healthy_mv[:, None], hours + 1, axis=1)
    ts = scenario.start + np.arange(hours + 1, dtype=np.int64) * HOUR
    # True time at which each reading is latched (off the hour under ClockDrift).
    latched = np.repeat(ts[None, :].astype(np.float64), n_meters, axis=0)

    for j, i, fault, w in effects:
        closing = slice(w.start + 1, w.stop + 1)  # readings closing the window's hours
        hourly = np.zeros(hours)
        if isinstance(fault, Magnet):
            before = metered[i, w].copy()
            metered[i, w] *= 1.0 - fault.fraction
            hourly[w] = before - metered[i, w]
            flag_rng = np.random.default_rng([scenario.seed, 1, j])
            flagged = flag_rng.random(w.stop - w.start) < fault.flag_share
            status[i, closing] |= np.where(flagged, int(Status.MAGNET), 0)
        elif isinstance(fault, Theft):
            before = metered[i, w].copy()
            metered[i, w] = attacked(fault, before, local_hour[w], np.random.default_rng([scenario.seed, 1, j]))
            hourly[w] = before - metered[i, w]
        elif isinstance(fault, Stuck):
            hourly[w] = metered[i, w]
            metered[i, w] = 0.0
        elif isinstance(fault, Reversed):
            hourly[w] = metered[i, w] + true[i, w]
            metered[i, w] = -true[i, w]
            status[i, closing] |= int(Status.REVERSE)
        elif isinstance(fault, LostModule):
            hourly[w] = true[i, w]
            present[i, closing] = False
        elif isinstance(fault, LowBattery):
            if fault.days <= 0:
                raise ValueError(f"{fault!r}: days must be positive")
            k = np.arange(w.start, hours + 1)  # readings from the fault's start on
            drop = (healthy_mv[i] - BATTERY_DEAD_MV) * (k - w.start) / (fault.days * 24)
            battery[i, k] = np.maximum(np.round(healthy_mv[i] - drop), BATTERY_DEAD_MV).astype(np.int64)
            status[i] |= np.where(battery[i] < BATTERY_LOW_MV, int(Status.LOW_BATTERY), 0)
            dead = battery[i] <= BATTERY_DEAD_MV
            present[i, dead] = False
            hourly[dead[1:]] = true[i, dead[1:]]
        elif isinstance(fault, ClockDrift):
            # Readings closing the window's hours, and every later one (the clock stays off).
            k = np.arange(w.start + 1, hours + 1)
            latched[i, k] = ts[k] - fault.seconds_per_day * (ts[k] - ts[w.start]) / DAY
        elif isinstance(fault, Leak):
            if fault.sensor:
                status[i, closing] |= int(Status.LEAK)
            continue
        if not isinstance(fault, ClockDrift):  # its truth needs the counters, below
            truths.append((j, FaultTruth(fault, ids[i], hourly * PULSE_WEIGHT)))

    # Counters: unwrapped pulse totals at each reading, minus the position of
    # the module's latest restart (the counter's epoch origin).
    cum = np.zeros((n_meters, hours + 1))
    np.cumsum(metered, axis=1, out=cum[:, 1:])
    for j, i, fault, _ in effects:
        if isinstance(fault, ClockDrift):
            # The counter at the true latch time: linear within each hour.
            at = np.clip(latched[i], ts[0], ts[-1])
            shifted = np.interp(at, ts, cum[i])
            truths.append((j, FaultTruth(fault, ids[i], (np.diff(shifted) - metered[i]) * PULSE_WEIGHT)))
            cum[i] = shifted
    origin = np.zeros((n_meters, hours + 1))
    restarted = np.zeros((n_meters, hours + 1), dtype=bool)
    for j, i, fault in sorted(resets, key=lambda r: r[2].hour):
        h = fault.hour
        hourly = np.zeros(hours)
        if h < hours:  # a later restart is not in this scenario yet
            unknown = fault.at * metered[i, h]
            origin[i, h + 1 :] = cum[i, h] + unknown
            restarted[i, h + 1 :] = True
            status[i, h + 1] |= int(Status.COUNTER_RESET)
            hourly[h] = unknown
        truths.append((j, FaultTruth(fault, ids[i], hourly * PULSE_WEIGHT)))
    epoch = np.floor(cum - origin).astype(np.int64)
    counter = (np.where(restarted, 0, base_counter[:, None]) + epoch) % COUNTER_MODULUS

    meters = [
        Meter(mid, Resource.WATER, "m3", PULSE_WEIGHT, scenario.start, module_id=module[i], channel=1,
              base_counter=int(counter[i, 0]), group_id=None if is_input[i] else f"B{building[i] + 1}",
              account_id=None if is_input[i] else mid,
              flags=frozenset({"valve"}) if scenario.valves and not is_input[i] else frozenset())
        for i, mid in enumerate(ids)
    ]
    # Bigger households tend to live in bigger flats: the floor area follows the
    # apartment's scale (for allocation by area).
    accounts = [
        Account(ids[i], consumer=f"Apartment {int(ids[i].split('-A')[1])}, building {building[i] + 1}",
                area_m2=round(float(np.clip(30 + 30 * s, 25, 140)), 1))
        for i, s in zip(apt, scale, strict=True)
    ]
    truth = Truth(true * PULSE_WEIGHT, metered * PULSE_WEIGHT, network_loss * PULSE_WEIGHT,
                  [ft for _, ft in sorted(truths, key=lambda jt: jt[0])])
    return ScenarioData(scenario, meters, np.array(module, dtype=np.int64), np.ones(n_meters, dtype=np.int64), bld,
                        is_input, ts, counter, status, present, battery, truth, accounts)
