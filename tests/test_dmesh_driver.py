"""The DMesh driver against a real server: a test concentrator written with the
codec talks to it over TCP on 127.0.0.1 (and over a pseudo-terminal pair made
by socat for the serial transport), following the vendor's document."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from balans_edge import hookimpl
from balans_edge.config import parse_config
from balans_edge.core.model import RawReading
from balans_edge.core.storage import StorageError
from balans_edge.plugin_manager import Plugins, config_schemas, load_plugins
from balans_edge.plugins.dmesh.codec import (
    Ack,
    AckStatus,
    Auth,
    Challenge,
    CommandResult,
    Event,
    FirmwareResult,
    Frame,
    FrameType,
    Hello,
    ModuleEntry,
    Nack,
    NackCode,
    Payload,
    Ping,
    Pong,
    Profile,
    ReadingRecord,
    Readings,
    StreamDecoder,
    Topology,
    Welcome,
    decode_payload,
    encode_frame,
)
from balans_edge.plugins.dmesh.driver import DmeshDriver
from balans_edge.plugins.dmesh.session import expected_mac
from balans_edge.settings import ConfigError

from conftest import T0, base_config, dmesh_repository, eventually, peer, small_site
from conftest import stored_readings as stored

CID = 0x0A0B0C0D
KEY = "test-key-0123456789abcdef"
READINGS_SEQ3 = bytes.fromhex(
    "44 4d 01 11 00 03 00 2c 00 02 00 00 03 e9 52 dc 67 00 00 00 0e 10 b9 02 03 00 01 e2 40 ff ff ff fa"
    " 00 00 03 ea 52 dc 67 00 00 11 0b 86 a8 05 04 00 00 00 4d 0c f8"
)
PROFILE_SEQ4 = bytes.fromhex(
    "44 4d 01 12 00 04 00 16 00 00 03 e9 01 52 dc 58 f0 03 00 01 e0 78 ff ff ff ff 00 01 e2 40 56 c3"
)
ACK_VECTOR = bytes.fromhex("44 4d 01 20 00 01 00 03 00 03 00 03 16")
WAIT = 3.0


def dmesh(**overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"port": 0, "concentrators": [{"id": CID, "key": KEY}, {"id": 7, "key": "key-of-7"}]}
    table.update(overrides)
    return table


class Client:
    """A concentrator's side of the link, written with the codec."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = StreamDecoder()
        self.frames: list[Frame] = []
        self.seq = 0

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFF
        return self.seq

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, payload: Payload, seq: int | None = None) -> int:
        seq = self.next_seq() if seq is None else seq
        await self.send_raw(payload.frame(seq))
        return seq

    async def frame(self, timeout: float = WAIT) -> Frame:
        async with asyncio.timeout(timeout):
            while not self.frames:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("link closed")
                self.frames += [f for f in self.decoder.feed(data) if isinstance(f, Frame)]
        return self.frames.pop(0)

    async def expect(self, kind: type, timeout: float = WAIT) -> Any:
        payload = decode_payload(await self.frame(timeout))
        assert isinstance(payload, kind), payload
        return payload

    async def closed(self, timeout: float = WAIT) -> bool:
        """True once the host closed the link (frames before that are kept)."""
        seen, self.frames = self.frames, []
        try:
            while True:
                seen.append(await self.frame(timeout))
        except (EOFError, ConnectionError):
            return True
        finally:
            self.frames = seen + self.frames

    async def login(self, cid: int = CID, key: str = KEY, clock: int | None = None) -> Welcome:
        now = int(time.time()) if clock is None else clock
        await self.send(Hello(cid, 1, 4, 2, 3, 7, now))
        challenge = await self.expect(Challenge)
        await self.send(Auth(expected_mac(key.encode(), challenge.nonce, cid)))
        return await self.expect(Welcome)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def site(tmp_path: Path, make_server: Callable[..., Any]):
    clients: list[Client] = []

    async def start(**overrides: Any) -> tuple[Any, DmeshDriver]:
        server = await make_server(base_config(tmp_path, plugins={"dmesh": dmesh(**overrides)}), http=False)
        await server.storage.registry_apply(small_site())
        (driver,) = [c for _, c in server.components if isinstance(c, DmeshDriver)]
        return server, driver

    async def connect(driver: DmeshDriver) -> Client:
        client = await Client.connect(driver.port)
        clients.append(client)
        return client

    start.connect = connect
    yield start
    for c in clients:
        await c.close()




