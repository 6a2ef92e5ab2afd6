"""``Batched``: concurrent Redis calls share pipelines, each keeps its own reply and error."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from onethread.session._conn.redis import Batched, LuaScript, async_client, redis
from services import redis_namespace, redis_prefix, redis_url

pytestmark = pytest.mark.service


class Counting(Batched):
    """Counts the pipelines sent."""

    pipelines = 0

    async def _flush(self, batch: list[Any]) -> None:
        self.pipelines += 1
        await super()._flush(batch)


async def test_concurrent_calls_share_pipelines_and_keep_their_own_replies() -> None:
    with redis_prefix() as p:
        b = Counting(async_client(redis_url(), {"decode_responses": True}))
        try:
            replies = await asyncio.gather(
                *(b.call("INCRBY", f"{p}n{i % 7}", i) for i in range(200))
            )
            totals = {i: sum(j for j in range(200) if j % 7 == i) for i in range(7)}
            last = {i % 7: r for i, r in enumerate(replies)}  # the last INCRBY of each key
            assert last == totals
            assert 1 <= b.pipelines <= 10  # 200 calls, a handful of round trips
            assert await b.call("SET", f"{p}x", 1, "NX", "PX", 10_000) is True
            assert await b.call("SET", f"{p}x", 1, "NX", "PX", 10_000) is None
        finally:
            await b.aclose()


async def test_an_error_reaches_only_its_caller() -> None:
    with redis_prefix() as p:
        b = Batched(async_client(redis_url(), {"decode_responses": True}))
        try:
            await b.call("SET", f"{p}s", "text")
            good, bad, script = await asyncio.gather(
                b.call("GET", f"{p}s"),
                b.call("INCR", f"{p}s"),  # not an integer
                LuaScript(f"return '{p}fresh'").call(b, [], []),  # NOSCRIPT, then EVAL
                return_exceptions=True,
            )
            assert good == "text"
            assert isinstance(bad, redis.exceptions.ResponseError)
            assert script == f"{p}fresh"
        finally:
            await b.aclose()


async def test_a_dead_server_fails_every_caller_of_the_pipeline() -> None:
    b = Batched(async_client("redis://127.0.0.1:1/0", {"socket_connect_timeout": 1}))
    try:
        results = await asyncio.gather(
            *(b.call("GET", "k") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, redis.exceptions.ConnectionError) for r in results)
    finally:
        await b.aclose()


async def test_loads_decode_each_stored_entry_once_and_stay_bounded() -> None:
    from onethread.session.history.base import HistoryEntry
    from onethread.session.history.redis import RedisHistoryStore, _Decoded

    with redis_prefix() as p:
        store = RedisHistoryStore(redis_url(), prefix=p)
        other = RedisHistoryStore(redis_url(), prefix=p)  # another host
        try:
            first = [HistoryEntry("user", "a", 1.0, "telegram", metadata={"x": [1]})]
            await store.append("k", first)
            one = await store.load("k")
            await other.append("k", [HistoryEntry("assistant", "b", 2.0)])
            two = await store.load("k")
            assert two[0] is one[0]  # decoded once
            assert [e.content for e in two] == ["a", "b"]  # the other host's entry is seen
            assert two[0] == first[0]
        finally:
            await store.close()
            await other.close()
    decoded = _Decoded(limit=2)
    members = [
        f"{i:016d}|" + json.dumps({"role": "user", "content": str(i), "timestamp": i})
        for i in range(3)
    ]
    assert [e.content for e in decoded.decode(members)] == ["0", "1", "2"]
    assert len(decoded._entries) == 2


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_a_sent_script_goes_out_even_if_its_caller_is_cancelled(kind: str) -> None:
    """``LuaScript.send`` queues at once (EVALSHA, then EVAL if the server lacks the
    script): a lock release in a ``finally`` happens even when its task is cancelled."""
    url, prefix = redis_namespace(kind)
    with prefix as p:
        b = Batched(async_client(url, {"decode_responses": True}))
        script = LuaScript(f"-- {p}\nreturn redis.call('SET', KEYS[1], ARGV[1])")
        try:

            async def release() -> None:
                await asyncio.shield(script.send(b, [f"{p}k"], ["done"]))

            task = asyncio.create_task(release())
            await asyncio.sleep(0)  # queued; cancel before the pipeline is sent
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with asyncio.timeout(5):
                while await b.call("GET", f"{p}k") != "done":
                    await asyncio.sleep(0.01)
        finally:
            await b.aclose()
