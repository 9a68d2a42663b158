"""Valves, pumps and relays that a station's controller drives, switched and
confirmed by reading the resulting state back.

A controller that acknowledges a write (or a method call) only says that the
request arrived; whether the valve moved or the pump started is a different
signal (a limit switch, a contactor's auxiliary contact, a running feedback).
So a command switches, then reads the configured read-back point until it
shows the expected state or the confirmation timeout passes, and the outcome
says which, with the last value seen. The protocol plugins (Modbus, OPC UA)
say how to switch and how to read back; the rules are here, once.

Commands reach an actuator only through the core actuation service (audited);
``owns`` tells the service which targets are driven here, so a command for one
of them never goes to another actuator (the DMesh one takes any valve command
for a meter on a concentrator).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Generic, Literal, Protocol, TypeVar

from balans_edge.core.components import Command, CommandCode, CommandOutcome

Kind = Literal["valve", "pump", "relay"]

CODES: dict[str, dict[CommandCode, bool]] = {
    "valve": {CommandCode.VALVE_OPEN: True, CommandCode.VALVE_CLOSE: False},
    "pump": {CommandCode.PUMP_START: True, CommandCode.PUMP_STOP: False},
    "relay": {CommandCode.RELAY_ON: True, CommandCode.RELAY_OFF: False},
}
"""Commands each kind accepts -> whether the command switches it on (open, start, on)."""
STATES = {"valve": ("open", "closed"), "pump": ("running", "stopped"), "relay": ("on", "off")}
"""The state each kind is in once switched on, and once switched off."""


class Switched(Protocol):
    """What every protocol's actuator configuration names."""

    @property
    def target(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def kind(self) -> Kind: ...
    @property
    def readback_on(self) -> Any: ...
    @property
    def readback_off(self) -> Any: ...
    @property
    def confirm_timeout_s(self) -> float: ...
    @property
    def confirm_every_s(self) -> float: ...


C = TypeVar("C", bound=Switched)
D = TypeVar("D")


class SwitchFailed(Exception):
    """The switching write or call was refused or not delivered; the message says which."""


def same(seen: object, expected: object) -> bool:
    """Whether a value read back is the configured one: numbers and booleans by
    value (a Boolean node reads True for 1), text as text."""
    if isinstance(seen, bool | int | float) and isinstance(expected, bool | int | float):
        return float(seen) == float(expected)
    return str(seen) == str(expected)


def show(value: Any) -> str:
    """A value as an outcome names it (as it would be configured)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def non_empty(value: str) -> str | None:
    """The setting check of an actuator's target and device names."""
    return None if value.strip() else "expected a non-empty name"


def check_actuators(actuators: Sequence[Switched], device_names: set[str]) -> list[str]:
    """Problems across actuators: unknown devices, a target listed twice."""
    problems, seen = [], set()
    for a in actuators:
        if a.device not in device_names:
            known = ", ".join(sorted(device_names)) or "none configured"
            problems.append(f'actuator "{a.target}": unknown device "{a.device}" (devices: {known})')
        if a.target in seen:
            problems.append(f'actuator "{a.target}" is listed more than once')
        seen.add(a.target)
    return problems


class ReadbackActuator(ABC, Generic[C, D]):
    """Executes the commands of every configured actuator of one protocol: one
    command at a time per target, switched, then confirmed by read-back."""

    name = "readback"

    def __init__(self, devices: Callable[[str], D | None], actuators: Sequence[C]) -> None:
        self.device_named = devices
        """The running device of a name (None while its client is not running)."""
        self.by_target = {a.target: a for a in actuators}
        self.states: dict[str, dict[str, Any]] = {}
        self._locks = {a.target: asyncio.Lock() for a in actuators}

    # what a protocol says ----------------------------------------------------

    @abstractmethod
    async def switch(self, config: C, device: D, on: bool) -> str:
        """Write or call to switch; returns what was done (``wrote 1 to coil 5``).
        Raises ``SwitchFailed`` when it was refused or not delivered."""

    @abstractmethod
    async def read_back(self, config: C, device: D) -> tuple[Any, str]:
        """The state point's value now, or (None, why it could not be read)."""

    @abstractmethod
    def readback_point(self, config: C) -> str:
        """Where the state is read back, as the outcome names it."""

    @abstractmethod
    def wiring(self, config: C) -> dict[str, str]:
        """How a target is switched and read back, for ``listing``."""

    # the rules ---------------------------------------------------------------

    def owns(self, target: str) -> bool:
        """Targets driven here: the actuation service sends their commands nowhere else."""
        return target in self.by_target

    def handles(self, command: Command) -> bool:
        config = self.by_target.get(command.target)
        return config is not None and command.code in CODES[config.kind]

    async def execute(self, command: Command) -> CommandOutcome:
        config = self.by_target[command.target]
        on = CODES[config.kind][command.code]
        device = self.device_named(config.device)
        if device is None:
            return CommandOutcome(False, f'device "{config.device}" is not running')
        async with self._locks[config.target]:
            try:
                action = await self.switch(config, device, on)
            except SwitchFailed as exc:
                return CommandOutcome(False, str(exc))
            return await self._confirm(config, device, on, action)

    async def _confirm(self, config: C, device: D, on: bool, action: str) -> CommandOutcome:
        """Read the state back until it is the expected one or the timeout passes."""
        expected = config.readback_on if on else config.readback_off
        state = STATES[config.kind][0 if on else 1]
        where = self.readback_point(config)
        start = time.monotonic()
        deadline = start + config.confirm_timeout_s
        seen: Any = None
        while True:
            value, error = await self.read_back(config, device)
            if not error:
                seen = value
                self._remember(config, seen)
                if same(seen, expected):
                    return CommandOutcome(True, f"{config.kind} {config.target} {state}: {action}, confirmed after "
                                                f"{time.monotonic() - start:.1f} s ({where} = {show(seen)})")
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(config.confirm_every_s, left))
        last = f"{where} = {show(seen)}" if seen is not None else f"{where} not read"
        reason = f"; last read-back error: {error}" if error else ""
        return CommandOutcome(False, f"{config.kind} {config.target} not confirmed {state} within "
                                     f"{config.confirm_timeout_s:g} s ({action}): {last}, expected "
                                     f"{show(expected)}{reason}")

    def _remember(self, config: C, seen: Any) -> None:
        names = STATES[config.kind]
        state = names[0] if same(seen, config.readback_on) else names[1] if same(seen, config.readback_off) \
            else "unknown"
        shown = seen if seen is None or isinstance(seen, bool | int | float | str) else str(seen)
        self.states[config.target] = {"state": state, "readback": shown, "t": time.time()}

    def listing(self) -> list[dict[str, Any]]:
        """Every target with its commands, wiring and last read-back state."""
        return [
            {"target": a.target, "device": a.device, "kind": a.kind, "commands": [str(c) for c in CODES[a.kind]],
             **self.wiring(a), **self.states.get(a.target, {"state": None, "readback": None, "t": None})}
            for a in self.by_target.values()
        ]
