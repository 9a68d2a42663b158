"""Every DMesh command (ping, reporting interval, profile request, firmware
push) goes through the actuation service: it is in ``GET /api/v1/commands``
with who asked and its final outcome, and an observer plugin's
``observe_commands`` sees it, also when the module's answer comes late. Real
server over HTTP, the real DMesh driver, the simulated concentrator over TCP."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from balans_edge import hookimpl
from balans_edge.core.components import Command, CommandCode
from balans_edge.core.context import Plugin
from balans_edge.plugins.dmesh import codec
from balans_edge.plugins.dmesh.codec import CommandResultCode
from balans_edge.plugins.dmesh.concentrator import ConcentratorSettings, SimulatedConcentrator
from balans_edge.plugins.dmesh.firmware import sign_image

from conftest import T0, auth, base_config, eventually, small_site

CID = 7
KEY = "key-of-concentrator-7"
HOUR = 3600
VENDOR = Ed25519PrivateKey.generate()
PUBLIC = VENDOR.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
IMAGE = bytes(range(256)) * 9


class Observer(Plugin):
    """An in-test plugin: each command it is told about, with the audit record stored at that moment."""

    def __init__(self) -> None:
        self.seen: list[tuple[Command, dict[str, Any] | None]] = []

    @hookimpl
    async def observe_commands(self, command: Command) -> None:
        assert command.id is not None
        self.seen.append((command, await self.context.queries.journal_get("commands", command.id)))

    def outcomes(self, command_id: int) -> list[str]:
        return [c.outcome for c, _ in self.seen if c.id == command_id]


async def start(make_server, plugins, tmp_path, **dmesh) -> tuple[Any, Any, Observer]:
    observer = Observer()
    plugins.register(observer, "observer")
    table = {"port": 0, "concentrators": [{"id": CID, "key": KEY}], "backfill": False,
             "firmware_public_key": PUBLIC.hex(), **dmesh}
    server = await make_server(base_config(tmp_path, plugins={"dmesh": table}), plugins_=plugins)
    await server.storage.registry_apply(small_site())
    driver = next(c for _, c in server.components if c.name == "dmesh-driver")
    return server, driver, observer


async def connected(port: int, settings: dict[str, Any] | None = None, **kw: Any) -> SimulatedConcentrator:
    c = SimulatedConcentrator(ConcentratorSettings(CID, KEY.encode(), port=port, **{
        "reconnect_s": 0.1, "firmware_public_key": PUBLIC, **(settings or {})}), **kw)
    c.start()
    async with asyncio.timeout(5):
        await c.connected.wait()
    return c


async def test_ping_interval_profile_and_firmware_are_audited_and_observed(make_server, plugins, client_for,
                                                                            tmp_path):
    server, driver, observer = await start(make_server, plugins, tmp_path)
    c = await connected(driver.port, profile=lambda m, ch, t0, t1: [1000 + (h - t0) // HOUR
                                                                    for h in range(t0, t1, HOUR)])
    try:
        http = client_for(server)
        url = "/api/v1/dmesh/modules/1001/commands"
        bodies = [
            {"command": "ping", "reason": "is it alive"},
            {"command": "set_interval", "seconds": 900, "reason": "save battery"},
            {"command": "profile_request", "channel": 1, "from": T0, "to": T0 + 3 * HOUR, "reason": "gap"},
        ]
        answers = []
        for body in bodies:
            r = await http.post(url, json=body, headers=auth("operator"))
            assert r.status_code == 200, r.text
            answers.append(r.json())
        firmware = {"image": base64.b64encode(IMAGE).decode(), "reason": "security fix",
                    "signature": sign_image(VENDOR, 7, "concentrator", IMAGE, "1.5.0")}
        r = await http.post(f"/api/v1/dmesh/concentrators/{CID}/firmware", json=firmware, headers=auth("admin"))
        assert r.status_code == 200, r.text
        answers.append(r.json())

        sent = [(p.code, p.args) for p in c.received if isinstance(p, codec.Command)]
        assert sent == [(codec.CommandCode.PING_MODULE, ()), (codec.CommandCode.SET_INTERVAL, (900,)),
                        (codec.CommandCode.PROFILE_REQUEST, (1, T0, T0 + 3 * HOUR))]
        assert c.firmware_images == {7: IMAGE}
        # The profile the module sent back was ingested: the request did its work.
        keys = await server.storage.meter_keys()
        assert (await server.storage.readings(keys["W-1"], T0, T0 + 3 * HOUR)).counter.tolist() == [1000, 1001, 1002]

        r = await http.get("/api/v1/commands", headers=auth("viewer"))
        audit = r.json()["commands"][::-1]
        assert [(a["id"], a["code"], a["target"], a["requested_by"], a["outcome"]) for a in audit] == [
            (answers[0]["id"], "ping", "module:1001", "api:test-operator", "done"),
            (answers[1]["id"], "set_interval", "module:1001", "api:test-operator", "done"),
            (answers[2]["id"], "profile_request", "module:1001", "api:test-operator", "done"),
            (answers[3]["id"], "firmware_push", f"concentrator:{CID}", "api:test-admin", "accepted"),
        ]
        assert audit == answers  # the API answered each command as the audit keeps it
        assert [a["reason"] for a in audit] == ["is it alive", "save battery", "gap", "security fix"]
        assert audit[1]["detail"] == "dmesh: 900 s: DONE"
        assert audit[2]["detail"] == "dmesh: channel 1 2014-01-20T00:00:00Z..2014-01-20T03:00:00Z: DONE"
        assert audit[3]["detail"].startswith("dmesh: image 7 for the concentrator, version 1.5.0")
        assert audit[3]["detail"].endswith(": ACCEPTED")

        # The observer was told once per command, with its final outcome, after the audit stored it.
        assert [(c.id, c.code, c.requested_by, c.outcome) for c, _ in observer.seen] == [
            (a["id"], CommandCode(a["code"]), a["requested_by"], a["outcome"]) for a in audit
        ]
        assert [stored for _, stored in observer.seen] == [{**a, "t": c.t} for a, (c, _) in zip(audit, observer.seen,
                                                                                                 strict=True)]
        assert all(c.detail == a["detail"] for a, (c, _) in zip(audit, observer.seen, strict=True))
    finally:
        await c.stop()


async def test_a_late_answer_is_the_final_outcome_in_the_audit_and_for_the_observer(make_server, plugins, client_for,
                                                                                    tmp_path):
    server, driver, observer = await start(make_server, plugins, tmp_path, command_timeout_s=0.3)
    c = await connected(driver.port, on_command=lambda command: (CommandResultCode.DONE, 0, 0.8))
    try:
        http = client_for(server)
        r = await http.post("/api/v1/dmesh/modules/1002/commands", headers=auth("operator"),
                            json={"command": "set_interval", "seconds": 3600, "reason": "winter"})
        answer = r.json()
        assert (answer["outcome"], answer["detail"]) == ("failed", "dmesh: 3600 s: timeout after 0.3 s")
        await eventually(lambda: len(observer.outcomes(answer["id"])) == 2, timeout=5)
        assert observer.outcomes(answer["id"]) == ["failed", "done"]
        final, stored = observer.seen[-1]
        assert final.detail == "dmesh: 3600 s: timeout after 0.3 s; a late result arrived: DONE"
        assert stored is not None and (stored["outcome"], stored["detail"]) == ("done", final.detail)
        (audited,) = (await http.get("/api/v1/commands", params={"code": "set_interval"},
                                     headers=auth("viewer"))).json()["commands"]
        assert (audited["id"], audited["requested_by"], audited["outcome"], audited["detail"]) == (
            answer["id"], "api:test-operator", "done", final.detail)
    finally:
        await c.stop()


async def test_a_dmesh_device_takes_only_its_own_commands(make_server, plugins, tmp_path):
    """Modules and concentrators are owned by the DMesh actuator: a command it
    does not execute is refused and audited, never passed to another actuator."""
    server, _, observer = await start(make_server, plugins, tmp_path)

    class AnyValve:  # a partner's actuator that takes every valve command it is given
        name = "any-valve"

        def handles(self, command: Command) -> bool:
            return True

        async def execute(self, command: Command) -> Any:
            raise AssertionError("a DMesh device's command reached another actuator")

    server.actuation.add(AnyValve())
    closed = await server.actuation.execute(Command("module:1001", CommandCode.VALVE_CLOSE, "policy:test", "leak"))
    assert (closed.outcome, closed.detail) == ("refused", "module:1001 is driven by dmesh, which takes no valve_close")
    no_image = await server.actuation.execute(Command(f"concentrator:{CID}", CommandCode.FIRMWARE_PUSH, "test", "x",
                                                      detail="image 9"))
    assert (no_image.outcome, no_image.detail) == (
        "refused", f"image 9: concentrator:{CID} is driven by dmesh, which takes no firmware_push")
    not_registered = await server.actuation.execute(Command("module:4242", CommandCode.PING, "test", "x"))
    assert (not_registered.outcome, not_registered.detail) == (
        "failed", "dmesh: module 4242 is not registered on a concentrator")
    assert [c.outcome for c, _ in observer.seen] == ["refused", "refused", "failed"]


async def test_a_push_straight_to_the_service_cannot_overlap_one_in_flight(make_server, plugins, tmp_path):
    """``FirmwarePusher.push`` refuses a second push of an image on its way
    (409); one given straight to the actuation service fails, audited, instead
    of mixing its blocks with the first."""
    from balans_edge.plugins.dmesh.firmware import verify_image

    server, driver, observer = await start(make_server, plugins, tmp_path, firmware_timeout_s=1.5)
    c = await connected(driver.port, {"drop_after_blocks": 2, "reconnect_s": 30.0})  # the first push stalls
    try:
        image = verify_image(IMAGE, sign_image(VENDOR, 7, "concentrator", IMAGE, "1.5.0"), PUBLIC)
        first = asyncio.create_task(driver.firmware.push(CID, image, requested_by="test", reason="first"))
        await eventually(lambda: driver.firmware.progress(CID, 7) > 0, timeout=5)
        second = await server.actuation.execute(Command(f"concentrator:{CID}", CommandCode.FIRMWARE_PUSH, "policy:x",
                                                        "second", args={"image": image}))
        assert (second.outcome, second.detail) == ("failed", f"dmesh: image 7 is already being sent to concentrator "
                                                             f"{CID}")
        assert (await first)["outcome"] == "timeout"
        assert [(c.requested_by, c.outcome) for c, _ in observer.seen] == [("policy:x", "failed"), ("test", "timeout")]
    finally:
        await c.stop()
