"""The seed's examples with the seed's own agent: ``from praisonaiagents import Agent``.

The product page onethread started from builds its agent with praisonaiagents. Here the
README's seed examples run with that import kept (every other line as in the README),
against the fake Telegram, Discord and OpenAI servers, as in ``test_e2e_platforms``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from byo_frameworks import model_handler
from onethread.agent.frameworks.praisonai import PraisonAIResponder
from onethread.bots import BotOS, BotSessionManager
from onethread.session import FileIdentityResolver, InMemoryIdentityResolver
from readme_examples import run_example, with_seed_agent
from test_e2e_platforms import Fakes, all_text, fakes, last_user_text, start, stop  # noqa: F401

pytestmark = pytest.mark.timeout(90)


async def test_seed_botos_example_with_a_praisonai_agent(fakes: Fakes) -> None:  # noqa: F811
    ns: dict[str, Any] = {}
    runner = asyncio.create_task(run_example("botos-start", ns, with_seed_agent("botos-start")))
    while "botos" not in ns:
        await asyncio.sleep(0.01)
    botos: BotOS = ns["botos"]
    assert type(ns["agent"]).__module__.startswith("praisonaiagents.")
    assert isinstance(botos.agent, PraisonAIResponder)
    await botos.wait_ready(30)
    FileIdentityResolver().link("discord", "4242", "alice")  # the fake's numeric Alice
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
        assert ns["agent"].chat_history == []  # the seed's agent object held no one's turn
    finally:
        await stop(botos, runner)


async def test_seed_bot_in_memory_and_whoami_examples_with_a_praisonai_agent(
    fakes: Fakes,  # noqa: F811
) -> None:
    ns: dict[str, Any] = {}
    runner = asyncio.create_task(run_example("bot-start", ns, with_seed_agent("bot-start")))
    while "bot" not in ns:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(ns["bot"].ready.wait(), 30)
    fakes.telegram.inject_message(12345, "hi there")
    [reply] = await fakes.telegram.wait_for_messages(1, timeout=15)
    assert reply.text == "ack: hi there"
    await ns["bot"].stop()
    await runner

    ns = {}
    await run_example("in-memory", ns, with_seed_agent("in-memory"))
    botos: BotOS = ns["botos"]
    assert isinstance(botos.agent, PraisonAIResponder)
    assert botos.session.resolve("discord", "snowflake-1") == "alice"
    await stop(botos, await start(botos))

    ns = {}
    await run_example("whoami-tool", ns, with_seed_agent("whoami-tool"))
    fakes.openai.handler = model_handler  # asks for whoami when asked "who am i"
    session = BotSessionManager(store="memory://", identity_resolver=InMemoryIdentityResolver())
    answer = await session.chat(
        ns["agent"], "12345", "who am i?", platform="telegram", user_name="Alice"
    )
    assert answer == "tool said: You are Alice on telegram"


async def test_seed_run_example_with_a_praisonai_agent_in_a_script(
    fakes: Fakes,  # noqa: F811
    tmp_path: Path,
) -> None:
    script = tmp_path / "seed.py"
    script.write_text(with_seed_agent("botos-run"))
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
