"""API tokens: their hashed form, new ones, and what makes one weak.

In core because every protocol that accepts the API's users (the HTTP API,
the OPC UA server) compares tokens the same way.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections import Counter

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
