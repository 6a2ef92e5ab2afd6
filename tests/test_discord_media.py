"""Photos, voice messages and files on Discord, through discord.py and the fake.

The fake dispatches MESSAGE_CREATE with ``attachments`` as Discord sends them
and serves the bytes at signed CDN URLs; discord.py's ``Attachment.read()``
fetches them. Files the bot sends go out as ``discord.File`` in a multipart
``POST /channels/{id}/messages`` (``files[0]`` + ``payload_json``), which
the fake parses as the real API does.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fake_discord import FakeDiscord
from fake_openai import FakeOpenAI, text, tool_call
from onethread import Agent, File
from onethread.agent.transcribe import Transcriber
from onethread.bots import Bot, BotSessionManager
from onethread.errors import BadRequest
from onethread.platforms.base import Inbound
from onethread.platforms.discord import DiscordAdapter
from test_blobs import png

VOICE = b"OggS\x00\x02" + bytes(range(120))
USER = "4242"


@pytest.fixture
async def servers(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[FakeDiscord, FakeOpenAI]]:
    async with FakeOpenAI() as oa, FakeDiscord() as dc:
        for name, value in {**dc.env(), "OPENAI_BASE_URL": oa.base_url,
                            "OPENAI_API_KEY": "sk-test"}.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        yield dc, oa
        gc.collect()  # the agents' HTTP clients close on this loop, not a later test's
        await asyncio.sleep(0.05)


async def stored(session: BotSessionManager, chat: str, n: int) -> list[Any]:
    """The history once it holds ``n`` entries (a turn is stored just after its reply)."""
    for _ in range(500):
        history = await session.history(USER, platform="discord", chat_id=chat)
        if len(history) >= n:
            return history
        await asyncio.sleep(0.01)
    raise AssertionError(f"history never reached {n} entries")


async def test_a_photo_reaches_the_model_as_an_image_part_and_voice_as_text(
    servers: tuple[FakeDiscord, FakeOpenAI],
) -> None:
    dc, oa = servers
    oa.transcripts[VOICE] = "call mum at six"
    session = BotSessionManager(store="memory://", transcriber=Transcriber("whisper-1"))
    bot = Bot("discord", Agent("a", model="gpt-4o-mini"), session=session)
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        oa.queue(text("A small image."), text("Noted."))
        # attachment only, no text: still answered
        await dc.inject_dm(USER, "", files=[("cat.png", png(), "image/png")])
        await dc.wait_for_messages(1, timeout=15)
        await dc.inject_dm(USER, "", files=[("voice-message.ogg", VOICE, "audio/ogg")], voice=True)
        await dc.wait_for_messages(2, timeout=15)
        history = await stored(session, dc.dm_channel_for(USER), 4)
    finally:
        await bot.stop()
        await task
    assert [m.text for m in dc.sent] == ["A small image.", "Noted."]
    assert dc.cdn_downloads == 2
    photo = oa.requests[0]["messages"][-1]["content"]
    assert photo[0]["text"].startswith("[image: cat.png (image/png")
    assert photo[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert oa.requests[1]["messages"][-1]["content"] == "[voice note] call mum at six"
    users = [e for e in history if e.role == "user"]
    assert [(e.attachments[0].kind, e.attachments[0].name) for e in users] == [
        ("image", "cat.png"), ("voice", "voice-message.ogg")]  # fmt: skip
    assert await session.blobs.get(users[0].attachments[0].blob) == png()


async def test_attachments_normalise_by_content_type(
    servers: tuple[FakeDiscord, FakeOpenAI],
) -> None:
    dc, _ = servers
    got: list[Inbound] = []
    adapter = DiscordAdapter()

    async def on_inbound(msg: Inbound) -> None:
        got.append(msg)

    await adapter.start(on_inbound)
    try:
        await dc.inject_guild_message(dc.general_id, USER, "look", mention_bot=True, files=[
            ("a.jpg", b"\xff\xd8\xff", "image/jpeg"), ("song.mp3", b"ID3", "audio/mpeg"),
            ("clip.mp4", b"\x00", "video/mp4"), ("r.pdf", b"%PDF", "application/pdf"),
            ("noext", b"x", "")])  # fmt: skip
        await dc.inject_dm(USER, "", files=[("v.ogg", VOICE, "audio/ogg")], voice=True)
        await dc.wait_until(lambda: len(got) == 2, 10, "two messages")
        msg = got[0]
        assert msg.text == "look"
        assert [(a.kind, a.mime, a.name) for a in msg.attachments] == [
            ("image", "image/jpeg", "a.jpg"), ("audio", "audio/mpeg", "song.mp3"),
            ("video", "video/mp4", "clip.mp4"), ("file", "application/pdf", "r.pdf"),
            ("file", "", "noext")]  # fmt: skip
        assert msg.attachments[0].size == 3
        assert [a.kind for a in got[1].attachments] == ["voice"] and got[1].text == ""
        assert await adapter.do_download(msg, 3) == b"%PDF"
    finally:
        await adapter.stop()


async def test_an_attachment_url_off_discords_cdn_is_not_fetched(
    servers: tuple[FakeDiscord, FakeOpenAI],
) -> None:
    dc, _ = servers
    got: list[Inbound] = []
    adapter = DiscordAdapter()

    async def on_inbound(msg: Inbound) -> None:
        got.append(msg)

    await adapter.start(on_inbound)
    try:
        sent = await dc.inject_dm(USER, "", files=[("x.txt", b"hello", "text/plain")])
        await dc.wait_until(lambda: len(got) == 1, 10, "the message")
        item = got[0].raw.attachments[0]
        item.url = item.url.replace("127.0.0.1", "169.254.169.254")
        with pytest.raises(BadRequest, match="not Discord's CDN"):
            await adapter.do_download(got[0], 0)
        item.url = "http://cdn.discordapp.com/attachments/1/2/x.txt"  # not https
        with pytest.raises(BadRequest, match="not Discord's CDN"):
            await adapter.do_download(got[0], 0)
        assert dc.cdn_downloads == 0 and sent["attachments"][0]["size"] == 5
    finally:
        await adapter.stop()


async def test_a_file_a_tool_returns_arrives_as_a_discord_attachment(
    servers: tuple[FakeDiscord, FakeOpenAI], tmp_path: Path
) -> None:
    dc, oa = servers
    report = tmp_path / "report.csv"
    report.write_text("month,total\nmay,42\n")

    def make_report() -> list[object]:
        """Build the monthly report."""
        return ["Here it is.", File(report), File(png(), name="chart.png")]

    bot = Bot("discord", Agent("a", tools=[make_report], model="gpt-test"), store="memory://")
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        oa.queue(tool_call("make_report"), text("Sent you the report."))
        await dc.inject_dm(USER, "send me the report")
        files = await dc.wait_for_files(2, timeout=15)
        await dc.wait_for_messages(3, timeout=15)
    finally:
        await bot.stop()
        await task
    assert [(f.filename, f.data) for f in files] == [
        ("report.csv", report.read_bytes()), ("chart.png", png())]  # fmt: skip
    posts = [r for r in dc.requests if r.method == "POST" and r.path.endswith("/messages")]
    assert [p.json["attachments"][0]["filename"] for p in posts if p.json.get("attachments")] == [
        "report.csv", "chart.png"]  # fmt: skip
    assert dc.sent[0].text == "Sent you the report."


async def test_a_file_bigger_than_discord_takes_is_named_not_sent(
    servers: tuple[FakeDiscord, FakeOpenAI],
) -> None:
    dc, _ = servers
    assert DiscordAdapter.max_file_bytes == 10 * 1024 * 1024
    bot = Bot("discord", Agent("a"), store="memory://")
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        channel = dc.dm_channel_for(USER)
        big = File(b"x" * (10 * 1024 * 1024 + 1), name="big.bin")
        await bot.send(channel, "", attachments=[big, File(b"ok", name="small.txt")])
        await dc.wait_for_files(1, timeout=15)
    finally:
        await bot.stop()
        await task
    assert [f.filename for f in dc.sent_files] == ["small.txt"]
    assert dc.sent[0].text == "(I could not send big.bin: it is larger than discord allows.)"
