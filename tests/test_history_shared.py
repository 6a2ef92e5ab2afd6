"""The shared (Redis, PostgreSQL) history stores beyond the common contract.

Persistence across instances, schema versions, errors, concurrent first use,
and use from a second event loop (``mirror_to_session`` from a plain thread).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from onethread.errors import SchemaVersionError, StoreError
from onethread.session.history.base import HistoryEntry, HistoryStore
from onethread.session.history.postgres import PostgresHistoryStore
from onethread.session.history.redis import RedisHistoryStore
from services import postgres_schema, postgres_url, raw_redis, redis_namespace

pytestmark = pytest.mark.service


@dataclass
class Shared:
    name: str
    open: Callable[[], HistoryStore]  # a new store on the same data
    set_version: Callable[[int], None]  # pretend a newer onethread wrote the store


def _redis(stack: ExitStack, kind: str = "redis") -> Shared:
    url, prefix_cm = redis_namespace(kind)
    prefix = stack.enter_context(prefix_cm)

    def set_version(v: int) -> None:
        with raw_redis(url) as raw:
            raw.set(f"{prefix}history:layout", f"cluster:{v}" if kind == "redis-cluster" else v)

    return Shared("redis", lambda: RedisHistoryStore(url, prefix=prefix), set_version)


def _postgres(stack: ExitStack) -> Shared:
    url, schema = postgres_url(), stack.enter_context(postgres_schema())

    def set_version(v: int) -> None:
        with psycopg.connect(url, autocommit=True) as raw:
            raw.execute(
                sql.SQL("UPDATE {}.onethread_schema_version SET version = %s").format(
                    sql.Identifier(schema)
                ),
                (v,),
            )

    return Shared("postgres", lambda: PostgresHistoryStore(url, schema=schema), set_version)


@pytest.fixture(params=["redis", "redis-cluster", "postgres"])
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Shared]:
    with ExitStack() as stack:
        if request.param == "postgres":
            yield _postgres(stack)
        else:
            yield _redis(stack, request.param)


def e(content: str, ts: float, **kw: Any) -> HistoryEntry:
    return HistoryEntry(role="user", content=content, timestamp=ts, **kw)


async def test_a_second_instance_sees_everything(shared: Shared) -> None:
    first = shared.open()
    meta = {"n": [1, 2.5, None], "ok": True, "nested": {"é": "✓"}}
    full = e("héllo ✓", 1.5, platform="slack", chat_id="C1", user_id="U1", user_name="Zoë",
             message_id="m", mirror=True, source="cron", metadata=meta)  # fmt: skip
    await first.append("user:alice", [full, e("same ts, later", 1.5)])
    await first.close()
    second = shared.open()
    try:
        got = await second.load("user:alice")
        assert got == [full, e("same ts, later", 1.5)]
        assert [s.key for s in await second.sessions()] == ["user:alice"]
    finally:
        await second.close()


async def test_equal_timestamps_keep_insertion_order_across_appends(shared: Shared) -> None:
    store = shared.open()
    try:
        for i in range(30):
            await store.append("k", [e(f"{i}", 7.0)])
        await store.append("k", [e("early", 1.0)])
        got = [x.content for x in await store.load("k")]
        assert got == ["early"] + [str(i) for i in range(30)]
        assert [x.content for x in await store.load("k", 2)] == ["28", "29"]
    finally:
        await store.close()


async def test_sessions_follow_merge_and_clear(shared: Shared) -> None:
    store = shared.open()
    try:
        await store.append("bot_telegram_1", [e("a", 10, platform="telegram")])
        await store.append("user:alice", [e("b", 5, platform="discord")])
        await store.append("other", [e("c", 7)])
        assert await store.merge("bot_telegram_1", "user:alice") == 1
        summary = await store.sessions()
        assert [(s.key, s.count, s.last_timestamp) for s in summary] == [
            ("user:alice", 2, 10.0),
            ("other", 1, 7.0),
        ]
        assert summary[0].platforms == ("discord", "telegram")
        assert await store.clear("user:alice") == 2
        assert [s.key for s in await store.sessions()] == ["other"]
        assert await store.sessions(0) == []
    finally:
        await store.close()


async def test_newer_schema_is_refused(shared: Shared) -> None:
    store = shared.open()
    await store.count("k")  # creates the store
    await store.close()
    shared.set_version(99)
    store = shared.open()
    with pytest.raises(SchemaVersionError, match="99"):
        await store.load("k")
    await store.close()


async def test_many_stores_starting_at_once_on_a_fresh_store(shared: Shared) -> None:
    stores = [shared.open() for _ in range(5)]
    try:
        await asyncio.gather(*(s.append("k", [e(str(i), i)]) for i, s in enumerate(stores)))
        assert await stores[0].count("k") == 5
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_usable_from_another_loop_in_a_plain_thread(shared: Shared) -> None:
    store = shared.open()
    await store.append("k", [e("from the home loop", 1)])
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            asyncio.run(store.append("k", [e("from a private loop", 2)]))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    await asyncio.to_thread(thread.join)
    assert errors == []
    assert [x.content for x in await store.load("k")] == [
        "from the home loop",
        "from a private loop",
    ]
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.load("k")


@pytest.mark.parametrize(
    "open_store",
    [
        lambda: RedisHistoryStore("redis://:s3cret@127.0.0.1:1/0"),
        lambda: PostgresHistoryStore("postgresql://postgres:s3cret@127.0.0.1:1/test", timeout=2),
    ],
    ids=["redis", "postgres"],
)
async def test_unreachable_server_is_a_store_error_without_the_password(
    open_store: Callable[[], HistoryStore],
) -> None:
    store = open_store()
    with pytest.raises(StoreError) as info:
        await store.load("k")
    assert "s3cret" not in str(info.value)
    await store.close()


async def test_awkward_strings(shared: Shared) -> None:
    store = shared.open()
    try:
        odd = e(
            "tab\tnewline\nquote\"'backslash\\ emoji 🙂 rtl \u202e", 1.0, metadata={"z": 1, "a": 2}
        )
        await store.append("user:ünïcode", [odd])
        (got,) = await store.load("user:ünïcode")
        assert got == odd and list(got.metadata) == ["z", "a"]
        await store.append("k", [e("nul\x00inside", 2.0, metadata={"m": "nul\x00too"})])
        (nul,) = await store.load("k")
        assert nul.metadata == {"m": "nul\x00too"}  # JSON escapes it everywhere
        expected = "nul\x00inside" if shared.name == "redis" else "nul\ufffdinside"
        assert nul.content == expected  # PostgreSQL text cannot hold NUL (documented)
    finally:
        await store.close()
