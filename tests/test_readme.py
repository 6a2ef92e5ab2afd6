"""Every Python block of the README runs as written, and prints what the README shows.

Each block has a runner below (``RUNNERS``); a block without one fails
``test_readme_block``, so a new example cannot go untested. Every block runs
with ``HOME`` pointed at an empty folder and ``ONETHREAD_HOME`` unset, as on a
new user's machine: the examples that are not deployments must leave it empty,
and the deployments (they serve Telegram and Discord, here against the tests'
fake servers) may write only under ``~/.onethread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from byo_frameworks import env_for, last_user_text, model_handler, request_text
from fake_discord import FakeDiscord
from fake_openai import FakeOpenAI
from fake_telegram import FakeTelegram
from onethread.bots import Bot, BotOS, BotSessionManager
from onethread.errors import ConfigError
from readme_examples import examples, outputs, python_blocks, run_example, run_plain_example

pytestmark = pytest.mark.timeout(90)

Runner = Callable[[pytest.MonkeyPatch], Awaitable[None]]

DEPLOYMENTS = {"botos-run", "botos-start", "bot-start"}
"""Blocks that are a real deployment: they keep links and history under ~/.onethread."""


@asynccontextmanager
async def platform_fakes(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, Any]]:
    """FakeTelegram and FakeDiscord on 127.0.0.1, their tokens and URLs in the environment."""
    tg, dc = FakeTelegram(), FakeDiscord()
    await tg.start()
    await dc.start()
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", tg.token)
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", tg.base_url)
    for name, value in dc.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield tg, dc
    finally:
        await dc.stop()
        await tg.stop()


async def _wait_for(ns: dict[str, Any], name: str) -> Any:
    while name not in ns:
        await asyncio.sleep(0.01)
    return ns[name]


# -- the runners, one per README block -----------------------------------------------


async def run_botos_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """``.run()`` blocks: run it as a script, talk to it, stop it with Ctrl-C (SIGINT)."""
    async with platform_fakes(monkeypatch) as (tg, dc):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", examples()["botos-run"], env=dict(os.environ),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            await tg.wait_for_call("getUpdates", timeout=30)
            await dc.wait_for_identifies(1, timeout=30)
            tg.inject_message(12345, "hello from a script")
            [reply] = await tg.wait_for_messages(1, timeout=15)
            assert 'You said: "hello from a script"' in reply.text
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.stdout is not None
        assert b"Traceback" not in await proc.stdout.read()


async def run_botos_start(monkeypatch: pytest.MonkeyPatch) -> None:
    async with platform_fakes(monkeypatch) as (tg, dc):
        ns: dict[str, Any] = {}
        runner = asyncio.create_task(run_example("botos-start", ns))
        botos: BotOS = await _wait_for(ns, "botos")
        try:
            await botos.wait_ready(30)
            tg.inject_message(12345, "hi from telegram")
            [reply] = await tg.wait_for_messages(1, timeout=15)
            assert 'You said: "hi from telegram"' in reply.text
        finally:
            await botos.stop()
            await runner


async def run_webhook_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The signing client against a real BotOS serving the webhook platform."""
    from helpers import RecordingAgent

    monkeypatch.setenv("WEBHOOK_SECRET", "readme-webhook-secret")
    botos = BotOS(RecordingAgent(), platforms=["webhook"], store="memory://", http={"port": 0})
    running = asyncio.create_task(botos.start())
    try:
        await botos.wait_ready(10)
        monkeypatch.setenv("ONETHREAD_URL", botos.ingress.url.rstrip("/"))
        ns: dict[str, Any] = {}
        await asyncio.to_thread(run_plain_example, "webhook-client", ns)
        assert ns["answer"]["reply"] == "reply:What is on my list?"
        assert ns["answer"]["message_id"] == "evt-2"
    finally:
        await botos.stop()
        await running


async def run_bot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    async with platform_fakes(monkeypatch) as (tg, _dc):
        ns: dict[str, Any] = {}
        runner = asyncio.create_task(run_example("bot-start", ns))
        bot: Bot = await _wait_for(ns, "bot")
        try:
            await asyncio.wait_for(bot.ready.wait(), 30)
            tg.inject_message(12345, "hi there")
            [reply] = await tg.wait_for_messages(1, timeout=15)
            assert 'You said: "hi there"' in reply.text
        finally:
            await bot.stop()
            await runner


