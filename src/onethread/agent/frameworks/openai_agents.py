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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import openai
from agents import Runner
from agents.exceptions import MaxTurnsExceeded, ModelBehaviorError

from ...errors import ModelError
from ...session.context import get_session_context
from ...session.history.base import HistoryEntry
from .common import chat_turns, model_error

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
        self, history: Sequence[HistoryEntry], message: HistoryEntry, *, group: bool = False
    ) -> str:
        """Run the agent once on this person's history plus ``message``; return its final output."""
        earlier, text = chat_turns(history, message, group=group)
        items: list[Any] = [{"role": role, "content": content} for role, content in earlier]
        items.append({"role": "user", "content": text})
        options: dict[str, Any] = {"context": get_session_context(), "session": None}
        if self.run_config is not None:
            options["run_config"] = self.run_config
        if self.max_turns is not None:
            options["max_turns"] = self.max_turns
        try:
            result = await Runner.run(self.agent, items, **options)
        except (openai.APIError, ModelBehaviorError, MaxTurnsExceeded) as exc:
            raise model_error("OpenAI Agents SDK", exc) from exc
        return _as_text(result.final_output)


def _as_text(output: Any) -> str:
    if isinstance(output, str):
        if not output.strip():
            raise ModelError("the OpenAI Agents SDK run returned an empty reply")
        return output
    if output is None:
        raise ModelError("the OpenAI Agents SDK run returned no final output")
    dump = getattr(output, "model_dump_json", None)
    return str(dump()) if callable(dump) else json.dumps(output, default=str)
