"""Jobs in this process's memory (``memory://``): for tests and throw-away bots.

Nothing survives a restart. The earliest due job is found with a heap whose
stale entries (claimed, released, cancelled jobs) are dropped lazily, so an
idle scheduler with many jobs costs nothing per wake.
"""

from __future__ import annotations

import asyncio
import heapq

from .base import ACTIVE, Claim, Job, wait_event

__all__ = ["MemoryJobStore"]


class _Row:
    __slots__ = ("due", "job", "owner", "token")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.due: float | None = job.due
        self.token = 0
        self.owner = ""


class MemoryJobStore:
    """A :class:`~onethread.session.jobs.base.JobStore` in a dict (see the module doc).

    Concurrency: use from one event loop; no method awaits while it changes
    the rows, so each is atomic with respect to the others.
    """

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self._heap: list[tuple[float, str]] = []  # (due, id); stale when rows[id].due differs
        self._zones: dict[str, str] = {}
        self._changed: asyncio.Event | None = None

    def _push(self, row: _Row) -> None:
        if row.due is not None:
            heapq.heappush(self._heap, (row.due, row.job.id))

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def add(self, job: Job) -> None:
        """Store a new active job."""
        if job.id in self._rows:
            raise ValueError(f"job {job.id} already exists")
        row = _Row(job)
        self._rows[job.id] = row
        self._push(row)
        self._wake()

    async def get(self, job_id: str) -> Job | None:
        """The job or ``None``."""
        row = self._rows.get(job_id)
        return None if row is None else row.job

    async def find(self, user: str | None = None, *, finished: bool = False) -> list[Job]:
        """Active (and with ``finished``, all) jobs, soonest first."""
        jobs = [
            r.job
            for r in self._rows.values()
            if (user is None or r.job.unified_user_id == user)
            and (finished or r.job.status == ACTIVE)
        ]
        return sorted(jobs, key=lambda j: (j.next_run, j.id))

    async def cancel(self, job_id: str, user: str | None = None) -> bool:
        """Cancel an active job (only ``user``'s when given)."""
        row = self._rows.get(job_id)
        if row is None or row.job.status != ACTIVE:
            return False
        if user is not None and row.job.unified_user_id != user:
            return False
        row.job = row.job.evolve(status="cancelled")
        row.due, row.owner = None, ""
        row.token += 1
        self._wake()
        return True

    async def claim(self, now: float, owner: str, lease: float, limit: int) -> list[Claim]:
        """Take up to ``limit`` due jobs until ``now + lease``."""
        claims: list[Claim] = []
        while self._heap and len(claims) < limit and self._heap[0][0] <= now:
            due, job_id = heapq.heappop(self._heap)
            row = self._rows.get(job_id)
            if row is None or row.due != due:
                continue  # stale entry
            row.token += 1
            row.due, row.owner = now + lease, owner
            self._push(row)
            claims.append(Claim(row.job, row.token, now + lease))
        return claims

    async def extend(self, job_id: str, token: int, until: float) -> bool:
        """Move the lease to ``until`` while ``token`` is current."""
        row = self._rows.get(job_id)
        if row is None or row.token != token or row.due is None:
            return False
        row.due = until
        self._push(row)
        return True

    async def release(self, job: Job, token: int) -> bool:
        """Write ``job`` back while ``token`` is current."""
        row = self._rows.get(job.id)
        if row is None or row.token != token or row.job.status != ACTIVE:
            return False
        row.job, row.due, row.owner = job, job.due, ""
        self._push(row)
        return True

    async def next_due(self) -> float | None:
        """The earliest due time of any active job."""
        while self._heap:
            due, job_id = self._heap[0]
            row = self._rows.get(job_id)
            if row is not None and row.due == due:
                return due
            heapq.heappop(self._heap)
        return None

    async def wait_changed(self, timeout: float) -> None:
        """Wait for a change made through this store, or ``timeout`` seconds."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await wait_event(self._changed, max(0.0, timeout))
        self._changed.clear()

    async def get_zone(self, user: str) -> str | None:
        """The person's zone name, if set."""
        return self._zones.get(user)

    async def set_zone(self, user: str, zone: str | None) -> None:
        """Set or clear the person's zone name."""
        if zone is None:
            self._zones.pop(user, None)
        else:
            self._zones[user] = zone

    async def close(self) -> None:
        """Nothing to release."""
