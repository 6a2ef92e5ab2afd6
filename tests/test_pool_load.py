"""1,000 people at once on Redis and on PostgreSQL: every turn succeeds.

Every pooled back-end (history, identity, turn locks, duplicate filter,
outbox) waits for a free connection (with a timeout) instead of failing when
its pool is busy. redis-py's default pool raised ``Too many connections`` past
100 connections, so 200 people at once failed turns. The load queues in the
process instead (back-pressure): the number of connections the server sees
stays within the pools' bounds, sampled while the turns run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from helpers import RecordingAgent
from onethread._fake_adapter import FakeAdapter
from onethread.bots import Bot, BotOS
from onethread.errors import StoreError
from onethread.session.history.base import HistoryEntry
from onethread.session.urls import Coordination, open_history_store, open_identity_resolver
from services import postgres_schema, postgres_url, redis_prefix, redis_url

pytestmark = pytest.mark.service

PEOPLE = 1000
REDIS_POOL = 8  # per client; 4 async clients + the identity resolver's
PG_HISTORY_POOL = 6  # PostgreSQL's max_connections is shared with other test runs


@dataclass
class Backend:
    kind: str
    tag: str  # client name (Redis) / application_name (PostgreSQL) of this test's connections
    open: Callable[[], tuple[Any, Any, Coordination]]  # store, resolver, coordination
    connections: Callable[[], int]  # how many connections the server sees with ``tag``
    bound: int  # most connections the pools may open


def _redis(stack: ExitStack) -> Backend:
    import redis

    from onethread.session.locks.redis import RedisDuplicateFilter, RedisTurnLocks
    from onethread.session.outbox.redis import RedisOutbox

    url, prefix = redis_url(), stack.enter_context(redis_prefix())
    tag = f"ot-load-{uuid.uuid4().hex[:8]}"
    o: dict[str, Any] = {"prefix": prefix, "client_name": tag, "max_connections": REDIS_POOL}
    admin = redis.Redis.from_url(url)
    stack.callback(admin.close)

    def open_all() -> tuple[Any, Any, Coordination]:
        coord = Coordination(
            RedisTurnLocks(url, **o), RedisDuplicateFilter(url, **o), RedisOutbox(url, **o), True
        )
        return open_history_store(url, **o), open_identity_resolver(url, **o), coord

    def connections() -> int:
        return sum(1 for c in admin.client_list() if c.get("name") == tag)

    return Backend("redis", tag, open_all, connections, 5 * REDIS_POOL)


def _postgres(stack: ExitStack) -> Backend:
    import psycopg

    from onethread.session.locks.postgres import PostgresDuplicateFilter, PostgresTurnLocks
    from onethread.session.outbox.postgres import PostgresOutbox

    base, schema = postgres_url(), stack.enter_context(postgres_schema())
    tag = f"ot-load-{uuid.uuid4().hex[:8]}"
    url = f"{base}?application_name={tag}"
    admin = psycopg.connect(base, autocommit=True)
    stack.callback(admin.close)
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"

    def open_all() -> tuple[Any, Any, Coordination]:
        coord = Coordination(
            PostgresTurnLocks(url, schema=schema),
            PostgresDuplicateFilter(url, schema=schema, max_size=2),
            PostgresOutbox(url, schema=schema),
            True,
        )
        store = open_history_store(url, schema=schema, max_size=PG_HISTORY_POOL)
        return store, open_identity_resolver(url, schema=schema), coord

    def connections() -> int:
        row = admin.execute(count, (tag,)).fetchone()
        return int(row[0]) if row else 0

    # history + duplicate filter + outbox (4) + the lock session + identity (command, listen)
    return Backend("postgres", tag, open_all, connections, PG_HISTORY_POOL + 2 + 4 + 1 + 2)


@pytest.fixture(params=["redis", "postgres"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with ExitStack() as stack:
        yield (_redis if request.param == "redis" else _postgres)(stack)


@pytest.fixture
async def served(backend: Backend) -> AsyncIterator[tuple[BotOS, FakeAdapter]]:
    store, resolver, coord = backend.open()
    adapter = FakeAdapter("telegram")
    agent = RecordingAgent(delay=0.01)  # a model call: turns overlap
    botos = BotOS(agent=agent, bots=[], store=store, identity_resolver=resolver, coordination=coord)
    botos.add_bot(Bot("telegram", agent, adapter=adapter, session=botos.session))
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(10)
    try:
        yield botos, adapter
    finally:
        await botos.stop()
        await task
        resolver.close()


async def test_1000_people_at_once_every_turn_succeeds(
    backend: Backend, served: tuple[BotOS, FakeAdapter]
) -> None:
    botos, adapter = served
    seen: list[int] = []

    async def sample() -> None:
        while True:
            seen.append(await asyncio.to_thread(backend.connections))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    start = time.perf_counter()
    try:
        await asyncio.gather(
            *(adapter.inject(f"hello {i}", user=f"p{i}", message_id=f"m{i}") for i in range(PEOPLE))
        )
        await adapter.wait_sent(PEOPLE, timeout=120)
    finally:
        sampler.cancel()
    elapsed = time.perf_counter() - start
    replies = {s.chat_id: s.text for s in adapter.sent}
    assert len(adapter.sent) == PEOPLE
    assert replies == {f"dm-p{i}": f"reply:hello {i}" for i in range(PEOPLE)}
    # A turn is stored just after its reply is sent (under the turn lock): the
    # last appends may still be committing when the last reply arrives.
    for _ in range(100):
        counts = await asyncio.gather(
            *(botos.session.store.count(f"bot_telegram_p{i}") for i in range(PEOPLE))
        )
        if counts == [2] * PEOPLE:
            break
        await asyncio.sleep(0.1)
    assert counts == [2] * PEOPLE  # every turn stored: the message and the reply
    assert seen and max(seen) <= backend.bound, (seen, backend.bound)
    print(f"\n{backend.kind}: {PEOPLE} people in {elapsed:.1f} s, "
          f"at most {max(seen)} server connections (bound {backend.bound})")  # fmt: skip


# -- a full pool waits, then fails with the fix named ------------------------------


async def test_redis_call_waits_for_a_busy_pool_then_names_the_fix() -> None:
    from onethread.session.history.redis import RedisHistoryStore

    with redis_prefix() as prefix:
        store = RedisHistoryStore(redis_url(), prefix=prefix, max_connections=1, pool_timeout=0.3)
        try:
            assert await store.count("k") == 0  # opens the one connection
            async with store._clients.borrow() as client:
                pool = client.client.connection_pool
                held = await pool.get_connection()
                later = asyncio.create_task(store.count("k"))
                batched = asyncio.create_task(store.load("k"))  # a shared pipeline waits too
                await asyncio.sleep(0.1)
                assert not later.done() and not batched.done()  # waiting, not failed
                await pool.release(held)
                assert await later == 0
                assert await batched == []
                held = await pool.get_connection()
                try:
                    with pytest.raises(StoreError, match="max_connections") as err:
                        await store.count("k")
                    assert "1 pooled connections" in str(err.value)
                    with pytest.raises(StoreError, match="max_connections"):
                        await store.load("k")
                finally:
                    await pool.release(held)
        finally:
            await store.close()


def test_redis_pool_options_are_checked_at_construction() -> None:
    from onethread.session.history.redis import RedisHistoryStore

    with pytest.raises(ValueError, match="max_connections"):
        RedisHistoryStore("redis://127.0.0.1:6379/0", max_connections=0)
    with pytest.raises(ValueError, match="pool_timeout"):
        RedisHistoryStore("redis://127.0.0.1:6379/0", pool_timeout=0)


async def test_postgres_call_waits_for_a_busy_pool() -> None:
    from onethread.session.history.postgres import PostgresHistoryStore

    with postgres_schema() as schema:
        store = PostgresHistoryStore(postgres_url(), schema=schema, max_size=1, timeout=0.5)
        try:
            assert await store.count("k") == 0
            async with store._pools.borrow() as wrapped:
                pool = wrapped.pool
                conn = await pool.getconn()
                later = asyncio.create_task(store.count("k"))
                grouped = asyncio.create_task(store.append("k", [HistoryEntry("user", "x", 1.0)]))
                await asyncio.sleep(0.1)
                assert not later.done() and not grouped.done()
                await pool.putconn(conn)
                assert await later == 0
                await grouped
                conn = await pool.getconn()
                try:
                    with pytest.raises(StoreError, match="PostgreSQL"):
                        await store.count("k")
                    with pytest.raises(StoreError, match="PostgreSQL"):
                        await store.append("k", [HistoryEntry("user", "y", 2.0)])
                finally:
                    await pool.putconn(conn)
        finally:
            await store.close()


class SlowConnection:
    """A stand-in for the lock session's connection: ``execute`` answers when told."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def execute(self, query: str) -> None:
        await self.answer


