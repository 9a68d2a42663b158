"""A read-only SQLite connection for the reads that return or scan many rows.

A year of a group's balance or fifty years of a meter's hours is a scan of
hundreds of thousands of rows. On the storage's ordinary reader it would hold
up every short read queued behind it (``/health``, a registry lookup, ingest's
look at stored readings), and turning its rows into Python objects on the event
loop would hold every concentrator's ACK and every SCADA poll. Here the query
*and* the work on its rows (summing, filling numpy arrays) run in one worker
thread of their own, which owns the connection: SQLite releases the GIL while
it steps through rows, so the event loop keeps running, and the loop only gets
the finished arrays.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from balans_edge.core.storage.base import StorageError

T = TypeVar("T")


class BulkReader:
    """One connection and the one thread that uses it: jobs run one after the
    other, in the order they were given (a cancelled caller's job still runs to
    its end, so nobody else ever shares the connection with it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA query_only=ON")
        self._conn = conn

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-bulk")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if self._conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._conn.close)
        self._conn = None
        executor.shutdown(wait=False)

    async def run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """``job(connection)`` in the reader's thread; its result."""
        if self._executor is None or self._conn is None:
            raise StorageError("storage is not open")
        conn = self._conn
        return await asyncio.get_running_loop().run_in_executor(self._executor, job, conn)
