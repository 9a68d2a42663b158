"""Credentials never shown or logged: open health answers only the status, and a
target URL's password, its token and secret query values are masked in health,
the export API, plugin errors, check-config output and the server's log (a real
server process sending to a real HTTP endpoint on 127.0.0.1)."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from export_support import ScriptedWriteApi
from hypothesis import given
from hypothesis import strategies as st

from balans_edge.core.redact import MASK, RedactingFilter, redact_text, redact_url
from balans_edge.plugin_manager import summarize

from conftest import TOKENS, auth, base_config, eventually, small_site

BIN = Path(sys.executable).parent
PASSWORD = "pw-Xq93-secret"
TOKEN = "influx-token-7f3a9c0e1d2b"


@pytest.fixture
def write_api() -> Iterator[ScriptedWriteApi]:
    api = ScriptedWriteApi()
    yield api
    api.close()


def test_a_url_keeps_where_it_points_and_loses_its_credentials():
    assert redact_url(f"http://writer:{PASSWORD}@influx:8086/base?org=o&token={TOKEN}&bucket=b") == \
        f"http://writer:{MASK}@influx:8086/base?org=o&token={MASK}&bucket=b"
    assert redact_url(f"https://{TOKEN}@vm.example") == f"https://{MASK}@vm.example"  # a user part may be a token
    assert redact_url("http://influx:8086/?u=admin&p=hunter22") == f"http://influx:8086/?u=admin&p={MASK}"
    assert redact_url("http://127.0.0.1:8428") == "http://127.0.0.1:8428"
    assert redact_url("sqlite:var/balans-edge.db") == "sqlite:var/balans-edge.db"


def test_free_text_loses_urls_credentials_headers_and_named_secrets():
    text = (f"ConnectError: http://writer:{PASSWORD}@influx:8086/api/v2/write?token={TOKEN} "
            f"(Authorization: Token {TOKEN}); the Token expired; Bearer {TOKEN}; key {PASSWORD}")
    masked = redact_text(text, secrets=[PASSWORD])
    assert PASSWORD not in masked and TOKEN not in masked
    assert "influx:8086/api/v2/write" in masked and "the Token expired" in masked


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%",
               min_size=6, max_size=40),
       st.sampled_from(["http", "https", "opc.tcp", "postgresql"]))
def test_no_password_survives_in_any_url(password, scheme):
    url = f"{scheme}://user:{password}@host.example:8086/path"
    shown = redact_url(url)
    assert shown == f"{scheme}://user:{MASK}@host.example:8086/path"
    assert f"user:{MASK}@host.example" in redact_text(f"failed: {url} refused")


def test_plugin_errors_are_masked():
    try:
        raise ConnectionError(f"cannot reach http://svc:{PASSWORD}@10.0.0.5:4840/")
    except ConnectionError as exc:
        shown = summarize(exc)
    assert PASSWORD not in shown and "10.0.0.5:4840" in shown


def test_the_log_filter_masks_every_logger():
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("third.party.client")
    logger.addHandler(handler)
    try:
        logger.warning("HTTP Request: POST %s %r", f"http://w:{PASSWORD}@h/api/v2/write", "HTTP/1.1 204")
    finally:
        logger.removeHandler(handler)
    assert records == [f'HTTP Request: POST http://w:{MASK}@h/api/v2/write \'HTTP/1.1 204\'']


async def test_health_and_export_api_show_no_credentials(make_server, client_for, tmp_path, write_api):
    url = f"http://writer:{PASSWORD}@127.0.0.1:{write_api.port}"
    target = {"name": "t", "url": url, "bucket": "b", "token": TOKEN, "kinds": ["readings"],
              "flush_interval_s": 0.05}
    server = await make_server(base_config(tmp_path, plugins={"export": {"targets": [target]}}))
    await server.storage.registry_apply(small_site())
    client = client_for(server)

    anonymous = await client.get("/api/v1/health")
    assert anonymous.json() == {"status": "ok"}
    for path in ("/api/v1/health", "/api/v1/export/targets", "/api/v1/plugins", "/api/v1/export/metrics"):
        text = (await client.get(path, headers=auth("viewer"))).text
        assert PASSWORD not in text and TOKEN not in text, path
    shown = (await client.get("/api/v1/health", headers=auth("viewer"))).json()["exporters"]["export:t"]["url"]
    assert shown == f"http://writer:{MASK}@127.0.0.1:{write_api.port}"

    # The credentials still reach the target, as Basic auth (the token overrides it, as before).
    from balans_edge.core.model import RawReading

    await server.ingest.ingest([RawReading(1001, 1, 1390176000 + i * 60, i) for i in range(3)])
    assert await eventually(lambda: write_api.accepted_lines(), timeout=10)
    assert PASSWORD not in write_api.requests[0].path


def test_a_running_server_logs_no_credentials(tmp_path, write_api):
    """httpx logs each request's URL at INFO; a failing target's error is logged too."""
    users = ", ".join(f'{{ name = "{r}", role = "{r}", token = "{t}" }}' for r, t in TOKENS.items())
    config = tmp_path / "c.toml"
    config.write_text(
        f'[server]\nlog_level = "info"\nshutdown_timeout_s = 5\n[storage]\nurl = "sqlite:{tmp_path / "db.sqlite"}"\n'
        f"[api]\nusers = [{users}]\n"
        f'[[plugins.export.targets]]\nname = "ok"\nurl = "http://writer:{PASSWORD}@127.0.0.1:{write_api.port}"\n'
        f'bucket = "b"\nkinds = ["readings"]\nflush_interval_s = 0.05\n'
        f'[[plugins.export.targets]]\nname = "down"\nurl = "http://u:{PASSWORD}@127.0.0.1:9/?token={TOKEN}"\n'
        f'bucket = "b"\nkinds = ["readings"]\nflush_interval_s = 0.05\nbackoff_initial_s = 0.05\n', encoding="utf-8")
    proc = subprocess.Popen([BIN / "balans-edge", "run", "-c", str(config), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on "), proc.stderr.read() if proc.poll() is not None else line
        base = line.split()[-1]
        admin = auth("admin")
        with httpx.Client(base_url=base, timeout=10) as c:
            assert c.put("/api/v1/concentrators/7", json={}, headers=admin).status_code == 201
            assert c.put("/api/v1/modules/1001", json={"concentrator_id": 7, "channels": 1},
                         headers=admin).status_code == 201
            meter = {"resource": "water", "unit": "m3", "pulse_weight": 0.001, "install_time": "2014-01-01T00:00:00Z",
                     "module_id": 1001, "channel": 1}
            assert c.put("/api/v1/meters/M-1", json=meter, headers=admin).status_code == 201
            rows = [{"module_id": 1001, "channel": 1, "ts": 1390176000 + i * 60, "counter": i} for i in range(5)]
            assert c.post("/api/v1/readings", json={"readings": rows}, headers=auth("operator")).status_code == 200
            deadline = time.monotonic() + 10
            while not write_api.accepted_lines() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert write_api.accepted_lines()
            expected = base64.b64encode(f"writer:{PASSWORD}".encode()).decode()
            assert write_api.requests[0].headers["Authorization"] == f"Basic {expected}"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the unreachable target has failed and said so
                down = c.get("/api/v1/export/targets", headers=auth("viewer")).json()["targets"]
                if any(t["target"] == "down" and t["last_error"] for t in down):
                    break
                time.sleep(0.05)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert "HTTP Request: POST" in stderr  # the log is there, and it is at the level where it leaked
    assert "down" in stderr and "Connect" in stderr
    assert PASSWORD not in stderr and TOKEN not in stderr


def test_check_config_repeats_no_secret(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        '[api]\nusers = [{ name = "a", role = "admin", token = 12345678901234567890 }]\n'
        '[[plugins.opcua.devices]]\nname = "p"\nendpoint = "http://op:' + PASSWORD + '@10.0.0.5/"\n',
        encoding="utf-8")
    out = subprocess.run([BIN / "balans-edge", "check-config", str(config)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "token: expected a string (the value is a secret: not shown)" in out.stderr
    assert PASSWORD not in out.stderr and "12345678901234567890" not in out.stderr
