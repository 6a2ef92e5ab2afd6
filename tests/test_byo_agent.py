"""Bring your own agent: praisonaiagents, OpenAI Agents SDK, pydantic-ai and LangGraph agents,
each run by onethread against fake_openai through the real openai SDK.

What is checked from the model's side (the fake's recorded requests): no request of one
person contains another's private word, a person's second turn carries their first, a linked
person's history crosses platforms, and a tool inside the framework sees the right context.
"""

from __future__ import annotations

import asyncio
import operator
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from agents import RunContextWrapper

from byo_frameworks import (
    FRAMEWORKS,
    build,
    build_graph,
    env_for,
    last_user_text,
    model_handler,
    quiet,
    request_text,
)
from fake_openai import FakeOpenAI, FakeReply, error
from onethread import Agent
from onethread.agent import Responder, as_responder
from onethread.agent.responder import framework_of
from onethread.bots import Bot, BotOS, BotSessionManager, amirror_to_session
from onethread.bots.manager import APOLOGY
from onethread.session import InMemoryIdentityResolver, get_session_context
from onethread.testing import FakeAdapter

pytestmark = pytest.mark.timeout(120)

PEOPLE = 20
WORD = re.compile(r"pw\d\dx")


def word(i: int) -> str:
    return f"pw{i:02d}x"


def person(i: int) -> tuple[str, str]:
    """(platform, user id) of person i: even ones on telegram, odd ones on discord."""
    return ("telegram" if i % 2 == 0 else "discord"), f"u{i}"


