from __future__ import annotations

import asyncio
import time

import pytest

from helpers import RecordingAgent
from onethread.bots import BotSessionManager
from onethread.bots.manager import APOLOGY
from onethread.session import InMemoryIdentityResolver
from onethread.session.history.base import HistoryEntry


def manager(resolver: InMemoryIdentityResolver | None = None, **kw: object) -> BotSessionManager:
    return BotSessionManager(store="memory://", identity_resolver=resolver, **kw)  # type: ignore[arg-type]


async def test_no_resolver_uses_legacy_key_bit_for_bit() -> None:
    mgr = manager()
    agent = RecordingAgent()
    assert await mgr.chat(agent, "12345", "hi", platform="telegram") == "reply:hi"
    assert [e.content for e in await mgr.store.load("bot_telegram_12345")] == ["hi", "reply:hi"]


async def test_linked_user_one_history_across_platforms() -> None:
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "12345", "alice")
    resolver.link("discord", "snowflake-1", "alice")
    mgr = manager(resolver)
    agent = RecordingAgent()
    await mgr.chat(agent, "12345", "my cat is Tom", platform="telegram", chat_id="t1")
    await mgr.chat(agent, "snowflake-1", "what is my cat?", platform="discord", chat_id="d1")
    history, message, ctx = agent.calls[-1]
    assert [h.content for h in history] == ["my cat is Tom", "reply:my cat is Tom"]
    assert history[0].platform == "telegram" and message.platform == "discord"
    assert ctx.unified_user_id == "alice" and ctx.platform == "discord" and ctx.chat_id == "d1"


async def test_unlinked_bob_never_sees_alice() -> None:
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "1", "alice")
    mgr = manager(resolver)
    agent = RecordingAgent()
    await mgr.chat(agent, "1", "alice secret", platform="telegram")
    await mgr.chat(agent, "2", "hello", platform="telegram")
    history, _, ctx = agent.calls[-1]
    assert history == [] and ctx.unified_user_id == "telegram:2"


async def test_linking_merges_legacy_history_once_in_time_order() -> None:
    resolver = InMemoryIdentityResolver()
    mgr = manager(resolver)
    agent = RecordingAgent()
    await mgr.chat(agent, "1", "tg before link", platform="telegram")
    await mgr.chat(agent, "9", "dc before link", platform="discord")
    resolver.link("telegram", "1", "alice")
    resolver.link("discord", "9", "alice")
    await mgr.chat(agent, "1", "after link", platform="telegram")
    await mgr.chat(agent, "9", "again", platform="discord")
    history, _, _ = agent.calls[-1]
    contents = [h.content for h in history]
    assert contents == [
        "tg before link",
        "reply:tg before link",
        "dc before link",
        "reply:dc before link",
        "after link",
        "reply:after link",
    ]
    assert await mgr.store.load("bot_telegram_1") == []
    assert len(contents) == len(set(contents))


async def test_group_session_is_per_chat_and_thread_and_separate_from_dm() -> None:
    resolver = InMemoryIdentityResolver()
    resolver.link("slack", "U1", "alice")
    mgr = manager(resolver)
    agent = RecordingAgent()
    await mgr.chat(agent, "U1", "dm secret", platform="slack", chat_id="D1")
    await mgr.chat(
        agent,
        "U1",
        "in channel",
        platform="slack",
        chat_id="C1",
        chat_type="group",
        user_name="Alice",
    )
    history, _, _ = agent.calls[-1]
    assert history == []
    await mgr.chat(
        agent,
        "U2",
        "thread msg",
        platform="slack",
        chat_id="C1",
        chat_type="group",
        thread_id="1.5",
    )
    assert agent.calls[-1][0] == []
    await mgr.chat(agent, "U2", "channel again", platform="slack", chat_id="C1", chat_type="group")
    assert [h.content for h in agent.calls[-1][0]] == ["in channel", "reply:in channel"]
    await mgr.chat(agent, "U1", "back in dm", platform="slack", chat_id="D1")
    assert [h.content for h in agent.calls[-1][0]] == ["dm secret", "reply:dm secret"]


async def test_max_history_bounds_what_the_model_sees() -> None:
    mgr = manager(max_history=4)
    agent = RecordingAgent()
    for i in range(5):
        await mgr.chat(agent, "u", f"m{i}", platform="web")
    assert [h.content for h in agent.calls[-1][0]] == ["m2", "reply:m2", "m3", "reply:m3"]


async def test_model_error_apologises_and_keeps_user_message() -> None:
    mgr = manager()
    agent = RecordingAgent(fail=True)
    assert await mgr.chat(agent, "u", "are you there?", platform="web") == APOLOGY
    stored = await mgr.store.load("bot_web_u")
    assert [e.content for e in stored] == ["are you there?"]


async def test_two_platforms_at_once_get_two_ordered_turns() -> None:
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "1", "alice")
    resolver.link("discord", "2", "alice")
    mgr = manager(resolver)
    agent = RecordingAgent(delay=0.05)
    await asyncio.gather(
        mgr.chat(agent, "1", "from telegram", platform="telegram"),
        mgr.chat(agent, "2", "from discord", platform="discord"),
    )
    stored = [e.content for e in await mgr.store.load("user:alice")]
    assert stored == ["from telegram", "reply:from telegram", "from discord", "reply:from discord"]
    assert [h.content for h in agent.calls[1][0]] == ["from telegram", "reply:from telegram"]


