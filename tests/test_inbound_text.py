"""Lone surrogates (valid JSON escapes, not encodable as UTF-8) never lose a message.

Text or a user name holding ``"\\ud800"`` used to fail the turn on SQLite and
PostgreSQL with ``UnicodeEncodeError`` (the person got the apology, nothing was
stored, ``amirror_to_session`` returned False). Every inbound string now passes
``onethread.session.text.clean_text`` where it enters (``Inbound``, the
manager's ``chat()``/``mirror()``, ``BotOS.notify()``): the person is answered
and the message stored with U+FFFD, on every store.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import pytest

from helpers import RecordingAgent
from onethread._fake_adapter import FakeAdapter
from onethread.bots import Bot, BotOS, BotSessionManager, amirror_to_session, mirror_to_session
from onethread.bots.bot import TURN_FAILED
from onethread.bots.manager import APOLOGY
from onethread.platforms.base import Inbound
from onethread.platforms.web import WebAdapter
from onethread.session.history.base import HistoryStore
from onethread.session.text import clean_text, clean_value
from onethread.session.urls import open_history_store
from services import postgres_schema, postgres_url, redis_prefix, redis_url

STORES = ["memory", "sqlite", "redis", "postgres"]
LONE = "\ud800"
BAD = f"hi {LONE} there"
GOOD = "hi \ufffd there"


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HistoryStore]:
    with ExitStack() as stack:
        if request.param == "redis":
            s = open_history_store(redis_url(), prefix=stack.enter_context(redis_prefix()))
        elif request.param == "postgres":
            s = open_history_store(postgres_url(), schema=stack.enter_context(postgres_schema()))
        elif request.param == "sqlite":
            s = open_history_store(f"sqlite:///{tmp_path}/h.db")
        else:
            s = open_history_store("memory://")
        yield s
        await s.close()


# -- the function --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain ascii", "plain ascii"),
        ("grüße 😀", "grüße 😀"),
        (BAD, GOOD),
        ("\udfff", "\ufffd"),
        ("\udc80\udcff", "\ufffd\ufffd"),  # surrogateescape'd bytes
        ("a\ud83d\ude00b", "a😀b"),  # a split pair is joined, not replaced
        ("\ude00\ud83d", "\ufffd\ufffd"),  # the wrong order is two lone ones
    ],
)
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean
    clean_text(raw).encode("utf-8")  # always encodable


def test_clean_text_returns_valid_text_as_is() -> None:
    text = "déjà vu " * 10
    assert clean_text(text) is text


def test_clean_value_reaches_keys_and_nested_values() -> None:
    got = clean_value({"k" + LONE: [LONE, (LONE, 1)], "n": {"x": LONE}, "i": 2, "b": None})
    assert got == {"k\ufffd": ["\ufffd", ("\ufffd", 1)], "n": {"x": "\ufffd"}, "i": 2, "b": None}


def test_inbound_cleans_every_string_field() -> None:
    msg = Inbound(
        platform="telegram",
        chat_id="c" + LONE,
        chat_type="dm",
        user_id="u" + LONE,
        text=BAD,
        message_id="m" + LONE,
        chat_name="room" + LONE,
        thread_id="t" + LONE,
        user_name="Al" + LONE,
    )
    assert (msg.chat_id, msg.user_id, msg.text, msg.message_id) == ("c\ufffd", "u\ufffd", GOOD,
                                                                    "m\ufffd")  # fmt: skip
    assert (msg.chat_name, msg.thread_id, msg.user_name) == ("room\ufffd", "t\ufffd", "Al\ufffd")


# -- every store, through the manager --------------------------------------------


async def test_chat_answers_and_stores_the_replacement(store: HistoryStore) -> None:
    mgr = BotSessionManager(store=store)
    agent = RecordingAgent()
    reply = await mgr.chat(agent, "u1", BAD, platform="telegram", user_name="Al" + LONE)
    assert reply == f"reply:{GOOD}" and reply != APOLOGY
    [(_, message, ctx)] = agent.calls
    assert message.content == GOOD and ctx.user_name == "Al\ufffd"
    entries = await mgr.history("u1", platform="telegram")
    assert [(e.role, e.content) for e in entries] == [("user", GOOD), ("assistant", reply)]
    assert entries[0].user_name == "Al\ufffd"


async def test_mirror_stores_the_replacement(store: HistoryStore) -> None:
    mgr = BotSessionManager(store=store)
    ok = await amirror_to_session(mgr, "alice", "m" + LONE, source_label="cron" + LONE,
                                  metadata={"job" + LONE: LONE})  # fmt: skip
    assert ok is True
    assert await mgr.mirror("alice", "again" + LONE) is None
    entries = await store.load("user:alice")
    assert [e.content for e in entries] == ["m\ufffd", "again\ufffd"]
    assert entries[0].source == "cron\ufffd"
    assert dict(entries[0].metadata) == {"job\ufffd": "\ufffd"}


async def test_mirror_from_a_thread_stores_the_replacement(store: HistoryStore) -> None:
    mgr = BotSessionManager(store=store)
    mgr.bind_loop()
    assert await asyncio.to_thread(mirror_to_session, mgr, "telegram:42", LONE) is True
    assert [e.content for e in await store.load("bot_telegram_42")] == ["\ufffd"]


async def test_notify_sends_and_mirrors_the_replacement() -> None:
    tg = FakeAdapter("telegram")
    agent = RecordingAgent()
    botos = BotOS(agent=agent, bots=[], store="memory://")
    botos.add_bot(Bot("telegram", agent, adapter=tg, session=botos.session))
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(5)
    try:
        await tg.inject("hello", user="42", chat_id="tg-42")
        await tg.wait_sent(1)
        for _ in range(500):  # the turn is stored once its reply is delivered
            if await botos.session.store.count("bot_telegram_42") == 2:
                break
            await asyncio.sleep(0.01)
        await botos.notify("telegram:42", "note" + LONE)
        assert tg.sent[-1].text == "note\ufffd"
        stored = await botos.session.store.load("bot_telegram_42")
        assert stored[-1].mirror and stored[-1].content == "note\ufffd"
    finally:
        await botos.stop()
        await task


# -- every store, through the real web chat ---------------------------------------


async def test_web_chat_answers_and_stores_the_replacement(store: HistoryStore) -> None:
    """The page sends the JSON escape itself, as a browser's ``JSON.stringify`` may."""
    bot = Bot("web", RecordingAgent(), store=store, port=0)
    task = asyncio.create_task(bot.start())
    await asyncio.wait_for(bot.ready.wait(), 5)
    try:
        assert isinstance(bot.adapter, WebAdapter)
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                bot.adapter.url + "ws", params={"user": "u1", "name": "Alice", "history": "0"}
            )
            mid = uuid.uuid4().hex
            await ws.send_str(json.dumps({"type": "message", "id": mid, "text": BAD}))
            assert LONE in json.loads(json.dumps(BAD))  # the frame really carries one
            reply = None
            while reply is None:
                frame = json.loads((await ws.receive(timeout=10)).data)
                if frame["type"] == "message" and frame.get("role") == "assistant":
                    reply = frame["text"]
            assert reply == f"reply:{GOOD}" and reply != TURN_FAILED
            await ws.close()
        # The turn is stored just after its reply is sent (under the turn lock).
        for _ in range(100):
            entries = await store.load("bot_web_u1")
            if len(entries) == 2:
                break
            await asyncio.sleep(0.05)
        assert [e.content for e in entries] == [GOOD, f"reply:{GOOD}"]
        assert entries[0].user_name == "Alice"
    finally:
        await bot.stop()
        await task


