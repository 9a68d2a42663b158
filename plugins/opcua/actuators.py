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

from typing import TYPE_CHECKING, Any

from asyncua import ua

from balans_edge.core.readback import SwitchFailed, show
from balans_edge.plugins.common.actuators import ClientActuator
from balans_edge.plugins.opcua.client import CONNECTION_ERRORS, NotConnected, describe
from balans_edge.plugins.opcua.client_config import ActuatorConfig, parse_node_id

if TYPE_CHECKING:
    from balans_edge.plugins.opcua.client import OpcuaDevice


class OpcuaActuator(ClientActuator[ActuatorConfig, "OpcuaDevice"]):
    """Executes the commands of every configured OPC UA actuator."""

    name = "opcua"

    async def switch(self, config: ActuatorConfig, device: OpcuaDevice, on: bool) -> str:
        """Write the node or call the method."""
        if config.by_method:
            method = config.on_method if on else config.off_method
            doing, done = f"calling {method}", f"called {method}"
        else:
            value = config.on_value if on else config.off_value
            doing, done = f"writing {show(value)} to {config.write_node}", f"wrote {show(value)}"
        try:
            if config.by_method:
                await device.call(parse_node_id(config.object_node), parse_node_id(method),
                                  config.on_args if on else config.off_args)
            else:
                await device.write(parse_node_id(config.write_node), value)
        except NotConnected as exc:
            raise SwitchFailed(f"not delivered: {exc}") from None
        except ua.UaStatusCodeError as exc:
            raise SwitchFailed(f"{config.device} refused {doing}: {describe(exc)}") from None
        except CONNECTION_ERRORS as exc:
            raise SwitchFailed(f"{config.device}: {doing} was not delivered: {describe(exc)}") from None
        return done

    async def read_back(self, config: ActuatorConfig, device: OpcuaDevice) -> tuple[Any, str]:
        try:
            dv = await device.read(parse_node_id(config.readback_node))
        except (NotConnected, *CONNECTION_ERRORS) as exc:
            return None, describe(exc)
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            return None, dv.StatusCode.name
        return (dv.Value.Value if dv.Value is not None else None), ""

    def readback_point(self, config: ActuatorConfig) -> str:
        return config.readback_node

    def wiring(self, config: ActuatorConfig) -> dict[str, str]:
        switch = (f"call {config.on_method} / {config.off_method} on {config.object_node}" if config.by_method
                  else f"write {config.write_node}")
        return {"switch": switch, "readback": config.readback_node}
