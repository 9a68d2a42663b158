"""Risky configurations, found before the server listens: weak or placeholder API
tokens and anonymous access on an address other than loopback; and the API
tokens' hashed form.

On loopback these are warnings (the demo's tokens are fine there). On any
other address a risk refuses the start (and fails check-config) unless
``[server] allow_insecure = true``: a box at a pumping station reachable with
``demo-admin-token-change-me`` is worse than one that does not start.
See docs/config.md.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balans_edge.config import Config

MIN_LENGTH = 24
MIN_BITS = 64
"""Below this estimated entropy a token is weak (``token new`` makes about 256 bits)."""
PLACEHOLDERS = ("changeme", "replaceme", "example", "placeholder", "password", "secret", "default", "demo",
                "sample")
"""Words that mark a token as copied from an example, compared without case and punctuation."""


def token_digest(token: str) -> bytes:
    """SHA-256 of an API token, as ``token_sha256`` holds it in hex.

    A plain, fast hash is right here, unlike for passwords: API tokens are
    random and long (``balans-edge token new``: 256 bits), so nobody can guess
    one from its hash however fast they hash; a slow hash (bcrypt, argon2)
    protects short human passwords and would cost every request tens of
    milliseconds. Presented tokens are compared by digest in constant time."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token() -> str:
    """A random API token: 32 bytes from the OS's CSPRNG, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def estimated_bits(token: str) -> float:
    """Entropy estimate: the token's length times the Shannon entropy of its own
    character frequencies. It undercounts short random tokens a little and cannot
    see keyboard walks, but it catches what matters in a config file: one letter
    repeated, a short pattern repeated, a word. Hand-written: password-strength
    libraries model human passwords and pull in dictionaries for that."""
    if not token:
        return 0.0
    n = len(token)
    return -n * sum(c / n * math.log2(c / n) for c in Counter(token).values())


def weakness(token: str) -> str | None:
    """Why a token is weak, or None."""
    letters = re.sub(r"[^a-z0-9]", "", token.lower())
    for word in PLACEHOLDERS:
        if word in letters:
            return f'it looks like a placeholder ("{word}", ignoring case and punctuation), not a secret'
    if len(token) < MIN_LENGTH:
        return f"it is {len(token)} characters long (want at least {MIN_LENGTH})"
    bits = estimated_bits(token)
    if bits < MIN_BITS:
        return f"it has little entropy (about {bits:.0f} bits, want at least {MIN_BITS})"
    return None


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
