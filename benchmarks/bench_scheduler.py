"""Scheduled jobs: memory and idle CPU with 100,000 waiting jobs; lateness of a burst.

For each store (SQLite file, Redis; PostgreSQL with ``--stores postgres``):

1. ``jobs`` (default 100,000) one-off jobs due in 30 days are written to the
   job store (in bulk, straight into the store's layout: one transaction /
   pipeline, so loading does not dominate the run). Reported: the store's size
   (SQLite file bytes; Redis ``used_memory`` growth) and this process's RSS
   growth, which should not depend on the number of jobs: they stay in the
   store.
2. A BotOS (one in-process platform) starts on that store and its scheduler
   sits idle for ``--idle`` seconds (default 60). Reported: CPU seconds this
   process used meanwhile, as a percentage of one core (goal: under 1 %).
3. ``--burst`` people (default 1,000) who talked on the platform get one job
   each, all due in the same second. Lateness = the moment the platform got
   the message minus the job's due time; p50/p99/max over the burst (goal:
   p99 under 1 s). The 100,000 waiting jobs stay in the store throughout.

    python benchmarks/bench_scheduler.py [--jobs 100000] [--idle 60] [--burst 1000]
                                         [--stores sqlite,redis]

Redis and PostgreSQL at 127.0.0.1 (the test services); each run uses a
fresh key prefix / schema and deletes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import rss_bytes, summary, write

from onethread._fake_adapter import FakeAdapter
from onethread.bots import BotOS
from onethread.bots.bot import Bot
from onethread.session.history.base import HistoryEntry
from onethread.session.jobs.when import make_job

REDIS = "redis://127.0.0.1:6379/0"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


class Clocked(FakeAdapter):
    """A FakeAdapter that notes when each message arrived (wall clock)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.arrived: dict[str, float] = {}

    async def do_send(self, chat_id: str, text: str, *, thread_id: str = "",
                      formatted: bool = True) -> str:  # fmt: skip
        self.arrived[text] = time.time()
        return await super().do_send(chat_id, text, thread_id=thread_id, formatted=formatted)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bulk_load(kind: str, store: Any, jobs: list[Any]) -> None:
    """Write ``jobs`` into ``store``'s own layout in one go (see the module doc)."""
    if kind == "sqlite":

        def insert(conn: Any) -> None:
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO jobs (id, unified_user_id, status, due, body, created_at) "
                "VALUES (?, ?, 'active', ?, ?, ?)",
                [(j.id, j.unified_user_id, j.due, j.to_json(), j.created_at) for j in jobs[1:]],
            )
            conn.execute("COMMIT")

        await store.add(jobs[0])  # creates the file and schema on the first chunk
        await store._run(insert, None, True)
        return
    if kind == "redis":
        await store.add(jobs[0])
        async with store._clients.borrow() as client:
            for start in range(1, len(jobs), 5000):
                pipe = client.pipeline(transaction=False)
                for j in jobs[start : start + 5000]:
                    pipe.hset(
                        store._key(j.id),
                        mapping={
                            "body": j.to_json(),
                            "user": j.unified_user_id,
                            "status": "active",
                            "token": 0,
                            "owner": "",
                        },
                    )
                    pipe.sadd(f"{store.prefix}jobs:ids", j.id)
                    pipe.sadd(f"{store.prefix}jobs:user:{j.unified_user_id}", j.id)
                    pipe.zadd(store._due, {j.id: j.due})
                await pipe.execute()
        return
    for j in jobs:  # postgres: plain adds (slower to load, same layout)
        await store.add(j)


async def redis_memory() -> int:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(REDIS)
    try:
        return int((await client.info("memory"))["used_memory"])
    finally:
        await client.aclose()


