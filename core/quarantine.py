"""Keeps the quarantine of unclaimed readings bounded.

A module that is not registered (or a channel no meter is wired to) reports
forever; without a bound its readings would fill the disk. Every
``[ingest] quarantine_check_s`` the readings received more than
``quarantine_max_age_days`` ago are dropped, then the oldest received beyond
``quarantine_max_rows``; both are counted in storage by reason and shown by
``GET /api/v1/quarantine``, so nothing disappears without a trace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from balans_edge.core.ingest import IngestSettings
from balans_edge.core.storage import Storage
from balans_edge.core.tasks import cancel
from balans_edge.core.times import DAY

log = logging.getLogger(__name__)


class QuarantineRetention:
    name = "quarantine-retention"

    def __init__(self, storage: Storage, settings: IngestSettings, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.settings = settings
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def prune(self) -> dict[str, int]:
        """Apply both bounds now; return how many readings each dropped."""
        before = (await self.storage.quarantine_stats())["dropped"]
        received_before = int(self.clock()) - self.settings.quarantine_max_age_days * DAY
        await self.storage.prune_quarantine(self.settings.quarantine_max_rows, received_before)
        after = (await self.storage.quarantine_stats())["dropped"]
        dropped = {reason: after[reason] - before.get(reason, 0) for reason in after}
        if any(dropped.values()):
            log.warning("quarantine: dropped %d readings older than %d days and %d beyond %d rows "
                        "(register their modules to keep such readings)", dropped.get("age", 0),
                        self.settings.quarantine_max_age_days, dropped.get("size", 0),
                        self.settings.quarantine_max_rows)
        return dropped

    async def _run(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("quarantine retention failed; trying again in %ss", self.settings.quarantine_check_s)
            await asyncio.sleep(self.settings.quarantine_check_s)
