"""Reading times people write, and building a ``Job`` from schedule arguments.

:func:`parse_when` reads ISO 8601 (``2026-03-01T09:00``, with or without an
offset; without one it is wall-clock time in the person's zone), ``in 10
minutes`` / ``in 1 hour 30 minutes`` / ``in 2 days``, ``tomorrow at 9``,
``today at 17:30``, ``at 6pm`` (today, or tomorrow once passed) and
``monday at 9``. :func:`parse_every` reads ``10m``, ``1h``, ``30 minutes``,
``1 day``. :func:`make_job` checks ``at`` / ``every`` / ``cron`` and works out
the first run. Nothing here guesses: anything else is a ``ValueError`` that
lists the forms it reads.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time

from .base import Job, new_job_id
from .timing import MIN_EVERY, check_cron, next_after, zone

__all__ = ["FORMS", "make_job", "parse_every", "parse_when"]

FORMS = (
    "an ISO 8601 time (2026-03-01T09:00 or 2026-03-01T09:00+01:00), 'in 10 minutes', "
    "'in 1 hour 30 minutes', 'tomorrow at 9', 'today at 17:30', 'at 6pm' or 'monday at 9'"
)

_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip
_SPAN_PART = re.compile(r"(\d+(?:\.\d+)?|an?|one)\s*([a-z]+)")
_CLOCK = re.compile(r"(\d{1,2})(?::(\d{2}))?\s*(am|pm)?")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _span(text: str) -> timedelta | None:
    """``"1 hour 30 minutes"`` / ``"90m"`` / ``"an hour"`` -> timedelta; None if not a span."""
    text = text.replace(",", " ").replace(" and ", " ").strip()
    pos, total = 0, 0.0
    for match in _SPAN_PART.finditer(text):
        if text[pos : match.start()].strip():
            return None
        count, unit = match.groups()
        if unit not in _UNITS:
            return None
        total += (1.0 if count in ("a", "an", "one") else float(count)) * _UNITS[unit]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        return None
    return timedelta(seconds=total)


def _clock(text: str) -> clock_time | None:
    """``"9"``, ``"9:30"``, ``"6pm"``, ``"18:30"`` -> a wall-clock time; None otherwise."""
    match = _CLOCK.fullmatch(text.strip())
    if match is None:
        return None
    hour, minute = int(match.group(1)), int(match.group(2) or 0)
    half = match.group(3)
    if half is not None:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if half == "pm" else 0)
    if hour > 23 or minute > 59:
        return None
    return clock_time(hour, minute)


def _local(day: date, at: clock_time, tz: str) -> datetime:
    return datetime.combine(day, at, tzinfo=zone(tz)).astimezone(UTC)


def parse_when(text: str, tz: str = "UTC", now: float | None = None) -> datetime:
    """The time ``text`` names (see the module doc), as an aware UTC datetime.

    ``tz`` is the person's zone (for wall-clock times); ``now`` the current
    Unix time (default: the clock). ``ValueError`` for anything else.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"when is empty; write {FORMS}")
    now = time.time() if now is None else now
    raw = text.strip()
    low = " ".join(raw.lower().split())
    try:
        iso = datetime.fromisoformat(raw.replace(" ", "T", 1) if "-" in raw[:8] else raw)
    except ValueError:
        iso = None
    if iso is not None:
        if iso.tzinfo is None:
            iso = iso.replace(tzinfo=zone(tz))
        return iso.astimezone(UTC)
    if low.startswith("in "):
        span = _span(low[3:])
        if span is not None:
            return datetime.fromtimestamp(now, UTC) + span
    today = datetime.fromtimestamp(now, zone(tz)).date()
    day_word, _, rest = low.partition(" at ")
    if low.startswith("at "):
        day_word, rest = "", low[3:]
    at = _clock(rest) if rest else None
    if at is not None:
        if day_word == "today":
            return _local(today, at, tz)
        if day_word == "tomorrow":
            return _local(today + timedelta(days=1), at, tz)
        if day_word == "":
            when = _local(today, at, tz)
            return when if when.timestamp() > now else _local(today + timedelta(days=1), at, tz)
        name = day_word.removeprefix("next ").removeprefix("on ")
        if name in _DAYS:
            ahead = (_DAYS.index(name) - today.weekday()) % 7 or 7
            return _local(today + timedelta(days=ahead), at, tz)
    raise ValueError(f"cannot read the time {text!r}; write {FORMS}")


def parse_every(text: str) -> timedelta:
    """``"10m"``, ``"1h"``, ``"30 minutes"``, ``"1 day"`` -> timedelta; ``ValueError`` otherwise."""
    span = _span(" ".join(str(text).lower().removeprefix("every ").split()))
    if span is None:
        raise ValueError(f"cannot read the interval {text!r}; write e.g. '10m', '1h', '1 day'")
    return span


def make_job(
    user: str,
    text: str,
    *,
    at: datetime | timedelta | None = None,
    every: timedelta | None = None,
    cron: str | None = None,
    prompt: bool = False,
    platform: str | None = None,
    source_label: str = "cron",
    tz: str = "UTC",
    now: float | None = None,
) -> Job:
    """A new active job from the arguments of ``BotOS.schedule`` (which see).

    ``ValueError`` naming the fix for: not exactly one of ``at`` / ``every`` /
    ``cron``; a naive ``at``; an ``at`` more than a minute ago; ``every`` under
    a minute; a bad cron expression or zone; empty ``user``, ``text`` or
    ``source_label``.
    """
    if not isinstance(user, str) or not user.strip():
        raise ValueError("user must be a unified id ('alice') or PLATFORM:ID ('telegram:42')")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string (the message, or the prompt)")
    if not isinstance(source_label, str) or not source_label.strip():
        raise ValueError("source_label must be a non-empty string such as 'cron'")
    given = [name for name, v in (("at", at), ("every", every), ("cron", cron)) if v is not None]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of at= (a datetime with tzinfo, or a timedelta from now), "
            "every= (a timedelta of at least 1 minute) or cron= (e.g. '0 9 * * 1-5')"
            + (f"; got {', '.join(given)}" if given else "")
        )
    zone(tz)
    now = time.time() if now is None else now
    start = datetime.fromtimestamp(now, UTC)
    job = Job(id=new_job_id(), unified_user_id=user, text=text, next_run=start, prompt=bool(prompt),
              platform=platform or None, source_label=source_label, timezone=tz,
              created_at=now)  # fmt: skip
    if at is not None:
        if isinstance(at, timedelta):
            if at < timedelta(0):
                raise ValueError(
                    f"at={at} is negative; give a time from now, e.g. timedelta(minutes=5)"
                )
            return job.evolve(next_run=start + at)
        if not isinstance(at, datetime):
            raise ValueError(f"at must be a datetime or a timedelta, not {type(at).__name__}")
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(
                f"at={at.isoformat()} has no time zone; give an aware datetime, e.g. "
                "datetime(2026, 3, 1, 9, tzinfo=ZoneInfo('Europe/Berlin')), or a timedelta"
            )
        if at.timestamp() < now - 60:
            raise ValueError(f"at={at.isoformat()} is in the past")
        return job.evolve(next_run=at.astimezone(UTC))
    if every is not None:
        if not isinstance(every, timedelta) or every < MIN_EVERY:
            raise ValueError(f"every must be a timedelta of at least 1 minute, got {every}")
        return job.evolve(every=every, next_run=start + every)
    assert cron is not None
    job = job.evolve(cron=check_cron(cron, tz))
    return job.evolve(next_run=next_after(job, now))
