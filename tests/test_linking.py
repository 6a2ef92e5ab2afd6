"""Verified linking, access policies and group scope, over in-process adapters."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from helpers import RecordingAgent
from onethread.bots import Bot, BotOS
from onethread.bots.policy import AllowlistPolicy, ApprovalPolicy, OpenPolicy, approve_code
from onethread.errors import BadRequest, ConfigError
from onethread.session import InMemoryIdentityResolver
from onethread.session.pairing import ALPHABET, PairingStore
from onethread.testing import FakeAdapter

CODE = re.compile(r"/link ([A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4})\n")


class World:
    def __init__(self, botos: BotOS, agent: RecordingAgent, resolver: InMemoryIdentityResolver):
        self.botos, self.agent, self.resolver = botos, agent, resolver
        self.fakes = {name: bot.adapter for name, bot in botos.bots.items()}

    def fake(self, name: str) -> FakeAdapter:
        adapter = self.fakes[name]
        assert isinstance(adapter, FakeAdapter)
        return adapter

    async def say(self, platform: str, user: str, text: str, **kw: object) -> str:
        fake = self.fake(platform)
        before = len(fake.sent)
        await fake.inject(text, user=user, chat_id=kw.pop("chat_id", f"{platform}-{user}"), **kw)  # type: ignore[arg-type]
        sent = await fake.wait_sent(before + 1)
        return sent[before].text

    async def code(self, platform: str, user: str) -> str:
        reply = await self.say(platform, user, "/link")
        match = CODE.search(reply)
        assert match, reply
        return match.group(1)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    resolver = InMemoryIdentityResolver()
    agent = RecordingAgent()
    botos = BotOS(
        agent=agent, identity_resolver=resolver, store="memory://", pairing=PairingStore(":memory:")
    )
    for name in ("telegram", "discord", "slack"):
        botos.add_bot(
            Bot(name, agent, adapter=FakeAdapter(name), session=botos.session, access=OpenPolicy())
        )
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(5)
    yield World(botos, agent, resolver)
    await botos.stop()
    await task


async def test_full_link_flow_across_three_platforms(world: World) -> None:
    await world.say("telegram", "t1", "my name is Alice")
    await world.say("discord", "d1", "hello from discord")
    code = await world.code("telegram", "t1")
    confirm = await world.say("discord", "d1", f"/link {code}")
    assert "Linked" in confirm and "discord" in confirm and "telegram" in confirm
    # The issuing account is told too.
    assert "Linked" in world.fake("telegram").sent[-1].text
    unified = world.resolver.resolve("telegram", "t1")
    assert unified == world.resolver.resolve("discord", "d1") and ":" not in unified
    # Histories merged by time, once.
    await world.say("discord", "d1", "what is my name?")
    history = world.agent.calls[-1][0]
    assert [h.content for h in history] == [
        "my name is Alice",
        "reply:my name is Alice",
        "hello from discord",
        "reply:hello from discord",
    ]
    # A third platform joins from the new side: code issued on slack, redeemed on telegram.
    code = await world.code("slack", "s1")
    assert "Linked" in await world.say("telegram", "t1", f"/link {code}")
    assert world.resolver.resolve("slack", "s1") == unified
    whoami = await world.say("slack", "s1", "/whoami")
    assert unified in whoami and "discord:d1" in whoami and "telegram:t1" in whoami


async def test_refusals(world: World) -> None:
    code = await world.code("telegram", "t1")
    group = await world.say(
        "discord", "d1", f"/link {code}", chat_type="group", chat_id="g1", mentions_bot=True
    )
    # Refused, and the code is burned: everyone in the group has seen it.
    assert "direct message" in group and "no longer works" in group
    assert "already used" in await world.say("slack", "s7", f"/link {code}")
    assert world.resolver.resolve("slack", "s7") == "slack:s7"
    code = await world.code("telegram", "t1")
    assert "OTHER account" in await world.say("telegram", "t1", f"/link {code}")
    assert "different platforms" in await world.say("telegram", "t2", f"/link {code}")
    assert "Linked" in await world.say("discord", "d1", f"/link {code}")
    assert "already used" in await world.say("slack", "s1", f"/link {code}")
    # No silent takeover: an account linked to someone else must /unlink first.
    world.resolver.link("slack", "s9", "bob")
    world.resolver.link("discord", "d9", "bob")
    code = await world.code("telegram", "t1")
    assert "/unlink" in await world.say("slack", "s9", f"/link {code}")
    assert world.resolver.resolve("slack", "s9") == "bob"


async def test_expired_code(world: World) -> None:
    store = world.botos.link_flow.store
    code = store.issue("link", "telegram", "t1", ttl=-1)
    assert code is not None
    assert "expired" in await world.say("discord", "d1", f"/link {code}")


async def test_lockout_after_five_failures(world: World) -> None:
    for _ in range(5):
        assert "not valid" in await world.say("discord", "d1", "/link AAAA-AAAA-AAA2")
    good = await world.code("telegram", "t1")
    assert "locked" in await world.say("discord", "d1", f"/link {good}")
    assert world.resolver.resolve("discord", "d1") == "discord:d1"
    # Another account is not affected.
    assert "Linked" in await world.say("slack", "s1", f"/link {good}")


async def test_at_most_three_live_codes(world: World) -> None:
    codes = [await world.code("telegram", "t1") for _ in range(3)]
    assert len(set(codes)) == 3
    assert "3 unused" in await world.say("telegram", "t1", "/link")


async def test_codes_are_stored_hashed_and_never_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="onethread")  # an earlier CLI test may have set it
    code = await world.code("telegram", "t1")
    await world.say("discord", "d1", f"/link {code}")
    assert code not in caplog.text
    rows = world.botos.link_flow.store._conn.execute("SELECT hash FROM codes").fetchall()
    assert rows and all(code not in r[0] for r in rows)


async def test_concurrent_redemption_exactly_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "pairing.db"
    stores = [PairingStore(path) for _ in range(4)]
    code = stores[0].issue("link", "telegram", "t1")
    assert code is not None
    results = await asyncio.gather(
        *(
            asyncio.to_thread(s.redeem, "link", code, by_platform="discord", by_user_id=f"d{i}")
            for i, s in enumerate(stores)
        )
    )
    assert sum(r.code is not None for r in results) == 1
    assert sorted(r.error for r in results if r.code is None) == ["used"] * 3


async def test_concurrent_link_commands_from_two_accounts(world: World) -> None:
    code = await world.code("telegram", "t1")
    d, s = world.fake("discord"), world.fake("slack")
    await asyncio.gather(d.inject(f"/link {code}", user="d1"), s.inject(f"/link {code}", user="s1"))
    await d.wait_sent(1)
    await s.wait_sent(1)
    replies = [d.sent[-1].text, s.sent[-1].text]
    assert sum("Linked" in r for r in replies) == 1
    assert sum("already used" in r for r in replies) == 1


async def test_unlink_restores_separation(world: World) -> None:
    code = await world.code("telegram", "t1")
    await world.say("discord", "d1", f"/link {code}")
    await world.say("telegram", "t1", "shared secret")
    assert "no longer linked" in await world.say("discord", "d1", "/unlink")
    await world.say("discord", "d1", "what was the secret?")
    assert world.agent.calls[-1][0] == []
    assert world.resolver.resolve("discord", "d1") == "discord:d1"
    assert "not linked" in await world.say("discord", "d1", "/unlink")


async def test_new_starts_fresh_everywhere(world: World) -> None:
    code = await world.code("telegram", "t1")
    await world.say("discord", "d1", f"/link {code}")
    await world.say("telegram", "t1", "remember this")
    assert "fresh" in await world.say("discord", "d1", "/new")
    await world.say("telegram", "t1", "anything?")
    assert world.agent.calls[-1][0] == []


async def test_group_isolation_and_attribution(world: World) -> None:
    code = await world.code("telegram", "t1")
    await world.say("discord", "d1", f"/link {code}")
    await world.say("telegram", "t1", "dm only secret")
    await world.say(
        "telegram",
        "t1",
        "@bot hi all",
        chat_type="group",
        chat_id="g",
        mentions_bot=True,
        user_name="Alice",
    )
    history, message, ctx = world.agent.calls[-1]
    assert history == [] and ctx.chat_type == "group"
    await world.say(
        "telegram",
        "t2",
        "@bot me too",
        chat_type="group",
        chat_id="g",
        mentions_bot=True,
        user_name="Bob",
    )
    history, _, _ = world.agent.calls[-1]
    assert [(h.user_name, h.content) for h in history if h.role == "user"] == [
        ("Alice", "@bot hi all")
    ]
    await world.say("telegram", "t1", "back to dm")
    assert all("hi all" not in h.content for h in world.agent.calls[-1][0])


async def test_allowlist_policy() -> None:
    adapter = FakeAdapter("telegram")
    agent = RecordingAgent()
    bot = Bot("telegram", agent, adapter=adapter, store="memory://", access=AllowlistPolicy(["1"]))
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    await adapter.inject("hi", user="1")
    await adapter.inject("hi", user="2")
    await adapter.inject("hi again", user="2")
    await adapter.wait_sent(2)
    await asyncio.sleep(0.05)
    await bot.stop()
    await task
    assert sorted(s.text for s in adapter.sent) == ["Sorry, this bot is private.", "reply:hi"]
    assert len(agent.calls) == 1


async def test_approval_policy_with_owner_cli_approval(tmp_path: Path) -> None:
    store = PairingStore(tmp_path / "pairing.db")
    adapter = FakeAdapter("telegram")
    agent = RecordingAgent()
    bot = Bot(
        "telegram",
        agent,
        adapter=adapter,
        store="memory://",
        access=ApprovalPolicy(store, owners=["owner"], max_pending=2),
    )
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    await adapter.inject("hi", user="owner")
    await adapter.inject("let me in", user="stranger")
    sent = await adapter.wait_sent(2)
    request = next(s.text for s in sent if "approve" in s.text)
    code = re.search(r"approve telegram ([A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4})\n", request)
    assert code
    await adapter.inject("please", user="stranger")  # one code per sender: silent
    await asyncio.sleep(0.05)
    assert len(adapter.sent) == 2 and len(agent.calls) == 1
    # The queue is bounded: after max_pending, new senders are told once.
    await adapter.inject("x", user="s2")
    await adapter.inject("y", user="s3")
    await adapter.inject("z", user="s3")
    await adapter.wait_sent(4)
    await asyncio.sleep(0.05)
    assert "not taking new users" in adapter.sent[-1].text and len(adapter.sent) == 4
    # The owner approves from another process (a second store on the same file).
    with pytest.raises(ConfigError, match="discord"):
        approve_code(PairingStore(tmp_path / "pairing.db"), "discord", code.group(1))
    assert approve_code(PairingStore(tmp_path / "pairing.db"), "telegram", code.group(1)) == (
        "telegram",
        "stranger",
    )
    await adapter.inject("now?", user="stranger")
    await adapter.wait_sent(5)
    await bot.stop()
    await task
    assert adapter.sent[-1].text == "reply:now?"


def test_ambiguous_characters_excluded() -> None:
    assert not set("01OIL") & set(ALPHABET)
    assert time.time() > 0


async def test_a_web_chat_id_never_reaches_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The web chat's browser id is its only credential: logs show a short hash."""
    secret = "b7f3c2e9-browser-id-4d1a"
    resolver = InMemoryIdentityResolver()
    agent = RecordingAgent()
    botos = BotOS(
        agent=agent, identity_resolver=resolver, store="memory://", pairing=PairingStore(":memory:")
    )
    for name in ("telegram", "web"):
        botos.add_bot(
            Bot(name, agent, adapter=FakeAdapter(name), session=botos.session, access=OpenPolicy())
        )
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(5)
    world = World(botos, agent, resolver)
    caplog.set_level("DEBUG", logger="onethread")  # an earlier CLI test may have set it
    try:
        await world.say("web", secret, "hello from the browser")  # legacy history to merge
        refused = await world.say("web", secret, "/link AAAA-AAAA-AAA2")
        assert "link" in refused.lower()
        code = await world.code("telegram", "t1")
        assert "Linked" in await world.say("web", secret, f"/link {code}")
        agent.fail = True  # the model fails: logged with the session key
        await world.say("web", "another-browser-id-77", "hello?")
        agent.fail = False
        web = world.fake("web")

        async def refuse(*args: object, **kwargs: object) -> str:
            raise BadRequest("socket gone")

        web.do_send = refuse  # type: ignore[method-assign]
        await web.inject("are you there", user=secret, chat_id=f"web-{secret}")
        for _ in range(100):
            if "could not deliver" in caplog.text:
                break
            await asyncio.sleep(0.01)
    finally:
        await botos.stop()
        await task
    logged = caplog.text
    assert "linked telegram:t1 and web:#" in logged  # the link is logged, the id is not
    assert "merged" in logged and "refused" in logged
    assert "model failed for #" in logged and "could not deliver the reply to #" in logged
    assert secret not in logged and "another-browser-id-77" not in logged


