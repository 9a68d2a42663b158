"""Process helpers the benchmarks share: free ports, CPU time of a server process,
pinning processes to cores so a server and its load do not share one, and a
ticker that measures how long the event loop stalls."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pin(pid: int, core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(pid, {core})


async def ticker(stalls: list[float], stop: asyncio.Event) -> None:
    """Sleep 5 ms at a time until ``stop`` and record how late each wake-up was:
    the longest is the event loop's longest stall meanwhile."""
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.005)
        stalls.append(time.perf_counter() - t - 0.005)
