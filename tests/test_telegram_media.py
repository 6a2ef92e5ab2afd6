"""Photos, voice notes and documents on Telegram, through python-telegram-bot and the fake.

The fake serves ``getFile`` and the file URL as the Bot API does; the bot
fetches the bytes with PTB's ``File.download_as_bytearray``, stores them in
the blob store, and the model (the real openai SDK against the fake) gets an
image part for the photo and the transcript of the voice note.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fake_openai import FakeOpenAI, text, tool_call
from fake_telegram import FakeTelegram, message_update
from onethread import Agent, File
from onethread.agent.transcribe import Transcriber
from onethread.bots import Bot, BotOS, BotSessionManager
from onethread.platforms.telegram import normalize_update
from test_blobs import png

VOICE = b"OggS\x00\x02" + bytes(range(120))


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


async def stored(session: BotSessionManager, user: str, n: int) -> list[Any]:
    """The history once it holds ``n`` entries (a turn is stored just after its reply is sent)."""
    for _ in range(500):
        history = await session.history(user, platform="telegram", chat_id=user)
        if len(history) >= n:
            return history
        await asyncio.sleep(0.01)
    raise AssertionError(f"history of {user} never reached {n} entries")


def _update_with(field: str, value: Any, caption: str = "") -> dict[str, Any]:
    update = message_update(5, caption)
    message = update["message"]
    message.pop("text", None)
    message.pop("entities", None)
    if caption:
        message["caption"] = caption
    message[field] = value
    return update


def _norm(raw: dict[str, Any]) -> Any:
    from telegram import Bot, Update

    bot = Bot("123:" + "x" * 35)
    return normalize_update(Update.de_json(raw, bot), bot_id=123, bot_username="b")


def test_media_messages_normalise_to_attachments() -> None:
    photo = [
        {"file_id": "small", "file_unique_id": "s", "width": 90, "height": 60, "file_size": 10},
        {"file_id": "big", "file_unique_id": "b", "width": 1280, "height": 853, "file_size": 99},
    ]
    msg = _norm(_update_with("photo", photo, caption="my cat"))
    assert msg.text == "my cat"
    [a] = msg.attachments
    assert (a.kind, a.mime, a.size) == ("image", "image/jpeg", 99)
    doc = {"file_id": "d", "file_unique_id": "d", "file_name": "report.pdf",
           "mime_type": "application/pdf", "file_size": 5}  # fmt: skip
    [d] = _norm(_update_with("document", doc)).attachments
    assert (d.kind, d.name, d.mime) == ("file", "report.pdf", "application/pdf")
    voice = {"file_id": "v", "file_unique_id": "v", "duration": 2, "mime_type": "audio/ogg"}
    attachment_only = _norm(_update_with("voice", voice))
    assert attachment_only.text == "" and attachment_only.attachments[0].kind == "voice"
    sticker = {"file_id": "s", "file_unique_id": "s", "width": 1, "height": 1, "emoji": "😀",
               "is_animated": False, "is_video": False, "type": "regular"}  # fmt: skip
    [s] = _norm(_update_with("sticker", sticker)).attachments
    assert (s.kind, s.mime, s.name) == ("sticker", "image/webp", "😀")


async def test_photo_and_voice_note_through_the_real_clients(
    servers: tuple[FakeTelegram, FakeOpenAI],
) -> None:
    tg, oa = servers
    oa.transcripts[VOICE] = "call mum at six"
    session = BotSessionManager(store="memory://", transcriber=Transcriber("whisper-1"))
    bot = Bot("telegram", Agent("a", model="gpt-4o-mini"), session=session)
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        oa.queue(text("A small image."), text("Noted."))
        tg.inject_media(5, "photo", png(), caption="what is this?")
        await tg.wait_for_messages(1, timeout=15)
        tg.inject_media(5, "voice", VOICE)
        await tg.wait_for_messages(2, timeout=15)
        history = await stored(session, "5", 4)
    finally:
        await bot.stop()
        await task
    assert [m.text for m in tg.sent] == ["A small image.", "Noted."]
    assert tg.file_downloads == 2
    photo_request = oa.requests[0]["messages"][-1]["content"]
    assert photo_request[0]["text"].startswith("what is this?\n[image (image/png")
    assert photo_request[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert oa.requests[1]["messages"][-1]["content"] == "[voice note] call mum at six"
    assert len(oa.transcriptions) == 1
    assert [e.attachments[0].kind for e in history if e.role == "user"] == ["image", "voice"]


async def test_a_file_telegram_will_not_serve_is_told_to_the_sender(
    servers: tuple[FakeTelegram, FakeOpenAI],
) -> None:
    tg, oa = servers
    bot = Bot("telegram", Agent("a", model="gpt-test"), store="memory://")
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        update_id = tg.inject_media(5, "document", b"%PDF-1.4 tiny", extra={"file_name": "a.pdf"})
        del tg.files[next(iter(tg.files))]  # gone from the server before the bot asks
        await tg.wait_for_messages(1, timeout=15)
    finally:
        await bot.stop()
        await task
    assert update_id > 0
    assert tg.sent[0].text == "a.pdf: I could not fetch it from telegram; please resend."
    assert oa.requests == []


async def test_a_file_a_tool_returns_arrives_as_a_document_and_an_image_as_a_photo(
    servers: tuple[FakeTelegram, FakeOpenAI], tmp_path: Path
) -> None:
    tg, oa = servers
    report = tmp_path / "report.csv"
    report.write_text("month,total\nmay,42\n")

    def make_report() -> list[object]:
        """Build the monthly report."""
        return ["Here is the report and a chart.", File(report), File(png(), name="chart.png")]

    session = BotSessionManager(store="memory://")
    bot = Bot("telegram", Agent("a", tools=[make_report], model="gpt-test"), session=session)
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        oa.queue(tool_call("make_report"), text("Sent you the report."))
        tg.inject_message(5, "send me the report")
        files = await tg.wait_for_files(2, timeout=15)
        history = await stored(session, "5", 2)
    finally:
        await bot.stop()
        await task
    assert [m.text for m in tg.sent] == ["Sent you the report."]
    assert [(f.method, f.filename) for f in files] == [
        ("sendDocument", "report.csv"),
        ("sendPhoto", "chart.png"),
    ]
    assert files[0].data == report.read_bytes() and files[1].data == png()
    tool_result = oa.requests[1]["messages"][-1]["content"]
    assert "(file report.csv, text/plain, 0 KB, will be sent with your reply)" in tool_result
    reply = history[1]
    assert [(a.kind, a.name) for a in reply.attachments] == [("file", "report.csv"),
                                                            ("image", "chart.png")]  # fmt: skip
    assert await session.blobs.get(reply.attachments[1].blob) == png()


async def test_bot_send_and_notify_carry_files_and_mirror_them(
    servers: tuple[FakeTelegram, FakeOpenAI],
) -> None:
    tg, oa = servers
    botos = BotOS(agent=Agent("a", model="gpt-test"), platforms=["telegram"], store="memory://")
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(15)
    try:
        oa.queue(text("hello"))
        tg.inject_message(5, "hi")
        await tg.wait_for_messages(1, timeout=15)
        await stored(botos.session, "5", 2)
        await botos.notify(
            "telegram:5", "Your invoice", attachments=[File(b"%PDF-1.4 x", name="invoice.pdf")]
        )
        await botos.bots["telegram"].send("5", "", attachments=[File(png(), name="p.png")])
        files = await tg.wait_for_files(2, timeout=15)
        history = await botos.session.history("5", platform="telegram", chat_id="5")
    finally:
        await botos.stop()
        await task
    assert [(f.method, f.filename) for f in files] == [("sendDocument", "invoice.pdf"),
                                                       ("sendPhoto", "p.png")]  # fmt: skip
    assert tg.sent[-1].text == "Your invoice"
    mirrored = history[-1]
    assert mirrored.mirror and mirrored.source == "notify"
    assert [(a.name, a.mime) for a in mirrored.attachments] == [("invoice.pdf", "application/pdf")]


async def test_a_file_bigger_than_the_platform_takes_is_named_not_sent(
    servers: tuple[FakeTelegram, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    from onethread.platforms.telegram import TelegramAdapter

    tg, _ = servers
    monkeypatch.setattr(TelegramAdapter, "max_file_bytes", 100)
    bot = Bot("telegram", Agent("a"), store="memory://")
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        await bot.send("5", "", attachments=[File(b"x" * 101, name="big.bin")])
        await tg.wait_for_messages(1, timeout=15)
    finally:
        await bot.stop()
        await task
    assert tg.sent_files == []
    assert tg.sent[0].text == "(I could not send big.bin: it is larger than telegram allows.)"