# configuration --------------------------------------------------------------


def test_config_keys_and_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMESH_KEY_7", "from-env")
    schemas = config_schemas(load_plugins())
    table = dmesh(concentrators=[{"id": 7, "key_env": "DMESH_KEY_7"}], serial=[{"path": "/dev/ttyUSB0"}])
    config = parse_config({"plugins": {"dmesh": table}}, schemas).plugins["dmesh"]
    assert (config.concentrators[0].id, config.concentrators[0].key) == (7, "from-env")
    assert (config.serial[0].path, config.serial[0].baudrate) == ("/dev/ttyUSB0", 115200)
    assert (config.listen, config.port, config.keepalive_s, config.dead_after_s) == (True, 0, 60.0, 180.0)
    with pytest.raises(ConfigError) as err:
        parse_config({"plugins": {"dmesh": dmesh(concentrators=[{"id": 0, "key": "k"}] * 2, port=70000)}}, schemas)
    assert "[plugins.dmesh] port: expected an integer 0..65535, got 70000" in err.value.problems
    assert "[plugins.dmesh.concentrators[0]] id: expected an integer 1..4294967295, got 0" in err.value.problems


# session ------------------------------------------------------------------------


async def test_auth_success_and_set_clock_flag(site) -> None:
    server, driver = await site()
    assert driver.port
    c = await site.connect(driver)
    welcome = await c.login()
    assert welcome.flags == 0 and abs(welcome.host_time - time.time()) < 5
    assert CID in driver.sessions()
    late = await site.connect(driver)
    welcome = await late.login(cid=7, key="key-of-7", clock=int(time.time()) - 100)
    assert welcome.set_clock
    log = await dmesh_repository(server).connection_log(CID)
    assert [e["event"] for e in log] == ["connect"]
    assert log[0]["detail"] == "firmware 1.4.2, 3 modules, 7 meters"


async def test_bad_key_is_refused_and_closed(site) -> None:
    server, driver = await site()
    c = await site.connect(driver)
    await c.send(Hello(CID, 1, 4, 2, 3, 7, int(time.time())))
    challenge = await c.expect(Challenge)
    seq = await c.send(Auth(expected_mac(b"wrong-key", challenge.nonce, CID)))
    nack = await c.expect(Nack)
    assert (nack.ref_seq, nack.code) == (seq, NackCode.AUTH_FAILED)
    assert await c.closed()
    log = await eventually(lambda: dmesh_repository(server).connection_log(CID))
    assert [e["event"] for e in log] == ["auth_failed"]
    assert driver.sessions() == {}


async def test_unknown_concentrator_is_refused_and_closed(site) -> None:
    _, driver = await site()
    c = await site.connect(driver)
    await c.send(Hello(999, 1, 0, 0, 1, 1, int(time.time())))
    challenge = await c.expect(Challenge)
    await c.send(Auth(expected_mac(KEY.encode(), challenge.nonce, 999)))
    assert (await c.expect(Nack)).code == NackCode.UNKNOWN_CONCENTRATOR
    assert await c.closed()


async def test_data_before_welcome_is_not_stored(site) -> None:
    server, driver = await site()
    c = await site.connect(driver)
    await c.send_raw(READINGS_SEQ3)
    nack = await c.expect(Nack)
    assert (nack.ref_seq, nack.code) == (3, NackCode.NOT_AUTHENTICATED)
    await c.send(Hello(CID, 1, 4, 2, 3, 7, int(time.time())), seq=1)
    await c.expect(Challenge)
    await c.send_raw(READINGS_SEQ3)  # between CHALLENGE and AUTH: still not authenticated
    assert (await c.expect(Nack)).code == NackCode.NOT_AUTHENTICATED
    await server.storage.flush()
    assert all(rows == [] for rows in (await stored(server)).values())


# before authentication -------------------------------------------------------------


