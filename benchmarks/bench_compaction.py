"""Compaction off the reply path: time to the reply's delivery with summaries on and off.

``people`` people talk at once, each sending ``turns`` messages one after the
other (the next once the reply is delivered), through
``BotSessionManager.chat(..., deliver=...)`` with a token budget small enough
that their sessions are folded every few turns. The model is in-process and
answers a turn after ``--model-ms`` and a summary after ``--summary-ms``
(slower, as a long summary is). Latency is message in to ``deliver`` called.
Each repeat runs compaction on and off side by side, at the same time in one
event loop (``--people`` each, fresh in-memory stores), so a load change on a
shared machine hits both alike; ``--sequential`` runs them one after the other
instead (as before). p50/p99 of each, their ratio, and each repeat's ratio are
printed.

    python benchmarks/bench_compaction.py [--people 20] [--turns 60] [--repeats 3] [--sequential]
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
    parser.add_argument("--sequential", action="store_true", help="on and off one after the other")
    args = parser.parse_args()
    lat: dict[bool, list[float]] = {True: [], False: []}
    folds = 0
    per_repeat: list[float] = []
    timing = (args.people, args.turns, args.model_ms / 1000, args.summary_ms / 1000)

    async def both() -> list[tuple[list[float], int]]:
        return list(await asyncio.gather(run(False, *timing), run(True, *timing)))

    for _ in range(args.repeats):
        if args.sequential:
            pairs = [asyncio.run(run(on, *timing)) for on in (False, True)]
        else:
            pairs = asyncio.run(both())
        for on, (got, summaries) in zip((False, True), pairs, strict=True):
            lat[on] += got
            folds += summaries
        p99 = [summary(got)["p99_ms"] for got, _ in pairs]
        per_repeat.append(round(p99[1] / p99[0], 2))
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
    print(f"summaries written: {folds}; p99 on/off = {ratio:.2f} (per repeat: {per_repeat})")
    out = {
        "args": vars(args),
        "rows": rows,
        "summaries": folds,
        "p99_on_over_off": ratio,
        "p99_on_over_off_per_repeat": per_repeat,
    }
    print("wrote", write("compaction", out))


if __name__ == "__main__":
    main()
