"""An actuator driven through a protocol client's devices (Modbus PLCs, OPC UA
servers): the rules of ``core.readback``, the devices of a running client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from balans_edge.core.readback import C, D, ReadbackActuator


class Client(Protocol):
    """A protocol client component: its devices by name (made when it starts)."""

    @property
    def devices(self) -> Mapping[str, Any]: ...


class ClientActuator(ReadbackActuator[C, D]):
    """Executes the commands of every configured actuator of one protocol client."""

    def __init__(self, client: Client, actuators: Sequence[C]) -> None:
        super().__init__(lambda name: client.devices.get(name), actuators)  # devices are made at start
        self.client = client
