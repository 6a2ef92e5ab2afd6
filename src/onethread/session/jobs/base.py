"""Scheduled jobs: the ``Job`` record and the store contract every back-end meets.

A job is one message (or one agent prompt) for one person, at one time
(``at``) or again and again (``every``, ``cron``). The store keeps, per job,
the record itself (``Job``, as JSON), its ``status``, and three fields that
make each occurrence fire exactly once across hosts:

``due``
    when someone must look at the job next (Unix seconds): its next run,
    or, while a host holds it, the end of that host's lease. ``None`` once
    the job is finished (done, failed, missed, cancelled).
``token``
    a fencing token, raised by every claim and every cancel. A host writes
    the job back (:meth:`JobStore.release`) or extends its lease
    (:meth:`JobStore.extend`) only while the token it got is still current,
    so a host that stalled past its lease cannot overwrite what the next
    host did.
``owner``
    the host holding the claim (for logs and ``onethread jobs list``).

:meth:`JobStore.claim` takes every job whose ``due`` has come (up to a
limit) in one atomic step: it raises the token and moves ``due`` to the end
of the lease. Two hosts can never claim the same job at once; a host that
dies holding a claim hands the job over when its lease ends, to whichever
host claims next.

Delivery is therefore exactly once as the person sees it, except in one
window, the outbox's (:mod:`onethread.session.outbox`): a host that dies after
the platform accepted the message and before it wrote the job back
(milliseconds) causes one repeat when the job is claimed again after the
lease, because no platform API lets a sender ask "did you already get this?".

Clocks: ``now`` is the caller's (each host's) clock, passed in, so hosts'
clocks must agree to well within the lease (NTP does this).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "ACTIVE",
    "Claim",
    "FINISHED",
    "Job",
    "JobStatus",
    "JobStore",
    "new_job_id",
    "wait_event",
]

JobStatus = Literal["active", "done", "failed", "missed", "cancelled"]
ACTIVE: JobStatus = "active"
FINISHED: frozenset[str] = frozenset({"done", "failed", "missed", "cancelled"})


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if it was set.

    Unlike ``asyncio.wait_for`` on Python 3.11, a cancellation that arrives
    as the event is set is never swallowed (``asyncio.timeout`` tells its own
    timeout from a cancel).
    """
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


