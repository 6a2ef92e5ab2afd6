"""The Agent against a fake OpenAI server through the real openai SDK, and offline."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from fake_openai import FakeOpenAI, error, text, tool_call, tool_calls
from onethread import Agent
from onethread.agent import ModelReply, OfflineModel, OpenAIModel, ToolCall
from onethread.errors import ConfigError, ModelError
from onethread.session import (
    SessionContext,
    clear_session_context,
    get_session_context,
    set_session_context,
)
from onethread.session.history.base import HistoryEntry
from onethread.testing import EchoModel, ScriptedModel

ENV = ("ONETHREAD_MODEL", "OPENAI_API_KEY", "OPENAI_BASE_URL")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as fake:
        yield fake


@pytest.fixture
async def close_later() -> AsyncIterator[list[Agent]]:
    """Agents appended here have their SDK connections closed at teardown."""
    agents: list[Agent] = []
    yield agents
    for agent in agents:
        await agent.aclose()


@pytest.fixture
def agent_for(server: FakeOpenAI, close_later: list[Agent]) -> Callable[..., Agent]:
    """Build an Agent on the fake server (SDK retries off unless asked)."""

    def build(instructions: str = "", tools: Any = (), **kw: Any) -> Agent:
        model_kw = {k: kw.pop(k) for k in ("timeout", "max_retries", "api_key") if k in kw}
        model_kw.setdefault("max_retries", 0)
        model_kw.setdefault("api_key", "sk-test")
        model = OpenAIModel("gpt-test", base_url=server.base_url, **model_kw)
        agent = Agent("helper", instructions, tools, model, **kw)
        close_later.append(agent)
        return agent

    return build


def entry(role: str, content: str, **kw: Any) -> HistoryEntry:
    return HistoryEntry(role=role, content=content, timestamp=time.time(), **kw)


# --- replies and the tool loop ---------------------------------------------------------


async def test_plain_reply(server: FakeOpenAI, agent_for: Callable[..., Agent]) -> None:
    server.queue(text("Hello there!"))
    agent = agent_for("Be kind.")
    history = [entry("user", "hi"), entry("assistant", "hey")]
    assert await agent.respond(history, entry("user", "how are you?")) == "Hello there!"
    (request,) = server.requests
    assert request["model"] == "gpt-test"
    assert "tools" not in request
    assert request["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "how are you?"},
    ]
    assert server.auth_headers == ["Bearer sk-test"]


async def test_tool_round_trip_sync_and_async_tools_see_the_session_context(
    server: FakeOpenAI, agent_for: Callable[..., Agent]
) -> None:
    seen: list[tuple[str, SessionContext, bool]] = []

    def weather(city: str) -> str:
        """The weather in a city."""
        ctx = get_session_context()
        seen.append(("weather", ctx, threading.current_thread() is threading.main_thread()))
        return f"sunny in {city} for {ctx.user_name}"

    async def remember(fact: str) -> dict[str, str]:
        """Remember a fact about the user."""
        ctx = get_session_context()
        seen.append(("remember", ctx, threading.current_thread() is threading.main_thread()))
        return {"stored": fact, "for": ctx.unified_user_id}

    server.queue(
        tool_calls(
            ("weather", {"city": "Paris"}, "call_w"), ("remember", {"fact": "likes sun"}, "call_r")
        ),
        text("It is sunny in Paris, and I will remember that."),
    )
    agent = agent_for(tools=[weather, remember])
    token = set_session_context(
        platform="discord", user_id="7", user_name="ann", unified_user_id="ann"
    )
    try:
        reply = await agent.respond([], entry("user", "weather?"))
    finally:
        clear_session_context(token)
    assert reply == "It is sunny in Paris, and I will remember that."
    assert [(name, ctx.user_id, ctx.platform, main) for name, ctx, main in seen] == [
        ("weather", "7", "discord", False),
        ("remember", "7", "discord", True),
    ]
    first, second = server.requests
    assert {t["function"]["name"] for t in first["tools"]} == {"weather", "remember"}
    assert second["messages"][-3]["tool_calls"][0]["id"] == "call_w"
    assert second["messages"][-2:] == [
        {"role": "tool", "tool_call_id": "call_w", "content": "sunny in Paris for ann"},
        {
            "role": "tool",
            "tool_call_id": "call_r",
            "content": '{"stored": "likes sun", "for": "ann"}',
        },
    ]


async def test_200_concurrent_turns_on_one_agent_do_not_leak(
    server: FakeOpenAI, agent_for: Callable[..., Agent]
) -> None:
    def whoami_sync() -> str:
        """Who is talking."""
        return get_session_context().user_id

    async def whoami_async() -> str:
        """Who is talking."""
        await asyncio.sleep(0.001)
        return get_session_context().user_id

    async def handler(body: dict[str, Any]) -> Any:
        await asyncio.sleep(0.005)
        last = body["messages"][-1]
        if last["role"] == "tool":
            return text(f"done: {last['content']}")
        n = int(last["content"].split("-")[1])
        return tool_call("whoami_sync" if n % 2 else "whoami_async")

    server.handler = handler
    agent = agent_for(tools=[whoami_sync, whoami_async])

    async def turn(n: int) -> str:
        token = set_session_context(platform="slack", user_id=f"u{n}")
        try:
            history = [entry("user", f"hist-{n}-a"), entry("assistant", f"hist-{n}-b")]
            return await agent.respond(history, entry("user", f"msg-{n}"))
        finally:
            clear_session_context(token)

    replies = await asyncio.gather(*(turn(n) for n in range(200)))
    assert replies == [f"done: u{n}" for n in range(200)]
    assert len(server.requests) == 400
    assert server.max_in_flight > 1
    for request in server.requests:
        text_of_request = " ".join(str(m.get("content")) for m in request["messages"])
        n = request["messages"][1]["content"].split("-")[1]
        markers = {w.split("-")[1] for w in text_of_request.split() if w[:5] in ("hist-", "msg-")}
        assert markers == {n}, text_of_request


async def test_tool_error_is_reported_back_to_the_model(
    server: FakeOpenAI, agent_for: Callable[..., Agent]
) -> None:
    def divide(a: int, b: int) -> float:
        """Divide a by b."""
        return a / b

    server.queue(
        tool_call("divide", {"a": 1, "b": 0}),
        tool_call("nope", {}),
        tool_call("divide", "{not json"),
        text("Cannot divide by zero."),
    )
    agent = agent_for(tools=[divide])
    assert await agent.respond([], "1/0?") == "Cannot divide by zero."
    results = [r["messages"][-1]["content"] for r in server.requests[1:]]
    assert results[0] == "error: ZeroDivisionError: division by zero"
    assert results[1].startswith("error: unknown tool 'nope'")
    assert "not valid JSON" in results[2]


async def test_tool_rounds_are_bounded_then_a_final_answer_without_tools(
    server: FakeOpenAI, agent_for: Callable[..., Agent]
) -> None:
    def again() -> str:
        """Call me again."""
        return "again"

    server.handler = lambda body: tool_call("again") if "tools" in body else text("best effort")
    agent = agent_for(tools=[again], max_tool_rounds=3)
    assert await agent.respond([], "go") == "best effort"
    assert ["tools" in r for r in server.requests] == [True, True, True, True, False]
    assert server.requests[-1]["messages"][-1]["role"] == "user"
    assert "tool budget" in server.requests[-1]["messages"][-1]["content"]


async def test_empty_reply_is_a_model_error(
    server: FakeOpenAI, agent_for: Callable[..., Agent]
) -> None:
    server.queue(text(""))
    with pytest.raises(ModelError, match="empty reply"):
        await agent_for().respond([], "hi")


# --- model failures -> ModelError ------------------------------------------------------


@pytest.mark.parametrize("status", [401, 429, 500, 503])
async def test_http_errors_become_model_error(
    server: FakeOpenAI, agent_for: Callable[..., Agent], status: int
) -> None:
    server.queue(error(status))
    with pytest.raises(ModelError) as info:
        await agent_for().respond([], "hi")
    assert info.value.status_code == status
    assert f"HTTP {status}" in str(info.value)
    assert info.value.__cause__ is not None


async def test_wrong_key_is_401(server: FakeOpenAI, agent_for: Callable[..., Agent]) -> None:
    with pytest.raises(ModelError) as info:
        await agent_for(api_key="sk-wrong").respond([], "hi")
    assert info.value.status_code == 401
    assert "Incorrect API key" in str(info.value)


async def test_5xx_is_retried_by_the_sdk(
    server: FakeOpenAI, agent_for: Callable[..., Agent]
) -> None:
    server.queue(error(500, headers={"retry-after-ms": "10"}), text("recovered"))
    agent = agent_for(max_retries=1)
    assert await agent.respond([], "hi") == "recovered"
    assert len(server.requests) == 2


async def test_timeout_is_model_error(server: FakeOpenAI, agent_for: Callable[..., Agent]) -> None:
    server.queue(text("too late", delay=5))
    started = time.monotonic()
    with pytest.raises(ModelError, match="timed out") as info:
        await agent_for(timeout=0.3).respond([], "hi")
    assert time.monotonic() - started < 3
    assert info.value.status_code is None


async def test_connection_refused_is_model_error(close_later: list[Agent]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = OpenAIModel("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    close_later.append(agent := Agent("a", model=model))
    with pytest.raises(ModelError, match="cannot reach") as info:
        await agent.respond([], "hi")
    assert info.value.status_code is None


# --- choosing the model ----------------------------------------------------------------


def test_model_name_without_endpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY") as info:
        Agent("a", model="gpt-4o-mini")
    assert "OPENAI_BASE_URL" in str(info.value)


async def test_env_model_with_local_base_url_needs_no_key(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.api_key = None
    monkeypatch.setenv("ONETHREAD_MODEL", "llama-local")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    agent = Agent("a")
    assert isinstance(agent.model, OpenAIModel)
    server.queue(text("local hello"))
    assert await agent.respond([], "hi") == "local hello"
    assert server.requests[0]["model"] == "llama-local"
    assert server.auth_headers[0].startswith("Bearer ")
    await agent.aclose()


def test_model_name_with_api_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    model = Agent("a", model="gpt-4o-mini", timeout=5).model
    assert isinstance(model, OpenAIModel)
    assert (model.model, model.timeout, model.base_url) == ("gpt-4o-mini", 5.0, None)


def test_env_model_without_endpoint_runs_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONETHREAD_MODEL", "gpt-4o-mini")
    model = Agent("a").model
    assert isinstance(model, OfflineModel)
    assert "ONETHREAD_MODEL" in model.reason


def test_bad_model_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="model must be"):
        Agent("a", model=42)  # type: ignore[arg-type]


def test_constructing_an_agent_does_not_import_openai() -> None:
    code = (
        "import sys, onethread\n"
        "a = onethread.Agent('x', model='gpt-4o-mini')\n"
        "assert 'openai' not in sys.modules, 'openai imported'\n"
    )
    env = {"OPENAI_API_KEY": "sk-x", "PATH": ""}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=30)


# --- offline model ---------------------------------------------------------------------


async def test_offline_model_says_so_and_shows_memory() -> None:
    agent = Agent("a")
    assert isinstance(agent.model, OfflineModel)
    history = [
        entry("user", "hi", platform="telegram"),
        entry("assistant", "hello", platform="telegram"),
        entry("user", "again", platform="discord"),
    ]
    reply = await agent.respond(history, entry("user", "what do you remember?", platform="slack"))
    assert "No language model is configured" in reply
    assert '"what do you remember?"' in reply
    assert "3 earlier messages from telegram and discord" in reply
    assert "ONETHREAD_MODEL" in reply and "OPENAI_API_KEY" in reply
    first = await agent.respond([], "x" * 500)
    assert "no earlier messages" in first and "x" * 300 not in first


async def test_offline_model_complete_works_from_messages() -> None:
    reply = await OfflineModel().complete([{"role": "user", "content": "hi"}], [])
    assert "No language model is configured" in reply.content and not reply.tool_calls
    again = await OfflineModel().complete(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": reply.content},
            {"role": "user", "content": "and now?"},
        ],
        [],
    )
    memory = "I remember this conversation: 2 earlier messages."
    assert again.content == f'You said: "and now?"\n{memory}'


async def test_offline_notice_is_said_once_per_conversation() -> None:
    from onethread.bots import BotSessionManager

    session = BotSessionManager(store="memory://")
    agent = Agent("a")
    replies = [
        await session.chat(agent, "42", text, platform="web") for text in ("one", "two", "three")
    ]
    notice = "No language model is configured"
    assert [notice in r for r in replies] == [True, False, False]
    assert "OPENAI_API_KEY" not in replies[1] + replies[2]
    assert replies[2] == (
        'You said: "three"\nI remember this conversation: 4 earlier messages from web.'
    )
    await session.reset("42", platform="web")  # /new: a new conversation hears it again
    assert notice in await session.chat(agent, "42", "four", platform="web")
    await session.close()


# --- testing helpers -------------------------------------------------------------------


async def test_scripted_model_records_requests_and_drives_tools() -> None:
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    model = ScriptedModel([ModelReply(tool_calls=[ToolCall("c1", "add", '{"a": 2, "b": 3}')]), "5"])
    agent = Agent("a", "Add.", tools=[add], model=model)
    assert await agent.respond([], "2+3?") == "5"
    assert model.remaining == 0
    assert model.requests[1][-1] == {"role": "tool", "tool_call_id": "c1", "content": "5"}
    assert model.tool_requests[0][0]["function"]["name"] == "add"
    with pytest.raises(AssertionError, match="ran out of answers"):
        await agent.respond([], "again")


async def test_scripted_model_function_and_delay() -> None:
    async def script(messages: list[dict[str, Any]]) -> str:
        return f"len {len(messages)}"

    model = ScriptedModel(script, delay=0.01)
    agent = Agent("a", model=model)
    assert await agent.respond([entry("user", "a")], entry("assistant", "b")) == "len 1"


async def test_echo_model_group_attribution() -> None:
    agent = Agent("a", model=EchoModel())
    reply = await agent.respond([], entry("user", "hi", user_name="ann"), group=True)
    assert reply == "echo: [ann] hi"
