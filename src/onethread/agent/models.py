"""The model boundary: what the agent sends a language model and what it gets back.

A model client is anything with ``async complete(messages, tools) -> ModelReply``
(:class:`ModelClient`). ``messages`` and ``tools`` are in the OpenAI chat
format. Implementations raise :class:`~onethread.errors.ModelError` for every
failure to produce a reply; nothing else escapes them on purpose.

A client that can stream also has ``async stream(messages, tools, on_delta)``
(:class:`StreamingModel`): the same request, with each piece of text passed to
``on_delta`` as the model writes it, and the whole :class:`ModelReply`
(tool calls included) returned at the end.

Shipped clients: ``OpenAIModel`` (any OpenAI-compatible endpoint,
``models_openai``), ``OfflineModel`` (no model configured, ``models_offline``),
and ``ScriptedModel``/``EchoModel`` in :mod:`onethread.testing`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..session.history.base import HistoryEntry

__all__ = ["ModelClient", "ModelReply", "OnDelta", "StreamingModel", "ToolCall", "TurnModel"]

OnDelta = Callable[[str], Awaitable[None]]
"""Called with each piece of reply text as the model writes it (in order, never empty)."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the model asked for; ``arguments`` is the raw JSON text it sent."""

    id: str
    name: str
    arguments: str = "{}"


@dataclass(frozen=True, slots=True)
class ModelReply:
    """What the model answered: text, tool calls, or both.

    An empty ``tool_calls`` list means ``content`` is the final answer.
    """

    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


@runtime_checkable
class ModelClient(Protocol):
    """A language model the agent can call.

    ``complete`` gets the whole conversation (OpenAI chat messages, system
    first) and the tool schemas (empty: tools are not offered this time). It
    must be safe to call from many tasks at once and must raise
    :class:`~onethread.errors.ModelError` when no reply can be produced.
    """

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelReply:
        """Return the model's next message for ``messages``."""
        ...


@runtime_checkable
class StreamingModel(Protocol):
    """A :class:`ModelClient` that can also stream its answer.

    ``stream`` sends the same request as ``complete`` and awaits
    ``on_delta(text)`` for each piece of text as it arrives; tool calls are
    gathered from their deltas and returned whole in the :class:`ModelReply`
    (whose ``content`` is all the text streamed). It raises ``ModelError``
    like ``complete``, also after some text was streamed; an exception raised
    by ``on_delta`` ends the stream and propagates unchanged.
    """

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ModelReply:
        """Return the model's next message for ``messages``."""
        ...

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], on_delta: OnDelta
    ) -> ModelReply:
        """Stream the model's next message to ``on_delta``; return it whole."""
        ...


@runtime_checkable
class TurnModel(Protocol):
    """A model client that answers a whole turn from the stored entries itself.

    The agent calls :meth:`reply` instead of building chat messages and running
    the tool loop. :class:`~onethread.agent.models_offline.OfflineModel` is one:
    it needs the entries' platforms, which chat messages do not carry.
    """

    async def reply(
        self, history: Sequence[HistoryEntry], message: HistoryEntry, *, group: bool = False
    ) -> str:
        """Return the reply text to ``message`` given the earlier ``history``."""
        ...
