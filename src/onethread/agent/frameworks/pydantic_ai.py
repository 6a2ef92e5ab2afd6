"""Serve a pydantic-ai ``Agent``: ``run`` with a ``message_history`` built from the person's.

A pydantic-ai ``Agent`` holds no conversation: each ``run`` is given its
``message_history``. onethread builds it on every turn from the person's
history (``ModelRequest`` with a ``UserPromptPart`` for their messages,
``ModelResponse`` with a ``TextPart`` for the replies), so turns of different
people run concurrently on one agent without a lock.

pydantic-ai adds the agent's ``system_prompt`` only to a run whose history
is empty, taking a stored history to begin with it; ours does not, so the
wrapper asks the agent for them (``Agent.system_prompt_parts``) and puts them
first, as pydantic-ai would have stored them. ``instructions`` are added by
pydantic-ai to every request anyway.

Tools see ``get_session_context()`` (async tools run in the turn's task; sync
tools in a worker thread with the context copied: tested). Model failures
(pydantic-ai's ``AgentRunError`` family: HTTP errors, unexpected model
behaviour, usage limits) become :class:`~onethread.errors.ModelError`.

With ``on_delta`` the same ``run`` is given an ``event_stream_handler`` that
passes on the text parts of each model response as they stream (tool calls
still run as without streaming; the agent's own ``event_stream_handler``, if
it has one, still sees every event); the reply returned is the run's ``output``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any

from pydantic_ai.exceptions import AgentRunError
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    UserPromptPart,
)

from ...errors import ModelError
from ...session.history.base import HistoryEntry
from ..models import OnDelta
from .common import Relay, chat_turns, model_error

__all__ = ["PydanticAIResponder"]


class PydanticAIResponder:
    """A pydantic-ai ``Agent`` as a Responder; ``deps`` is passed to every run."""

    def __init__(self, agent: Any, *, deps: Any = None) -> None:
        self.agent = agent
        self.deps = deps

    def __repr__(self) -> str:
        return f"PydanticAIResponder({getattr(self.agent, 'name', None) or self.agent!r})"

    async def respond(
        self,
        history: Sequence[HistoryEntry],
        message: HistoryEntry,
        *,
        group: bool = False,
        on_delta: OnDelta | None = None,
    ) -> str:
        """Run the agent once with this person's history as ``message_history``.

        ``on_delta``: stream the text of the model's responses as it is written.
        """
        earlier, text = chat_turns(history, message, group=group)
        messages: list[ModelMessage] = [
            ModelRequest(parts=[UserPromptPart(content)])
            if role == "user"
            else ModelResponse(parts=[TextPart(content)])
            for role, content in earlier
        ]
        try:
            if messages:
                system = await self.agent.system_prompt_parts(
                    deps=self.deps, message_history=messages, prompt=text
                )
                if system:
                    # chat_turns() always starts a non-empty history with the user.
                    first = messages[0]
                    assert isinstance(first, ModelRequest)
                    messages[0] = ModelRequest(parts=[*system, *first.parts])
            options: dict[str, Any] = {"message_history": messages, "deps": self.deps}
            if on_delta is not None:
                options["event_stream_handler"] = _text_to(
                    Relay(on_delta), getattr(self.agent, "event_stream_handler", None)
                )
            result = await self.agent.run(text, **options)
        except AgentRunError as exc:
            raise model_error("pydantic-ai", exc) from exc
        return _as_text(result.output)


def _text_to(relay: Relay, own: Any) -> Any:
    """An ``event_stream_handler`` passing each text part's content on to ``relay``.

    The agent's own handler (``own``, if it has one) still gets every event.
    """

    async def tapped(events: AsyncIterable[Any]) -> AsyncIterator[Any]:
        async for event in events:
            if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                relay.next_response()
                await relay.feed(event.part.content)
            elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                await relay.feed(event.delta.content_delta)
            yield event

    async def handler(ctx: Any, events: AsyncIterable[Any]) -> None:
        if own is not None:
            await own(ctx, tapped(events))
            return
        async for _ in tapped(events):
            pass

    return handler


def _as_text(output: Any) -> str:
    if isinstance(output, str):
        if not output.strip():
            raise ModelError("the pydantic-ai run returned an empty reply")
        return output
    dump = getattr(output, "model_dump_json", None)
    return str(dump()) if callable(dump) else json.dumps(output, default=str)
