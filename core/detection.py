"""Running the detectors: one run at a time, over a scope, findings reported once.

Detectors are contributed by plugins (``register_detectors``); the analytics
scheduler, an operator's on-demand run and the tests all run them here. A
detector gets a ``DetectionRun`` (the scope and read access to the data), never
the server; a failing detector is logged, counted against its plugin and
skipped, and the others still run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from balans_edge.core.analytics.base import Scope
from balans_edge.core.calculated import TagSamples
from balans_edge.core.components import Detector, Finding

if TYPE_CHECKING:
    from balans_edge.core.storage.views import Queries

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DetectionRun:
    """What a detector is given on each run."""

    scope: Scope
    """The groups and hours the run looks at (its windows are loaded once and shared)."""
    queries: Queries
    """Read access to the registry, readings, consumption, balances and findings."""
    tz: ZoneInfo
    tags: TagSamples | None = None
    """Where calculated inputs read their tags' samples (None: tag terms are missing)."""


class DetectionService:
    def __init__(self, queries: Queries, tz: ZoneInfo, *, settle: Callable[[], Awaitable[None]],
                 report: Callable[[Finding], Awaitable[Finding]],
                 failed: Callable[[str], None] = lambda plugin: None, tags: TagSamples | None = None) -> None:
        self.queries = queries
        self.tz = tz
        self.tags = tags
        self._settle = settle
        self._report = report
        self._failed = failed
        self.detectors: list[tuple[str, Detector]] = []
        """(plugin name, detector) in registration order."""
        self._lock = asyncio.Lock()

    async def settle(self) -> None:
        """Fold the readings already stored into consumption and balances now."""
        await self._settle()

    async def run(self, scope: Scope | None = None, *, settle: bool = True) -> list[Finding]:
        """Run every detector once over ``scope`` (default: the recent window).

        With ``settle``, readings already stored are folded into consumption and
        balances first: a run soon after a fast-forward must not look at hours
        still waiting to be computed. Runs do not overlap (they share the
        scope's loaded windows)."""
        async with self._lock:
            if settle:
                await self.settle()
            run = DetectionRun(scope or Scope.recent(time.time()), self.queries, self.tz, self.tags)
            found = []
            for name, detector in self.detectors:
                try:
                    results = await detector.detect(run)
                except Exception:
                    log.exception("detector %s (%s) failed", getattr(detector, "name", detector), name)
                    self._failed(name)
                    continue
                for finding in results:
                    found.append(await self._report(finding))
            return found

