"""A separate onethread "host" process running turns on a shared store and shared locks.

Usage::

    python _turn_worker.py turns KIND URL NAMESPACE WORKER WORKERS USERS TURNS GO_FILE
    python _turn_worker.py hang  KIND URL NAMESPACE USER LEASE

``turns``: a ``BotSessionManager`` on the shared history store and turn locks
runs, all at once after the GO_FILE barrier, this worker's share of TURNS
turns for each of USERS users (turn ``j`` of user ``u`` runs on worker
``(u + j) % WORKERS``). The deterministic agent records, per turn, how much
history it was given and when it ran; the worker prints them as one JSON line.

``hang``: completes one turn ("before"), prints ``ack``, then starts a second
turn whose agent prints ``in-turn`` and never returns (the test SIGKILLs it).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onethread.bots.manager import BotSessionManager
from onethread.session.history.base import HistoryEntry


def shared_backends(kind: str, url: str, namespace: str, lease: float = 30.0) -> tuple[Any, Any]:
    """The shared history store and turn locks of ``kind`` in ``namespace``."""
    if kind == "redis":
        from onethread.session.history.redis import RedisHistoryStore
        from onethread.session.locks.redis import RedisTurnLocks

        return RedisHistoryStore(url, prefix=namespace), RedisTurnLocks(
            url, lease, prefix=namespace
        )
    from onethread.session.history.postgres import PostgresHistoryStore
    from onethread.session.locks.postgres import PostgresTurnLocks

    return PostgresHistoryStore(url, schema=namespace), PostgresTurnLocks(url, schema=namespace)


def start(*args: object) -> subprocess.Popen[str]:
    """Start a worker with ``args``; stdout is a text pipe."""
    return subprocess.Popen(
        [sys.executable, __file__, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class RecordingAgent:
    """Answers ``reply:<text>`` after a short random pause; records what each turn saw."""

    def __init__(self, hang_on: str = "") -> None:
        self.hang_on = hang_on
        self.turns: list[dict[str, Any]] = []

    async def respond(
        self, history: Sequence[HistoryEntry], message: HistoryEntry, *, group: bool = False
    ) -> str:
        enter = time.monotonic_ns()
        if message.content == self.hang_on:
            print("in-turn", flush=True)
            await asyncio.sleep(3600)
        await asyncio.sleep(random.uniform(0, 0.004))
        self.turns.append(
            {
                "user": message.user_id,
                "prompt": message.content,
                "seen": [h.content for h in history],
                "enter": enter,
                "exit": time.monotonic_ns(),
            }
        )
        return f"reply:{message.content}"


async def _turns(
    kind: str, url: str, ns: str, worker: int, workers: int, users: int, turns: int, go: Path
) -> None:
    store, locks = shared_backends(kind, url, ns)
    manager = BotSessionManager(store=store, locks=locks)
    agent = RecordingAgent()
    await store.count("warm-up")  # connect and create the schema before the barrier
    async with locks.hold("warm-up"):
        pass
    print("ready", flush=True)
    while not go.exists():
        await asyncio.sleep(0.005)
    mine = [(u, j) for u in range(users) for j in range(turns) if (u + j) % workers == worker]

    async def one(u: int, j: int) -> str:
        prompt = f"u{u}-t{j}-w{worker}"
        return await manager.chat(agent, f"u{u}", prompt, platform="telegram", chat_id=f"u{u}")

    replies = await asyncio.gather(*(one(u, j) for u, j in mine))
    await manager.close()
    await locks.close()
    print(json.dumps({"replies": replies, "turns": agent.turns}), flush=True)


async def _hang(kind: str, url: str, ns: str, user: str, lease: float) -> None:
    store, locks = shared_backends(kind, url, ns, lease)
    manager = BotSessionManager(store=store, locks=locks)
    agent = RecordingAgent(hang_on="never answered")
    await manager.chat(agent, user, "before", platform="telegram", chat_id=user)
    print("ack", flush=True)
    await manager.chat(agent, user, "never answered", platform="telegram", chat_id=user)


def main(argv: list[str]) -> None:
    mode, kind, url, ns, *rest = argv
    if mode == "turns":
        worker, workers, users, turns = map(int, rest[:4])
        asyncio.run(_turns(kind, url, ns, worker, workers, users, turns, Path(rest[4])))
    elif mode == "hang":
        asyncio.run(_hang(kind, url, ns, rest[0], float(rest[1])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
