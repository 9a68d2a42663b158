"""The command audit can be read: ``GET /api/v1/commands`` and ``balans-edge
commands`` with the same filters, over the ``commands`` journal that the
actuation service writes for every command; real server, real database, the
real command line."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from balans_edge.core.components import Command, CommandCode, CommandOutcome

from conftest import T0, auth, base_config, small_site

BIN = Path(sys.executable).parent
HOUR = 3600


class ModulePings:
    """Answers pings of radio module 1001 as the DMesh driver does: first alive, then not."""

    name = "dmesh"

    def __init__(self) -> None:
        self.answers = iter([True, False])

    def handles(self, command: Command) -> bool:
        return (command.target, command.code) == ("module:1001", CommandCode.PING)

    async def execute(self, command: Command) -> CommandOutcome:
        return CommandOutcome(next(self.answers), "module 1001")


async def audited(server) -> list[int]:
    """Six commands through the actuation service: four for valves and pumps (the example
    plugin's actuator takes ``example:`` targets, nothing takes the meter's), two pings of a
    radio module."""
    ids = []
    clock = iter([T0 + i * HOUR for i in range(6)])
    server.actuation.clock = lambda: next(clock)
    server.actuation.add(ModulePings())
    for target, code, who, reason in (
        ("example:valve-1", CommandCode.VALVE_CLOSE, "api:op-1", "burst main"),
        ("example:valve-1", CommandCode.VALVE_OPEN, "api:op-2", "repaired"),
        ("W-1", CommandCode.RELAY_OFF, "api:op-1", "debt"),  # no actuator drives W-1: refused
        ("example:pump-2", CommandCode.PUMP_START, "modbus:127.0.0.1:5555", "tank low"),
    ):
        ids.append((await server.actuation.execute(Command(target, code, requested_by=who, reason=reason))).id)
    for _ in range(2):
        ids.append((await server.actuation.execute(Command("module:1001", CommandCode.PING, "api:op-2", "check"))).id)
    return ids


async def test_audit_over_http_with_filters_newest_first(make_server, client_for, tmp_path):
    server = await make_server(base_config(tmp_path))
    await server.storage.registry_apply(small_site())
    ids = await audited(server)
    http = client_for(server)

    async def listed(**params) -> list[int]:
        r = await http.get("/api/v1/commands", params=params, headers=auth("viewer"))
        assert r.status_code == 200, r.text
        return [c["id"] for c in r.json()["commands"]]

    assert await listed() == ids[::-1]
    first = (await http.get("/api/v1/commands", params={"limit": 1}, headers=auth("viewer"))).json()["commands"]
    assert first == [{"id": ids[5], "t": "2014-01-20T05:00:00Z", "target": "module:1001", "code": "ping",
                      "requested_by": "api:op-2", "reason": "check", "outcome": "failed",
                      "detail": "dmesh: module 1001"}]
    assert await listed(target="example:valve-1") == [ids[1], ids[0]]
    assert await listed(outcome="refused") == [ids[2]]
    assert await listed(outcome="done", requested_by="api:op-2") == [ids[4], ids[1]]
    assert await listed(code="pump_start") == [ids[3]]
    assert await listed(requested_by="modbus:127.0.0.1:5555") == [ids[3]]
    assert await listed(**{"from": "2014-01-20T01:00:00Z", "to": str(T0 + 3 * HOUR)}) == [ids[2], ids[1]]
    assert await listed(target="nothing") == []

    for params, words in (({"limit": "1001"}, "limit: expected an integer 1..1000"),
                          ({"from": "0001-01-01"}, "from: expected a time in"), ({"to": "soon"}, "to: expected")):
        r = await http.get("/api/v1/commands", params=params, headers=auth("viewer"))
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    assert (await http.get("/api/v1/commands")).status_code == 401


async def cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "balans-edge"), *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_audit_on_the_command_line(make_server, tmp_path):
    server = await make_server(base_config(tmp_path), http=False)
    ids = await audited(server)
    await server.storage.flush()
    config = tmp_path / "edge.toml"
    config.write_text(f'[storage]\nurl = "sqlite:{tmp_path / "balans.db"}"\n', encoding="utf-8")

    code, out, err = await cli("commands", "-c", str(config), cwd=tmp_path)
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:5] == ["id", "time", "(UTC)", "target", "code"]
    rows = [line.split()[:5] for line in lines if not line.startswith(" " * 7)]
    assert [r[0] for r in rows] == [str(i) for i in ids[::-1]]
    assert rows[3] == [str(ids[2]), "2014-01-20T02:00:00Z", "W-1", "relay_off", "refused"]

    code, out, err = await cli("commands", "-c", str(config), "--target", "example:valve-1", "--outcome", "done",
                               "--requested-by", "api:op-2", "--from", "2014-01-20", "--to", str(T0 + 2 * HOUR),
                               "--json", cwd=tmp_path)
    assert code == 0, err
    (found,) = json.loads(out)
    assert (found["id"], found["code"], found["reason"], found["t"]) == (ids[1], "valve_open", "repaired",
                                                                           "2014-01-20T01:00:00Z")
    code, out, _ = await cli("commands", "-c", str(config), "--code", "nothing", cwd=tmp_path)
    assert (code, out.strip()) == (0, "no commands")
    code, _, err = await cli("commands", "-c", str(config), "--from", "9999-01-01", cwd=tmp_path)
    assert code == 2 and "expected a time in 1970-01-01T00:00:00Z .. 2106-02-07T06:28:15Z" in err


async def test_readings_say_their_own_limit(make_server, client_for, tmp_path):
    server = await make_server(base_config(tmp_path))
    await server.storage.registry_apply(small_site())
    r = await client_for(server).get("/api/v1/meters/W-1/readings", params={"from": "2000-01-01", "to": "2014-01-01"},
                                     headers=auth("viewer"))
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "period too long for readings: at most 3660 days between from and to"
