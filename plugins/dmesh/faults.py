"""The faults a scenario can inject, each with the hours it is active.

Plain frozen dataclasses that say what happens (a magnet slowing a meter, a
drip under the starting flow, a theft attack); ``scenario.generate`` turns
them into counters, flags and ground truth. Kept apart from the generator so
that the simulator's configuration and the benchmarks can name faults without
the generation code."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class Fault:
    """Base of all faults: the hours ``[start, end)`` it is active (end None =
    to the end of the scenario)."""

    start: int = field(default=0, kw_only=True)
    end: int | None = field(default=None, kw_only=True)

    def window(self, hours: int) -> slice:
        """The fault's hours within the scenario; empty for a fault that starts
        after it (not active yet: a longer scenario will see it)."""
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise ValueError(f"{self!r}: hour window [{self.start}, {self.end}) is empty")
        end = hours if self.end is None else min(self.end, hours)
        return slice(min(self.start, hours), end)


@dataclass(frozen=True, slots=True)
class Leak(Fault):
    """Continuous extra flow behind an apartment's meter (a running toilet, a
    dripping pipe): really consumed and metered. With ``sensor`` the module's
    leak sensor is wet and its readings carry LEAK."""

    apartment: str
    litres_per_hour: float
    sensor: bool = False


@dataclass(frozen=True, slots=True)
class NetworkLeak(Fault):
    """A burst in the building's network (before the apartment meters): the
    water is lost, only the input meter sees it."""

    building: str
    litres_per_hour: float


@dataclass(frozen=True, slots=True)
class Unmetered(Fault):
    """Water drawn from the building network past every meter (an illegal
    connection, a janitor's tap): only the input meter sees it. The flow
    follows a working day's shape with ``litres_per_hour`` as its daily mean,
    so it hides in the consumption instead of standing out as a constant."""

    building: str
    litres_per_hour: float


@dataclass(frozen=True, slots=True)
class Dripping(Fault):
    """Taps and cisterns dripping in ``share`` of a building's apartments (chosen at
    random), each at 0.5-1.5 times ``litres_per_hour``: below the meters' starting
    flow, so a meter's impeller stands still under the drip alone. The drip is
    registered only in hours in which the household also draws water (the
    impeller turns then) and lost in the others. Needs households that draw
    water in uses (``event_litres`` > 0): with continuous use no hour is idle."""

    building: str
    share: float
    litres_per_hour: float


@dataclass(frozen=True, slots=True)
class Magnet(Fault):
    """A magnet on the meter slows its impeller: it registers only
    ``1 - fraction`` of the flow. The module's magnet sensor sees the field on
    some readings only (``flag_share`` of them, at random)."""

    apartment: str
    fraction: float
    flag_share: float = 0.3


@dataclass(frozen=True, slots=True)
class Stuck(Fault):
    """The meter's mechanism is blocked: the counter stops while water flows."""

    apartment: str


@dataclass(frozen=True, slots=True)
class Reversed(Fault):
    """The meter is mounted backwards: the counter decreases (modulo 2^32) by
    the flow, and the module reports REVERSE."""

    apartment: str


@dataclass(frozen=True, slots=True)
class CounterReset(Fault):
    """The module restarts during ``hour`` at fraction ``at`` of it: its counter
    starts again from 0 and the reading closing that hour carries
    COUNTER_RESET. The pulses between the previous reading and the restart are
    unknown to the host. (A point in time: ``start`` and ``end`` are unused.)"""

    apartment: str
    hour: int
    at: float = 0.5


@dataclass(frozen=True, slots=True)
class LostModule(Fault):
    """The module is off the network: the readings closing the window's hours
    never arrive. Its counter keeps counting, so the first reading after the
    window carries the whole gap."""

    apartment: str


@dataclass(frozen=True, slots=True)
class LowBattery(Fault):
    """The module's cell is exhausted: from ``start`` its voltage falls in a
    straight line from its healthy level to 2,500 mV over ``days``; readings
    below 3,000 mV carry LOW_BATTERY, and once it reaches 2,500 mV the radio
    stops and no reading arrives any more (``end`` is unused: a dead battery
    stays dead)."""

    apartment: str
    days: float = 30.0


@dataclass(frozen=True, slots=True)
class ClockDrift(Fault):
    """The module's clock runs fast by ``seconds_per_day`` (slow when
    negative) from ``start``: it latches its counters when its own clock shows
    the hour, i.e. earlier (later) in true time, and stamps them with the hour.
    The volumes are right in total, but shifted between hours. (A slow clock's
    readings past the scenario's end are latched at its end.)"""

    apartment: str
    seconds_per_day: float


@dataclass(frozen=True, slots=True)
class BehaviourChange(Fault):
    """Not a fault: the household really uses ``factor`` times its water from
    ``start`` (someone moved out, a new washing machine). The meter and the
    input both see it, the balance does not change: a detector that reports it
    raises a false finding."""

    apartment: str
    factor: float


ATTACKS = ("h1", "h2", "h3", "h4", "h5", "h6")


@dataclass(frozen=True, slots=True)
class Theft(Fault):
    """A tampered meter registers a manipulated series: the six attacks of Jokar
    et al. (2016) on hourly use x of each local day. h1: alpha x; h2: nothing in
    the daily hours [off_hour, off_hour + off_hours); h3: x times a random
    factor in [0.1, 0.8] per hour; h4: the day's mean times such a factor; h5:
    the day's mean every hour; h6: the day's hours in reverse order. h5 and h6
    keep every day's total, so only an hourly balance sees them (days the
    window cuts are left as they are)."""

    apartment: str
    attack: str
    alpha: float = 0.5
    off_hour: int = 8
    off_hours: int = 10


AnyFault = (
    Leak | NetworkLeak | Unmetered | Dripping | Magnet | Stuck | Reversed | CounterReset | LostModule | LowBattery
    | ClockDrift | BehaviourChange | Theft
)


def attacked(fault: Theft, x: np.ndarray, hour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The series a meter under ``fault`` registers for the true hourly use ``x``
    whose local hours of the day are ``hour`` (the window starts on any hour)."""
    out = x.copy()
    if fault.attack == "h1":
        return fault.alpha * x
    if fault.attack == "h2":
        off = (hour - fault.off_hour) % 24 < fault.off_hours
        return np.where(off, 0.0, x)
    if fault.attack == "h3":
        return x * rng.uniform(0.1, 0.8, len(x))
    # Whole local days only: h4..h6 rearrange a day.
    first = int(np.argmax(hour == 0)) if (hour == 0).any() else len(x)
    days = (len(x) - first) // 24
    if days == 0:
        return out
    block = x[first : first + days * 24].reshape(days, 24)
    if fault.attack == "h4":
        block = block.mean(axis=1, keepdims=True) * rng.uniform(0.1, 0.8, (days, 24))
    elif fault.attack == "h5":
        block = np.repeat(block.mean(axis=1, keepdims=True), 24, axis=1)
    else:  # h6
        block = block[:, ::-1]
    out[first : first + days * 24] = block.ravel()
    return out
