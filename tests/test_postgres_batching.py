"""PostgreSQL: the calls of concurrent turns share statements, each keeping its own meaning.

Loads, appends, duplicate-filter records, merges and lock calls made while
earlier ones are on the wire travel in one statement (``Batch``); the
statements are counted by wrapping the driver. A batch whose statement the
server refuses is run again call by call, so the error reaches only the call
that caused it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from onethread.errors import StoreError
from onethread.session.history.base import HistoryEntry
from onethread.session.history.postgres import PostgresHistoryStore
from onethread.session.locks.postgres import PostgresDuplicateFilter, PostgresTurnLocks
from services import postgres_schema, postgres_url

pytestmark = pytest.mark.service

N = 60  # concurrent calls


@pytest.fixture
def schema() -> Iterator[str]:
    with postgres_schema() as name:
        yield name


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement sent through an async connection while the test runs."""
    sent: list[str] = []
    real = psycopg.AsyncConnection.execute

    async def execute(self: psycopg.AsyncConnection[Any], query: Any, *args: Any, **kw: Any) -> Any:
        sent.append(query.as_string(self) if hasattr(query, "as_string") else str(query))
        return await real(self, query, *args, **kw)

    monkeypatch.setattr(psycopg.AsyncConnection, "execute", execute)
    return sent


@pytest.fixture
async def store(schema: str) -> AsyncIterator[PostgresHistoryStore]:
    s = PostgresHistoryStore(postgres_url(), schema=schema)
    await s.count("warm-up")  # pool and tables ready before counting
    yield s
    await s.close()


def _e(text: str, ts: float, **kw: Any) -> HistoryEntry:
    return HistoryEntry("user", text, ts, **kw)


async def test_concurrent_appends_and_loads_share_statements(
    store: PostgresHistoryStore, statements: list[str]
) -> None:
    del statements[:]
    await asyncio.gather(
        *(store.append(f"k{i}", [_e(f"a{i}", 1.0), _e(f"b{i}", 1.0)]) for i in range(N))
    )
    appends = len(statements)
    loads = await asyncio.gather(*(store.load(f"k{i}", 1 + i % 2) for i in range(N)))
    assert appends <= 4, statements  # one per call before batching: N
    assert len(statements) - appends <= 4, statements[appends:]
    for i, got in enumerate(loads):  # each call got its own key's tail, oldest first
        want = [f"a{i}", f"b{i}"] if i % 2 else [f"b{i}"]
        assert [e.content for e in got] == want
    # Same timestamp: insertion order kept within and across batches.
    assert [e.content for e in await store.load("k0")] == ["a0", "b0"]


async def test_a_refused_append_fails_alone_in_its_batch(
    store: PostgresHistoryStore, schema: str
) -> None:
    with psycopg.connect(postgres_url(), autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "ALTER TABLE {}.onethread_history "
                "ADD CONSTRAINT no_broken CHECK (content <> 'broken')"
            ).format(sql.Identifier(schema))
        )
    # The server refuses the batch, then only this append.
    results = await asyncio.gather(
        store.append("ok1", [_e("fine", 1.0)]),
        store.append("bad", [_e("also fine", 1.0), _e("broken", 2.0)]),
        store.append("ok2", [_e("fine", 1.0)]),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StoreError) and "no_broken" in str(results[1])
    assert await store.count("ok1") == 1 and await store.count("ok2") == 1
    assert await store.count("bad") == 0  # an append lands whole or not at all


async def test_timestamps_round_trip_exactly_nan_and_inf_included(
    store: PostgresHistoryStore,
) -> None:
    stamps = [1765000000.123456789, 0.1 + 0.2, 1e-300, math.inf, -math.inf]
    await store.append("t", [_e(str(i), ts) for i, ts in enumerate(stamps)])
    await store.append("nan", [_e("nan", math.nan)])
    got = {e.content: e.timestamp for e in await store.load("t", 10)}
    assert [got[str(i)] for i in range(len(stamps))] == stamps
    assert math.isnan((await store.load("nan"))[0].timestamp)


async def test_concurrent_merges_share_one_update(
    store: PostgresHistoryStore, statements: list[str]
) -> None:
    for i in range(N):
        await store.append(f"src{i}", [_e(f"m{i}", float(i)), _e(f"n{i}", float(i))])
    del statements[:]
    moved = await asyncio.gather(*(store.merge(f"src{i}", f"dst{i}") for i in range(N)))
    assert moved == [2] * N
    assert len(statements) <= 4, statements
    assert [e.content for e in await store.load("dst7")] == ["m7", "n7"]
    assert await store.count("src7") == 0
    # Keys that repeat within a batch are merged one by one, in order.
    await store.append("a", [_e("x", 1.0)])
    assert await asyncio.gather(store.merge("a", "b"), store.merge("b", "c")) == [1, 1]
    assert [e.content for e in await store.load("c")] == ["x"]


async def test_concurrent_first_time_calls_share_statements(
    schema: str, statements: list[str]
) -> None:
    dedupe = PostgresDuplicateFilter(postgres_url(), schema=schema)
    try:
        await dedupe.first_time("warm-up")
        del statements[:]
        ids = [f"m{i}" for i in range(N)]
        assert await asyncio.gather(*(dedupe.first_time(i) for i in ids)) == [True] * N
        assert len([s for s in statements if "onethread_seen" in s]) <= 4, statements
        assert await asyncio.gather(*(dedupe.first_time(i) for i in ids)) == [False] * N
        # The same id twice in one batch: exactly one call is first.
        assert sorted(await asyncio.gather(dedupe.first_time("x"), dedupe.first_time("x"))) == [
            False,
            True,
        ]
        # An id the driver refuses (NUL) fails alone; the others are answered.
        got = await asyncio.gather(
            dedupe.first_time("y1"),
            dedupe.first_time("bad\0id"),
            dedupe.first_time("y2"),
            return_exceptions=True,
        )
        assert got[0] is True and got[2] is True and isinstance(got[1], StoreError)
    finally:
        await dedupe.close()


async def test_concurrent_turn_locks_share_statements_and_stay_exclusive(
    schema: str, statements: list[str]
) -> None:
    locks = PostgresTurnLocks(postgres_url(), schema=schema)
    inside: dict[str, int] = {}
    overlap = []

    async def turn(key: str) -> int:
        async with locks.lease(key) as lease:
            inside[key] = inside.get(key, 0) + 1
            overlap.append(inside[key])
            await asyncio.sleep(0)
            inside[key] -= 1
            return lease.fence

    try:
        async with locks.hold("warm-up"):
            pass
        del statements[:]
        fences = await asyncio.gather(*(turn(f"k{i % 20}") for i in range(N)))
        assert max(overlap) == 1
        assert len(set(fences)) == N
        # Lock + unlock of N turns: far fewer statements than 2 * N.
        assert len(statements) <= N // 2, statements
    finally:
        await locks.close()
