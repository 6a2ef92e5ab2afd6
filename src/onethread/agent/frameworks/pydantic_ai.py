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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic_ai.exceptions import AgentRunError
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    UserPromptPart,
)

from ...errors import ModelError
from ...session.history.base import HistoryEntry
from .common import chat_turns, model_error

__all__ = ["PydanticAIResponder"]


class PydanticAIResponder:
    """A pydantic-ai ``Agent`` as a Responder; ``deps`` is passed to every run."""

    def __init__(self, agent: Any, *, deps: Any = None) -> None:
        self.agent = agent
        self.deps = deps

    def __repr__(self) -> str:
        return f"PydanticAIResponder({getattr(self.agent, 'name', None) or self.agent!r})"

    async def respond(
        self, history: Sequence[HistoryEntry], message: HistoryEntry, *, group: bool = False
    ) -> str:
        """Run the agent once with this person's history as ``message_history``."""
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
            result = await self.agent.run(text, message_history=messages, deps=self.deps)
        except AgentRunError as exc:
            raise model_error("pydantic-ai", exc) from exc
        return _as_text(result.output)


def _as_text(output: Any) -> str:
    if isinstance(output, str):
        if not output.strip():
            raise ModelError("the pydantic-ai run returned an empty reply")
        return output
    dump = getattr(output, "model_dump_json", None)
    return str(dump()) if callable(dump) else json.dumps(output, default=str)
