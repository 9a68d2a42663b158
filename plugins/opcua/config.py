"""``[plugins.opcua.server]``: the OPC UA server's configuration.

Kept apart from ``server.py`` so that loading the plugin (every command of
the command line does) does not import asyncua; the server module is
imported only when the server is started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from balans_edge.core.roles import Role
from balans_edge.plugins.common.listen import ListenConfig
from balans_edge.settings import setting

POLICIES = ("None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
"""Security policies the server can offer (asyncua 2.1 implements these)."""
MODES = ("Sign", "SignAndEncrypt")
DEFAULT_POLICIES = ["Basic256Sha256", "Aes128_Sha256_RsaOaep"]
DEFAULT_MODES = ["Sign", "SignAndEncrypt"]


def _path(value: str) -> str | None:
    if not value.startswith("/") or "//" in value:
        return f'expected a path such as "/balans-edge/", got "{value}"'
    return None


def _password(value: str) -> str | None:
    return None if len(value) >= 8 else "expected at least 8 characters"


@dataclass(frozen=True)
class UserConfig:
    """``[[plugins.opcua.server.users]]``: who may open a session, with which role."""

    name: Annotated[str, setting(doc="the session's user name")]
    role: Annotated[Role, setting(doc="what the user may do: viewer reads, operator also calls the command methods")]
    password: Annotated[str, setting(secret=True, check=_password, doc="at least 8 characters")]

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return f"UserConfig(name={self.name!r}, role={self.role!r})"


def _check_choices(key: str, values: list[str], known: tuple[str, ...]) -> str | None:
    unknown = [v for v in values if v not in known]
    if unknown:
        return f"{key}: unknown {', '.join(map(repr, unknown))} (known: {', '.join(known)})"
    if not values:
        return f"{key}: name at least one of {', '.join(known)}"
    return None


@dataclass(frozen=True)
class ServerConfig(ListenConfig):
    """``[plugins.opcua.server]``: the OPC UA server for SCADA and MES."""

    port: Annotated[int, setting(range=(0, 65535), doc="TCP port (0: any free port)")] = 4840
    path: Annotated[str, setting(check=_path, doc="path of the endpoint URL")] = "/balans-edge/"
    application_uri: Annotated[str, setting(doc=(
        "the server's application URI (default: urn:<host name>:balans-edge); it is written into the "
        "certificate"))] = ""
    server_name: Annotated[str, setting(doc="application name clients show")] = "balans-edge"
    pki_dir: Annotated[str, setting(doc=(
        "the server's certificate and key (own/), trusted client certificates (trusted/), refused "
        "ones (rejected/)"))] = "var/opcua-pki"
    security_policies: Annotated[list[str], setting(doc=(
        f"offered policies, any of {', '.join(POLICIES)}; None (no signing, no encryption) only when "
        "listed"))] = field(default_factory=lambda: list(DEFAULT_POLICIES))
    security_modes: Annotated[list[str], setting(doc=(
        f"message security modes offered with every policy other than None: {' and/or '.join(MODES)}"))] = \
        field(default_factory=lambda: list(DEFAULT_MODES))
    users: Annotated[list[UserConfig], setting(doc="who may open a session: `{ name, role, password }` (or "
                                                   "`password_env`)")] = field(default_factory=list)
    api_users: Annotated[bool, setting(doc=(
        "also accept the HTTP API's users: user name and bearer token as password"))] = False
    anonymous_role: Annotated[Literal["none", "viewer"], setting(doc='"viewer" allows anonymous read-only '
                                                                    "sessions")] = "none"
    max_connections: Annotated[int, setting(range=(1, 10000), doc="connections beyond are closed")] = 32
    method_timeout_s: Annotated[float, setting(range=(0.1, 600.0), doc=(
        "a command not done by then is answered GoodCompletesAsynchronously"))] = 10.0
    age_interval_s: Annotated[float, setting(range=(1.0, 3600.0), doc="how often every DataAge is rewritten")] = 5.0
    registry_poll_s: Annotated[float, setting(range=(1.0, 86400.0), doc=(
        "re-read the registry this often even when its version did not change (radio module hops, RSSI and battery are "
        "updated without one)"))] = 60.0

    def __post_init__(self) -> None:
        problem = (_check_choices("security_policies", self.security_policies, POLICIES)
                   or _check_choices("security_modes", self.security_modes, MODES))
        if problem:
            raise ValueError(problem)
        names = [u.name for u in self.users]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"users: {', '.join(duplicates)} named more than once")

    @property
    def secure_policies(self) -> list[str]:
        return [p for p in self.security_policies if p != "None"]
