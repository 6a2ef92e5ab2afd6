"""Streamed replies on Telegram, through the real openai SDK (stream=True) and PTB.

The fake OpenAI server streams server-sent events; the fake Bot API enforces
its edit interval with 429 + retry_after and validates the HTML of each edit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fake_openai import FakeOpenAI, streamed, tool_call
from fake_telegram import FakeTelegram, parse_markup
from onethread import Agent
from onethread.bots import Bot, BotSessionManager
from onethread.bots.manager import MODEL_STOPPED

LONG = " ".join(f"word{i}" for i in range(40))


@pytest.fixture
async def servers(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[FakeTelegram, FakeOpenAI]]:
    async with FakeOpenAI() as oa:
        tg = FakeTelegram()
        await tg.start()
        for name, value in {
            "TELEGRAM_BOT_TOKEN": tg.token,
            "TELEGRAM_API_BASE_URL": tg.base_url,
            "OPENAI_BASE_URL": oa.base_url,
            "OPENAI_API_KEY": "sk-test",
        }.items():
            monkeypatch.setenv(name, value)
        try:
            yield tg, oa
        finally:
            await tg.stop()


async def run_turn(
    tg: FakeTelegram, session: BotSessionManager, agent: Agent, **options: Any
) -> list[Any]:
    bot = Bot("telegram", agent, session=session, **options)
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        tg.inject_message(5, "hello")
        for _ in range(1500):
            history = await session.history("5", platform="telegram", chat_id="5")
            if len(history) >= 2:
                return history
            await asyncio.sleep(0.01)
        raise AssertionError("the turn was never stored")
    finally:
        await bot.stop()
        await task


async def test_a_reply_streamed_over_4s_shows_early_and_edits_at_most_once_a_second(
    servers: tuple[FakeTelegram, FakeOpenAI],
) -> None:
    tg, oa = servers
    oa.queue(streamed(LONG, over=4.0))
    session = BotSessionManager(store="memory://")
    history = await run_turn(tg, session, Agent("a", model="gpt-test"))
    [message] = tg.sent
    assert message.text == LONG  # the final text, last
    [started] = oa.stream_starts
    finished = started + 4.0
    assert message.at < finished - 2.0  # first words long before the model finished
    assert len(tg.edits) >= 2  # it grew while the model wrote
    gaps = [b.at - a.at for a, b in zip([message, *tg.edits], tg.edits, strict=False)]
    assert all(gap >= 1.0 for gap in gaps), gaps
    assert tg.edits_refused == 0  # the draft kept to the interval by itself
    assert [e.content for e in history] == ["hello", LONG]  # stored once, whole
    assert oa.requests[0]["stream"] is True


async def test_tool_calls_while_streaming_run_and_the_next_round_streams(
    servers: tuple[FakeTelegram, FakeOpenAI],
) -> None:
    tg, oa = servers
    seen: list[str] = []

    def lookup(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return "sunny"

    oa.queue(tool_call("lookup", {"city": "Oslo"}), streamed("It is **sunny** in Oslo."))
    session = BotSessionManager(store="memory://")
    history = await run_turn(tg, session, Agent("a", tools=[lookup], model="gpt-test"))
    assert seen == ["Oslo"]
    assert history[-1].content == "It is **sunny** in Oslo."
    assert tg.sent[-1].text == "It is sunny in Oslo."
    assert [e["type"] for e in tg.sent[-1].entities] == ["bold"]
    assert oa.requests[1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": oa.requests[1]["messages"][-2]["tool_calls"][0]["id"],
        "content": "sunny",
    }


async def test_a_429_on_an_edit_slows_the_draft_and_the_turn_succeeds(
    servers: tuple[FakeTelegram, FakeOpenAI],
) -> None:
    tg, oa = servers
    oa.queue(streamed(LONG, over=3.0))
    tg.rate_limit("editMessageText", retry_after=1, times=1)
    session = BotSessionManager(store="memory://")
    history = await run_turn(tg, session, Agent("a", model="gpt-test"))
    assert tg.sent[0].text == LONG
    refused = [r for r in tg.requests if r.method == "editMessageText" and r.status == 429]
    assert len(refused) == 1
    assert history[-1].content == LONG and "delivery" not in history[-1].metadata


async def test_a_model_failure_mid_stream_keeps_what_was_written_and_says_so(
    servers: tuple[FakeTelegram, FakeOpenAI],
) -> None:
    tg, oa = servers
    oa.queue(streamed(LONG, over=1.0, fail_after=10))
    session = BotSessionManager(store="memory://")
    history = await run_turn(tg, session, Agent("a", model="gpt-test"))
    written = " ".join(f"word{i}" for i in range(10))
    assert history[-1].content == f"{written}\n\n{MODEL_STOPPED}"
    assert history[-1].metadata["stopped"] == "model"
    assert tg.sent[-1].text == f"{written}\n\n{MODEL_STOPPED}"
    assert len(history) == 2  # the reply is stored once


async def test_streaming_false_sends_one_message_without_edits(
    servers: tuple[FakeTelegram, FakeOpenAI],
) -> None:
    tg, oa = servers
    oa.queue(streamed(LONG, over=1.5))
    session = BotSessionManager(store="memory://")
    history = await run_turn(tg, session, Agent("a", model="gpt-test"), streaming=False)
    assert [m.text for m in tg.sent] == [LONG] and tg.edits == []
    assert "stream" not in oa.requests[0]
    assert history[-1].content == LONG


async def test_a_long_streamed_reply_spills_into_a_new_message(
    servers: tuple[FakeTelegram, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    tg, oa = servers
    from onethread.platforms.telegram import TelegramAdapter

    monkeypatch.setattr(TelegramAdapter, "max_message_length", 120)
    reply = "Intro line.\n\n```python\n" + "\n".join(f"x{i} = {i}" for i in range(30)) + "\n```"
    oa.queue(streamed(reply, over=2.0))
    session = BotSessionManager(store="memory://")
    history = await run_turn(tg, session, Agent("a", model="gpt-test"))
    assert len(tg.sent) >= 3
    for message in tg.sent:  # every part is valid markup on its own: code stays code
        assert len(message.text) <= 120
        assert parse_markup(message.raw_text, message.parse_mode)
    assert history[-1].content == reply
    code = "".join(m.text for m in tg.sent if m.entities and m.entities[0]["type"] == "pre")
    assert "x29 = 29" in code and "x0 = 0" in code


async def test_a_code_block_and_a_table_arrive_as_valid_telegram_html(
    servers: tuple[FakeTelegram, FakeOpenAI],
) -> None:
    tg, oa = servers
    reply = (
        "Here:\n\n```python\nprint('<hi>' & 1)\n```\n\n"
        "| name | qty |\n|---|---:|\n| apple | 3 |\n| kiwi | 12 |\n\n"
        "- **bold** and *it* with a [link](https://example.org/?a=1&b=2)\n"
        "<script>alert(1)</script>"
    )
    oa.queue(streamed(reply, over=0.5))
    session = BotSessionManager(store="memory://")
    await run_turn(tg, session, Agent("a", model="gpt-test"))
    [message] = tg.sent
    assert message.parse_mode == "HTML"
    kinds = [e["type"] for e in message.entities]
    assert kinds.count("pre") == 2 and "bold" in kinds and "text_link" in kinds
    assert "apple | 3" in message.text and "print('<hi>' & 1)" in message.text
    assert "<script>alert(1)</script>" in message.text  # shown as text, not markup


def test_streaming_false_from_a_platforms_options() -> None:
    """`platforms: {telegram: {streaming: false}}` in the config file reaches the Bot."""
    from onethread.bots import BotOS

    botos = BotOS(
        agent=Agent("a"),
        platforms={"telegram": {"streaming": False, "token": "1:x"}, "web": {"port": 0}},
    )
    assert botos.bots["telegram"].streaming is False
    assert botos.bots["web"].streaming is True


async def test_a_final_edit_that_fails_marks_the_reply_not_delivered(
    servers: tuple[FakeTelegram, FakeOpenAI],
) -> None:
    tg, oa = servers
    oa.queue(streamed(LONG, over=1.5))
    tg.fail("editMessageText", 400, "Bad Request: message to edit not found", times=100)
    session = BotSessionManager(store="memory://")
    history = await run_turn(tg, session, Agent("a", model="gpt-test"))
    assert history[-1].content == LONG  # stored once, whole, with how delivery went
    assert history[-1].metadata["delivery"] == "failed"
    assert history[-1].metadata["delivery_error"] == "BadRequest"
    assert tg.sent[0].text != LONG  # the draft stayed as it was


async def test_a_streamed_reply_past_max_messages_is_cut_and_marked(
    servers: tuple[FakeTelegram, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    from onethread.platforms.delivery import CUT_NOTE
    from onethread.platforms.telegram import TelegramAdapter

    tg, oa = servers
    monkeypatch.setattr(TelegramAdapter, "max_message_length", 100)
    monkeypatch.setattr(TelegramAdapter, "max_messages", 2)
    reply = " ".join(f"longer-word-{i}" for i in range(60))
    oa.queue(streamed(reply, over=1.0))
    session = BotSessionManager(store="memory://")
    history = await run_turn(tg, session, Agent("a", model="gpt-test"))
    assert len(tg.sent) == 2 and tg.sent[-1].text.endswith(CUT_NOTE)
    assert history[-1].content == reply and history[-1].metadata["delivery"] == "cut"


async def test_an_edit_whose_markup_is_refused_goes_as_plain_text(
    servers: tuple[FakeTelegram, FakeOpenAI],
) -> None:
    tg, oa = servers
    oa.queue(streamed("**" + LONG + "**", over=2.5))
    tg.fail("editMessageText", 400, "Bad Request: can't parse entities: Unsupported start "
            "tag \"x\" at byte offset 0", times=1)  # fmt: skip
    session = BotSessionManager(store="memory://")
    await run_turn(tg, session, Agent("a", model="gpt-test"))
    plain = [e for e in tg.edits if e.parse_mode is None]
    # The refused edit went again, as plain text (the draft so far: "**" not yet closed).
    assert plain and plain[0].raw_text.startswith("**word0") and "<" not in plain[0].raw_text
    assert tg.sent[0].parse_mode == "HTML" and tg.sent[0].text == LONG  # the final: HTML
    assert [e["type"] for e in tg.sent[0].entities] == ["bold"]
