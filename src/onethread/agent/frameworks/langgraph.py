"""Serve a compiled LangGraph graph: invoked with the person's messages on every turn.

The graph's state must have a ``messages`` key (``MessagesState``, or any
state whose ``messages`` uses the ``add_messages`` reducer); onethread puts
the conversation there as ``{"role", "content"}`` messages and answers with
the last message the graph leaves in it.

Without a checkpointer (``graph = builder.compile()``) each invocation starts
from an empty state, so turns of different people run concurrently on one
graph object and nothing is kept between them.

With a checkpointer (``builder.compile(checkpointer=...)``) LangGraph needs a
``thread_id``: onethread gives the turn's session key, and starts the input
with ``RemoveMessage(REMOVE_ALL_MESSAGES)`` so the checkpointed ``messages``
are replaced by the person's history as onethread holds it (after a link, a
``/new`` or a mirrored reminder they would otherwise differ). The graph's
state store then holds a second copy of each conversation, under the session
key: forgetting a person in onethread does not delete it there. A
checkpointed graph whose ``messages`` is not an ``add_messages`` channel is
refused (``TypeError``): its checkpoint could not be replaced, and stale turns
would pile up in it.

Tools in a ``ToolNode`` see ``get_session_context()`` (LangGraph runs sync
tools in a thread pool with the context copied: tested). ``openai.APIError``
(from ``langchain-openai``) and ``GraphRecursionError`` become
:class:`~onethread.errors.ModelError`.

With ``on_delta`` the graph runs with ``astream(..., stream_mode=["messages",
"values"])``: the text of each ``AIMessageChunk`` a chat model streams inside
the graph (any node's, a tool's own model calls included) is passed on as it
comes, and the reply returned is the last message of the final state, as
without streaming.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import openai
from langchain_core.messages import AIMessageChunk, BaseMessage, RemoveMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import GraphRecursionError
from langgraph.graph.message import REMOVE_ALL_MESSAGES, add_messages

from ...errors import ModelError
from ...session.history.base import HistoryEntry
from ..models import OnDelta
from .common import Relay, chat_turns, current_session_key, model_error

__all__ = ["LangGraphResponder"]


class LangGraphResponder:
    """A compiled LangGraph graph as a Responder.

    Raises ``TypeError`` at construction when the graph's state has no
    ``messages`` channel, or is checkpointed without ``add_messages`` on it.
    """

    def __init__(self, graph: Any) -> None:
        channels = getattr(graph, "channels", {}) or {}
        if "messages" not in channels:
            raise TypeError(
                f"the LangGraph graph {getattr(graph, 'name', '')!r} has no 'messages' in its "
                "state; onethread gives the conversation as state['messages']: build it on "
                "MessagesState (from langgraph.graph import MessagesState)"
            )
        self.graph = graph
        self.checkpointed = isinstance(getattr(graph, "checkpointer", None), BaseCheckpointSaver)
        reducer = getattr(channels["messages"], "operator", None)
        if self.checkpointed and reducer is not add_messages:
            raise TypeError(
                f"the LangGraph graph {getattr(graph, 'name', '')!r} has a checkpointer but its "
                "'messages' do not use the add_messages reducer, so onethread cannot replace the "
                "checkpointed conversation with the person's history and old turns would pile "
                "up in it: use MessagesState, or compile it without a checkpointer"
            )

    def __repr__(self) -> str:
        return f"LangGraphResponder({getattr(self.graph, 'name', self.graph)!r})"

    async def respond(
        self,
        history: Sequence[HistoryEntry],
        message: HistoryEntry,
        *,
        group: bool = False,
        on_delta: OnDelta | None = None,
    ) -> str:
        """Invoke the graph on this person's messages; return the last message's text.

        ``on_delta``: stream the text of the chat models' messages as it is written.
        """
        earlier, text = chat_turns(history, message, group=group)
        messages: list[Any] = [{"role": role, "content": content} for role, content in earlier]
        messages.append({"role": "user", "content": text})
        config: dict[str, Any] = {}
        if self.checkpointed:
            messages.insert(0, RemoveMessage(id=REMOVE_ALL_MESSAGES))
            config["configurable"] = {"thread_id": current_session_key()}
        try:
            if on_delta is None:
                state = await self.graph.ainvoke({"messages": messages}, config)
            else:
                state = await self._streamed({"messages": messages}, config, Relay(on_delta))
        except (openai.APIError, GraphRecursionError) as exc:
            raise model_error("LangGraph", exc) from exc
        return _last_text(state)

    async def _streamed(self, state: dict[str, Any], config: dict[str, Any], relay: Relay) -> Any:
        """``astream`` the graph, each AI message chunk's text to ``relay``; the final state."""
        final: Any = None
        message_id: str | None = None
        # Closed at once when on_delta raises (a reader stopped the reply): the run stops.
        stream = self.graph.astream(state, config, stream_mode=["messages", "values"])
        async with contextlib.aclosing(stream):
            async for mode, part in stream:
                if mode == "values":
                    final = part
                    continue
                chunk = part[0]
                if isinstance(chunk, AIMessageChunk):
                    if chunk.id != message_id:
                        message_id = chunk.id
                        relay.next_response()
                    await relay.feed(chunk.text)
        return final


def _last_text(state: Any) -> str:
    out = state.get("messages") if isinstance(state, dict) else None
    if not out:
        raise ModelError("the LangGraph graph returned no messages")
    last = out[-1]
    if isinstance(last, BaseMessage):
        role, content = last.type, str(last.text)
    elif isinstance(last, dict):
        role, content = str(last.get("role", "")), str(last.get("content") or "")
    else:
        raise ModelError(f"the LangGraph graph ended on {type(last).__name__}, not a message")
    if role not in ("ai", "assistant"):
        raise ModelError(f"the LangGraph graph ended on a {role or 'bare'} message, not a reply")
    if not content.strip():
        raise ModelError("the LangGraph graph returned an empty reply")
    return content
