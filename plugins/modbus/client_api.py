"""HTTP routes of the Modbus client: device links, actuators (``plugins.common.client_api``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from balans_edge.plugins.common.client_api import client_routes

if TYPE_CHECKING:
    from balans_edge.plugins.modbus.actuators import ModbusActuator
    from balans_edge.plugins.modbus.client import ModbusClient
    from balans_edge.routes import Route
    from balans_edge.server import Server


def routes(server: Server, client: Callable[[], ModbusClient | None],
           actuator: Callable[[], ModbusActuator | None]) -> list[Route]:
    return client_routes(server, "modbus", "Modbus",
                         "Polled Modbus devices: link state, reconnects, requests, reads per poll, last error",
                         client, actuator)
