"""Valves, pumps and relays driven through a station's OPC UA server: a node
written or a method called, confirmed by reading the resulting state back.

A Good answer to a write or a call only says the server took the request;
whether the valve moved is a different signal (a limit switch, a running
feedback). So every command writes or calls, then reads ``readback_node``
until it shows the expected value or ``confirm_timeout_s`` passes; the
outcome says which, with the last value seen. Commands reach an actuator only
through the core actuation service (audited); ``owns`` tells the service
which targets are driven here, so their commands never go to another actuator
(the DMesh one takes any valve command for a meter on a concentrator).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from asyncua import ua

from balans_edge.core.components import Command, CommandCode, CommandOutcome
from balans_edge.plugins.opcua.client import CONNECTION_ERRORS, NotConnected, describe, wall_clock
from balans_edge.plugins.opcua.client_config import ActuatorConfig, parse_node_id, same

if TYPE_CHECKING:
    from balans_edge.plugins.opcua.client import OpcuaClient, OpcuaDevice

CODES: dict[str, dict[CommandCode, bool]] = {
    "valve": {CommandCode.VALVE_OPEN: True, CommandCode.VALVE_CLOSE: False},
    "pump": {CommandCode.PUMP_START: True, CommandCode.PUMP_STOP: False},
    "relay": {CommandCode.RELAY_ON: True, CommandCode.RELAY_OFF: False},
}
"""Commands each kind accepts -> whether the command switches it on (open, start, on)."""
STATES = {"valve": ("open", "closed"), "pump": ("running", "stopped"), "relay": ("on", "off")}


def _show(value: Any) -> str:
    return "true" if value is True else "false" if value is False else repr(value) if isinstance(value, str) \
        else f"{value:g}" if isinstance(value, float) else str(value)


class OpcuaActuator:
    """Executes the commands of every configured OPC UA actuator."""

    name = "opcua"

    def __init__(self, client: OpcuaClient, actuators: Sequence[ActuatorConfig]) -> None:
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
            try:
                action = await self._switch(config, device, on)
            except NotConnected as exc:
                return CommandOutcome(False, f"not delivered: {exc}")
            except ua.UaStatusCodeError as exc:
                return CommandOutcome(False, f"{config.device} refused {self._action(config, on)}: {describe(exc)}")
            except CONNECTION_ERRORS as exc:
                return CommandOutcome(False, f"{config.device}: {self._action(config, on)} was not delivered: "
                                             f"{describe(exc)}")
            return await self._confirm(config, device, on, action)

    def _action(self, config: ActuatorConfig, on: bool) -> str:
        if config.by_method:
            return f"calling {config.on_method if on else config.off_method}"
        return f"writing {_show(config.on_value if on else config.off_value)} to {config.write_node}"

    async def _switch(self, config: ActuatorConfig, device: OpcuaDevice, on: bool) -> str:
        """Write the node or call the method; returns what was done, for the outcome."""
        if config.by_method:
            method = config.on_method if on else config.off_method
            await device.call(parse_node_id(config.object_node), parse_node_id(method),
                              config.on_args if on else config.off_args)
            return f"called {method}"
        value = config.on_value if on else config.off_value
        await device.write(parse_node_id(config.write_node), value)
        return f"wrote {_show(value)}"

    async def _confirm(self, config: ActuatorConfig, device: OpcuaDevice, on: bool, action: str) -> CommandOutcome:
        """Read the state back until it is the expected one or the timeout passes."""
        expected = config.readback_on if on else config.readback_off
        state = STATES[config.kind][0 if on else 1]
        node = parse_node_id(config.readback_node)
        start = time.monotonic()
        deadline = start + config.confirm_timeout_s
        seen: Any = None
        error = ""
        while True:
            try:
                dv = await device.read(node)
            except (NotConnected, *CONNECTION_ERRORS) as exc:
                error = describe(exc)
            else:
                if dv.StatusCode is not None and not dv.StatusCode.is_good():
                    error = dv.StatusCode.name
                else:
                    seen, error = (dv.Value.Value if dv.Value is not None else None), ""
                    self._remember(config, seen)
                    if same(seen, expected):
                        return CommandOutcome(True, f"{config.kind} {config.target} {state}: {action}, confirmed "
                                                    f"after {time.monotonic() - start:.1f} s "
                                                    f"({config.readback_node} = {_show(seen)})")
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(config.confirm_every_s, left))
        last = f"{config.readback_node} = {_show(seen)}" if seen is not None else f"{config.readback_node} not read"
        reason = f"; last read-back error: {error}" if error else ""
        return CommandOutcome(False, f"{config.kind} {config.target} not confirmed {state} within "
                                     f"{config.confirm_timeout_s:g} s ({action}): {last}, expected "
                                     f"{_show(expected)}{reason}")

    def _remember(self, config: ActuatorConfig, seen: Any) -> None:
        names = STATES[config.kind]
        state = names[0] if same(seen, config.readback_on) else names[1] if same(seen, config.readback_off) \
            else "unknown"
        shown = seen if seen is None or isinstance(seen, bool | int | float | str) else str(seen)
        self.states[config.target] = {"state": state, "readback": shown, "t": wall_clock()}

    def listing(self) -> list[dict[str, Any]]:
        return [
            {"target": a.target, "device": a.device, "kind": a.kind,
             "commands": [str(c) for c in CODES[a.kind]],
             "switch": (f"call {a.on_method} / {a.off_method} on {a.object_node}" if a.by_method
                        else f"write {a.write_node}"),
             "readback": a.readback_node,
             **self.states.get(a.target, {"state": None, "readback": None, "t": None})}
            for a in self.by_target.values()
        ]