async def test_unauthenticated_links_are_closed_after_auth_timeout(site) -> None:
    """Nothing an unauthenticated peer sends keeps its link open: not silence,
    not PINGs (which go unanswered), not data frames (NACKed, not stored)."""
    server, driver = await site(auth_timeout_s=0.5, keepalive_s=0.05)
    idle, pinger, sender = [await site.connect(driver) for _ in range(3)]
    start = time.monotonic()

    async def keep_sending(c: Client, frame: Callable[[], bytes]) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await c.send_raw(frame())
                await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(keep_sending(pinger, lambda: Ping().frame(pinger.next_seq()))),
             asyncio.create_task(keep_sending(sender, lambda: READINGS_SEQ3))]
    try:
        for c in (idle, pinger, sender):
            assert await c.closed()
            assert 0.4 < time.monotonic() - start < 2.5
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert idle.frames == [] and pinger.frames == []
    assert sender.frames and {decode_payload(f).code for f in sender.frames} == {NackCode.NOT_AUTHENTICATED}
    assert all(rows == [] for rows in (await stored(server)).values())
    assert driver.sessions() == {}


async def test_handshake_frames_only_are_answered_before_welcome(site) -> None:
    _, driver = await site(auth_timeout_s=5.0)
    c = await site.connect(driver)
    await c.send(Ping())
    await c.send_raw(encode_frame(0x66, 50, b"\x01"))  # unknown type: answered only after WELCOME
    await c.send(Ack(1, AckStatus.OK))
    await c.send(Hello(CID, 1, 4, 2, 3, 7, int(time.time())))
    # The first frame back is the CHALLENGE: the PING, the unknown frame and the ACK went unanswered.
    challenge = await c.expect(Challenge)
    await c.send(Auth(expected_mac(KEY.encode(), challenge.nonce, CID)))
    await c.expect(Welcome)
    seq = await c.send(Ping())
    assert await c.expect(Pong) == Pong(seq)


async def test_handshakes_are_capped_and_refusals_logged(site, caplog: pytest.LogCaptureFixture) -> None:
    _, driver = await site(max_unauthenticated=3, auth_timeout_s=30.0)
    waiting = [await site.connect(driver) for _ in range(3)]
    for c in waiting:  # each is being served (its HELLO is answered) before the next one comes
        await c.send(Hello(CID, 1, 4, 2, 3, 7, int(time.time())))
        await c.expect(Challenge)
    caplog.set_level("WARNING", logger="balans_edge.plugins.dmesh.driver")
    extra = await site.connect(driver)
    assert await extra.closed(timeout=2.0)
    assert extra.frames == []
    port = extra.writer.get_extra_info("sockname")[1]
    (refusal,) = [r for r in caplog.records if "refused before authentication" in r.getMessage()]
    assert f"127.0.0.1:{port}" in refusal.getMessage() and "max_unauthenticated" in refusal.getMessage()

    await waiting[0].close()  # a slot frees: a concentrator that authenticates gets in again

    async def logged_in() -> bool:
        c = await site.connect(driver)
        try:
            await c.login()
        except (EOFError, ConnectionError, TimeoutError):
            return False
        return True

    assert await eventually(logged_in)
    assert CID in driver.sessions()


async def test_data_flows_while_unauthenticated_links_come_and_go(site) -> None:
    """An authenticated concentrator is served while 200 peers that never
    authenticate connect, send a little and go (more at once than the cap)."""
    server, driver = await site(max_unauthenticated=8, auth_timeout_s=0.2)
    concentrator = await site.connect(driver)
    await concentrator.login()

    async def intruder(i: int) -> None:
        with contextlib.suppress(ConnectionError, OSError, EOFError, TimeoutError):
            c = await Client.connect(driver.port)
            try:
                await c.send_raw([Ping().frame(i), READINGS_SEQ3, b"garbage"][i % 3])
                await asyncio.sleep(0.01 * (i % 5))
            finally:
                await c.close()

    async def intruders() -> None:
        for wave in range(10):
            await asyncio.gather(*(intruder(wave * 20 + i) for i in range(20)))

    flood = asyncio.create_task(intruders())
    try:
        for hour in range(30):
            record = ReadingRecord(1001, T0 + hour * 3600, 0, 3600, -70, 2, 0b001, (1000 + hour,))
            seq = await concentrator.send(Readings((record,)))
            assert await concentrator.expect(Ack) == Ack(seq, AckStatus.OK)
        await flood
    finally:
        flood.cancel()
    rows = (await stored(server))["W-1"]
    assert [(ts, counter) for ts, counter, _ in rows] == [(T0 + h * 3600, 1000 + h) for h in range(30)]
    assert set(driver.sessions()) == {CID}


# data -------------------------------------------------------------------------------


