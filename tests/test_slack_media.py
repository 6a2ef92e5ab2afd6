"""Files on Slack, through slack-bolt / slack-sdk and the fake.

A ``file_share`` message's files are fetched from ``url_private_download``
with the bot token as Bearer (the fake serves the bytes only then, and
Slack's sign-in page otherwise); files the bot sends go through slack-sdk's
``files_upload_v2``: ``files.getUploadURLExternal``, the upload POST and
``files.completeUploadExternal``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fake_openai import FakeOpenAI, text, tool_call
from fake_slack import FakeSlack
from onethread import Agent, File
from onethread.bots import Bot, BotSessionManager
from onethread.errors import BadRequest, PlatformAuthError
from onethread.platforms.base import Inbound
from onethread.platforms.slack import SlackAdapter, normalize_event
from test_blobs import png

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
USER = "U0ALICE"


@pytest.fixture
async def servers(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[FakeSlack, FakeOpenAI]]:
    async with FakeOpenAI() as oa, FakeSlack() as sl:
        for name, value in {**sl.env(), "OPENAI_BASE_URL": oa.base_url,
                            "OPENAI_API_KEY": "sk-test"}.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        yield sl, oa
        gc.collect()  # the agents' HTTP clients close on this loop, not a later test's
        await asyncio.sleep(0.05)


async def stored(session: BotSessionManager, chat: str, n: int) -> list[Any]:
    """The history once it holds ``n`` entries (a turn is stored just after its reply)."""
    for _ in range(500):
        history = await session.history(USER, platform="slack", chat_id=chat)
        if len(history) >= n:
            return history
        await asyncio.sleep(0.01)
    raise AssertionError(f"history never reached {n} entries")


async def test_a_pdf_is_downloaded_with_the_bot_token_and_described_to_the_model(
    servers: tuple[FakeSlack, FakeOpenAI],
) -> None:
    sl, oa = servers
    session = BotSessionManager(store="memory://")
    bot = Bot("slack", Agent("a", model="gpt-test"), session=session)
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        oa.queue(text("A one-page PDF."))
        await sl.inject_dm(USER, "", files=[("report.pdf", PDF, "application/pdf")])
        await sl.wait_for_messages(1, timeout=15)
        history = await stored(session, sl.dm_channel_for(USER), 2)
    finally:
        await bot.stop()
        await task
    assert [m.text for m in sl.sent] == ["A one-page PDF."]
    assert [ok for _, ok in sl.private_downloads] == [True]
    seen = oa.requests[0]["messages"][-1]["content"]
    assert "report.pdf" in seen and "application/pdf" in seen
    [pdf] = history[0].attachments
    assert (pdf.kind, pdf.name, pdf.mime, pdf.size) == ("file", "report.pdf", "application/pdf",
                                                        len(PDF))  # fmt: skip
    assert await session.blobs.get(pdf.blob) == PDF


def test_files_normalise_by_mimetype_and_tombstones_are_skipped() -> None:
    event = {
        "type": "message", "subtype": "file_share", "channel": "D1", "user": USER,
        "ts": "1.000001", "text": "", "channel_type": "im",
        "files": [
            {"id": "F1", "name": "a.png", "mimetype": "image/png", "size": 5,
             "url_private_download": "https://files.slack.com/a"},
            {"id": "F2", "mode": "tombstone"},
            {"id": "F3", "name": "clip.m4a", "mimetype": "audio/mp4", "size": 9,
             "url_private_download": "https://files.slack.com/c"},
            {"id": "F4", "name": "n.txt", "mimetype": "text/plain",
             "url_private_download": "https://files.slack.com/n"},
            {"id": "F5", "name": "v.mp4", "mimetype": "video/mp4", "size": 1,
             "url_private_download": "https://files.slack.com/v"},
        ],
    }  # fmt: skip
    msg = normalize_event(event, bot_user_id="U0BOT")
    assert msg is not None and msg.text == ""
    assert [(a.kind, a.name, a.size) for a in msg.attachments] == [
        ("image", "a.png", 5), ("audio", "clip.m4a", 9), ("file", "n.txt", 0),
        ("video", "v.mp4", 1)]  # fmt: skip


async def _adapter_with_one_file(
    sl: FakeSlack, files: list[tuple[str, bytes, str]]
) -> tuple[SlackAdapter, list[Inbound]]:
    got: list[Inbound] = []

    async def on_inbound(msg: Inbound) -> None:
        got.append(msg)

    adapter = SlackAdapter()
    await adapter.start(on_inbound)
    await sl.inject_dm(USER, "see", files=files)
    await sl.wait_until(lambda: len(got) == 1, 10, "the message")
    return adapter, got


async def test_without_the_token_slack_sends_its_sign_in_page_which_is_refused(
    servers: tuple[FakeSlack, FakeOpenAI],
) -> None:
    sl, _ = servers
    adapter, got = await _adapter_with_one_file(sl, [("r.pdf", PDF, "application/pdf")])
    try:
        adapter._token = "xoxb-1-not-this-bot"
        with pytest.raises(PlatformAuthError, match="files:read"):
            await adapter.do_download(got[0], 0)
        assert sl.private_downloads == [(sl.private_downloads[0][0], False)]
    finally:
        await adapter.stop()


async def test_a_file_url_off_slack_is_not_fetched(servers: tuple[FakeSlack, FakeOpenAI]) -> None:
    sl, _ = servers
    adapter, got = await _adapter_with_one_file(sl, [("r.pdf", PDF, "application/pdf")])
    try:
        raw = dict(got[0].raw)
        raw["files"] = [dict(raw["files"][0], url_private_download="http://10.0.0.1/x")]
        moved = dataclasses.replace(got[0], raw=raw)
        with pytest.raises(BadRequest, match="not Slack's"):
            await adapter.do_download(moved, 0)
        plain = dict(raw["files"][0], url_private_download="http://files.slack.com/x")
        with pytest.raises(BadRequest, match="not Slack's"):  # the token never goes in clear
            await adapter.do_download(dataclasses.replace(got[0], raw={**raw, "files": [plain]}), 0)
        assert sl.private_downloads == []
    finally:
        await adapter.stop()


async def test_a_file_a_tool_returns_arrives_as_a_slack_file(
    servers: tuple[FakeSlack, FakeOpenAI], tmp_path: Path
) -> None:
    sl, oa = servers
    report = tmp_path / "report.csv"
    report.write_text("month,total\nmay,42\n")

    def make_report() -> list[object]:
        """Build the monthly report."""
        return ["Here it is.", File(report), File(png(), name="chart.png")]

    bot = Bot("slack", Agent("a", tools=[make_report], model="gpt-test"), store="memory://")
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        oa.queue(tool_call("make_report"), text("Sent you the report."))
        await sl.inject_channel_message(sl.general_id, USER, "report please", mention=True)
        files = await sl.wait_for_files(2, timeout=15)
        await sl.wait_for_messages(1, timeout=15)
    finally:
        await bot.stop()
        await task
    assert [(f.filename, f.data, f.chat_id) for f in files] == [
        ("report.csv", report.read_bytes(), sl.general_id),
        ("chart.png", png(), sl.general_id)]  # fmt: skip
    assert files[0].thread_id == sl.sent[0].thread_id != ""  # in the mention's thread
    methods = [r.method for r in sl.requests if r.method.startswith("files.")]
    assert methods == ["files.getUploadURLExternal", "files.completeUploadExternal"] * 2


async def test_a_file_bigger_than_slack_takes_is_named_not_sent(
    servers: tuple[FakeSlack, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    sl, _ = servers
    assert SlackAdapter.max_file_bytes == 1_000_000_000
    monkeypatch.setattr(SlackAdapter, "max_file_bytes", 100)
    bot = Bot("slack", Agent("a"), store="memory://")
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        channel = sl.dm_channel_for(USER)
        await bot.send(channel, "", attachments=[File(b"x" * 101, name="big.bin"),
                                                 File(b"ok", name="small.txt")])  # fmt: skip
        await sl.wait_for_files(1, timeout=15)
        await sl.wait_for_messages(1, timeout=15)
    finally:
        await bot.stop()
        await task
    assert [f.filename for f in sl.sent_files] == ["small.txt"]
    assert sl.sent[0].text == "(I could not send big.bin: it is larger than slack allows.)"
