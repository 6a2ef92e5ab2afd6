"""The web platform through its real HTTP/WebSocket protocol, with aiohttp's client.

A real ``Bot("web", ...)`` serves on 127.0.0.1 (a free port); the tests speak
the JSON frames of ``onethread.platforms.web_protocol`` as the page does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from helpers import RecordingAgent
from onethread.bots import Bot
from onethread.errors import BadRequest, ConfigError, PlatformUnavailable
from onethread.platforms.base import Inbound
from onethread.platforms.web import TOKEN_ENV, WebAdapter, attach_history, is_loopback
from onethread.platforms.web_protocol import (
    MAX_TEXT_LENGTH,
    Outbox,
    ProtocolError,
    clean_name,
    parse_client_frame,
    user_for_chat,
)

# -- a client that speaks the page's protocol ---------------------------------


class Tab:
    """One browser tab's socket: read frames by type, keep the rest for later."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    async def _next(self, timeout: float) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"socket ended: {msg.type!r}")
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def expect(self, kind: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """The first frame of type ``kind`` (matching ``match``), kept or arriving in time."""
        for i, frame in enumerate(self.frames):
            if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
                return self.frames.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            frame = await self._next(max(0.01, deadline - time.monotonic()))
            if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
                return frame
            self.frames.append(frame)

    async def quiet(self, seconds: float = 0.2) -> list[dict[str, Any]]:
        """Every frame that arrives within ``seconds`` (plus those kept)."""
        with_kept, self.frames = self.frames, []
        try:
            while True:
                with_kept.append(await self._next(seconds))
        except (TimeoutError, ConnectionError):
            return with_kept

    async def say(self, text: str, message_id: str | None = None) -> str:
        message_id = message_id or uuid.uuid4().hex
        await self.ws.send_json({"type": "message", "id": message_id, "text": text})
        return message_id

    async def reply(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next bot message, acked as the page does."""
        frame = await self.expect("message", timeout, role="assistant")
        await self.ws.send_json({"type": "ack", "id": frame["id"]})
        return frame


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def serve(bot: Bot) -> asyncio.Task[None]:
    task = asyncio.create_task(bot.start())
    await asyncio.wait_for(bot.ready.wait(), 5)
    return task


@pytest.fixture
async def bot() -> AsyncIterator[Bot]:
    b = Bot("web", RecordingAgent(), store="memory://", port=0)
    attach_history(b)
    task = await serve(b)
    yield b
    await b.stop()
    await task


def web(bot: Bot) -> WebAdapter:
    assert isinstance(bot.adapter, WebAdapter)
    return bot.adapter


def agent(bot: Bot) -> RecordingAgent:
    assert isinstance(bot.agent, RecordingAgent)
    return bot.agent


async def open_tab(
    http: aiohttp.ClientSession,
    bot: Bot,
    user: str = "u1",
    name: str = "Alice",
    *,
    history: bool = True,
    **params: str,
) -> Tab:
    query = {"user": user, "name": name, "history": "1" if history else "0", **params}
    tab = Tab(await http.ws_connect(web(bot).url + "ws", params=query))
    hello = await tab.expect("hello")
    assert hello == {"type": "hello", "user": user, "name": name}
    if history:
        await tab.expect("history")
    return tab


def turn_done(bot: Bot) -> asyncio.Queue[str]:
    """A queue that gets each finished turn's reply (after it was sent)."""
    done: asyncio.Queue[str] = asyncio.Queue()

    async def on_turn(msg: Inbound, reply: str) -> None:
        done.put_nowait(reply)

    bot.on_turn = on_turn
    return done


# -- the conversation -----------------------------------------------------------


async def test_message_is_acked_and_answered(bot: Bot, http: aiohttp.ClientSession) -> None:
    tab = await open_tab(http, bot)
    mid = await tab.say("hello")
    assert await tab.expect("ack") == {"type": "ack", "id": mid}
    reply = await tab.reply()
    assert reply["text"] == "reply:hello"
    assert reply["format"] == "markdown" and reply["id"]
    [(_, message, ctx)] = agent(bot).calls
    assert message.content == "hello"
    assert (ctx.platform, ctx.chat_id, ctx.chat_type) == ("web", "web-u1", "dm")
    assert (ctx.user_id, ctx.user_name, ctx.message_id) == ("u1", "Alice", mid)


async def test_typing_shows_while_the_agent_works(bot: Bot, http: aiohttp.ClientSession) -> None:
    agent(bot).delay = 0.3
    tab = await open_tab(http, bot)
    await tab.say("slow one")
    await tab.expect("typing")
    assert (await tab.reply())["text"] == "reply:slow one"


async def test_two_users_are_isolated(bot: Bot, http: aiohttp.ClientSession) -> None:
    alice = await open_tab(http, bot, "alice", "Alice")
    bob = await open_tab(http, bot, "bob", "Bob")
    await alice.say("from alice")
    await bob.say("from bob")
    assert (await alice.reply())["text"] == "reply:from alice"
    assert (await bob.reply())["text"] == "reply:from bob"
    for tab, other in ((alice, "bob"), (bob, "alice")):
        texts = [f.get("text", "") for f in await tab.quiet()]
        assert not any(other in t for t in texts)
    # separate sessions: neither saw the other's message as history
    assert all(not history for history, _, _ in agent(bot).calls)


async def test_every_tab_of_a_user_gets_the_reply(bot: Bot, http: aiohttp.ClientSession) -> None:
    first = await open_tab(http, bot)
    second = await open_tab(http, bot)
    mid = await first.say("hi from tab one")
    echo = await second.expect("message", role="user")
    assert (echo["id"], echo["text"]) == (mid, "hi from tab one")
    one, two = await first.reply(), await second.reply()
    assert one["id"] == two["id"] and one["text"] == "reply:hi from tab one"


async def test_commands_work_over_the_web(bot: Bot, http: aiohttp.ClientSession) -> None:
    tab = await open_tab(http, bot, "w42", "Wendy")
    await tab.say("/whoami")
    reply = await tab.reply()
    assert "Wendy" in reply["text"] and "w42" in reply["text"]
    assert agent(bot).calls == []


# -- reconnecting without losing messages ----------------------------------------


async def test_reply_pending_at_a_drop_arrives_after_reconnect(
    bot: Bot, http: aiohttp.ClientSession
) -> None:
    done = turn_done(bot)
    agent(bot).delay = 0.3
    tab = await open_tab(http, bot)
    mid = await tab.say("are you there?")
    await tab.expect("ack", id=mid)
    await tab.ws.close()  # dropped before the reply exists
    assert await asyncio.wait_for(done.get(), 5) == "reply:are you there?"

    again = await open_tab(http, bot, history=False)
    reply = await again.reply()
    assert reply["text"] == "reply:are you there?"
    await again.ws.close()
    # acked: not replayed a second time
    third = await open_tab(http, bot, history=False)
    assert [f for f in await third.quiet() if f["type"] == "message"] == []


async def test_unacked_reply_is_replayed_until_acked(bot: Bot, http: aiohttp.ClientSession) -> None:
    tab = await open_tab(http, bot)
    await tab.say("one")
    first = await tab.expect("message", role="assistant")  # seen but not acked
    await tab.ws.close()
    again = await open_tab(http, bot, history=False)
    replayed = await again.reply()
    assert replayed["id"] == first["id"]  # same id: the page shows it once


async def test_resent_message_is_answered_once(bot: Bot, http: aiohttp.ClientSession) -> None:
    tab = await open_tab(http, bot)
    mid = await tab.say("only once")
    await tab.expect("ack", id=mid)
    await tab.ws.close()
    again = await open_tab(http, bot, history=False)
    await again.say("only once", mid)  # the page resends what it had no ack for
    await again.expect("ack", id=mid)
    replies = [await again.reply()]
    replies += [f for f in await again.quiet(0.3) if f.get("role") == "assistant"]
    assert [r["text"] for r in replies] == ["reply:only once"]
    assert len(agent(bot).calls) == 1


async def test_history_is_sent_on_page_load(bot: Bot, http: aiohttp.ClientSession) -> None:
    tab = await open_tab(http, bot)
    await tab.say("remember me")
    await tab.reply()
    await tab.ws.close()
    tab = Tab(await http.ws_connect(web(bot).url + "ws", params={"user": "u1", "name": "A"}))
    history = await tab.expect("history")
    assert [(m["role"], m["text"], m["platform"]) for m in history["messages"]] == [
        ("user", "remember me", "web"),
        ("assistant", "reply:remember me", "web"),
    ]
    assert all(isinstance(m["ts"], float) for m in history["messages"])
    other = await open_tab(http, bot, "someone-else")
    assert other.frames == []  # empty history for a new visitor (checked in open_tab)


async def test_reply_in_the_history_is_not_replayed_too(
    bot: Bot, http: aiohttp.ClientSession
) -> None:
    tab = await open_tab(http, bot)
    await tab.say("hi")
    await tab.expect("message", role="assistant")  # never acked: the tab was reloaded
    await tab.ws.close()
    reloaded = Tab(await http.ws_connect(web(bot).url + "ws", params={"user": "u1"}))
    history = await reloaded.expect("history")
    assert [m["text"] for m in history["messages"]] == ["hi", "reply:hi"]
    assert [f for f in await reloaded.quiet() if f["type"] == "message"] == []


async def test_send_to_an_offline_user_is_kept(bot: Bot, http: aiohttp.ClientSession) -> None:
    [mid] = await bot.send("web-later", "a reminder")
    tab = await open_tab(http, bot, "later")
    reply = await tab.reply()
    assert (reply["id"], reply["text"]) == (mid, "a reminder")
    with pytest.raises(BadRequest):
        await bot.send("telegram-123", "wrong platform")


async def test_history_failure_is_reported_not_fatal(bot: Bot, http: aiohttp.ClientSession) -> None:
    async def broken(user_id: str) -> list[dict[str, Any]]:
        raise RuntimeError("store down")

    web(bot).history_provider = broken
    tab = Tab(await http.ws_connect(web(bot).url + "ws", params={"user": "u1"}))
    assert (await tab.expect("error"))["error"] == "history is unavailable"
    await tab.say("still works")
    assert (await tab.reply())["text"] == "reply:still works"


# -- malformed frames -------------------------------------------------------------


async def test_bad_frames_get_an_error(bot: Bot, http: aiohttp.ClientSession) -> None:
    tab = await open_tab(http, bot)
    await tab.ws.send_str("not json")
    assert "JSON" in (await tab.expect("error"))["error"]
    await tab.ws.send_json({"type": "message", "id": "m1", "text": "  "})
    assert (await tab.expect("error"))["id"] == "m1"
    await tab.ws.send_json({"type": "message", "id": "m2", "text": "x" * (MAX_TEXT_LENGTH + 1)})
    assert "too long" in (await tab.expect("error", id="m2"))["error"]
    await tab.ws.send_json({"type": "ping"})
    await tab.expect("pong")
    assert agent(bot).calls == []


@pytest.mark.parametrize("user", ["", "a b", "x" * 129, "../etc"])
async def test_bad_user_id_is_refused(bot: Bot, http: aiohttp.ClientSession, user: str) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(web(bot).url + "ws", params={"user": user})
    assert err.value.status == 400


# -- HTTP: page, assets, headers ---------------------------------------------------


async def test_page_and_assets_are_served(bot: Bot, http: aiohttp.ClientSession) -> None:
    url = web(bot).url
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html" and resp.charset == "utf-8"
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        page = await resp.text()
    assert 'src="static/app.js"' in page and "http" not in page.split("<body>")[0]
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        async with http.get(url + "static/" + name) as resp:
            assert (resp.status, resp.content_type) == (200, kind)
            assert len(await resp.read()) > 500
    for missing in ("static/nope.js", "static/index.html", "static/..%2fweb.py", "nope"):
        async with http.get(url + missing) as resp:
            assert resp.status == 404, missing
    async with http.get(url + "healthz") as resp:
        assert (resp.status, await resp.text()) == (200, "ok")


async def test_cross_origin_socket_is_refused(bot: Bot, http: aiohttp.ClientSession) -> None:
    url = web(bot).url + "ws?user=u1"
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(url, headers={"Origin": "http://evil.example"})
    assert err.value.status == 403
    same = f"http://127.0.0.1:{web(bot).port}"
    ws = await http.ws_connect(url, headers={"Origin": same})
    await ws.close()


# -- access token ----------------------------------------------------------------------


def test_public_host_needs_an_access_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match="access_token") as err:
        WebAdapter(host="0.0.0.0")
    assert TOKEN_ENV in str(err.value)
    with pytest.raises(ConfigError):
        Bot("web", RecordingAgent(), store="memory://", host="192.168.1.5")
    assert WebAdapter(host="0.0.0.0", access_token="s3cret").access_token == "s3cret"
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert WebAdapter(host="::").access_token == "from-env"
    with pytest.raises(ConfigError, match="port"):
        WebAdapter(port=70000)


def test_loopback_hosts() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "", "10.0.0.1", "example.com"]))