async def test_postgres_lock_session_busy_is_not_taken_for_dead() -> None:
    """All of a process's turn locks go through one PostgreSQL connection. With
    hundreds of lock queries queued on it, the watchdog's probe waited behind them
    past a plain timeout and the session was declared dead: every turn it held
    failed with ``TurnLockLost`` (1,000 people at once did that). A probe now
    waits as long as other queries keep being answered."""
    from onethread.session.locks.postgres import _LockSession

    session = _LockSession("postgresql://unused", "public", check_interval=0.05)
    conn = SlowConnection()

    async def busy() -> None:  # lock queries answered every 10 ms, for 0.3 s
        for _ in range(30):
            await asyncio.sleep(0.01)
            session.answered = time.monotonic()
        conn.answer.set_result(None)  # then the probe's turn comes

    worker = asyncio.create_task(busy())
    assert await session._probe(conn) is None  # type: ignore[arg-type]
    await worker

    dead = SlowConnection()  # nothing answered at all: dead after one interval
    failure = await session._probe(dead)  # type: ignore[arg-type]
    assert isinstance(failure, TimeoutError)


async def test_postgres_concurrent_appends_share_transactions_and_fail_alone() -> None:
    """Group commit: 60 concurrent appends take far fewer transactions, all land
    whole; an append the server refuses fails alone, the others of its group land."""
    import secrets

    from onethread.session.history import postgres as pg

    writes: list[int] = []

    class Counting(pg._Pool):
        async def _insert(self, appends: list[list[Any]]) -> list[None]:
            writes.append(sum(len(rows) for rows in appends))
            return await super()._insert(appends)

    with postgres_schema() as schema:
        store = pg.PostgresHistoryStore(postgres_url(), schema=schema)
        real = store._open

        async def counting_open(home: bool) -> pg._Pool:
            opened = await real(home)
            return Counting(opened.pool, store._q, 3)

        store._open = counting_open  # type: ignore[method-assign]
        store._pools._create = counting_open
        try:
            await store.count("warm")
            await asyncio.gather(*(
                store.append(f"k{i}", [HistoryEntry("user", f"q{i}", 1.0),
                                       HistoryEntry("assistant", f"a{i}", 2.0)])
                for i in range(60)
            ))  # fmt: skip
            assert sum(writes) == 120 and len(writes) < 30, writes
            assert [await store.count(f"k{i}") for i in range(60)] == [2] * 60
            too_long = secrets.token_hex(8000)  # beyond the key index's row size limit
            results = await asyncio.gather(
                *(store.append(f"b{i}", [HistoryEntry("user", "x", 1.0)]) for i in range(5)),
                store.append(too_long, [HistoryEntry("user", "x", 1.0)]),
                return_exceptions=True,
            )
            assert results[:5] == [None] * 5
            assert isinstance(results[5], StoreError)
            assert [await store.count(f"b{i}") for i in range(5)] == [1] * 5
        finally:
            await store.close()


