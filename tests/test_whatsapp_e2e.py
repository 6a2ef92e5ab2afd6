"""End to end: BotOS serving WhatsApp (webhooks on the one HTTP server, the fake Graph
API) and Telegram (the real python-telegram-bot against its fake), the real openai
client against the fake model. Webhooks are POSTed over HTTP, signed as Meta signs them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from fake_openai import FakeOpenAI
from fake_telegram import FakeTelegram
from fake_whatsapp import FakeGraph, message_payload, status_payload
from onethread import Agent
from onethread.bots import BotOS
from onethread.errors import DeliveryWindowClosed
from onethread.session import InMemoryIdentityResolver
from onethread.session.history.base import HistoryEntry

pytestmark = pytest.mark.timeout(60)

ANA_WA = "15557654321"
ANA_TG = 12345


def last_user_text(body: dict[str, Any]) -> str:
    users = [m for m in body["messages"] if m["role"] == "user"]
    return str(users[-1]["content"]) if users else ""


def all_text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content") or "") for m in body["messages"])


@dataclass
class World:
    graph: FakeGraph
    telegram: FakeTelegram
    openai: FakeOpenAI
    resolver: InMemoryIdentityResolver

    def botos(self, **whatsapp: Any) -> BotOS:
        return BotOS(
            Agent(name="a"),
            platforms={"whatsapp": whatsapp, "telegram": {}},
            identity_resolver=self.resolver,
            store="memory://",
            http={"host": "127.0.0.1", "port": 0},
        )


@pytest.fixture
async def world(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    async def echo(body: dict[str, Any]) -> str:
        return f"ack: {last_user_text(body)}"

    graph, tg, oa = FakeGraph(), FakeTelegram(), FakeOpenAI(echo)
    for server in (graph, tg, oa):
        await server.start()
    env = {**graph.env(), "TELEGRAM_BOT_TOKEN": tg.token, "TELEGRAM_API_BASE_URL": tg.base_url,
           "ONETHREAD_MODEL": "gpt-test", "OPENAI_BASE_URL": oa.base_url,
           "OPENAI_API_KEY": "sk-test"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    resolver = InMemoryIdentityResolver()
    resolver.link("whatsapp", ANA_WA, "ana")
    resolver.link("telegram", str(ANA_TG), "ana")
    try:
        yield World(graph, tg, oa, resolver)
    finally:
        await oa.close()
        await tg.stop()
        await graph.stop()


@pytest.fixture
async def running(world: World) -> AsyncIterator[BotOS]:
    botos = world.botos()
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(30)
    try:
        yield botos
    finally:
        await botos.stop()
        await task


def hook(botos: BotOS) -> str:
    return f"{botos.ingress.url}webhooks/whatsapp"


async def post(botos: BotOS, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.post(hook(botos), data=body,
                                                          headers=headers) as resp:  # fmt: skip
        await resp.read()
        return resp.status


async def say(world: World, botos: BotOS, text: str, **kw: Any) -> int:
    body, headers = world.graph.signed(message_payload(ANA_WA, text, name="Ana", **kw))
    return await post(botos, body, headers)


async def test_a_fact_told_on_whatsapp_is_known_on_telegram(world: World, running: BotOS) -> None:
    assert await say(world, running, "my locker code is 4711") == 200
    await world.graph.wait_for(lambda: len(world.graph.texts()) == 1, what="the reply")
    assert world.graph.texts(ANA_WA) == ["ack: my locker code is 4711"]
    world.telegram.inject_message(ANA_TG, "what is my locker code?")
    await world.telegram.wait_for_messages(1, timeout=15)
    asked = next(r for r in world.openai.requests if "locker code?" in last_user_text(r))
    assert "my locker code is 4711" in all_text(asked)
    # And back: told on Telegram, asked on WhatsApp.
    world.telegram.inject_message(ANA_TG, "my bike is green")
    await world.telegram.wait_for_messages(2, timeout=15)
    await say(world, running, "what colour is my bike?")
    await world.graph.wait_for(lambda: len(world.graph.texts()) == 2, what="the second reply")
    asked = next(r for r in world.openai.requests if "my bike?" in last_user_text(r))
    assert "my bike is green" in all_text(asked)
    history = await running.session.store.load("user:ana")
    assert [e.platform for e in history if e.role == "user"] == [
        "whatsapp", "telegram", "telegram", "whatsapp"]  # fmt: skip
    assert history[0].user_name == "Ana"


async def test_meta_verification_echoes_the_challenge(world: World, running: BotOS) -> None:
    async with aiohttp.ClientSession() as http:
        good = {"hub.mode": "subscribe", "hub.verify_token": world.graph.verify_token,
                "hub.challenge": "1158201444"}  # fmt: skip
        async with http.get(hook(running), params=good) as resp:
            assert (resp.status, await resp.text()) == (200, "1158201444")
        for bad in ({**good, "hub.verify_token": "guess"}, {**good, "hub.mode": "unsubscribe"}):
            async with http.get(hook(running), params=bad) as resp:
                assert resp.status == 403
                assert "1158201444" not in await resp.text()


async def test_forged_unsigned_and_oversized_webhooks_start_nothing(
    world: World, running: BotOS, caplog: pytest.LogCaptureFixture
) -> None:
    payload = message_payload(ANA_WA, "secret plans", name="Ana")
    body, headers = world.graph.signed(payload)
    unsigned = {"Content-Type": "application/json"}
    assert await post(running, body, unsigned) == 401
    _, forged = world.graph.signed(payload, secret="not-the-app-secret")
    assert await post(running, body, forged) == 403
    tampered = body.replace(b"secret plans", b"secret plant")
    assert await post(running, tampered, headers) == 403
    big = message_payload(ANA_WA, "x" * 1_100_000, name="Ana")
    assert await post(running, *world.graph.signed(big)) == 413
    assert await post(running, b"not json", world.graph.signed(b"not json")[1]) == 400
    await asyncio.sleep(0.3)
    assert world.graph.sent == [] and world.openai.requests == [] and world.graph.reads == []
    assert await running.session.store.load("user:ana") == []
    assert "secret plan" not in caplog.text  # refusals are logged without the body
    assert await post(running, body, headers) == 200  # the genuine one is answered
    await world.graph.wait_for(lambda: len(world.graph.sent) == 1, what="the reply")


async def test_a_retried_webhook_is_answered_once_and_marked_read(
    world: World, running: BotOS
) -> None:
    body, headers = world.graph.signed(
        message_payload(ANA_WA, "hello once", name="Ana", message_id="wamid.RETRY1")
    )
    assert [await post(running, body, headers) for _ in range(3)] == [200, 200, 200]
    await world.graph.wait_for(lambda: len(world.graph.sent) == 1, what="the reply")
    await asyncio.sleep(0.3)
    assert world.graph.texts() == ["ack: hello once"]
    assert len(world.openai.requests) == 1
    assert ("wamid.RETRY1", True) in [(r.message_id, r.typing) for r in world.graph.reads]


async def test_a_photo_is_fetched_into_the_blob_store(world: World, running: BotOS) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
    media_id = world.graph.add_media(data, "image/png")
    body, headers = world.graph.signed(message_payload(
        ANA_WA, kind="image", content={"id": media_id, "mime_type": "image/png",
                                      "caption": "my cat"}, name="Ana"))  # fmt: skip
    assert await post(running, body, headers) == 200
    await world.graph.wait_for(lambda: len(world.graph.sent) == 1, what="the reply")
    assert world.graph.downloads == [media_id]
    (entry, _) = await running.session.store.load("user:ana")
    (attachment,) = entry.attachments
    assert entry.content == "my cat" and attachment.kind == "image"
    assert attachment.blob.startswith("sha256:")
    assert await running.session.blobs.get(attachment.blob) == data


async def test_status_callbacks_are_recorded_and_start_no_turn(
    world: World, running: BotOS
) -> None:
    await say(world, running, "hi")
    await world.graph.wait_for(lambda: len(world.graph.sent) == 1, what="the reply")
    sent = world.graph.sent[0].id
    adapter: Any = running.bots["whatsapp"].adapter
    for state in ("sent", "delivered", "read"):
        assert await post(running, *world.graph.signed(status_payload(sent, state, ANA_WA))) == 200
        await asyncio.sleep(0.05)
        assert adapter.delivery_status(sent).status == state
    failed = status_payload(sent, "failed", ANA_WA, error_code=131047)
    assert await post(running, *world.graph.signed(failed)) == 200
    assert adapter.delivery_status(sent).error_code == 131047
    await asyncio.sleep(0.2)
    assert len(world.openai.requests) == 1 and len(world.graph.sent) == 1


# -- the 24-hour customer service window ---------------------------------------------


async def _wrote(botos: BotOS, hours_ago: float) -> None:
    """Ana's last WhatsApp message, ``hours_ago`` (as the turn would have stored it)."""
    entry = HistoryEntry("user", "old message", time.time() - hours_ago * 3600,
                         platform="whatsapp", chat_id=ANA_WA, user_id=ANA_WA)  # fmt: skip
    await botos.session.store.append("user:ana", [entry])


