"""The scheduler loop with a fixed clock: fires once, grace, no bursts, retries, fencing, idle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from onethread.bots.scheduler import Scheduler, Undelivered
from onethread.session.jobs.base import Job
from onethread.session.jobs.memory import MemoryJobStore
from onethread.session.jobs.when import make_job

T0 = datetime(2026, 6, 10, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    """A wall clock that moves only when told (and wakes the scheduler)."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.scheduler: Scheduler | None = None

    def __call__(self) -> float:
        return self.now

    def set(self, now: float) -> None:
        self.now = now
        if self.scheduler is not None:
            self.scheduler.wake()


class Recorder:
    def __init__(self) -> None:
        self.fired: list[tuple[str, datetime, float]] = []
        self.failed: list[tuple[str, datetime, BaseException]] = []
        self.fail_with: BaseException | None = None
        self.event = asyncio.Event()
        self.clock: Clock | None = None

    async def fire(self, job: Job, occurrence: datetime) -> None:
        assert self.clock is not None
        self.event.set()
        if self.fail_with is not None:
            raise self.fail_with
        self.fired.append((job.text, occurrence, self.clock.now))

    async def on_failed(self, job: Job, occurrence: datetime, exc: BaseException) -> None:
        self.failed.append((job.text, occurrence, exc))


Run = Callable[..., Awaitable[tuple[Scheduler, Clock, Recorder]]]


@pytest.fixture
async def run() -> AsyncIterator[Run]:
    tasks: list[asyncio.Task[None]] = []

    async def start(
        store: MemoryJobStore,
        now: float = T0,
        *,
        fire: Callable[[Job, datetime], Awaitable[None]] | None = None,
        fail_with: BaseException | None = None,
        **options: object,
    ) -> tuple[Scheduler, Clock, Recorder]:
        clock, rec = Clock(now), Recorder()
        rec.clock, rec.fail_with = clock, fail_with
        sched = Scheduler(
            store,
            fire or rec.fire,
            failed=rec.on_failed,
            clock=clock,
            **options,  # type: ignore[arg-type]
        )
        clock.scheduler = sched
        tasks.append(asyncio.create_task(sched.run()))
        await asyncio.sleep(0.01)
        return sched, clock, rec

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def settle(check: Callable[[], bool], within: float = 3.0) -> None:
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.005)


async def test_a_one_off_fires_once_when_its_time_comes(run: Run) -> None:
    store = MemoryJobStore()
    job = make_job("alice", "stand-up", at=timedelta(minutes=5), now=T0)
    await store.add(job)
    sched, clock, rec = await run(store)
    clock.set(T0 + 299)
    await asyncio.sleep(0.05)
    assert rec.fired == []
    clock.set(T0 + 300)
    await settle(lambda: len(rec.fired) == 1)
    clock.set(T0 + 10_000)
    await asyncio.sleep(0.05)
    assert rec.fired == [("stand-up", job.next_run, T0 + 300)]
    done = await store.get(job.id)
    assert done is not None and (done.status, done.last_status) == ("done", "delivered")
    assert await store.next_due() is None


async def test_an_occurrence_missed_within_grace_fires_once_with_its_original_time(
    run: Run,
) -> None:
    store = MemoryJobStore()
    job = make_job("alice", "ping", at=timedelta(minutes=1), now=T0)
    await store.add(job)
    _, _, rec = await run(store, now=T0 + 60 + 3599)  # "started" 59:59 after it was due
    await settle(lambda: len(rec.fired) == 1)
    assert rec.fired[0][1] == job.next_run  # the original time, not the start time


