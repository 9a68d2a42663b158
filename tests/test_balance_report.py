"""`balans-edge balance report` as a user reads it: the site's days, future days, an
inflow-only district, and the what-if of the month's findings. Scenario buildings go
through the real ingest path of a real server; the command runs as its own process
against the same SQLite file."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from balans_edge.core import balance_queries as q
from balans_edge.core.components import Finding
from balans_edge.core.ingest import ReadingBatch
from balans_edge.core.model import Group, GroupInput, Meter, RadioModule, Resource
from balans_edge.plugins.dmesh.scenario import Scenario, generate

from conftest import base_config

START = 1_704_067_200  # 2024-01-01 00:00 UTC
DAYS = 4
MOSCOW = ZoneInfo("Europe/Moscow")
DISTRICT_MODULE = 3_000_000


async def report(tmp_path: Path, *args: str) -> str:
    config = tmp_path / "report.toml"
    config.write_text(f'[site]\ntimezone = "Europe/Moscow"\n[storage]\nurl = "sqlite:{tmp_path / "balans.db"}"\n')
    proc = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "balans-edge", "balance", "report", "-c", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.fixture
async def site(make_server, tmp_path) -> Any:
    """A house of four flats and a district metered only at its inlet, four days of January 2024."""
    data = generate(Scenario(buildings=1, apartments=4, start=START, hours=DAYS * 24, seed=5))
    server = await make_server(base_config(tmp_path, site={"timezone": "Europe/Moscow"}))
    registry = data.registry()
    registry["modules"].append(RadioModule(DISTRICT_MODULE, None, channels=0b001))
    registry["meters"].append(Meter("D-IN", Resource.WATER, "m3", 0.001, START, module_id=DISTRICT_MODULE, channel=1))
    registry["groups"].append(Group("D", Resource.WATER, "m3", (GroupInput("D-IN"),), level="district"))
    await server.storage.registry_apply(registry)
    for batch in data.all_batches():
        await server.ingest.ingest(batch)
    hours = np.arange(DAYS * 24 + 1, dtype=np.int64)
    ones = np.ones_like(hours)
    await server.ingest.ingest(ReadingBatch(DISTRICT_MODULE * ones, ones, START + 3600 * hours, 500 * hours, 0 * ones))
    return server


def day_labels(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines() if line[:4].isdigit()]


async def test_days_are_the_sites_days(site, tmp_path) -> None:
    """Moscow is UTC+3: its 1 January begins on 31 December in UTC, and is labelled 1 January."""
    text = await report(tmp_path, "--group", "B1", "--month", "2024-01")
    labels = day_labels(text)
    assert labels[0] == "2024-01-01" and labels[-1] == "2024-01-31" and len(labels) == 31
    assert "2023-12-31" not in text


async def test_days_to_come_are_partial_not_without_members(site, tmp_path) -> None:
    now = datetime.now(MOSCOW)
    ahead = f"{now.year + 1}-{now.month:02d}"
    days = json.loads(await report(tmp_path, "--group", "B1", "--month", ahead, "--json"))["days"]
    assert days and all(d["flags"] == ["partial"] and d["input"] is None for d in days)
    assert days[0]["day"] == f"{ahead}-01"


async def test_an_inflow_only_district_is_not_a_total_loss(site, tmp_path) -> None:
    text = await report(tmp_path, "--group", "D", "--month", "2024-01")
    assert "inflow-only group" in text and "night flow" in text
    assert "100.0" not in text and "complete" not in text and "allocation" not in text
    # The input is still reported, day by day: 0.5 m3 an hour from its installation (03:00 in Moscow).
    assert text.splitlines()[2].split()[:2] == ["2024-01-01", "10.500"]
    entry = next(e for e in json.loads(await report(tmp_path, "--group", "D", "--month", "2024-01", "--json"))
                 ["losses"]["recommendations"] if e["kind"] == "inflow_only")
    assert entry["subject"] == "D"


async def test_the_what_if_takes_the_months_share_of_a_later_estimate(site) -> None:
    """A finding first seen in January and seen again until March keeps March's estimate (14 m3
    over the 14 days its detector's window saw): January's what-if counts its rate over its
    January hours, not 14 m3. The detector reports the event every day (a report that came
    only weeks after the last one would be a new event: docs/analytics.md)."""
    server = site
    day = 86400
    begun = START + 48 * 3600
    await server.report_finding(Finding("test", "B1-A02", "slowed_meter", "slow", t=START + 50 * 3600,
                                        data={"volume_m3": 0.2, "start": begun}))
    for d in range(3, 61):  # a 14-day window seeing 1 m3 a day
        seen_from = max(begun, START + (d - 14) * day)
        await server.report_finding(Finding("test", "B1-A02", "slowed_meter", "slow", t=START + d * day,
                                            data={"volume_m3": (START + d * day - seen_from) / day,
                                                  "start": seen_from}))
    (finding,) = await server.storage.findings(subject="B1-A02", limit=10)
    assert (finding["data"]["volume_m3"], finding["data"]["start"]) == (14.0, START + 46 * day)
    await server.intervals.process()
    await server.balance.process()
    tree = await q.Tree.load(server.storage)
    now = START + DAYS * day  # the month to date at the end of the data
    allocation = await q.allocation(server.storage, tree, tree.groups["B1"], "2024-01", MOSCOW, 0.95, now)
    assert allocation.fixable == pytest.approx(1.0 * (now - (START + 50 * 3600)) / day)