async def test_notify_inside_the_window_is_sent(world: World, running: BotOS) -> None:
    await _wrote(running, 23)
    await running.notify("ana", "Your table is ready")
    assert world.graph.texts(ANA_WA) == ["Your table is ready"]


async def test_notify_outside_the_window_is_refused_and_marked(
    world: World, running: BotOS
) -> None:
    await _wrote(running, 25)
    with pytest.raises(DeliveryWindowClosed, match="24-hour") as info:
        await running.notify("ana", "Your table is ready")
    assert info.value.recipient == ANA_WA and info.value.last_seen is not None
    assert world.graph.sent == []
    last = (await running.session.store.load("user:ana"))[-1]
    assert last.content == "Your table is ready" and last.undelivered
    assert last.metadata["delivery_error"] == "DeliveryWindowClosed"


async def test_a_scheduled_message_outside_the_window_is_marked_not_retried(
    world: World, running: BotOS
) -> None:
    await _wrote(running, 30)
    await running.schedule("ana", "Stand-up now", at=timedelta(milliseconds=50))
    for _ in range(200):
        last = (await running.session.store.load("user:ana"))[-1]
        if last.content == "Stand-up now":
            break
        await asyncio.sleep(0.05)
    assert last.metadata["delivery_error"] == "DeliveryWindowClosed" and last.undelivered
    assert world.graph.sent == []


