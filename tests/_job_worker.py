"""One onethread host for test_jobs_multihost: a BotOS on Telegram whose scheduler
shares the job store with the other hosts.

    python _job_worker.py KIND URL NAMESPACE ROLE CONCURRENCY

KIND is ``redis`` or ``postgres``; NAMESPACE the key prefix or schema. The
Telegram endpoint and token come from the environment (each host its own
fake server). ROLE ``victim``: every send hangs, after printing ``stuck`` (the
test SIGKILLs the process while it holds claims); ROLE ``host``: normal.
Prints ``ready`` once connected; runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from onethread.bots import BotOS
from onethread.bots.bot import run_until_signal


def stores(kind: str, url: str, namespace: str) -> tuple[Any, Any]:
    """The shared history store and job store of ``kind`` in ``namespace``."""
    if kind == "redis":
        from onethread.session.history.redis import RedisHistoryStore
        from onethread.session.jobs.redis import RedisJobStore

        return RedisHistoryStore(url, prefix=namespace), RedisJobStore(url, prefix=namespace)
    from onethread.session.history.postgres import PostgresHistoryStore
    from onethread.session.jobs.postgres import PostgresJobStore

    return PostgresHistoryStore(url, schema=namespace), PostgresJobStore(url, schema=namespace)


async def main(kind: str, url: str, namespace: str, role: str, concurrency: int) -> None:
    history, jobs = stores(kind, url, namespace)
    botos = BotOS(
        platforms=["telegram"],
        store=history,
        jobs=jobs,
        scheduler={"lease": 2.0, "concurrency": concurrency, "retry_delays": (0.5,) * 5},
        gc_freeze=False,
    )
    if role == "victim":
        bot = botos.bots["telegram"]

        async def hang(chat_id: str, text: str, thread_id: str | None = None) -> list[str]:
            print(f"stuck {text}", flush=True)
            await asyncio.sleep(3600)
            return []

        bot.send = hang  # type: ignore[method-assign]

    async def announce() -> None:
        await botos.wait_ready(60)
        print("ready", flush=True)

    waiter = asyncio.create_task(announce())
    try:
        await run_until_signal(botos.start, botos.stop)
    finally:
        waiter.cancel()
        await jobs.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    kind, url, namespace, role, concurrency = sys.argv[1:6]
    asyncio.run(main(kind, url, namespace, role, int(concurrency)))
