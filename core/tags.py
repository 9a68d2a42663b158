"""Tags read from pumping-station controllers, whatever the protocol.

A tag is one value of a PLC or an OPC UA server (tank level, pump state, flow
totaliser). The Modbus and OPC UA clients differ in how they get a value;
everything after that is the same and lives here, so both behave alike for
the integrator and the rules are written once:

- **Quality** in the vocabulary SCADA integrators know: ``good`` (a fresh
  value), ``stale`` (the device refused the value, sent a bad one, or no fresh
  value came in time) and ``comm_fail`` (the device is not reachable). A tag
  that is not good has no value; its last good value and time are kept.
- **Storage** on change: a sample is stored when the quality changes, the
  value moves beyond the tag's deadband, or as a heartbeat; so a 1 s tag does
  not write 86,400 rows a day when nothing happens.
- **Back-off** with jitter for reconnecting, so many boxes whose PLC
  rebooted do not all reconnect in the same instant.
- **Totalisers as meters**: a tag named as a meter gets a module and meter in
  the registry (never overwriting a different one), and its good samples
  become readings through the ingest path like any radio module's counter.

Nothing here does I/O with a device and nothing imports a protocol library.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from balans_edge.core.bus import TagSample, TagValues
from balans_edge.core.model import COUNTER_MODULUS, UNITS, Meter, RadioModule, RawReading, Resource
from balans_edge.core.registry import MAX_PULSE_WEIGHT
from balans_edge.core.storage import StorageError

if TYPE_CHECKING:
    from balans_edge.core.bus import EventBus
    from balans_edge.core.calculated import TagSeries
    from balans_edge.core.ingest import Ingest
    from balans_edge.core.storage.registry_repository import RegistryReader
    from balans_edge.core.storage.views import RegistryEditor

log = logging.getLogger(__name__)

TagQuality = Literal["good", "stale", "comm_fail"]
"""good (a fresh value), stale (refused, bad, or not fresh), comm_fail (device unreachable)."""
TAG_QUALITIES = frozenset({"good", "stale", "comm_fail"})
"""Every ``TagQuality``: what a stored sample may say."""


@dataclass(frozen=True, slots=True)
class TagRow:
    """One stored sample of a polled tag (a PLC's tank level, pump state, totaliser)."""

    tag: str
    """'<device>/<tag>' as configured."""
    ts: int
    value: float | None
    """None unless the quality is good."""
    quality: str


class TagStore(Protocol):
    """Where a recorder stores samples: the tag polling's repository, whose tables
    are the protocol plugins' (owner ``tags``), not core's."""

    async def store_tag_values(self, samples: Sequence[TagRow]) -> None:
        """Store samples durably, in one transaction; StorageError when refused."""


class TagSpec(Protocol):
    """What the shared rules need of a configured tag (a protocol's tag
    configuration has these fields next to its own addressing)."""

    @property
    def name(self) -> str: ...
    @property
    def unit(self) -> str: ...
    @property
    def interval_s(self) -> float: ...
    @property
    def deadband(self) -> float: ...
    @property
    def meter_id(self) -> str: ...
    @property
    def module_id(self) -> int: ...
    @property
    def resource(self) -> str: ...
    @property
    def resolution(self) -> float: ...
    @property
    def reading_every_s(self) -> float: ...


# -- configuration checks -------------------------------------------------------------


def meter_problems(tag: TagSpec) -> list[str]:
    """What is wrong with a tag's meter mapping on its own (the caller names the tag)."""
    out = []
    if tag.module_id <= 0:
        out.append("meter_id needs module_id, a virtual module number 1..4294967295")
    if not 0 < tag.resolution <= MAX_PULSE_WEIGHT:  # it becomes the meter's pulse weight
        out.append(f"meter_id needs resolution > 0 and <= {MAX_PULSE_WEIGHT:g} (the meter's quantity per count)")
    allowed = UNITS[Resource(tag.resource)]
    if tag.unit not in allowed:
        out.append(f'unit "{tag.unit}" is not a unit of {tag.resource} (allowed: {", ".join(sorted(allowed))})')
    return out


def meter_collisions(tags: Iterable[tuple[str, TagSpec]]) -> list[str]:
    """Two tags (``place``, tag) that would make the same meter or use the same module."""
    problems: list[str] = []
    meters: dict[str, str] = {}
    modules: dict[int, str] = {}
    for place, t in tags:
        if not t.meter_id:
            continue
        if t.meter_id in meters:
            problems.append(f'{place}: meter "{t.meter_id}" is already made by {meters[t.meter_id]}')
        if t.module_id in modules:
            problems.append(f"{place}: module_id {t.module_id} is already used by {modules[t.module_id]}")
        meters.setdefault(t.meter_id, place)
        modules.setdefault(t.module_id, place)
    return problems


# -- state and quality ------------------------------------------------------------------


@dataclass(slots=True)
class TagState:
    """What is known about one tag now: its newest sample and its last good value."""

    device: str
    tag: Any
    """The tag's configuration (a ``TagSpec``)."""
    value: float | None = None
    quality: TagQuality = "stale"
    t: float = 0.0
    """Wall-clock time of the newest sample (0: none yet)."""
    detail: str = "not read yet"
    last_good_value: float | None = None
    last_good_t: float | None = None
    last_good_mono: float | None = None
    stored_value: float | None = None
    stored_quality: str | None = None
    stored_t: float | None = None
    reading_t: float | None = None
    """Wall-clock time of the newest meter reading taken from this tag."""

    @property
    def id(self) -> str:
        return f"{self.device}/{self.tag.name}"

    def good(self, value: float, t: float, mono: float) -> None:
        self.value, self.quality, self.t, self.detail = value, "good", t, ""
        self.last_good_value, self.last_good_t, self.last_good_mono = value, t, mono

    def bad(self, quality: TagQuality, t: float, detail: str) -> None:
        self.value, self.quality, self.t, self.detail = None, quality, t, detail

    def overdue(self, mono: float, stale_after: float) -> bool:
        """A good tag without a fresh good value for ``stale_after`` intervals."""
        if self.quality != "good" or self.last_good_mono is None:
            return False
        return mono - self.last_good_mono > stale_after * self.tag.interval_s

    def should_store(self, store_every_s: float) -> bool:
        """Store a sample when the quality changed, the value moved beyond the
        deadband, or nothing was stored for ``store_every_s`` (a heartbeat that
        shows the tag was still read). Keeps a 1 s poll from writing 86,400 rows
        a day per tag when nothing happens."""
        if self.stored_t is None or self.quality != self.stored_quality:
            return True
        if store_every_s <= 0 or self.t - self.stored_t >= store_every_s:
            return True
        if self.value is None or self.stored_value is None:
            return False
        return abs(self.value - self.stored_value) > self.tag.deadband

    def mark_stored(self) -> None:
        self.stored_value, self.stored_quality, self.stored_t = self.value, self.quality, self.t

    def row(self) -> dict[str, Any]:
        """The tag as the API and the command line show it."""
        return {
            "tag": self.id, "device": self.device, "name": self.tag.name, "value": self.value,
            "unit": self.tag.unit, "quality": self.quality, "t": self.t or None, "detail": self.detail,
            "last_good_value": self.last_good_value, "last_good_t": self.last_good_t,
            "meter_id": self.tag.meter_id or None,
        }


def mark(states: Iterable[TagState], quality: TagQuality, t: float, detail: str) -> None:
    """Give every tag of ``states`` the same bad quality (a link down, a poll crashed)."""
    for s in states:
        s.bad(quality, t, detail)


class TagSource(Protocol):
    """A component that reads tags (a Modbus or OPC UA client), offered in
    ``core.calculated.TagSources``: ``GET /api/v1/tags`` lists the tags of every
    source, ``GET /api/v1/tags/history`` and calculated inputs read stored samples
    through one (the samples of every protocol are in one store, the protocol
    plugins', which core does not reach itself)."""

    name: str
    protocol: str

    def tag_snapshot(self) -> list[dict[str, Any]]: ...

    async def tag_history(self, tag: str, t0: int, t1: int, limit: int) -> list[dict[str, Any]]:
        """Stored samples of ``tag`` (any protocol's) with t0 <= ts < t1, oldest first:
        ``tag``, ``ts``, ``value`` (None unless good) and ``quality``."""
        ...

    async def tag_series(self, tag: str, t0: int, t1: int) -> TagSeries:
        """The same samples as arrays, for calculated inputs."""
        ...


# -- back-off ---------------------------------------------------------------------------


@dataclass(slots=True)
class Backoff:
    """Exponential back-off with jitter: after n failures wait between half and all
    of min(cap, base * 2^n), so that many clients of one PLC spread out."""

    base: float
    cap: float
    failures: int = 0
    next_try: float = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.next_try

    def wait(self, now: float) -> float:
        return max(0.0, self.next_try - now)

    def failed(self, now: float) -> float:
        delay = min(self.cap, self.base * 2 ** min(self.failures, 30))
        delay = delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not a secret
        self.failures += 1
        self.next_try = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.next_try = 0, 0.0


# -- meters ----------------------------------------------------------------------------


class MeterMappingError(Exception):
    """A totaliser's meter cannot be put into effect (e.g. it exists and differs)."""


def counter_of(value: float, resolution: float) -> int:
    """A totaliser value as a meter counter: counts of ``resolution``, modulo 2^32
    (ingest follows the wrap like a radio module's counter)."""
    return round(value / resolution) % COUNTER_MODULUS


async def ensure_meters(registry: RegistryReader, editor: RegistryEditor, tags: Iterable[tuple[str, TagSpec]],
                        now: int) -> list[str]:
    """Make sure the registry holds the module and meter of every totaliser tag
    (``place``, tag) named as a meter, creating what is missing (checked like a
    registry import) and audited in the editor's name. A meter or module that
    exists and differs is never overwritten: the error names the tag. Returns
    the ids of the meters created."""
    from balans_edge.core.registry import RegistryError, validate_all

    incoming: list[tuple[Any, str]] = []
    problems: list[str] = []
    for place, t in tags:
        if not t.meter_id:
            continue
        want = Meter(t.meter_id, Resource(t.resource), t.unit, t.resolution, now, module_id=t.module_id, channel=1)
        module = await registry.registry_get("modules", t.module_id)
        if module is None:
            incoming.append((RadioModule(t.module_id, None, channels=0b001), place))
        elif module.concentrator_id is not None:
            problems.append(f"{place}: module {t.module_id} is a radio module of concentrator "
                            f"{module.concentrator_id}; choose a module_id no radio module uses")
        meter = await registry.registry_get("meters", t.meter_id)
        if meter is None:
            incoming.append((want, place))
        elif differences := _differences(meter, want):
            problems.append(f'{place}: meter "{t.meter_id}" is in the registry with {differences}; '
                            "it is not overwritten: change the tag or the registry")
    if problems:
        raise MeterMappingError("\n".join(problems))
    if not incoming:
        return []
    try:
        await validate_all(registry, incoming)
    except RegistryError as exc:
        raise MeterMappingError(f"meters of totaliser tags refused, nothing written:\n{exc}") from None
    created = [o for o, _ in incoming]
    await editor.apply({
        "modules": [o for o in created if isinstance(o, RadioModule)],
        "meters": [o for o in created if isinstance(o, Meter)],
    }, reason="totaliser tags of the configuration")
    return [o.meter_id for o in created if isinstance(o, Meter)]


def _differences(have: Meter, want: Meter) -> str:
    out = []
    for name in ("module_id", "channel", "resource", "unit"):
        if getattr(have, name) != getattr(want, name):
            out.append(f"{name} {getattr(have, name)} (the tag says {getattr(want, name)})")
    if not math.isclose(have.pulse_weight, want.pulse_weight, rel_tol=1e-9):
        out.append(f"pulse_weight {have.pulse_weight:g} (the tag's resolution is {want.pulse_weight:g})")
    if have.removed_time is not None:
        out.append("removed_time set (the meter was taken out of service)")
    return ", ".join(out)


# -- recording ---------------------------------------------------------------------------


class TagRecorder:
    """Where every sample goes: storage (what should be stored), then the event
    bus (every sample, after the commit), then ingest (totalisers as readings)."""

    def __init__(self, store: TagStore, bus: EventBus, ingest: Ingest, label: str) -> None:
        self.store = store
        self.bus = bus
        self.ingest = ingest
        self.label = label
        """Names the client in log lines ("modbus", "opcua")."""

    async def record(self, source: str, states: Sequence[TagState], store_every_s: float) -> None:
        """Store what changed (and heartbeats), publish every sample, ingest totalisers."""
        if not states:
            return
        rows = []
        for s in states:
            if s.should_store(store_every_s):
                rows.append(TagRow(s.id, int(s.t), s.value, s.quality))
                s.mark_stored()
        try:
            await self.store.store_tag_values(rows)
        except StorageError as exc:
            log.warning("%s: %d tag samples of %s not stored: %s", self.label, len(rows), source, exc)
        samples = tuple(TagSample(s.id, s.t, s.value, s.quality, s.tag.unit, s.detail) for s in states)
        self.bus.publish(TagValues(source, samples))
        await self._ingest(states)

    async def _ingest(self, states: Sequence[TagState]) -> None:
        """Good totaliser samples as meter readings (at most one per ``reading_every_s``)."""
        taken = [s for s in states if s.tag.meter_id and s.quality == "good" and s.value is not None
                 and (s.reading_t is None or s.t - s.reading_t >= s.tag.reading_every_s)]
        if not taken:
            return
        readings = [RawReading(s.tag.module_id, 1, int(s.t), counter_of(s.value, s.tag.resolution))
                    for s in taken if s.value is not None]
        try:
            result = await self.ingest.ingest(readings)
        except StorageError as exc:
            log.warning("%s: %d totaliser readings not stored (taken again next time): %s", self.label,
                        len(readings), exc)
            return
        for s in taken:
            s.reading_t = s.t
        if result.quarantined or result.rejected:
            log.warning("%s: totaliser readings not accepted: %s", self.label, result.as_dict())
