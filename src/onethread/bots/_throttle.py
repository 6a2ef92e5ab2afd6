"""A WARNING at most once a minute per kind of trouble: a flood must not flood the log."""

from __future__ import annotations

import logging
import math
import time

__all__ = ["LogThrottle"]


class LogThrottle:
    """Logs ``warn(kind, ...)`` at most once per ``interval`` seconds for each ``kind``.

    Touched on the event loop thread only, which guards ``_last``.
    """

    def __init__(self, log: logging.Logger, interval: float = 60.0) -> None:
        self.log = log
        self.interval = interval
        self._last: dict[str, float] = {}

    def warn(self, kind: str, message: str, *args: object) -> bool:
        """Log ``message % args`` as a WARNING unless ``kind`` was logged lately; say if it was."""
        now = time.monotonic()
        if now - self._last.get(kind, -math.inf) < self.interval:
            return False
        self._last[kind] = now
        self.log.warning(message, *args)
        return True