async def test_an_occurrence_older_than_grace_is_skipped_and_logged(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryJobStore()
    job = make_job("alice", "old", at=timedelta(minutes=1), now=T0)
    await store.add(job)
    with caplog.at_level(logging.WARNING, "onethread.scheduler"):
        sched, _, rec = await run(store, now=T0 + 60 + 3601)
        await settle(lambda: "skipped" in caplog.text)
    await asyncio.sleep(0.05)
    assert rec.fired == []
    missed = await store.get(job.id)
    assert missed is not None and missed.status == "missed" and "missed by" in missed.last_error


async def test_a_recurring_job_that_missed_many_fires_once_then_keeps_its_phase(run: Run) -> None:
    store = MemoryJobStore()
    job = make_job("alice", "tick", every=timedelta(minutes=10), now=T0)
    await store.add(job)
    down_until = T0 + 600 + 5 * 600 + 30  # five occurrences passed while "down"
    _, clock, rec = await run(store, now=down_until)
    await settle(lambda: len(rec.fired) == 1)
    await asyncio.sleep(0.05)
    assert len(rec.fired) == 1  # no burst
    assert rec.fired[0][1].timestamp() == T0 + 600 + 5 * 600  # the latest one
    nxt = await store.get(job.id)
    assert nxt is not None and nxt.next_run.timestamp() == T0 + 600 + 6 * 600
    clock.set(T0 + 600 + 6 * 600)
    await settle(lambda: len(rec.fired) == 2)


async def test_a_recurring_job_missed_beyond_grace_moves_on_without_firing(run: Run) -> None:
    store = MemoryJobStore()
    job = make_job("alice", "daily", cron="0 9 * * *", now=T0)  # next: 11 June 09:00 UTC
    await store.add(job)
    _, _, rec = await run(store, now=job.next_run.timestamp() + 2 * 3600, grace=3600)
    async with asyncio.timeout(3):
        while (got := await store.get(job.id)) is not None and got.next_run == job.next_run:
            await asyncio.sleep(0.005)
    assert rec.fired == []
    assert got is not None and got.status == "active" and got.last_status == "missed"
    assert got.next_run == job.next_run + timedelta(days=1)


async def test_failures_are_retried_with_backoff_then_marked_failed(run: Run) -> None:
    store = MemoryJobStore()
    job = make_job("alice", "hey", at=timedelta(0), now=T0)
    await store.add(job)
    failure = Undelivered(RuntimeError("platform down"), pending_reply="kept reply")
    sched, clock, rec = await run(store, retry_delays=(10, 20), fail_with=failure)
    async with asyncio.timeout(3):
        while (got := await store.get(job.id)) is None or got.attempts != 1:
            await asyncio.sleep(0.005)
    assert got.retry_at is not None and got.retry_at.timestamp() == T0 + 10
    assert got.pending_reply == "kept reply" and got.next_run == job.next_run
    clock.set(T0 + 10)
    async with asyncio.timeout(3):
        while (got := await store.get(job.id)) is None or got.attempts != 2:
            await asyncio.sleep(0.005)
    assert got.retry_at is not None and got.retry_at.timestamp() == T0 + 30
    clock.set(T0 + 30)  # third and last attempt fails too
    await settle(lambda: len(rec.failed) == 1)
    text, occurrence, exc = rec.failed[0]
    assert (text, occurrence) == ("hey", job.next_run) and "platform down" in str(exc)
    async with asyncio.timeout(3):
        while (got := await store.get(job.id)) is None or got.status != "failed":
            await asyncio.sleep(0.005)
    assert got.last_status == "failed" and "platform down" in got.last_error


async def test_a_delivery_that_succeeds_on_retry_is_delivered_once(run: Run) -> None:
    store = MemoryJobStore()
    job = make_job("alice", "hey", at=timedelta(0), now=T0)
    await store.add(job)
    sched, clock, rec = await run(store, retry_delays=(5,), fail_with=RuntimeError("429"))
    async with asyncio.timeout(3):
        while (got := await store.get(job.id)) is None or got.attempts != 1:
            await asyncio.sleep(0.005)
    rec.fail_with = None
    clock.set(T0 + 5)
    await settle(lambda: len(rec.fired) == 1)
    async with asyncio.timeout(3):
        while (got := await store.get(job.id)) is None or got.status != "done":
            await asyncio.sleep(0.005)
    assert rec.failed == []


async def test_a_job_cancelled_while_delivering_is_not_written_back(run: Run) -> None:
    store = MemoryJobStore()
    job = make_job("alice", "tick", every=timedelta(minutes=1), now=T0)
    await store.add(job)
    gate, started = asyncio.Event(), asyncio.Event()
    fired: list[datetime] = []

    async def slow(j: Job, occurrence: datetime) -> None:
        started.set()
        await gate.wait()
        fired.append(occurrence)

    await run(store, now=T0 + 60, fire=slow)
    await asyncio.wait_for(started.wait(), 3)
    assert await store.cancel(job.id)
    gate.set()
    await settle(lambda: len(fired) == 1)
    await asyncio.sleep(0.05)
    got = await store.get(job.id)
    assert got is not None and got.status == "cancelled"  # not revived by the write-back


async def test_a_lost_claim_abandons_the_delivery(run: Run) -> None:
    store = MemoryJobStore()
    job = make_job("alice", "x", at=timedelta(0), now=T0)
    await store.add(job)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck(j: Job, occurrence: datetime) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await run(store, lease=0.15, fire=stuck)
    await asyncio.wait_for(started.wait(), 3)
    [claim] = await store.claim(T0 + 100, "another-host", 60, 10)  # as if the lease ran out
    await asyncio.wait_for(cancelled.wait(), 3)  # the keeper found the token moved on
    assert claim.job.id == job.id


async def test_a_cron_job_in_kolkata_fires_at_their_nine_oclock(run: Run) -> None:
    store = MemoryJobStore()
    job = make_job("priya", "good morning", cron="0 9 * * *", tz="Asia/Kolkata", now=T0)
    await store.add(job)
    _, clock, rec = await run(store)
    nine = datetime(2026, 6, 11, 9, 0, tzinfo=ZoneInfo("Asia/Kolkata")).timestamp()
    clock.set(nine - 1)
    await asyncio.sleep(0.05)
    assert rec.fired == []
    clock.set(nine)
    await settle(lambda: len(rec.fired) == 1)
    assert rec.fired[0][1].astimezone(ZoneInfo("Asia/Kolkata")).strftime("%H:%M") == "09:00"
    assert rec.fired[0][1] == datetime(2026, 6, 11, 3, 30, tzinfo=UTC)


async def test_dst_both_ways_with_a_fixed_clock(run: Run) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 3, 28, 12, 0, tzinfo=berlin).timestamp()
    store = MemoryJobStore()
    await store.add(make_job("anna", "nine", cron="0 9 * * *", tz="Europe/Berlin", now=start))
    await store.add(make_job("anna", "gap", cron="30 2 * * *", tz="Europe/Berlin", now=start))
    _, clock, rec = await run(store, now=start)
    # Walk the clock an hour at a time over the spring-forward night, then autumn's.
    for hour in range(48):
        clock.set(start + hour * 3600)
        await asyncio.sleep(0.01)
    await settle(lambda: len(rec.fired) == 4)
    local = [(t, o.astimezone(berlin).strftime("%d %H:%M %Z")) for t, o, _ in rec.fired]
    assert sorted(local) == sorted(
        [("nine", "29 09:00 CEST"), ("nine", "30 09:00 CEST"),
         ("gap", "29 03:00 CEST"), ("gap", "30 02:30 CEST")]
    )  # fmt: skip


