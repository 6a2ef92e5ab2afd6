"""Bot and BotOS over the in-process FakeAdapter (platform SDK tests live elsewhere)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from helpers import RecordingAgent
from onethread._fake_adapter import FakeAdapter
from onethread.bots import Bot, BotOS
from onethread.bots.gate import Gate
from onethread.bots.supervisor import Backoff
from onethread.errors import ConnectionLost, PlatformAuthError, RecipientUnknown
from onethread.platforms.base import OnInbound
from onethread.session import InMemoryIdentityResolver


async def started(bot: Bot | BotOS) -> asyncio.Task[None]:
    task = asyncio.create_task(bot.start())
    if isinstance(bot, Bot):
        await asyncio.wait_for(bot.ready.wait(), 5)
    else:
        await bot.wait_ready(5)
    return task


@pytest.fixture
async def bot() -> AsyncIterator[Bot]:
    b = Bot("telegram", RecordingAgent(), adapter=FakeAdapter("telegram"), store="memory://")
    task = await started(b)
    yield b
    await b.stop()
    await task


def fake(bot: Bot) -> FakeAdapter:
    assert isinstance(bot.adapter, FakeAdapter)
    return bot.adapter


async def test_dm_is_answered_with_typing(bot: Bot) -> None:
    assert isinstance(bot.agent, RecordingAgent)
    bot.agent.delay = 0.1  # a model that takes a moment: the indicator shows meanwhile
    await fake(bot).inject("hello", user="1", chat_id="c1")
    [sent] = await fake(bot).wait_sent(1)
    assert sent.text == "reply:hello" and sent.chat_id == "c1"
    assert fake(bot).typing_calls == [("c1", "")]


async def test_own_and_bot_messages_ignored(bot: Bot) -> None:
    await fake(bot).inject("from a bot", from_bot=True)
    await fake(bot).inject("  ")
    await asyncio.sleep(0.05)
    assert fake(bot).sent == []


async def test_duplicate_message_id_answered_once(bot: Bot) -> None:
    await fake(bot).inject("hi", user="1", message_id="m-1")
    await fake(bot).inject("hi", user="1", message_id="m-1")
    await fake(bot).wait_sent(1)
    await asyncio.sleep(0.05)
    assert len(fake(bot).sent) == 1


async def test_group_needs_address_and_replies_in_thread(bot: Bot) -> None:
    await fake(bot).inject("chatter", user="1", chat_id="g", chat_type="group")
    await fake(bot).inject(
        "@bot hi", user="1", chat_id="g", chat_type="group", mentions_bot=True, thread_id="t9"
    )
    [sent] = await fake(bot).wait_sent(1)
    assert sent.thread_id == "t9" and sent.chat_id == "g"
    await asyncio.sleep(0.05)
    assert len(fake(bot).sent) == 1


async def test_commands_never_reach_the_agent(bot: Bot) -> None:
    agent = bot.agent
    assert isinstance(agent, RecordingAgent)
    await fake(bot).inject("hi", user="1")
    await fake(bot).inject("/whoami", user="1", user_name="Ann")
    await fake(bot).inject("/new", user="1")
    await fake(bot).inject("/help@mybot", user="1")
    sent = await fake(bot).wait_sent(4)
    texts = sorted(s.text for s in sent)
    assert any("You are Ann (telegram id 1)" in t for t in texts)
    assert any("fresh conversation" in t and "2 earlier" in t for t in texts)
    assert any("/whoami" in t for t in texts)
    assert len(agent.calls) == 1


async def test_long_reply_split_within_limit() -> None:
    class Long(RecordingAgent):
        async def respond(self, history, message, *, group=False):  # type: ignore[no-untyped-def]
            return " ".join(f"word{i}" for i in range(1500))

    adapter = FakeAdapter("discord", max_message_length=2000)
    b = Bot("discord", Long(), adapter=adapter, store="memory://")
    task = await started(b)
    await adapter.inject("go")
    await asyncio.sleep(0.1)
    await b.stop()
    await task
    assert len(adapter.sent) > 1 and all(len(s.text) <= 2000 for s in adapter.sent)
    assert " ".join(s.text for s in adapter.sent).split() == [f"word{i}" for i in range(1500)]


async def test_stop_drains_running_turns() -> None:
    adapter = FakeAdapter("web")
    b = Bot("web", RecordingAgent(delay=0.3), adapter=adapter, store="memory://")
    task = await started(b)
    await adapter.inject("slow one")
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    await b.stop()
    await task
    assert time.perf_counter() - t0 < 10
    assert [s.text for s in adapter.sent] == ["reply:slow one"]
    assert not adapter.started


async def test_stop_cancels_turns_past_the_drain_timeout() -> None:
    adapter = FakeAdapter("web")
    b = Bot("web", RecordingAgent(delay=30), adapter=adapter, store="memory://", drain_timeout=0.2)
    task = await started(b)
    await adapter.inject("never finishes")
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    await b.stop()
    await task
    assert time.perf_counter() - t0 < 5 and adapter.sent == []


class FlakyAdapter(FakeAdapter):
    """Fails to connect once, then drops its connection once."""

    def __init__(self) -> None:
        super().__init__("flaky")
        self.starts = 0

    async def start(self, on_inbound: OnInbound) -> None:
        self.starts += 1
        if self.starts == 1:
            raise ConnectionError("connection refused")
        await super().start(on_inbound)
        if self.starts == 2:
            asyncio.get_running_loop().call_later(
                0.05, self.report_failure, ConnectionLost("socket closed", platform="flaky")
            )


async def test_supervisor_restarts_after_failures() -> None:
    adapter = FlakyAdapter()
    b = Bot(
        "flaky",
        RecordingAgent(),
        adapter=adapter,
        store="memory://",
        backoff=Backoff(base=0.01, cap=0.05),
    )
    task = asyncio.create_task(b.start())
    for _ in range(200):
        if adapter.starts >= 3 and b.ready.is_set():
            break
        await asyncio.sleep(0.01)
    assert adapter.starts == 3
    await adapter.inject("still here?")
    await adapter.wait_sent(1)
    await b.stop()
    await task


class BadTokenAdapter(FakeAdapter):
    async def start(self, on_inbound: OnInbound) -> None:
        raise PlatformAuthError("TELEGRAM_BOT_TOKEN was refused", platform="telegram")


async def test_bad_token_is_fatal_not_a_restart_loop() -> None:
    b = Bot("telegram", RecordingAgent(), adapter=BadTokenAdapter("telegram"), store="memory://")
    with pytest.raises(PlatformAuthError, match="TELEGRAM_BOT_TOKEN"):
        await asyncio.wait_for(b.start(), 5)


async def test_botos_one_conversation_for_a_linked_person() -> None:
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "12345", "alice")
    resolver.link("discord", "snowflake-1", "alice")
    tg, dc = FakeAdapter("telegram"), FakeAdapter("discord")
    agent = RecordingAgent()
    botos = BotOS(
        agent=agent,
        identity_resolver=resolver,
        bots=[],
        store="memory://",
    )
    botos.add_bot(Bot("telegram", agent, adapter=tg, session=botos.session))
    botos.add_bot(Bot("discord", agent, adapter=dc, session=botos.session))
    task = await started(botos)
    await tg.inject("my name is Alice", user="12345", chat_id="tg-chat")
    await tg.wait_sent(1)
    await dc.inject("what is my name?", user="snowflake-1", chat_id="dc-chat")
    await dc.wait_sent(1)
    await dc.inject("I am Bob", user="bob", chat_id="dc-bob")
    await dc.wait_sent(2)
    alice_history = agent.calls[1][0]
    assert [h.content for h in alice_history] == ["my name is Alice", "reply:my name is Alice"]
    assert agent.calls[2][0] == []  # Bob sees nothing of Alice
    ids = await botos.notify("alice", "Reminder: standup in 5", source_label="cron")
    assert ids and dc.sent[-1].text == "Reminder: standup in 5"
    assert dc.sent[-1].chat_id == "dc-chat"  # her most recently used platform
    stored = await botos.session.store.load("user:alice")
    assert stored[-1].mirror and stored[-1].source == "cron"
    with pytest.raises(RecipientUnknown):
        await botos.notify("nobody", "hi")
    await botos.stop()
    await task


async def test_botos_keeps_serving_when_one_platform_is_fatal() -> None:
    good = FakeAdapter("discord")
    botos = BotOS(agent=RecordingAgent(), store="memory://")
    botos.add_bot(
        Bot("telegram", botos.agent, adapter=BadTokenAdapter("telegram"), session=botos.session)
    )
    botos.add_bot(Bot("discord", botos.agent, adapter=good, session=botos.session))
    task = asyncio.create_task(botos.start())
    await asyncio.wait_for(botos.bots["discord"].ready.wait(), 5)
    for _ in range(100):
        if "telegram" in botos.failed:
            break
        await asyncio.sleep(0.01)
    assert isinstance(botos.failed["telegram"], PlatformAuthError)
    await good.inject("hello")
    await good.wait_sent(1)
    await botos.stop()
    await task


async def test_botos_adopts_a_plain_bot_and_refuses_a_foreign_session() -> None:
    from onethread.bots import BotSessionManager
    from onethread.errors import ConfigError

    botos = BotOS(agent=RecordingAgent(), bots=[Bot("web", RecordingAgent(),
                  adapter=FakeAdapter("web"))], store="memory://")  # fmt: skip
    assert botos.bots["web"].session is botos.session
    foreign = BotSessionManager(store="memory://")
    with pytest.raises(ConfigError, match="session=botos.session"):
        botos.add_bot(Bot("discord", RecordingAgent(), adapter=FakeAdapter("discord"),
                          session=foreign))  # fmt: skip


def test_unknown_platform_lists_known_ones() -> None:
    from onethread.errors import ConfigError

    with pytest.raises(ConfigError, match="telegram"):
        Bot("myspace", RecordingAgent())


async def test_one_persons_rapid_messages_run_in_arrival_order() -> None:
    adapter = FakeAdapter("web")
    agent = RecordingAgent(delay=0.01)
    b = Bot("web", agent, adapter=adapter, store="memory://")
    task = await started(b)
    for i in range(15):
        await adapter.inject(f"m{i}", user="1")
    await adapter.wait_sent(15)
    await b.stop()
    await task
    assert [s.text for s in adapter.sent] == [f"reply:m{i}" for i in range(15)]
    assert [len(h) for h, _, _ in agent.calls] == [2 * i for i in range(15)]


class SlowFirstPolicy:
    """An access policy that takes a while for the first message only."""

    def __init__(self) -> None:
        self.first = True

    async def check(self, msg: object) -> str | None:
        if self.first:
            self.first = False
            await asyncio.sleep(0.1)
        return None


async def test_arrival_order_holds_even_when_the_policy_suspends() -> None:
    adapter = FakeAdapter("web")
    b = Bot("web", RecordingAgent(), adapter=adapter, store="memory://",
            access=SlowFirstPolicy())  # fmt: skip
    task = await started(b)
    for i in range(3):
        await adapter.inject(f"m{i}", user="1")
    await adapter.wait_sent(3)
    await b.stop()
    await task
    assert [s.text for s in adapter.sent] == ["reply:m0", "reply:m1", "reply:m2"]


async def test_an_unexpected_failure_still_answers_the_person() -> None:
    from onethread.bots.bot import TURN_FAILED

    class Broken(RecordingAgent):
        async def respond(self, history, message, *, group=False):  # type: ignore[no-untyped-def]
            raise RuntimeError("bug in a tool loop")

    adapter = FakeAdapter("web")
    b = Bot("web", Broken(), adapter=adapter, store="memory://")
    task = await started(b)
    await adapter.inject("hello", user="1")
    [sent] = await adapter.wait_sent(1)
    await b.stop()
    await task
    assert sent.text == TURN_FAILED


async def test_a_message_arriving_during_the_drain_is_answered() -> None:
    adapter = FakeAdapter("web")
    b = Bot("web", RecordingAgent(delay=0.2), adapter=adapter, store="memory://")
    task = await started(b)
    await adapter.inject("first", user="1")
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(b.stop())
    await asyncio.sleep(0.05)
    await adapter.inject("late", user="2")  # the platform already delivered it
    await stopping
    await task
    assert sorted(s.text for s in adapter.sent) == ["reply:first", "reply:late"]


async def test_replies_kept_out_of_the_history_are_handed_to_the_adapter() -> None:
    """Commands and refusals (never stored) reach ``on_unstored_reply``; turns do not."""
    from onethread.bots.policy import AllowlistPolicy
    from onethread.platforms.base import Inbound

    class Recording(FakeAdapter):
        def __init__(self) -> None:
            super().__init__("telegram")
            self.unstored: list[tuple[str, str]] = []

        def on_unstored_reply(self, msg: Inbound, reply: str) -> None:
            self.unstored.append((msg.text, reply))

    adapter = Recording()
    b = Bot("telegram", RecordingAgent(), adapter=adapter, store="memory://",
            access=AllowlistPolicy(["1"]))  # fmt: skip
    task = await started(b)
    try:
        await adapter.inject("hi", user="1")
        await adapter.inject("/whoami", user="1", user_name="Ann")
        await adapter.inject("let me in", user="2")
        await adapter.wait_sent(3)
    finally:
        await b.stop()
        await task
    unstored = dict(adapter.unstored)  # two people: their turns run concurrently
    assert sorted(unstored) == ["/whoami", "let me in"]
    assert "You are Ann" in unstored["/whoami"]
    assert unstored["let me in"] == "Sorry, this bot is private."


@pytest.mark.parametrize("platform", ["telegram", "discord", "slack"])
async def test_building_needs_no_credentials_and_start_names_the_missing_one(
    platform: str,
) -> None:
    from onethread.errors import ConfigError
    from onethread.platforms.registry import spec

    b = Bot(platform, RecordingAgent(), store="memory://")  # no token anywhere
    first_variable = spec(platform).credentials[0][1]
    with pytest.raises(ConfigError, match=first_variable):
        await b.start()


async def test_a_bot_built_on_the_shared_session_uses_the_shared_duplicate_filter() -> None:
    """Bot(session=botos.session) added to a BotOS filters redeliveries with the
    BotOS's (cross-host) duplicate filter, not a private in-process one."""
    from onethread.session.locks import LocalDuplicateFilter, LocalTurnLocks
    from onethread.session.urls import Coordination

    class Recording(LocalDuplicateFilter):
        def __init__(self) -> None:
            super().__init__()
            self.keys: list[str] = []

        async def first_time(self, message_key: str) -> bool:
            self.keys.append(message_key)
            return await super().first_time(message_key)

    shared = Recording()
    botos = BotOS(agent=RecordingAgent(), store="memory://",
                  coordination=Coordination(LocalTurnLocks(), shared, None, False))  # fmt: skip
    tg = FakeAdapter("telegram")
    botos.add_bot(Bot("telegram", botos.agent, adapter=tg, session=botos.session))
    own = FakeAdapter("discord")
    own_gate = Gate(LocalDuplicateFilter())
    botos.add_bot(Bot("discord", botos.agent, adapter=own, session=botos.session, gate=own_gate))
    task = await started(botos)
    await tg.inject("hello", user="1", chat_id="c1", message_id="m1")
    await tg.wait_sent(1)
    await own.inject("hi", user="2", chat_id="c2", message_id="m2")
    await own.wait_sent(1)
    assert shared.keys == ["telegram:c1:m1"]  # the discord bot kept the gate it was given
    await botos.stop()
    await task
