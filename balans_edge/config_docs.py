"""docs/config.md, written from the configuration's schema.

Every key with its type, default, range and meaning comes from the section
classes themselves (``setting(doc=...)`` or ``Meta(description=...)`` of each
field, the class docstring of each section), the same types check-config
validates with: one source, so the document cannot drift from what the server
accepts. ``balans-edge config docs --write`` rewrites the file; a test fails
when it differs from this text.
"""

from __future__ import annotations

import enum
import inspect
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from balans_edge.config import GROUPS_TEXT, SECTIONS, Config, PluginFlags
from balans_edge.core import schema
from balans_edge.core.registry_rows import GroupRow

DOC_PATH = Path("docs") / "config.md"
BUILT_IN = "balans_edge.plugins."
"""Plugins of this package; an installed third-party plugin documents its own section."""


def render(schemas: dict[str, type]) -> str:
    """The text of docs/config.md for the core sections and the built-in plugins among ``schemas``."""
    out = ["# Configuration", "",
           "<!-- Written by `balans-edge config docs --write` from the schema (balans_edge/config.py and the",
           "     plugins' configuration classes): change those, not this file. -->", "",
           _text(Config), "", "## Sections", ""]
    for name, cls in SECTIONS.items():
        out += _section(cls, [name], "###")
    out += ["### `[[groups]]`", "", GROUPS_TEXT, "", *_table(GroupRow, registry=True), ""]
    out += ["## Plugins", "", "### `[plugins.NAME]`", "", _text(PluginFlags), "", *_table(PluginFlags), ""]
    for name in sorted(schemas):
        if schemas[name].__module__.startswith(BUILT_IN):
            out += _section(schemas[name], ["plugins", name], "###")
    return "\n".join(out).rstrip() + "\n"


def _text(cls: type) -> str:
    """A class docstring as a paragraph under its heading: without a leading "``[name]``: "."""
    text = inspect.cleandoc(cls.__doc__ or "")
    if text.startswith(("``[", "`[")) and "``: " in text[:80]:
        text = text.split("``: ", 1)[1]
        text = text[:1].upper() + text[1:]
    return text


def _section(cls: type, path: list[str], level: str, many: bool = False) -> list[str]:
    name = ".".join(path)
    out = [f"{level} `{'[[' if many else '['}{name}{']]' if many else ']'}`", ""]
    if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):  # a dataclass's own repr is no text
        out += [_text(cls), ""]
    out += [*_table(cls), ""]
    for f in schema.fields_of(cls):
        inner = schema.nested(f)
        if inner is not None:
            out += _section(inner[1], [*path, f.name], "####", many=inner[0] == "tables")
    return out


def _table(cls: type, registry: bool = False) -> Iterator[str]:
    yield "| key | type | default | range | meaning |"
    yield "|---|---|---|---|---|"
    for f in schema.fields_of(cls):
        if schema.nested(f) is not None and not f.description:
            continue  # a table of its own, with its own heading
        kind = schema.kind_words(f.type)
        if f.parse is not None and registry:
            kind = "string" if kind.startswith("string") else kind.replace(" or string", "")
        if f.secret:
            kind += f" (secret: or `{f.name}_env`)"
        default = "required" if f.required else "" if f.default is None else f"`{_toml(f.default)}`"
        cells = [f"`{f.name}`", kind, default, schema.allowed_words(f.type), f.description]
        yield "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _toml(value: Any) -> str:
    """A default as it is written in the file."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, list | tuple | frozenset):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)
