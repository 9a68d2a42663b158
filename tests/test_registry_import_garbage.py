"""Registry import of garbage (hypothesis): the parser reports only problems,
and an import raises only RegistryError and never writes."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from registry_import_support import GOOD, snapshot, write_set

from balans_edge.core.registry import COLUMNS, RegistryError, import_registry, read_registry
from balans_edge.core.registry_io import CSV_FILES, Problem
from balans_edge.core.storage.base import REGISTRY_KINDS
from balans_edge.core.storage.sqlite import SqliteStorage

# -- garbage in: only RegistryError, never a write ----------------------------------------

FILE_NAMES = [*CSV_FILES, "registry.json"]
TOKENS = [
    "",
    " ",
    "1",
    "0",
    "-1",
    "3",
    "7",
    "100",
    "200",
    "4294967296",
    "abc",
    "water",
    "heat",
    "gas",
    "m3",
    "kWh",
    "GJ",
    "0.001",
    "1e999",
    "nan",
    "-0",
    "0,5",
    "2014-01-01T00:00:00Z",
    "2014-01-01",
    "2014-01-01T00:00:00.5Z",
    "A1",
    "W1",
    "valve;relay",
    "bogus",
    '"',
    '""',
    "\x00",
    "\r",
    "é",
    "\ud800",
    "[]",
    "{}",
    "null",
]
CELL = st.one_of(st.sampled_from(TOKENS), st.text(max_size=8))


@st.composite
def csv_texts(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(st.sampled_from([*CSV_FILES]))
    columns = [*COLUMNS[CSV_FILES[name]], "junk", ""]
    header = draw(st.lists(st.sampled_from(columns), min_size=0, max_size=8))
    rows = draw(st.lists(st.lists(CELL, max_size=len(header) + 2), max_size=5))
    return name, "\n".join(",".join(r) for r in [header, *rows])


@st.composite
def mutated_good(draw: st.DrawFn) -> tuple[str, str]:
    """A good file with a few cells replaced: near-valid input reaches the
    reference checks and, when still valid, the write path."""
    name = draw(st.sampled_from([*GOOD]))
    rows = [line.split(",") for line in GOOD[name].splitlines()]
    for _ in range(draw(st.integers(0, 3))):
        row = draw(st.integers(0, len(rows) - 1))
        cell = draw(st.integers(0, len(rows[row]) - 1))
        rows[row][cell] = draw(CELL)
    return name, "\n".join(",".join(r) for r in rows) + "\n"


def garbage_json() -> st.SearchStrategy[str]:
    values = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.sampled_from(TOKENS)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.sampled_from([*COLUMNS["meters"], "x"]), inner, max_size=5)
        ),
        max_leaves=20,
    )
    doc = st.dictionaries(st.sampled_from([*REGISTRY_KINDS, "x"]), st.lists(values, max_size=3), max_size=4)
    return doc.map(json.dumps)


INPUTS = st.one_of(
    st.tuples(st.sampled_from(FILE_NAMES), st.binary(max_size=300)),
    csv_texts().map(lambda t: (t[0], t[1].encode("utf-8", "surrogatepass"))),
    mutated_good().map(lambda t: (t[0], t[1].encode("utf-8", "surrogatepass"))),
    garbage_json().map(lambda text: ("registry.json", text.encode())),
)


@settings(max_examples=300, deadline=None)
@given(INPUTS)
def test_parser_survives_garbage(given_input: tuple[str, bytes]):
    name, data = given_input
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        loaded = read_registry([path])
    assert all(isinstance(p, Problem) and str(p) for p in loaded.problems)


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("seed")

    async def seed() -> None:
        store = SqliteStorage(folder / "db.sqlite")
        await store.open()
        await import_registry(store, write_set(folder / "in"))
        await store.close()

    asyncio.run(seed())
    return folder / "db.sqlite"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(INPUTS)
def test_garbage_import_raises_only_registry_error_and_never_writes(seeded_db: Path, given_input: tuple[str, bytes]):
    name, data = given_input

    async def attempt(folder: Path) -> None:
        shutil.copy(seeded_db, folder / "db.sqlite")
        store = SqliteStorage(folder / "db.sqlite")
        await store.open()
        try:
            before = await snapshot(store)
            path = folder / name
            path.write_bytes(data)
            try:
                await import_registry(store, [path])
            except RegistryError as exc:
                assert exc.problems and str(exc)
                assert await snapshot(store) == before
                return
            again = await import_registry(store, [path])
            assert again.created == again.updated == 0
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(attempt(Path(folder)))