async def test_outside_the_window_the_configured_template_goes_and_is_marked(
    world: World,
) -> None:
    botos = world.botos(template="table_ready", template_param=True)
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(30)
    try:
        await _wrote(botos, 48)
        ids = await botos.notify("ana", "Your table is ready")
        last = (await botos.session.store.load("user:ana"))[-1]
    finally:
        await botos.stop()
        await task
    (template,) = world.graph.sent
    assert ids == [template.id] and template.template["name"] == "table_ready"
    assert template.template["components"][0]["parameters"][0]["text"] == "Your table is ready"
    assert last.content == "Your table is ready" and not last.undelivered
    assert (last.metadata["delivery"], last.metadata["template"]) == ("template", "table_ready")


async def test_a_person_seen_first_by_bsuid_keeps_one_history(world: World, running: BotOS) -> None:
    """A host that did not know the pair answers a BSUID-only message under the BSUID;
    the first message with both ids moves that session into the wa_id's, and from
    then on a BSUID-only message is the same person."""
    bsuid, wa_id = "BR.1502576394655843", "5511987654321"

    async def send(text: str, number: str | None, n: int) -> None:
        body, headers = world.graph.signed(message_payload(number, text, user_id=bsuid))
        assert await post(running, body, headers) == 200
        await world.graph.wait_for(lambda: len(world.graph.sent) == n, what=f"reply {n}")

    await send("my flat is number 12", None, 1)
    assert world.graph.sent[0].to == bsuid and world.graph.sent[0].by_recipient
    await send("and my dog is Rex", wa_id, 2)
    await send("what is my flat number and my dog's name?", None, 3)
    asked = world.openai.requests[-1]
    assert "my flat is number 12" in all_text(asked) and "my dog is Rex" in all_text(asked)
    assert [s.to for s in world.graph.sent] == [bsuid, wa_id, wa_id]
    store = running.session.store
    assert await store.load(f"bot_whatsapp_{bsuid}") == []
    moved = await store.load(f"bot_whatsapp_{wa_id}")
    said = [e.content for e in moved if e.role == "user"]
    assert said == ["my flat is number 12", "and my dog is Rex",
                    "what is my flat number and my dog's name?"]  # fmt: skip