async def test_many_users_concurrently_no_leak() -> None:
    resolver = InMemoryIdentityResolver()
    for i in range(0, 200, 2):
        resolver.link("telegram", str(i), f"p{i}")
    mgr = manager(resolver)
    agent = RecordingAgent(delay=0.01)

    async def user(i: int) -> None:
        for turn in range(3):
            await mgr.chat(agent, str(i), f"u{i}-t{turn}", platform="telegram")

    await asyncio.gather(*(user(i) for i in range(200)))
    for history, message, ctx in agent.calls:
        owner = message.content.split("-")[0]
        assert all(h.content.removeprefix("reply:").split("-")[0] == owner for h in history)
        assert ctx.user_id == owner[1:]
    for i in range(200):
        key = f"user:p{i}" if i % 2 == 0 else f"bot_telegram_{i}"
        assert await mgr.store.count(key) == 6


async def test_turn_lock_serialises_one_key_and_frees_memory() -> None:
    mgr = manager()
    agent = RecordingAgent(delay=0.01)
    await asyncio.gather(*(mgr.chat(agent, "u", f"m{i}", platform="web") for i in range(30)))
    stored = await mgr.store.load("bot_web_u")
    # Every turn saw the full history of the turns before it: strictly serialised.
    assert [len(h) for h, _, _ in agent.calls] == [2 * i for i in range(30)]
    assert [e.content for e in stored[::2]] == [f"m{i}" for i in range(30)]
    assert len(mgr.locks) == 0  # type: ignore[arg-type]


async def test_reset_export_forget() -> None:
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "1", "alice")
    mgr = manager(resolver)
    agent = RecordingAgent()
    await mgr.chat(agent, "1", "hello", platform="telegram")
    exported = await mgr.export("alice")
    assert list(exported["sessions"]) == ["user:alice"]
    assert exported["sessions"]["user:alice"][0]["content"] == "hello"
    assert exported["links"] == [
        {
            "platform": "telegram",
            "platform_user_id": "1",
            "linked_at": pytest.approx(time.time(), abs=60),
        }
    ]
    assert (await mgr.export("telegram:9"))["links"] == []  # an unlinked account: none
    assert await mgr.forget("alice") == 2
    assert await mgr.export("alice") == {
        **exported,
        "sessions": {},
        "exported_at": pytest.approx(time.time(), abs=5),
    }
    await mgr.chat(agent, "1", "again", platform="telegram")
    assert await mgr.reset("1", platform="telegram") == 2


async def test_user_written_resolver_with_only_resolve_and_link() -> None:
    class DatabaseIdentityResolver:
        def __init__(self) -> None:
            self.rows: dict[tuple[str, str], str] = {}

        def resolve(self, platform: str, platform_user_id: str) -> str:
            return self.rows.get((platform, platform_user_id), f"{platform}:{platform_user_id}")

        def link(self, platform: str, platform_user_id: str, unified_user_id: str) -> None:
            self.rows[(platform, platform_user_id)] = unified_user_id

    resolver = DatabaseIdentityResolver()
    resolver.link("telegram", "1", "alice")
    mgr = BotSessionManager(store="memory://", identity_resolver=resolver)
    agent = RecordingAgent()
    await mgr.chat(agent, "1", "hi", platform="telegram")
    assert await mgr.store.count("user:alice") == 2
    assert (await mgr.export("alice"))["sessions"]


def test_rejects_a_resolver_without_link() -> None:
    class Half:
        def resolve(self, platform: str, platform_user_id: str) -> str:
            return ""

    with pytest.raises(TypeError, match="link"):
        BotSessionManager(identity_resolver=Half())  # type: ignore[arg-type]


async def test_default_store_is_sqlite_under_onethread_home(_isolated_env: object) -> None:
    from pathlib import Path

    mgr = BotSessionManager()
    await mgr.chat(RecordingAgent(), "u", "hi", platform="web")
    await mgr.close()
    assert (Path(str(_isolated_env)) / "history.db").exists()


def test_history_entry_dict_roundtrip() -> None:
    entry = HistoryEntry("user", "x", 1.0, platform="p", mirror=True, metadata={"k": [1]})
    assert HistoryEntry.from_dict(entry.to_dict()) == entry


async def test_relinking_after_unlink_merges_what_was_written_meanwhile() -> None:
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "1", "alice")
    mgr = manager(resolver)
    agent = RecordingAgent()
    await mgr.chat(agent, "1", "linked", platform="telegram")
    resolver.unlink("telegram", "1")
    mgr.forget_merge("telegram", "1")  # what /unlink does
    await mgr.chat(agent, "1", "while unlinked", platform="telegram")
    resolver.link("telegram", "1", "alice")
    await mgr.chat(agent, "1", "linked again", platform="telegram")
    assert [h.content for h in agent.calls[-1][0] if h.role == "user"] == [
        "linked",
        "while unlinked",
    ]
