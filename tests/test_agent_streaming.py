"""Agent.respond(on_delta=...) through the real openai SDK with stream=True (SSE)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fake_openai import FakeOpenAI, streamed, tool_calls
from onethread import Agent
from onethread.agent.models_openai import OpenAIModel
from onethread.errors import ModelError
from onethread.testing import ScriptedModel


async def test_two_tool_calls_streamed_as_deltas_are_gathered_and_run() -> None:
    seen: list[tuple[str, int]] = []

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        seen.append(("add", a + b))
        return a + b

    def twice(x: int) -> int:
        """Double a number."""
        seen.append(("twice", x * 2))
        return x * 2

    async with FakeOpenAI() as server:
        server.queue(
            tool_calls(("add", {"a": 2, "b": 3}, "c1"), ("twice", {"x": 21}, "c2")),
            streamed("Five and **42**."),
        )
        model = OpenAIModel("gpt-test", base_url=server.base_url, api_key="sk-test")
        agent = Agent("a", tools=[add, twice], model=model)
        pieces: list[str] = []

        async def on_delta(piece: str) -> None:
            pieces.append(piece)

        reply = await agent.respond([], "sum it", on_delta=on_delta)
        await model.aclose()
    assert seen == [("add", 5), ("twice", 42)]
    assert reply == "Five and **42**." == "".join(pieces) and len(pieces) == 3
    second = server.requests[1]["messages"]
    calls = second[-3]["tool_calls"]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in calls] == [("c1", "add", {"a": 2, "b": 3}),
                                ("c2", "twice", {"x": 21})]  # fmt: skip
    assert [m["content"] for m in second[-2:]] == ["5", "42"]
    assert all(body["stream"] is True for body in server.requests)


async def test_a_stream_that_breaks_raises_model_error_after_its_text() -> None:
    async with FakeOpenAI() as server:
        server.queue(streamed("one two three four", fail_after=2))
        model = OpenAIModel("gpt-test", base_url=server.base_url, api_key="sk-test")
        pieces: list[str] = []

        async def on_delta(piece: str) -> None:
            pieces.append(piece)

        with pytest.raises(ModelError):
            await Agent("a", model=model).respond([], "hi", on_delta=on_delta)
        await model.aclose()
    assert pieces == ["one ", "two "]


async def test_without_on_delta_respond_does_not_stream() -> None:
    model = ScriptedModel(["plain answer"])
    calls: list[Any] = []
    original = model.stream

    async def spy(*args: Any) -> Any:
        calls.append(args)
        return await original(*args)

    model.stream = spy  # type: ignore[method-assign]
    assert await Agent("a", model=model).respond([], "hi") == "plain answer"
    assert calls == []
