"""Valves, pumps and relays a PLC drives: commands through coils or holding
registers, confirmed by reading the resulting state back.

A write that the PLC acknowledged only says the request arrived; whether the
valve moved or the pump started is a different signal (a limit switch, a
contactor's auxiliary contact, a running-feedback register). So every command
writes its value, then reads the configured read-back address until it shows
the expected state or the confirmation timeout passes; the outcome says which,
with the last value seen. Commands reach an actuator only through the core
actuation service (audited); ``owns`` tells the service which targets are
driven here, so a command for one of them never goes to another actuator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from balans_edge.core.components import Command, CommandCode, CommandOutcome
from balans_edge.plugins.modbus.client import BadAnswer, DeviceRefused, LinkDown, NoAnswer, wall_clock
from balans_edge.plugins.modbus.tags import BIT_TABLES, DeviceConfig
from balans_edge.settings import setting

if TYPE_CHECKING:
    from balans_edge.plugins.modbus.client import Device, ModbusClient

Kind = Literal["valve", "pump", "relay"]

CODES: dict[str, dict[CommandCode, bool]] = {
    "valve": {CommandCode.VALVE_OPEN: True, CommandCode.VALVE_CLOSE: False},
    "pump": {CommandCode.PUMP_START: True, CommandCode.PUMP_STOP: False},
    "relay": {CommandCode.RELAY_ON: True, CommandCode.RELAY_OFF: False},
}
"""Commands each kind accepts -> whether the command switches it on (open, start, on)."""
STATES = {"valve": ("open", "closed"), "pump": ("running", "stopped"), "relay": ("on", "off")}


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "expected a non-empty name"


@dataclass(frozen=True, kw_only=True)
class ActuatorConfig:
    """A valve, pump or relay switched through one coil or holding register of a device."""

    target: str = setting(check=_non_empty, doc="the meter id or device id commands name")
    device: str = setting(check=_non_empty, doc="the [[plugins.modbus.devices]] name it is wired to")
    kind: Kind
    """valve (open/close), pump (start/stop) or relay (on/off)."""
    write_table: Literal["coil", "holding"] = "coil"
    write_address: int = setting(range=(0, 65535), doc="0-based address written")
    on_value: int = setting(1, range=(0, 65535), doc="written to open, start or switch on")
    off_value: int = setting(0, range=(0, 65535), doc="written to close, stop or switch off")
    readback_table: Literal["coil", "discrete", "holding", "input"] = "discrete"
    readback_address: int = setting(range=(0, 65535), doc="0-based address of the resulting state")
    readback_on: int = setting(1, range=(0, 65535), doc="read back once open, running or on")
    readback_off: int = setting(0, range=(0, 65535), doc="read back once closed, stopped or off")
    confirm_timeout_s: float = setting(10.0, range=(0.05, 3600.0), doc="give up confirming after this long")
    confirm_every_s: float = setting(0.2, range=(0.01, 60.0), doc="read the state back this often")

    def __post_init__(self) -> None:
        where = f'actuator "{self.target}"'
        if self.on_value == self.off_value:
            raise ValueError(f"{where}: on_value and off_value are both {self.on_value}")
        if self.readback_on == self.readback_off:
            raise ValueError(f"{where}: readback_on and readback_off are both {self.readback_on}")
        if self.write_table == "coil" and {self.on_value, self.off_value} - {0, 1}:
            raise ValueError(f"{where}: a coil is written 0 or 1")
        if self.readback_table in BIT_TABLES and {self.readback_on, self.readback_off} - {0, 1}:
            raise ValueError(f"{where}: a {self.readback_table} reads back 0 or 1")


def check_actuators(actuators: Sequence[ActuatorConfig], devices: Sequence[DeviceConfig]) -> list[str]:
    """Problems across actuators: unknown devices, a target listed twice."""
    names = {d.name for d in devices}
    problems, seen = [], set()
    for a in actuators:
        if a.device not in names:
            known = ", ".join(sorted(names)) or "none configured"
            problems.append(f'actuator "{a.target}": unknown device "{a.device}" (devices: {known})')
        if a.target in seen:
            problems.append(f'actuator "{a.target}" is listed more than once')
        seen.add(a.target)
    return problems


class ModbusActuator:
    """Executes the commands of every configured Modbus actuator."""

    name = "modbus"

    def __init__(self, client: ModbusClient, actuators: Sequence[ActuatorConfig]) -> None:
        self.client = client
        self.by_target = {a.target: a for a in actuators}
        self.states: dict[str, dict[str, Any]] = {}
        self._locks = {a.target: asyncio.Lock() for a in actuators}

    def owns(self, target: str) -> bool:
        """Targets driven here: the actuation service sends their commands nowhere else."""
        return target in self.by_target

    def handles(self, command: Command) -> bool:
        config = self.by_target.get(command.target)
        return config is not None and command.code in CODES[config.kind]

    async def execute(self, command: Command) -> CommandOutcome:
        config = self.by_target[command.target]
        on = CODES[config.kind][command.code]
        device = self.client.devices.get(config.device)
        if device is None:
            return CommandOutcome(False, f'device "{config.device}" is not running')
        async with self._locks[config.target]:
            value = config.on_value if on else config.off_value
            try:
                await device.write(config.write_table, config.write_address, value)
            except DeviceRefused as exc:
                return CommandOutcome(False, f"{config.device} refused writing {value} to "
                                             f"{config.write_table} {config.write_address}: {exc}")
            except (LinkDown, NoAnswer, BadAnswer) as exc:
                return CommandOutcome(False, f"{config.device}: the write was not delivered: {exc}")
            return await self._confirm(config, device, on)

    async def _confirm(self, config: ActuatorConfig, device: Device, on: bool) -> CommandOutcome:
        """Read the state back until it is the expected one or the timeout passes."""
        expected = config.readback_on if on else config.readback_off
        state = STATES[config.kind][0 if on else 1]
        where = f"{config.readback_table} {config.readback_address}"
        start = time.monotonic()
        deadline = start + config.confirm_timeout_s
        seen: int | None = None
        error = ""
        while True:
            try:
                (seen,) = await device.read(config.readback_table, config.readback_address, 1, force=True)
                error = ""
            except (DeviceRefused, LinkDown, NoAnswer, BadAnswer) as exc:
                error = str(exc)
            else:
                self._remember(config, seen)
                if seen == expected:
                    return CommandOutcome(True, f"{config.kind} {config.target} {state}: confirmed after "
                                                f"{time.monotonic() - start:.1f} s ({where} = {seen})")
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(config.confirm_every_s, left))
        last = f"{where} = {seen}" if seen is not None else f"{where} not read"
        reason = f"; last read-back error: {error}" if error else ""
        return CommandOutcome(False, f"{config.kind} {config.target} not confirmed {state} within "
                                     f"{config.confirm_timeout_s:g} s: {last}, expected {expected}{reason}")

    def _remember(self, config: ActuatorConfig, seen: int) -> None:
        names = STATES[config.kind]
        state = names[0] if seen == config.readback_on else names[1] if seen == config.readback_off else "unknown"
        self.states[config.target] = {"state": state, "readback": seen, "t": wall_clock()}

    def listing(self) -> list[dict[str, Any]]:
        return [
            {"target": a.target, "device": a.device, "kind": a.kind,
             "commands": [str(c) for c in CODES[a.kind]],
             "write": f"{a.write_table} {a.write_address}", "readback": f"{a.readback_table} {a.readback_address}",
             **self.states.get(a.target, {"state": None, "readback": None, "t": None})}
            for a in self.by_target.values()
        ]
