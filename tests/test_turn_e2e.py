"""Whole turns: Bot/BotOS + the real Agent + the real openai SDK against a fake endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fake_openai import FakeOpenAI, text, tool_call
from onethread import Agent
from onethread.bots import Bot, BotOS, mirror_to_session
from onethread.bots.manager import APOLOGY
from onethread.session import InMemoryIdentityResolver, get_session_context
from onethread.testing import FakeAdapter, ScriptedModel


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def serve(botos: BotOS) -> asyncio.Task[None]:
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(5)
    return task


async def test_tool_reads_session_context_through_the_real_sdk(
    openai_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    seen: list[tuple[str, str, str, str]] = []

    def whoami() -> str:
        """Who is talking, and where."""
        ctx = get_session_context()
        seen.append((ctx.platform, ctx.chat_id, ctx.unified_user_id, ctx.user_name))
        return f"You are {ctx.user_name or ctx.user_id} on {ctx.platform}"

    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "12345", "alice")
    resolver.link("discord", "snowflake-1", "alice")
    agent = Agent(name="assistant", instructions="Use whoami.", tools=[whoami], model="gpt-test")
    tg, dc = FakeAdapter("telegram"), FakeAdapter("discord")
    botos = BotOS(agent=agent, identity_resolver=resolver, store="memory://")
    botos.add_bot(Bot("telegram", agent, adapter=tg, session=botos.session))
    botos.add_bot(Bot("discord", agent, adapter=dc, session=botos.session))
    task = await serve(botos)
    try:
        openai_server.queue(tool_call("whoami"), text("Hi Alice, noted: you like tea."))
        await tg.inject("I like tea", user="12345", user_name="Alice", chat_id="tg-1")
        await tg.wait_sent(1)
        openai_server.queue(text("You like tea."))
        await dc.inject("what do I like?", user="snowflake-1", user_name="alice#1", chat_id="dc-9")
        await dc.wait_sent(1)
        openai_server.queue(text("Hello Bob."))
        await dc.inject("hi, what do I like?", user="bob", chat_id="dc-bob")
        await dc.wait_sent(2)
    finally:
        await botos.stop()
        await task
    assert seen == [("telegram", "tg-1", "alice", "Alice")]
    second = openai_server.requests[2]["messages"]  # after the tool round trip
    assert any("I like tea" in str(m.get("content")) for m in second)
    bob = openai_server.requests[3]["messages"]
    assert not any("tea" in str(m.get("content")) for m in bob)
    assert tg.sent[0].text == "Hi Alice, noted: you like tea."


async def test_mirrored_text_reaches_the_model_labelled_in_strict_role_order() -> None:
    model = ScriptedModel(["ok", "ok"])
    agent = Agent(name="assistant", model=model)
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "1", "alice")
    tg = FakeAdapter("telegram")
    botos = BotOS(agent=agent, identity_resolver=resolver, store="memory://")
    botos.add_bot(Bot("telegram", agent, adapter=tg, session=botos.session))
    task = await serve(botos)
    try:
        assert mirror_to_session(
            botos.session, "alice", "Reminder: standup at 10", source_label="cron"
        )
        await asyncio.sleep(0.05)
        await tg.inject("when is standup?", user="1")
        await tg.wait_sent(1)
    finally:
        await botos.stop()
        await task
    messages: list[dict[str, Any]] = model.requests[0]
    roles = [m["role"] for m in messages if m["role"] != "system"]
    assert roles[0] == "user" and roles[-1] == "user"
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False))
    mirrored = [m for m in messages if "Reminder: standup at 10" in str(m["content"])]
    assert mirrored and mirrored[0]["role"] == "assistant" and "cron" in mirrored[0]["content"]


async def test_model_failure_apologises_and_records(openai_server: FakeOpenAI) -> None:
    from fake_openai import error
    from onethread.agent import OpenAIModel

    model = OpenAIModel("gpt-test", base_url=openai_server.base_url, api_key="sk-wrong")
    agent = Agent(name="a", model=model)
    openai_server.queue(error(401), error(401), error(401))
    adapter = FakeAdapter("web")
    bot = Bot("web", agent, adapter=adapter, store="memory://")
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        await adapter.inject("hello?", user="u")
        [sent] = await adapter.wait_sent(1)
    finally:
        await bot.stop()
        await task
    assert sent.text == APOLOGY


async def test_offline_model_says_so_and_remembers() -> None:
    adapter = FakeAdapter("web")
    bot = Bot("web", Agent(name="assistant"), adapter=adapter, store="memory://")
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        await adapter.inject("first", user="u")
        await adapter.wait_sent(1)
        await adapter.inject("second", user="u")
        sent = await adapter.wait_sent(2)
    finally:
        await bot.stop()
        await task
    assert "no language model" in sent[0].text.lower()
    assert "2 earlier" in sent[1].text and "web" in sent[1].text
