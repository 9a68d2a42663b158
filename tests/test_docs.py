"""Every hook is documented and tested; every plugin folder documents its configuration;
every registry example in the documentation imports into a fresh database."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from balans_edge import hookspecs
from balans_edge.config import parse_config
from balans_edge.core.registry import RegistryError, import_registry
from balans_edge.core.storage.base import REGISTRY_KINDS
from balans_edge.core.storage.sqlite import SqliteStorage
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


# Registry examples ---------------------------------------------------------------------
#
# The convention (docs/testing.md): a fenced block whose info string says
# ``example=NAME file=FILE`` is file FILE of the example set NAME of that document,
# e.g. a block opened with three backquotes and ``csv example=small-site file=meters.csv``.
# The blocks of one set are written to a folder under their file names and imported
# together with ``import_registry``, as ``balans-edge registry import`` would; with
# ``source=FOLDER`` a block must also equal FILE in that folder of the repository.
# A block that looks like registry rows (a CSV header with a registry key column,
# JSON with a registry kind) must carry ``example=`` or say ``registry-fragment``
# (shown for its shape only), so no example escapes the test.

DOCUMENTS = sorted({*ROOT.glob("docs/*.md"), *ROOT.glob("plugins/*/README.md"), *ROOT.glob("examples/*/README.md"),
                    ROOT / "README.md"})
KEY_COLUMNS = {"concentrator_id", "module_id", "account_id", "meter_id", "group_id"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True, slots=True)
class Block:
    document: Path
    line: int
    info: dict[str, str]
    words: frozenset[str]
    body: str

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


@dataclass
class ExampleSet:
    document: Path
    name: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.document.relative_to(ROOT)}#{self.name}"


def fenced_blocks(document: Path) -> list[Block]:
    """Fenced code blocks with their info string as key=value attributes and plain words.
    Hand-written rather than a Markdown library: only the fences matter here, and
    a block inside a list item is indented like its fence."""
    out = []
    lines = document.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].split()
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                      and not lines[j].strip().strip(fence[0])):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        pairs = dict(w.split("=", 1) for w in info if "=" in w)
        out.append(Block(document, i + 1, pairs, frozenset(w for w in info if "=" not in w),
                         "\n".join(body) + "\n"))
        i = j + 1
    return out


def looks_like_registry(block: Block) -> bool:
    """Rows a reader could take for registry files: a CSV header with a key column, or
    JSON whose top-level keys are registry kinds."""
    first = next((line for line in block.body.splitlines() if line.strip()), "")
    if KEY_COLUMNS & {c.strip().lower() for c in re.split(r"[,;]", first)} and ("," in first or ";" in first):
        return True
    try:
        data = json.loads(block.body)
    except ValueError:
        return False
    return isinstance(data, dict) and bool(set(data) & set(REGISTRY_KINDS))


def example_sets() -> list[ExampleSet]:
    sets: dict[tuple[Path, str], ExampleSet] = {}
    for document in DOCUMENTS:
        for block in fenced_blocks(document):
            name = block.info.get("example")
            if name is not None:
                sets.setdefault((document, name), ExampleSet(document, name)).blocks.append(block)
    return list(sets.values())


SETS = example_sets()


def test_registry_rows_in_the_docs_are_all_examples() -> None:
    untagged = [b.where for d in DOCUMENTS for b in fenced_blocks(d)
                if looks_like_registry(b) and "example" not in b.info and "registry-fragment" not in b.words]
    assert not untagged, f"registry rows without example=NAME file=FILE (docs/testing.md): {untagged}"


def test_the_convention_finds_the_registry_documents_examples() -> None:
    """The extractor itself: the small site of docs/registry.md has a file of every kind."""
    small = next(s for s in SETS if s.id == "docs/registry.md#small-site")
    assert sorted(b.info["file"] for b in small.blocks) == sorted(f"{kind}.csv" for kind in REGISTRY_KINDS)
    assert any(s.id == "docs/registry.md#json-file" for s in SETS)


@pytest.mark.parametrize("example", SETS, ids=[s.id for s in SETS])
async def test_example_imports_into_a_fresh_database(example: ExampleSet, tmp_path: Path) -> None:
    folder = tmp_path / "registry"
    folder.mkdir()
    for block in example.blocks:
        name = block.info.get("file")
        assert name and "/" not in name, f"{block.where}: give the block file=NAME"
        assert not (folder / name).exists(), f"{block.where}: {name} is twice in example {example.name}"
        (folder / name).write_text(block.body, encoding="utf-8")
        source = block.info.get("source")
        if source is not None:
            shipped = (ROOT / source / name).read_text(encoding="utf-8")
            assert block.body == shipped, f"{block.where}: differs from {source}/{name}"
    storage = SqliteStorage(tmp_path / "balans.db")
    await storage.open()
    try:
        try:
            report = await import_registry(storage, [folder])
        except RegistryError as exc:
            problems = "\n".join(str(p) for p in exc.problems)
            pytest.fail(f"example {example.id} does not import:\n{problems}")
        stored = {kind: len(await storage.registry_list(kind)) for kind in REGISTRY_KINDS}
    finally:
        await storage.close()
    created = {kind: counts.created for kind, counts in report.kinds.items()}
    assert created == stored and sum(created.values()) > 0


def test_hook_docs_are_generated_from_the_hookspecs() -> None:
    """docs/plugins.md's Hooks section is the hookspec docstrings, rendered
    (``python -m balans_edge.hookdocs`` writes it)."""
    from balans_edge.hookdocs import render, replace_section

    text = PLUGINS_DOC.read_text(encoding="utf-8")
    assert text == replace_section(text, render()), "docs/plugins.md is stale: run python -m balans_edge.hookdocs"
    assert render().count("\n### ") == len(HOOKS)