@pytest.fixture
async def model(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    async def slow_handler(body: dict[str, Any]) -> FakeReply:
        await asyncio.sleep(0.05)  # keeps the 20 turns in flight together
        return model_handler(body)

    async with FakeOpenAI(slow_handler) as server:
        for name, value in env_for(server.base_url).items():
            monkeypatch.setenv(name, value)
        quiet()
        yield server


def whoami() -> str:
    """Tell who is talking, and where."""
    ctx = get_session_context()
    seen.append((ctx, threading.current_thread() is threading.main_thread()))
    return f"{ctx.platform}/{ctx.user_id}/{ctx.unified_user_id}"


seen: list[tuple[Any, bool]] = []
got: list[Any] = []


def whoami_from_run_context(ctx: RunContextWrapper[Any]) -> str:
    """Tell who is talking (an OpenAI Agents SDK tool reading its run context)."""
    got.append(ctx.context)
    return "ok"


class QuestionState(TypedDict):
    question: str


class ListState(TypedDict):
    messages: Annotated[list[Any], operator.add]


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_twenty_people_on_two_platforms_never_see_each_other(
    framework: str, model: FakeOpenAI
) -> None:
    agent = build(framework, model.base_url)
    session = BotSessionManager(store="memory://", identity_resolver=InMemoryIdentityResolver())

    async def turn(i: int, prompt: str) -> str:
        platform, user = person(i)
        return await session.chat(agent, user, prompt, platform=platform)

    first = await asyncio.gather(*(turn(i, f"my private word is {word(i)}") for i in range(PEOPLE)))
    assert first == [f"ack: my private word is {word(i)}" for i in range(PEOPLE)]
    second = await asyncio.gather(*(turn(i, "what is my word?") for i in range(PEOPLE)))
    assert all(reply == "ack: what is my word?" for reply in second)

    assert model.max_in_flight >= PEOPLE // 2, "the turns did not overlap"
    assert len(model.requests) == 2 * PEOPLE
    for body in model.requests:
        words = set(WORD.findall(request_text(body)))
        assert len(words) == 1, f"a request carries {sorted(words)}"
    second_turns = [b for b in model.requests if last_user_text(b) == "what is my word?"]
    assert sorted(WORD.findall(request_text(b))[0] for b in second_turns) == [
        word(i) for i in range(PEOPLE)
    ]
    for body in second_turns:  # the first turn, then its reply, came before
        said = request_text(body)
        assert said.index("my private word is") < said.index("ack: my private word is")
    if framework == "praisonaiagents":
        assert agent.chat_history == []  # the object the user passed never held a turn


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_a_tool_inside_the_framework_sees_the_turns_context(
    framework: str, model: FakeOpenAI
) -> None:
    seen.clear()
    agent = build(framework, model.base_url, tools=[whoami])
    resolver = InMemoryIdentityResolver()
    resolver.link("discord", "u1", "bob")
    session = BotSessionManager(store="memory://", identity_resolver=resolver)

    async def turn(i: int) -> str:
        platform, user = person(i)
        return await session.chat(agent, user, "who am i?", platform=platform)

    replies = await asyncio.gather(*(turn(i) for i in range(PEOPLE)))
    expected = [
        f"tool said: {p}/{u}/{'bob' if u == 'u1' else f'{p}:{u}'}"
        for p, u in map(person, range(PEOPLE))
    ]
    assert replies == expected
    assert len(seen) == PEOPLE
    assert all(not on_main for _, on_main in seen), "the sync tool ran on the event loop thread"
    assert get_session_context().is_empty  # and nothing is left behind after the turns


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_a_linked_persons_history_crosses_platforms_inside_the_framework(
    framework: str, model: FakeOpenAI
) -> None:
    agent = build(framework, model.base_url)
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "t-alice", "alice")
    resolver.link("discord", "d-alice", "alice")
    session = BotSessionManager(store="memory://", identity_resolver=resolver)
    await session.chat(agent, "t-alice", "my private word is pw42x", platform="telegram")
    await amirror_to_session(session, "alice", "Reminder: stand-up at 10", source_label="cron")
    await session.chat(agent, "d-bob", "my private word is pw07x", platform="discord")
    reply = await session.chat(agent, "d-alice", "what is my word?", platform="discord")
    assert reply == "ack: what is my word?"
    body = model.requests[-1]
    assert set(WORD.findall(request_text(body))) == {"pw42x"}
    assert "[sent by the bot on its own via cron] Reminder: stand-up at 10" in request_text(body)


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_a_model_failure_is_an_apology_not_a_crash(framework: str, model: FakeOpenAI) -> None:
    agent = build(framework, model.base_url)
    session = BotSessionManager(store="memory://")
    model.handler = lambda body: error(400, "this model refuses")  # 400: no SDK retries
    reply = await session.chat(agent, "u1", "hello?", platform="telegram")
    assert reply == APOLOGY
    [stored] = await session.history("u1", platform="telegram")
    assert stored.content == "hello?"


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_bot_and_botos_wrap_the_framework_agent(framework: str, model: FakeOpenAI) -> None:
    agent = build(framework, model.base_url)
    bot = Bot("telegram", agent=agent, adapter=FakeAdapter("telegram"), store="memory://")
    botos = BotOS(agent=agent, bots=[Bot("discord", adapter=FakeAdapter("discord"))])
    assert framework_of(agent) is not None
    assert isinstance(bot.agent, Responder) and bot.agent is not agent
    assert isinstance(botos.agent, Responder) and botos.agent is not agent
    assert type(botos.agent).__module__.startswith("onethread.agent.frameworks.")


def test_detecting_an_agent_imports_no_framework() -> None:
    code = (
        "import sys\n"
        "from onethread import Agent\n"
        "from onethread.agent import as_responder\n"
        "from onethread.bots import BotSessionManager\n"
        "agent = Agent('a')\n"
        "assert as_responder(agent) is agent\n"
        "for bad in ('assistant', Agent, object()):\n"
        "    try:\n"
        "        as_responder(bad)\n"
        "    except TypeError:\n"
        "        pass\n"
        "fw = {'praisonaiagents', 'agents', 'pydantic_ai', 'langgraph', 'langchain_core'}\n"
        "print(sorted(fw & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "given,named",
    [
        ("assistant", "the string 'assistant'"),
        (Agent, "the class onethread.agent.agent.Agent, not an instance"),
        (object(), "a builtins.object"),
        (print, "no respond() method"),
    ],
)
def test_a_wrong_agent_is_a_type_error_at_construction(given: object, named: str) -> None:
    accepted = "Accepted: an onethread.Agent"
    with pytest.raises(TypeError, match=re.escape(named)) as caught:
        Bot("telegram", agent=given, adapter=FakeAdapter("telegram"), store="memory://")
    assert accepted in str(caught.value)
    assert "LangGraph" in str(caught.value) and "pydantic-ai" in str(caught.value)
    with pytest.raises(TypeError, match=re.escape(named)):
        BotOS(agent=given, store="memory://")


