"""When a session starts afresh on its own: ``session: {reset, idle_minutes, daily_at}``.

A reset archives the session, like ``/new`` (nothing is deleted), when the
person's next message arrives: ``idle`` after ``idle_minutes`` without a
message, ``daily`` when the last message came before the latest ``daily_at``
(``"HH:MM"``, UTC unless a ``timezone`` is given). ``never`` (the default)
keeps one conversation for good; the budget and summaries keep it small.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["ResetPolicy"]

_MODES = ("never", "idle", "daily")


@dataclass(frozen=True, slots=True)
class ResetPolicy:
    """When a session is archived before a new message (see the module's docstring).

    Raises ``ValueError`` naming the fix for an unknown mode, a non-positive
    ``idle_minutes``, a ``daily_at`` that is not ``HH:MM`` or an unknown zone.
    """

    reset: str = "never"
    idle_minutes: float = 240.0
    daily_at: str = "04:00"
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if self.reset not in _MODES:
            raise ValueError(f"session reset must be never, idle or daily, not {self.reset!r}")
        if self.idle_minutes <= 0:
            raise ValueError(f"idle_minutes must be positive, got {self.idle_minutes!r}")
        self._clock()
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {self.timezone!r}: use e.g. Europe/Berlin"
            ) from exc

    def _clock(self) -> dt.time:
        try:
            hours, minutes = (int(part) for part in self.daily_at.split(":"))
            return dt.time(hours, minutes)
        except ValueError as exc:
            raise ValueError(f"daily_at must be HH:MM, e.g. 04:00, not {self.daily_at!r}") from exc

    @property
    def active(self) -> bool:
        """False for ``never``: nothing to check on a turn."""
        return self.reset != "never"

    def due(self, last: float, now: float) -> bool:
        """Whether a session whose newest entry is from ``last`` starts afresh at ``now``."""
        if self.reset == "idle":
            return now - last >= self.idle_minutes * 60
        if self.reset == "daily":
            zone = ZoneInfo(self.timezone)
            here = dt.datetime.fromtimestamp(now, zone)
            boundary = dt.datetime.combine(here.date(), self._clock(), zone)
            if boundary > here:
                boundary -= dt.timedelta(days=1)
            return last < boundary.timestamp()
        return False
