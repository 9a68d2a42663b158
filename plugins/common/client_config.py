"""The configuration a protocol plugin's client side has whatever the
protocol: devices (PLCs, stations' servers) with their tags, and actuators
driven through them, with the checks that do not depend on the protocol.
Each protocol's configuration subclasses these and adds how a device is
reached, a tag addressed and an actuator switched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Protocol

from balans_edge.core.readback import Kind, Switched, check_actuators, non_empty
from balans_edge.core.tags import meter_collisions
from balans_edge.plugins.common.tag_settings import TagSettings
from balans_edge.settings import setting

ReconnectMin = Annotated[float, setting(range=(0.01, 3600.0), doc="first reconnect delay (doubles, with jitter)")]
"""The type of a device's ``reconnect_min_s`` (default 0.5), whatever its protocol."""
ReconnectMax = Annotated[float, setting(range=(0.01, 3600.0), doc="longest reconnect delay")]
"""The type of a device's ``reconnect_max_s`` (default 30.0); not shorter than ``reconnect_min_s``
(``device_problems``)."""


class DeviceSettings(Protocol):
    """What the checks below need of a protocol client's device configuration
    (each protocol declares these settings among its own, in its own order:
    problems are reported in the order of the settings)."""

    @property
    def name(self) -> str: ...
    @property
    def reconnect_min_s(self) -> float: ...
    @property
    def reconnect_max_s(self) -> float: ...
    @property
    def tags(self) -> Sequence[TagSettings]: ...


def device_problems(device: DeviceSettings) -> list[str]:
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


def devices_problems(devices: Sequence[DeviceSettings]) -> list[str]:
    """Problems across the devices of one protocol: a name listed twice, meters that collide."""
    problems: list[str] = []
    names: set[str] = set()
    for d in devices:
        if d.name in names:
            problems.append(f'device "{d.name}" is listed more than once')
        names.add(d.name)
    return problems + meter_collisions((f'device "{d.name}" tag "{t.name}"', t) for d in devices for t in d.tags)


@dataclass(frozen=True)
class ClientSection:
    """A protocol plugin's section with ``devices`` and the ``actuators`` driven
    through them, checked across both. Each protocol declares both with its own
    types, in its own order among its settings (problems are reported in the
    order of the settings)."""

    if TYPE_CHECKING:
        devices: Sequence[DeviceSettings]
        actuators: Sequence[Switched]

    def __post_init__(self) -> None:
        problems = self.device_problems() + check_actuators(self.actuators, {d.name for d in self.devices})
        if problems:
            raise ValueError("; ".join(problems))

    def device_problems(self) -> list[str]:
        """Problems across the devices (a protocol may check more)."""
        return devices_problems(self.devices)
