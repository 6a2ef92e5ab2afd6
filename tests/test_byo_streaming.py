"""Streaming from framework agents (OpenAI Agents SDK, pydantic-ai, LangGraph): their text
reaches ``on_delta`` as the fake OpenAI server streams it (SSE through the real openai SDK),
tools still run in a streamed turn, and a Telegram draft shows the first words early.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from byo_frameworks import build, build_graph, env_for, model_handler, quiet
from fake_openai import FakeOpenAI, FakeReply, streamed, tool_call
from fake_telegram import FakeTelegram
from onethread.agent import as_responder
from onethread.bots import Bot, BotSessionManager
from onethread.errors import ModelError, ReplyStopped
from onethread.session import InMemoryIdentityResolver, get_session_context
from onethread.session.history.base import HistoryEntry

pytestmark = pytest.mark.timeout(60)

STREAMING = ("openai-agents", "pydantic-ai", "langgraph")
REPLY = "one two three four five six"
PEOPLE = 10
LONG = " ".join(f"word{i}" for i in range(30))


@pytest.fixture
async def model(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    def handler(body: dict[str, Any]) -> FakeReply:
        reply = model_handler(body)  # echo, or ask for whoami, or report the tool result
        return streamed(reply.content, over=0.5) if reply.content else reply

    async with FakeOpenAI(handler) as server:
        for name, value in env_for(server.base_url).items():
            monkeypatch.setenv(name, value)
        quiet()
        yield server


def whoami() -> str:
    """Tell who is talking, and where."""
    ctx = get_session_context()
    return f"{ctx.platform}/{ctx.user_id}/{ctx.unified_user_id}"


class Recorder:
    """An on_delta that notes each piece and whether the model was still writing then."""

    def __init__(self, server: FakeOpenAI) -> None:
        self.server = server
        self.pieces: list[str] = []
        self.while_streaming: list[bool] = []

    async def __call__(self, piece: str) -> None:
        self.pieces.append(piece)
        self.while_streaming.append(self.server.in_flight > 0)


@pytest.mark.parametrize("framework", STREAMING)
async def test_deltas_arrive_in_order_while_the_model_writes_and_join_to_the_reply(
    framework: str, model: FakeOpenAI
) -> None:
    session = BotSessionManager(store="memory://")
    on_delta = Recorder(model)
    reply = await session.chat(
        build(framework, model.base_url), "u1", REPLY, platform="telegram", on_delta=on_delta
    )
    assert reply == f"ack: {REPLY}"
    assert "".join(on_delta.pieces) == reply
    assert len(on_delta.pieces) >= 4  # word by word, not the reply in one piece
    assert on_delta.while_streaming[0] is True  # the first words came before the model finished
    assert all(body.get("stream") is True for body in model.requests)
    [_, stored] = await session.history("u1", platform="telegram")
    assert stored.content == reply  # stored once, whole


@pytest.mark.parametrize("framework", STREAMING)
async def test_a_tool_runs_in_a_streamed_turn_with_the_turns_context(
    framework: str, model: FakeOpenAI
) -> None:
    resolver = InMemoryIdentityResolver()
    resolver.link("discord", "u7", "bob")
    session = BotSessionManager(store="memory://", identity_resolver=resolver)
    agent = build(framework, model.base_url, tools=[whoami])
    on_delta = Recorder(model)
    reply = await session.chat(agent, "u7", "who am i?", platform="discord", on_delta=on_delta)
    assert reply == "tool said: discord/u7/bob"
    assert "".join(on_delta.pieces) == reply
    assert len(model.requests) == 2 and all(b.get("stream") is True for b in model.requests)
    assert model.requests[1]["messages"][-1]["role"] == "tool"


@pytest.mark.parametrize("framework", STREAMING)
async def test_a_stream_that_breaks_is_a_model_error_after_its_first_words(
    framework: str, model: FakeOpenAI
) -> None:
    model.queue(streamed(REPLY, fail_after=2))
    responder: Any = as_responder(build(framework, model.base_url))
    on_delta = Recorder(model)
    hi = HistoryEntry(role="user", content="hi", timestamp=0.0)
    with pytest.raises(ModelError):
        await responder.respond([], hi, on_delta=on_delta)
    assert on_delta.pieces == ["one ", "two "] and len(model.requests) == 1


@pytest.mark.parametrize("framework", STREAMING)
async def test_a_reader_stopping_the_reply_keeps_what_was_written(
    framework: str, model: FakeOpenAI
) -> None:
    pieces: list[str] = []

    async def stop_after_two(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 2:
            raise ReplyStopped("stop")

    session = BotSessionManager(store="memory://")
    reply = await session.chat(
        build(framework, model.base_url), "u1", LONG, platform="telegram", on_delta=stop_after_two
    )
    assert len(pieces) == 2
    assert reply.startswith("".join(pieces).rstrip()) and reply != f"ack: {LONG}"
    [_, stored] = await session.history("u1", platform="telegram")
    assert stored.metadata.get("stopped") == "reader"


@pytest.mark.parametrize("framework", STREAMING)
async def test_a_telegram_draft_shows_the_first_words_before_the_model_finishes(
    framework: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeOpenAI() as oa:
        oa.queue(streamed(LONG, over=2.0))
        for name, value in env_for(oa.base_url).items():
            monkeypatch.setenv(name, value)
        quiet()
        tg = FakeTelegram()
        await tg.start()
        monkeypatch.setenv("TELEGRAM_BOT_TOKEN", tg.token)
        monkeypatch.setenv("TELEGRAM_API_BASE_URL", tg.base_url)
        session = BotSessionManager(store="memory://")
        bot = Bot("telegram", build(framework, oa.base_url), session=session)
        task = asyncio.create_task(bot.start())
        await bot.ready.wait()
        first: list[tuple[str, int]] = []  # the first post's text, and the model's open streams
        try:
            tg.inject_message(5, "hello")
            for _ in range(1500):
                if tg.sent and not first:
                    first.append((tg.sent[0].text, oa.in_flight))
                history = await session.history("5", platform="telegram", chat_id="5")
                if len(history) >= 2:
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError("the turn was never stored")
        finally:
            await bot.stop()
            await task
            await tg.stop()
    [(shown, open_streams)] = first
    assert open_streams == 1, "the draft was posted only after the model finished"
    assert shown and LONG.startswith(shown) and shown != LONG  # the first words, not all
    [message] = tg.sent
    assert message.text == LONG  # the final text, last
    assert tg.edits  # the draft grew while the model wrote
    assert [e.content for e in history] == ["hello", LONG]


@pytest.mark.parametrize("framework", STREAMING)
async def test_text_before_a_tool_call_streams_and_the_next_response_starts_a_paragraph(
    framework: str, model: FakeOpenAI
) -> None:
    check = tool_call("whoami", {})
    model.queue(FakeReply(content="Let me check.", calls=check.calls))  # then the handler
    session = BotSessionManager(store="memory://")
    agent = build(framework, model.base_url, tools=[whoami])
    on_delta = Recorder(model)
    reply = await session.chat(agent, "u7", "who am i?", platform="discord", on_delta=on_delta)
    assert reply == "tool said: discord/u7/discord:u7"  # the framework's final output
    assert "".join(on_delta.pieces) == f"Let me check.\n\n{reply}"


@pytest.mark.parametrize("framework", STREAMING)
async def test_people_streaming_at_once_each_get_only_their_own_words(
    framework: str, model: FakeOpenAI
) -> None:
    session = BotSessionManager(store="memory://")
    agent = build(framework, model.base_url)
    recorders = [Recorder(model) for _ in range(PEOPLE)]
    replies = await asyncio.gather(
        *(
            session.chat(agent, f"u{i}", f"my word is pw{i:02d}x", platform="telegram",
                         on_delta=recorders[i])
            for i in range(PEOPLE)
        )
    )  # fmt: skip
    assert model.max_in_flight >= PEOPLE // 2, "the streams did not overlap"
    for i, (reply, rec) in enumerate(zip(replies, recorders, strict=True)):
        assert reply == f"ack: my word is pw{i:02d}x" == "".join(rec.pieces)


async def test_a_pydantic_ai_agents_own_event_stream_handler_still_sees_every_event(
    model: FakeOpenAI,
) -> None:
    from pydantic_ai.messages import PartDeltaEvent

    agent = build("pydantic-ai", model.base_url)
    events: list[Any] = []

    async def own(_ctx: Any, stream: Any) -> None:
        async for event in stream:
            events.append(event)

    agent._event_stream_handler = own  # as pydantic-ai's durable-execution agents set it
    on_delta = Recorder(model)
    session = BotSessionManager(store="memory://")
    reply = await session.chat(agent, "u1", REPLY, platform="telegram", on_delta=on_delta)
    assert "".join(on_delta.pieces) == reply == f"ack: {REPLY}"
    deltas = [e.delta.content_delta for e in events if isinstance(e, PartDeltaEvent)]
    assert len(deltas) >= 4 and reply.endswith("".join(deltas))


async def test_a_checkpointed_langgraph_graph_streams_only_this_turns_reply(
    model: FakeOpenAI,
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    graph = build_graph(model.base_url, [], checkpointer=InMemorySaver())
    session = BotSessionManager(store="memory://")
    for said in ("first thing", "second thing"):
        on_delta = Recorder(model)
        reply = await session.chat(graph, "u1", said, platform="telegram", on_delta=on_delta)
        assert reply == f"ack: {said}" == "".join(on_delta.pieces)


@pytest.mark.parametrize("framework", STREAMING)
async def test_a_reader_stopping_the_reply_stops_the_run_before_its_tool_call(
    framework: str, model: FakeOpenAI
) -> None:
    ran: list[str] = []

    def lookup() -> str:
        """Look something up."""
        ran.append("lookup")
        return "found"

    check = tool_call("lookup", {})
    model.queue(FakeReply(content="Let me look that up now.", calls=check.calls, stream_over=0.3))

    async def stop(piece: str) -> None:
        raise ReplyStopped("stop")

    session = BotSessionManager(store="memory://")
    agent = build(framework, model.base_url, tools=[lookup])
    await session.chat(agent, "u1", "look it up", platform="telegram", on_delta=stop)
    await asyncio.sleep(0.8)  # time for a run left going to finish its stream and call the tool
    assert ran == [] and len(model.requests) == 1
