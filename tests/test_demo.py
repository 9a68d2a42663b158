"""`make demo` shows what it promises: the demo configuration, run as the real server
(its own process, its simulated concentrators dialling in over TCP) on a temporary
database and free ports, has every injected fault found by the detector that should
find it in the first scheduled analytics run, half a minute after start, and listed by
`balans-edge analytics findings`. The README names as many faults as the config has."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from balans_edge.config import parse_config
from balans_edge.plugin_manager import config_schemas, load_plugins

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config" / "demo.toml"
BIN = Path(sys.executable).parent
DEADLINE_S = 85.0
"""The demo's first analytics run starts first_run_s (30 s) after start-up; under load it takes a while."""

FOUND_BY = {
    "theft": ("slowed-meter", "slowed_meter"),
    "magnet": ("module-status", "magnet"),
    "leak": ("consumer-leak", "consumer_leak"),
    "stuck": ("stuck-meter", "stuck_meter"),
    "unmetered": ("unmetered-connection", "unmetered_connection"),
    "low_battery": ("dmesh-network", "low_battery"),
    "lost_module": ("dmesh-network", "silent"),
}
"""Fault kind of the simulator -> (detector, finding kind) that must report it."""
NETWORK = {"low_battery", "lost_module"}
"""Faults reported about the meter's radio module (subject ``module:ID``)."""
NUMBERS = {"three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}


def demo_config(tmp_path: Path) -> Path:
    """The demo configuration on a temporary database, the HTTP API and the DMesh driver on free ports."""
    text = DEMO.read_text(encoding="utf-8")
    changes = {'url = "sqlite:var/demo.db"': f'url = "sqlite:{tmp_path / "demo.db"}"',
               "port = 8080": "port = 0",
               "[plugins.dmesh]\n": "[plugins.dmesh]\nport = 0\n"}
    for old, new in changes.items():
        assert text.count(old) == 1, f"config/demo.toml no longer has {old!r}: update this test"
        text = text.replace(old, new)
    path = tmp_path / "demo.toml"
    path.write_text(text, encoding="utf-8")
    return path


def faults() -> list:
    config = parse_config(tomllib.loads(DEMO.read_text(encoding="utf-8")), config_schemas(load_plugins()))
    return config.plugins["dmesh"].simulator.faults


def viewer_token() -> str:
    users = tomllib.loads(DEMO.read_text(encoding="utf-8"))["api"]["users"]
    return next(u["token"] for u in users if u["role"] == "viewer")


def test_the_readme_counts_the_configured_faults() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"(\w+) injected faults", readme)
    assert match is not None, "README.md no longer says how many faults the demo injects"
    assert NUMBERS.get(match[1], match[1]) == len(faults())
    unknown = sorted({f.kind for f in faults()} - set(FOUND_BY))
    assert not unknown, f"say which detector finds {unknown}"


def test_every_injected_fault_is_found_in_the_first_minutes(tmp_path: Path) -> None:
    config = demo_config(tmp_path)
    started = time.monotonic()
    server = subprocess.Popen([BIN / "balans-edge", "run", "-c", str(config)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline() if server.stdout else ""
        assert line.startswith("listening on http://"), f"the server did not start: {line!r}"
        api = httpx.Client(base_url=line.split()[-1], headers={"Authorization": f"Bearer {viewer_token()}"},
                           timeout=30)
        expected = {}
        for fault in faults():
            detector, kind = FOUND_BY[fault.kind]
            subject = fault.building or fault.meter
            if fault.kind in NETWORK:
                subject = f"module:{api.get(f'/api/v1/meters/{fault.meter}').json()['module_id']}"
            expected[(detector, kind, subject)] = fault.kind
        found: set[tuple[str, str, str]] = set()
        while time.monotonic() - started < DEADLINE_S and not set(expected) <= found:
            time.sleep(2)
            rows = api.get("/api/v1/findings", params={"limit": 1000}).json()["findings"]
            found = {(f["detector"], f["kind"], f["subject"]) for f in rows}
        missing = {fault: key for key, fault in expected.items() if key not in found}
        assert not missing, f"not found within {DEADLINE_S:.0f} s: {missing}; found {sorted(found)}"
        listed = subprocess.run([BIN / "balans-edge", "analytics", "findings", "-c", str(config), "--json",
                                 "--limit", "1000"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)["findings"]
        assert set(expected) <= {(f["detector"], f["kind"], f["subject"]) for f in rows}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            pytest.fail("the demo server did not stop on SIGTERM")