async def test_session_chat_refuses_a_wrong_agent_before_storing_anything() -> None:
    session = BotSessionManager(store="memory://")
    with pytest.raises(TypeError, match="Accepted"):
        await session.chat("assistant", "u1", "hi", platform="telegram")  # type: ignore[arg-type]
    assert await session.history("u1", platform="telegram") == []


async def test_session_chat_wraps_a_framework_agent_once(model: FakeOpenAI) -> None:
    agent = build("pydantic-ai", model.base_url)
    session = BotSessionManager(store="memory://")
    await session.chat(agent, "u1", "one", platform="telegram")
    await session.chat(agent, "u1", "two", platform="telegram")
    assert len(session._wrapped) == 1
    assert last_user_text(model.requests[-1]) == "two"


def test_praisonai_agent_with_memory_is_refused_with_the_reason(
    model: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from praisonaiagents import Agent as PraisonAgent

    monkeypatch.chdir(tmp_path)  # memory=True makes a .praisonai folder where it runs

    agent = PraisonAgent(name="m", instructions="x", model="gpt-test", memory=True)
    with pytest.raises(TypeError, match=r"built with memory=.*: its memory store is shared"):
        as_responder(agent)
    with pytest.raises(TypeError, match=r"self_improve="):
        as_responder(PraisonAgent(name="s", instructions="x", model="gpt-test", self_improve=True))
    helper = PraisonAgent(name="helper", instructions="x", model="gpt-test")
    with pytest.raises(TypeError, match=r"handoffs="):
        as_responder(PraisonAgent(name="h", instructions="x", model="gpt-test", handoffs=[helper]))


async def test_praisonai_turns_at_once_each_get_their_own_chat_history(model: FakeOpenAI) -> None:
    # The trap: one agent object answering everyone. Each turn runs on its own copy.
    from onethread.agent.frameworks.praisonai import PraisonAIResponder

    agent = build("praisonaiagents", model.base_url)
    agent.chat_history = [{"role": "user", "content": "the owner's own pw99x"}]
    responder = PraisonAIResponder(agent)
    session = BotSessionManager(store="memory://")
    await asyncio.gather(
        *(session.chat(responder, f"u{i}", f"word {word(i)}", platform="web") for i in range(8))
    )
    assert agent.chat_history == [{"role": "user", "content": "the owner's own pw99x"}]
    assert all(len(WORD.findall(request_text(b))) == 1 for b in model.requests)


def test_langgraph_graph_without_messages_is_refused(model: FakeOpenAI) -> None:
    from langgraph.graph import START, StateGraph

    builder = StateGraph(QuestionState)
    builder.add_node("n", lambda state: {"question": state["question"]})
    builder.add_edge(START, "n")
    with pytest.raises(TypeError, match=r"no 'messages' in its state.*MessagesState"):
        as_responder(builder.compile())


def test_checkpointed_langgraph_graph_without_add_messages_is_refused(model: FakeOpenAI) -> None:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import START, StateGraph

    builder = StateGraph(ListState)
    builder.add_node("n", lambda state: {"messages": []})
    builder.add_edge(START, "n")
    assert as_responder(builder.compile()) is not None  # no checkpointer: nothing is kept
    with pytest.raises(TypeError, match=r"add_messages reducer"):
        as_responder(builder.compile(checkpointer=InMemorySaver()))


async def test_checkpointed_langgraph_graph_holds_the_persons_history_under_the_session_key(
    model: FakeOpenAI,
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    graph = build_graph(model.base_url, [], checkpointer=InMemorySaver())
    resolver = InMemoryIdentityResolver()
    resolver.link("telegram", "t-alice", "alice")
    resolver.link("discord", "d-alice", "alice")
    session = BotSessionManager(store="memory://", identity_resolver=resolver)
    await session.chat(graph, "t-alice", "my private word is pw42x", platform="telegram")
    await session.chat(graph, "d-alice", "what is my word?", platform="discord")
    await session.chat(graph, "d-bob", "my private word is pw07x", platform="discord")
    state = await graph.aget_state({"configurable": {"thread_id": "user:alice"}})
    texts = [m.text for m in state.values["messages"]]
    # Replaced on every turn, not piled up: exactly onethread's four entries.
    assert texts == [
        "my private word is pw42x",
        "ack: my private word is pw42x",
        "what is my word?",
        "ack: what is my word?",
    ]
    bob = await graph.aget_state({"configurable": {"thread_id": "bot_discord_d-bob"}})
    assert [m.text for m in bob.values["messages"]][0] == "my private word is pw07x"
    assert "pw42x" in request_text(model.requests[1])
    assert "pw42x" not in request_text(model.requests[2])


async def test_pydantic_ai_system_prompt_reaches_every_turn(model: FakeOpenAI) -> None:
    from pydantic_ai import Agent as PydanticAgent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(base_url=model.base_url, api_key="sk-test")
    agent = PydanticAgent(OpenAIChatModel("gpt-test", provider=provider), system_prompt="Be brief.")
    session = BotSessionManager(store="memory://")
    await session.chat(agent, "u1", "one", platform="telegram")
    await session.chat(agent, "u1", "two", platform="telegram")
    for body in model.requests:
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in model.requests[1]["messages"]] == [
        "system", "user", "assistant", "user",
    ]  # fmt: skip


async def test_openai_agents_tool_gets_the_session_context_as_run_context(
    model: FakeOpenAI,
) -> None:
    from agents import function_tool

    got.clear()
    agent = build("openai-agents", model.base_url)
    agent.tools = [function_tool(whoami_from_run_context, name_override="whoami")]
    session = BotSessionManager(store="memory://")
    assert await session.chat(agent, "u5", "who am i", platform="slack") == "tool said: ok"
    assert [(c.platform, c.user_id) for c in got] == [("slack", "u5")]


def test_a_plain_responder_is_used_as_it_is() -> None:
    class Mine:
        async def respond(self, history: Any, message: Any, *, group: bool = False) -> str:
            return "mine"

    mine = Mine()
    assert as_responder(mine) is mine
    assert isinstance(mine, Responder)
    assert framework_of(mine) is None


def test_responder_is_public_documented_and_in_the_readme() -> None:
    import inspect
    from pathlib import Path

    import onethread.agent

    assert {"Responder", "as_responder"} <= set(onethread.agent.__all__)
    doc = inspect.getdoc(Responder) or ""
    for topic in ("history", "mirror", "group", "ModelError"):
        assert topic in doc, f"Responder's docstring says nothing of {topic}"
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "## Bring your own agent" in readme and "onethread.agent.Responder" in readme


async def test_checkpointed_langgraph_graph_keeps_twenty_people_apart(model: FakeOpenAI) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    graph = build_graph(model.base_url, [], checkpointer=InMemorySaver())
    session = BotSessionManager(store="memory://", identity_resolver=InMemoryIdentityResolver())

    async def turn(i: int, prompt: str) -> str:
        platform, user = person(i)
        return await session.chat(graph, user, prompt, platform=platform)

    await asyncio.gather(*(turn(i, f"my private word is {word(i)}") for i in range(PEOPLE)))
    await asyncio.gather(*(turn(i, "what is my word?") for i in range(PEOPLE)))
    assert model.max_in_flight >= PEOPLE // 2
    for body in model.requests:
        assert len(set(WORD.findall(request_text(body)))) == 1
    for i in range(PEOPLE):
        platform, user = person(i)
        config = {"configurable": {"thread_id": f"bot_{platform}_{user}"}}
        texts = [m.text for m in (await graph.aget_state(config)).values["messages"]]
        assert len(texts) == 4 and set(WORD.findall(" ".join(texts))) == {word(i)}


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_in_a_group_the_framework_sees_who_said_what(
    framework: str, model: FakeOpenAI
) -> None:
    agent = build(framework, model.base_url)
    session = BotSessionManager(store="memory://")
    group = {"platform": "slack", "chat_id": "C1", "chat_type": "group"}
    await session.chat(agent, "U1", "I like tea", user_name="Ann", **group)
    await session.chat(agent, "U2", "what does Ann like?", user_name="Ben", **group)
    said = request_text(model.requests[-1])
    assert "[Ann] I like tea" in said and "[Ben] what does Ann like?" in said
