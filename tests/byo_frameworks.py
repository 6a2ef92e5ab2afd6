"""One agent per framework, each pointed at ``fake_openai`` through the real openai SDK.

Used by ``tests/test_byo_agent.py`` and ``benchmarks/bench_byo_agent.py``.
Every builder gives the framework a sync tool (``tools``) the way that
framework's users write one, and a model on chat completions at ``base_url``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

from fake_openai import FakeReply, text, tool_call

FRAMEWORKS = ("praisonaiagents", "openai-agents", "pydantic-ai", "langgraph")
MODEL = "gpt-test"
KEY = "sk-test"

# No trace or telemetry leaves the machine (read by the frameworks when first used).
QUIET_ENV = {
    "PRAISONAI_TELEMETRY_DISABLED": "true",
    "DO_NOT_TRACK": "true",
    "OPENAI_AGENTS_DISABLE_TRACING": "1",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
}


def env_for(base_url: str) -> dict[str, str]:
    """The environment every framework here reads its endpoint (or none) from."""
    return {**QUIET_ENV, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": KEY}


def quiet() -> None:
    """Turn the frameworks' tracing and telemetry off in this process."""
    os.environ.update(QUIET_ENV)
    try:
        from agents import set_tracing_disabled
    except ImportError:
        return
    set_tracing_disabled(True)


def content_text(message: dict[str, Any]) -> str:
    """The text of one chat message (a string, or a list of content parts)."""
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def request_text(body: dict[str, Any]) -> str:
    """Every message of a recorded request, as one text."""
    return "\n".join(content_text(m) for m in body["messages"])


def last_user_text(body: dict[str, Any]) -> str:
    """The last user message of a recorded request."""
    users = [m for m in body["messages"] if m["role"] == "user"]
    return content_text(users[-1]) if users else ""


def model_handler(body: dict[str, Any]) -> FakeReply:
    """The fake model: asks for ``whoami`` when asked who is talking, else echoes.

    After a tool result it answers ``tool said: <result>``.
    """
    last = body["messages"][-1]
    if last["role"] == "tool":
        result = content_text(last)
        with contextlib.suppress(ValueError):  # some frameworks send the result as JSON
            result = str(json.loads(result))
        return text(f"tool said: {result}")
    said = last_user_text(body)
    if "who am i" in said.lower():
        return tool_call("whoami", {})
    return text(f"ack: {said}")


def build(framework: str, base_url: str, tools: list[Callable[..., Any]] | None = None) -> Any:
    """A ``framework`` agent named ``assistant`` on the fake model at ``base_url``."""
    tools = list(tools or [])
    if framework == "praisonaiagents":
        from praisonaiagents import Agent as PraisonAgent

        # Its OpenAI path reads OPENAI_BASE_URL / OPENAI_API_KEY (env_for(base_url));
        # base_url= would switch it to its litellm path, an extra not installed here.
        assert os.environ.get("OPENAI_BASE_URL") == base_url, "set env_for(base_url) first"
        return PraisonAgent(
            name="assistant", instructions="Be helpful.", model=MODEL, tools=tools or None
        )
    from openai import AsyncOpenAI

    if framework == "openai-agents":
        from agents import Agent as SdkAgent
        from agents import OpenAIChatCompletionsModel, function_tool

        client = AsyncOpenAI(base_url=base_url, api_key=KEY)
        return SdkAgent(
            name="assistant",
            instructions="Be helpful.",
            model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
            tools=[function_tool(t) for t in tools],
        )
    if framework == "pydantic-ai":
        from pydantic_ai import Agent as PydanticAgent
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=base_url, api_key=KEY))
        return PydanticAgent(model, instructions="Be helpful.", tools=tools)
    if framework == "langgraph":
        return build_graph(base_url, tools)
    raise ValueError(framework)


def build_graph(base_url: str, tools: list[Callable[..., Any]], *, checkpointer: Any = None) -> Any:
    """A LangGraph tool-calling agent (model node + ToolNode) on ``MessagesState``."""
    from langchain_openai import ChatOpenAI
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    llm = ChatOpenAI(model=MODEL, base_url=base_url, api_key=KEY)  # type: ignore[arg-type]
    bound = llm.bind_tools(tools) if tools else llm

    async def model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", model)
    builder.add_edge(START, "model")
    if tools:
        builder.add_node("tools", ToolNode(tools))
        builder.add_conditional_edges("model", tools_condition)
        builder.add_edge("tools", "model")
    return builder.compile(checkpointer=checkpointer)
