"""End to end: BotOS with the REAL python-telegram-bot, discord.py, slack-bolt and openai
clients, each against its protocol-faithful fake server on 127.0.0.1. Nothing of ours is
mocked here."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fake_discord import FakeDiscord
from fake_openai import FakeOpenAI, FakeReply, text, tool_call
from fake_slack import FakeSlack
from fake_telegram import FakeTelegram
from onethread import Agent
from onethread.bots import BotOS
from onethread.bots.supervisor import Backoff
from onethread.session import FileIdentityResolver, InMemoryIdentityResolver, get_session_context
from readme_examples import examples, run_example

pytestmark = pytest.mark.timeout(90)


def last_user_text(body: dict[str, Any]) -> str:
    users = [m for m in body["messages"] if m["role"] == "user"]
    return str(users[-1]["content"]) if users else ""


def all_text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content") or "") for m in body["messages"])


@dataclass
class Fakes:
    telegram: FakeTelegram
    discord: FakeDiscord
    slack: FakeSlack
    openai: FakeOpenAI


@pytest.fixture
async def fakes(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Fakes]:
    async def echo(body: dict[str, Any]) -> str:
        return f"ack: {last_user_text(body)}"

    tg, dc, sl, oa = FakeTelegram(), FakeDiscord(), FakeSlack(), FakeOpenAI(echo)
    for server in (tg, dc, sl, oa):
        await server.start()
    env = {
        "TELEGRAM_BOT_TOKEN": tg.token,
        "TELEGRAM_API_BASE_URL": tg.base_url,
        **dc.env(),
        **sl.env(),
        "ONETHREAD_MODEL": "gpt-test",
        "OPENAI_BASE_URL": oa.base_url,
        "OPENAI_API_KEY": "sk-test",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        yield Fakes(tg, dc, sl, oa)
    finally:
        for server in (oa, sl, dc, tg):
            await (server.close() if isinstance(server, FakeOpenAI) else server.stop())


async def start(botos: BotOS) -> asyncio.Task[None]:
    task = asyncio.create_task(botos.start())
    await botos.wait_ready(30)
    return task


async def stop(botos: BotOS, task: asyncio.Task[None]) -> float:
    t0 = time.perf_counter()
    await botos.stop()
    await task
    return time.perf_counter() - t0


async def test_seed_example_alice_keeps_one_conversation(fakes: Fakes) -> None:
    ns: dict[str, Any] = {}
    runner = asyncio.create_task(run_example("botos-start", ns))  # the README, as written
    while "botos" not in ns:
        await asyncio.sleep(0.01)
    botos: BotOS = ns["botos"]
    await botos.wait_ready(30)
    # Discord ids are numeric snowflakes: link the fake's Alice the same way, from
    # another resolver instance (a live instance sees links written by others).
    FileIdentityResolver().link("discord", "4242", "alice")
    try:
        fakes.telegram.inject_message(12345, "my cat is called Tom", first_name="Alice")
        [tg_reply] = await fakes.telegram.wait_for_messages(1, timeout=15)
        assert tg_reply.text == "ack: my cat is called Tom"
        await asyncio.sleep(0.1)  # past the file resolver's 50 ms refresh window
        await fakes.discord.inject_dm(4242, "what is my cat called?", username="alice")
        await fakes.discord.inject_dm(777, "hello, what cat?", username="bob")
        sent = await fakes.discord.wait_for_messages(2, timeout=15)
        assert sorted(m.text for m in sent) == [
            "ack: hello, what cat?",
            "ack: what is my cat called?",
        ]
        alice = next(r for r in fakes.openai.requests if "what is my cat" in last_user_text(r))
        bob = next(r for r in fakes.openai.requests if "hello, what cat" in last_user_text(r))
        assert "my cat is called Tom" in all_text(alice)
        assert "Tom" not in all_text(bob)
    finally:
        took = await stop(botos, runner)
    assert took < 10


async def test_seed_run_example_blocks_and_stops_on_sigint(fakes: Fakes, tmp_path: Path) -> None:
    script = tmp_path / "seed.py"
    script.write_text(examples()["botos-run"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await fakes.telegram.wait_for_call("getUpdates", timeout=30)
        await fakes.discord.wait_for_identifies(1, timeout=30)
        fakes.telegram.inject_message(12345, "hello from a script")
        [reply] = await fakes.telegram.wait_for_messages(1, timeout=15)
        assert reply.text == "ack: hello from a script"
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = (await proc.stdout.read()).decode() if proc.stdout else ""
    assert code == 0, output
    assert "Traceback" not in output


async def test_forty_users_on_two_platforms_slow_model_no_leak(fakes: Fakes) -> None:
    seen_by: dict[str, str] = {}

    async def slow(body: dict[str, Any]) -> FakeReply:
        said = last_user_text(body)
        seen_by[said] = all_text(body)
        return text(f"ack: {said}", delay=0.3)

    fakes.openai.handler = slow
    resolver = InMemoryIdentityResolver()
    botos = BotOS(
        Agent(name="a"),
        platforms=["telegram", "discord"],
        identity_resolver=resolver,
        store="memory://",
    )
    task = await start(botos)
    try:
        for i in range(20):
            fakes.telegram.inject_message(1000 + i, f"secret-tg-{i}")
            await fakes.discord.inject_dm(2000 + i, f"secret-dc-{i}")
        tg = await fakes.telegram.wait_for_messages(20, timeout=30)
        dc = await fakes.discord.wait_for_messages(20, timeout=30)
        await asyncio.sleep(0.5)  # nothing more arrives: exactly one reply each
        assert len(fakes.telegram.sent) == 20 and len(fakes.discord.sent) == 20
    finally:
        await stop(botos, task)
    assert sorted(m.text for m in tg) == sorted(f"ack: secret-tg-{i}" for i in range(20))
    for m in tg:
        assert m.text == f"ack: secret-tg-{int(m.chat_id) - 1000}"
    assert sorted(m.text for m in dc) == sorted(f"ack: secret-dc-{i}" for i in range(20))
    for said, context in seen_by.items():
        assert context.count("secret-") == 1, (said, context)
    assert fakes.openai.max_in_flight > 1  # the turns really ran concurrently


async def test_tool_sees_platform_chat_and_unified_user(fakes: Fakes) -> None:
    seen: list[tuple[str, str, str, str]] = []

    def where_am_i() -> str:
        """Where the person is writing from."""
        ctx = get_session_context()
        seen.append((ctx.platform, ctx.chat_id, ctx.thread_id, ctx.unified_user_id))
        return f"{ctx.platform}/{ctx.chat_id}"

    async def model(body: dict[str, Any]) -> FakeReply:
        if body["messages"][-1]["role"] == "tool":
            return text(f"you are at {body['messages'][-1]['content']}")
        return tool_call("where_am_i")

    fakes.openai.handler = model
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "12345", "alice")
    resolver.link("slack", "U0ALICE", "alice")
    botos = BotOS(
        Agent(name="a", tools=[where_am_i]),
        platforms=["telegram", "slack"],
        identity_resolver=resolver,
        store="memory://",
    )
    task = await start(botos)
    try:
        fakes.telegram.inject_message(12345, "where am I?")
        await fakes.telegram.wait_for_messages(1, timeout=15)
        await fakes.slack.inject_channel_message(
            fakes.slack.general_id, "U0ALICE", "where am I?", mention=True
        )
        [slack_reply] = await fakes.slack.wait_for_messages(1, timeout=15)
    finally:
        await stop(botos, task)
    assert seen[0] == ("telegram", "12345", "", "alice")
    platform, chat, thread, unified = seen[1]
    assert (platform, chat, unified) == ("slack", fakes.slack.general_id, "alice")
    assert thread and slack_reply.thread_id == thread  # replied in the mention's thread


async def test_duplicate_update_answered_once(fakes: Fakes) -> None:
    from fake_telegram import message_update

    botos = BotOS(Agent(name="a"), platforms=["telegram"], store="memory://")
    task = await start(botos)
    try:
        first = message_update(5, "only once please", update_id=500, message_id=77)
        fakes.telegram.inject_update(first)
        await fakes.telegram.wait_for_messages(1, timeout=15)
        # The same message redelivered under a new update id.
        fakes.telegram.inject_update(
            message_update(5, "only once please", update_id=501, message_id=77)
        )
        fakes.telegram.inject_message(5, "and a new one")
        await fakes.telegram.wait_for_messages(2, timeout=15)
        await asyncio.sleep(0.3)
    finally:
        await stop(botos, task)
    assert [m.text for m in fakes.telegram.sent] == [
        "ack: only once please",
        "ack: and a new one",
    ]


async def test_long_reply_split_and_429_retried(fakes: Fakes) -> None:
    long_reply = "\n\n".join(f"Paragraph {i}: " + "word " * 40 for i in range(50))
    assert len(long_reply) > 10_000
    fakes.openai.handler = lambda body: long_reply
    fakes.telegram.rate_limit("sendMessage", retry_after=0.3, times=1)
    botos = BotOS(Agent(name="a"), platforms=["telegram", "discord"], store="memory://")
    task = await start(botos)
    try:
        fakes.telegram.inject_message(9, "tell me everything")
        await fakes.discord.inject_dm(99, "tell me everything")
        await asyncio.sleep(0.5)
        await fakes.telegram.wait_until(
            lambda: "".join(m.text for m in fakes.telegram.sent).count("Paragraph") == 50,
            timeout=20,
        )
        await fakes.discord.wait_until(
            lambda: "".join(m.text for m in fakes.discord.sent).count("Paragraph") == 50,
            timeout=20,
        )
    finally:
        await stop(botos, task)
    for sent, limit in ((fakes.telegram.sent, 4096), (fakes.discord.sent, 2000)):
        assert len(sent) > 1 and all(len(m.text) <= limit for m in sent)
        joined = " ".join(m.text for m in sent).split()
        assert joined == long_reply.split()
    rate_limited = [c for c in fakes.telegram.requests if c.status == 429]
    assert rate_limited  # the 429 happened, and every paragraph still arrived


async def test_dropped_platform_reconnects_while_the_other_keeps_answering(
    fakes: Fakes,
) -> None:
    botos = BotOS(
        Agent(name="a"),
        platforms=["telegram", "discord"],
        store="memory://",
        backoff=Backoff(base=0.1, cap=0.5),
    )
    task = await start(botos)
    try:
        telegram = botos.bots["telegram"]
        fakes.telegram.drop_connections()
        await fakes.discord.inject_dm(31, "are you there?")
        [reply] = await fakes.discord.wait_for_messages(1, timeout=15)
        assert reply.text == "ack: are you there?"
        # The Telegram adapter gives up on its connection: the supervisor marks it down...
        for _ in range(400):
            if not telegram.ready.is_set():
                break
            await asyncio.sleep(0.025)
        assert not telegram.ready.is_set(), "the dropped connection was never noticed"
        fakes.telegram.restore()
        await asyncio.wait_for(botos.bots["telegram"].ready.wait(), 20)
        fakes.telegram.inject_message(32, "back?")
        [tg_reply] = await fakes.telegram.wait_for_messages(1, timeout=20)
        assert tg_reply.text == "ack: back?"
    finally:
        took = await stop(botos, task)
    assert took < 10


async def test_link_flow_through_real_clients(fakes: Fakes, tmp_path: Path) -> None:
    from onethread.session.pairing import PairingStore

    resolver = InMemoryIdentityResolver()
    botos = BotOS(
        Agent(name="a"),
        platforms=["telegram", "discord", "slack"],
        identity_resolver=resolver,
        store="memory://",
        pairing=PairingStore(tmp_path / "pairing.db"),
    )
    task = await start(botos)
    try:
        fakes.telegram.inject_message(12345, "/link")
        [code_msg] = await fakes.telegram.wait_for_messages(1, timeout=15)
        code = code_msg.text.split("/link ")[1].split()[0]
        await fakes.discord.inject_dm(4242, f"/link {code}")
        [confirm] = await fakes.discord.wait_for_messages(1, timeout=15)
        assert "Linked" in confirm.text
        await fakes.telegram.wait_for_messages(2, timeout=15)
        unified = resolver.resolve("telegram", "12345")
        assert resolver.resolve("discord", "4242") == unified
        # Slack joins: code from Slack, redeemed on Telegram.
        await fakes.slack.inject_dm("U0ALICE", "/link")
        [slack_code] = await fakes.slack.wait_for_messages(1, timeout=15)
        code = slack_code.text.split("/link ")[1].split()[0]
        fakes.telegram.inject_message(12345, f"/link {code}")
        await fakes.telegram.wait_for_messages(3, timeout=15)
        assert resolver.resolve("slack", "U0ALICE") == unified
        # One conversation across all three.
        fakes.telegram.inject_message(12345, "remember: blue")
        await fakes.telegram.wait_for_messages(4, timeout=15)
        await fakes.slack.inject_dm("U0ALICE", "what colour?")
        await fakes.slack.wait_for_messages(3, timeout=15)
    finally:
        await stop(botos, task)
    colour = next(r for r in fakes.openai.requests if "what colour" in last_user_text(r))
    assert "remember: blue" in all_text(colour)


async def test_link_names_the_new_person_through_real_clients(fakes: Fakes, tmp_path: Path) -> None:
    """Telegram's "Alice Liddell" links with Discord: the person is "alice-liddell";
    a second one of that name is "alice-liddell-2"; /link NAME chooses the name."""
    from onethread.session import SQLiteIdentityResolver
    from onethread.session.pairing import PairingStore

    resolver = SQLiteIdentityResolver(tmp_path / "identity.db")
    botos = BotOS(
        Agent(name="a"),
        platforms=["telegram", "discord"],
        identity_resolver=resolver,
        store="memory://",
        pairing=PairingStore(tmp_path / "pairing.db"),
    )
    task = await start(botos)
    tg, dc = fakes.telegram, fakes.discord
    try:
        tg.inject_message(1, "/link", first_name="Alice", last_name="Liddell")
        [issued] = await tg.wait_for_messages(1, timeout=15)
        assert '"alice-liddell"' in issued.text
        code = issued.text.split("/link ")[1].split()[0]
        assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}", code)
        await dc.inject_dm(4242, f"/link {code.lower().replace('-', ' ')}", username="Al")
        [confirm] = await dc.wait_for_messages(1, timeout=15)
        assert 'Linked as "alice-liddell"' in confirm.text
        told = await tg.wait_for_messages(2, timeout=15)
        assert 'Linked as "alice-liddell"' in told[1].text
        assert resolver.resolve("discord", "4242") == "alice-liddell"
        await dc.inject_dm(4242, "/whoami")
        whoami = (await dc.wait_for_messages(2, timeout=15))[1]
        assert '"alice-liddell"' in whoami.text and "telegram:1" in whoami.text
        await dc.inject_dm(4242, "remember: blue")
        await dc.wait_for_messages(3, timeout=15)
        # Another Alice Liddell: the name is taken, so she is alice-liddell-2.
        tg.inject_message(2, "/link", first_name="Alice", last_name="Liddell")
        code = (await tg.wait_for_messages(3, timeout=15))[2].text.split("/link ")[1].split()[0]
        await dc.inject_dm(5151, f"/link {code}")
        assert 'Linked as "alice-liddell-2"' in (await dc.wait_for_messages(4, timeout=15))[3].text
        # /link NAME: this one chose "Mary Ann".
        await dc.inject_dm(6161, "/link Mary Ann", username="M")
        code = (await dc.wait_for_messages(5, timeout=15))[4].text.split("/link ")[1].split()[0]
        tg.inject_message(3, f"/link {code}", first_name="Not Mary")
        assert 'Linked as "mary-ann"' in (await tg.wait_for_messages(5, timeout=15))[4].text
        assert (
            resolver.resolve("telegram", "3") == resolver.resolve("discord", "6161") == ("mary-ann")
        )
        # What she said is found under the name the operator sees (`history show alice-liddell`).
        exported = await botos.session.export("alice-liddell")
        said = [e["content"] for e in exported["sessions"]["user:alice-liddell"]]
        assert "remember: blue" in said
    finally:
        await stop(botos, task)
        resolver.close()


async def test_link_refusals_lockout_unlink_and_approval_through_real_clients(
    fakes: Fakes, tmp_path: Path
) -> None:
    from onethread.bots.policy import ApprovalPolicy, OpenPolicy, approve_code
    from onethread.session.pairing import PairingStore

    pairing = PairingStore(tmp_path / "pairing.db")
    resolver = InMemoryIdentityResolver()
    botos = BotOS(
        Agent(name="a"),
        platforms=["telegram", "discord", "slack"],
        identity_resolver=resolver,
        store="memory://",
        pairing=pairing,
        access={
            "telegram": OpenPolicy(),
            "slack": OpenPolicy(),
            "discord": ApprovalPolicy(pairing, owners=["4242"]),
        },
    )
    task = await start(botos)
    tg, dc, sl = fakes.telegram, fakes.discord, fakes.slack
    try:
        tg.inject_message(1, "/link")
        [issued] = await tg.wait_for_messages(1, timeout=15)
        code = issued.text.split("/link ")[1].split()[0]
        # In a group: refused, and the code is burned (the group saw it).
        tg.inject_message(2, f"/link@{tg.bot_username} {code}", chat_id=-100, chat_type="group")
        group = (await tg.wait_for_messages(2, timeout=15))[1]
        assert "no longer works" in group.text and group.chat_id == -100
        tg.inject_message(1, "/link")
        code = (await tg.wait_for_messages(3, timeout=15))[2].text.split("/link ")[1].split()[0]
        # Five wrong codes from the Discord owner account, then the right one: locked out.
        for _ in range(5):
            await dc.inject_dm(4242, "/link AAAA-AAAA-AAA2")
        await dc.wait_for_messages(5, timeout=15)
        await dc.inject_dm(4242, f"/link {code}")
        sent = await dc.wait_for_messages(6, timeout=15)
        assert "locked" in sent[-1].text
        # Slack redeems it instead.
        await sl.inject_dm("U0ALICE", f"/link {code}")
        [linked] = await sl.wait_for_messages(1, timeout=15)
        assert "Linked" in linked.text
        assert resolver.resolve("slack", "U0ALICE") == resolver.resolve("telegram", "1")
        # /unlink restores separation.
        await sl.inject_dm("U0ALICE", "/unlink")
        await sl.wait_for_messages(2, timeout=15)
        assert resolver.resolve("slack", "U0ALICE") == "slack:U0ALICE"
        # Discord requires approval: a stranger gets a code, the owner approves it.
        await dc.inject_dm(5555, "hello?")
        sent = await dc.wait_for_messages(7, timeout=15)
        approval = sent[-1].text.split("approve discord ")[1].split()[0]
        assert approve_code(PairingStore(tmp_path / "pairing.db"), "discord", approval) == (
            "discord",
            "5555",
        )
        await dc.inject_dm(5555, "and now?")
        sent = await dc.wait_for_messages(8, timeout=15)
        assert sent[-1].text == "ack: and now?"
    finally:
        await stop(botos, task)
    assert not any("hello?" in last_user_text(r) for r in fakes.openai.requests)


async def test_seed_one_platform_and_in_memory_examples(fakes: Fakes) -> None:
    ns: dict[str, Any] = {}
    runner = asyncio.create_task(run_example("bot-start", ns))
    while "bot" not in ns:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(ns["bot"].ready.wait(), 30)
    fakes.telegram.inject_message(12345, "hi there")
    [reply] = await fakes.telegram.wait_for_messages(1, timeout=15)
    assert reply.text == "ack: hi there"
    await ns["bot"].stop()
    await runner

    ns = {}
    await run_example("in-memory", ns)
    botos: BotOS = ns["botos"]
    assert sorted(botos.bots) == ["discord", "telegram"]
    assert botos.session.resolve("discord", "snowflake-1") == "alice"
    task = await start(botos)
    await stop(botos, task)
