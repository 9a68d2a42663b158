"""``[[plugins.opcua.devices]]`` and ``[[plugins.opcua.actuators]]``: the OPC UA
servers of pumping stations read as a client, and the valves, pumps and relays
driven through them.

Kept apart from ``client.py`` so that loading the plugin (every command of the
command line does) does not import asyncua. Node ids are checked here in
their string form (``ns=2;s=Tank.Level``, ``nsu=urn:plc:station;s=Tank.Level``,
``ns=3;i=1001``); a namespace URI is resolved to its index on the server at
every connection, because a server may number its namespaces differently
after a restart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from balans_edge.core.readback import same
from balans_edge.plugins.common.client_config import (
    ActuatorSettings,
    ClientDevice,
    DeviceName,
    StaleAfter,
    StoreEvery,
)
from balans_edge.plugins.common.tag_settings import TagSettings
from balans_edge.settings import setting

Policy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep"]
Mode = Literal["Sign", "SignAndEncrypt"]
ReadMode = Literal["subscription", "poll"]
Scalar = bool | int | float | str
"""A value written to or expected from a node, or a method argument (its type
on the wire is the node's or the argument's declared DataType)."""

NODE_ID = re.compile(r"(?:(?P<ns>ns=\d+)|(?P<nsu>nsu=[^;]+));(?P<kind>[isgb])=(?P<id>.+)|(?P<kind0>[isgb])=(?P<id0>.+)")
GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
ENDPOINT = re.compile(r"opc\.tcp://[^/:\s]+(?::\d{1,5})?(?:/\S*)?")


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node id as configured: a namespace index or URI, and the identifier."""

    namespace_uri: str | None
    namespace_index: int
    kind: str
    """i (numeric), s (string), g (GUID) or b (opaque, base64)."""
    identifier: str

    def with_index(self, index: int) -> str:
        """The string form with a namespace index (what asyncua parses)."""
        return f"ns={index};{self.kind}={self.identifier}"


def parse_node_id(text: str) -> NodeRef:
    """``ns=<index>;`` or ``nsu=<uri>;`` (optional, default namespace 0), then
    ``i=``, ``s=``, ``g=`` or ``b=`` and the identifier; ValueError otherwise."""
    m = NODE_ID.fullmatch(text.strip())
    if m is None:
        raise ValueError(f'"{text}" is not a node id (expected e.g. "ns=2;s=Tank.Level" or '
                         '"nsu=urn:plc:station;s=Tank.Level")')
    kind, identifier = (m["kind"], m["id"]) if m["kind"] else (m["kind0"], m["id0"])
    if kind == "i" and not identifier.isdigit():
        raise ValueError(f'"{text}": a numeric node id (i=) needs digits')
    if kind == "g" and not GUID.fullmatch(identifier):
        raise ValueError(f'"{text}": a GUID node id (g=) looks like 09087e75-8e5e-499b-954f-f2a9603db28a')
    if m["nsu"]:
        return NodeRef(m["nsu"][4:], 0, kind, identifier)
    return NodeRef(None, int(m["ns"][3:]) if m["ns"] else 0, kind, identifier)


def _node_id(value: str) -> str | None:
    try:
        parse_node_id(value)
    except ValueError as exc:
        return str(exc)
    return None


def _optional_node_id(value: str) -> str | None:
    return _node_id(value) if value else None


def _endpoint(value: str) -> str | None:
    return None if ENDPOINT.fullmatch(value) else f'expected an endpoint URL such as "opc.tcp://10.20.0.7:4840/", ' \
                                                  f'got "{value}"'


@dataclass(frozen=True, kw_only=True)
class TagConfig(TagSettings):
    """One value of a pumping station's OPC UA server: its node, how it is scaled,
    and whether the server reports changes (subscription) or it is read (poll)."""

    node_id: Annotated[str, setting(check=_node_id, doc=(
        "\"ns=2;s=Tank.Level\", \"nsu=<namespace URI>;s=...\" or \"ns=3;i=1001\""))]
    read: Annotated[ReadMode, setting(doc="subscription (the server reports changes) or poll (read every "
                                          "interval_s)")] = "subscription"
    interval_s: Annotated[float, setting(range=(0.01, 86400.0), doc=(
        "subscription: the sampling interval asked of the server; poll: the poll interval"))] = 1.0

    @property
    def node(self) -> NodeRef:
        return parse_node_id(self.node_id)


