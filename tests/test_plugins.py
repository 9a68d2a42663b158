"""Plugin loading and failure isolation: a plugin that fails to import, to
register or to start is disabled with a traceback summary while the rest
runs, unless it is required; ``enabled = false``; ``balans-edge plugins``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from balans_edge import hookimpl
from balans_edge.core.components import Command, CommandCode
from balans_edge.plugin_manager import PluginError, Plugins

from conftest import auth, base_config

BIN = Path(sys.executable).parent
MakeServer = Callable[..., Awaitable[Any]]
ALL_HOOKS = Plugins().hook_names()

# Each plugin also contributes a route, an actuator and a detector, so a test
# can tell whether a failed plugin was really taken out of service.
CONTRIBUTIONS = """
@hookimpl
def register_routes():
    async def hello(request):
        return json({"hello": True})

    return [Route("GET", "/api/v1/{name}/hello", hello, "Hello", role=None)]


class Actuator:
    name = "{name}-actuator"

    def handles(self, command):
        return command.target.startswith("{name}:")

    async def execute(self, command):
        return CommandOutcome(ok=True)


@hookimpl
def register_actuators():
    return [Actuator()]
"""

HEADER = """\
from balans_edge import hookimpl
from balans_edge.core.components import CommandOutcome
from balans_edge.routes import Route, json

EVENTS = []
"""

SOURCES = {
    "import": HEADER + 'raise RuntimeError("missing driver library")\n',
    "register": HEADER
    + textwrap.dedent("""
        @hookimpl
        def register_components():
            raise ValueError("no serial port configured")
        """),
    "start": HEADER
    + textwrap.dedent("""
        class Fine:
            name = "fine"

            async def start(self):
                EVENTS.append("fine started")

            async def stop(self):
                EVENTS.append("fine stopped")


        class Broken:
            name = "broken"

            async def start(self):
                raise OSError("port 502 is in use")

            async def stop(self):
                EVENTS.append("broken stopped")


        @hookimpl
        def register_components():
            return [Fine(), Broken()]
        """),
}
EXPECTED = {
    "import": "RuntimeError: missing driver library (at {name}.py:6 in <module>)",
    "register": "ValueError: no serial port configured (at {name}.py:9 in register_components)",
    "start": "OSError: port 502 is in use (at {name}.py:21 in start)",
}


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """Write plugin modules into a folder on sys.path; forget them afterwards."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    written: list[str] = []

    def write(name: str, kind: str) -> str:
        source = SOURCES[kind] + CONTRIBUTIONS.replace("{name}", name)
        (folder / f"{name}.py").write_text(source, encoding="utf-8")
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def loaded(*modules: str) -> Plugins:
    plugins = Plugins()
    plugins.load(builtins=True, entry_points=False, modules=modules)
    return plugins


@pytest.mark.parametrize("kind", ["import", "register", "start"])
async def test_failing_plugin_is_disabled_and_the_rest_runs(
    kind: str,
    tmp_path: Path,
    plugin_dir: Callable[[str, str], str],
    make_server: MakeServer,
    client_for: Callable[[Any], Any],
) -> None:
    name = plugin_dir(f"faulty_{kind}", kind)
    plugins = loaded(name)
    if kind == "import":
        assert plugins.info[name].state == "failed"
        assert plugins.info[name].error == EXPECTED[kind].format(name=name)
    else:
        assert plugins.info[name].state == "loaded"

    server = await make_server(base_config(tmp_path), plugins_=plugins)
    client = client_for(server)

    info = plugins.info[name]
    assert (info.state, info.source) == ("failed", "module")
    assert info.error == EXPECTED[kind].format(name=name)
    assert plugins.info["dmesh"].state == "started"

    health = await client.get("/api/v1/health", headers=auth("viewer"))
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert health.json()["plugins"] == {"analytics": "started", "dmesh": "started", "modbus": "started",
                                        "opcua": "started", "export": "started", name: "failed"}
    listing = (await client.get("/api/v1/plugins", headers=auth("viewer"))).json()["plugins"]
    assert [(p["name"], p["state"], p["error"]) for p in listing] == sorted([
        ("analytics", "started", None),
        ("dmesh", "started", None),
        ("export", "started", None),
        ("modbus", "started", None),
        ("opcua", "started", None),
        (name, "failed", EXPECTED[kind].format(name=name)),
    ])

    # Out of service: none of its contributions is in use.
    assert (await client.get(f"/api/v1/{name}/hello")).status_code == 404
    command = await server.actuation.execute(Command(f"{name}:valve", CommandCode.VALVE_CLOSE, "test", "isolation"))
    assert command.outcome == "refused"
    if kind == "start":
        # The component that did start was stopped again; the broken one never ran.
        assert sys.modules[name].EVENTS == ["fine started", "fine stopped"]