async def test_approval_with_a_full_pairing_store(caplog: pytest.LogCaptureFixture) -> None:
    """Past access.max_codes, new senders are told plainly, and the log gets one line."""
    caplog.set_level("INFO", logger="onethread")
    policy = ApprovalPolicy(PairingStore(":memory:", max_codes=1), owners=["owner"])
    adapter = FakeAdapter("telegram")
    bot = Bot("telegram", RecordingAgent(), adapter=adapter, store="memory://", access=policy)
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    try:
        for n, user in enumerate(["s1", "s2", "s3", "s4"], start=1):
            await adapter.inject("hello", user=user)
            await adapter.wait_sent(n)
    finally:
        await bot.stop()
        await task
    texts = [s.text for s in adapter.sent]
    assert "onethread access approve telegram" in texts[0]
    assert texts[1:] == ["This bot is not taking new users right now. Please try again later."] * 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("access.max_codes" in w for w in warnings) == 1


async def test_a_revoke_from_the_cli_reaches_a_running_bot(tmp_path: Path) -> None:
    """An approval is cached for ``recheck`` seconds only: a revoke made by
    ``onethread access revoke`` (another process, same file) stops a running bot
    from serving the sender once that time has passed."""
    now = [1000.0]
    store = PairingStore(tmp_path / "pairing.db")
    store.approve("telegram", "guest")
    adapter = FakeAdapter("telegram")
    agent = RecordingAgent()
    policy = ApprovalPolicy(store, owners=["owner"], recheck=10.0, clock=lambda: now[0])
    bot = Bot("telegram", agent, adapter=adapter, store="memory://", access=policy)
    task = asyncio.create_task(bot.start())
    await bot.ready.wait()
    await adapter.inject("one", user="guest")
    await adapter.wait_sent(1)
    assert PairingStore(tmp_path / "pairing.db").revoke("telegram", "guest")
    await adapter.inject("two", user="guest")  # within the recheck time: still cached
    await adapter.wait_sent(2)
    now[0] += 10.5
    await adapter.inject("three", user="guest")
    await adapter.wait_sent(3)
    await bot.stop()
    await task
    assert [s.text for s in adapter.sent[:2]] == ["reply:one", "reply:two"]
    assert "approve telegram" in adapter.sent[2].text
    assert len(agent.calls) == 2


def test_a_negative_recheck_is_refused() -> None:
    with pytest.raises(ValueError, match="recheck"):
        ApprovalPolicy(PairingStore(":memory:"), recheck=-1)
