"""The site of the OPC UA server tests: a real balans-edge server with a small
registry whose readings went through ingest, intervals and balances, a
trusted client certificate, a test actuator, and the node-opcua scenario
runner (an OPC UA stack independent of the server's asyncua)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.model import Concentrator, Group, GroupInput, Meter, RadioModule, Resource, Status
from balans_edge.plugins.opcua import pki
from balans_edge.plugins.opcua.server import OpcuaServer

from conftest import TOKENS, Valves, auth, base_config, eventually, peer, seed_registry

HOUR = 3600
PER_HOUR = {1: 3217, 2: 1234, 3: 77}
"""Pulses per hour by channel of module 1001: IN (1 l), W-V (1 l), W-R (10 l)."""
BASE_W_V = 12.5
NODE_DIR = Path(__file__).resolve().parent / "opcua_peer"
NS = "urn:balans-edge:opcua"
OPERATOR = ("scada-op", "operator-password-1")
VIEWER = ("test-viewer", TOKENS["viewer"])
"""An HTTP API user (api_users = true): its token is its OPC UA password."""
CLIENT_URI = "urn:balans-edge-tests:node-opcua"
_plans = itertools.count()


def node() -> str:
    """node, with node-opcua installed next to the scenario script (`make test` runs `npm ci` there)."""
    path = peer("node")
    if not (NODE_DIR / "node_modules" / "node-opcua-client").is_dir():
        message = "node-opcua is not installed (run `make test`, or `npm ci --prefix tests/opcua_peer`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return path


# the site ----------------------------------------------------------------------------------------


@dataclass
class ClientCert:
    """A node-opcua client identity: certificate and key files, its own PKI folder."""

    cert: Path
    key: Path
    pki: Path
    uri: str = CLIENT_URI


def make_client_cert(folder: Path, name: str, uri: str = CLIENT_URI) -> ClientCert:
    folder.mkdir(parents=True, exist_ok=True)
    key = pki.new_key()
    cert = pki.make_certificate(key, name, uri, ["localhost"], client=True, server=False)
    paths = ClientCert(folder / f"{name}.pem", folder / f"{name}-key.pem", folder / f"{name}-pki", uri)
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.write_key(paths.key, key)
    return paths


@dataclass
class Site:
    server: Any
    opcua: OpcuaServer
    client: Any
    hour: int
    """Start of the hour of the newest readings."""
    trusted: ClientCert
    tmp: Path
    valves: Valves

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.opcua.port}/balans-edge/"

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        r = await self.client.get(path, params=params, headers=auth("viewer"))
        assert r.status_code == 200, r.text
        return r.json()

    def session(self, user: tuple[str, str] | None = OPERATOR, cert: ClientCert | None = None,
                policy: str = "Basic256Sha256", mode: str = "SignAndEncrypt") -> dict[str, Any]:
        cert = cert or self.trusted
        conf: dict[str, Any] = {"policy": policy, "mode": mode, "certificate": str(cert.cert),
                                "privateKey": str(cert.key), "pki": str(cert.pki), "applicationUri": cert.uri,
                                "trustServer": str(self.opcua.pki.cert_pem)}
        if user:
            conf["user"], conf["password"] = user
        return conf

    async def run(self, sessions: dict[str, dict[str, Any]], steps: list[dict[str, Any]],
                  on_wait: Callable[[str], Awaitable[None]] | None = None) -> dict[str, dict[str, Any]]:
        """Run one node-opcua scenario; results by step id (or index)."""
        plan = self.tmp / f"plan-{next(_plans)}.json"
        plan.write_text(json.dumps({"endpoint": self.endpoint, "sessions": sessions, "steps": steps}))
        proc = await asyncio.create_subprocess_exec(
            node(), str(NODE_DIR / "scenario.js"), str(plan), cwd=NODE_DIR, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        results: dict[str, dict[str, Any]] = {}

        async def follow() -> None:
            assert proc.stdout is not None and proc.stdin is not None
            while line := await proc.stdout.readline():
                text = line.decode(errors="replace").strip()
                if not text.startswith("@@ "):
                    continue
                report = json.loads(text[3:])
                if report["op"] == "wait" and "step" not in report:
                    if on_wait is not None:
                        await on_wait(report["label"])
                    proc.stdin.write(b"go\n")
                    await proc.stdin.drain()
                    continue
                results[report["id"] or str(report["step"])] = report

        try:
            await asyncio.wait_for(follow(), 60)
            await asyncio.wait_for(proc.wait(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, (await proc.stderr.read()).decode()[-2000:] if proc.stderr else ""
        return results


def site_registry(install: int) -> dict[str, list]:
    return {
        "concentrators": [Concentrator(7, name="North")],
        "modules": [RadioModule(1001, 7, channels=0b111, hops=2, rssi=-71, battery_mv=3550, firmware="1.4.2"),
                    RadioModule(1002, 7, channels=0b001)],
        "meters": [
            Meter("D-IN", Resource.WATER, "m3", 0.001, install, module_id=1002, channel=1),
            Meter("IN", Resource.WATER, "m3", 0.001, install, module_id=1001, channel=1, group_id="D"),
            Meter("W-V", Resource.WATER, "m3", 0.001, install, module_id=1001, channel=2, group_id="G",
                  base_reading=BASE_W_V, flags=frozenset({"valve", "relay"})),
            Meter("W-R", Resource.WATER, "m3", 0.01, install, module_id=1001, channel=3, group_id="G",
                  flags=frozenset({"relay"})),
        ],
        "groups": [Group("D", Resource.WATER, "m3", (GroupInput("D-IN"),), name="District", level="district"),
                   Group("G", Resource.WATER, "m3", (GroupInput("IN"),), name="House 1", parent_id="D",
                         loss_norm_pct=5.0)],
    }


def readings(hour: int, hours: int = 6) -> ReadingBatch:
    """Hourly readings up to ``hour``; the newest of W-V reports its valve closed."""
    rows = []
    for k in range(hours):
        t = hour - (hours - 1 - k) * HOUR
        for channel, rate in PER_HOUR.items():
            status = Status.VALVE_CLOSED if channel == 2 and k == hours - 1 else 0
            rows.append((1001, channel, t, 50_000 + rate * k, int(status)))
        rows.append((1002, 1, t, 10_000 + 4000 * k, 0))
    a = np.array(rows, dtype=np.int64)
    return ReadingBatch(*(a[:, i] for i in range(5)))


MakeSite = Callable[..., Awaitable[Site]]


def site_factory(tmp_path: Path, make_server: Any, client_for: Any) -> MakeSite:
    """What a test module's ``make_site`` fixture returns: starts a site (seeded and ingested unless told not to)."""

    async def start(*, seed: bool = True, ingest: bool = True, **options: Any) -> Site:
        now = int(time.time())
        hour = now - now % HOUR
        if seed:
            await seed_registry(tmp_path / "balans.db", site_registry(hour - 12 * HOUR))
        folder = pki.Pki(tmp_path / "server-pki")
        trusted = make_client_cert(tmp_path / "clients", "trusted")
        folder.trusted.mkdir(parents=True, exist_ok=True)
        (folder.trusted / "scada.pem").write_bytes(trusted.cert.read_bytes())
        server_options = {"enabled": True, "port": 0, "pki_dir": str(folder.root), "api_users": True,
                          "users": [{"name": OPERATOR[0], "role": "operator", "password": OPERATOR[1]}],
                          "application_uri": "urn:balans-edge-tests:server", "age_interval_s": 1.0, **options}
        config = base_config(tmp_path, intervals={"debounce_s": 0.0}, balance={"debounce_s": 0.0},
                             plugins={"opcua": {"server": server_options}})
        server = await make_server(config)
        opcua = next(c for _, c in server.components if isinstance(c, OpcuaServer))
        valves = Valves()
        server.actuation.add(valves)
        site = Site(server, opcua, client_for(server), hour, trusted, tmp_path, valves)
        if ingest:
            await server.ingest.ingest(readings(hour))
            await server.intervals.process()
            await server.balance.process()
            await eventually(lambda: opcua.values is not None and opcua.values.periods
                             and opcua.values.hour_t[opcua.values.row_of_meter["W-V"]] == hour - HOUR, 5.0)
        return site

    return start


def unix(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def by_name(refs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["browseName"]: r for r in refs}


def node_id(ident: str) -> str:
    return f"ns={{ns}};s={ident}"


async def ua_client(site: Site, user: tuple[str, str] | None = OPERATOR) -> Any:
    """An asyncua client over Basic256Sha256 SignAndEncrypt with the trusted certificate."""
    from asyncua import Client
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    client = Client(site.endpoint)
    client.application_uri = CLIENT_URI
    await client.set_security(SecurityPolicyBasic256Sha256, str(site.trusted.cert), str(site.trusted.key),
                              server_certificate=str(site.opcua.pki.cert_der),
                              mode=__import__("asyncua").ua.MessageSecurityMode.SignAndEncrypt)
    if user:
        client.set_user(user[0])
        client.set_password(user[1])
    return client
