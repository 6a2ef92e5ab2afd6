"""Serve a praisonaiagents ``Agent`` (the seed's class) without sharing its chat history.

A praisonaiagents ``Agent`` keeps the conversation on the object. Read in
praisonaiagents 1.7.17 (``agent/chat_mixin.py``, ``agent/memory_mixin.py``):
``achat`` builds the model's messages from ``self.chat_history`` (a list
behind a lock that guards each append, not the turn), appends the user message
to it before the model call and the reply after, and keeps more per-turn state
on the object (tools used, stop reason, the active cancel token). One object
answering everyone would show Alice's messages to the model in Bob's turn, and
turns at once interleave in that one list. Setting ``chat_history`` to the
person's history around a turn is leak-free only if no two turns overlap, that
is with one lock around every ``achat``: every person in the process would wait
for every other. There is no lock-free way on one object.

So each turn runs on a per-turn copy made by the library's own
``Agent.clone_for_channel()`` (built for one copy per gateway channel): a
new ``Agent`` from the same configuration with fresh locks, a fresh
``chat_history``, the same tool functions and the process-wide OpenAI client
(``get_openai_client`` caches one per endpoint), costing a fraction of a
millisecond (``benchmarks/bench_byo_agent.py``). The copy gets the person's
history as its ``chat_history``, answers one ``achat``, and is dropped; the
agent the user passed is never run, so its own ``chat_history`` stays as it was.

Refused (``TypeError`` with the reason), because they keep conversation state
outside ``chat_history`` that every copy would share, so no copy can make them
private: ``memory=`` (a long-term memory store the agent reads into every
prompt; ``learn=`` turns it on), ``self_improve=`` (skills it writes from one
person's turn and reads in everyone's), ``db=`` (a persisted session the agent
reloads), ``handoffs=`` (other
agents with their own ``chat_history``, which ``clone_for_channel`` drops
anyway) and ``backend=`` (an external service holding its own sessions).

Sync tools run in praisonaiagents' worker threads with the context copied, so
they see ``get_session_context()`` (tested).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from ...errors import ModelError
from ...session.history.base import HistoryEntry
from .common import chat_turns

__all__ = ["PraisonAIResponder", "refusal"]

# clone_for_channel() warns on every copy of any agent: about an attribute that is
# always set (to its default), and about the llm= it passes itself. A warning per
# turn that the user cannot act on (they saw their own llm= warning when they built it).
for _noise in (
    "Deprecated attribute 'code_execution_mode' found in agent clone",
    "Parameter 'llm' is deprecated",
):
    warnings.filterwarnings("ignore", message=_noise, category=DeprecationWarning)

# attribute on the Agent -> why a per-turn copy cannot make it private
_SHARED_STATE = (
    (
        "_memory_config",
        "memory= (or learn=, which needs it)",
        "its memory store is shared by every copy",
    ),
    ("_memory_instance", "memory=", "its memory store is shared by every copy of the agent"),
    (
        "_self_improve",
        "self_improve=",
        "the skills it writes from one person's turn reach everyone's",
    ),
    ("_db", "db=", "its database session is reloaded into every turn, whoever is talking"),
    ("handoffs", "handoffs=", "the agents it hands off to keep one chat_history for everyone"),
    ("backend", "backend=", "the external backend keeps its own sessions, not per person"),
)


def refusal(agent: Any) -> str | None:
    """Why ``agent`` cannot be served leak-free, or ``None`` if it can."""
    for attr, option, why in _SHARED_STATE:
        if getattr(agent, attr, None):
            return (
                f"the praisonaiagents Agent {getattr(agent, 'name', '')!r} was built with "
                f"{option}: {why}, so one person's conversation would reach another's turn. "
                f"Build it without {option}; onethread keeps each person's history itself."
            )
    if not callable(getattr(agent, "clone_for_channel", None)):
        return (
            "this praisonaiagents version has no Agent.clone_for_channel(), which onethread "
            "needs to give each turn its own chat_history; upgrade: "
            'pip install "onethread[praisonaiagents]"'
        )
    return None


class PraisonAIResponder:
    """A praisonaiagents ``Agent`` as a Responder: one private copy of it per turn.

    Raises ``TypeError`` at construction when the agent keeps state that a
    copy would still share (see :func:`refusal`). ``respond`` raises
    :class:`~onethread.errors.ModelError` when the agent returns no reply
    (praisonaiagents logs the model failure and returns ``None``).
    """

    def __init__(self, agent: Any) -> None:
        reason = refusal(agent)
        if reason is not None:
            raise TypeError(reason)
        self.agent = agent

    def __repr__(self) -> str:
        return f"PraisonAIResponder({getattr(self.agent, 'name', self.agent)!r})"

    async def respond(
        self, history: Sequence[HistoryEntry], message: HistoryEntry, *, group: bool = False
    ) -> str:
        """Answer ``message`` on a fresh copy of the agent holding only this person's history."""
        earlier, text = chat_turns(history, message, group=group)
        turn = self.agent.clone_for_channel()
        # A new list: the copy appends this turn to it, nobody else sees it.
        turn.chat_history = [{"role": role, "content": content} for role, content in earlier]
        reply = await turn.achat(text, stream=False)
        if reply is None:
            raise ModelError(
                f"the praisonaiagents Agent {getattr(self.agent, 'name', '')!r} returned no reply"
            )
        return reply if isinstance(reply, str) else str(reply)
