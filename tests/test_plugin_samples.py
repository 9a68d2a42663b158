"""Every plugin folder (and the partner example) has a ``sample.toml``, as each of
Telegraf's plugins has a ``sample.conf``: the configuration an operator starts
from. Its README shows it verbatim under a "Configuration" heading, it parses
with every plugin's schema, and it names every key of the plugin's tables, set
or commented out with its default: a new setting without a sample line, a
renamed one left behind or a changed default fails here."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from balans_edge.config import PluginFlags, parse_config
from balans_edge.core import schema
from balans_edge.plugin_manager import DEFAULT_PLUGINS, config_schemas, load_plugins

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = "sample.toml"


def example_plugins() -> list[tuple[Path, str]]:
    """The example projects and the plugin name their entry point gives."""
    found = []
    for project in sorted((ROOT / "examples").glob("*/pyproject.toml")):
        entry_points = tomllib.loads(project.read_text("utf-8"))["project"]["entry-points"]["balans_edge"]
        found += [(project.parent, name) for name in entry_points]
    return found


FOLDERS = [
    # The built-in plugins (plugins/common is shared code, not a plugin: it has no configuration).
    *((ROOT / "plugins" / name, name) for name in sorted(DEFAULT_PLUGINS)),
    *example_plugins(),
]
IDS = [name for _, name in FOLDERS]


@pytest.fixture(scope="module")
def schemas() -> dict[str, type]:
    return config_schemas(load_plugins())


def sample_text(folder: Path) -> str:
    path = folder / SAMPLE
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing: the plugin's configuration with every key"
    return path.read_text("utf-8")


def environment(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set the variables the sample's ``*_env`` keys name, as an operator would."""
    for variable in re.findall(r'^[#\s]*\w+_env\s*=\s*"(\w+)"', text, re.MULTILINE):
        monkeypatch.setenv(variable, f"{variable.lower()}-example-value")


# README ---------------------------------------------------------------------------------


def toml_blocks(markdown: str) -> Iterator[tuple[str, str]]:
    """Each fenced toml block's text with the heading it stands under (headings inside
    fences are not headings: a TOML comment starts with ``#`` too)."""
    heading, lines, i = "", markdown.splitlines(keepends=True), 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"(`{3,}|~{3,})(.*)$", line.strip())
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence.group(1)), len(lines))
            if fence.group(2).split()[:1] == ["toml"]:
                yield heading, "".join(lines[i + 1:end])
            i = end + 1
            continue
        if re.match(r"#{1,6} ", line):
            heading = line.lstrip("#").strip()
        i += 1


@pytest.mark.parametrize(("folder", "name"), FOLDERS, ids=IDS)
def test_readme_shows_the_sample(folder: Path, name: str) -> None:
    sample = sample_text(folder)
    blocks = list(toml_blocks((folder / "README.md").read_text("utf-8")))
    equal = [heading for heading, text in blocks if text == sample]
    assert equal, f"{folder.relative_to(ROOT)}/README.md has no ```toml block equal to {SAMPLE}"
    assert "Configuration" in equal, (f"{folder.relative_to(ROOT)}/README.md shows {SAMPLE} under {equal}, "
                                      "not under a \"Configuration\" heading")


# Parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(("folder", "name"), FOLDERS, ids=IDS)
def test_sample_parses(folder: Path, name: str, schemas: dict[str, type], monkeypatch: pytest.MonkeyPatch) -> None:
    text = sample_text(folder)
    environment(text, monkeypatch)
    data = tomllib.loads(text)
    assert list(data) == ["plugins"] and list(data["plugins"]) == [name], (
        f"{SAMPLE} configures [plugins.{name}] and nothing else, got {data}")
    config = parse_config(data, schemas, source=str(folder / SAMPLE))
    assert isinstance(config.plugins[name], schemas[name])


# Every key ------------------------------------------------------------------------------

KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """One table of a plugin's configuration: its TOML path and its fields."""

    path: KeyPath
    fields: dict[str, schema.Field]


def tables(cls: type, path: KeyPath) -> Iterator[Table]:
    """The table of ``cls`` and every table or array of tables inside it."""
    fields = {f.name: f for f in schema.fields_of(cls)}
    yield Table(path, fields)
    for f in fields.values():
        sub = schema.nested(f)
        if sub:
            yield from tables(sub[1], (*path, f.name))


def plugin_tables(schema_cls: type, name: str) -> list[Table]:
    top, *rest = tables(schema_cls, ("plugins", name))
    flags = {f.name: f for f in schema.fields_of(PluginFlags)}  # enabled, required: every plugin has them
    return [Table(top.path, flags | top.fields), *rest]


