"""Run by test_history_processes: one process appending turns to a shared SQLite file."""

from __future__ import annotations

import asyncio
import sys

from onethread.bots import BotSessionManager
from onethread.session.history.base import HistoryEntry


class Echo:
    async def respond(self, history: object, message: HistoryEntry, *, group: bool = False) -> str:
        return f"re:{message.content}"


async def main(url: str, worker: int, users: int, turns: int) -> None:
    mgr = BotSessionManager(store=url)
    agent = Echo()

    async def user(u: int) -> None:
        for t in range(turns):
            await mgr.chat(agent, f"u{u}", f"w{worker}-u{u}-t{t}", platform="web")

    await asyncio.gather(*(user(u) for u in range(users)))
    await mgr.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
