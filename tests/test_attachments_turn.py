"""Attachments through a whole turn: fetched, checked, stored, transcribed, shown to the model.

The model side is the real openai SDK against ``tests/fake_openai.py`` (chat
completions and ``/audio/transcriptions``); the platform side is the
FakeAdapter, whose ``download`` is the same ``Adapter.download`` every
platform adapter goes through.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fake_openai import FakeOpenAI, text
from onethread import Agent
from onethread.agent.transcribe import Transcriber
from onethread.bots import Bot, BotSessionManager
from onethread.platforms import Attachment
from onethread.testing import FakeAdapter
from test_blobs import png

VOICE = b"OggS" + b"\x00\x02" + bytes(range(200))  # an Ogg page header: audio/ogg


@pytest.fixture
async def openai_server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        yield server


async def stored(session: BotSessionManager, user: str, chat: str, n: int) -> list[Any]:
    """The history once it holds ``n`` entries (a turn is stored just after its reply is sent)."""
    for _ in range(500):
        history = await session.history(user, platform="telegram", chat_id=chat)
        if len(history) >= n:
            return history
        await asyncio.sleep(0.01)
    raise AssertionError(f"history of {user} never reached {n} entries")


async def _bot(agent: Agent, **options: object) -> tuple[Bot, FakeAdapter, asyncio.Task[None]]:
    adapter = FakeAdapter("telegram")
    bot = Bot("telegram", agent, adapter=adapter, store="memory://", **options)
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    return bot, adapter, task


async def test_photo_reaches_a_vision_model_as_an_image_part(openai_server: FakeOpenAI) -> None:
    bot, adapter, task = await _bot(Agent("a", model="gpt-4o-mini"))
    try:
        openai_server.queue(text("A tiny picture."))
        photo = Attachment("image", "image/jpeg", "holiday.jpg", caption="look")
        await adapter.inject("", user="42", files=[(photo, png())])  # attachment only
        await adapter.wait_sent(1)
        history = await stored(bot.session, "42", "dm-42", 2)
    finally:
        await bot.stop()
        await task
    assert adapter.sent[0].text == "A tiny picture."
    content = openai_server.requests[0]["messages"][-1]["content"]
    assert isinstance(content, list)
    assert "[image: holiday.jpg (image/png, " in content[0]["text"]  # type from the bytes
    assert 'caption "look"' in content[0]["text"]
    url = content[1]["image_url"]["url"]
    assert url == "data:image/png;base64," + base64.b64encode(png()).decode()
    kept = history[0].attachments[0]
    assert kept.mime == "image/png" and kept.size == len(png())
    assert await bot.session.blobs.get(kept.blob) == png()  # bytes in the blob store only


async def test_model_without_vision_gets_the_line_not_the_image(
    openai_server: FakeOpenAI,
) -> None:
    bot, adapter, task = await _bot(Agent("a", model="some-text-model"))
    try:
        openai_server.queue(text("ok"))
        await adapter.inject("what is this?", user="1", files=[(Attachment("image"), png())])
        await adapter.wait_sent(1)
    finally:
        await bot.stop()
        await task
    content = openai_server.requests[0]["messages"][-1]["content"]
    assert isinstance(content, str)
    assert content.startswith("what is this?\n[image (image/png, ")


async def test_voice_note_is_transcribed_once_and_reads_as_what_was_said(
    openai_server: FakeOpenAI,
) -> None:
    openai_server.transcripts[VOICE] = "remind me to buy milk"
    session = BotSessionManager(store="memory://", transcriber=Transcriber("whisper-1"))
    adapter = FakeAdapter("telegram")
    bot = Bot("telegram", Agent("a", model="gpt-test"), adapter=adapter, session=session)
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        openai_server.queue(text("Noted: milk."), text("You asked about milk."))
        await adapter.inject("", user="7", files=[(Attachment("voice", "audio/ogg"), VOICE)])
        await adapter.wait_sent(1)
        await adapter.inject("what did I ask?", user="7")
        await adapter.wait_sent(2)
        history = await stored(session, "7", "dm-7", 4)
    finally:
        await bot.stop()
        await task
    assert len(openai_server.transcriptions) == 1  # once, not on every later turn
    assert openai_server.transcriptions[0]["model"] == "whisper-1"
    assert history[0].attachments[0].transcript == "remind me to buy milk"
    first = openai_server.requests[0]["messages"][-1]["content"]
    assert first == "[voice note] remind me to buy milk"
    later = openai_server.requests[1]["messages"]
    assert any("[voice note] remind me to buy milk" in str(m["content"]) for m in later)


async def test_small_text_file_is_read_inline(openai_server: FakeOpenAI) -> None:
    bot, adapter, task = await _bot(Agent("a", model="gpt-test"))
    try:
        openai_server.queue(text("Read it."))
        notes = Attachment("file", "text/x-python", "notes.txt")
        await adapter.inject("summarise", user="1", files=[(notes, b"line one\nline two\n")])
        await adapter.wait_sent(1)
    finally:
        await bot.stop()
        await task
    content = openai_server.requests[0]["messages"][-1]["content"]
    assert "[file: notes.txt (text/plain, 18 bytes)]" in content
    assert "--- notes.txt ---\nline one\nline two\n" in content


async def test_too_large_and_mislabelled_attachments_are_refused_plainly(
    openai_server: FakeOpenAI,
) -> None:
    bot, adapter, task = await _bot(Agent("a", model="gpt-test"), max_attachment_bytes=1000)
    try:
        big = Attachment("file", name="big.bin", size=5_000_000)  # refused before fetching
        await adapter.inject("", user="1", files=[(big, b"x" * 10)])
        await adapter.wait_sent(1)
        liar = Attachment("image", name="cat.jpg")  # says photo, bytes are text
        await adapter.inject("", user="1", files=[(liar, b"just some text")])
        await adapter.wait_sent(2)
        openai_server.queue(text("Got the text."))
        sneaky = Attachment("file", name="small-header-big-body.bin", size=10)
        await adapter.inject("and this", user="1", files=[(sneaky, b"y" * 2000)])
        await adapter.wait_sent(4)
    finally:
        await bot.stop()
        await task
    assert adapter.sent[0].text == "big.bin: That file is 5.0 MB; I can take files up to 1 KB."
    assert "sent as a image but the file is text/plain" in adapter.sent[1].text
    assert adapter.downloads == 2  # the 5 MB one was never fetched
    assert adapter.sent[2].text.startswith("small-header-big-body.bin: That file is 2 KB")
    assert adapter.sent[3].text == "Got the text."  # the text still answered
    assert len(openai_server.requests) == 1


async def test_offline_model_says_what_it_received_and_what_it_needs() -> None:
    bot, adapter, task = await _bot(Agent("a"))
    try:
        await adapter.inject(
            "",
            user="1",
            files=[(Attachment("image", name="p.png"), png()), (Attachment("voice"), VOICE)],
        )
        await adapter.wait_sent(1)
    finally:
        await bot.stop()
        await task
    reply = adapter.sent[0].text
    assert "You sent: [image: p.png (image/png" in reply
    assert "[voice note, not transcribed" in reply
    assert "a model that takes images" in reply and "ONETHREAD_TRANSCRIBE_MODEL" in reply
