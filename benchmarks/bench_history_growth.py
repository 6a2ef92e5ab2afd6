"""History growth: the cost of one turn when the session already holds 10, 1,000, 100,000 entries.

One user (linked across two platforms, as in bench_turns) sends 300 messages,
one at a time, to a session pre-filled with N entries, repeated on 5 fresh
stores; the full turn runs as in bench_turns (max_history=20: the model sees
the last 20 entries). ``--budget N`` runs it instead as long conversations do:
no entry cap, a token budget of N (``context_tokens``), history read newest
first up to the budget and older entries folded into a summary after the
reply (the model is EchoModel, so a summary is cheap but real). Latency is
per turn, message in to reply out. Stores: memory, SQLite
(the default, with its read cache) and SQLite with the cache off
(``cache_entries=0``), which shows the cost of the indexed read itself.

    python benchmarks/bench_history_growth.py [--turns 300] [--repeats 5] [--sizes 10,1000,100000]
        [--budget 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from pathlib import Path

from bench_turns import World
from common import summary, write

from onethread.session.history.base import HistoryEntry, HistoryStore
from onethread.session.history.memory import MemoryHistoryStore
from onethread.session.history.sqlite import SQLiteHistoryStore

KEY = "user:user0"  # the session of bench_turns' user 0


def filler(n: int) -> list[HistoryEntry]:
    """``n`` earlier entries, a day old, alternating user and assistant."""
    base = time.time() - 86_400
    return [
        HistoryEntry(
            role="user" if i % 2 == 0 else "assistant",
            content=f"earlier message number {i} with a little text",
            timestamp=base + i * 0.001,
            platform="telegram",
            chat_id="telegram-0",
            user_id="t0" if i % 2 == 0 else "",
            message_id=f"old{i}" if i % 2 == 0 else "",
        )
        for i in range(n)
    ]


def open_store(kind: str, path: Path) -> HistoryStore:
    if kind == "memory":
        return MemoryHistoryStore()
    return (
        SQLiteHistoryStore(path, cache_entries=0)
        if kind == "sqlite-nocache"
        else SQLiteHistoryStore(path)
    )


async def measure(
    kind: str, size: int, path: Path, turns: int, budget: int | None = None
) -> list[float]:
    """Latencies of ``turns`` turns of user 0, whose session starts with ``size`` entries."""
    store = open_store(kind, path)
    await store.append(KEY, filler(size))
    options = {} if budget is None else {"max_history": None, "context_tokens": budget}
    async with World(store, 2, **options) as world:
        loop = asyncio.get_running_loop()
        for _ in range(20):  # warm-up on user 1: opens the store, warms the code paths
            fut = loop.create_future()
            await world.send(1, fut)
            await fut
        gc.collect()
        del world.tracker.latencies[:]
        for _ in range(turns + 2):
            fut = loop.create_future()
            await world.send(0, fut)
            await fut
        async with world.botos.session.locks.hold(KEY):  # the last turn is stored after delivery
            held = await store.count(KEY)
    assert held == size + 2 * (turns + 2), (held, size, turns)
    return world.tracker.latencies[2:]  # the first turn on each platform merges, once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=300, help="turns measured per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="fresh stores per size")
    parser.add_argument("--sizes", default="10,1000,100000")
    parser.add_argument("--stores", default="memory,sqlite,sqlite-nocache")
    parser.add_argument("--budget", type=int, default=None, help="context_tokens (no entry cap)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            first = None
            for size in sizes:
                lat: list[float] = []
                for rep in range(args.repeats):
                    path = Path(tmp) / f"{kind}-{size}-{rep}.db"
                    lat += asyncio.run(measure(kind, size, path, args.turns, args.budget))
                row = {
                    "store": kind,
                    "entries_before": size,
                    "budget": args.budget,
                    "turns": len(lat),
                    **summary(lat),
                }
                first = first or row["p50_ms"]
                row["p50_vs_smallest"] = round(row["p50_ms"] / first, 2)
                rows.append(row)
                print(
                    f"{kind:14} entries={size:7} p50={row['p50_ms'] * 1000:6.1f}us "
                    f"mean={row['mean_ms'] * 1000:6.1f}us p99={row['p99_ms'] * 1000:6.1f}us "
                    f"x{row['p50_vs_smallest']}",
                    flush=True,
                )
    name = "history_growth" if args.budget is None else "history_growth_budget"
    print("wrote", write(name, {"turns_per_repeat": args.turns, "rows": rows}))


if __name__ == "__main__":
    main()
