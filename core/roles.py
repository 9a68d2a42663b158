"""Who may do what: the roles of the HTTP API's tokens and of the OPC UA
server's users, ranked so that each may do what the ones below it may.

- ``viewer`` reads (and browses);
- ``operator`` also acts on devices (valves, relays, pumps, module commands)
  and answers findings;
- ``admin`` also changes the registry and the system (imports, corrections,
  firmware, the export queues).

A route or an OPC UA method names the least role it needs.
"""

from __future__ import annotations

from typing import Literal

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
"""From the least to the most trusted."""
ROLE_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES, start=1)}


def allows(role: str, needed: str) -> bool:
    """Whether ``role`` may do what needs ``needed``; KeyError for an unknown role
    (configuration refuses one at start, so meeting one here is a bug)."""
    return ROLE_RANK[role] >= ROLE_RANK[needed]
