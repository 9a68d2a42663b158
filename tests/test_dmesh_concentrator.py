"""The simulated concentrator against the real driver: windowed retransmission,
reconnects, and a server killed with SIGKILL while readings stream in."""

from __future__ import annotations

import asyncio
import collections
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from balans_edge.plugins.dmesh.codec import ReadingRecord, Readings, StreamDecoder, decode_payload
from balans_edge.plugins.dmesh.concentrator import ConcentratorSettings, SimulatedConcentrator

from conftest import T0, base_config, peer, small_site

CID = 7
KEY = "key-of-concentrator-7"
BIN = Path(sys.executable).parent


def readings_frame(i: int) -> Readings:
    """Frame i: module 1001 inputs 1 and 2, module 1002 input 3, ten minutes after frame i-1."""
    t = T0 + i * 600
    return Readings((
        ReadingRecord(1001, t, 0, 3600, -70, 1, 0b011, (1000 + 10 * i, 5000 + 3 * i)),
        ReadingRecord(1002, t, 0, 3500, -80, 2, 0b100, (77 + i,)),
    ))


def readings_in(frames: dict[int, bytes]) -> set[tuple[int, int, int]]:
    """(module, channel, ts) of every reading in the given frames."""
    out = set()
    for data in frames.values():
        (frame,) = StreamDecoder().feed(data)
        for r in decode_payload(frame).records:
            out |= {(r.module_id, ch, r.ts) for ch in r.channels}
    return out


def stored(db_path: Path) -> list[tuple[int, int, int]]:
    with sqlite3.connect(db_path) as db:
        return db.execute(
            "SELECT m.module_id, m.channel, r.ts FROM readings r JOIN meters m ON m.id = r.meter"
        ).fetchall()


async def start_driver(make_server, tmp_path, **dmesh):
    """A real server with the DMesh driver on a free port and the small site registered."""
    table = {"port": 0, "concentrators": [{"id": CID, "key": KEY}], **dmesh}
    server = await make_server(base_config(tmp_path, plugins={"dmesh": table}))
    await server.storage.registry_apply(small_site())
    return next(c for _, c in server.components if c.name == "dmesh-driver")


def concentrator(port: int, **kw) -> SimulatedConcentrator:
    return SimulatedConcentrator(ConcentratorSettings(CID, KEY.encode(), port=port, reconnect_s=0.1, **kw))


async def deliver(c: SimulatedConcentrator, frames: int) -> None:
    """Submit frames 0..frames-1, run the concentrator until every one is answered, stop it."""
    for i in range(frames):
        c.submit(readings_frame(i))
    c.start()
    try:
        async with asyncio.timeout(15):
            await c.drained()
    finally:
        await c.stop()


async def test_streamed_frames_are_acked_after_they_are_stored(make_server, tmp_path):
    driver = await start_driver(make_server, tmp_path)
    c = concentrator(driver.port)
    await deliver(c, 40)
    assert len(c.acked) == 40 and not c.rejected
    assert set(stored(tmp_path / "balans.db")) == readings_in(c.acked)
    assert len(stored(tmp_path / "balans.db")) == 40 * 3
    assert c.counters.connects == 1


