"""The configuration a protocol plugin's client side has whatever the
protocol: devices (PLCs, stations' servers) with their tags, and actuators
driven through them, with the checks that do not depend on the protocol.
Each protocol's configuration subclasses these and adds how a device is
reached, a tag addressed and an actuator switched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

from balans_edge.core.readback import Kind, Switched, check_actuators, non_empty
from balans_edge.core.tags import meter_collisions
from balans_edge.plugins.common.tag_settings import TagSettings, tag_name
from balans_edge.settings import setting

DeviceName = Annotated[str, setting(check=tag_name, doc="unique; used in tag ids, actuators and logs")]
"""The type of a device's ``name``, whatever its protocol (it is part of its tags' ids)."""
StaleAfter = Annotated[float, setting(range=(1.0, 100.0))]
"""The type of a device's ``stale_after`` (default 2.0): the intervals without a good
value after which a tag is stale (``core.tags``). Each protocol says in its ``doc``
what an interval is for its reads."""
StoreEvery = Annotated[float, setting(range=(0.0, 86400.0))]
"""The type of a device's ``store_every_s`` (default 60.0): how often an unchanged
sample is stored. Each protocol says in its ``doc`` what 0 stores of its reads."""

TagT = TypeVar("TagT", bound=TagSettings)


@dataclass(frozen=True, kw_only=True)
class ClientDevice(Generic[TagT]):
    """The settings a protocol client's device ends with, whatever its protocol:
    how it reconnects, and its tags (of the protocol's tag type ``TagT``); and the
    checks of a device on its own that do not depend on the protocol.

    A protocol's device class lists its own settings (``name`` first) in a base
    given after this one, ``class DeviceConfig(ClientDevice[TagConfig], ModbusSettings)``:
    a dataclass takes its bases' fields from the last base to the first, so the
    protocol's come first in the section, as people read them."""

    if TYPE_CHECKING:
        name: str

    reconnect_min_s: Annotated[float, setting(range=(0.01, 3600.0), doc=(
        "first reconnect delay (doubles, with jitter)"))] = 0.5
    reconnect_max_s: Annotated[float, setting(range=(0.01, 3600.0), doc="longest reconnect delay")] = 30.0
    tags: Annotated[list[TagT], setting(doc="the values read from it")] = field(default_factory=list)

    def __post_init__(self) -> None:
        problems = self.own_problems() + device_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def own_problems(self) -> list[str]:
        """What is wrong with the protocol's own settings (reported first)."""
        return []


def device_problems(device: ClientDevice[Any]) -> list[str]:
    """What is wrong with a device on its own, whatever its protocol: its
    reconnect delays, a tag listed twice, each tag's own problems."""
    where = f'device "{device.name}"'
    problems = []
    if device.reconnect_max_s < device.reconnect_min_s:
        problems.append(f"{where}: reconnect_max_s is shorter than reconnect_min_s")
    seen: set[str] = set()
    for tag in device.tags:
        if tag.name in seen:
            problems.append(f'{where} tag "{tag.name}" is listed more than once')
        seen.add(tag.name)
        problems += [f'{where} tag "{tag.name}": {p}' for p in tag.problems()]
    return problems


@dataclass(frozen=True, kw_only=True)
class ActuatorSettings:
    """The settings a valve, pump or relay driven through a protocol client's
    device starts with, whatever the protocol (each adds how it is switched and
    read back, and ``confirm_timeout_s`` and ``confirm_every_s`` of
    ``core.readback.Switched`` after them)."""

    target: Annotated[str, setting(check=non_empty, doc="the meter id or device id commands name")]
    device: Annotated[str, setting(check=non_empty, doc="the device it is driven through (a name in this plugin's "
                                                        "`devices`)")]
    kind: Annotated[Kind, setting(doc="valve (open/close), pump (start/stop) or relay (on/off)")]


def devices_problems(devices: Sequence[ClientDevice[Any]]) -> list[str]:
    """Problems across the devices of one protocol: a name listed twice, meters that collide."""
    problems: list[str] = []
    names: set[str] = set()
    for d in devices:
        if d.name in names:
            problems.append(f'device "{d.name}" is listed more than once')
        names.add(d.name)
    return problems + meter_collisions((f'device "{d.name}" tag "{t.name}"', t) for d in devices for t in d.tags)


DeviceT = TypeVar("DeviceT", bound=ClientDevice[Any])
ActuatorT = TypeVar("ActuatorT", bound=Switched)
"""An actuator's configuration: a protocol's ``ActuatorSettings`` with ``core.readback.Switched``'s settings."""


@dataclass(frozen=True)
class ClientSection(Generic[DeviceT, ActuatorT]):
    """The checks of a protocol plugin's section across its ``devices`` and the
    ``actuators`` driven through them (``ProtocolSection`` declares both, of the
    protocol's types). Problems are reported in the order of the settings."""

    if TYPE_CHECKING:
        devices: list[DeviceT]
        actuators: list[ActuatorT]

    def __post_init__(self) -> None:
        problems = self.device_problems() + check_actuators(self.actuators, {d.name for d in self.devices})
        if problems:
            raise ValueError("; ".join(problems))

    def device_problems(self) -> list[str]:
        """Problems across the devices (a protocol may check more)."""
        return devices_problems(self.devices)
