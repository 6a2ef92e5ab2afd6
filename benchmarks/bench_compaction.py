"""Compaction off the reply path: time to the reply's delivery with summaries on and off.

``people`` people talk at once, each sending ``turns`` messages one after the
other (the next once the reply is delivered), through
``BotSessionManager.chat(..., deliver=...)`` with a token budget small enough
that their sessions are folded every few turns. The model is in-process and
answers a turn after ``--model-ms`` and a summary after ``--summary-ms``
(slower, as a long summary is). Latency is message in to ``deliver`` called.
Runs alternate on/off ``--repeats`` times on fresh in-memory stores, so both
see the same machine; p50/p99 of each and their ratio are printed.

    python benchmarks/bench_compaction.py [--people 20] [--turns 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from common import summary, write

from onethread.agent import Agent, ModelReply
from onethread.agent.summary import SUMMARY_SYSTEM
from onethread.bots import BotSessionManager
from onethread.session.history.memory import MemoryHistoryStore

TEXT = "Tell me something about rivers, mountains and the sea; I like long answers."


class TimedModel:
    """Answers after a fixed delay; summaries take ``summary_s``."""

    def __init__(self, turn_s: float, summary_s: float) -> None:
        self.model = "bench-model"
        self.turn_s = turn_s
        self.summary_s = summary_s
        self.summaries = 0

    async def complete(self, messages: list[dict[str, Any]], tools: list[Any]) -> ModelReply:
        if str(messages[0].get("content", "")).startswith(SUMMARY_SYSTEM[:40]):
            self.summaries += 1
            await asyncio.sleep(self.summary_s)
            return ModelReply("The person likes rivers; lucky number 7 (telegram, 3 May).")
        await asyncio.sleep(self.turn_s)
        return ModelReply("Rivers carve valleys; mountains rise where plates meet. " * 3)


async def run(on: bool, people: int, turns: int, turn_s: float, summary_s: float) -> tuple:
    model = TimedModel(turn_s, summary_s)
    agent = Agent("bench", model=model)
    manager = BotSessionManager(MemoryHistoryStore(), context_tokens=1200, compaction=on)
    latencies: list[float] = []

    async def person(i: int) -> None:
        for _ in range(turns):
            started = time.perf_counter()

            async def deliver(reply: str, started: float = started, **_: Any) -> None:
                latencies.append(time.perf_counter() - started)

            await manager.chat(agent, f"p{i}", TEXT, platform="console", deliver=deliver)

    await asyncio.gather(*(person(i) for i in range(people)))
    await manager.close()
    return latencies, model.summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=20)
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-ms", type=float, default=5.0)
    parser.add_argument("--summary-ms", type=float, default=50.0)
    args = parser.parse_args()
    lat: dict[bool, list[float]] = {True: [], False: []}
    folds = 0
    for _ in range(args.repeats):
        for on in (False, True):
            got, summaries = asyncio.run(
                run(on, args.people, args.turns, args.model_ms / 1000, args.summary_ms / 1000)
            )
            lat[on] += got
            folds += summaries
    rows = {}
    for on in (False, True):
        rows["on" if on else "off"] = summary(lat[on])
        row = rows["on" if on else "off"]
        print(
            f"compaction {'on ' if on else 'off'} turns={len(lat[on])} "
            f"p50={row['p50_ms']:.2f}ms p99={row['p99_ms']:.2f}ms",
            flush=True,
        )
    ratio = rows["on"]["p99_ms"] / rows["off"]["p99_ms"]
    print(f"summaries written: {folds}; p99 on/off = {ratio:.2f}")
    out = {"args": vars(args), "rows": rows, "summaries": folds, "p99_on_over_off": ratio}
    print("wrote", write("compaction", out))


if __name__ == "__main__":
    main()
