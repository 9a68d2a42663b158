"""The Hooks section of docs/plugins.md, rendered from the hook specifications.

The docstrings in ``hookspecs.py`` are the one source of a hook's
documentation; ``python -m balans_edge.hookdocs`` writes them into
docs/plugins.md and a test fails when the file and the specifications differ.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from balans_edge import hookspecs

INTRO = """\
Hooks named `register_*` (and `config_schema`) are called once at start-up;
they return a list of contributions (or `None`). Hooks named `observe_*` are
called after something happened and return nothing the server uses. A hook
implementation declares only the arguments it needs; the hooks are methods of
the plugin object (`self.context` holds its context).

The interfaces named below (`Component`, `Detector`, `Actuator`, `Notifier`,
`Exporter`) are protocols in `balans_edge.core.components`: any object with
the right attributes will do.

This section is generated from `balans_edge/hookspecs.py`
(`python -m balans_edge.hookdocs`); edit the docstrings there."""


def hooks() -> list[str]:
    """Hook names in the order they are specified."""
    return [name for name, value in vars(hookspecs).items() if hasattr(value, "balans_edge_spec")]


def render() -> str:
    parts = [INTRO]
    for name in hooks():
        spec = getattr(hookspecs, name)
        arguments = ", ".join(inspect.signature(spec).parameters)
        parts.append(f"### {name}({arguments})\n\n{inspect.cleandoc(spec.__doc__ or '')}")
    return "\n\n".join(parts) + "\n"


def replace_section(document: str, section: str) -> str:
    """``document`` with the body of its ``## Hooks`` section replaced by ``section``."""
    head, sep, rest = document.partition("\n## Hooks\n")
    if not sep:
        raise ValueError("the document has no '## Hooks' section")
    _, nxt, tail = rest.partition("\n## ")
    return f"{head}{sep}\n{section}" + (f"\n## {tail}" if nxt else "")


def main(path: str = "docs/plugins.md") -> None:
    file = Path(path)
    file.write_text(replace_section(file.read_text(encoding="utf-8"), render()), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
