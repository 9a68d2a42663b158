"""What the registry import tests share: a good CSV set and a good JSON document,
and helpers that write them, import expecting a refusal (checking nothing was
written), and count what an import did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from balans_edge.core.registry import RegistryError, import_registry
from balans_edge.core.registry_io import Problem
from balans_edge.core.storage.base import REGISTRY_KINDS
from balans_edge.core.storage.sqlite import SqliteStorage

EXAMPLES = Path(__file__).resolve().parent.parent / "config" / "registry"
JAN_2014 = 1388534400  # 2014-01-01T00:00:00Z

GOOD = {
    "concentrators.csv": "concentrator_id,name,site\n7,Main,Plant\n",
    "modules.csv": "module_id,concentrator_id,channels\n100,7,3\n200,7,7\n",
    "accounts.csv": "account_id,consumer,area_m2\nA1,Shop,120.5\nA2,Office,\n",
    "meters.csv": (
        "meter_id,resource,unit,pulse_weight,install_time,module_id,channel,base_reading,account_id,flags,removed_time\n"
        "W1,water,m3,0.001,2014-01-01T00:00:00Z,100,1,12.5,A1,valve;reverse_allowed,\n"
        "W2,water,m3,0.01,2014-01-01T00:00:00+03:00,100,2,0,A1,,2015-01-01T00:00:00Z\n"
        "W3,water,m3,0.01,2015-01-01T00:00:00Z,100,2,0,A1,,\n"
        "H1,heat,GJ,0.0001,2014-01-01T00:00:00Z,200,1,3.25,A2,,\n"
        "E1,electricity,kWh,0.5,2014-06-01T12:00:00Z,200,3,1000,A2,relay,\n"
        "V1,water,m3,1,2014-01-01T00:00:00Z,,,0,,virtual,\n"
    ),
}


def write_set(folder: Path, **overrides: str | bytes) -> list[Path]:
    """The GOOD files, with some replaced (keys use _ for ., e.g. meters_csv)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = dict(GOOD)
    files.update({name.replace("_", "."): text for name, text in overrides.items()})
    paths = []
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        paths.append(path)
    return paths


async def snapshot(storage: SqliteStorage) -> tuple[int, dict[str, list[Any]]]:
    return await storage.registry_version(), {k: await storage.registry_list(k) for k in REGISTRY_KINDS}


async def refused(storage: SqliteStorage, paths: list[Path]) -> list[Problem]:
    """Import ``paths`` expecting a refusal; check nothing was written; return the problems."""
    before = await snapshot(storage)
    with pytest.raises(RegistryError) as info:
        await import_registry(storage, paths)
    assert await snapshot(storage) == before
    assert info.value.problems
    return info.value.problems


def spy_apply(storage: SqliteStorage) -> list[Any]:
    calls: list[Any] = []
    original = storage.registry_apply

    async def apply(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        await original(*args, **kwargs)

    storage.registry_apply = apply  # type: ignore[method-assign]
    return calls


def counts(report: Any) -> dict[str, tuple[int, int, int]]:
    return {k: (c.created, c.updated, c.unchanged) for k, c in report.kinds.items()}


def good_json() -> dict[str, list[dict[str, Any]]]:
    return {
        "concentrators": [{"concentrator_id": 7, "name": "Main"}],
        "modules": [{"module_id": 100, "concentrator_id": 7, "channels": 3}],
        "accounts": [{"account_id": "A1", "area_m2": 50}],
        "meters": [
            {
                "meter_id": "W1",
                "resource": "water",
                "unit": "m3",
                "pulse_weight": 0.001,
                "install_time": "2014-01-01T00:00:00Z",
                "module_id": 100,
                "channel": 1,
                "account_id": "A1",
                "flags": ["valve"],
            },
            {
                "meter_id": "V1",
                "resource": "heat",
                "unit": "Gcal",
                "pulse_weight": 1,
                "install_time": "2014-01-01T04:00:00+04:00",
            },
        ],
    }