async def test_postgres_lock_calls_of_concurrent_turns_share_statements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """60 turns taking 60 different locks at once: each gets its lock and its own
    fencing token, in a handful of statements on the one lock connection; a key
    already held elsewhere is still refused inside a shared statement."""
    from onethread.session.locks import postgres as pl

    statements: list[int] = []
    real = pl._LockSession._run

    async def counting(self: Any, conn: Any, statement: Any, part: list[Any]) -> None:
        statements.append(len(part))
        await real(self, conn, statement, part)

    monkeypatch.setattr(pl._LockSession, "_run", counting)
    with postgres_schema() as schema:
        a = pl.PostgresTurnLocks(postgres_url(), schema=schema)
        b = pl.PostgresTurnLocks(postgres_url(), schema=schema)  # another host
        fences: list[int] = []
        inside = asyncio.Event()
        go = asyncio.Event()

        async def turn(i: int) -> None:
            async with a.lease(f"k{i}") as lease:
                fences.append(lease.fence)
                if len(fences) == 60:
                    inside.set()
                await go.wait()

        try:
            tasks = [asyncio.create_task(turn(i)) for i in range(60)]
            await asyncio.wait_for(inside.wait(), 20)
            assert len(set(fences)) == 60
            assert sum(statements) == 60 and len(statements) < 30, statements
            other = asyncio.create_task(b.hold("k7").__aenter__())
            await asyncio.sleep(0.3)
            assert not other.done()  # held by host a
            go.set()
            await asyncio.gather(*tasks)
            await asyncio.wait_for(other, 10)
        finally:
            await a.close()
            await b.close()


async def test_postgres_pool_probes_a_connection_only_after_it_sat_unused() -> None:
    """The pool's check costs a round trip: skipped for a connection lent within
    the last CHECK_AFTER seconds, done (and failing for a dead one) after that."""
    import psycopg

    from onethread.session._conn import postgres as pc

    conn = await psycopg.AsyncConnection.connect(postgres_url(), autocommit=True)
    await pc._check_if_idle(conn)  # first loan: probed, fine
    await conn.close()
    await pc._check_if_idle(conn)  # lent again at once: trusted, no round trip
    conn._onethread_used -= pc.CHECK_AFTER + 1  # type: ignore[attr-defined]
    with pytest.raises(psycopg.OperationalError):
        await pc._check_if_idle(conn)  # unused for a while: probed, and found dead
