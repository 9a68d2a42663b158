"""Every hook is documented and tested; every plugin folder documents its configuration."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from balans_edge import hookspecs
from balans_edge.config import parse_config
from balans_edge.plugin_manager import Plugins, config_schemas, load_plugins

ROOT = Path(__file__).resolve().parent.parent
PLUGINS_DOC = ROOT / "docs" / "plugins.md"
HOOKS = Plugins().hook_names()
SPECS = {name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "balans_edge_spec")}
PLUGIN_FOLDERS = sorted(p for p in (ROOT / "plugins").iterdir() if p.is_dir() and (p / "__init__.py").exists())


def hook_headings() -> list[str]:
    """Level-3 headings of the Hooks section, backticks removed."""
    text = PLUGINS_DOC.read_text(encoding="utf-8")
    section = text.split("\n## Hooks\n", 1)[1].split("\n## ", 1)[0]
    return [line[4:].strip().strip("`") for line in section.splitlines() if line.startswith("### ")]


def heading_hook(heading: str) -> str:
    return re.match(r"\w+", heading).group(0)


def test_hook_list_matches_hookspecs() -> None:
    assert sorted(SPECS) == HOOKS
    assert len(HOOKS) >= 12


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook: str) -> None:
    assert hook in [heading_hook(h) for h in hook_headings()], f"docs/plugins.md has no '### {hook}' heading"


def test_documented_hooks_exist() -> None:
    headings = [heading_hook(h) for h in hook_headings()]
    assert sorted(headings) == HOOKS, "docs/plugins.md documents a hook that does not exist, or one twice"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_docstring(hook: str) -> None:
    doc = getattr(hookspecs, hook).__doc__
    assert doc and len(doc.strip()) > 20, f"hookspecs.{hook} has no docstring"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_tested(hook: str) -> None:
    pattern = re.compile(rf"^\s*(async\s+)?def test_hook_{hook}\(", re.MULTILINE)
    found = [p.name for p in sorted((ROOT / "tests").rglob("test_*.py")) if pattern.search(p.read_text("utf-8"))]
    assert found, f"no test function named test_hook_{hook} under tests/"


@pytest.mark.parametrize("folder", PLUGIN_FOLDERS, ids=lambda p: p.name)
def test_plugin_folder_has_readme(folder: Path) -> None:
    readme = folder / "README.md"
    assert readme.is_file(), f"{folder.relative_to(ROOT)} has no README.md"
    assert readme.read_text("utf-8").startswith(f"# {folder.name}")


def toml_examples(path: Path) -> list[str]:
    blocks = re.findall(r"```toml\n(.*?)```", path.read_text("utf-8"), re.DOTALL)
    return [b for b in blocks if "[plugins." in b]


README_EXAMPLES = [
    (readme, i, block)
    for readme in [*(f / "README.md" for f in PLUGIN_FOLDERS), *sorted((ROOT / "examples").glob("*/README.md"))]
    if readme.exists()
    for i, block in enumerate(toml_examples(readme))
]


@pytest.mark.parametrize(
    ("readme", "index", "block"),
    README_EXAMPLES,
    ids=[f"{r.parent.name}-{i}" for r, i, _ in README_EXAMPLES],
)
def test_readme_config_example_is_valid(readme: Path, index: int, block: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in re.findall(r'\w+_env = "(\w+)"', block):  # secrets the example reads from the environment
        monkeypatch.setenv(variable, f"{variable.lower()}-example-value")
    data = tomllib.loads(block)
    config = parse_config(data, config_schemas(load_plugins()), source=str(readme))
    for name in data["plugins"]:
        assert config.plugins[name] is not None
        assert not isinstance(config.plugins[name], dict), f"[plugins.{name}] has no config_schema"


def test_readme_examples_found() -> None:
    assert {r.parent.name for r, _, _ in README_EXAMPLES} >= {"dmesh", "balans-edge-example"}
