"""Helpers for testing your own bots and tools without a network or a real model.

``ScriptedModel`` answers from a script and records what it was asked;
``EchoModel`` answers ``echo: <last user text>`` at once (for benchmarks).
Both are :class:`~onethread.agent.models.ModelClient` s: pass one as
``Agent(..., model=...)``.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .agent.models import ModelReply, OnDelta, ToolCall

__all__ = ["EchoModel", "ModelReply", "ScriptedModel", "ToolCall"]

# ---------------------------------------------------------------------------
# Scripted models (agent side)
# ---------------------------------------------------------------------------

ScriptStep = str | ModelReply
"""One scripted answer: final text, or a :class:`ModelReply` (e.g. with tool calls)."""

ScriptFunction = Callable[[list[dict[str, Any]]], ScriptStep | Awaitable[ScriptStep]]
"""A function from the request's messages to the answer (sync or async)."""


class ScriptedModel:
    """A model that answers from a script and records every request.

    ``script`` is either a list of answers, used in order (``str`` for a final
    text, :class:`ModelReply` for tool calls), or a function called with each
    request's messages that returns one (it may be async). Running out of
    answers raises ``AssertionError``: the test asked the model more often than
    it planned. ``requests`` holds a deep copy of each request's messages and
    ``tool_requests`` the tool schemas offered; ``delay`` seconds are awaited
    before each answer. It streams too (``stream()``, used by a streaming
    turn): the answer's text word by word, ``stream_delay`` seconds apart.
    Safe for concurrent turns (use a function script then: a list is
    consumed in call order, whoever calls).
    """

    def __init__(
        self,
        script: Iterable[ScriptStep] | ScriptFunction,
        *,
        delay: float = 0.0,
        stream_delay: float = 0.0,
    ) -> None:
        self._function: ScriptFunction | None = None
        self._steps: list[ScriptStep] = []
        if callable(script):
            self._function = script
        else:
            self._steps = list(script)
        self.delay = delay
        self.stream_delay = stream_delay
        self.requests: list[list[dict[str, Any]]] = []
        self.tool_requests: list[list[dict[str, Any]]] = []

    @property
    def remaining(self) -> int:
        """How many scripted answers are left (0 for a function script)."""
        return len(self._steps)

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelReply:
        """Record the request and return the next scripted answer."""
        self.requests.append(copy.deepcopy(messages))
        self.tool_requests.append(copy.deepcopy(tools))
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        if self._function is not None:
            step = self._function(messages)
            if inspect.isawaitable(step):
                step = await step
        elif self._steps:
            step = self._steps.pop(0)
        else:
            raise AssertionError(
                f"ScriptedModel ran out of answers at request {len(self.requests)}; "
                f"last message: {messages[-1] if messages else None!r}"
            )
        return ModelReply(step) if isinstance(step, str) else step

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], on_delta: OnDelta
    ) -> ModelReply:
        """Like :meth:`complete`, passing the text to ``on_delta`` a word at a time."""
        reply = await self.complete(messages, tools)
        for index, word in enumerate(re.findall(r"\S+\s*|\s+", reply.content)):
            if index and self.stream_delay > 0:
                await asyncio.sleep(self.stream_delay)
            await on_delta(word)
        return reply


class EchoModel:
    """A zero-latency model that answers ``echo: <last user message>``; for benchmarks.

    In a group the text includes the ``[user_name]`` attribution, as sent to
    a real model. Never calls tools.
    """

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelReply:
        """Echo the content of the last user message."""
        for message in reversed(messages):
            if message.get("role") == "user":
                return ModelReply(f"echo: {message.get('content') or ''}")
        return ModelReply("echo: ")


# ---------------------------------------------------------------------------
# In-process platform (bot side)
# ---------------------------------------------------------------------------

from ._fake_adapter import FakeAdapter, SentMessage  # noqa: E402

__all__ += ["FakeAdapter", "SentMessage"]
