from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

from helpers import RecordingAgent
from onethread.bots import BotSessionManager, amirror_to_session, mirror_to_session
from onethread.session import InMemoryIdentityResolver
from onethread.session.history.base import HistoryEntry
from onethread.session.history.memory import MemoryHistoryStore


class SlowStore(MemoryHistoryStore):
    """A store whose writes take a while (a remote database under load)."""

    async def append(self, key: str, entries: Sequence[HistoryEntry]) -> None:
        await asyncio.sleep(0.3)
        await super().append(key, entries)


def test_from_a_plain_thread_with_no_loop() -> None:
    mgr = BotSessionManager(store="memory://")
    assert mirror_to_session(mgr, "alice", "Reminder: standup", source_label="cron") is True
    entries = asyncio.run(mgr.store.load("user:alice"))
    assert entries[0].mirror and entries[0].source == "cron"
    assert entries[0].role == "assistant" and entries[0].content == "Reminder: standup"


async def test_inside_the_loop_does_not_block() -> None:
    mgr = BotSessionManager(store=SlowStore())
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.create_task(ticker())
    start = time.perf_counter()
    assert mirror_to_session(mgr, "alice", "sent by cron", source_label="cron") is True
    assert time.perf_counter() - start < 0.1
    await asyncio.sleep(0.5)
    t.cancel()
    assert ticks > 20  # the loop kept running while the write happened
    assert [e.content for e in await mgr.store.load("user:alice")] == ["sent by cron"]


async def test_from_a_worker_thread_while_the_loop_runs() -> None:
    mgr = BotSessionManager(store="memory://")
    mgr.bind_loop()
    results = await asyncio.gather(
        *(asyncio.to_thread(mirror_to_session, mgr, "alice", f"m{i}", "cron") for i in range(20))
    )
    assert all(results)
    assert await mgr.store.count("user:alice") == 20


async def test_serialised_with_a_live_turn() -> None:
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "1", "alice")
    mgr = BotSessionManager(store="memory://", identity_resolver=resolver)
    agent = RecordingAgent(delay=0.2)
    turn = asyncio.create_task(mgr.chat(agent, "1", "hello", platform="telegram"))
    while not agent.calls:  # the agent is answering: the turn holds the lock
        await asyncio.sleep(0.001)
    assert await amirror_to_session(mgr, "alice", "reminder", source_label="cron")
    await turn
    contents = [e.content for e in await mgr.store.load("user:alice")]
    assert contents == ["hello", "reply:hello", "reminder"]
    await mgr.chat(agent, "1", "next", platform="telegram")
    seen = agent.calls[-1][0]
    assert seen[-1].mirror and seen[-1].source == "cron"


async def test_unlinked_account_form_goes_to_its_legacy_session() -> None:
    mgr = BotSessionManager(store="memory://")
    assert await amirror_to_session(mgr, "telegram:42", "hi there", metadata={"job": 7})
    [entry] = await mgr.store.load("bot_telegram_42")
    assert entry.metadata == {"job": 7} and entry.source == "delivery"


async def test_never_raises() -> None:
    assert mirror_to_session(object(), "alice", "x") is False  # type: ignore[arg-type]
    assert await amirror_to_session(object(), "alice", "x") is False  # type: ignore[arg-type]
    mgr = BotSessionManager(store="memory://")
    await mgr.store.close()
    assert await amirror_to_session(mgr, "alice", "x") is False
    assert await amirror_to_session(mgr, "alice", "") is False


def test_never_raises_from_thread_on_closed_store() -> None:
    mgr = BotSessionManager(store="memory://")
    asyncio.run(mgr.store.close())
    assert mirror_to_session(mgr, "alice", "x") is False


async def test_with_a_threading_lock() -> None:
    mgr = BotSessionManager(store="memory://")
    lock = threading.RLock()
    held_elsewhere = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with lock:
            held_elsewhere.set()
            release.wait(5)

    th = threading.Thread(target=holder)
    th.start()
    held_elsewhere.wait(5)
    start = time.perf_counter()
    assert mirror_to_session(mgr, "alice", "locked write", lock=lock) is True
    assert time.perf_counter() - start < 0.1  # the loop did not wait for the lock
    await asyncio.sleep(0.1)
    assert await mgr.store.count("user:alice") == 0  # still waiting for the lock
    release.set()
    th.join()
    for _ in range(100):
        if await mgr.store.count("user:alice"):
            break
        await asyncio.sleep(0.01)
    assert await mgr.store.count("user:alice") == 1


async def test_platform_id_of_a_linked_account_lands_with_the_person() -> None:
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "1", "alice")
    mgr = BotSessionManager(store="memory://", identity_resolver=resolver)
    assert await amirror_to_session(mgr, "telegram:1", "sent on telegram", source_label="cron")
    assert [e.content for e in await mgr.store.load("user:alice")] == ["sent on telegram"]


async def test_close_waits_for_in_loop_mirrors() -> None:
    mgr = BotSessionManager(store=SlowStore())
    assert mirror_to_session(mgr, "alice", "just before stop")
    await mgr.close()  # waits for the pending write, then closes
    assert mgr.pending_mirrors == set()
