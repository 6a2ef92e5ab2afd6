"""The Agent: instructions + tools + a model client, stateless per turn."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from ..errors import ConfigError, ModelError
from ..session.blobs import BlobStore
from ..session.history.base import HistoryEntry
from .attachments import content_parts, takes_images
from .messages import build_messages
from .models import ModelClient, ModelReply, OnDelta, StreamingModel, ToolCall, TurnModel
from .models_offline import OfflineModel
from .models_openai import OpenAIModel
from .tools import Tool, run_tool_call, tool_from_function

__all__ = ["Agent"]

logger = logging.getLogger("onethread.agent")

#: How to name the model when only the server is configured.
MODEL_FIX = "export ONETHREAD_MODEL=<a model the server serves> (or set agent.model)"

_WRAP_UP = (
    "(The tool budget for this message is used up. Answer now with what you have, "
    "without calling tools.)"
)


class Agent:
    """An AI agent: instructions, tools and a model, shared by every user and platform.

    ``model`` picks the language model:

    - ``None``: ``ONETHREAD_MODEL`` (read now) on the OpenAI-compatible endpoint
      if ``OPENAI_API_KEY`` or ``OPENAI_BASE_URL`` is set; otherwise
      :class:`OfflineModel`, which says plainly that no model is configured
      (and, when ``OPENAI_BASE_URL`` is set without ``ONETHREAD_MODEL``, that
      the model name is what is missing: no model of the server is guessed).
    - a ``str``: that model name on the OpenAI-compatible endpoint; raises
      ``ConfigError`` now if neither ``OPENAI_API_KEY`` nor ``OPENAI_BASE_URL``
      is set.
    - a :class:`ModelClient` instance: used as is (see ``onethread.testing``).

    ``tools`` are plain sync or async functions (or :class:`Tool` objects); a
    definition the schema cannot describe raises ``TypeError`` here.
    ``timeout`` applies to models built from a name. ``vision``: whether the
    model takes images (image parts); ``None`` guesses from the model name
    (``onethread.agent.attachments.VISION_MODEL_PREFIXES``). The agent holds no
    conversation state, so one instance serves any number of concurrent turns.
    """

    def __init__(
        self,
        name: str,
        instructions: str = "",
        tools: Sequence[Callable[..., Any] | Tool] = (),
        model: str | ModelClient | None = None,
        *,
        max_tool_rounds: int = 8,
        timeout: float = 60.0,
        vision: bool | None = None,
    ) -> None:
        if max_tool_rounds < 0:
            raise ConfigError(f"max_tool_rounds must be 0 or more, got {max_tool_rounds}")
        self.name = name
        self.instructions = instructions
        self.max_tool_rounds = max_tool_rounds
        if callable(tools) or isinstance(tools, str):
            raise TypeError(f"agent {name!r}: tools must be a list of functions, e.g. tools=[f]")
        self.tools: dict[str, Tool] = {}
        for item in tools:
            tool = item if isinstance(item, Tool) else tool_from_function(item)
            if tool.name in self.tools:
                raise TypeError(f"agent {name!r}: two tools are named {tool.name!r}")
            self.tools[tool.name] = tool
        self._schemas = [tool.schema() for tool in self.tools.values()]
        self.model: ModelClient | TurnModel = _resolve_model(model, timeout=timeout)
        # Checked once: isinstance against a Protocol is slow, respond() is hot.
        self._turn_model = self.model if isinstance(self.model, TurnModel) else None
        if vision is None:
            vision = takes_images(str(getattr(self.model, "model", "") or ""))
        self.vision = vision

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, tools={list(self.tools)!r}, model={self.model!r})"

    async def respond(
        self,
        history: Sequence[HistoryEntry],
        message: HistoryEntry | str,
        *,
        group: bool = False,
        blobs: BlobStore | None = None,
        on_delta: OnDelta | None = None,
    ) -> str:
        """Answer ``message`` given the earlier ``history`` (oldest first); return the reply text.

        Runs the tool loop: up to ``max_tool_rounds`` rounds of tool calls, then
        one last request without tools for the final answer. Tools run in this
        task (async) or a worker thread with the context copied (sync), so they
        see the caller's session context. Tool failures go back to the model,
        never up. Raises :class:`~onethread.errors.ModelError` when the model
        fails or answers with nothing; the caller turns that into an apology.
        A ``str`` message is taken as a user message with no metadata.
        ``blobs``: the blob store holding the message's attachments, for image
        parts (when ``vision``) and the text of small text files.

        ``on_delta``: stream the reply. Each piece of text is awaited in
        ``on_delta`` as the model writes it (models with ``stream()``; others,
        and the offline model, pass their whole answer once). A round that
        ends in tool calls runs them and streams the next round; the reply is
        then all the text streamed, rounds joined by a blank line, exactly what
        ``on_delta`` saw. A ``ModelError`` mid-stream propagates: the caller
        holds what was already streamed. An exception ``on_delta`` raises ends
        the turn and propagates (that is how a reader stops a reply).
        """
        if isinstance(message, str):
            message = HistoryEntry(role="user", content=message, timestamp=time.time())
        if self._turn_model is not None:
            text = await self._turn_model.reply(history, message, group=group)
            if on_delta is not None and text:
                await on_delta(text)
            return text
        model = cast(ModelClient, self.model)  # not a TurnModel, so a ModelClient
        messages = build_messages(self.instructions, history, message, group=group)
        if message.attachments and blobs is not None:
            last = messages[-1]
            last["content"] = await content_parts(
                str(last["content"]), message.attachments, blobs, images=self.vision
            )
        streamed = _Streamed(model, on_delta) if on_delta is not None else None
        ask = streamed.ask if streamed is not None else model.complete
        for _ in range(self.max_tool_rounds + 1):
            reply = await ask(messages, self._schemas)
            if not reply.tool_calls:
                return _final(reply.content if streamed is None else streamed.text)
            messages.append(_assistant_message(reply.content, reply.tool_calls))
            for call in reply.tool_calls:
                result = await run_tool_call(self.tools, call)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        logger.info("agent %s: tool budget of %d rounds used up", self.name, self.max_tool_rounds)
        messages.append({"role": "user", "content": _WRAP_UP})
        reply = await ask(messages, [])
        return _final(reply.content if streamed is None else streamed.text)

    async def aclose(self) -> None:
        """Release the model client's connections, if it holds any."""
        close = getattr(self.model, "aclose", None)
        if close is not None:
            await close()


