"""Shared turn locks and duplicate filters (Redis, PostgreSQL): many tasks, several OS processes.

Every holder records when it entered and left the lock; the check is that no
two of those intervals overlap, whichever process or instance they came from.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from _lock_worker import start
from onethread.session.locks import DuplicateFilter, TurnLocks
from onethread.session.locks._shared import TurnLockLost
from onethread.session.locks.postgres import PostgresDuplicateFilter, PostgresTurnLocks
from onethread.session.locks.redis import RedisDuplicateFilter, RedisTurnLocks
from services import (
    cluster_tag,
    postgres_schema,
    postgres_url,
    raw_redis,
    redis_namespace,
    redis_prefix,
    redis_url,
)

pytestmark = pytest.mark.service


@dataclass
class Shared:
    kind: str
    url: str
    namespace: str  # key prefix or schema
    locks: Callable[..., Any]  # a new lock set on the same server (another "host")
    dedup: Callable[..., Any]
    break_lock: Callable[[str], None]  # make the server forget who holds a key's lock


def _redis(stack: ExitStack) -> Shared:
    url, prefix = redis_url(), stack.enter_context(redis_prefix())
    raw = redis.Redis.from_url(url)
    stack.callback(raw.close)
    return Shared(
        "redis",
        url,
        prefix,
        lambda **kw: RedisTurnLocks(url, prefix=prefix, **kw),
        lambda **kw: RedisDuplicateFilter(url, prefix=prefix, **kw),
        lambda key: raw.delete(f"{prefix}lock:{key}"),
    )


def _redis_cluster(stack: ExitStack) -> Shared:
    url, prefix_cm = redis_namespace("redis-cluster")
    prefix = stack.enter_context(prefix_cm)
    raw = raw_redis(url)
    stack.callback(raw.close)
    return Shared(
        "redis",
        url,
        prefix,
        lambda **kw: RedisTurnLocks(url, prefix=prefix, **kw),
        lambda **kw: RedisDuplicateFilter(url, prefix=prefix, **kw),
        lambda key: raw.delete(f"{prefix}lock:{cluster_tag(key, url)}"),
    )


def _postgres(stack: ExitStack) -> Shared:
    url, schema = postgres_url(), stack.enter_context(postgres_schema())

    def break_lock(key: str) -> None:
        with psycopg.connect(url, autocommit=True) as raw:
            raw.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND ((classid::bigint << 32) | objid::bigint) = %s",
                (_advisory(schema, key),),
            )

    return Shared(
        "postgres",
        url,
        schema,
        lambda **kw: PostgresTurnLocks(url, schema=schema, **kw),
        lambda **kw: PostgresDuplicateFilter(url, schema=schema, **kw),
        break_lock,
    )


def _advisory(schema: str, key: str) -> int:
    from onethread.session._conn.postgres import advisory_key

    return advisory_key("turn", schema, key)


@pytest.fixture(params=["redis", "redis-cluster", "postgres"])
def shared(request: pytest.FixtureRequest) -> Iterator[Shared]:
    with ExitStack() as stack:
        kinds = {"redis": _redis, "redis-cluster": _redis_cluster, "postgres": _postgres}
        yield kinds[request.param](stack)


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Collects lock sets and filters to close after the test."""
    opened: list[Any] = []
    yield opened
    for thing in opened:
        await thing.close()


def assert_no_overlap(intervals: list[list[int]] | list[tuple[float, float]]) -> None:
    ordered = sorted(intervals)
    for (_, prev_exit), (enter, _) in zip(ordered, ordered[1:], strict=False):
        assert enter >= prev_exit, "two holders were inside the lock at once"


def test_they_satisfy_the_protocols(shared: Shared) -> None:
    assert isinstance(shared.locks(), TurnLocks)
    assert isinstance(shared.dedup(), DuplicateFilter)


async def test_many_tasks_on_two_hosts_never_overlap(shared: Shared, closing: list[Any]) -> None:
    hosts = [shared.locks(), shared.locks()]
    closing += hosts
    intervals: list[tuple[float, float]] = []
    inside = 0

    async def worker(n: int) -> None:
        nonlocal inside
        for _ in range(8):
            async with hosts[n % 2].hold("user:alice"):
                inside += 1
                assert inside == 1
                enter = time.monotonic()
                await asyncio.sleep(0.0005)
                intervals.append((enter, time.monotonic()))
                inside -= 1

    async def other_key() -> float:
        await asyncio.sleep(0.01)
        start = time.monotonic()
        async with hosts[1].hold("user:bob"):
            return time.monotonic() - start

    _, bob_wait = await asyncio.gather(asyncio.gather(*(worker(n) for n in range(10))), other_key())
    assert len(intervals) == 80
    assert_no_overlap(intervals)
    assert bob_wait < 0.5  # another key is never held up by alice's queue