async def test_dropped_link_resends_unacknowledged_frames_once_stored(make_server, tmp_path):
    driver = await start_driver(make_server, tmp_path)
    c = concentrator(driver.port, retransmit_s=0.3)
    c.start()
    try:
        async with asyncio.timeout(15):
            await c.connected.wait()
            for i in range(60):
                c.submit(readings_frame(i))
                if i in (20, 40):
                    before = c.counters.connects
                    c.drop_link()  # frames in flight are sent again after the reconnect
                    while c.counters.connects == before:
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.005)
            await c.drained()
    finally:
        await c.stop()
    assert c.counters.connects >= 3
    assert len(c.acked) == 60
    rows = stored(tmp_path / "balans.db")
    assert len(rows) == len(set(rows)) == 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_sigkill_while_streaming_loses_no_acknowledged_reading(tmp_path):
    db = tmp_path / "balans.db"
    port = free_port()
    config = tmp_path / "server.toml"
    config.write_text(
        f'[server]\nport = {free_port()}\n[storage]\nurl = "sqlite:{db}"\n'
        f'[plugins.dmesh]\nport = {port}\nconcentrators = [{{ id = {CID}, key = "{KEY}" }}]\n'
    )
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "concentrators.csv").write_text(f"concentrator_id\n{CID}\n")
    (registry / "modules.csv").write_text(f"module_id,concentrator_id,channels\n1001,{CID},3\n1002,{CID},4\n")
    (registry / "meters.csv").write_text(
        "meter_id,resource,unit,pulse_weight,install_time,module_id,channel\n"
        "W-1,water,m3,0.001,2014-01-01T00:00:00Z,1001,1\n"
        "W-2,water,m3,0.001,2014-01-01T00:00:00Z,1001,2\n"
        "W-3,water,m3,0.01,2014-01-01T00:00:00Z,1002,3\n"
    )
    imported = subprocess.run([BIN / "balans-edge", "registry", "import", "-c", str(config), str(registry)],
                              capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr

    def launch() -> subprocess.Popen:
        return subprocess.Popen([BIN / "balans-edge", "run", "-c", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    proc = launch()
    c = concentrator(port, retransmit_s=0.5)
    c.start()
    try:
        async with asyncio.timeout(60):
            await c.connected.wait()
            for i in range(150):
                c.submit(readings_frame(i))
                await asyncio.sleep(0.002)
                if i == 100:
                    while len(c.acked) < 20:  # the server is storing when it dies
                        await asyncio.sleep(0.01)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    acked_before_kill = dict(c.acked)
                    on_disk = set(stored(db))
                    assert readings_in(acked_before_kill) <= on_disk
                    proc = launch()
            await c.drained()
    finally:
        await c.stop()
        proc.terminate()
        proc.wait(30)
    assert 0 < len(acked_before_kill) < 150
    assert len(c.acked) == 150
    rows = stored(db)
    assert len(rows) == len(set(rows)) == 150 * 3
    assert set(rows) == readings_in(c.acked)


async def test_site_simulator_over_tcp_fills_the_history(make_server, tmp_path):
    """The demo's path: simulated concentrators dial in to the driver and deliver the site's history."""
    dmesh = {
        "port": 0,
        "concentrators": [{"id": 900001, "key": "key-900001-abcdef"}, {"id": 900002, "key": "key-900002-abcdef"}],
        "simulator": {"enabled": True, "transport": "tcp", "concentrators": 2, "buildings": 3, "apartments": 4,
                      "history_hours": 3, "interval_s": 3600},
    }
    server = await make_server(base_config(tmp_path, plugins={"dmesh": dmesh}))
    sim = next(c for _, c in server.components if c.name == "dmesh-simulator")
    async with asyncio.timeout(20):
        await sim.tcp.drained()
    rows = stored(tmp_path / "balans.db")
    hours = len(rows) // (3 * 5)
    assert hours in (4, 5)  # 3 hours back and now (and the next hour mark, if the test crossed one)
    assert len(rows) == len(set(rows)) == hours * 3 * 5
    assert {c.counters.connects for c in sim.tcp.concentrators.values()} == {1}
    # Buildings 1 and 3 report through concentrator 900001, building 2 through 900002.
    modules = await server.storage.registry_list("modules")
    assert collections.Counter(m.concentrator_id for m in modules) == {900001: 10, 900002: 5}
    assert {c.settings.modules for c in sim.tcp.concentrators.values()} == {10, 5}


async def test_site_simulator_over_tcp_needs_keys(make_server, tmp_path):
    dmesh = {"port": 0, "concentrators": [{"id": 900001, "key": "key-900001-abcdef"}],
             "simulator": {"enabled": True, "transport": "tcp", "concentrators": 2}}
    server = await make_server(base_config(tmp_path, plugins={"dmesh": dmesh}))
    info = server.plugins.info["dmesh"]
    assert info.state == "failed"
    assert "[900002] need keys" in info.error


async def test_simulated_concentrator_over_a_serial_line(make_server, tmp_path):
    """The driver opens one end of a socat pseudo-terminal pair, the simulator sits on the other."""
    socat = peer("socat")
    host_end, device_end = tmp_path / "A", tmp_path / "B"
    proc = subprocess.Popen([socat, "-d", "-d", f"pty,raw,echo=0,link={host_end}", f"pty,raw,echo=0,link={device_end}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with asyncio.timeout(5):
            while not (host_end.exists() and device_end.exists()):
                await asyncio.sleep(0.02)
        await start_driver(make_server, tmp_path, listen=False, serial=[{"path": str(host_end)}])
        c = SimulatedConcentrator(ConcentratorSettings(CID, KEY.encode(), serial=str(device_end), reconnect_s=0.1))
        await deliver(c, 20)
    finally:
        proc.terminate()
        proc.wait(5)
    assert len(c.acked) == 20
    rows = stored(tmp_path / "balans.db")
    assert len(rows) == len(set(rows)) == 60
