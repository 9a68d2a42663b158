"""The wheel is what an installation gets: build it from a copy of the
repository, install it into a clean virtual environment (dependencies come
from the configured package index), and run the installed command line, the
installed namespace packages and an installed third-party plugin there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from balans_edge.plugin_manager import Plugins

ROOT = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
    ".hypothesis", "node_modules",
)  # fmt: skip
IMPORTS = (
    "balans_edge.core.ingest, balans_edge.plugins.dmesh.plugin, balans_edge.plugins.modbus.plugin, "
    "balans_edge.plugins.opcua.plugin, balans_edge.plugins.export, balans_edge.plugins.analytics.plugin, "
    "balans_edge.core.analytics.imbalance_fit, balans_edge.core.analytics.meter_checks"
)


def clean_env() -> dict[str, str]:
    """This process's environment without anything that points at the development tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_CACHE_DIR"] = "1"
    return env


def run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.timeout(900)
def test_wheel_installs_into_a_clean_venv_and_runs(tmp_path: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]

    # Build from a copy, so no build/ or egg-info of an earlier build leaks in.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=IGNORED)
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, src, cwd=src)
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"balans_edge-{version}-py3-none-any.whl"

    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"balans_edge", f"balans_edge-{version}.dist-info"}
    folder = ROOT / "core" / "storage" / "migrations"
    migrations = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.sql"))
    assert migrations
    packed = sorted(n.removeprefix("balans_edge/core/storage/migrations/") for n in names
                    if n.startswith("balans_edge/core/storage/migrations/"))
    assert packed == migrations
    # The built-in plugins' own migrations ship in their packages.
    plugin_migrations = sorted(p.relative_to(ROOT / "plugins").as_posix()
                               for p in (ROOT / "plugins").glob("*/migrations/*/*.sql"))
    assert "dmesh/migrations/sqlite/0001_tables.sql" in plugin_migrations
    assert sorted(n.removeprefix("balans_edge/plugins/") for n in names
                  if n.startswith("balans_edge/plugins/") and n.endswith(".sql")) == plugin_migrations
    with zipfile.ZipFile(wheel) as zf:
        for name in migrations:
            data = zf.read(f"balans_edge/core/storage/migrations/{name}")
            assert data == (ROOT / "core" / "storage" / "migrations" / name).read_bytes()
        for name in plugin_migrations:
            assert zf.read(f"balans_edge/plugins/{name}") == (ROOT / "plugins" / name).read_bytes()
        entry_points = zf.read(f"balans_edge-{version}.dist-info/entry_points.txt").decode()
    assert "balans-edge = balans_edge.cli:main" in entry_points
    # A built-in plugin's own migrations ship in its folder.
    export = ROOT / "plugins" / "export" / "migrations"
    export_migrations = sorted(p.relative_to(export).as_posix() for p in export.rglob("*.sql"))
    assert export_migrations == ["sqlite/0001_tables.sql"]
    assert sorted(n.removeprefix("balans_edge/plugins/export/migrations/") for n in names
                  if n.startswith("balans_edge/plugins/export/migrations/")) == export_migrations
    for expected in (
        "balans_edge/defaults.toml",
        "balans_edge/plugins/dmesh/README.md",
        "balans_edge/plugins/dmesh/plugin.py",
        "balans_edge/core/ingest.py",
    ):
        assert expected in names
    # Each plugin folder's documents ship with its code: its README and the sample configuration it shows.
    with zipfile.ZipFile(wheel) as zf:
        for folder in sorted(p for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists()):
            # plugins/common is shared code, not a plugin: a README, no configuration.
            for document in ("README.md", "sample.toml") if (folder / "sample.toml").exists() else ("README.md",):
                name = f"balans_edge/plugins/{folder.name}/{document}"
                assert name in names, f"{name} is not in the wheel (pyproject.toml package-data)"
                assert zf.read(name) == (folder / document).read_bytes()

    # A clean virtual environment: no system site-packages, nothing of the development tree.
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text("utf-8")
    bin_ = venv / "bin"
    run(bin_ / "python", "-m", "pip", "install", wheel, cwd=tmp_path, timeout=600)

    result = run(bin_ / "balans-edge", "--help", cwd=tmp_path)
    for command in ("run", "check-config", "plugins", "registry"):
        assert f"  {command} " in result.stdout, result.stdout
    result = run(bin_ / "balans-edge", "--version", cwd=tmp_path)
    assert result.stdout.strip() == f"balans-edge, version {version}"

    code = f"import balans_edge, {IMPORTS}; print(balans_edge.__file__)"
    result = run(bin_ / "python", "-c", code, cwd=tmp_path)
    assert Path(result.stdout.strip()).is_relative_to(venv), result.stdout
    code = ("from balans_edge.plugins.dmesh.repository import MIGRATIONS; "
            "print(*[m.name for m in MIGRATIONS.scripts('sqlite')])")
    result = run(bin_ / "python", "-c", code, cwd=tmp_path)
    assert result.stdout.split() == [Path(n).name for n in plugin_migrations if n.startswith("dmesh/")]
    code = ("from balans_edge.plugins.export.plugin import MIGRATIONS; "
            "print(*[m.name for m in MIGRATIONS.scripts('sqlite')])")
    result = run(bin_ / "python", "-c", code, cwd=tmp_path)
    assert result.stdout.split() == [Path(n).name for n in plugin_migrations if n.startswith("export/")]

    result = run(bin_ / "balans-edge", "check-config", ROOT / "config" / "demo.toml", cwd=tmp_path)
    assert result.stdout.startswith(f"{ROOT / 'config' / 'demo.toml'}: OK (site 'Demo site'")

    result = run(bin_ / "balans-edge", "plugins", "--json", cwd=tmp_path)
    assert [(p["name"], p["source"]) for p in json.loads(result.stdout)] == [("analytics", "builtin"),
                                                                           ("dmesh", "builtin"),
                                                                           ("export", "builtin"),
                                                                           ("modbus", "builtin"),
                                                                           ("opcua", "builtin")]

    # The partner path: a third-party plugin installed next to the wheel.
    example = tmp_path / "balans-edge-example"
    shutil.copytree(ROOT / "examples" / "balans-edge-example", example, ignore=IGNORED)
    run(bin_ / "python", "-m", "pip", "install", example, cwd=tmp_path, timeout=600)

    result = run(bin_ / "balans-edge", "plugins", "--json", cwd=tmp_path)
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert sorted(plugins) == ["analytics", "dmesh", "example", "export", "modbus", "opcua"]
    assert plugins["example"]["source"] == "entry point (balans-edge-example 0.1.0)"
    assert plugins["example"]["state"] == "loaded"
    assert plugins["example"]["hooks"] == Plugins().hook_names()
    result = run(bin_ / "balans-edge", "example-hello", "--name", "wheel", cwd=tmp_path)
    assert result.stdout == "hello, wheel, from the example plugin\n"
    # Its own tables' migrations are installed with it, and core's with the wheel.
    code = ("from balans_edge_example.batches import MIGRATIONS; from balans_edge.core.storage.migrations import "
            "LATEST; print([m.name for m in MIGRATIONS.scripts('sqlite')], LATEST)")
    result = run(bin_ / "python", "-c", code, cwd=tmp_path)
    assert result.stdout.split("]")[0].count(".sql") == 2 and result.stdout.split()[-1] == str(len(migrations))
