"""Serve an OpenAI Agents SDK ``Agent``: ``Runner.run`` with the person's history as input items.

An Agents SDK ``Agent`` is configuration (instructions, tools, model,
handoffs); the conversation lives in what ``Runner.run`` is given, or in a
``Session`` when one is passed. onethread is the session: each turn calls
``Runner.run(agent, items)`` with ``session=None`` and the person's history as
``{"role", "content"}`` input items, so the agent object holds nothing between
people and turns run concurrently without a lock.

The run's context (``RunContextWrapper.context`` in tools that take one) is the
turn's :class:`~onethread.session.SessionContext`; ``get_session_context()``
works in tools too (the SDK runs sync tools with ``asyncio.to_thread``, which
copies the context). Model failures (``openai.APIError``, the SDK's
``ModelBehaviorError``, ``MaxTurnsExceeded``) become
:class:`~onethread.errors.ModelError`.

The SDK exports traces to OpenAI by default; turn that off with
``OPENAI_AGENTS_DISABLE_TRACING=1`` or ``agents.set_tracing_disabled(True)``
if conversations must not leave your endpoint.

With ``on_delta`` the turn runs with ``Runner.run_streamed`` and the text of
each model response (its raw ``response.output_text.delta`` events) is passed
on as it comes; the reply returned is the run's ``final_output``, as without
streaming.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import openai
from agents import Runner
from agents.exceptions import MaxTurnsExceeded, ModelBehaviorError
from openai.types.responses import ResponseCreatedEvent, ResponseTextDeltaEvent

from ...errors import ModelError
from ...session.context import get_session_context
from ...session.history.base import HistoryEntry
from ..models import OnDelta
from .common import Relay, chat_turns, model_error

__all__ = ["OpenAIAgentsResponder"]


class OpenAIAgentsResponder:
    """An OpenAI Agents SDK ``Agent`` as a Responder.

    ``run_config`` (an ``agents.RunConfig``) and ``max_turns`` are passed to
    every ``Runner.run``. A structured ``final_output`` (a pydantic model, a
    dict) is sent as JSON text.
    """

    def __init__(self, agent: Any, *, run_config: Any = None, max_turns: int | None = None) -> None:
        self.agent = agent
        self.run_config = run_config
        self.max_turns = max_turns

    def __repr__(self) -> str:
        return f"OpenAIAgentsResponder({getattr(self.agent, 'name', self.agent)!r})"

    async def respond(
        self,
        history: Sequence[HistoryEntry],
        message: HistoryEntry,
        *,
        group: bool = False,
        on_delta: OnDelta | None = None,
    ) -> str:
        """Run the agent once on this person's history plus ``message``; return its final output.

        ``on_delta``: stream the text of the model's responses as it is written.
        """
        earlier, text = chat_turns(history, message, group=group)
        items: list[Any] = [{"role": role, "content": content} for role, content in earlier]
        items.append({"role": "user", "content": text})
        options: dict[str, Any] = {"context": get_session_context(), "session": None}
        if self.run_config is not None:
            options["run_config"] = self.run_config
        if self.max_turns is not None:
            options["max_turns"] = self.max_turns
        try:
            if on_delta is None:
                result: Any = await Runner.run(self.agent, items, **options)
            else:
                result = await _streamed(self.agent, items, options, Relay(on_delta))
        except (openai.APIError, ModelBehaviorError, MaxTurnsExceeded) as exc:
            raise model_error("OpenAI Agents SDK", exc) from exc
        return _as_text(result.final_output)


async def _streamed(agent: Any, items: list[Any], options: dict[str, Any], relay: Relay) -> Any:
    """``Runner.run_streamed``, each response's text to ``relay``; the finished result."""
    result = Runner.run_streamed(agent, items, **options)
    try:
        async for event in result.stream_events():
            if event.type != "raw_response_event":
                continue
            if isinstance(event.data, ResponseCreatedEvent):
                relay.next_response()
            elif isinstance(event.data, ResponseTextDeltaEvent):
                await relay.feed(event.data.delta)
    finally:
        if not result.is_complete:  # on_delta raised (or we were cancelled): stop the run
            result.cancel()
    return result


def _as_text(output: Any) -> str:
    if isinstance(output, str):
        if not output.strip():
            raise ModelError("the OpenAI Agents SDK run returned an empty reply")
        return output
    if output is None:
        raise ModelError("the OpenAI Agents SDK run returned no final output")
    dump = getattr(output, "model_dump_json", None)
    return str(dump()) if callable(dump) else json.dumps(output, default=str)