async def test_readings_test_vector_is_stored_then_acked(site) -> None:
    server, driver = await site()
    c = await site.connect(driver)
    await c.login()  # HELLO seq 1, AUTH seq 2: the READINGS vector is seq 3
    await c.send_raw(READINGS_SEQ3)
    frame = await c.frame()
    raw = frame.encode()
    # The ACK test vector's shape, sent with this host's seq (CHALLENGE 1, WELCOME 2, ACK 3).
    assert raw[:4] == ACK_VECTOR[:4] and raw[6:11] == ACK_VECTOR[6:11]
    assert raw == Ack(3, AckStatus.OK).frame(3)
    assert await stored(server) == {
        "W-1": [(T0, 123456, 0)],
        "W-2": [(T0, 4294967290, 0)],
        "W-3": [(T0, 77, 0b10001)],
    }


async def test_retransmitted_frame_is_acked_twice_and_stored_once(site) -> None:
    server, driver = await site()
    c = await site.connect(driver)
    await c.login()
    await c.send_raw(READINGS_SEQ3)
    await c.send_raw(READINGS_SEQ3)
    assert await c.expect(Ack) == Ack(3, AckStatus.OK)
    assert await c.expect(Ack) == Ack(3, AckStatus.OK)
    assert [len(rows) for rows in (await stored(server)).values()] == [1, 1, 1]


async def test_profile_overlapping_readings_is_stored_once_per_hour(site) -> None:
    server, driver = await site()
    c = await site.connect(driver)
    await c.login()
    await c.send_raw(READINGS_SEQ3)
    assert await c.expect(Ack) == Ack(3, AckStatus.OK)
    await c.send_raw(PROFILE_SEQ4)  # 123000 at T0 - 1 h, not recorded at T0, 123456 at T0 + 1 h
    assert await c.expect(Ack) == Ack(4, AckStatus.OK)
    c.seq = 4
    profile = Profile(1001, 1, T0 - 3600, (123000, 123456, None, 123600))
    for _ in range(2):
        seq = await c.send(profile)
        assert await c.expect(Ack) == Ack(seq, AckStatus.OK)
    assert (await stored(server))["W-1"] == [
        (T0 - 3600, 123000, 0),
        (T0, 123456, 0),
        (T0 + 3600, 123456, 0),
        (T0 + 2 * 3600, 123600, 0),
    ]


async def test_storage_failure_asks_for_the_frame_again(site, monkeypatch: pytest.MonkeyPatch) -> None:
    server, driver = await site()
    real = server.ingest.ingest
    failures = [StorageError("disk unavailable")]

    async def failing_once(batch, **kw):
        # Fault injection: the first commit fails as if storage were momentarily unavailable.
        if failures:
            raise failures.pop()
        return await real(batch, **kw)

    monkeypatch.setattr(server.ingest, "ingest", failing_once)
    c = await site.connect(driver)
    await c.login()
    await c.send_raw(READINGS_SEQ3)
    assert await c.expect(Ack) == Ack(3, AckStatus.RETRY)
    assert all(rows == [] for rows in (await stored(server)).values())
    await c.send_raw(READINGS_SEQ3)
    assert await c.expect(Ack) == Ack(3, AckStatus.OK)
    assert (await stored(server))["W-3"] == [(T0, 77, 0b10001)]


async def test_frames_are_acked_while_an_observer_hangs(site, plugins: Plugins) -> None:
    """An observe_readings that never returns, its queue full and overflowing:
    every READINGS frame is still stored and acknowledged."""
    go_on = asyncio.Event()

    class Hanging:
        calls = 0

        @hookimpl
        async def observe_readings(self) -> None:
            Hanging.calls += 1
            await go_on.wait()

    plugins.register(Hanging(), "hanging")
    server, driver = await site()
    (observer,) = [s for s in server.bus.stats() if s["name"] == "observer:hanging"]
    c = await site.connect(driver)
    await c.login()
    hour = 0

    async def frames(n: int) -> None:
        nonlocal hour
        for _ in range(n):
            record = ReadingRecord(1001, T0 + hour * 3600, 0, 3600, -70, 2, 0b001, (1000 + hour,))
            seq = await c.send(Readings((record,)))
            assert await c.expect(Ack) == Ack(seq, AckStatus.OK)
            hour += 1

    await frames(3)
    assert await eventually(lambda: Hanging.calls == 1)
    # Another concentrator's batches fill the hanging observer's queue and more.
    await asyncio.gather(*(server.ingest.ingest([RawReading(1001, 2, T0 + i, i)])
                           for i in range(observer["maxsize"] + 5)))
    await frames(5)
    (observer,) = [s for s in server.bus.stats() if s["name"] == "observer:hanging"]
    assert observer["dropped"] == 3 + 5 + 5 - 1
    assert Hanging.calls == 1
    rows = (await stored(server))["W-1"]
    assert [(ts, counter) for ts, counter, _ in rows] == [(T0 + h * 3600, 1000 + h) for h in range(8)]
    go_on.set()


