"""A small pumping station's OPC UA server for the client and actuator tests:
asyncua's own server on 127.0.0.1 with a tank level, a pump state, a flow
totaliser, a discharge pressure, and valves that move a while after a method
call or a write to their command node, the way a limit switch follows an
actuator. Optionally secure: its own certificate, a trust folder for client
certificates and user names with passwords."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Node, Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography.hazmat.primitives import serialization

from balans_edge.plugins.opcua import pki

NAMESPACE = "urn:balans-edge:test:pumping-station"
SERVER_URI = "urn:balans-edge:test:station-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# name -> (node id string within the station's namespace, VariantType, initial value)
VARIABLES: dict[str, tuple[str, ua.VariantType, Any]] = {
    "level": ("Tank.Level", ua.VariantType.Double, 3.25),
    "pump": ("Pump1.Running", ua.VariantType.Boolean, False),
    "total": ("Outflow.Total", ua.VariantType.UInt32, 0),
    "pressure": ("Discharge.Pressure", ua.VariantType.Int16, 0),
    "v1_state": ("Valve1.IsOpen", ua.VariantType.Boolean, True),
    "v2_command": ("Valve2.Command", ua.VariantType.Int16, 1),
    "v2_state": ("Valve2.IsOpen", ua.VariantType.Boolean, True),
    "v3_command": ("Valve3.Command", ua.VariantType.Boolean, False),
    "v3_state": ("Valve3.IsOpen", ua.VariantType.Boolean, False),
}
WRITABLE = {"v2_command", "v3_command"}


class Users:
    """User name and password -> a user; anything else is refused (BadUserAccessDenied)."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if not self.users:
            return User(role=UserRole.User)
        if username in self.users and self.users[username] == password:
            return User(role=UserRole.User, name=username)
        return None


@dataclass
class Station:
    port: int = field(default_factory=free_port)
    folder: Path | None = None
    """Secure when set: own/ (the server's certificate, made on first start) and trusted/."""
    users: dict[str, str] = field(default_factory=dict)
    valve_delay: float = 0.1
    """How long a valve takes to reach its end position after a command."""
    calls: list[tuple[str, list[ua.Variant]]] = field(default_factory=list)
    """Every method call received: its name and its arguments as sent."""
    server: Server | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    ns: int = 0
    values: dict[str, Any] = field(default_factory=dict)
    """Values kept across a restart (the PLC's memory)."""
    _follow: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/station/"

    @property
    def cert_path(self) -> Path:
        assert self.folder is not None
        return self.folder / "own" / "cert.der"

    @property
    def trusted(self) -> Path:
        assert self.folder is not None
        return self.folder / "trusted"

    def node_id(self, name: str) -> str:
        return f"ns=2;s={VARIABLES[name][0]}" if name in VARIABLES else f"ns=2;s={name}"

    async def start(self) -> Station:
        server = Server(user_manager=Users(self.users))
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("test pumping station")
        await server.set_application_uri(SERVER_URI)
        if self.folder is not None:
            await self._secure(server)
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.ns = await server.register_namespace(NAMESPACE)
        assert self.ns == 2
        station = await server.nodes.objects.add_object(ua.NodeId("Station", self.ns), ua.QualifiedName("Station",
                                                                                                        self.ns))
        for name, (sid, vtype, initial) in VARIABLES.items():
            value = self.values.get(name, initial)
            node = await station.add_variable(ua.NodeId(sid, self.ns), ua.QualifiedName(sid, self.ns),
                                              ua.Variant(value, vtype))
            if name in WRITABLE:
                await node.set_writable()
            self.nodes[name] = node
        valve = await station.add_object(ua.NodeId("Valve1", self.ns), ua.QualifiedName("Valve1", self.ns))
        ramp = ua.Argument(Name="ramp_s", DataType=ua.NodeId(ua.ObjectIds.UInt16), ValueRank=-1)
        for verb, state in (("Open", True), ("Close", False)):
            await valve.add_method(ua.NodeId(f"Valve1.{verb}", self.ns), ua.QualifiedName(verb, self.ns),
                                   self._method(verb, state), [ramp], [])
        await server.start()
        self.server = server
        self._follow = asyncio.create_task(self._follow_commands())
        return self

    async def _secure(self, server: Server) -> None:
        assert self.folder is not None
        own = pki.Pki(self.folder)
        own.make_folders()
        if not own.cert_der.exists():
            key = pki.new_key()
            cert = pki.make_certificate(key, "test station", SERVER_URI, ["127.0.0.1", "localhost",
                                                                            socket.gethostname()])
            pki.write_key(own.key_pem, key)
            pki.write_certificate(own, cert)
        await server.load_certificate(str(own.cert_der))
        await server.load_private_key(str(own.key_pem))
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                                    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign])
        store = TrustStore([self.trusted], [])
        await store.load()
        options = CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
        server.set_certificate_validator(CertificateValidator(options, store))

    def trust(self, cert_path: Path) -> None:
        """Put a client certificate into the trust folder (before ``start``)."""
        cert = pki.load_certificate(cert_path)
        self.trusted.mkdir(parents=True, exist_ok=True)
        (self.trusted / f"{pki.thumbprint(cert)}.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))

    def _method(self, verb: str, state: bool) -> Any:
        async def method(parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant]:
            self.calls.append((verb, list(args)))
            asyncio.get_running_loop().call_later(
                self.valve_delay, lambda: asyncio.ensure_future(self.set("v1_state", state)))
            return []

        return method

    async def _follow_commands(self) -> None:
        """The PLC program: valve 2 follows its Int16 command (1 open, 0 closed);
        valve 3 is stuck and never follows."""
        seen = await self.get("v2_command")
        while True:
            await asyncio.sleep(0.01)
            command = await self.get("v2_command")
            if command != seen:
                seen = command
                await asyncio.sleep(self.valve_delay)
                await self.set("v2_state", command == 1)

    async def stop(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            await asyncio.gather(self._follow, return_exceptions=True)
            self._follow = None
        if self.server is not None:
            for name in VARIABLES:
                value = await self.get(name)
                if value is not None:  # a bad status has no value to keep
                    self.values[name] = value
            await _stop_clock(self.server)
            await self.server.stop()
            self.server = None
            await asyncio.sleep(0.05)

    async def set(self, name: str, value: Any, *, status: int | None = None, at: float | None = None) -> None:
        """Change a value from the station's side (its program), optionally with a
        status code and a source timestamp."""
        assert self.server is not None
        vtype = VARIABLES[name][1]
        stamp = datetime.fromtimestamp(at, UTC) if at is not None else datetime.now(UTC)
        dv = ua.DataValue(ua.Variant(value, vtype), StatusCode=ua.StatusCode(status if status is not None
                                                                              else ua.StatusCodes.Good),
                          SourceTimestamp=stamp, ServerTimestamp=datetime.now(UTC))
        await self.server.write_attribute_value(self.nodes[name].nodeid, dv)

    async def get(self, name: str) -> Any:
        dv = await self.nodes[name].read_data_value(raise_on_bad_status=False)
        return dv.Value.Value if dv.Value is not None else None


@asynccontextmanager
async def station(**kwargs: Any) -> AsyncIterator[Station]:
    s = await Station(**kwargs).start()
    try:
        yield s
    finally:
        await s.stop()


async def _stop_clock(server: Server) -> None:
    """Stop the task that writes the server's CurrentTime every second before
    stopping the server, which otherwise waits for its next tick (up to 1 s)."""
    iserver = server.iserver
    task = iserver.time_task
    if task is not None:
        iserver._time_task_stop = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        iserver.time_task = None
