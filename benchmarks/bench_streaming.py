"""Streamed replies on the Telegram fake: time to first visible words, edits per minute.

A Bot on the REAL python-telegram-bot and openai clients, against tests/fake_telegram.py
and tests/fake_openai.py (SSE streams) on 127.0.0.1. ``--users`` people each send
``--turns`` messages, the next ``--pause`` seconds after the reply was complete (a
person reading it); every reply is streamed by the fake model over ``--over`` seconds.

- first words: from the moment the fake model wrote a reply's first token to the
  moment the reply's first message reached the Bot API (both on the fake servers'
  clock), p50/p99/max. The draft waits ``first_post_delay`` (0.25 s) on purpose, so
  that a reply finished by then is sent whole, without edits, and never posts
  sooner than ``edit_interval`` after its chat's previous call (so with
  ``--pause 0`` a reply can wait up to a second behind the previous one's last edit).
- edits per minute per chat: the most edits (and posts) any one chat saw in any
  60-second window, against the fake's limit (one call per second per chat, as
  Telegram asks of private chats), and the 429s the fake had to answer.

    python benchmarks/bench_streaming.py [--users 10] [--turns 3] [--over 4] [--pause 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from common import summary, write

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import FakeOpenAI, streamed  # noqa: E402
from fake_telegram import FakeTelegram  # noqa: E402
from onethread import Agent  # noqa: E402
from onethread.bots import Bot, BotSessionManager  # noqa: E402

WORDS = 60


def max_per_minute(times: list[float]) -> int:
    """The most events in any 60-second window."""
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= 60.0:
            start += 1
        best = max(best, end - start + 1)
    return best


async def run(users: int, turns: int, over: float, pause: float) -> dict[str, Any]:
    reply = " ".join(f"word{i}" for i in range(WORDS))
    async with FakeOpenAI(lambda body: streamed(reply, over=over)) as oa:
        tg = FakeTelegram()
        await tg.start()
        os.environ.update({"OPENAI_BASE_URL": oa.base_url, "OPENAI_API_KEY": "sk-bench"})
        session = BotSessionManager(store="memory://")
        bot = Bot("telegram", Agent("a", model="gpt-bench"), session=session,
                  token=tg.token, base_url=tg.base_url, poll_timeout=1.0)  # fmt: skip
        task = asyncio.create_task(bot.start())
        await bot.ready.wait()
        started = time.perf_counter()
        try:
            for turn in range(turns):
                for user in range(users):
                    tg.inject_message(1000 + user, f"question {turn} from {1000 + user}")
                await _stored(session, users, 2 * (turn + 1))
                await asyncio.sleep(pause)
        finally:
            elapsed = time.perf_counter() - started
            await bot.stop()
            await task
            await tg.stop()
    # Each reply's first message, matched to its stream by chat (the question names it);
    # the turns of one chat run in order, so the n-th stream goes with the n-th message.
    starts: defaultdict[int, list[float]] = defaultdict(list)
    for at, body in zip(oa.stream_starts, oa.stream_bodies, strict=True):
        starts[int(str(body["messages"][-1]["content"]).rsplit(" ", 1)[1])].append(at)
    posted: defaultdict[Any, list[float]] = defaultdict(list)
    for message in tg.sent:
        posted[message.chat_id].append(message.at)
    first_words = [
        p - s for chat, times in posted.items() for p, s in zip(times, starts[chat], strict=True)
    ]
    per_chat: defaultdict[Any, list[float]] = defaultdict(list)
    for message in tg.sent:
        per_chat[message.chat_id].append(message.at)
    for edit in tg.edits:
        per_chat[edit.chat_id].append(edit.at)
    return {
        "users": users,
        "turns": users * turns,
        "stream_seconds": over,
        "pause_s": pause,
        "elapsed_s": round(elapsed, 2),
        "first_words": summary(first_words),
        "edits": len(tg.edits),
        "max_calls_per_minute_per_chat": max(max_per_minute(t) for t in per_chat.values()),
        "limit_per_minute_per_chat": round(60 / tg.edit_interval),
        "edits_refused_429": tg.edits_refused,
    }


async def _stored(session: BotSessionManager, users: int, entries: int) -> None:
    """Until every user's history holds ``entries`` entries (two minutes at most)."""
    for _ in range(1200):
        counts = [
            len(await session.history(str(1000 + u), platform="telegram", chat_id=str(1000 + u)))
            for u in range(users)
        ]
        if min(counts) >= entries:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"turns not stored: {counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--over", type=float, default=4.0, help="seconds each reply streams")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between a reply and "
                        "the person's next message")  # fmt: skip
    args = parser.parse_args()
    result = asyncio.run(run(args.users, args.turns, args.over, args.pause))
    fw = result["first_words"]
    print(f"{result['turns']} streamed replies ({result['users']} chats, {args.over:g} s each) "
          f"in {result['elapsed_s']} s, {args.pause:g} s between a person's turns")  # fmt: skip
    print(f"first words after the first token: p50 {fw['p50_ms']} ms, p99 {fw['p99_ms']} ms, "
          f"max {fw['max_ms']} ms (target p99 < 500 ms)")  # fmt: skip
    most, limit = result["max_calls_per_minute_per_chat"], result["limit_per_minute_per_chat"]
    print(f"edits: {result['edits']}; most calls in one chat in any minute: {most} "
          f"(limit {limit}); 429s: {result['edits_refused_429']}")  # fmt: skip
    print("wrote", write("streaming", result))


if __name__ == "__main__":
    main()