async def run_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    ns: dict[str, Any] = {}
    await run_example("in-memory", ns)  # no token anywhere: building needs none
    botos: BotOS = ns["botos"]
    assert sorted(botos.bots) == ["discord", "telegram"]
    assert botos.session.resolve("discord", "snowflake-1") == "alice"
    with pytest.raises(ConfigError, match="_BOT_TOKEN"):
        await botos.start()  # start() does, and names the variable
    assert "TELEGRAM_BOT_TOKEN" in str(botos.failed["telegram"])
    assert "DISCORD_BOT_TOKEN" in str(botos.failed["discord"])
    async with platform_fakes(monkeypatch) as (tg, _dc):
        ns = {}
        await run_example("in-memory", ns)
        botos = ns["botos"]
        task = asyncio.create_task(botos.start())
        try:
            await botos.wait_ready(30)
            tg.inject_message(12345, "ephemeral?")
            [reply] = await tg.wait_for_messages(1, timeout=15)
            assert 'You said: "ephemeral?"' in reply.text
        finally:
            await botos.stop()
            await task


async def run_whoami_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    from onethread.session import clear_session_context, set_session_context

    ns: dict[str, Any] = {}
    await run_example("whoami-tool", ns)
    token = set_session_context(platform="discord", user_id="snowflake-1", user_name="Alice")
    try:
        assert ns["whoami"]() == "You are Alice on discord"
    finally:
        clear_session_context(token)
    assert "whoami" in ns["agent"].tools


async def run_set_context(monkeypatch: pytest.MonkeyPatch) -> None:
    await run_example("set-context", {})


async def run_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plain code, as a script runs it: no event loop in this thread.
    ns: dict[str, Any] = {}
    await asyncio.to_thread(run_plain_example, "mirror", ns)
    entries = await ns["bot"].session.store.load("user:alice")
    assert [(e.source, e.mirror) for e in entries] == [("cron", True)]


async def run_session_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    await asyncio.to_thread(run_plain_example, "session-manager", {"__name__": "__main__"})


async def run_long_conversations(monkeypatch: pytest.MonkeyPatch) -> None:
    await asyncio.to_thread(run_plain_example, "long-conversations", {"__name__": "__main__"})


async def run_resolvers(monkeypatch: pytest.MonkeyPatch) -> None:
    await asyncio.to_thread(run_plain_example, "resolvers", {})


async def run_custom_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    ns: dict[str, Any] = {}
    await run_example("custom-resolver", ns)
    assert isinstance(ns["session"], BotSessionManager)
    assert ns["session"].resolve("telegram", "1") == "telegram:1"


def _byo_runner(name: str) -> Runner:
    async def run(monkeypatch: pytest.MonkeyPatch) -> None:
        """A framework agent served by onethread, against the fake model endpoint."""
        out = io.StringIO()
        async with FakeOpenAI(model_handler) as server:
            for key, value in env_for(server.base_url).items():
                monkeypatch.setenv(key, value)

            def script() -> None:  # a script (asyncio.run): in a thread, the fake on this loop
                with contextlib.redirect_stdout(out):
                    run_plain_example(name, {"__name__": "__main__"})

            await asyncio.to_thread(script)
        printed = out.getvalue().strip().splitlines()
        assert printed[-2:] == [
            "ack: What is my cat called?",
            "tool said: You are Alice on discord",
        ]
        asked = next(b for b in server.requests if last_user_text(b) == "What is my cat called?")
        assert "My cat is called Tom." in request_text(asked)  # across platforms, in it

    return run


async def run_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standup reminder fires on the (in-process) platform; the daily job is cancelled."""
    ns: dict[str, Any] = {}
    await run_example("schedule", ns)
    texts = [m.text for m in ns["telegram"].sent]
    assert texts[-1] == "Reminder: your standup is in 5 minutes."
    assert await ns["botos"].jobs() == []  # one done, one cancelled


async def run_reminder_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent gets the three reminder tools."""
    ns: dict[str, Any] = {}
    await run_example("reminder-tools", ns)
    assert list(ns["agent"].tools) == [
        "remind_me", "list_reminders", "cancel_reminder",
    ]  # fmt: skip


