"""Small asyncio helpers shared by long-running services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balans_edge.core.bus import EventBus

log = logging.getLogger(__name__)


async def cancel(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has finished."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def cancel_surely(task: asyncio.Task[None]) -> None:
    """Cancel a task and wait for it to end, cancelling again if needed: on Python
    3.11 ``asyncio.wait_for`` (used inside pymodbus and asyncua) and
    ``asyncio.timeout`` can turn a cancellation that races with an answer or a
    timeout into a normal return or a TimeoutError, and a loop would go on."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled() and task.exception() is not None:
        log.error("%s ended with %r", task.get_name(), task.exception())


def on_failure(task: asyncio.Task, report: Callable[[BaseException], object]) -> asyncio.Task:
    """Call ``report`` with the exception ``task`` ends with; a task cancelled or
    returning normally is not reported. For supervising a component's
    background loops, which should only end when the component stops."""

    def ended(done: asyncio.Task) -> None:
        if not done.cancelled() and done.exception() is not None:
            report(done.exception())  # type: ignore[arg-type]

    task.add_done_callback(ended)
    return task


async def rerun(work: Callable[[], Awaitable[object]], what: str, bus: EventBus | None, event: type,
                debounce_s: float, every_s: float = 60.0) -> None:
    """Run ``work`` now, then again after each ``event`` on the bus (waiting
    ``debounce_s`` so that a burst of events shares one run) and every
    ``every_s`` anyway; a failing run is logged and the loop goes on. For the
    background workers that fold new data into derived tables."""
    sub = bus.subscribe(event, policy="coalesce", name=what) if bus is not None else None
    try:
        while True:
            try:
                await work()
            except Exception:
                log.exception("%s failed", what)
            if sub is None:
                await asyncio.sleep(every_s)
                continue
            # asyncio.timeout, not wait_for, which can swallow a racing cancellation on 3.11.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every_s):
                    await sub.get()
                    await asyncio.sleep(debounce_s)
    finally:
        if sub is not None:
            sub.close()
