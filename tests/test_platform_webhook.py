"""The generic ``webhook`` platform through real aiohttp clients and a callback receiver
on 127.0.0.1: signed requests in, replies in the response or POSTed back signed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from helpers import RecordingAgent
from onethread.bots import BotOS
from onethread.errors import ConfigError
from onethread.platforms.delivery import RetryPolicy
from onethread.platforms.ingress import Ingress
from onethread.platforms.webhook import WebhookAdapter, check_callback_url

pytestmark = pytest.mark.timeout(30)

SECRET = "test-webhook-secret-0123456789"
FAST = RetryPolicy(attempts=4, base_delay=0.02, max_delay=0.5)


def signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Receiver:
    """A callback endpoint on 127.0.0.1: records signed POSTs; can fail the first few."""

    def __init__(self) -> None:
        self.posts: list[tuple[bytes, str]] = []
        self.fail_first = 0
        self.attempts = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            return web.Response(status=503)
        self.posts.append((await request.read(), request.headers.get("X-Onethread-Signature", "")))
        return web.Response(text="ok")

    async def wait(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < n:
            assert time.monotonic() < deadline, f"{len(self.posts)} of {n} callbacks"
            await asyncio.sleep(0.02)
        for body, sig in self.posts:
            assert sig == signature(body)  # every callback is signed
        return [json.loads(body) for body, _ in self.posts]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


Serve = Callable[..., Awaitable[BotOS]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    started: list[tuple[BotOS, asyncio.Task[None]]] = []

    async def start(**options: Any) -> BotOS:
        platform = {"secret": SECRET, "retry_policy": FAST, **options}
        botos = BotOS(RecordingAgent(), platforms={"webhook": platform}, store="memory://",
                      http={"port": 0})  # fmt: skip
        task = asyncio.create_task(botos.start())
        started.append((botos, task))
        await asyncio.wait_for(botos.bots["webhook"].ready.wait(), 5)
        return botos

    yield start
    for botos, task in started:
        await botos.stop()
        await task


def url(botos: BotOS) -> str:
    return botos.ingress.url + "webhooks/webhook"


def agent(botos: BotOS) -> RecordingAgent:
    found = botos.agent
    assert isinstance(found, RecordingAgent)
    return found


async def post(
    botos: BotOS, payload: Any, *, secret: str | None = SECRET, raw: bytes | None = None
) -> tuple[int, dict[str, Any], str]:
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Onethread-Signature"] = signature(body, secret)
    async with aiohttp.ClientSession() as http:
        async with http.post(url(botos), data=body, headers=headers) as resp:
            text = await resp.text()
            return resp.status, json.loads(text), resp.headers.get("X-Onethread-Signature", "")


async def test_sync_reply_is_in_the_signed_response(serve: Serve) -> None:
    botos = await serve()
    status, body, sig = await post(
        botos, {"user_id": "u1", "text": "hi", "user_name": "Ada", "chat_id": "t-7"}
    )
    assert status == 200 and body["ok"] and body["reply"] == "reply:hi"
    assert body["replies"] == ["reply:hi"]
    raw = json.dumps(body, ensure_ascii=False).encode()
    assert sig == signature(raw)
    [(_, message, ctx)] = agent(botos).calls
    assert (ctx.platform, ctx.user_id, ctx.user_name, ctx.chat_id) == (
        "webhook",
        "u1",
        "Ada",
        "t-7",
    )


async def test_a_repeated_message_id_is_answered_once(serve: Serve) -> None:
    botos = await serve()
    payload = {"user_id": "u2", "text": "once", "message_id": "evt-1"}
    first = await post(botos, payload)
    again = await post(botos, payload)
    assert first[1]["reply"] == "reply:once"
    assert again[0] == 200 and again[1]["duplicate"] is True and again[1]["reply"] == ""
    assert len(agent(botos).calls) == 1


async def test_sync_timeout_is_a_clear_504(serve: Serve) -> None:
    botos = await serve(reply_timeout=0.3)
    agent(botos).delay = 1.0
    status, body, _ = await post(botos, {"user_id": "u3", "text": "slow"})
    assert status == 504 and body["ok"] is False and "reply_timeout" in body["error"]


async def test_forged_unsigned_and_oversized_start_nothing(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    botos = await serve()
    payload = {"user_id": "u4", "text": "secret-words-31"}
    assert (await post(botos, payload, secret=None))[0] == 401
    assert (await post(botos, payload, secret="not-the-secret"))[0] == 403
    big = json.dumps({**payload, "pad": "x" * 1_100_000}).encode()
    assert (await post(botos, None, raw=big))[0] == 413
    await asyncio.sleep(0.1)
    assert agent(botos).calls == []
    assert "secret-words-31" not in caplog.text


@pytest.mark.parametrize(
    ("raw", "fix"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"text": "hi"}', '"user_id" is missing'),
        (b'{"user_id": "u5"}', '"text" is missing'),
        (b'{"user_id": "u5", "text": 3}', '"text" must be a string'),
        (b'{"user_id": "u5", "text": "hi", "callback_url": "ftp://x/y"}', "http"),
    ],
)
async def test_bad_bodies_are_400_naming_the_fix(serve: Serve, raw: bytes, fix: str) -> None:
    botos = await serve()
    status, body, _ = await post(botos, None, raw=raw)
    assert status == 400 and fix in body["error"]
    assert agent(botos).calls == []


async def test_async_answers_202_then_posts_the_reply(serve: Serve, receiver: Receiver) -> None:
    botos = await serve(mode="async")
    agent(botos).delay = 0.5
    started = time.monotonic()
    payload = {"user_id": "u6", "text": "later", "message_id": "m-6", "callback_url": receiver.url}
    status, body, _ = await post(botos, payload)
    assert status == 202 and body == {"ok": True, "message_id": "m-6"}
    assert time.monotonic() - started < 0.4  # answered before the turn ended
    [callback] = await receiver.wait(1)
    assert callback["text"] == "reply:later" and callback["in_reply_to"] == "m-6"
    assert (callback["type"], callback["chat_id"]) == ("message", "u6")
    # The bot's own messages to that chat go to its last callback URL.
    assert await botos.send_to("webhook", "u6", "a reminder")
    assert (await receiver.wait(2))[1]["text"] == "a reminder"


async def test_async_callbacks_are_retried(serve: Serve, receiver: Receiver) -> None:
    botos = await serve(mode="async", callback_url=receiver.url)
    receiver.fail_first = 2
    status, _, _ = await post(botos, {"user_id": "u7", "text": "retry me"})
    assert status == 202
    [callback] = await receiver.wait(1)
    assert callback["text"] == "reply:retry me" and receiver.attempts == 3


async def test_callback_hosts_allowlist(serve: Serve, receiver: Receiver) -> None:
    botos = await serve(mode="async", callback_hosts=["hooks.example.com"])
    payload = {"user_id": "u8", "text": "x", "callback_url": receiver.url}
    status, body, _ = await post(botos, payload)
    assert status == 400 and "callback_hosts" in body["error"]
    status, body, _ = await post(botos, {"user_id": "u8", "text": "x"})
    assert status == 400 and "callback_url" in body["error"]
    assert agent(botos).calls == []
    allowed = await serve(mode="async", callback_hosts=["127.0.0.1"])
    assert (await post(allowed, payload))[0] == 202
    await receiver.wait(1)


def test_check_callback_url() -> None:
    assert check_callback_url("https://hooks.example.com/x") is None
    assert check_callback_url("http://127.0.0.1:9/x") is None
    for bad in ("ftp://h/x", "/relative", "https://user:pw@h/x", "http://[::1"):
        assert check_callback_url(bad) is not None, bad
    hosts = ["*.example.com", "hooks.example.org:8443"]
    assert check_callback_url("https://a.example.com/x", hosts) is None
    assert check_callback_url("https://hooks.example.org:8443/x", hosts) is None
    assert check_callback_url("https://hooks.example.org/x", hosts) is not None
    assert check_callback_url("https://example.com.evil.net/x", hosts) is not None


async def test_start_needs_a_secret_and_the_server() -> None:
    async def on_inbound(msg: Any) -> None:
        return None

    adapter = WebhookAdapter()
    adapter.ingress = Ingress(port=0)
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        await adapter.start(on_inbound)
    with pytest.raises(ConfigError, match="HTTP server"):
        await WebhookAdapter(secret="s").start(on_inbound)
    with pytest.raises(ConfigError, match="mode"):
        WebhookAdapter(secret="s", mode="later")
    with pytest.raises(ConfigError, match="callback_url"):
        WebhookAdapter(secret="s", callback_url="file:///etc/passwd")
    assert [k for k, _ in WebhookAdapter.check_options({"mode": "x"}, {})] == ["mode"]
    [(key, short)] = WebhookAdapter.check_options({}, {"WEBHOOK_SECRET": "x"})
    assert key == "secret" and "WEBHOOK_SECRET is too short (1 characters)" in short
    assert "openssl rand -hex 32" in short
    assert WebhookAdapter.check_options({}, {"WEBHOOK_SECRET": SECRET}) == []
