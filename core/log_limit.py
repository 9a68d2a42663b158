"""Log lines that a stranger can cause, limited so that a scanner cannot flood
the log (or fill the disk): a token bucket of ``burst`` lines refilled over
``window_s``; lines beyond it are counted, and the next line that is written
says how many were left out.

Hand-written: logging has no rate limit, and a bucket is a few lines."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class LimitedLog:
    def __init__(self, logger: logging.Logger, burst: int = 20, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.burst = burst
        self.rate = burst / window_s
        self.clock = clock
        self.tokens = float(burst)
        self.last = clock()
        self.suppressed = 0
        """Lines left out since the last one written."""

    def log(self, level: int, message: str, *args: object) -> bool:
        """Write the line if the bucket allows; True when it was written."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            self.suppressed += 1
            return False
        self.tokens -= 1
        if self.suppressed:
            message += " (%d similar lines left out before this one)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self.logger.log(level, message, *args)
        return True
