"""HTTP routes of the OPC UA client: device sessions, actuators (``plugins.common.client_api``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from balans_edge.plugins.common.client_api import client_routes

if TYPE_CHECKING:
    from balans_edge.plugins.opcua.actuators import OpcuaActuator
    from balans_edge.plugins.opcua.client import OpcuaClient
    from balans_edge.routes import Route
    from balans_edge.server import Server


def routes(server: Server, client: Callable[[], OpcuaClient | None],
           actuator: Callable[[], OpcuaActuator | None]) -> list[Route]:
    return client_routes(server, "opcua", "OPC UA",
                         "OPC UA servers read as a client: session up, security, connects, last error, reads, "
                         "notifications", client, actuator)