async def test_idle_scheduler_sleeps_until_the_next_due_time(run: Run) -> None:
    class Counting(MemoryJobStore):
        claims = 0

        async def claim(self, *args: object, **kwargs: object) -> list:  # type: ignore[override]
            Counting.claims += 1
            return await super().claim(*args, **kwargs)  # type: ignore[arg-type]

    store = Counting()
    for i in range(1000):
        await store.add(make_job(f"u{i}", "later", at=timedelta(days=30), now=T0))
    await run(store, max_sleep=3600)
    before = Counting.claims
    await asyncio.sleep(0.5)
    assert Counting.claims == before  # no polling while nothing is due


@pytest.mark.service
async def test_a_busy_scheduler_on_redis_stops_promptly_when_cancelled() -> None:
    """redis-py can swallow a cancel that lands inside a call (redis/redis-py#2028); the
    loop must notice, or BotOS.stop() would wait for ever."""
    import random

    from onethread.session.jobs.redis import RedisJobStore
    from services import redis_prefix, redis_url

    with redis_prefix() as prefix:
        store = RedisJobStore(redis_url(), prefix=prefix)
        now = datetime.now(UTC).timestamp()
        for i in range(400):
            await store.add(make_job(f"u{i}", "x", at=timedelta(0), now=now))

        async def fire(job: Job, occurrence: datetime) -> None:
            await asyncio.sleep(0)

        try:
            for _ in range(15):
                task = asyncio.create_task(Scheduler(store, fire, lease=5.0).run())
                await asyncio.sleep(random.uniform(0, 0.05))
                task.cancel()
                async with asyncio.timeout(5):
                    await asyncio.gather(task, return_exceptions=True)
        finally:
            await store.close()
