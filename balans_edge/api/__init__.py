"""The built-in HTTP API v1 (routes declared as data; see balans_edge.routes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balans_edge.api import commands, findings, groups, meters, registry, registry_history, system, tags

if TYPE_CHECKING:
    from balans_edge.routes import Route
    from balans_edge.server import Server


def routes(server: Server) -> list[Route]:
    return (system.routes(server) + registry.routes(server) + registry_history.routes(server) + meters.routes(server)
            + groups.routes(server)
            + commands.routes(server) + findings.routes(server) + tags.routes(server))
