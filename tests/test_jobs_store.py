"""The job store contract, on every back-end: memory, SQLite, Redis, PostgreSQL.

Claims are atomic and fenced: a job is held by one claimer at a time, a
stale token can neither extend nor write back, a cancel fences out the
holder, and a claim whose lease ran out is taken over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from onethread.session.jobs.base import Job, JobStore, new_job_id
from onethread.session.jobs.memory import MemoryJobStore
from onethread.session.jobs.sqlite import SQLiteJobStore
from onethread.session.urls import open_job_store
from services import postgres_schema, postgres_url, redis_namespace

T0 = 1_900_000_000.0  # a fixed "now" (2030-03-17); stores never read the clock


def job(user: str = "alice", at: float = T0, **changes: Any) -> Job:
    return Job(
        id=new_job_id(),
        unified_user_id=user,
        text=f"hello {user}",
        next_run=datetime.fromtimestamp(at, UTC),
        **changes,
    )


Factory = Callable[[], JobStore]


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Factory]:
    """Makes store instances on ONE back-end (several instances = several processes)."""
    made: list[JobStore] = []
    with ExitStack() as stack:
        kind = request.param
        if kind == "memory":
            shared = MemoryJobStore()

            def make() -> JobStore:
                return shared

        elif kind == "sqlite":

            def make() -> JobStore:
                return SQLiteJobStore(tmp_path / "jobs.db", check_interval=0.05)

        elif kind in ("redis", "redis-cluster"):
            url, prefix_cm = redis_namespace(kind)
            prefix = stack.enter_context(prefix_cm)

            def make() -> JobStore:
                return open_job_store(url, prefix=prefix)  # type: ignore[no-any-return]

        else:
            url, schema = postgres_url(), stack.enter_context(postgres_schema())

            def make() -> JobStore:
                return open_job_store(url, schema=schema)  # type: ignore[no-any-return]

        def tracked() -> JobStore:
            store = make()
            made.append(store)
            return store

        if kind != "memory":
            request.node.add_marker(pytest.mark.service)
        try:
            yield tracked
        finally:
            for store in made:
                await store.close()


async def test_add_get_find_and_cancel_scoped_to_the_owner(stores: Factory) -> None:
    store = stores()
    assert isinstance(store, JobStore)
    a1, a2, b1 = job("alice", T0 + 20), job("alice", T0 + 10, every=timedelta(hours=1)), job("bob")
    for j in (a1, a2, b1):
        await store.add(j)
    assert await store.get(a1.id) == a1
    assert await store.get("nope") is None
    assert [j.id for j in await store.find("alice")] == [a2.id, a1.id]  # soonest first
    assert {j.id for j in await store.find()} == {a1.id, a2.id, b1.id}
    assert not await store.cancel(b1.id, "alice")  # not hers
    assert await store.cancel(b1.id, "bob")
    assert not await store.cancel(b1.id)  # already cancelled
    assert [j.id for j in await store.find("bob")] == []
    [gone] = await store.find("bob", finished=True)
    assert gone.status == "cancelled"
    assert await store.next_due() == T0 + 10


async def test_a_claim_is_atomic_and_each_job_goes_to_one_claimer(stores: Factory) -> None:
    first, second, third = stores(), stores(), stores()
    due = [job(f"u{i}", T0 - i) for i in range(30)]
    later = job("late", T0 + 100)
    for j in (*due, later):
        await first.add(j)
    got = await asyncio.gather(
        *(s.claim(T0, f"host{i}", 60.0, 7) for i, s in enumerate((first, second, third)))
    )
    got += [await first.claim(T0, "host0", 60.0, 100)]
    ids = [c.job.id for claims in got for c in claims]
    assert sorted(ids) == sorted(j.id for j in due)  # each once; the later job not yet
    assert all(c.until == T0 + 60 for claims in got for c in claims)
    assert await first.claim(T0 + 59, "host1", 60.0, 100) == []  # leases still run
    assert await first.next_due() == T0 + 60


async def test_release_and_extend_need_the_current_token(stores: Factory) -> None:
    store, other = stores(), stores()
    j = job(every=timedelta(minutes=5))
    await store.add(j)
    [mine] = await store.claim(T0, "a", 10.0, 10)
    assert await store.extend(j.id, mine.token, T0 + 30)
    assert await other.claim(T0 + 20, "b", 10.0, 10) == []  # extended: still held
    # The lease runs out; host b takes over with a newer token.
    [theirs] = await other.claim(T0 + 31, "b", 10.0, 10)
    assert theirs.token > mine.token
    advanced = j.evolve(next_run=j.next_run + timedelta(minutes=5), last_status="delivered")
    assert not await store.extend(j.id, mine.token, T0 + 60)  # fenced out
    assert not await store.release(advanced, mine.token)
    assert await other.release(advanced, theirs.token)
    assert (await store.get(j.id)) == advanced
    assert await store.next_due() == advanced.next_run.timestamp()


async def test_cancel_fences_out_the_host_delivering_it(stores: Factory) -> None:
    store = stores()
    j = job()
    await store.add(j)
    [claim] = await store.claim(T0, "a", 60.0, 10)
    assert await store.cancel(j.id)
    assert not await store.release(j.evolve(status="done"), claim.token)
    assert not await store.extend(j.id, claim.token, T0 + 100)
    got = await store.get(j.id)
    assert got is not None and got.status == "cancelled"
    assert await store.next_due() is None


async def test_finished_jobs_leave_the_schedule_and_retries_keep_the_occurrence(
    stores: Factory,
) -> None:
    store = stores()
    j = job(prompt=True)
    await store.add(j)
    [claim] = await store.claim(T0, "a", 60.0, 10)
    retry = j.evolve(attempts=1, retry_at=datetime.fromtimestamp(T0 + 30, UTC),
                     pending_reply="the reply", last_error="boom")  # fmt: skip
    assert await store.release(retry, claim.token)
    assert await store.next_due() == T0 + 30
    assert await store.claim(T0 + 29, "a", 60.0, 10) == []
    [again] = await store.claim(T0 + 30, "a", 60.0, 10)
    assert again.job == retry and again.job.next_run == j.next_run
    assert await store.release(retry.evolve(status="failed"), again.token)
    assert await store.next_due() is None
    assert await store.find() == []
    [failed] = await store.find(finished=True)
    assert (failed.status, failed.pending_reply, failed.attempts) == ("failed", "the reply", 1)


async def test_zones_per_person(stores: Factory) -> None:
    store = stores()
    assert await store.get_zone("alice") is None
    await store.set_zone("alice", "Europe/Berlin")
    await store.set_zone("alice", "Asia/Kolkata")
    assert await stores().get_zone("alice") == "Asia/Kolkata"
    await store.set_zone("alice", None)
    assert await store.get_zone("alice") is None


async def test_another_instance_is_woken_by_an_add(stores: Factory) -> None:
    waiter, writer = stores(), stores()
    await waiter.set_zone("warm-up", "UTC")  # opens the file / connection first
    await waiter.next_due()
    wait = asyncio.create_task(waiter.wait_changed(30.0))
    await asyncio.sleep(0.3)  # the listener is subscribed
    assert not wait.done()
    await writer.add(job())
    async with asyncio.timeout(5):
        await wait


async def test_a_newer_sqlite_schema_is_refused_and_a_foreign_file_never_overwritten(
    tmp_path: Path,
) -> None:
    import sqlite3

    from onethread.errors import CorruptStoreError, StoreError

    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    with pytest.raises(StoreError, match="newer"):
        await SQLiteJobStore(newer).find()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptStoreError):
        await SQLiteJobStore(junk).add(job())
    assert junk.read_bytes() == b"this is not a database" * 100


async def test_sqlite_reads_create_no_file(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "sub" / "jobs.db")
    assert await store.find() == [] and await store.next_due() is None
    assert not (tmp_path / "sub" / "jobs.db").exists()
    await store.add(job())
    assert (tmp_path / "sub" / "jobs.db").stat().st_mode & 0o777 == 0o600
    await store.close()


def test_open_job_store_follows_the_history_url(tmp_path: Path) -> None:
    from onethread.errors import ConfigError

    store = open_job_store(f"sqlite:///{tmp_path}/h.db")
    assert isinstance(store, SQLiteJobStore) and store.path == tmp_path / "h.jobs.db"
    assert isinstance(open_job_store("memory://"), MemoryJobStore)
    with pytest.raises(ConfigError, match="accepted forms"):
        open_job_store("ftp://x")
