"""The one HTTP server (``onethread.platforms.ingress``) through real aiohttp clients.

A real ``Ingress`` listens on 127.0.0.1 (a free port); webhook endpoints are
small objects with ``webhook_post``; the web chat and operations share the
same port under ``BotOS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from helpers import RecordingAgent
from onethread.bots import BotOS
from onethread.config import parse_config
from onethread.errors import ConfigError, PlatformUnavailable
from onethread.platforms.ingress import (
    MAX_BODY_BYTES,
    Ingress,
    WebhookTasks,
    json_response,
    refuse,
)
from onethread.platforms.web import WebAdapter


class Recorder:
    """A webhook endpoint: accepts a body with the right ``X-Secret``, records it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.gets = 0

    async def webhook_post(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if request.headers.get("X-Secret") != "s3cret":
            return refuse(request, "rec", 403, "wrong secret")
        self.bodies.append(body)
        return json_response(200, ok=True, size=len(body))


class WithGet(Recorder):
    async def webhook_get(self, request: web.Request) -> web.StreamResponse:
        self.gets += 1
        return web.Response(text=request.query.get("challenge", ""))


@pytest.fixture
async def ingress() -> AsyncIterator[Ingress]:
    server = Ingress(port=0)
    await server.acquire()
    yield server
    await server.release()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_healthz_and_a_mounted_endpoint(
    ingress: Ingress, http: aiohttp.ClientSession
) -> None:
    rec = Recorder()
    ingress.mount_webhook("rec", rec)
    async with http.get(ingress.url + "healthz") as resp:
        assert (resp.status, await resp.text()) == (200, "ok")
    async with http.post(
        ingress.url + "webhooks/rec", data=b"{}", headers={"X-Secret": "s3cret"}
    ) as resp:
        assert resp.status == 200 and (await resp.json()) == {"ok": True, "size": 2}
    assert rec.bodies == [b"{}"]


async def test_unknown_platform_is_404_naming_the_mounted_ones(
    ingress: Ingress, http: aiohttp.ClientSession
) -> None:
    ingress.mount_webhook("rec", Recorder())
    async with http.post(ingress.url + "webhooks/nope", data=b"{}") as resp:
        assert resp.status == 404
        assert "mounted: rec" in (await resp.json())["error"]
    ingress.unmount_webhook("rec")
    async with http.post(ingress.url + "webhooks/rec", data=b"{}") as resp:
        assert resp.status == 404


async def test_an_expected_platform_not_yet_mounted_is_503(
    ingress: Ingress, http: aiohttp.ClientSession
) -> None:
    ingress.expect_webhook("rec")
    async with http.post(ingress.url + "webhooks/rec", data=b"{}") as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "30"
        assert "rec platform is configured but not connected" in (await resp.json())["error"]
    rec = Recorder()
    ingress.mount_webhook("rec", rec)
    async with http.post(
        ingress.url + "webhooks/rec", data=b"{}", headers={"X-Secret": "s3cret"}
    ) as resp:
        assert resp.status == 200
    async with http.post(ingress.url + "webhooks/other", data=b"{}") as resp:
        assert resp.status == 404


async def test_oversized_bodies_never_reach_the_endpoint(
    ingress: Ingress, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    ingress.mount_webhook("rec", rec)
    big = b"x" * (MAX_BODY_BYTES + 1)
    headers = {"X-Secret": "s3cret"}
    async with http.post(ingress.url + "webhooks/rec", data=big, headers=headers) as resp:
        assert resp.status == 413

    # Without a Content-Length (chunked), the limit holds while reading.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 100_000

    async with http.post(ingress.url + "webhooks/rec", data=chunks(), headers=headers) as resp:
        assert resp.status == 413
    exactly = b"z" * MAX_BODY_BYTES
    async with http.post(ingress.url + "webhooks/rec", data=exactly, headers=headers) as resp:
        assert resp.status == 200
    assert rec.bodies == [exactly]
    assert "xxxx" not in caplog.text and "yyyy" not in caplog.text


async def test_refusal_is_logged_without_the_body(
    ingress: Ingress, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    ingress.mount_webhook("rec", rec)
    async with http.post(ingress.url + "webhooks/rec", data=b"secret-payload-123") as resp:
        assert resp.status == 403
    assert rec.bodies == []
    assert "wrong secret" in caplog.text and "secret-payload-123" not in caplog.text


async def test_get_goes_to_webhook_get_or_is_405(
    ingress: Ingress, http: aiohttp.ClientSession
) -> None:
    ingress.mount_webhook("plain", Recorder())
    ingress.mount_webhook("chal", WithGet())
    async with http.get(ingress.url + "webhooks/plain") as resp:
        assert resp.status == 405
    async with http.get(ingress.url + "webhooks/chal", params={"challenge": "42"}) as resp:
        assert (resp.status, await resp.text()) == (200, "42")
    async with http.put(ingress.url + "webhooks/chal", data=b"") as resp:
        assert resp.status == 405


async def test_mount_rules() -> None:
    server = Ingress(port=0)
    rec = Recorder()
    server.mount_webhook("rec", rec)
    server.mount_webhook("rec", rec)  # the same endpoint again: fine
    with pytest.raises(ConfigError, match="already served"):
        server.mount_webhook("rec", Recorder())
    with pytest.raises(ValueError, match="lower-case"):
        server.mount_webhook("Bad/Name", Recorder())
    server.unmount_webhook("rec", Recorder())  # not the holder: no effect
    assert server.webhooks() == ["rec"]


async def test_public_url_and_webhook_url() -> None:
    assert Ingress().webhook_url("telegram") is None
    server = Ingress(public_url="https://bot.example.com/base/")
    assert server.webhook_url("telegram") == "https://bot.example.com/base/webhooks/telegram"
    for bad in ("bot.example.com", "ftp://x", "https://x/?a=1"):
        with pytest.raises(ConfigError, match="public_url"):
            Ingress(public_url=bad)
    with pytest.raises(ConfigError, match="port"):
        Ingress(port=70000)


async def test_acquire_counts_users_and_restarts_with_routes() -> None:
    server = Ingress(port=0)
    calls: list[str] = []

    def routes(app: web.Application) -> None:
        calls.append("added")

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="hi")

        app.router.add_get("/hello", hello)

    server.add_routes(routes)
    server.add_routes(routes)  # idempotent
    await server.acquire()
    await server.acquire()
    with pytest.raises(RuntimeError, match="before it starts"):
        server.add_routes(lambda app: None)
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "hello") as resp:
            assert await resp.text() == "hi"
        await server.release()
        assert server.serving
        await server.release()
        assert not server.serving
        await server.release()  # extra: nothing
        await server.acquire()  # a fresh application, the same routes
        async with http.get(server.url + "hello") as resp:
            assert await resp.text() == "hi"
        await server.release()
    assert calls == ["added", "added"]


async def test_a_taken_port_is_platform_unavailable() -> None:
    first = Ingress(port=0)
    await first.acquire()
    try:
        with pytest.raises(PlatformUnavailable, match="cannot listen"):
            await Ingress(port=first.port).acquire()
    finally:
        await first.release()


async def test_webhook_tasks_finish_or_are_cancelled() -> None:
    tasks = WebhookTasks("rec")
    done: list[str] = []

    async def quick() -> None:
        await asyncio.sleep(0.01)
        done.append("quick")

    async def stuck() -> None:
        await asyncio.sleep(60)

    tasks.spawn(quick())
    hanging = tasks.spawn(stuck())
    assert len(tasks) == 2
    await tasks.close(timeout=0.2)
    assert done == ["quick"] and hanging.cancelled() and len(tasks) == 0


async def test_web_chat_healthz_ops_and_webhooks_share_one_port(
    http: aiohttp.ClientSession,
) -> None:
    botos = BotOS(RecordingAgent(), platforms={"web": {"port": 0}}, store="memory://", metrics=True)
    task = asyncio.create_task(botos.start())
    try:
        await asyncio.wait_for(botos.bots["web"].ready.wait(), 5)
        adapter = botos.bots["web"].adapter
        assert isinstance(adapter, WebAdapter)
        ingress = botos.ingress
        assert ingress.serving and adapter.port == ingress.port != 0
        rec = Recorder()
        ingress.mount_webhook("rec", rec)
        base = ingress.url
        for path, status in (("", 200), ("healthz", 200), ("readyz", 200), ("metrics", 200)):
            async with http.get(base + path) as resp:
                assert resp.status == status, path
        async with http.post(
            base + "webhooks/rec", data=b"1", headers={"X-Secret": "s3cret"}
        ) as resp:
            assert resp.status == 200
        ws = await http.ws_connect(base + "ws", params={"user": "u1", "name": "A"})
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        await ws.close()
    finally:
        await botos.stop()
        await task
    assert not botos.ingress.serving


async def test_botos_without_http_platforms_serves_nothing() -> None:
    from onethread.bots import Bot
    from onethread.testing import FakeAdapter

    bot = Bot("console", RecordingAgent(), adapter=FakeAdapter("console"), store="memory://")
    botos = BotOS(RecordingAgent(), bots=[bot], store="memory://", http={"port": 0})
    task = asyncio.create_task(botos.start())
    try:
        await asyncio.wait_for(bot.ready.wait(), 5)
        assert bot.ingress is botos.ingress and not botos.ingress.serving
    finally:
        await botos.stop()
        await task


def test_config_http_section_and_web_options() -> None:
    # Today's web: host/port still choose the address when http: has none.
    old = parse_config("platforms:\n  web: {port: 9001}\n", "t.yaml")
    assert old.http_options() == {"host": "127.0.0.1", "port": 9001, "public_url": None}
    assert old.platform_options({})["web"]["port"] == 9001
    new = parse_config(
        "http: {host: 127.0.0.1, port: 9002, public_url: 'https://bot.example.com/'}\n"
        "platforms: [web]\n",
        "t.yaml",
    )
    assert new.http_options() == {
        "host": "127.0.0.1",
        "port": 9002,
        "public_url": "https://bot.example.com",
    }
    assert new.platform_options({})["web"]["port"] == 9002
    assert new.http_options(web={"port": 0})["port"] == 0  # --port wins
    defaults = parse_config("", "t.yaml")
    assert defaults.http_options()["port"] == 8080
    assert defaults.platform_options({})["web"] == {"host": "127.0.0.1", "port": 8080}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("http: {port: 1}\nplatforms:\n  web: {port: 2}\n", "platforms.web.port"),
        ("http: {public_url: bot.example.com}\n", "http.public_url"),
        ("http: {port: 99999}\n", "http.port"),
        ("http: {hots: x}\n", "http.hots"),
    ],
)
def test_config_http_mistakes_name_the_key(text: str, key: str) -> None:
    from onethread.config import ConfigFileError

    with pytest.raises(ConfigFileError) as info:
        parse_config(text, "t.yaml")
    assert key in [k for k, _ in info.value.problems], info.value.problems


def test_metrics_without_a_web_chat_are_private_off_loopback() -> None:
    """With webhooks only (no web chat token to ask for), /metrics is served on loopback only."""
    from aiohttp.test_utils import make_mocked_request

    from onethread.testing import FakeAdapter

    def scrape_allowed(host: str) -> bool:
        from onethread.bots import Bot

        bot = Bot("console", RecordingAgent(), adapter=FakeAdapter("console"), store="memory://")
        botos = BotOS(RecordingAgent(), bots=[bot], store="memory://",
                      http=Ingress(host=host, port=0))  # fmt: skip
        return botos.ops._scrape_allowed(make_mocked_request("GET", "/metrics"))

    assert scrape_allowed("127.0.0.1") is True
    assert scrape_allowed("10.0.0.1") is False
