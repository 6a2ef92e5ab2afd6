"""Memory: resident set size per 10,000 idle sessions known to the process.

Each store runs in a fresh process: a BotOS on two in-process platforms (as in
bench_turns), warmed up with 100 people. Then 10,000 more people are linked
across both platforms, and each sends one message on each platform (two
turns, four history entries), then falls silent. RSS is read after a full
garbage collection at each step; the figures are the growth per person:

- ``links``: the identity links alone (in-memory resolver, two per person);
- ``sessions``: the two turns and everything the process keeps afterwards
  (history in memory for ``memory://``; for SQLite the history is on disk and
  what stays is the bounded read cache, up to ``cache_entries`` entries, which
  ``sqlite-nocache`` turns off).

    python benchmarks/bench_memory.py [--people 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_turns import World
from common import rss_bytes, write

from onethread.session.history.memory import MemoryHistoryStore
from onethread.session.history.sqlite import SQLiteHistoryStore
from onethread.session.identity.memory import InMemoryIdentityResolver

WARM = 100


def settled_rss() -> int:
    gc.collect()
    return rss_bytes()


async def talk(world: World, people: range, concurrency: int = 100) -> None:
    """Every person in ``people`` sends one message on each platform, 100 at a time."""
    loop = asyncio.get_running_loop()
    todo = iter(people)

    async def worker() -> None:
        for i in todo:
            for _ in range(2):
                fut = loop.create_future()
                await world.send(i, fut)
                await fut

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def child(kind: str, people: int, path: Path) -> dict[str, Any]:
    if kind == "memory":
        store: Any = MemoryHistoryStore()
    else:
        store = (
            SQLiteHistoryStore(path, cache_entries=0)
            if kind == "sqlite-nocache"
            else SQLiteHistoryStore(path)
        )
    async with World(store, WARM) as world:
        world.tracker.record = False  # the latencies list would count as session memory
        await talk(world, range(WARM))
        base = settled_rss()
        resolver = world.botos.session.identity_resolver
        assert isinstance(resolver, InMemoryIdentityResolver)
        for i in range(WARM, WARM + people):
            resolver.link("telegram", f"t{i}", f"user{i}")
            resolver.link("discord", f"d{i}", f"user{i}")
        world.users += people
        world.turn_of += [0] * people
        linked = settled_rss()
        await talk(world, range(WARM, WARM + people))
        await asyncio.sleep(0.1)  # let the last turn tasks finish
        done = settled_rss()
        assert len(world.tracker.started) == 0
    return {
        "store": kind,
        "people": people,
        "rss_before_mb": round(base / 2**20, 1),
        "rss_after_mb": round(done / 2**20, 1),
        "links_bytes_per_person": round((linked - base) / people),
        "sessions_bytes_per_person": round((done - linked) / people),
        "total_mb_per_10k": round((done - base) / people * 10_000 / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--stores", default="memory,sqlite,sqlite-nocache")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.people, Path(args.path)))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                kind,
                "--people",
                str(args.people),
                "--path",
                str(Path(tmp) / f"{kind}.db"),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{kind:14} links={row['links_bytes_per_person']}B/person "
                f"sessions={row['sessions_bytes_per_person']}B/person "
                f"-> {row['total_mb_per_10k']}MB per 10k idle people",
                flush=True,
            )
    print("wrote", write("memory", {"rows": rows}))


if __name__ == "__main__":
    main()
