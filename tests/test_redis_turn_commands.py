"""How many commands one turn sends to Redis (issue 13): every command costs the
client a reply to parse, so a turn's count is pinned here and cannot grow
silently. Counted in the client (every ``Batched`` call and every direct
command), so other users of the shared test server do not disturb it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio

from helpers import RecordingAgent
from onethread.bots.manager import BotSessionManager
from onethread.session._conn.redis import Batched
from onethread.session.history.base import HistoryEntry
from onethread.session.history.redis import RedisHistoryStore
from onethread.session.keys import summary_key
from onethread.session.locks.redis import RedisTurnLocks
from services import redis_namespace

pytestmark = pytest.mark.service


@pytest.fixture(params=["redis", "redis-cluster"])
def shared(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    url, prefix = redis_namespace(request.param)
    with prefix as p:
        yield url, p


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every command the Redis clients send (scripts by ``EVALSHA``)."""
    names: list[str] = []
    batched_call = Batched.call

    def call(self: Batched, *args: Any) -> Any:
        names.append(str(args[0]).upper())
        return batched_call(self, *args)

    monkeypatch.setattr(Batched, "call", call)
    for cls in (redis.asyncio.Redis, redis.asyncio.RedisCluster):
        direct = cls.execute_command

        async def execute(self: Any, *args: Any, _direct: Any = direct, **kw: Any) -> Any:
            names.append(str(args[0]).upper())
            return await _direct(self, *args, **kw)

        monkeypatch.setattr(cls, "execute_command", execute)
    return names


async def test_a_turn_sends_four_commands_and_the_cluster_index_update(
    shared: tuple[str, str], sent: list[str]
) -> None:
    url, prefix = shared
    store, locks = RedisHistoryStore(url, prefix=prefix), RedisTurnLocks(url, prefix=prefix)
    manager = BotSessionManager(store=store, locks=locks)
    agent = RecordingAgent()
    try:
        # A summary and history, as a long-running conversation has.
        await manager.chat(agent, "u1", "first", platform="telegram", chat_id="u1")
        key = "bot_telegram_u1"
        await store.append(summary_key(key), [HistoryEntry("summary", "earlier: hi", 0.5)])
        await manager.chat(agent, "u1", "warm", platform="telegram", chat_id="u1")
        del sent[:]
        reply = await manager.chat(agent, "u1", "counted", platform="telegram", chat_id="u1")
        assert reply == "reply:counted"
        # Lock acquire, summary + first history page (one script), append, release;
        # a cluster updates the session index (another slot) alongside the append.
        index = ["ZADD"] if "cluster" in url else []
        assert sent == ["EVALSHA", "EVALSHA", *index, "EVALSHA", "EVALSHA"], sent
        shown = [e.content for e in agent.calls[-1][0]]
        assert shown == ["earlier: hi", "first", "reply:first", "warm", "reply:warm"]
    finally:
        await manager.close()
        await locks.close()
        await store.close()


async def test_load_many_answers_as_loads_one_by_one(shared: tuple[str, str]) -> None:
    url, prefix = shared
    store = RedisHistoryStore(url, prefix=prefix)
    try:
        entries = [HistoryEntry("user", f"m{i}", float(i)) for i in range(5)]
        await store.append("user:a", entries)
        await store.append("user:a#summary", entries[:2])
        await store.append("user:b", entries[:1])
        requests: list[tuple[str, int | None]] = [
            ("user:a#summary", 1),
            ("user:a", 3),
            ("user:a", None),
            ("user:a", 0),
            ("user:empty", 4),
            ("user:b", 2),  # another conversation (another slot on a cluster)
        ]
        expected = [await store.load(k, n) for k, n in requests]
        assert await store.load_many(requests) == expected
        assert await store.load_many(requests[:2]) == expected[:2]
        assert await store.load_many([("user:a", 0)]) == [[]]
        assert await store.load_many([]) == []
    finally:
        await store.close()
