"""Risky configurations, found before the server listens: weak or placeholder API
tokens and anonymous access on an address other than loopback (the token rules
themselves are in ``core/tokens.py``).

On loopback these are warnings (the demo's tokens are fine there). On any
other address a risk refuses the start (and fails check-config) unless
``[server] allow_insecure = true``: a box at a pumping station reachable with
``demo-admin-token-change-me`` is worse than one that does not start.
See docs/config.md.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from balans_edge.core.tokens import weakness

if TYPE_CHECKING:
    from balans_edge.config import Config


def is_loopback(host: str) -> bool:
    """Only this machine can connect (127.0.0.0/8, ::1, "localhost"). A name other
    than localhost counts as reachable: what it resolves to may change."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Assessment:
    risks: list[str]
    """What makes this configuration risky, each naming its key."""
    host: str
    allowed: bool
    """``[server] allow_insecure = true``."""

    @property
    def refused(self) -> bool:
        """Risks on an address others can reach, and not explicitly allowed."""
        return bool(self.risks) and not is_loopback(self.host) and not self.allowed

    def refusal(self) -> str:
        return (f"refusing to listen on {self.host} with the risks above; fix them, bind to 127.0.0.1, or set "
                "[server] allow_insecure = true to run anyway")


def assess(config: Config) -> Assessment:
    """The risks of ``config`` as it will run (after ``--host`` and ``--port``)."""
    risks = []
    for i, user in enumerate(config.api.users):
        reason = weakness(user.token) if user.token else None
        if reason:
            risks.append(f'[api.users[{i}]] token of "{user.name}" ({user.role}) is weak: {reason}; '
                         "make one with `balans-edge token new`")
    host = config.server.host
    if config.api.anonymous_role != "none" and not is_loopback(host):
        risks.append(f'[api] anonymous_role = "{config.api.anonymous_role}" lets anyone who reaches {host} read '
                     "meters, consumers and balances without a token")
    return Assessment(risks, host, config.server.allow_insecure)