async def test_access_token_guards_page_and_socket(http: aiohttp.ClientSession) -> None:
    bot = Bot("web", RecordingAgent(), store="memory://", port=0, access_token="s3cret")
    task = await serve(bot)
    try:
        url = web(bot).url
        for query in ("", "?token=wrong"):
            async with http.get(url + query) as resp:
                assert resp.status == 401
        async with http.get(url + "healthz") as resp:
            assert resp.status == 200
        for params in ({"user": "u1"}, {"user": "u1", "token": "nope"}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(url + "ws", params=params)
            assert err.value.status == 401
        ws = await http.ws_connect(url + "ws", headers={"Authorization": "Bearer s3cret"},
                                   params={"user": "u1"})  # fmt: skip
        await ws.close()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(url + "?token=s3cret") as resp:
                assert resp.status == 200
            async with browser.get(url) as resp:  # the cookie carries it now
                assert resp.status == 200
            tab = Tab(await browser.ws_connect(url + "ws", params={"user": "u1", "name": "A"}))
            await tab.expect("history")
            await tab.say("let me in")
            assert (await tab.reply())["text"] == "reply:let me in"
    finally:
        await bot.stop()
        await task


# -- lifecycle --------------------------------------------------------------------------


async def test_stop_closes_sockets_promptly(http: aiohttp.ClientSession) -> None:
    bot = Bot("web", RecordingAgent(), store="memory://", port=0)
    task = await serve(bot)
    tab = await open_tab(http, bot)
    started = time.monotonic()
    await bot.stop()
    await task
    assert time.monotonic() - started < 3
    msg = await tab.ws.receive(timeout=2)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(web(bot).url + "healthz")


async def test_busy_port_is_a_retryable_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        adapter = WebAdapter(port=taken.getsockname()[1])

        async def ignore(msg: Inbound) -> None:
            return None

        with pytest.raises(PlatformUnavailable, match="cannot listen"):
            await adapter.start(ignore)
        await adapter.stop()


def test_attach_history_needs_a_web_bot() -> None:
    from onethread._fake_adapter import FakeAdapter

    bot = Bot("web", RecordingAgent(), store="memory://", adapter=FakeAdapter("web"))
    with pytest.raises(TypeError, match="web bot"):
        attach_history(bot)


# -- the protocol's pure parts ----------------------------------------------------------


def test_parse_client_frames() -> None:
    assert parse_client_frame('{"type":"ping"}').type == "ping"
    ack = parse_client_frame('{"type":"ack","id":"abc"}')
    assert (ack.type, ack.id) == ("ack", "abc")
    msg = parse_client_frame('{"type":"message","id":"m-1","text":"hi"}')
    assert (msg.type, msg.id, msg.text) == ("message", "m-1", "hi")
    bad = ["[]", "{}", '{"type":"boom"}', '{"type":"ack"}', '{"type":"ack","id":"a b"}',
           '{"type":"message","id":"m","text":5}']  # fmt: skip
    for raw in bad:
        with pytest.raises(ProtocolError):
            parse_client_frame(raw)


def test_outbox_is_bounded_and_acked() -> None:
    box = Outbox(per_user=2, max_users=2)
    for i in range(3):
        box.add("a", {"id": f"m{i}", "text": f"t{i}"})
    assert [p["id"] for p in box.pending("a")] == ["m1", "m2"]
    assert box.ack("a", "m1") and not box.ack("a", "m1")
    box.add("b", {"id": "x", "text": "t"})
    box.add("c", {"id": "y", "text": "t"})  # "a" was least recently used
    assert box.pending("a") == []
    assert box.discard_texts("c", ["t"]) == 1 and box.pending("c") == []


def test_names_and_chat_ids() -> None:
    assert clean_name("  Ada\x00 Lovelace\n ") == "Ada Lovelace"
    assert clean_name("\x07") == "guest" and len(clean_name("n" * 500)) == 64
    assert user_for_chat("web-abc") == "abc"
    assert user_for_chat("web-") is None and user_for_chat("console-me") is None


async def test_dns_rebinding_host_refused_without_a_token() -> None:
    """No access token means loopback only: a page served under another Host is refused."""
    import aiohttp

    from onethread.platforms.web import WebAdapter

    adapter = WebAdapter(port=0)

    async def on_inbound(msg: object) -> None:
        return None

    await adapter.start(on_inbound)  # type: ignore[arg-type]
    try:
        async with aiohttp.ClientSession() as http:
            ok = await http.get(f"http://127.0.0.1:{adapter.port}/", headers={})
            bad = await http.get(
                f"http://127.0.0.1:{adapter.port}/",
                headers={"Host": f"evil.example:{adapter.port}"},
            )
            assert ok.status == 200
            assert bad.status == 401
    finally:
        await adapter.stop()


def test_side_log_is_bounded_and_merges_in_time_order() -> None:
    from onethread.platforms.web_protocol import SideLog

    log = SideLog(per_user=3, max_users=2)
    log.add("a", {"text": "c1", "ts": 2.0}, {"text": "r1", "ts": 2.0})
    log.add("a", {"text": "c2", "ts": 4.0}, {"text": "r2", "ts": 4.0})
    assert [m["text"] for m in log.messages("a")] == ["r1", "c2", "r2"]  # oldest dropped
    history = [{"text": "h1", "ts": 1.0}, {"text": "h2", "ts": 3.0}, {"text": "h3", "ts": 5.0}]
    merged = log.merge("a", history)
    assert [m["text"] for m in merged] == ["h1", "r1", "h2", "c2", "r2", "h3"]
    assert log.merge("nobody", history) is history
    log.add("b", {"text": "x", "ts": 1.0})
    log.add("c", {"text": "y", "ts": 1.0})  # a third user: the least recent ("a") goes
    assert log.messages("a") == [] and log.messages("c") != []
    with pytest.raises(ValueError):
        SideLog(per_user=0)