@pytest.mark.parametrize("kind", ["import", "register", "start"])
async def test_failing_required_plugin_stops_start_up(
    kind: str, tmp_path: Path, plugin_dir: Callable[[str, str], str], make_server: MakeServer
) -> None:
    name = plugin_dir(f"needed_{kind}", kind)
    plugins = loaded(name)
    with pytest.raises(PluginError) as exc:
        await make_server(base_config(tmp_path, plugins={name: {"required": True}}), plugins_=plugins)
    verb = "failed to load" if kind == "import" else "failed"
    assert str(exc.value) == f"required plugin {name} {verb}: {EXPECTED[kind].format(name=name)}"
    if kind == "start":
        assert sys.modules[name].EVENTS == ["fine started", "fine stopped"]


async def test_required_plugin_that_is_not_installed(tmp_path: Path, make_server: MakeServer) -> None:
    with pytest.raises(PluginError, match=r"^required plugin scada_bridge is not installed$"):
        await make_server(base_config(tmp_path, plugins={"scada_bridge": {"required": True}}))


@pytest.mark.parametrize(
    ("typo", "fixed", "expected"),
    [
        ("def register_components()", "def register_components(srv)", "srv"),
        ("def register_components(", "def register_componets(", "unknown hook(s): register_componets"),
    ],
    ids=["argument", "hook name"],
)
def test_plugin_with_a_misspelt_hook_fails_to_register(
    tmp_path: Path, plugin_dir: Callable[[str, str], str], typo: str, fixed: str, expected: str
) -> None:
    name = plugin_dir("misspelt", "register")
    source_file = tmp_path / "site" / f"{name}.py"
    source_file.write_text(source_file.read_text("utf-8").replace(typo, fixed), encoding="utf-8")
    plugins = loaded(name)
    assert plugins.info[name].state == "failed"
    assert "register_components" in plugins.info[name].error or "register_componets" in plugins.info[name].error
    assert expected in plugins.info[name].error
    assert plugins.pm.get_plugin(name) is None


async def test_enabled_false_disables_a_plugin(
    tmp_path: Path, make_server: MakeServer, client_for: Callable[[Any], Any]
) -> None:
    server = await make_server(base_config(tmp_path, plugins={"example": {"enabled": False}}))
    client = client_for(server)

    assert server.plugins.info["example"].state == "disabled"
    assert server.plugins.info["example"].error is None
    # (the export plugin's component puts its queues into effect, with no target configured too)
    assert [n for n, _ in server.components + server.exporters] == ["analytics", "export"]
    assert (await client.get("/api/v1/example/summary", headers=auth("viewer"))).status_code == 404
    health = (await client.get("/api/v1/health", headers=auth("viewer"))).json()
    assert health["plugins"] == {"analytics": "started", "dmesh": "started", "example": "disabled",
                                 "modbus": "started", "opcua": "started", "export": "started"}
    assert health["exporters"] == {}
    command = await server.actuation.execute(Command("example:valve", CommandCode.VALVE_OPEN, "test", "disabled"))
    assert command.outcome == "refused"


# the command line -------------------------------------------------------------


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "balans-edge"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_plugins_command_lists_builtin_and_entry_point_plugins(tmp_path: Path) -> None:
    result = run_cli("plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["dmesh"]["source"] == "builtin"
    assert plugins["dmesh"]["module"] == "balans_edge.plugins.dmesh.plugin:DmeshPlugin"
    assert {"config_schema", "register_components", "register_routes", "register_detectors",
            "register_commands"} <= set(plugins["dmesh"]["hooks"])
    assert plugins["example"]["source"].startswith("entry point (balans-edge-example ")
    assert plugins["example"]["module"] == "balans_edge_example:ExamplePlugin"
    assert plugins["example"]["hooks"] == ALL_HOOKS
    assert {p["state"] for p in plugins.values()} == {"loaded"}

    config = tmp_path / "off.toml"
    config.write_text("[plugins.example]\nenabled = false\n", encoding="utf-8")
    result = run_cli("plugins", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:3] == ["example", "disabled", "entry"] for line in lines), result.stdout