async def run_store(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from onethread.session.history.memory import MemoryHistoryStore

    ns = f"bench_{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        from onethread.session.history.sqlite import SQLiteHistoryStore
        from onethread.session.jobs.sqlite import SQLiteJobStore

        history: Any = SQLiteHistoryStore(tmp / f"{ns}.db")
        store: Any = SQLiteJobStore(tmp / f"{ns}.jobs.db")
    elif kind == "redis":
        from onethread.session.history.redis import RedisHistoryStore
        from onethread.session.jobs.redis import RedisJobStore

        history = RedisHistoryStore(REDIS, prefix=f"{ns}:")
        store = RedisJobStore(REDIS, prefix=f"{ns}:")
    else:
        from onethread.session.history.postgres import PostgresHistoryStore
        from onethread.session.jobs.postgres import PostgresJobStore

        history = PostgresHistoryStore(POSTGRES, schema=ns)
        store = PostgresJobStore(POSTGRES, schema=ns)
    if args.memory_history:
        history = MemoryHistoryStore()
    result: dict[str, Any] = {"store": kind, "jobs": args.jobs}
    try:
        now = time.time()
        far = datetime.fromtimestamp(now, UTC) + timedelta(days=30)
        gc.collect()
        rss0 = rss_bytes()
        mem0 = await redis_memory() if kind == "redis" else 0
        t0 = time.perf_counter()
        for start in range(0, args.jobs, 5000):
            chunk = range(start, min(start + 5000, args.jobs))
            await bulk_load(kind, store, [make_job(f"p{i}", f"later {i}", at=far, now=now)
                                          for i in chunk])  # fmt: skip
        result["load_s"] = round(time.perf_counter() - t0, 2)
        gc.collect()
        if kind == "sqlite":
            result["store_bytes"] = sum(p.stat().st_size for p in tmp.glob(f"{ns}.jobs.db*"))
        elif kind == "redis":
            result["store_bytes"] = await redis_memory() - mem0
        tg = Clocked("telegram")
        options = {} if args.concurrency is None else {"concurrency": args.concurrency}
        botos = BotOS(bots=[Bot("telegram", adapter=tg)], store=history, jobs=store,
                      gc_freeze=False, scheduler=options)  # fmt: skip
        task = asyncio.create_task(botos.start())
        await botos.wait_ready()
        await asyncio.sleep(1.0)  # the scheduler's first look at the store
        gc.collect()
        result["rss_growth_mb"] = round((rss_bytes() - rss0) / 2**20, 1)

        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        await asyncio.sleep(args.idle)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        result["idle_window_s"] = round(wall, 1)
        result["idle_cpu_percent"] = round(100 * cpu / wall, 3)

        for i in range(args.burst):  # each person last talked on the platform
            entry = HistoryEntry(role="user", content="hi", timestamp=time.time(),
                                 platform="telegram", chat_id=f"c{i}", user_id=f"b{i}")  # fmt: skip
            await history.append(f"user:b{i}", [entry])
        due = float(int(time.time()) + args.lead)
        at = datetime.fromtimestamp(due, UTC)
        for i in range(args.burst):
            await botos.schedule(f"b{i}", f"burst {i}", at=at)
        result["scheduled_before_due_s"] = round(due - time.time(), 2)
        if result["scheduled_before_due_s"] <= 0:
            raise SystemExit("scheduling the burst took longer than --lead; raise it")
        await asyncio.sleep(max(0.0, due - time.time() - 0.2))
        cpu0 = cpu_seconds()
        async with asyncio.timeout(120):
            while len(tg.arrived) < args.burst:
                await asyncio.sleep(0.05)
        result["burst_cpu_ms_per_job"] = round(1000 * (cpu_seconds() - cpu0) / args.burst, 3)
        late = [tg.arrived[f"burst {i}"] - due for i in range(args.burst)]
        result["burst"] = args.burst
        result["lateness"] = summary(late)
        await botos.stop()
        await task
    finally:
        await cleanup(kind, ns)
    return result


async def cleanup(kind: str, ns: str) -> None:
    if kind == "redis":
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(REDIS)
        try:
            keys = [k async for k in client.scan_iter(match=f"{ns}:*", count=10000)]
            for start in range(0, len(keys), 10000):
                await client.delete(*keys[start : start + 10000])
        finally:
            await client.aclose()
    elif kind == "postgres":
        import psycopg

        async with await psycopg.AsyncConnection.connect(POSTGRES, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{ns}" CASCADE')


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--idle", type=float, default=60.0, help="idle window, seconds")
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--concurrency", type=int, help="deliveries at once (Scheduler's)")
    parser.add_argument("--lead", type=int, default=10, help="burst due this many s ahead")
    parser.add_argument("--memory-history", action="store_true",
                        help="keep the history in memory (time the job store alone)")  # fmt: skip
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            r = await run_store(kind, args, Path(tmp))
            results.append(r)
            lat = r["lateness"]
            print(
                f"{kind:>8}: {r['jobs']:,} jobs: store {r.get('store_bytes', 0) / 2**20:.1f} MB, "
                f"RSS +{r['rss_growth_mb']} MB, idle CPU {r['idle_cpu_percent']} % of a core "
                f"over {r['idle_window_s']} s; {r['burst']} due at once: lateness "
                f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms "
                f"({r['burst_cpu_ms_per_job']} ms CPU per job)",
                flush=True,
            )
    path = write("scheduler", {"args": vars(args), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