def test_three_processes_contending_one_key_never_overlap(shared: Shared, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [
        start("contend", shared.kind, shared.url, shared.namespace, "user:carol", 3, 10, go)
        for _ in range(3)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr
        go.touch()
        intervals: list[list[int]] = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            intervals += json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len(intervals) == 3 * 3 * 10
    assert_no_overlap(intervals)


async def test_a_sigkilled_holder_frees_the_lock(shared: Shared, closing: list[Any]) -> None:
    lease = 1.0
    proc = start("hold", shared.kind, shared.url, shared.namespace, "user:dave", lease)
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.startswith("held"), proc.stderr.read() if proc.stderr else ""
        fence = int(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.to_thread(proc.wait)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    locks = shared.locks()
    closing.append(locks)
    async with asyncio.timeout(lease + 3):
        async with locks.lease("user:dave") as mine:
            waited = time.monotonic() - killed
    if shared.kind == "redis":
        assert mine.fence == fence + 1
        assert 0.3 < waited < lease + 1.0  # it waited for the lease to run out, not longer
    else:
        assert mine.fence > fence
        assert waited < 1.0  # the server ends the session (and its locks) at once


async def test_a_redis_hold_longer_than_the_lease_is_renewed(closing: list[Any]) -> None:
    # (PostgreSQL locks have no lease: they last as long as the session.)
    with ExitStack() as stack:
        shared = _redis(stack)
        first, second = shared.locks(lease=0.3), shared.locks(lease=0.3)
        closing += [first, second]
        await _renewed(first, second)


async def _renewed(first: Any, second: Any) -> None:
    async with first.hold("user:erin"):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.9):  # three leases long
                async with second.hold("user:erin"):
                    pytest.fail("entered a lock that was held and renewed")
    async with asyncio.timeout(1.0):
        async with second.hold("user:erin"):
            pass


async def test_a_lost_lock_stops_the_turn(shared: Shared, closing: list[Any]) -> None:
    options = {"lease": 0.3} if shared.kind == "redis" else {"check_interval": 0.1}
    locks = shared.locks(**options)
    closing.append(locks)
    reached_end = False
    with pytest.raises(TurnLockLost, match="user:frank"):
        async with locks.hold("user:frank"):
            await asyncio.to_thread(shared.break_lock, "user:frank")
            await asyncio.sleep(2.0)
            reached_end = True
    assert not reached_end
    async with asyncio.timeout(1.0):
        async with locks.hold("user:frank"):  # usable again afterwards
            pass


async def test_outside_cancellation_is_not_turned_into_lock_lost(
    shared: Shared, closing: list[Any]
) -> None:
    locks = shared.locks()
    closing.append(locks)

    async def turn() -> None:
        async with locks.hold("user:gina"):
            await asyncio.sleep(10)

    task = asyncio.create_task(turn())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(1.0):
        async with locks.hold("user:gina"):  # released on cancellation
            pass


async def test_fences_grow(shared: Shared, closing: list[Any]) -> None:
    locks = shared.locks()
    closing.append(locks)
    fences = []
    for _ in range(3):
        async with locks.lease("user:hank") as lease:
            fences.append(lease.fence)
    assert fences == sorted(fences) and len(set(fences)) == 3


async def test_usable_from_a_private_loop_in_a_plain_thread(
    shared: Shared, closing: list[Any]
) -> None:
    locks = shared.locks()
    closing.append(locks)
    entered = threading.Event()

    async def elsewhere() -> None:
        async with locks.hold("user:ivy"):
            entered.set()

    async with locks.hold("user:ivy"):
        thread = threading.Thread(target=asyncio.run, args=(elsewhere(),))
        thread.start()
        await asyncio.sleep(0.2)
        assert not entered.is_set()  # the other loop waits for us through the server
    await asyncio.to_thread(thread.join, 5)
    assert entered.is_set()


async def test_duplicate_filter_answers_once_across_hosts(
    shared: Shared, closing: list[Any]
) -> None:
    filters = [shared.dedup(), shared.dedup()]
    closing += filters
    answers = await asyncio.gather(*(filters[i % 2].first_time("telegram:42") for i in range(20)))
    assert answers.count(True) == 1
    assert await filters[0].first_time("telegram:43") is True
    assert await filters[1].first_time("telegram:43") is False


async def test_duplicate_filter_forgets_after_ttl(shared: Shared, closing: list[Any]) -> None:
    dedup = shared.dedup(ttl=0.3)
    closing.append(dedup)
    assert await dedup.first_time("slack:1") is True
    assert await dedup.first_time("slack:1") is False
    await asyncio.sleep(0.5)
    assert await dedup.first_time("slack:1") is True