# -- a platform SDK: python-telegram-bot against the Telegram fake -----------------


async def test_telegram_text_and_name_with_lone_surrogates_are_answered_and_stored(
    tmp_path: Path,
) -> None:
    """The fake serves the update as JSON (``"\\ud800"`` escapes), the real SDK parses
    it into ``str`` with lone surrogates, the adapter builds the ``Inbound``."""
    pytest.importorskip("telegram")
    from fake_telegram import FakeTelegram

    store = open_history_store(f"sqlite:///{tmp_path}/h.db")
    async with FakeTelegram() as fake:
        bot = Bot("telegram", RecordingAgent(), token=fake.token, base_url=fake.base_url,
                  store=store)  # fmt: skip
        task = asyncio.create_task(bot.start())
        try:
            await asyncio.wait_for(bot.ready.wait(), 10)
            fake.inject_message(42, BAD, first_name="Ada" + LONE)
            [sent] = await fake.wait_for_messages(1, timeout=10)
            assert sent.text == f"reply:{GOOD}"
        finally:
            await bot.stop()
            await task
    check = open_history_store(f"sqlite:///{tmp_path}/h.db")
    try:
        entries = await check.load("bot_telegram_42")
        assert [e.content for e in entries] == [GOOD, f"reply:{GOOD}"]
        assert entries[0].user_name.startswith("Ada\ufffd")
    finally:
        await check.close()
