"""The scheduler: fires each due job once, across every host that runs one.

One :class:`Scheduler` per process (``BotOS`` starts it). It never polls in
a loop that spins: it asks the store for the earliest due time and sleeps
until then, or until a job is added or cancelled (here: :meth:`Scheduler.wake`;
on another host: the store's change notification, see ``wait_changed``), or
at most ``max_sleep`` seconds. 100,000 jobs due next month cost nothing while
they wait: idle, the loop wakes once per ``max_sleep``, and the store's change
watch reads its pub/sub socket once a second (Redis, in steps so a cancel
is never lost) or ``PRAGMA data_version`` every 2 s (SQLite, for jobs added
by another process); ``benchmarks/bench_scheduler.py`` measures the cost.

When jobs come due it claims them (atomically, with a lease and a fencing
token: see :mod:`onethread.session.jobs.base`), at most as many as it has
free delivery slots, and for each one:

* picks the occurrence to fire: for a recurring job that missed several
  (everything was down), only the latest; never a burst;
* skips it, logged, if it is more than ``grace`` seconds late (default one
  hour): a recurring job moves on to its next occurrence, a one-off job ends
  as ``missed``;
* otherwise delivers it (``fire``), extending its lease every ``lease/3``
  seconds until the job is written back; if the lease cannot be extended
  (cancelled, or the store says another host holds it) the delivery is
  abandoned; a write-back the store refuses for a moment is retried while
  the lease lives;
* on failure, tries the same occurrence again after ``retry_delays[0]``,
  ``[1]``, ... seconds; when those run out, calls ``failed`` (which marks the
  person's history) and ends the occurrence as ``failed``;
* writes the job back with its next occurrence (or its end), if its token is
  still current.

A host that dies holding a claim hands the job over when its lease ends.
Exactly once, except for the window the store module states.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from ..errors import StoreUnavailable
from ..session.jobs.base import Claim, Job, JobStore, wait_event
from ..session.jobs.timing import latest_at_or_before, next_after
from ..session.outage import store_failed

__all__ = ["Fire", "OnFailed", "Scheduler", "Undelivered"]

log = logging.getLogger("onethread.scheduler")

LATE = 60.0
"""Seconds after its time from which a delivered occurrence counts as ``late``."""

Fire = Callable[[Job, datetime], Awaitable[None]]
"""Delivers one occurrence (original time given); raising means it failed."""

OnFailed = Callable[[Job, datetime, BaseException], Awaitable[None]]
"""Called once when an occurrence has failed for good (after every retry)."""


class Undelivered(Exception):
    """Raised by ``fire`` for a failed delivery whose ``pending_reply`` (a prompt
    job's reply, already written by the agent) should be kept for the retry;
    ``retry=False`` ends the occurrence as failed at once (a send that may have
    arrived must not be repeated)."""

    def __init__(
        self, cause: BaseException, pending_reply: str = "", *, retry: bool = True
    ) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.cause = cause
        self.pending_reply = pending_reply
        self.retry = retry


def _reraise_swallowed_cancel() -> None:
    """Raise ``CancelledError`` if this task was cancelled but runs on: a store driver
    (redis-py, redis/redis-py#2028) can swallow a cancel that lands inside a call."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _when(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Scheduler:
    """Fires due jobs from ``store`` with ``fire`` (see the module doc).

    Args:
        store: the job store (shared by every host of the deployment).
        fire: delivers one occurrence.
        failed: marks an occurrence that failed for good (optional).
        grace: seconds an occurrence may be late and still fire (default 3600).
        lease: seconds a claim lasts without being extended (default 60).
        retry_delays: waits before each retry of a failed delivery.
        concurrency: deliveries at once in this process (default 32).
        clock: the wall clock, Unix seconds (tests pass a fixed one and call
            :meth:`wake` when they move it).
        max_sleep: longest sleep between looks at the store (default 60 s).
        owner: this host's name in claims (default ``hostname-pid-random``).
        record: told each occurrence's outcome: ``due`` (fired on time, within
            a minute), ``late`` (fired later, within ``grace``), ``missed``,
            ``failed`` (``Metrics.scheduled_job``).

    Concurrency: :meth:`run` once per process, on the loop that uses the
    store; :meth:`wake` from that loop.
    """

    def __init__(
        self,
        store: JobStore,
        fire: Fire,
        *,
        failed: OnFailed | None = None,
        grace: float = 3600.0,
        lease: float = 60.0,
        retry_delays: Sequence[float] = (30.0, 60.0, 120.0, 300.0, 600.0),
        concurrency: int = 32,
        clock: Callable[[], float] = time.time,
        max_sleep: float = 60.0,
        owner: str | None = None,
        record: Callable[[str], None] | None = None,
    ) -> None:
        if grace < 0 or lease <= 0 or concurrency < 1 or max_sleep <= 0:
            raise ValueError("grace >= 0, lease > 0, concurrency >= 1 and max_sleep > 0 are needed")
        if any(d < 0 for d in retry_delays):
            raise ValueError("retry_delays must be >= 0 seconds each")
        self.store = store
        self.fire = fire
        self.failed = failed
        self.grace = grace
        self.lease = lease
        self.retry_delays = tuple(retry_delays)
        self.concurrency = concurrency
        self.clock = clock
        self.max_sleep = max_sleep
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.record = record or (lambda outcome: None)
        self._wake: asyncio.Event | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.fired = 0  # occurrences delivered by this process (for logs and tests)

    def wake(self) -> None:
        """Look at the store again now (a job was added, or the clock moved)."""
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Fire due jobs until cancelled. Store failures are logged and retried."""
        self._wake = asyncio.Event()
        watcher = asyncio.create_task(self._watch())
        backoff = 1.0
        try:
            while True:
                _reraise_swallowed_cancel()
                try:
                    await self._round()
                    backoff = 1.0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the store is down: keep the loop, retry later
                    log.error("scheduler: the job store failed: %s; retrying in %g s", exc, backoff)
                    await wait_event(self._wake, backoff)
                    self._wake.clear()
                    backoff = min(backoff * 2, 30.0)
        finally:
            watcher.cancel()
            running = set(self._running)
            for task in running:
                task.cancel()
            await asyncio.gather(watcher, *running, return_exceptions=True)

    async def _round(self) -> None:
        """Claim and start what is due, then sleep until the next due time or a wake."""
        assert self._wake is not None
        free = self.concurrency - len(self._running)
        # Claim in batches (a quarter of the slots at least), not one per finished job:
        # under a burst that halves the store round trips per job.
        claimable = free > 0 and (free >= max(1, self.concurrency // 4) or not self._running)
        if claimable:
            claims = await self.store.claim(self.clock(), self.owner, self.lease, free)
            for claim in claims:
                task = asyncio.create_task(self._handle(claim))
                self._running.add(task)
                task.add_done_callback(self._finished)
            if claims and len(claims) == free:
                return  # maybe more are due: claim again when a slot frees (or at once)
        timeout = self.max_sleep  # no slot to claim into: a finishing delivery wakes us
        if claimable:
            nxt = await self.store.next_due()
            if nxt is not None:
                timeout = min(timeout, max(nxt - self.clock(), 0.0))
        if timeout <= 0:
            timeout = 0.005  # due but taken by another host a moment ago: look again shortly
        await wait_event(self._wake, timeout)
        self._wake.clear()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("scheduler: a job handler failed", exc_info=task.exception())
        self.wake()

    async def _watch(self) -> None:
        """Wake the loop when another process or host changes the jobs."""
        while True:
            try:
                await self.store.wait_changed(self.max_sleep)
                _reraise_swallowed_cancel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, StoreUnavailable):  # an outage: one line for all of it
                    store_failed(exc, "the scheduler's change notifications")
                else:
                    log.warning("scheduler: change notifications failed: %s; retrying in 5 s", exc)
                await asyncio.sleep(5.0)
            self.wake()

    # -- one job -------------------------------------------------------------------

    def _advance(self, job: Job, now: float, occurrence: datetime, outcome: str, error: str) -> Job:
        """The job after this occurrence: its next one, or its end."""
        common = {
            "attempts": 0,
            "pending_reply": "",
            "retry_at": None,
            "last_run": occurrence,
            "last_status": outcome,
            "last_error": error,
        }
        if job.recurring:
            return job.evolve(next_run=next_after(job, max(now, occurrence.timestamp())), **common)
        final = {"delivered": "done", "failed": "failed", "missed": "missed"}[outcome]
        return job.evolve(status=final, **common)

    async def _handle(self, claim: Claim) -> None:
        """Deliver (or skip) one claimed occurrence and write the job back.

        The claim is kept alive (``_keep``) from the start until the job is
        written back, so a slow store after a delivery does not let another
        host take the job and send it again.
        """
        keeper = asyncio.create_task(self._keep(claim.job.id, claim.token, claim.until))
        try:
            updated = await self._outcome(claim, keeper)
            if updated is not None:
                await self._write_back(updated, claim.token, keeper)
        finally:
            keeper.cancel()

    async def _outcome(self, claim: Claim, keeper: asyncio.Task[None]) -> Job | None:
        """The job as it must be written back; ``None`` when the claim was lost."""
        job = claim.job
        now = self.clock()
        occurrence = job.next_run if job.attempts else latest_at_or_before(job, now)
        late = now - occurrence.timestamp()
        if late > self.grace and not job.attempts:  # a retry is late on purpose
            log.warning(
                "job %s for %s: the occurrence of %s is %.0f s late (grace %.0f s); skipped",
                job.id, job.unified_user_id, _when(occurrence), late, self.grace,
            )  # fmt: skip
            error = f"missed by {late:.0f} s (grace {self.grace:.0f} s)"
            self.record("missed")
            return self._advance(job, now, occurrence, "missed", error)
        job = job.evolve(next_run=occurrence)
        delivery: asyncio.Future[None] = asyncio.ensure_future(self.fire(job, occurrence))
        await asyncio.wait({delivery, keeper}, return_when=asyncio.FIRST_COMPLETED)
        if not delivery.done():
            delivery.cancel()
            await asyncio.gather(delivery, return_exceptions=True)
            log.warning("job %s: claim lost during delivery (cancelled or taken over)", job.id)
            return None
        exc = delivery.exception()
        if exc is None:
            self.fired += 1
            self.record("late" if late > LATE else "due")
            return self._advance(job, self.clock(), occurrence, "delivered", "")
        attempts = job.attempts + 1
        pending = exc.pending_reply if isinstance(exc, Undelivered) else job.pending_reply
        retryable = not isinstance(exc, Undelivered) or exc.retry
        if retryable and attempts <= len(self.retry_delays):
            delay = self.retry_delays[attempts - 1]
            log.warning(
                "job %s for %s: delivery failed (attempt %d of %d): %s; retrying in %g s",
                job.id, job.unified_user_id, attempts, len(self.retry_delays) + 1, exc, delay,
            )  # fmt: skip
            retry = datetime.fromtimestamp(self.clock() + delay, UTC)
            return job.evolve(
                attempts=attempts, retry_at=retry, pending_reply=pending, last_error=str(exc)
            )
        log.error(
            "job %s for %s: delivery of the occurrence of %s failed %d times; giving up: %s",
            job.id, job.unified_user_id, _when(occurrence), attempts, exc,
        )  # fmt: skip
        self.record("failed")
        if self.failed is not None:
            try:
                await self.failed(job.evolve(pending_reply=pending), occurrence, exc)
            except Exception:
                log.exception("job %s: recording the failed delivery failed", job.id)
        return self._advance(job, self.clock(), occurrence, "failed", str(exc))

    async def _write_back(self, job: Job, token: int, keeper: asyncio.Task[None]) -> None:
        """Release the claim with ``job``; a store error is retried while the claim lives."""
        pause = 0.05
        while True:
            try:
                released = await self.store.release(job, token)
                break
            except Exception as exc:
                if keeper.done():  # the claim is gone: another host may take the job over
                    log.error(
                        "job %s: could not write it back (%s) before its lease ended; the "
                        "occurrence may be delivered again",
                        job.id, exc,
                    )  # fmt: skip
                    return
                log.warning("job %s: writing it back failed: %s; retrying", job.id, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.lease / 6)
        if not released:
            log.warning(
                "job %s changed while it was handled (cancelled, or taken over after the "
                "lease); left as it is",
                job.id,
            )

    async def _keep(self, job_id: str, token: int, until: float) -> None:
        """Extend the claim every ``lease/3`` seconds; return when it is lost."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                new_until = self.clock() + self.lease
                if not await self.store.extend(job_id, token, new_until):
                    return
                until = new_until
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job %s: extending the claim failed: %s", job_id, exc)
                if self.clock() >= until:
                    return
