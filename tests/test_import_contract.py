"""The import contract, read from the code: core imports no web or protocol
library, no plugin and nothing of the shell; a plugin imports no other plugin
(only ``plugins/common``) and, of the shell, only the modules meant for
plugins. ``plugins/common`` (what the protocol plugins share) keeps the same
contract: it is plugin code, so it reaches the shell no further than a plugin.
A plugin that needs more than these asks for it in its context."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEB_AND_PROTOCOLS = {"sanic", "asyncua", "pymodbus", "influxdb_client", "httpx", "aiohttp", "serial_asyncio",
                     "serial_asyncio_fast", "serial", "click", "jinja2", "cryptography"}
"""Libraries of the outside world: core computes, the shell and the plugins talk."""
PLUGIN_FACING = {"balans_edge", "balans_edge.hookspecs", "balans_edge.routes", "balans_edge.http_schema",
                 "balans_edge.settings", "balans_edge.cli", "balans_edge.core", "balans_edge.plugins",
                 "balans_edge.plugins.common"}
"""Shell modules a plugin may import (besides all of core): the hook marker, routes and
their value types, configuration schemas and the command-line helpers for its commands."""
PLUGIN_DIRS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists())


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``; relative imports resolved."""
    package = "balans_edge." + ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # ``from balans_edge import hookimpl`` is the marker; ``from balans_edge.plugins import x`` a plugin.
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names
                      if module in ("balans_edge.plugins",)]
    return found


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if ".venv" not in p.parts)


def core_violations() -> list[str]:
    bad = []
    for path in files(ROOT / "core"):
        for line, module in imports(path):
            top = module.split(".")[0]
            shell = module.startswith("balans_edge.") and not module.startswith("balans_edge.core")
            if top in WEB_AND_PROTOCOLS or shell or module == "balans_edge":
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def plugin_violations(folder: Path) -> list[str]:
    own = f"balans_edge.plugins.{folder.name}"
    bad = []
    for path in files(folder):
        for line, module in imports(path):
            if not module.startswith("balans_edge"):
                continue
            if module.startswith("balans_edge.plugins."):
                ok = module == own or module.startswith(own + ".") or module.startswith("balans_edge.plugins.common")
            else:
                ok = module.startswith("balans_edge.core") or module in PLUGIN_FACING
            if not ok:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_core_imports_no_web_protocol_plugin_or_shell() -> None:
    assert core_violations() == []


@pytest.mark.parametrize("folder", PLUGIN_DIRS, ids=lambda p: p.name)
def test_a_plugin_imports_no_other_plugin_and_no_server_internals(folder: Path) -> None:
    assert plugin_violations(folder) == []


def test_the_example_partner_plugin_keeps_the_same_contract() -> None:
    example = ROOT / "examples" / "balans-edge-example" / "balans_edge_example"
    bad = []
    for path in files(example):
        for line, module in imports(path):
            if module.startswith("balans_edge.") and not (module.startswith("balans_edge.core")
                                                         or module in PLUGIN_FACING):
                bad.append(f"{path.name}:{line} imports {module}")
    assert bad == []


def test_the_contract_catches_what_it_forbids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checker that finds nothing must be able to find something."""
    fake = tmp_path / "plugins" / "alpha"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "x.py").write_text("from balans_edge.plugins.beta import thing\nfrom balans_edge.server import Server\n"
                               "from ..gamma import other\nfrom balans_edge.core import model\n")
    core = tmp_path / "core"
    core.mkdir()
    (core / "y.py").write_text("import sanic\nfrom balans_edge.routes import Route\nimport numpy\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert plugin_violations(fake) == ["plugins/alpha/x.py:1 imports balans_edge.plugins.beta",
                                       "plugins/alpha/x.py:2 imports balans_edge.server",
                                       "plugins/alpha/x.py:3 imports balans_edge.plugins.gamma"]
    assert core_violations() == ["core/y.py:1 imports sanic", "core/y.py:2 imports balans_edge.routes"]