def new_job_id() -> str:
    """A fresh job id: 12 hex characters, short enough to type in ``/reminders``."""
    return uuid.uuid4().hex[:12]


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class Job:
    """One scheduled message or prompt for one person.

    ``next_run`` is the (aware, UTC) time of the next occurrence; exactly one
    of ``every`` / ``cron`` is set for a recurring job, neither for a one-off.
    ``timezone`` is the zone ``cron`` is read in (the person's, else the
    deployment's). ``platform`` is where to deliver (``None``: where the
    person talked last). ``prompt`` runs an agent turn with ``text`` and
    delivers the reply.

    Kept by the store, not given by the caller: ``status``; ``attempts``
    (failed deliveries of the current occurrence); ``pending_reply`` (a
    prompt job's reply being retried, so the agent is not asked twice);
    ``last_run``, ``last_status`` (``delivered``, ``failed``, ``missed``) and
    ``last_error`` of the last occurrence handled; ``retry_at``, when the
    current occurrence (still ``next_run``) is tried again after a failure.
    """

    id: str
    unified_user_id: str
    text: str
    next_run: datetime
    every: timedelta | None = None
    cron: str | None = None
    prompt: bool = False
    platform: str | None = None
    source_label: str = "cron"
    timezone: str = "UTC"
    status: JobStatus = ACTIVE
    created_at: float = 0.0
    attempts: int = 0
    pending_reply: str = ""
    last_run: datetime | None = None
    last_status: str = ""
    last_error: str = ""
    retry_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def recurring(self) -> bool:
        """True for ``every`` and ``cron`` jobs."""
        return self.every is not None or self.cron is not None

    @property
    def due(self) -> float | None:
        """Unix time the job next needs attention (``None`` once finished)."""
        if self.status != ACTIVE:
            return None
        return (self.retry_at or self.next_run).timestamp()

    def describe(self) -> str:
        """How often: ``once``, ``every 0:30:00`` or ``cron 0 9 * * 1-5 (Europe/Berlin)``."""
        if self.cron is not None:
            return f"cron {self.cron} ({self.timezone})"
        if self.every is not None:
            return f"every {self.every}"
        return "once"

    def evolve(self, **changes: Any) -> Job:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return replace(self, **changes)

    def to_json(self) -> str:
        """Every field as JSON (times as ISO 8601 in UTC, ``every`` in seconds)."""
        return json.dumps(
            {
                "id": self.id,
                "unified_user_id": self.unified_user_id,
                "text": self.text,
                "next_run": _iso(self.next_run),
                "every": None if self.every is None else self.every.total_seconds(),
                "cron": self.cron,
                "prompt": self.prompt,
                "platform": self.platform,
                "source_label": self.source_label,
                "timezone": self.timezone,
                "status": self.status,
                "created_at": self.created_at,
                "attempts": self.attempts,
                "pending_reply": self.pending_reply,
                "last_run": None if self.last_run is None else _iso(self.last_run),
                "last_status": self.last_status,
                "last_error": self.last_error,
                "retry_at": None if self.retry_at is None else _iso(self.retry_at),
                "metadata": dict(self.metadata),
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, data: str, *, status: str | None = None) -> Job:
        """Inverse of :meth:`to_json`; ``status`` (the store's column) wins over the body's."""
        d = json.loads(data)
        every = d.get("every")
        last_run = d.get("last_run")
        retry_at = d.get("retry_at")
        st = status or d.get("status") or ACTIVE
        return cls(
            id=str(d["id"]),
            unified_user_id=str(d["unified_user_id"]),
            text=str(d["text"]),
            next_run=datetime.fromisoformat(d["next_run"]),
            every=None if every is None else timedelta(seconds=float(every)),
            cron=d.get("cron"),
            prompt=bool(d.get("prompt", False)),
            platform=d.get("platform"),
            source_label=str(d.get("source_label") or "cron"),
            timezone=str(d.get("timezone") or "UTC"),
            status=st if st in FINISHED else ACTIVE,  # type: ignore[arg-type]
            created_at=float(d.get("created_at") or 0.0),
            attempts=int(d.get("attempts") or 0),
            pending_reply=str(d.get("pending_reply") or ""),
            last_run=None if last_run is None else datetime.fromisoformat(last_run),
            last_status=str(d.get("last_status") or ""),
            last_error=str(d.get("last_error") or ""),
            retry_at=None if retry_at is None else datetime.fromisoformat(retry_at),
            metadata=dict(d.get("metadata") or {}),
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """A job this host holds until ``until`` (Unix time), with its fencing ``token``."""

    job: Job
    token: int
    until: float


@runtime_checkable
class JobStore(Protocol):
    """Where jobs live (see the module doc for ``due``, ``token`` and the guarantees).

    Every method is a coroutine, safe from any task of the loop that uses the
    store; the shared back-ends are safe across processes and hosts.
    Errors: ``StoreError`` when the back-end fails.
    """

    async def add(self, job: Job) -> None:
        """Store a new active job (due at ``job.next_run``) and wake the schedulers."""
        ...

    async def get(self, job_id: str) -> Job | None:
        """The job, whatever its status, or ``None``."""
        ...

    async def find(self, user: str | None = None, *, finished: bool = False) -> list[Job]:
        """Active jobs (of ``user``, or everyone's), soonest first; with
        ``finished`` also those done, failed, missed or cancelled."""
        ...

    async def cancel(self, job_id: str, user: str | None = None) -> bool:
        """Cancel an active job (only ``user``'s when given). True if it was cancelled.

        Raises the token, so a host delivering it right now cannot write it back.
        """
        ...

    async def claim(self, now: float, owner: str, lease: float, limit: int) -> list[Claim]:
        """Atomically take up to ``limit`` jobs due at ``now`` until ``now + lease``."""
        ...

    async def extend(self, job_id: str, token: int, until: float) -> bool:
        """Move the lease to ``until``; False when the claim was lost (token moved on)."""
        ...

    async def release(self, job: Job, token: int) -> bool:
        """Write ``job`` back (its ``status``, ``next_run`` and the rest) and end the
        claim; ``due`` becomes ``job.due``. False, changing nothing, when the token
        moved on (the job was cancelled or another host took it over)."""
        ...

    async def next_due(self) -> float | None:
        """The earliest ``due`` of any active job (claimed ones: the lease end)."""
        ...

    async def wait_changed(self, timeout: float) -> None:
        """Return when another process added or cancelled a job, or after ``timeout``."""
        ...

    async def get_zone(self, user: str) -> str | None:
        """The person's time zone name, if they set one (``/tz``)."""
        ...

    async def set_zone(self, user: str, zone: str | None) -> None:
        """Set (or with ``None`` clear) the person's time zone name."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...
