"""The "Connecting a real concentrator" guide in plugins/dmesh/README.md works
as written: its configuration loads with the real loader, its registry rows
import, its commands exist with those options and run, and the API paths it
shows answer on a server started from that configuration."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from balans_edge.config import parse_config
from balans_edge.plugin_manager import config_schemas, load_plugins

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "plugins" / "dmesh" / "README.md"
TOKEN = "ops-token-0123456789abcdef"
ENV = {"DMESH_KEY_20114": "field-key-of-20114-0123456789", "BALANS_EDGE_ADMIN_TOKEN": TOKEN}


def section() -> str:
    text = README.read_text("utf-8")
    return text.split("\n## Connecting a real concentrator\n", 1)[1].split("\n## ", 1)[0]


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", section(), re.DOTALL)


def registry_files() -> dict[str, str]:
    return dict(re.findall(r"`registry/(\w+\.csv)`:\n\n```csv[^\n]*\n(.*?)```", section(), re.DOTALL))


def commands() -> list[list[str]]:
    """The balans-edge command lines of the guide's console blocks."""
    lines = [line[2:] for block in blocks("console") for line in block.splitlines() if line.startswith("$ ")]
    return [shlex.split(line)[1:] for line in lines if line.startswith("balans-edge ")]


def site(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """The guide's site.toml, its database moved under tmp_path."""
    (toml,) = blocks("toml")
    data = tomllib.loads(toml)
    text = toml.replace(data["storage"]["url"], f"sqlite:{tmp_path / 'site.db'}")
    return text, tomllib.loads(text)


def test_the_guide_is_found() -> None:
    assert set(registry_files()) == {"concentrators.csv", "modules.csv", "meters.csv", "groups.csv"}
    assert [c[:2] for c in commands()] == [["check-config", "site.toml"], ["registry", "import"], ["run", "-c"],
                                           ["dmesh", "commissioning"], ["registry", "unknown"]]


def test_configuration_loads_with_the_real_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    (toml,) = blocks("toml")
    config = parse_config(tomllib.loads(toml), config_schemas(load_plugins()), source="site.toml")
    dmesh = config.plugins["dmesh"]
    assert (dmesh.host, dmesh.port, dmesh.backfill_days, dmesh.backfill_delay_s) == ("0.0.0.0", 7433, 7, 30.0)
    assert [(c.id, c.key) for c in dmesh.concentrators] == [(20114, ENV["DMESH_KEY_20114"])]
    assert [(u.name, u.role, u.token) for u in config.api.users] == [("ops", "admin", TOKEN)]
    monkeypatch.delenv("DMESH_KEY_20114")
    with pytest.raises(Exception, match="DMESH_KEY_20114 is not set"):
        parse_config(tomllib.loads(toml), config_schemas(load_plugins()))


def test_every_command_parses() -> None:
    """Each command line resolves to an existing command whose options accept those arguments."""
    import click

    from balans_edge.cli import cli

    for impl in load_plugins().pm.hook.register_commands.get_hookimpls():
        impl.function(cli=cli)
    for args in commands():
        ctx = cli.make_context("balans-edge", list(args), resilient_parsing=True)
        group: click.Command = cli
        rest = list(args)
        while isinstance(group, click.Group):
            name, group, rest = group.resolve_command(ctx, rest)
            assert group is not None, args
            ctx = group.make_context(name, list(rest), parent=ctx, resilient_parsing=True)
        params = {p.name for p in group.params}
        for option in (a for a in rest if a.startswith("-")):
            assert any(option in p.opts for p in group.params), f"{args}: no option {option} ({params})"


def run(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "balans-edge"), *args], cwd=tmp_path,
                          env={**os.environ, **ENV}, capture_output=True, text=True, timeout=60)


async def test_the_example_runs(tmp_path: Path, make_server: Any, client_for: Any,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    text, data = site(tmp_path)
    (tmp_path / "site.toml").write_text(text, "utf-8")
    (tmp_path / "registry").mkdir()
    for name, rows in registry_files().items():
        (tmp_path / "registry" / name).write_text(rows, "utf-8")
    by_command = {tuple(c[:2]): c for c in commands()}

    checked = run(tmp_path, by_command[("check-config", "site.toml")])
    assert checked.returncode == 0 and checked.stdout.startswith("site.toml: OK (site 'Lesnaya 12'"), checked
    imported = run(tmp_path, by_command[("registry", "import")])
    assert imported.returncode == 0, imported.stderr
    shown = next(b for b in blocks("console") if "registry import" in b)
    assert imported.stdout.strip() in shown  # the counts the guide shows

    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    data["server"]["port"] = 1  # any free ports, and loopback, for the test
    data["plugins"]["dmesh"].update(host="127.0.0.1", port=0)
    server = await make_server(data)
    http = client_for(server)
    paths = re.findall(r"http://127\.0\.0\.1:8080(/api/v1/\S+)", section())
    assert len(paths) == 3
    for path in paths:
        r = await http.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, (path, r.text)
    concentrators = (await http.get(paths[0], headers={"Authorization": f"Bearer {TOKEN}"})).json()
    assert [(c["id"], c["registered"], c["configured"]) for c in concentrators["concentrators"]] == [
        (20114, True, True)]

    # No data has arrived here: commissioning says so (exit 1), the quarantine is empty.
    report = run(tmp_path, by_command[("dmesh", "commissioning")])
    assert report.returncode == 1, report.stderr
    assert [line.split()[0] for line in report.stdout.splitlines()[2:6]] == ["CW-IN", "CW-001", "CW-002", "CW-003"]
    unknown = run(tmp_path, by_command[("registry", "unknown")])
    assert unknown.returncode == 0, unknown.stderr
