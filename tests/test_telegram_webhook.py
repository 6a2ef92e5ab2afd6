"""Telegram ``mode: webhook``: the real python-telegram-bot against the fake Bot API server,
which registers the webhook and POSTs updates to the bot's HTTP server as Telegram does.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fake_telegram import FakeTelegram, message_update
from helpers import RecordingAgent
from onethread.bots import BotOS
from onethread.errors import BadRequest, ConfigError
from onethread.platforms.ingress import Ingress
from onethread.platforms.telegram import TelegramAdapter
from onethread.platforms.telegram_webhook import SECRET_HEADER, derive_secret

pytestmark = pytest.mark.timeout(30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram(local=True)  # a local Bot API server takes http:// webhooks
    await server.start()
    yield server
    await server.stop()


class Running:
    def __init__(self, botos: BotOS, task: asyncio.Task[None]) -> None:
        self.botos = botos
        self.task = task

    @property
    def url(self) -> str:
        return self.botos.ingress.url + "webhooks/telegram"

    @property
    def agent(self) -> RecordingAgent:
        agent = self.botos.agent
        assert isinstance(agent, RecordingAgent)
        return agent

    async def stop(self) -> None:
        await self.botos.stop()
        await self.task


async def serve(fake: FakeTelegram, *, public: bool = True, **options: Any) -> Running:
    port = free_port()
    http: dict[str, Any] = {"port": port}
    if public:
        http["public_url"] = f"http://127.0.0.1:{port}"
    platform = {"mode": "webhook", "token": fake.token, "base_url": fake.base_url, **options}
    botos = BotOS(RecordingAgent(), platforms={"telegram": platform}, store="memory://",
                  http=http)  # fmt: skip
    task = asyncio.create_task(botos.start())
    await asyncio.wait_for(botos.bots["telegram"].ready.wait(), 10)
    return Running(botos, task)


async def test_a_turn_arrives_by_webhook(fake: FakeTelegram) -> None:
    running = await serve(fake)
    try:
        assert fake.webhook_url == running.url
        assert fake.webhook_secret == derive_secret(fake.token)
        assert fake.webhook_allowed_updates == ["message", "channel_post"]
        assert not [c for c in fake.requests if c.method in ("getUpdates", "deleteWebhook")]
        fake.inject_message(42, "hello by webhook", first_name="Ada")
        [sent] = await fake.wait_for_messages(1)
        assert (sent.chat_id, sent.text) == (42, "reply:hello by webhook")
        [(_, message, ctx)] = running.agent.calls
        assert (ctx.platform, ctx.user_id, ctx.user_name) == ("telegram", "42", "Ada")
        assert fake.webhook_deliveries[0][1] == 200
    finally:
        await running.stop()
    # Several hosts share the webhook: stopping one does not unhook it (the default).
    assert fake.webhook_url and not [c for c in fake.requests if c.method == "deleteWebhook"]


async def test_a_redelivered_update_is_answered_once(fake: FakeTelegram) -> None:
    running = await serve(fake)
    try:
        update = message_update(7, "only once", update_id=500, message_id=9)
        fake.inject_update(update)
        await fake.wait_for_messages(1)
        fake.inject_update(update)  # Telegram retries an update it thinks was not taken
        await fake.wait_until(lambda: len(fake.webhook_deliveries) >= 2)
        await asyncio.sleep(0.3)
        assert [m.text for m in fake.sent] == ["reply:only once"]
        assert len(running.agent.calls) == 1
    finally:
        await running.stop()


async def test_forged_unsigned_and_oversized_requests_start_nothing(
    fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    running = await serve(fake)
    body = message_update(9, "forged secret-text-77", update_id=900)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(running.url, json=body) as resp:
                assert resp.status == 401
            async with http.post(running.url, json=body, headers={SECRET_HEADER: "nope"}) as resp:
                assert resp.status == 403
            huge = {**body, "padding": "x" * 1_100_000}
            secret = {SECRET_HEADER: derive_secret(fake.token)}
            async with http.post(running.url, json=huge, headers=secret) as resp:
                assert resp.status == 413
            async with http.post(running.url, data=b"{not json", headers=secret) as resp:
                assert resp.status == 400
            malformed = {"update_id": 5, "message": "not an object"}
            async with http.post(running.url, json=malformed, headers=secret) as resp:
                assert resp.status == 400
        await asyncio.sleep(0.2)
        assert running.agent.calls == [] and fake.sent == []
        assert "secret-text-77" not in caplog.text
        assert "refused POST /webhooks/telegram with 403" in caplog.text
    finally:
        await running.stop()


async def test_without_public_url_nothing_is_registered(fake: FakeTelegram) -> None:
    running = await serve(fake, public=False, webhook_secret="my_secret-1")
    try:
        assert not [c for c in fake.requests if c.method in ("setWebhook", "deleteWebhook")]
        body = message_update(5, "posted by hand", update_id=77)
        async with aiohttp.ClientSession() as http:
            headers = {SECRET_HEADER: "my_secret-1"}
            async with http.post(running.url, json=body, headers=headers) as resp:
                assert resp.status == 200
        [sent] = await fake.wait_for_messages(1)
        assert sent.text == "reply:posted by hand"
    finally:
        await running.stop()


async def test_delete_webhook_on_stop_when_configured(fake: FakeTelegram) -> None:
    running = await serve(fake, delete_webhook_on_stop=True)
    assert fake.webhook_url
    await running.stop()
    assert fake.webhook_url == "" and [c for c in fake.requests if c.method == "deleteWebhook"]


async def test_turn_running_at_stop_is_finished(fake: FakeTelegram) -> None:
    running = await serve(fake)
    running.agent.delay = 0.5
    fake.inject_message(3, "slow")
    await fake.wait_until(lambda: running.agent.calls)
    await running.stop()
    assert [m.text for m in fake.sent] == ["reply:slow"]


async def test_webhook_mode_needs_the_http_server_and_a_faithful_url(fake: FakeTelegram) -> None:
    alone = TelegramAdapter(token=fake.token, base_url=fake.base_url, mode="webhook")

    async def on_inbound(msg: Any) -> None:
        return None

    with pytest.raises(ConfigError, match="HTTP server"):
        await alone.start(on_inbound)
    cloud = FakeTelegram()  # api.telegram.org itself: HTTPS webhooks only
    await cloud.start()
    ingress = Ingress(port=0, public_url="http://127.0.0.1:9")
    adapter = TelegramAdapter(token=cloud.token, base_url=cloud.base_url, mode="webhook")
    adapter.ingress = ingress
    try:
        with pytest.raises(BadRequest, match="(?i)https url must be provided"):
            await adapter.start(on_inbound)
        assert not ingress.serving  # a failed start let go of the server
    finally:
        await adapter.stop()
        await cloud.stop()
    with pytest.raises(ConfigError, match="mode"):
        TelegramAdapter(token=fake.token, mode="hook")
    with pytest.raises(ConfigError, match="webhook_secret"):
        TelegramAdapter(token=fake.token, mode="webhook", webhook_secret="has space")
