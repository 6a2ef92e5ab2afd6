"""The README's examples run as written (the seed's examples, onethread imports)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from byo_frameworks import env_for, last_user_text, model_handler, request_text
from fake_openai import FakeOpenAI
from onethread.bots import BotSessionManager
from readme_examples import examples, run_example, run_plain_example


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


async def test_whoami_tool_example() -> None:
    from onethread.session import clear_session_context, set_session_context

    ns: dict[str, object] = {}
    await run_example("whoami-tool", ns)
    token = set_session_context(platform="discord", user_id="snowflake-1", user_name="Alice")
    try:
        assert ns["whoami"]() == "You are Alice on discord"  # type: ignore[operator]
    finally:
        clear_session_context(token)


async def test_set_context_example() -> None:
    await run_example("set-context", {})


async def test_custom_resolver_example() -> None:
    ns: dict[str, object] = {}
    await run_example("custom-resolver", ns)
    assert isinstance(ns["session"], BotSessionManager)


def test_mirror_example_from_plain_code(_isolated_env: Path) -> None:
    ns: dict[str, object] = {}
    run_plain_example("mirror", ns)
    bot = ns["bot"]
    entries = asyncio.run(bot._session.store.load("user:alice"))  # type: ignore[attr-defined]
    assert entries[-1].source == "cron" and entries[-1].mirror


def test_session_manager_example(capsys: object) -> None:
    run_plain_example("session-manager", {"__name__": "__main__"})


def test_resolvers_example() -> None:
    run_plain_example("resolvers", {})


def test_photo_example_says_what_the_offline_model_received(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_plain_example("photo", {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert "You sent: [image: dot.png (image/png, 67 bytes) with the caption" in out


async def test_voice_note_example_against_the_fake_endpoint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fake_openai import FakeOpenAI

    async with FakeOpenAI(lambda body: "You asked me to call mum.") as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        server.transcripts[b"OggS" + bytes(60)] = "please call mum"
        await asyncio.to_thread(run_plain_example, "voice-note", {"__name__": "__main__"})
        assert len(server.transcriptions) == 1
        assert server.requests[0]["messages"][-1]["content"] == "[voice note] please call mum"
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "You asked me to call mum.",
        "please call mum",
    ]


def test_send_file_example_tool_returns_a_file() -> None:
    from onethread import File
    from onethread.agent.files import split_result, turn_files

    ns: dict[str, object] = {}
    run_plain_example("send-file", ns)
    with turn_files() as produced:
        told = split_result(ns["monthly_report"]("may"))  # type: ignore[operator]
    assert isinstance(produced[0], File) and produced[0].name == "report-may.csv"
    assert produced[0].data == b"month,total\nmay,42\n" and produced[0].mime == "text/plain"
    assert told.startswith("Report for may:\n(file report-may.csv, text/plain")


@pytest.mark.parametrize(
    "name",
    ["byo-praisonaiagents", "byo-openai-agents", "byo-pydantic-ai", "byo-langgraph"],
)
async def test_bring_your_own_agent_examples(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAI(model_handler) as server:
        for key, value in env_for(server.base_url).items():
            monkeypatch.setenv(key, value)
        # The example is a script (asyncio.run): it runs in a thread, the fake on this loop.
        await asyncio.to_thread(run_plain_example, name, {"__name__": "__main__"})
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-2:] == ["ack: What is my cat called?", "tool said: You are Alice on discord"]
    asked = next(b for b in server.requests if last_user_text(b) == "What is my cat called?")
    assert "My cat is called Tom." in request_text(asked)  # across platforms, in the framework


def test_streamed_reply_example(capsys: pytest.CaptureFixture[str]) -> None:
    run_plain_example("streamed-reply", {"__name__": "__main__"})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Streams **word** by word."
    assert out[1] == "4 pieces; stored once: ['hello', 'Streams **word** by word.']"