async def test_event_topology_and_results_are_stored_before_ack(site) -> None:
    server, driver = await site()
    c = await site.connect(driver)
    await c.login()
    topology = Topology(
        (ModuleEntry(1001, 0, 1, -60, 3550, 0x0102, 0b011, 0), ModuleEntry(5555, 1001, 2, -80, 3000, 0x0100, 1, 1))
    )
    frames = [
        Event(1002, T0, 1, 0),
        Event(1002, T0, 1, 0),  # the same event again: stored once
        topology,
        CommandResult(42, 0, 0b100000),
        FirmwareResult(9, 2),
    ]
    for payload in frames:
        seq = await c.send(payload)
        assert await c.expect(Ack) == Ack(seq, AckStatus.OK)
        # No flush, no wait: what was acknowledged is already committed.
    events = await dmesh_repository(server).module_events(1002)
    assert [(e["concentrator_id"], e["ts"], e["code"], e["value"]) for e in events] == [(CID, T0, 1, 0)]
    history = await dmesh_repository(server).topology_history()
    assert sorted((h["module_id"], h["parent_id"], h["hops"], h["rssi"], h["state"]) for h in history) == [
        (1001, 0, 1, -60, 0),
        (5555, 1001, 2, -80, 1),
    ]
    module = await server.storage.registry_get("modules", 1001)
    assert (module.parent_id, module.hops, module.rssi, module.battery_mv, module.firmware) == (0, 1, -60, 3550, "1.2")
    assert module.last_seen and abs(module.last_seen - time.time()) < 5
    assert await server.storage.registry_get("modules", 5555) is None
    (result,) = await dmesh_repository(server).command_results()
    assert (result["concentrator_id"], result["command_id"], result["result"], result["status"]) == (CID, 42, 0, 32)
    (firmware,) = await dmesh_repository(server).firmware_results()
    assert (firmware["image_id"], firmware["result"]) == (9, 2)


async def test_topology_of_more_than_240_modules_is_rejected(site) -> None:
    """The protocol allows a concentrator 240 modules: a TOPOLOGY listing more
    is ACKed REJECTED (the concentrator drops it) and nothing of it is stored."""
    server, driver = await site()
    c = await site.connect(driver)
    await c.login()
    entries = tuple(ModuleEntry(1001 + i, 0, 1, -60, 3550, 0x0102, 1, 0) for i in range(241))
    seq = await c.send(Topology(entries))
    assert await c.expect(Ack) == Ack(seq, AckStatus.REJECTED)
    assert await dmesh_repository(server).topology_history() == []
    assert (await server.storage.registry_get("modules", 1001)).hops is None
    seq = await c.send(Topology(entries[:240]))
    assert await c.expect(Ack) == Ack(seq, AckStatus.OK)
    assert len(await dmesh_repository(server).topology_history()) == 240


# receiving rules ------------------------------------------------------------------


def corrupt(frame: bytes) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])


async def test_sixteen_bad_frames_close_the_link_fifteen_do_not(site) -> None:
    _, driver = await site()
    c = await site.connect(driver)
    await c.login()
    wrong_version = bytearray(Ping().frame(50))
    wrong_version[2] = 2
    bad = [corrupt(Ping().frame(40 + i)) for i in range(14)] + [bytes(wrong_version)]
    await c.send_raw(b"".join(bad) + Ping().frame(60))
    assert await c.expect(Pong) == Pong(60)
    await c.send_raw(b"garbage" + b"".join(corrupt(Ping().frame(70 + i)) for i in range(15)))
    assert await c.closed()
    assert not any(f.type == FrameType.PONG for f in c.frames)


async def test_second_connection_replaces_the_first(site) -> None:
    server, driver = await site()
    first = await site.connect(driver)
    await first.login()
    second = await site.connect(driver)
    await second.login()
    assert await first.closed()
    assert driver.sessions()[CID].peer.endswith(str(second.writer.get_extra_info("sockname")[1]))
    await second.send(Ping())
    await second.expect(Pong)

    async def events():
        log = await dmesh_repository(server).connection_log(CID)
        return [e["event"] for e in log] if len(log) == 3 else None

    assert await eventually(events) == ["replaced", "connect", "connect"]


