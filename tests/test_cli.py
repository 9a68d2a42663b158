"""The registry command line as a user runs it (subprocesses on a real SQLite file)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from balans_edge.core.ingest import Ingest
from balans_edge.core.model import RawReading
from balans_edge.core.storage.sqlite import SqliteStorage

from conftest import small_site

BIN = Path(sys.executable).parent
EXAMPLES = sorted(Path("config/registry").glob("*.csv"))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "balans-edge", *args], capture_output=True, text=True, timeout=60)


def config(tmp_path: Path) -> str:
    path = tmp_path / "c.toml"
    path.write_text(f'[storage]\nurl = "sqlite:{tmp_path / "db.sqlite"}"\n')
    return str(path)


def test_import_is_all_or_nothing_and_idempotent(tmp_path):
    c = config(tmp_path)
    first = cli("registry", "import", "-c", c, *map(str, EXAMPLES))
    assert first.returncode == 0, first.stderr
    assert "meters: 7 created, 0 updated, 0 unchanged" in first.stdout
    again = cli("registry", "import", "-c", c, *map(str, EXAMPLES))
    assert "meters: 0 created, 0 updated, 7 unchanged" in again.stdout

    broken = tmp_path / "meters.csv"
    lines = Path("config/registry/meters.csv").read_text().splitlines()
    lines[3] = lines[3].replace(",heat,Gcal,", ",heat,litre,")
    lines[1] = lines[1].replace("123.45", "999")  # a valid change that must not be written either
    broken.write_text("\n".join(lines) + "\n")
    refused = cli("registry", "import", "-c", c, str(broken))
    assert refused.returncode == 1
    assert "nothing written" in refused.stderr
    assert 'meters.csv:4: column "unit"' in refused.stderr

    out = tmp_path / "export"
    exported = cli("registry", "export", "-c", c, str(out))
    assert exported.returncode == 0, exported.stderr
    assert "123.45" in (out / "meters.csv").read_text()  # the valid change was not written
    reimport = cli("registry", "import", "-c", c, *sorted(str(p) for p in out.glob("*.csv")))
    assert reimport.returncode == 0, reimport.stderr
    assert all(" 0 created, 0 updated" in line for line in reimport.stdout.splitlines())


def test_unknown_lists_quarantined_readings(tmp_path):
    c = config(tmp_path)

    async def seed() -> None:
        storage = SqliteStorage(tmp_path / "db.sqlite")
        await storage.open()
        await storage.registry_apply(small_site())
        await Ingest(storage, clock=lambda: 2_000_000_000).ingest(
            [RawReading(777, 2, 1390176000, 99), RawReading(1001, 1, 1390176000, 5)]
        )
        await storage.close()

    asyncio.run(seed())
    listed = cli("registry", "unknown", "-c", c)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert rows == [["777", "2", "2014-01-20T00:00:00Z", "99", "0", "unknown_channel"]]