class _Streamed:
    """One turn's streaming: each round's text to ``on_delta``, rounds joined by a blank line."""

    __slots__ = ("_on_delta", "_parts", "_stream", "_model", "_round_started")

    def __init__(self, model: ModelClient, on_delta: OnDelta) -> None:
        self._model = model
        self._on_delta = on_delta
        self._stream = model.stream if isinstance(model, StreamingModel) else None
        self._parts: list[str] = []
        self._round_started = False

    @property
    def text(self) -> str:
        """Everything streamed so far."""
        return "".join(self._parts)

    async def _delta(self, piece: str) -> None:
        if not self._round_started:
            self._round_started = True
            if self._parts and not self.text.endswith("\n\n"):
                # A new round after tool calls starts a new paragraph.
                piece = ("\n\n" if not self.text.endswith("\n") else "\n") + piece
        self._parts.append(piece)
        await self._on_delta(piece)

    async def ask(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> ModelReply:
        self._round_started = False
        if self._stream is not None:
            return await self._stream(messages, tools, self._delta)
        reply = await self._model.complete(messages, tools)
        if reply.content:
            await self._delta(reply.content)
        return reply


def _resolve_model(model: str | ModelClient | None, *, timeout: float) -> ModelClient | TurnModel:
    if isinstance(model, str):
        return OpenAIModel(model, timeout=timeout)
    if model is None:
        name = os.environ.get("ONETHREAD_MODEL", "").strip()
        if not name and os.environ.get("OPENAI_BASE_URL"):
            # A server but no model name: say so rather than guess one of its models
            # (a server may serve several; the first listed is not a choice).
            return OfflineModel(
                "OPENAI_BASE_URL is set, but ONETHREAD_MODEL (the model to use there) is "
                "not, so this is an automatic reply.",
                note=f"OPENAI_BASE_URL is set but ONETHREAD_MODEL is not; {MODEL_FIX}",
            )
        if not name:
            return OfflineModel()
        if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
            return OpenAIModel(name, timeout=timeout)
        logger.warning(
            "ONETHREAD_MODEL=%s is set but neither OPENAI_API_KEY nor OPENAI_BASE_URL is; "
            "running the offline model",
            name,
        )
        return OfflineModel(
            f"ONETHREAD_MODEL is set to {name!r}, but no endpoint is configured, "
            "so this is an automatic reply."
        )
    if isinstance(model, ModelClient | TurnModel):
        return model
    raise TypeError(
        f"model must be a model name, a ModelClient (with async complete()) or None, "
        f"not {type(model).__name__}"
    )


def _assistant_message(content: str, calls: list[ToolCall]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": content or None,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ],
    }


def _final(content: str) -> str:
    if not content.strip():
        raise ModelError("the model returned an empty reply")
    return content