async def test_silent_link_is_closed(site) -> None:
    _, driver = await site(dead_after_s=0.5)
    c = await site.connect(driver)
    await c.login()
    start = time.monotonic()
    assert await c.closed()
    assert 0.4 < time.monotonic() - start < 2.5


async def test_ping_is_answered_and_host_pings_when_idle(site) -> None:
    _, driver = await site(keepalive_s=0.3)
    c = await site.connect(driver)
    await c.login()
    seq = await c.send(Ping())
    assert await c.expect(Pong) == Pong(seq)
    start = time.monotonic()
    frame = await c.frame()
    assert frame.type == FrameType.PING and time.monotonic() - start > 0.2
    await c.send(Pong(frame.seq))
    driver.sessions()[CID]._seq = 65534  # the host's own counter wraps 65535 -> 0
    for expected in (65535, 0):
        seq = await c.send(Ping())
        frame = await c.frame()
        assert (frame.seq, decode_payload(frame)) == (expected, Pong(seq))


async def test_unknown_type_and_malformed_payloads(site) -> None:
    _, driver = await site()
    c = await site.connect(driver)
    await c.login()
    await c.send_raw(encode_frame(0x66, 10, b"\x01"))
    nack = await c.expect(Nack)
    assert (nack.ref_seq, nack.code) == (10, NackCode.UNKNOWN_TYPE)
    await c.send_raw(encode_frame(FrameType.READINGS, 11, b"\x00\x01\x00\x00"))
    assert await c.expect(Ack) == Ack(11, AckStatus.REJECTED)
    await c.send_raw(encode_frame(FrameType.PING, 12, b"\x00"))
    nack = await c.expect(Nack)
    assert (nack.ref_seq, nack.code) == (12, NackCode.BAD_PAYLOAD)


# serial transport -------------------------------------------------------------------


async def test_serial_link_over_a_pty_pair(tmp_path: Path, make_server: Callable[..., Any]) -> None:
    import serial_asyncio_fast

    socat = peer("socat")
    host_end, device_end = tmp_path / "A", tmp_path / "B"
    proc = await asyncio.create_subprocess_exec(
        socat, "-d", "-d", f"pty,raw,echo=0,link={host_end}", f"pty,raw,echo=0,link={device_end}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(5):
            while not (host_end.exists() and device_end.exists()):
                await asyncio.sleep(0.02)
        table = dmesh(listen=False, serial=[{"path": str(host_end), "baudrate": 115200}])
        server = await make_server(base_config(tmp_path, plugins={"dmesh": table}), http=False)
        await server.storage.registry_apply(small_site())
        (driver,) = [c for _, c in server.components if isinstance(c, DmeshDriver)]
        assert driver.port is None
        reader, writer = await serial_asyncio_fast.open_serial_connection(url=str(device_end), baudrate=115200)
        c = Client(reader, writer)
        try:
            await c.login()
            assert driver.sessions()[CID].peer == f"serial:{host_end}"
            await c.send_raw(READINGS_SEQ3)
            assert await c.expect(Ack) == Ack(3, AckStatus.OK)
            assert (await stored(server))["W-1"] == [(T0, 123456, 0)]
        finally:
            writer.close()
    finally:
        proc.terminate()
        await proc.wait()


async def test_stop_closes_links_and_logs_them(site, tmp_path: Path) -> None:
    server, driver = await site()
    c = await site.connect(driver)
    await c.login()
    await asyncio.wait_for(server.stop(), 5)
    assert await c.closed()
    with sqlite3.connect(tmp_path / "balans.db") as db:
        rows = db.execute("SELECT event, detail FROM connection_log ORDER BY id").fetchall()
    assert rows[-1] == ("disconnect", "host stopping")


async def test_missing_serial_port_is_retried_without_failing_the_plugin(
    tmp_path: Path, make_server: Callable[..., Any]
) -> None:
    table = dmesh(listen=False, serial=[{"path": str(tmp_path / "no-such-port")}])
    server = await make_server(base_config(tmp_path, plugins={"dmesh": table}), http=False)
    await asyncio.sleep(0.1)
    assert server.plugins.info["dmesh"].state == "started"