def _captured(name: str) -> str:
    """Run a plain-script example in this thread, returning what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_plain_example(name, {"__name__": "__main__"})
    return out.getvalue()


async def run_photo(monkeypatch: pytest.MonkeyPatch) -> None:
    printed = await asyncio.to_thread(_captured, "photo")
    print(printed, end="")
    assert "You sent: [image: dot.png (image/png, 67 bytes) with the caption" in printed


async def run_voice_note(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeOpenAI(lambda body: "You asked me to call mum.") as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        server.transcripts[b"OggS" + bytes(60)] = "please call mum"
        printed = await asyncio.to_thread(_captured, "voice-note")
        assert len(server.transcriptions) == 1
        assert server.requests[0]["messages"][-1]["content"] == "[voice note] please call mum"
    assert printed.splitlines()[-2:] == ["You asked me to call mum.", "please call mum"]


async def run_send_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from onethread import File
    from onethread.agent.files import split_result, turn_files

    ns: dict[str, Any] = {}
    run_plain_example("send-file", ns)
    with turn_files() as produced:
        told = split_result(ns["monthly_report"]("may"))
    assert isinstance(produced[0], File) and produced[0].name == "report-may.csv"
    assert produced[0].data == b"month,total\nmay,42\n" and produced[0].mime == "text/plain"
    assert told.startswith("Report for may:\n(file report-may.csv, text/plain")


async def run_streamed_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    printed = (await asyncio.to_thread(_captured, "streamed-reply")).splitlines()
    assert printed[0] == "Streams **word** by word."  # printed piece by piece
    assert printed[1] == "4 pieces; stored once: ['hello', 'Streams **word** by word.']"


RUNNERS: dict[str, Runner] = {
    "streamed-reply": run_streamed_reply,
    "schedule": run_schedule,
    "reminder-tools": run_reminder_tools,
    "photo": run_photo,
    "voice-note": run_voice_note,
    "send-file": run_send_file,
    **{
        name: _byo_runner(name)
        for name in ("byo-praisonaiagents", "byo-openai-agents", "byo-pydantic-ai", "byo-langgraph")
    },
    "botos-run": run_botos_run,
    "botos-start": run_botos_start,
    "bot-start": run_bot_start,
    "webhook-client": run_webhook_client,
    "in-memory": run_in_memory,
    "whoami-tool": run_whoami_tool,
    "set-context": run_set_context,
    "mirror": run_mirror,
    "session-manager": run_session_manager,
    "long-conversations": run_long_conversations,
    "resolvers": run_resolvers,
    "custom-resolver": run_custom_resolver,
}


# -- the tests ------------------------------------------------------------------------


def test_every_python_block_is_named_and_has_a_runner() -> None:
    blocks = python_blocks()
    unnamed = [source.splitlines()[0] for name, source in blocks if name is None]
    assert not unnamed, f"README python blocks without <!-- example: NAME -->: {unnamed}"
    names = [name for name, _ in blocks]
    assert len(names) == len(set(names)), f"two README examples share a name: {names}"
    assert set(names) == set(RUNNERS), "every README block needs a runner in test_readme.py"
    assert set(outputs()) <= set(names), "an <!-- output: NAME --> names no example"
    assert DEPLOYMENTS <= set(names)


def test_every_seed_example_is_in_the_readme() -> None:
    assert {
        "botos-run",
        "botos-start",
        "bot-start",
        "in-memory",
        "whoami-tool",
        "set-context",
        "mirror",
        "custom-resolver",
    } <= set(examples())


def test_webhook_examples_send_different_message_ids() -> None:
    """A reader runs the curl example, then the Python one: a repeated id is a
    duplicate (no reply), so the Python example would print an empty line."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    shell = re.findall(r"body='\{[^']*\"message_id\": \"([^\"]+)\"", readme)
    python = re.findall(r'"message_id": "([^"]+)"\}\)\.encode\(\)', readme)
    assert shell and python, "the README's webhook examples moved: update this test"
    assert not set(shell) & set(python)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("name", [name or "<unnamed>" for name, _ in python_blocks()])
async def test_readme_block(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Runs the block in a new user's empty HOME; checks what it prints and writes."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("ONETHREAD_HOME", raising=False)  # the default: ~/.onethread
    assert name in RUNNERS, f"README block {name!r} is not run by any test: add a runner"
    capfd.readouterr()
    await RUNNERS[name](monkeypatch)
    printed = capfd.readouterr().out
    shown = outputs().get(name)
    if shown is not None:
        assert printed == shown, f"README shows {shown!r} for {name}; it printed {printed!r}"
    created = _files(home)
    if name in DEPLOYMENTS:
        assert created and all(p.startswith(".onethread") for p in created), created
    else:
        assert created == set(), f"README example {name} wrote {sorted(created)} in HOME"
