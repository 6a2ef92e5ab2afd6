"""Two onethread hosts (separate OS processes) share Redis or PostgreSQL: Alice on
Telegram is served by host A, on Discord by host B, and keeps one conversation;
notify() from a third place reaches her through the owning host via the outbox."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_discord import FakeDiscord
from fake_openai import FakeOpenAI
from fake_telegram import FakeTelegram
from onethread import Agent
from onethread.bots import BotOS
from onethread.session.urls import open_coordination, open_history_store, open_identity_resolver
from services import postgres_url, redis_namespace

pytestmark = [pytest.mark.service, pytest.mark.multiprocess, pytest.mark.timeout(120)]
WORKER = Path(__file__).with_name("_host_worker.py")


@pytest.fixture(params=["redis", "redis-cluster", "postgres"])
def shared(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, str]]]:
    """(URL, store options): a Redis key prefix / PostgreSQL database of this run's
    own, removed afterwards. Never a whole shared Redis database: concurrent
    runs on one Redis each keep to their prefix."""
    if request.param in ("redis", "redis-cluster"):
        url, prefix_cm = redis_namespace(request.param)
        with prefix_cm as prefix:
            yield url, {"prefix": prefix}
        return
    import psycopg

    admin = postgres_url()
    name = f"ot_hosts_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}", {}
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def last_user_text(body: dict[str, Any]) -> str:
    return str([m for m in body["messages"] if m["role"] == "user"][-1]["content"])


@pytest.fixture
async def servers() -> AsyncIterator[tuple[FakeTelegram, FakeDiscord, FakeOpenAI]]:
    tg, dc = FakeTelegram(), FakeDiscord()
    oa = FakeOpenAI(lambda body: f"ack: {last_user_text(body)}")
    for server in (tg, dc, oa):
        await server.start()
    yield tg, dc, oa
    await oa.close()
    await dc.stop()
    await tg.stop()


async def test_two_hosts_one_conversation_and_cross_host_notify(
    shared: tuple[str, dict[str, str]],
    servers: tuple[FakeTelegram, FakeDiscord, FakeOpenAI],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tg, dc, oa = servers
    shared_url, options = shared
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": tg.token, "TELEGRAM_API_BASE_URL": tg.base_url,
           **dc.env(), "ONETHREAD_MODEL": "gpt-test", "OPENAI_BASE_URL": oa.base_url,
           "OPENAI_API_KEY": "sk-test"}  # fmt: skip
    resolver = open_identity_resolver(shared_url, **options)
    resolver.link("telegram", "12345", "alice")
    resolver.link("discord", "4242", "alice")
    hosts = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER), platform, shared_url, *options.values(), env=env
        )  # fmt: skip
        for platform in ("telegram", "discord")
    ]
    try:
        await tg.wait_for_call("getUpdates", timeout=30)
        await dc.wait_for_identifies(1, timeout=30)
        tg.inject_message(12345, "my favourite number is 7")
        await tg.wait_for_messages(1, timeout=20)
        await dc.inject_dm(4242, "what is my favourite number?")
        await dc.wait_for_messages(1, timeout=20)
        asked = next(r for r in oa.requests if "favourite number?" in last_user_text(r))
        assert any("number is 7" in str(m["content"]) for m in asked["messages"])
        # She last wrote on Discord; make Telegram her latest, then notify from a
        # process that serves neither platform: the outbox hands it to host A.
        tg.inject_message(12345, "I'm on telegram now")
        await tg.wait_for_messages(2, timeout=20)
        monkeypatch.setenv("ONETHREAD_MODEL", "")
        third = BotOS(
            Agent(name="a"),
            identity_resolver=resolver,
            store=open_history_store(shared_url, **options),
            coordination=open_coordination(shared_url, **options),
        )
        # A turn is stored once its reply is delivered (a few ms after the fake saw it):
        # wait for it, or notify() may still see Discord as her latest platform.
        for _ in range(200):
            entries = await third.session.store.load("user:alice")
            if [e.content for e in entries[-2:]][:1] == ["I'm on telegram now"]:
                break
            await asyncio.sleep(0.05)
        assert await third.notify("alice", "Reminder: standup", source_label="cron") == []
        sent = await tg.wait_for_messages(3, timeout=20)
        assert sent[2].text == "Reminder: standup" and sent[2].chat_id == 12345
        for _ in range(100):
            entries = await third.session.store.load("user:alice")
            if entries and entries[-1].mirror:
                break
            await asyncio.sleep(0.05)
        assert entries[-1].source == "cron" and entries[-1].content == "Reminder: standup"
        await third.session.close()
        await third.coordination.close()
    finally:
        for host in hosts:
            if host.returncode is None:
                host.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(h.wait(), 15) for h in hosts]
        close = getattr(resolver, "close", None)
        if close:
            close()
    assert codes == [0, 0]
