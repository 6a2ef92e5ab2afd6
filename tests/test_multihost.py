"""Several onethread processes ("hosts") sharing Redis, a 3-master Redis Cluster,
then PostgreSQL.

Three OS processes, each a ``BotSessionManager`` on the shared history store
and turn locks, run 200 turns from 50 users at once: every turn is stored, each
turn saw exactly the turns before it, and no person's turns overlapped. A
host SIGKILLed mid-turn loses no acknowledged message and frees the person's
lock (Redis: when its lease ends; PostgreSQL: when its session closes).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from _turn_worker import RecordingAgent, shared_backends, start
from onethread.bots.manager import BotSessionManager
from services import postgres_schema, postgres_url, redis_namespace

pytestmark = [pytest.mark.service, pytest.mark.multiprocess]

WORKERS, USERS, TURNS = 3, 50, 4


@dataclass
class Shared:
    kind: str
    url: str
    namespace: str


@pytest.fixture(params=["redis", "redis-cluster", "postgres"])
def shared(request: pytest.FixtureRequest) -> Iterator[Shared]:
    with ExitStack() as stack:
        if request.param in ("redis", "redis-cluster"):  # the URL tells the two apart
            url, prefix = redis_namespace(request.param)
            yield Shared("redis", url, stack.enter_context(prefix))
        else:
            yield Shared("postgres", postgres_url(), stack.enter_context(postgres_schema()))


def _finish(procs: list[Any]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_200_concurrent_turns_from_50_users_on_3_hosts(
    shared: Shared, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    procs = [
        start("turns", shared.kind, shared.url, shared.namespace, w, WORKERS, USERS, TURNS, go)
        for w in range(WORKERS)
    ]
    try:
        for proc in procs:
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line.strip() == "ready", proc.stderr.read()
        go.touch()
        results = []
        for proc in procs:
            out, err = await asyncio.to_thread(proc.communicate, timeout=60)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        _finish(procs)

    turns = [t for r in results for t in r["turns"]]
    assert len(turns) == USERS * TURNS
    assert sum(len(r["replies"]) for r in results) == USERS * TURNS
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in turns:
        by_user[t["user"]].append(t)

    store, locks = shared_backends(shared.kind, shared.url, shared.namespace)
    try:
        for user, mine in by_user.items():
            mine.sort(key=lambda t: t["enter"])
            for earlier, later in zip(mine, mine[1:], strict=False):
                assert later["enter"] >= earlier["exit"], f"{user}'s turns overlapped"
            stored = [e.content for e in await store.load(f"bot_telegram_{user}")]
            expected = [x for t in mine for x in (t["prompt"], f"reply:{t['prompt']}")]
            assert stored == expected, f"{user}: lost or interleaved turns"
            for i, t in enumerate(mine):
                assert t["seen"] == expected[: 2 * i], f"{user}: a turn missed earlier turns"
        assert len(await store.sessions(limit=1000)) == USERS
    finally:
        await store.close()
        await locks.close()


async def test_a_host_killed_mid_turn_loses_no_acknowledged_message(
    shared: Shared,
) -> None:
    lease = 1.0
    proc = start("hang", shared.kind, shared.url, shared.namespace, "u7", lease)
    try:
        assert await asyncio.to_thread(proc.stdout.readline) == "ack\n", proc.stderr.read()
        assert await asyncio.to_thread(proc.stdout.readline) == "in-turn\n"
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.to_thread(proc.wait)
    finally:
        _finish([proc])

    store, locks = shared_backends(shared.kind, shared.url, shared.namespace, lease)
    manager = BotSessionManager(store=store, locks=locks)
    try:
        async with asyncio.timeout(lease + 3):
            reply = await manager.chat(
                RecordingAgent(), "u7", "after", platform="telegram", chat_id="u7"
            )
        waited = time.monotonic() - killed
        assert reply == "reply:after"
        assert waited < lease + 1.0  # the dead host's lock was freed when its lease ended
        stored = [e.content for e in await store.load("bot_telegram_u7")]
        # The acknowledged turn is kept whole; the unfinished one left nothing behind.
        assert stored == ["before", "reply:before", "after", "reply:after"]
    finally:
        await manager.close()
        await locks.close()
