"""The commissioning report checks every meter a group's balance reads: its input meters,
its members and its member groups' inputs (a real SQLite file, the command as its own process)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from balans_edge.core.model import Concentrator, Group, GroupInput, Meter, RadioModule, Resource
from balans_edge.core.storage.sqlite import SqliteStorage
from balans_edge.plugins.dmesh.commissioning import commissioning

from conftest import T0

HOUR = 3600
WINDOW = 24


def meter(meter_id: str, module: int, group: str | None = None) -> Meter:
    return Meter(meter_id, Resource.WATER, "m3", 0.001, T0 - 86400, module_id=module, channel=1, group_id=group)


async def street(path: Path, input_gap: bool) -> None:
    """Street S (input S-IN) over house H (input H-IN, flat F-1) and a lamp-post tap S-T of its own;
    every member complete, S-IN's hour 5 missing when ``input_gap``."""
    storage = SqliteStorage(path)
    await storage.open()
    try:
        ids = ("S-IN", "H-IN", "F-1", "S-T", "ELSE")
        groups = {"F-1": "H", "S-T": "S"}
        await storage.registry_apply({
            "concentrators": [Concentrator(7)],
            "modules": [RadioModule(2000 + i, 7) for i in range(len(ids))],
            "meters": [meter(m, 2000 + i, groups.get(m)) for i, m in enumerate(ids)],
            "groups": [Group("S", Resource.WATER, "m3", (GroupInput("S-IN"),), level="street"),
                       Group("H", Resource.WATER, "m3", (GroupInput("H-IN"),), parent_id="S", level="house")],
        })
        keys = await storage.meter_keys()
        rows = [(keys[m], T0 + h * HOUR, 1.0, 0) for m in ids for h in range(WINDOW)
                if not (input_gap and m == "S-IN" and h == 5)]
        await storage.save_intervals(rows, [])
    finally:
        await storage.close()


def test_the_street_is_incomplete_when_its_input_meter_is(tmp_path: Path) -> None:
    db = tmp_path / "site.db"
    asyncio.run(street(db, input_gap=True))
    config = tmp_path / "site.toml"
    config.write_text(f'[storage]\nurl = "sqlite:{db}"\n', encoding="utf-8")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "balans-edge"), "dmesh", "commissioning", "-c", str(config),
         "--group", "S", "--hours", str(WINDOW), "--end", "2014-01-21T00:00:00Z"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:-1]]
    assert [(r[0], r[1], r[-1]) for r in rows] == [
        ("S-IN", "input", "INCOMPLETE"), ("H-IN", "input:H", "complete"), ("S-T", "member", "complete")]
    assert rows[0][5:7] == ["1", "2014-01-20T05:00:00Z"]
    assert result.stdout.splitlines()[-1] == "2 of 3 meters complete, 1 incomplete"


def test_a_complete_street_passes_and_a_house_checks_its_own_input(tmp_path: Path) -> None:
    db = tmp_path / "site.db"
    asyncio.run(street(db, input_gap=False))

    async def check() -> tuple[list, list]:
        storage = SqliteStorage(db)
        await storage.open()
        try:
            return (await commissioning(storage, "S", T0, T0 + WINDOW * HOUR),
                    await commissioning(storage, "H", T0, T0 + WINDOW * HOUR))
        finally:
            await storage.close()

    s, h = asyncio.run(check())
    assert all(m.complete for m in s) and len(s) == 3
    assert [(m.meter_id, m.role) for m in h] == [("H-IN", "input"), ("F-1", "member")]
