"""Files in the web chat over HTTP and the socket (no browser): upload limits,
owner-only serving, the message frame naming uploads, files the bot sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from helpers import RecordingAgent
from onethread import File
from onethread.bots import Bot
from onethread.platforms.web import WebAdapter
from onethread.platforms.web_protocol import ProtocolError, parse_client_frame
from test_blobs import png

SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


@pytest.fixture
async def bot() -> AsyncIterator[Bot]:
    b = Bot("web", RecordingAgent(), store="memory://", port=0, max_upload_bytes=1000)
    task = asyncio.create_task(b.start())
    await asyncio.wait_for(b.ready.wait(), 5)
    yield b
    await b.stop()
    await task


def base(bot: Bot) -> str:
    assert isinstance(bot.adapter, WebAdapter)
    return bot.adapter.url


async def upload(http: aiohttp.ClientSession, bot: Bot, user: str, data: bytes,
                 name: str = "f") -> aiohttp.ClientResponse:  # fmt: skip
    return await http.post(f"{base(bot)}files", params={"user": user, "name": name}, data=data)


async def test_an_upload_is_served_to_its_owner_only(bot: Bot) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await upload(http, bot, "alice", png(), "../../etc/cat.png")
        assert resp.status == 200
        info = await resp.json()
        assert (info["kind"], info["mime"], info["size"]) == ("image", "image/png", len(png()))
        assert info["name"] == "....etccat.png"  # separators gone: a name is never a path
        url = f"{base(bot)}files/{info['file']}"
        mine = await http.get(url, params={"user": "alice"})
        assert mine.status == 200 and await mine.read() == png()
        assert mine.headers["Content-Type"] == "image/png"
        assert mine.headers["Content-Disposition"].startswith("inline")
        for other in ({"user": "mallory"}, {}):
            assert (await http.get(url, params=other)).status in (404, 400)
        assert (await http.get(url, params={"user": "mallory"})).status == 404
        assert (await http.get(f"{base(bot)}files/", params={"user": "alice"})).status == 404
        bad = await http.get(f"{base(bot)}files/sha256:{info['file']}", params={"user": "alice"})
        assert bad.status == 404


async def test_uploads_are_size_capped_and_svg_downloads(bot: Bot) -> None:
    async with aiohttp.ClientSession() as http:
        assert (await upload(http, bot, "alice", b"x" * 1001)).status == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            for _ in range(3):
                yield b"y" * 400

        resp = await http.post(f"{base(bot)}files", params={"user": "alice"}, data=chunks())
        assert resp.status == 413
        assert (await upload(http, bot, "alice", b"")).status == 400
        info = await (await upload(http, bot, "alice", SVG, "x.svg")).json()
        got = await http.get(f"{base(bot)}files/{info['file']}", params={"user": "alice"})
        assert got.headers["Content-Disposition"].startswith("attachment")
        assert got.headers["Content-Type"] == "application/octet-stream"


async def test_a_message_names_its_upload_and_the_bot_gets_the_attachment(bot: Bot) -> None:
    agent = bot.agent
    assert isinstance(agent, RecordingAgent)
    async with aiohttp.ClientSession() as http:
        info = await (await upload(http, bot, "alice", b"month,total\nmay,42\n", "r.csv")).json()
        ws = await http.ws_connect(f"{base(bot)}ws", params={"user": "alice", "name": "A"})
        await ws.receive_json()  # hello
        await ws.receive_json()  # history
        await ws.send_json({"type": "message", "id": "m1", "text": "",
                            "attachments": [{"file": info["file"]}]})  # fmt: skip
        frames: list[dict[str, Any]] = []
        while not any(f.get("type") == "message" for f in frames):
            frames.append(await asyncio.wait_for(ws.receive_json(), 10))
        # Another browser cannot send someone else's upload.
        ws2 = await http.ws_connect(f"{base(bot)}ws", params={"user": "mallory", "name": "M"})
        await ws2.receive_json()
        await ws2.receive_json()
        await ws2.send_json({"type": "message", "id": "m2", "text": "",
                             "attachments": [{"file": info["file"]}]})  # fmt: skip
        refused = await asyncio.wait_for(ws2.receive_json(), 10)
        await ws.close()
        await ws2.close()
    assert refused["type"] == "error" and refused["id"] == "m2"
    assert "attach it again" in refused["error"]
    [(_, message, _)] = agent.calls
    assert [(a.name, a.mime) for a in message.attachments] == [("r.csv", "text/plain")]


async def test_files_the_bot_sends_reach_the_page_and_the_history(bot: Bot) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{base(bot)}ws", params={"user": "bob", "name": "B"})
        await ws.receive_json()
        await ws.receive_json()
        await bot.send("web-bob", "", attachments=[File(b"%PDF-1.4 x", name="inv.pdf")])
        frame = await asyncio.wait_for(ws.receive_json(), 10)
        await ws.send_json({"type": "ack", "id": frame["id"]})
        [f] = frame["attachments"]
        assert (f["name"], f["mime"], f["kind"]) == ("inv.pdf", "application/pdf", "file")
        got = await http.get(f"{base(bot)}files/{f['file']}", params={"user": "bob"})
        assert await got.read() == b"%PDF-1.4 x"
        assert (await http.get(f"{base(bot)}files/{f['file']}",
                               params={"user": "alice"})).status == 404  # fmt: skip
        await ws.close()


def test_message_frames_with_attachments() -> None:
    hexa = "a" * 64
    frame = parse_client_frame(f'{{"type":"message","id":"m","attachments":[{{"file":"{hexa}"}}]}}')
    assert frame.files == (hexa,) and frame.text == ""
    for bad in ('[{"file":"../x"}]', '[{"file":"' + "A" * 64 + '"}]', '"x"',
                "[" + ",".join(['{"file":"' + hexa + '"}'] * 11) + "]"):  # fmt: skip
        with pytest.raises(ProtocolError):
            parse_client_frame(f'{{"type":"message","id":"m","text":"t","attachments":{bad}}}')
    with pytest.raises(ProtocolError):
        parse_client_frame('{"type":"message","id":"m","text":" ","attachments":[]}')


async def test_after_a_restart_the_files_a_page_is_shown_are_its_own_again(bot: Bot) -> None:
    assert isinstance(bot.adapter, WebAdapter)
    agent = bot.agent
    assert isinstance(agent, RecordingAgent)
    async with aiohttp.ClientSession() as http:
        info = await (await upload(http, bot, "carol", png(), "p.png")).json()
        ws = await http.ws_connect(f"{base(bot)}ws", params={"user": "carol", "name": "C"})
        await ws.receive_json()
        await ws.receive_json()
        await ws.send_json({"type": "message", "id": "m1", "text": "look",
                            "attachments": [{"file": info["file"]}]})  # fmt: skip
        while not agent.calls:
            await asyncio.wait_for(ws.receive_json(), 10)
        await ws.close()
        url = f"{base(bot)}files/{info['file']}"
        for _ in range(100):  # the turn is stored just after the reply
            if await bot.session.history("carol", platform="web", chat_id="web-carol"):
                break
            await asyncio.sleep(0.02)
        bot.adapter.files._owned.clear()  # what a restart forgets
        assert (await http.get(url, params={"user": "carol"})).status == 404
        ws = await http.ws_connect(f"{base(bot)}ws", params={"user": "carol", "name": "C"})
        await ws.receive_json()
        history = await ws.receive_json()
        await ws.close()
        assert history["messages"][0]["attachments"][0]["file"] == info["file"]
        assert (await http.get(url, params={"user": "carol"})).status == 200
        assert (await http.get(url, params={"user": "mallory"})).status == 404
