"""Time arithmetic of jobs: zones, cron expressions, occurrences.

Cron expressions are parsed and walked by cronsim (five fields, as cron(8)),
in the job's time zone, so "0 9 * * *" is 09:00 on the wall clock of that
zone on both sides of a daylight-saving change. Across a change cronsim does
what Debian's cron does: a time that does not exist (02:30 on the spring-
forward night) fires at the first minute after the gap; a time that happens
twice (the fall-back night) fires once, the first time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .base import Job

__all__ = [
    "MIN_EVERY",
    "check_cron",
    "latest_at_or_before",
    "next_after",
    "zone",
]

MIN_EVERY = timedelta(minutes=1)


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``"Europe/Berlin"``); ``ValueError`` naming the fix otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a time zone name is needed, e.g. Europe/Berlin, Asia/Kolkata or UTC")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin, "
            "America/New_York, Asia/Kolkata or UTC"
        ) from exc


def check_cron(expr: str, tz: str = "UTC") -> str:
    """Return ``expr`` stripped if cronsim accepts it, else ``ValueError`` saying why."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError(
            "cron needs an expression such as '0 9 * * 1-5' (minute hour day month weekday)"
        )
    expr = " ".join(expr.split())
    try:
        CronSim(expr, datetime.now(zone(tz)))
    except CronSimError as exc:
        raise ValueError(
            f"bad cron expression {expr!r}: {exc}; write five fields "
            "'minute hour day-of-month month day-of-week', e.g. '0 9 * * 1-5'"
        ) from exc
    return expr


def _local(job: Job, t: float) -> datetime:
    return datetime.fromtimestamp(t, zone(job.timezone))


def next_after(job: Job, t: float) -> datetime:
    """The job's first occurrence strictly after Unix time ``t`` (UTC).

    ``every`` jobs keep their phase (``next_run + k * every``); a missed
    stretch is stepped over, never fired as a burst.
    """
    if job.cron is not None:
        return next(CronSim(job.cron, _local(job, t))).astimezone(UTC)
    if job.every is None:
        raise ValueError(f"job {job.id} runs once; it has no next occurrence")
    step = job.every.total_seconds()
    start = job.next_run.timestamp()
    if t < start:
        return job.next_run
    k = int((t - start) // step) + 1
    return datetime.fromtimestamp(start + k * step, UTC)


def latest_at_or_before(job: Job, t: float) -> datetime:
    """The job's last occurrence at or before ``t``, never earlier than ``next_run``.

    For a one-off job (or when ``next_run`` is still ahead) this is ``next_run``.
    """
    first = job.next_run
    if not job.recurring or t <= first.timestamp():
        return first
    if job.every is not None:
        step = job.every.total_seconds()
        k = int((t - first.timestamp()) // step)
        return datetime.fromtimestamp(first.timestamp() + k * step, UTC)
    assert job.cron is not None
    # reverse=True walks strictly before its start: start one second later.
    prev = next(CronSim(job.cron, _local(job, t + 1), reverse=True)).astimezone(UTC)
    return max(prev, first)
