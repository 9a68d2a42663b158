"""A pumping station's flow totaliser replayed fast, for the tests in which the
Modbus and OPC UA clients make a PLC's totaliser a registry meter.

The totaliser stands at 1000 m3 four hours ago and grows by 10 m3 an hour; from
``start`` on, one real second is one hour of the station's life, so a test sees
hours of readings and hourly consumption in a few seconds. Every value the
device showed is kept, so a reading is checked against what the device really
showed at its time (a step function, whatever the machine's load does to the
updates) rather than against the ideal line.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest

from conftest import auth

HOUR = 3600


class ReplayedTotaliser:
    def __init__(self) -> None:
        self.t0 = (int(time.time()) // HOUR - 4) * HOUR
        self.shown: list[tuple[float, float]] = []
        """(station time, m3) of every value the device showed, in order."""
        self._go: float | None = None

    def clock(self) -> float:
        """The station's time: ``t0`` until ``start``, then an hour per real second."""
        return self.t0 + (time.monotonic() - self._go) * HOUR if self._go is not None else float(self.t0)

    async def run(self, show: Callable[[float, int], Awaitable[None]]) -> None:
        """Keep the device's totaliser current: ``show(station time, litres)`` every 5 ms."""
        while True:
            at = self.clock()
            litres = round((1000 + 10 * (at - self.t0) / HOUR) * 1000)
            await show(at, litres)
            self.shown.append((at, litres / 1000))
            await asyncio.sleep(0.005)

    async def start(self, http: Any, meter_id: str) -> None:
        """Start the clock once the meter's reading at ``t0`` is stored: the first hour needs its start."""
        url = f"/api/v1/meters/{meter_id}/readings?from={self.t0}&to={self.t0 + 1}"
        async with asyncio.timeout(10):
            while not (await http.get(url, headers=auth("viewer"))).json()["readings"]:
                await asyncio.sleep(0.01)
        self._go = time.monotonic()

    def shown_between(self, t0: float, t1: float) -> list[float]:
        """Values the device showed at some time in [t0, t1]: the one current at t0 and those set until t1."""
        times = [t for t, _ in self.shown]
        lo = max(bisect.bisect_right(times, t0) - 1, 0)
        return [v for _, v in self.shown[lo : bisect.bisect_right(times, t1)]]

    async def check(self, http: Any, meter_id: str, min_readings: int) -> None:
        """The meter's hourly consumption is the station's 10 m3, and every reading
        carries a value the device showed then."""
        t0 = self.t0
        r = await http.get(f"/api/v1/meters/{meter_id}/consumption?from={t0}&to={t0 + 3 * HOUR}",
                           headers=auth("viewer"))
        assert r.status_code == 200, r.text
        full = [pt for pt in r.json()["points"] if pt["quality"] == "measured"]
        assert len(full) >= 2, r.json()["points"]
        for pt in full:
            assert pt["value"] == pytest.approx(10.0, abs=0.3)
        readings = (await http.get(f"/api/v1/meters/{meter_id}/readings?from={t0}&to={t0 + 4 * HOUR}",
                                   headers=auth("viewer"))).json()["readings"]
        assert len(readings) > min_readings
        for reading in readings:
            at = datetime.fromisoformat(reading["t"].replace("Z", "+00:00")).timestamp()
            # What it showed shortly before the reading's time (a request's or a keep-alive's way
            # back takes a few ms: at this speed, a station minute), or within its whole second.
            then = self.shown_between(at - 0.1 * HOUR, at + 1)
            assert any(abs(v - reading["value"]) < 1e-6 for v in then), (reading, then)
            assert reading["counter"] == round(reading["value"] * 1000)
