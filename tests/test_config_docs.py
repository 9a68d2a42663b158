"""docs/config.md is the text the schema writes: every key, its type, default, range and meaning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from balans_edge.config import SECTIONS
from balans_edge.config_docs import render
from balans_edge.core import schema
from balans_edge.plugin_manager import config_schemas, load_plugins

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_docs_config_md_is_generated_from_the_schema():
    expected = render(config_schemas(load_plugins()))
    actual = (ROOT / "docs" / "config.md").read_text("utf-8")
    assert actual == expected, "docs/config.md is stale: run `balans-edge config docs --write docs/config.md`"


def test_every_key_of_the_core_and_built_in_plugins_is_described():
    schemas = {n: c for n, c in config_schemas(load_plugins()).items() if c.__module__.startswith("balans_edge.")}
    assert {"dmesh", "modbus", "opcua", "export", "analytics"} <= set(schemas)
    missing = []

    def walk(cls: type, path: str) -> None:
        for f in schema.fields_of(cls):
            inner = schema.nested(f)
            if inner is not None:
                walk(inner[1], f"{path}.{f.name}")
            elif not f.description:
                missing.append(f"{path}.{f.name}")

    for name, cls in [*SECTIONS.items(), *((f"plugins.{n}", c) for n, c in schemas.items())]:
        walk(cls, name)
    assert missing == []


def test_the_docs_name_ranges_defaults_and_secrets():
    text = render(config_schemas(load_plugins()))
    assert '| `port` | integer | `8080` | 0..65535 | TCP port of the HTTP API' in text
    assert "| `token` | string (secret: or `token_env`) |" in text
    assert '| `log_level` | string | `"info"` | debug, info, warning, error |' in text
    assert "#### `[[plugins.dmesh.concentrators]]`" in text
    assert "| `pulse_weight` |" not in text  # registry columns only where the file takes them ([[groups]])
    assert "| `inputs` | list of strings | `[]` |" in text and "| `formula` | string |" in text
    assert "[plugins.example]" not in text  # an installed third-party plugin documents its own section


def test_the_command_prints_the_same_text():
    run = subprocess.run([BIN / "balans-edge", "config", "docs"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == render(config_schemas(load_plugins()))