@dataclass(frozen=True, kw_only=True)
class OpcuaSettings:
    """The settings of a station's server that are OPC UA's own: its endpoint,
    security, user and timing; ``DeviceConfig`` goes on with those of every
    protocol's device."""

    name: DeviceName
    endpoint: Annotated[str, setting(check=_endpoint, doc="the server's endpoint URL, \"opc.tcp://host:port/path\"")]
    security_policy: Annotated[Policy, setting(doc="None: no signing, no encryption")] = "None"
    security_mode: Annotated[Mode, setting(doc="with a policy other than None")] = "SignAndEncrypt"
    pki_dir: Annotated[str, setting(doc=(
        "the client's certificate and key (own/) and server certificates trusted on first "
        "use (servers/)"))] = "var/opcua-client-pki"
    certificate: Annotated[str, setting(doc=(
        "the client's certificate (DER or PEM); default <pki_dir>/own/client_cert.der; created with its key when both "
        "are missing"))] = ""
    private_key: Annotated[str, setting(doc="its private key (PEM); default <pki_dir>/own/client_key.pem")] = ""
    application_uri: Annotated[str, setting(doc=(
        "the client's application URI, written into a certificate it creates (default urn:<host "
        "name>:balans-edge:client)"))] = ""
    server_certificate: Annotated[str, setting(doc="the server's certificate to trust (DER or PEM)")] = ""
    trust_on_first_use: Annotated[bool, setting(doc=(
        "without server_certificate: trust the certificate the server shows first, keep it in <pki_dir>/servers/ and "
        "refuse another"))] = False
    username: Annotated[str, setting(doc="the session's user; anonymous without")] = ""
    password: Annotated[str, setting(secret=True, doc="the user's password (or password_env)")] = ""
    timeout_s: Annotated[float, setting(range=(0.05, 600.0), doc=(
        "wait this long for each answer, and for a connection"))] = 4.0
    watchdog_s: Annotated[float, setting(range=(0.05, 600.0), doc=(
        "check the session this often (a read of the server's state)"))] = 5.0
    publishing_interval_s: Annotated[float, setting(range=(0.01, 3600.0), doc=(
        "how often the server sends the changes of subscribed tags"))] = 1.0
    keepalive_s: Annotated[float, setting(range=(0.05, 3600.0), doc=(
        "a subscription without changes says it is alive this often"))] = 5.0
    stale_after: Annotated[StaleAfter, setting(doc=(
        "stale without a value for this many poll intervals (subscriptions: keep-alives)"))] = 2.0
    store_every_s: Annotated[StoreEvery, setting(doc=(
        "store unchanged samples this often (0: only changes of subscribed tags, every poll)"))] = 60.0


@dataclass(frozen=True, kw_only=True)
class DeviceConfig(ClientDevice[TagConfig], OpcuaSettings):
    """An OPC UA server of a pumping station (or its PLC), read as a client."""

    def own_problems(self) -> list[str]:
        where = f'device "{self.name}"'
        problems = []
        if self.security_policy != "None" and not self.server_certificate and not self.trust_on_first_use:
            problems.append(f"{where}: security_policy {self.security_policy} needs server_certificate (the "
                            "server's certificate to trust) or trust_on_first_use = true")
        if self.password and not self.username:
            problems.append(f"{where}: password without username")
        if self.username and not self.password:
            problems.append(f"{where}: username {self.username!r} needs password (or password_env)")
        return problems

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return f"DeviceConfig(name={self.name!r}, endpoint={self.endpoint!r}, policy={self.security_policy!r})"

    @property
    def secure(self) -> bool:
        return self.security_policy != "None"

    @property
    def certificate_path(self) -> Path:
        return Path(self.certificate) if self.certificate else Path(self.pki_dir) / "own" / "client_cert.der"

    @property
    def private_key_path(self) -> Path:
        return Path(self.private_key) if self.private_key else Path(self.pki_dir) / "own" / "client_key.pem"

    @property
    def first_use_path(self) -> Path:
        """Where the server certificate trusted on first use is kept."""
        return Path(self.pki_dir) / "servers" / f"{self.name}.der"

    def describe(self) -> str:
        security = f"{self.security_policy} {self.security_mode}" if self.secure else "no security"
        user = f", user {self.username}" if self.username else ""
        return f"{self.endpoint} ({security}{user})"


# -- actuators -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ActuatorConfig(ActuatorSettings):
    """A valve, pump or relay switched by writing a node or calling a method of
    a device's server, and confirmed by reading a node back."""

    write_node: Annotated[str, setting(check=_optional_node_id, doc="a node written to switch (or use methods)")] = ""
    on_value: Annotated[Scalar, setting(doc="written to open, start or switch on")] = True
    off_value: Annotated[Scalar, setting(doc="written to close, stop or switch off")] = False
    object_node: Annotated[str, setting(check=_optional_node_id, doc="the object whose methods switch it")] = ""
    on_method: Annotated[str, setting(check=_optional_node_id, doc="method called to open, start or switch on")] = ""
    off_method: Annotated[str, setting(check=_optional_node_id, doc="method called to close, stop or switch off")] = ""
    on_args: Annotated[list[Scalar], setting(doc="arguments of on_method")] = field(default_factory=list)
    off_args: Annotated[list[Scalar], setting(doc="arguments of off_method")] = field(default_factory=list)
    readback_node: Annotated[str, setting(check=_node_id, doc="the node that shows the resulting state")]
    readback_on: Annotated[Scalar, setting(doc="read back once open, running or on")] = True
    readback_off: Annotated[Scalar, setting(doc="read back once closed, stopped or off")] = False
    confirm_timeout_s: Annotated[float, setting(range=(0.05, 3600.0), doc="give up confirming after this long")] = 10.0
    confirm_every_s: Annotated[float, setting(range=(0.01, 60.0), doc="read the state back this often")] = 0.2

    def __post_init__(self) -> None:
        where = f'actuator "{self.target}"'
        methods = bool(self.object_node or self.on_method or self.off_method)
        if self.write_node and methods:
            raise ValueError(f"{where}: give either write_node or object_node with on_method and off_method, not both")
        if not self.write_node and not methods:
            raise ValueError(f"{where}: give write_node (a node written) or object_node with on_method and "
                             "off_method (methods called)")
        if methods and not (self.object_node and self.on_method and self.off_method):
            raise ValueError(f"{where}: a method call needs object_node, on_method and off_method")
        if self.write_node and same(self.on_value, self.off_value):
            raise ValueError(f"{where}: on_value and off_value are both {self.on_value!r}")
        if same(self.readback_on, self.readback_off):
            raise ValueError(f"{where}: readback_on and readback_off are both {self.readback_on!r}")

    @property
    def by_method(self) -> bool:
        return bool(self.object_node)
