"""Streamed replies and rendered Markdown on Discord and Slack, through discord.py and
slack-bolt against their fakes (which enforce each platform's edit rate limit)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fake_discord import FakeDiscord
from fake_openai import FakeOpenAI, streamed
from fake_slack import FakeSlack
from onethread import Agent
from onethread.bots import Bot, BotSessionManager

pytestmark = pytest.mark.timeout(60)

LONG = " ".join(f"word{i}" for i in range(30))
RICH = (
    "Here:\n\n```python\nprint('<hi>' & 1)\n```\n\n"
    "| name | qty |\n|---|---:|\n| apple | 3 |\n| kiwi | 12 |\n\n"
    "- **bold** and *it* with a [link](https://example.org/?a=1&b=2)"
)


@pytest.fixture
async def openai(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as oa:
        monkeypatch.setenv("OPENAI_BASE_URL", oa.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        yield oa


async def turn(platform: str, inject: Any, **options: Any) -> list[Any]:
    session = BotSessionManager(store="memory://")
    bot = Bot(platform, Agent("a", model="gpt-test"), session=session, **options)
    task = asyncio.create_task(bot.start())
    await asyncio.wait_for(bot.ready.wait(), 30)
    try:
        user, chat = await inject()
        for _ in range(2000):
            history = await session.history(user, platform=platform, chat_id=chat)
            if len(history) >= 2:
                return history
            await asyncio.sleep(0.01)
        raise AssertionError("the turn was never stored")
    finally:
        await bot.stop()
        await task


@pytest.fixture
async def discord_fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    await fake.start()
    for name, value in fake.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def slack_fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    await fake.start()
    for name, value in fake.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield fake
    finally:
        await fake.stop()


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


async def test_discord_streams_by_patching_within_its_rate_limit(
    openai: FakeOpenAI, discord_fake: FakeDiscord
) -> None:
    openai.queue(streamed(LONG, over=3.0))

    async def inject() -> tuple[str, str]:
        await discord_fake.inject_dm(4242, "hello", username="alice")
        return "4242", discord_fake.dm_channel_for(4242)

    history = await turn("discord", inject)
    [message] = discord_fake.sent
    assert message.text == LONG and history[-1].content == LONG
    edits = [at for (_, mid, _, at) in discord_fake.edits if mid == message.id]
    assert len(edits) >= 2 and edits[0] < openai.stream_starts[0] + 3.0 - 0.5
    assert all(gap >= 0.99 for gap in gaps(edits)), gaps(edits)
    assert discord_fake.edits_refused == 0


async def test_discord_gets_a_table_as_a_code_block(
    openai: FakeOpenAI, discord_fake: FakeDiscord
) -> None:
    openai.queue(streamed(RICH, over=0.1))

    async def inject() -> tuple[str, str]:
        await discord_fake.inject_dm(4242, "hello", username="alice")
        return "4242", discord_fake.dm_channel_for(4242)

    await turn("discord", inject)
    [message] = discord_fake.sent
    assert "```\nname  | qty\n------+----\napple | 3\nkiwi  | 12\n```" in message.text
    assert "```python\nprint('<hi>' & 1)\n```" in message.text
    assert message.text.count("```") % 2 == 0  # every fence closed
    assert "- **bold** and *it* with a [link](https://example.org/?a=1&b=2)" in message.text


async def test_slack_streams_with_chat_update_and_a_429_slows_it(
    openai: FakeOpenAI, slack_fake: FakeSlack
) -> None:
    openai.queue(streamed(LONG, over=3.0))
    slack_fake.update_interval = 1.5  # stricter than the draft's 1 s: it must back off

    async def inject() -> tuple[str, str]:
        await slack_fake.inject_dm("U0ALICE", "hello")
        return "U0ALICE", slack_fake.dm_channel_for("U0ALICE")

    history = await turn("slack", inject)
    [message] = slack_fake.sent
    assert message.text == LONG and history[-1].content == LONG
    assert "delivery" not in history[-1].metadata  # the turn succeeded
    assert slack_fake.updates_refused >= 1  # a 429 happened ...
    times = [at for (*_, at) in slack_fake.updates]
    assert all(gap >= 1.5 for gap in gaps(times)), gaps(times)  # ... and was respected


async def test_slack_gets_mrkdwn_with_a_table_as_a_code_block(
    openai: FakeOpenAI, slack_fake: FakeSlack
) -> None:
    openai.queue(streamed(RICH, over=0.1))

    async def inject() -> tuple[str, str]:
        await slack_fake.inject_dm("U0ALICE", "hello")
        return "U0ALICE", slack_fake.dm_channel_for("U0ALICE")

    await turn("slack", inject)
    [message] = slack_fake.sent
    [block] = message.blocks or []
    mrkdwn = block["text"]["text"]
    assert block["text"]["type"] == "mrkdwn"
    assert "```\nname  | qty\n------+----\napple | 3\nkiwi  | 12\n```" in mrkdwn
    assert "```\nprint('&lt;hi&gt;' &amp; 1)\n```" in mrkdwn
    assert "• *bold* and _it_ with a <https://example.org/?a=1&b=2|link>" in mrkdwn


async def test_streaming_false_on_slack_posts_once(
    openai: FakeOpenAI, slack_fake: FakeSlack
) -> None:
    openai.queue(streamed(LONG, over=1.0))

    async def inject() -> tuple[str, str]:
        await slack_fake.inject_dm("U0ALICE", "hello")
        return "U0ALICE", slack_fake.dm_channel_for("U0ALICE")

    await turn("slack", inject, streaming=False)
    assert [m.text for m in slack_fake.sent] == [LONG] and slack_fake.updates == []