def given_keys(data: Any, path: KeyPath) -> set[str]:
    """Keys set at ``path`` in parsed TOML, over every entry of an array of tables."""
    nodes = [data]
    for part in path:
        nodes = [n[part] for n in nodes if isinstance(n, dict) and part in n]
        nodes = [x for n in nodes for x in (n if isinstance(n, list) else [n])]
    return {k for n in nodes if isinstance(n, dict) for k in n}


HEADER = re.compile(r"^\s*(?P<comment>#\s*)?\[\[?\s*(?P<path>[\w.-]+)\s*\]\]?\s*(#.*)?$")
COMMENTED_KEY = re.compile(r"^\s*#\s*(?P<key>[A-Za-z_][\w-]*)\s*=(?P<value>.*)$")


@dataclass(frozen=True)
class Commented:
    path: KeyPath
    key: str
    line: int
    text: str


def commented_keys(text: str) -> list[Commented]:
    """``# key = value`` lines with the table they stand in, and commented-out table
    headers (``# [plugins.x.y]`` counts as key ``y`` of ``plugins.x``)."""
    found, path = [], ()
    for number, line in enumerate(text.splitlines(), 1):
        header = HEADER.match(line)
        if header:
            parts = tuple(header.group("path").split("."))
            if header.group("comment"):
                found.append(Commented(parts[:-1], parts[-1], number, ""))
            path = parts
            continue
        key = COMMENTED_KEY.match(line)
        if key:
            found.append(Commented(path, key.group("key"), number, line.split("#", 1)[1].strip()))
    return found


def secret_base(key: str, fields: dict[str, schema.Field]) -> str:
    """``password_env`` stands for the secret ``password``."""
    base = key.removesuffix("_env")
    return base if key != base and base in fields and fields[base].secret else key


@pytest.mark.parametrize(("folder", "name"), FOLDERS, ids=IDS)
def test_sample_names_every_key(folder: Path, name: str, schemas: dict[str, type]) -> None:
    text = sample_text(folder)
    data = tomllib.loads(text)
    commented = commented_keys(text)
    missing = []
    for table in plugin_tables(schemas[name], name):
        named = {secret_base(k, table.fields) for k in given_keys(data, table.path)}
        named |= {secret_base(c.key, table.fields) for c in commented if c.path == table.path}
        missing += [f"[{'.'.join(table.path)}] {key}" for key in table.fields if key not in named]
    assert not missing, (f"{folder.relative_to(ROOT)}/{SAMPLE} neither sets nor comments (# key = default) "
                         f"these keys: {', '.join(missing)}")


@pytest.mark.parametrize(("folder", "name"), FOLDERS, ids=IDS)
def test_commented_keys_show_their_defaults(folder: Path, name: str, schemas: dict[str, type]) -> None:
    """A commented-out key is what applies when it is left out: a key the schema does
    not know there, or a value other than its default, would mislead whoever edits it."""
    text = sample_text(folder)
    by_path = {t.path: t.fields for t in plugin_tables(schemas[name], name)}
    wrong = []
    for c in commented_keys(text):
        where = f"{(folder / SAMPLE).relative_to(ROOT)}:{c.line} [{'.'.join(c.path)}] {c.key}"
        fields = by_path.get(c.path)
        if fields is None:
            wrong.append(f"{where}: not in a table of [plugins.{name}]")
            continue
        base = secret_base(c.key, fields)
        if base not in fields:
            wrong.append(f"{where}: not a key of this table")
        elif base == c.key and c.text:  # a value, not a table header or a secret's variable
            try:
                value = tomllib.loads(c.text)[c.key]
            except tomllib.TOMLDecodeError as exc:
                wrong.append(f"{where}: not a TOML line ({exc})")
                continue
            default = fields[base].default
            if default is schema.NO_DEFAULT or value != default or type(value) is not type(default):
                wrong.append(f"{where}: shows {value!r}, the default is "
                             f"{'none (required)' if default is schema.NO_DEFAULT else repr(default)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("folder", "name"), FOLDERS, ids=IDS)
def test_sample_holds_no_secret(folder: Path, name: str, schemas: dict[str, type]) -> None:
    """Operators copy the sample: a secret in it is shown as the variable that holds it
    (``key_env = "DMESH_KEY_20114"``), never as a value that could end up in use."""
    data = tomllib.loads(sample_text(folder))
    literal = [f"[{'.'.join(t.path)}] {key}" for t in plugin_tables(schemas[name], name)
               for key in given_keys(data, t.path) if key in t.fields and t.fields[key].secret]
    assert not literal, f"{folder.relative_to(ROOT)}/{SAMPLE} sets secrets literally (use KEY_env): {literal}"