def install_entry_point(folder: Path, name: str) -> None:
    """Make ``name`` an installed distribution with a ``balans_edge`` entry point (a dist-info on sys.path)."""
    info = folder / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[balans_edge]\n{name} = {name}\n", encoding="utf-8")


def test_cli_reports_failing_entry_point_plugins(tmp_path: Path, plugin_dir: Callable[[str, str], str]) -> None:
    site = tmp_path / "site"
    for kind in ("import", "start"):
        install_entry_point(site, plugin_dir(f"ep_{kind}", kind))
    env = {"PYTHONPATH": str(site)}

    result = run_cli("plugins", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["ep_import"]["state"] == "failed"
    assert plugins["ep_import"]["source"] == "entry point (ep_import 0.1)"
    assert plugins["ep_import"]["error"] == EXPECTED["import"].format(name="ep_import")
    assert plugins["ep_start"]["state"] == "loaded"  # it fails only when started
    assert plugins["example"]["state"] == "loaded"

    config = tmp_path / "required.toml"
    config.write_text(
        f'[storage]\nurl = "sqlite:{tmp_path / "cli.db"}"\n\n[plugins.ep_start]\nrequired = true\n', encoding="utf-8"
    )
    result = run_cli("run", "-c", str(config), "--port", "0", cwd=tmp_path, env=env)
    assert result.returncode == 3
    assert (
        "start-up failed: required plugin ep_start failed: " + EXPECTED["start"].format(name="ep_start")
        in result.stderr
    )
    assert "listening on" not in result.stdout

    config.write_text(
        f'[storage]\nurl = "sqlite:{tmp_path / "cli.db"}"\n\n[plugins.ep_import]\nrequired = true\n', encoding="utf-8"
    )
    result = run_cli("run", "-c", str(config), "--port", "0", cwd=tmp_path, env=env)
    assert result.returncode == 3
    assert (
        "start-up failed: required plugin ep_import failed to load: " + EXPECTED["import"].format(name="ep_import")
        in result.stderr
    )


def test_cli_runs_with_failing_optional_plugins(tmp_path: Path, plugin_dir: Callable[[str, str], str]) -> None:
    import httpx

    site = tmp_path / "site"
    for kind in ("import", "start"):
        install_entry_point(site, plugin_dir(f"opt_{kind}", kind))
    config = tmp_path / "optional.toml"
    config.write_text(f'[storage]\nurl = "sqlite:{tmp_path / "cli.db"}"\n[api]\nanonymous_role = "viewer"\n',
                      encoding="utf-8")
    proc = subprocess.Popen(
        [str(BIN / "balans-edge"), "run", "-c", str(config), "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://"), proc.stderr.read() if proc.poll() is not None else line
        health = httpx.get(line.split()[-1] + "/api/v1/health", timeout=10).json()
        assert health["plugins"] == {
            "analytics": "started",
            "dmesh": "started",
            "example": "started",
            "export": "started",
            "modbus": "started",
            "opcua": "started",
            "opt_import": "failed",
            "opt_start": "failed",
        }
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert "plugin opt_import failed to load: " + EXPECTED["import"].format(name="opt_import") in stderr
    assert "plugin opt_start failed: " + EXPECTED["start"].format(name="opt_start") in stderr


async def test_register_hooks_are_called_once_when_another_plugin_fails(
    tmp_path: Path, plugin_dir: Callable[[str, str], str], make_server: MakeServer
) -> None:
    calls: list[str] = []

    class Counter:
        @hookimpl
        def register_components(self) -> list[Any]:
            calls.append("register_components")
            return []

        @hookimpl
        def register_routes(self) -> list[Any]:
            calls.append("register_routes")
            return []

    plugins = Plugins()
    plugins.register(Counter(), "counter")
    plugins.load(builtins=False, entry_points=False, modules=[plugin_dir("faulty_late", "register")])
    await make_server(base_config(tmp_path), plugins_=plugins)
    assert plugins.info["faulty_late"].state == "failed"
    assert plugins.info["counter"].state == "started"
    assert calls == ["register_components", "register_routes"]
