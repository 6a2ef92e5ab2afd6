"""A reminder set through the agent's tool on Telegram arrives on Discord, where the
person talked last, mirrored with source ``cron``; then cancelled through the tool.

The REAL python-telegram-bot, discord.py and openai clients against their fakes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fake_discord import FakeDiscord
from fake_openai import FakeOpenAI, FakeReply, text, tool_call
from fake_telegram import FakeTelegram
from onethread import Agent
from onethread.bots import BotOS
from onethread.session import InMemoryIdentityResolver
from onethread.tools import reminders

pytestmark = pytest.mark.timeout(90)


def last(body: dict[str, Any]) -> dict[str, Any]:
    return dict(body["messages"][-1])


async def model(body: dict[str, Any]) -> FakeReply | str:
    """Sets, lists and cancels reminders when asked, the way a real model would."""
    msg = last(body)
    if msg["role"] == "tool":
        result = str(msg["content"])
        ids = re.findall(r"^- ([0-9a-f]{12}):", result, re.M)
        if ids:  # list_reminders answered: cancel the one listed
            return tool_call("cancel_reminder", {"id": ids[0]})
        return text(f"Done. {result}")
    said = str(msg["content"])
    if said.startswith("remind me"):
        return tool_call("remind_me", {"when": "in 3 seconds", "text": "Stretch your legs!"})
    if said.startswith("also remind me"):
        return tool_call("remind_me", {"when": "tomorrow at 9", "text": "Call mum"})
    if said == "cancel my reminder":
        return tool_call("list_reminders")
    everything = "\n".join(str(m.get("content") or "") for m in body["messages"])
    return text(f"seen: {everything[-200:]}")


Fakes = tuple[FakeTelegram, FakeDiscord, FakeOpenAI]


@pytest.fixture
async def fakes(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Fakes]:
    tg, dc, oa = FakeTelegram(), FakeDiscord(), FakeOpenAI(model)
    for server in (tg, dc, oa):
        await server.start()
    env = {
        "TELEGRAM_BOT_TOKEN": tg.token, "TELEGRAM_API_BASE_URL": tg.base_url, **dc.env(),
        "ONETHREAD_MODEL": "gpt-test", "OPENAI_BASE_URL": oa.base_url, "OPENAI_API_KEY": "sk-test",
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        yield tg, dc, oa
    finally:
        await oa.close()
        await dc.stop()
        await tg.stop()


async def test_reminder_set_on_telegram_arrives_on_discord_mirrored_then_cancel(
    fakes: Fakes,
) -> None:
    tg, dc, oa = fakes
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "12345", "alice")
    resolver.link("discord", "4242", "alice")
    botos = BotOS(
        Agent(name="a", tools=reminders()),
        platforms=["telegram", "discord"],
        identity_resolver=resolver,
        store="memory://",
    )
    task = asyncio.create_task(botos.start())
    try:
        await botos.wait_ready(30)
        tg.inject_message(12345, "remind me to stretch in a moment", first_name="Alice")
        [ack] = await tg.wait_for_messages(1, timeout=15)
        assert ack.text.startswith("Done. Reminder") and "Stretch your legs!" in ack.text
        [job] = await botos.jobs("alice")
        await dc.inject_dm(4242, "hi from discord", username="alice")
        await dc.wait_for_messages(1, timeout=15)  # now Discord is where she talked last
        sent = await dc.wait_for_messages(2, timeout=15)
        assert sent[1].text == "Stretch your legs!"
        assert len(tg.sent) == 1  # nothing more on Telegram
        entries = await botos.session.store.load("user:alice")
        [mirror] = [e for e in entries if e.source == "cron"]
        assert mirror.mirror and mirror.content == "Stretch your legs!"
        assert (mirror.platform, mirror.metadata["job_id"]) == ("discord", job.id)
        # The agent remembers it sent it, labelled with its source.
        await dc.inject_dm(4242, "what did you just send me?", username="alice")
        await dc.wait_for_messages(3, timeout=15)
        asked = oa.requests[-1]
        assert any("[sent by the bot on its own via cron] Stretch your legs!" in
                   str(m.get("content")) for m in asked["messages"])  # fmt: skip

        tg.inject_message(12345, "also remind me to call mum", first_name="Alice")
        await tg.wait_for_messages(2, timeout=15)
        [call_mum] = await botos.jobs("alice")
        assert call_mum.text == "Call mum"
        tg.inject_message(12345, "cancel my reminder", first_name="Alice")
        [_, _, done] = await tg.wait_for_messages(3, timeout=15)
        assert done.text == f"Done. Reminder {call_mum.id} cancelled."
        assert await botos.jobs("alice") == []
    finally:
        await botos.stop()
        await task
