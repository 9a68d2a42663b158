"""Firmware pushes through the real DMesh driver over TCP to the simulated
concentrator, which verifies like a real one: signature checks before
anything is sent, resume after a dropped link, the API and the command line."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from balans_edge.core.model import Concentrator, RadioModule
from balans_edge.plugins.dmesh.codec import FirmwareBegin, FirmwareBlock, FirmwareEnd, FirmwareResultCode
from balans_edge.plugins.dmesh.concentrator import ConcentratorSettings, SimulatedConcentrator
from balans_edge.plugins.dmesh.firmware import (
    BLOCK_SIZE,
    FirmwareError,
    FirmwareRefused,
    load_image,
    manifest,
    sign_image,
    verify_image,
)

from conftest import TOKENS, auth, base_config

CID = 7
KEY = "key-of-concentrator-7"
VENDOR = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


PUBLIC_HEX = raw_public(VENDOR).hex()
IMAGE = bytes((i * 7 + i // 256) & 0xFF for i in range(10 * BLOCK_SIZE + 300))  # 11 blocks, the last short


def write_image(tmp_path: Path, data: bytes = IMAGE, sidecar: dict | None = None, name: str = "fw.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    if sidecar is not None:
        (tmp_path / f"{name}.sig.json").write_text(json.dumps(sidecar), "utf-8")
    return path


async def start(make_server, tmp_path, **dmesh):
    table = {"port": 0, "concentrators": [{"id": CID, "key": KEY}], "backfill": False,
             "firmware_public_key": PUBLIC_HEX, **dmesh}
    server = await make_server(base_config(tmp_path, plugins={"dmesh": table}))
    driver = next(c for _, c in server.components if c.name == "dmesh-driver")
    return server, driver


async def connected(port: int, **settings) -> SimulatedConcentrator:
    settings = {"reconnect_s": 0.1, "firmware_public_key": raw_public(VENDOR), **settings}
    c = SimulatedConcentrator(ConcentratorSettings(CID, KEY.encode(), port=port, **settings))
    c.start()
    async with asyncio.timeout(5):
        await c.connected.wait()
    return c


def firmware_frames(c: SimulatedConcentrator) -> list:
    return [p for p in c.received if isinstance(p, FirmwareBegin | FirmwareBlock | FirmwareEnd)]


# verification ---------------------------------------------------------------------------


def test_manifest_is_45_bytes_in_the_documented_order() -> None:
    m = manifest(7, 1, 300, bytes(range(32)))
    assert len(m) == 45
    assert m[:13] == b"DMFW" + (7).to_bytes(4, "big") + b"\x01" + (300).to_bytes(4, "big")


def test_load_image_verifies_and_refuses(tmp_path) -> None:
    good = write_image(tmp_path, sidecar=sign_image(VENDOR, 7, "concentrator", IMAGE, "1.5.0"))
    image = load_image(good, PUBLIC_HEX)
    assert (image.image_id, image.target, image.size) == (7, 1, len(IMAGE))
    with pytest.raises(FirmwareError, match="no vendor public key"):
        load_image(good, "")
    with pytest.raises(FirmwareError, match=r"unsigned image: unsigned\.bin\.sig\.json not found"):
        load_image(write_image(tmp_path, name="unsigned.bin"), PUBLIC_HEX)
    with pytest.raises(FirmwareError, match="bad signature"):
        load_image(write_image(tmp_path, sidecar=sign_image(OTHER, 7, "concentrator", IMAGE, "1.5.0"), name="o.bin"),
                   PUBLIC_HEX)
    sidecar = sign_image(VENDOR, 7, "module", IMAGE, "1.5.0")
    with pytest.raises(FirmwareError, match="bad signature"):  # signed for the radio module, not the concentrator
        verify_image(IMAGE, {**sidecar, "target": "concentrator"}, PUBLIC_HEX)
    with pytest.raises(FirmwareError, match="hash mismatch"):
        verify_image(IMAGE[:-1] + b"\x00", {**sidecar, "sha256": hashlib.sha256(IMAGE).hexdigest()}, PUBLIC_HEX)
    with pytest.raises(FirmwareError, match="size mismatch"):
        verify_image(IMAGE[:-1], {**sidecar, "size": len(IMAGE)}, PUBLIC_HEX)
    with pytest.raises(FirmwareError, match="128 hex"):
        verify_image(IMAGE, {**sidecar, "signature": "abc"}, PUBLIC_HEX)


def test_public_key_is_checked_in_the_configuration(tmp_path) -> None:
    from balans_edge.config import ConfigError, parse_config
    from balans_edge.plugin_manager import config_schemas, load_plugins

    data = base_config(tmp_path, plugins={"dmesh": {"firmware_public_key": "zz"}})
    with pytest.raises(ConfigError, match="firmware_public_key"):
        parse_config(data, config_schemas(load_plugins()))


# end to end -----------------------------------------------------------------------------


async def test_signed_image_is_accepted_end_to_end(make_server, tmp_path):
    server, driver = await start(make_server, tmp_path)
    c = await connected(driver.port)
    try:
        sidecar = sign_image(VENDOR, 7, "concentrator", IMAGE, "1.5.0")
        image = load_image(write_image(tmp_path, sidecar=sidecar), PUBLIC_HEX)
        record = await driver.firmware.push(CID, image, requested_by="test", reason="security fix")
        assert record["outcome"] == "accepted", record
        assert c.firmware_images == {7: IMAGE}
        frames = firmware_frames(c)
        assert isinstance(frames[0], FirmwareBegin) and isinstance(frames[-1], FirmwareEnd)
        assert [f.offset for f in frames[1:-1]] == list(range(0, len(IMAGE), BLOCK_SIZE))
        (stored,) = await server.storage.firmware_results()
        assert (stored["concentrator_id"], stored["image_id"], stored["result"]) == (CID, 7, 0)
        (journal,) = await server.storage.journal_list("commands")
        assert (journal["code"], journal["target"], journal["outcome"]) == ("firmware_push", "concentrator:7",
                                                                            "accepted")
        assert (journal["requested_by"], journal["reason"]) == ("test", "security fix")
    finally:
        await c.stop()


async def test_the_concentrator_checks_too(make_server, tmp_path):
    """An image signed by a key the concentrator does not trust is answered BAD_SIGNATURE."""
    _, driver = await start(make_server, tmp_path, firmware_public_key=raw_public(OTHER).hex())
    c = await connected(driver.port)
    try:
        image = verify_image(IMAGE, sign_image(OTHER, 9, "module", IMAGE, "1.5.0"), raw_public(OTHER))
        record = await driver.firmware.push(CID, image, requested_by="test", reason="x")
        assert record["outcome"] == "bad_signature" and "BAD_SIGNATURE" in record["detail"]
        assert c.firmware_images == {}
        assert [r.result for r in c.firmware_results] == [FirmwareResultCode.BAD_SIGNATURE]
    finally:
        await c.stop()


async def test_refused_images_send_nothing(make_server, client_for, tmp_path):
    server, driver = await start(make_server, tmp_path)
    c = await connected(driver.port)
    try:
        http = client_for(server)
        url = f"/api/v1/dmesh/concentrators/{CID}/firmware"
        sidecar = sign_image(VENDOR, 7, "concentrator", IMAGE, "1.5.0")
        tampered = IMAGE[:100] + b"\xff" + IMAGE[101:]
        cases = {
            "unsigned": (IMAGE, None),
            "bad signature": (tampered, sidecar),
            "hash mismatch": (tampered, {**sidecar, "sha256": hashlib.sha256(IMAGE).hexdigest()}),
            "bad signature: not signed by the vendor": (IMAGE, sign_image(OTHER, 7, "concentrator", IMAGE, "1.5.0")),
        }
        for expected, (data, side) in cases.items():
            body = {"image": base64.b64encode(data).decode(), "reason": "update"}
            if side is not None:
                body["signature"] = side
            r = await http.post(url, json=body, headers=auth("admin"))
            assert r.status_code == 422, r.text
            assert expected in r.json()["error"]["message"]
        assert firmware_frames(c) == []
        assert await server.storage.journal_list("commands") == []
    finally:
        await c.stop()


async def test_resume_after_the_link_drops(make_server, tmp_path):
    _, driver = await start(make_server, tmp_path)
    c = await connected(driver.port, drop_after_blocks=5)
    try:
        image = verify_image(IMAGE, sign_image(VENDOR, 7, "concentrator", IMAGE, "1.5.0"), PUBLIC_HEX)
        async with asyncio.timeout(10):
            record = await driver.firmware.push(CID, image, requested_by="test", reason="resume")
        assert record["outcome"] == "accepted", record
        assert c.counters.connects == 2
        assert c.firmware_images == {7: IMAGE}
        frames = firmware_frames(c)
        begins = [i for i, f in enumerate(frames) if isinstance(f, FirmwareBegin)]
        assert len(begins) == 2 and frames[begins[0]] == frames[begins[1]]
        resumed = [f.offset for f in frames[begins[1] + 1 :] if isinstance(f, FirmwareBlock)]
        # The link dropped on the 5th block: the first 4 were acknowledged and are not sent again.
        assert resumed == list(range(4 * BLOCK_SIZE, len(IMAGE), BLOCK_SIZE))
        before = [f.offset for f in frames[: begins[1]] if isinstance(f, FirmwareBlock)]
        assert before[:4] == [0, BLOCK_SIZE, 2 * BLOCK_SIZE, 3 * BLOCK_SIZE]
        offsets = [f.offset for f in frames if isinstance(f, FirmwareBlock)]
        assert all(offsets.count(o) == 1 for o in range(0, 4 * BLOCK_SIZE, BLOCK_SIZE))
        assert driver.firmware.progress(CID, 7) == 0  # forgotten once the result came
    finally:
        await c.stop()


async def test_not_connected_fails_and_no_answer_times_out(make_server, tmp_path):
    server, driver = await start(make_server, tmp_path, firmware_timeout_s=1.0)
    image = verify_image(IMAGE, sign_image(VENDOR, 7, "concentrator", IMAGE, "1.5.0"), PUBLIC_HEX)
    record = await driver.firmware.push(CID, image, requested_by="test", reason="x")
    assert record["outcome"] == "failed" and "not connected" in record["detail"]
    c = await connected(driver.port, drop_after_blocks=2, reconnect_s=30.0)
    try:
        record = await driver.firmware.push(CID, image, requested_by="test", reason="y")
        assert record["outcome"] == "timeout" and "1024 of 10540 bytes acknowledged" in record["detail"]
        journal = await server.storage.journal_list("commands")
        assert [j["outcome"] for j in journal] == ["timeout", "failed"]
    finally:
        await c.stop()


# API and command line ------------------------------------------------------------------


async def test_api_needs_admin_and_answers_the_outcome(make_server, client_for, tmp_path):
    server, driver = await start(make_server, tmp_path)
    c = await connected(driver.port)
    try:
        http = client_for(server)
        url = f"/api/v1/dmesh/concentrators/{CID}/firmware"
        body = {"image": base64.b64encode(IMAGE).decode(), "signature": sign_image(VENDOR, 3, "module", IMAGE, "1.5.0"),
                "reason": "radio module update"}
        assert (await http.post(url, json=body, headers=auth("operator"))).status_code == 403
        assert (await http.post(url, json={**body, "reason": ""}, headers=auth("admin"))).status_code == 400
        assert (await http.post(url, json={**body, "image": "***"}, headers=auth("admin"))).status_code == 400
        missing = await http.post("/api/v1/dmesh/concentrators/8/firmware", json=body, headers=auth("admin"))
        assert missing.status_code == 404
        r = await http.post(url, json=body, headers=auth("admin"))
        assert r.status_code == 200, r.text
        answer = r.json()
        assert (answer["outcome"], answer["requested_by"], answer["code"]) == ("accepted", "api:test-admin",
                                                                               "firmware_push")
        assert c.firmware_images == {3: IMAGE}
        assert [f.target for f in firmware_frames(c) if isinstance(f, FirmwareBegin)] == [2]
    finally:
        await c.stop()


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "balans_edge", "dmesh", "firmware", "push", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "BALANS_EDGE_TOKEN": "", **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_pushes_through_the_running_server(make_server, tmp_path):
    server, driver = await start(make_server, tmp_path)
    c = await connected(driver.port)
    try:
        url = f"http://127.0.0.1:{server.http.port}"
        config = tmp_path / "site.toml"
        config.write_text(f'[plugins.dmesh]\nfirmware_public_key = "{PUBLIC_HEX}"\n', "utf-8")
        good = write_image(tmp_path, sidecar=sign_image(VENDOR, 11, "concentrator", IMAGE, "1.5.0"))
        unsigned = write_image(tmp_path, name="unsigned.bin")
        other = write_image(tmp_path, sidecar=sign_image(OTHER, 12, "concentrator", IMAGE, "1.5.0"), name="other.bin")
        common = ["--concentrator", str(CID), "--url", url]

        code, _, err = await cli(str(unsigned), *common, "--token", TOKENS["admin"])
        assert code == 1 and "unsigned image" in err
        code, _, err = await cli(str(other), *common, "-c", str(config), "--token", TOKENS["admin"])
        assert code == 1 and "bad signature" in err
        code, _, err = await cli(str(other), *common, env={"BALANS_EDGE_TOKEN": TOKENS["admin"]})
        assert code == 1 and "HTTP 422" in err and "bad signature" in err  # refused by the server
        code, _, err = await cli(str(good), *common, "--token", TOKENS["operator"])
        assert code == 1 and "HTTP 403" in err
        assert firmware_frames(c) == []

        code, out, err = await cli(str(good), *common, "-c", str(config), "--reason", "field update",
                                   env={"BALANS_EDGE_TOKEN": TOKENS["admin"]})
        assert code == 0, err
        assert out.splitlines()[-1].startswith("accepted: dmesh: image 11")
        assert c.firmware_images == {11: IMAGE}
        (journal,) = await server.storage.journal_list("commands")
        assert (journal["requested_by"], journal["reason"]) == ("api:test-admin", "field update")
    finally:
        await c.stop()


# downgrades -----------------------------------------------------------------------------

OLDER = bytes(reversed(IMAGE))  # another image, signed as an older version


async def test_an_older_image_is_refused_after_a_newer_one_unless_forced(make_server, client_for, tmp_path):
    server, driver = await start(make_server, tmp_path)
    c = await connected(driver.port)  # reports firmware 1.4.2 in HELLO
    try:
        http = client_for(server)
        url = f"/api/v1/dmesh/concentrators/{CID}/firmware"
        newer = {"image": base64.b64encode(IMAGE).decode(), "reason": "security fix",
                 "signature": sign_image(VENDOR, 7, "concentrator", IMAGE, "1.6.0")}
        older = {"image": base64.b64encode(OLDER).decode(), "reason": "roll back",
                 "signature": sign_image(VENDOR, 8, "concentrator", OLDER, "1.5.0")}
        r = await http.post(url, json=newer, headers=auth("admin"))
        assert r.json()["outcome"] == "accepted", r.text
        (stored,) = await server.storage.firmware_results()
        assert (stored["image_id"], stored["target"], stored["version"]) == (7, 1, "1.6.0")

        r = await http.post(url, json=older, headers=auth("admin"))
        assert r.status_code == 422, r.text
        assert r.json()["error"] == {"code": "refused", "message": (
            "image refused: version 1.5.0 is older than the installed 1.6.0 (image 7 accepted); "
            "force the push to send it anyway")}
        assert [f.image_id for f in firmware_frames(c) if isinstance(f, FirmwareBegin)] == [7]
        assert len(await server.storage.journal_list("commands")) == 1
        r = await http.post(url, json={**older, "force": "yes"}, headers=auth("admin"))
        assert r.status_code == 400 and "force" in r.text

        r = await http.post(url, json={**older, "force": True}, headers=auth("admin"))
        assert r.status_code == 200, r.text
        forced = r.json()
        assert (forced["outcome"], forced["requested_by"], forced["reason"]) == ("accepted", "api:test-admin",
                                                                                "roll back")
        assert "(forced: version 1.5.0 is older than the installed 1.6.0 (image 7 accepted))" in forced["detail"]
        assert c.firmware_images == {7: IMAGE, 8: OLDER}
        journal = await server.storage.journal_get("commands", forced["id"])
        assert journal["detail"] == forced["detail"]
    finally:
        await c.stop()


async def test_the_installed_version_survives_a_restart(make_server, tmp_path):
    """The accepted version is stored with the FIRMWARE_RESULT, so a restarted
    host still refuses an older image (the concentrator reports 1.4.2 until it
    restarts into the new firmware)."""
    server, driver = await start(make_server, tmp_path)
    c = await connected(driver.port)
    try:
        newer = verify_image(IMAGE, sign_image(VENDOR, 7, "concentrator", IMAGE, "2.0.0"), PUBLIC_HEX)
        assert (await driver.firmware.push(CID, newer, requested_by="test", reason="x"))["outcome"] == "accepted"
    finally:
        await c.stop()
    await server.stop()
    _, driver = await start(make_server, tmp_path)
    older = verify_image(OLDER, sign_image(VENDOR, 8, "concentrator", OLDER, "1.9.9"), PUBLIC_HEX)
    with pytest.raises(FirmwareRefused, match=r"1\.9\.9 is older than the installed 2\.0\.0 \(image 7 accepted\)"):
        await driver.firmware.push(CID, older, requested_by="test", reason="x")


async def test_reported_versions_and_images_without_a_version(make_server, tmp_path):
    server, driver = await start(make_server, tmp_path)
    await server.storage.registry_apply({
        "concentrators": [Concentrator(CID)],
        "modules": [RadioModule(1001, CID, firmware="1.6"), RadioModule(1002, CID, firmware="1.2"),
                    RadioModule(2001, None, firmware="9.9")],
    })
    c = await connected(driver.port, firmware=(2, 1, 0))
    try:
        def image(version: str | None, target: str = "concentrator", image_id: int = 9) -> Any:
            return verify_image(IMAGE, sign_image(VENDOR, image_id, target, IMAGE, version), PUBLIC_HEX)

        with pytest.raises(FirmwareRefused, match=r"2\.0\.9 is older than the installed 2\.1\.0 \(reported by the "
                                                  r"concentrator\)"):
            await driver.firmware.push(CID, image("2.0.9"), requested_by="test", reason="x")
        with pytest.raises(FirmwareRefused, match=r"1\.5\.3 is older than the installed 1\.6\.0 \(reported by "
                                                  r"module 1001\)"):
            await driver.firmware.push(CID, image("1.5.3", "module"), requested_by="test", reason="x")
        with pytest.raises(FirmwareRefused, match="its signature file states no version"):
            await driver.firmware.push(CID, image(None), requested_by="test", reason="x")
        assert firmware_frames(c) == []
        # The same version again (a repair) and a newer one go out; so does a forced unknown version.
        for version, target, image_id, force in (("2.1.0", "concentrator", 9, False), ("1.6.1", "module", 10, False),
                                                 (None, "concentrator", 11, True)):
            record = await driver.firmware.push(CID, image(version, target, image_id), requested_by="test",
                                                reason="x", force=force)
            assert record["outcome"] == "accepted", record
        assert record["detail"].endswith('(forced: its signature file states no version '
                                         '("version": "MAJOR.MINOR.PATCH")): ACCEPTED')
    finally:
        await c.stop()
    with pytest.raises(FirmwareError, match="version must be"):
        verify_image(IMAGE, {**sign_image(VENDOR, 9, "module", IMAGE), "version": "1.256"}, PUBLIC_HEX)


async def test_cli_force(make_server, tmp_path):
    server, driver = await start(make_server, tmp_path)
    c = await connected(driver.port)  # 1.4.2
    try:
        url = f"http://127.0.0.1:{server.http.port}"
        old = write_image(tmp_path, sidecar=sign_image(VENDOR, 5, "concentrator", IMAGE, "1.3.0"), name="old.bin")
        common = [str(old), "--concentrator", str(CID), "--url", url, "--token", TOKENS["admin"]]
        code, _, err = await cli(*common)
        assert code == 1 and "HTTP 422" in err and "1.3.0 is older than the installed 1.4.2" in err
        assert firmware_frames(c) == []
        code, _, err = await cli(*common, "--force", "--reason", "field test of the old release")
        assert code == 0, err
        (journal,) = await server.storage.journal_list("commands")
        assert (journal["outcome"], journal["reason"]) == ("accepted", "field test of the old release")
        assert "forced: version 1.3.0 is older than the installed 1.4.2" in journal["detail"]
    finally:
        await c.stop()
