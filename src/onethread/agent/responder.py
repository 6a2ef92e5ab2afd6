"""The Responder protocol, and turning what a user passes as ``agent=`` into one.

``Bot``, ``BotOS`` and ``BotSessionManager.chat`` call :func:`as_responder` on
the agent they are given. A framework's agent is recognised by the names of
the classes it is an instance of (its ``__mro__``), so detecting one never
imports a framework: an object cannot be an instance of a class whose module
was never imported. The wrapper module of that framework is imported only
then (``onethread.agent.frameworks.*``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..session.history.base import HistoryEntry

__all__ = ["ACCEPTED", "Responder", "as_responder", "framework_of"]


@runtime_checkable
class Responder(Protocol):
    """What onethread needs of an agent: one async ``respond`` per turn.

    ``onethread.Agent`` is one; so is any object with this method, and the
    wrappers onethread builds around a framework's agent.

    ``history`` is the person's session before this message, oldest first
    (``HistoryEntry`` objects fitting the manager's token budget): their
    messages (``role="user"``, with ``platform``, ``user_id``, ``user_name``)
    and the replies (``role="assistant"``). Entries the bot sent on its own
    (reminders, notifications, cross-platform replies) have ``mirror=True``
    and say where they came from in ``source`` (``"cron"``, ``"notify"``);
    :func:`onethread.agent.messages.entry_text` renders them for a model as
    ``[sent by the bot on its own via cron] ...``. Entries may carry
    ``attachments``. When older entries have been folded, the first entry is
    their summary: ``role="summary"``, the text in ``content``,
    ``metadata["covers"]`` the first and last timestamps it replaces (see
    ``onethread.agent.summary``); ``entry_text`` renders it as
    ``[SUMMARY of the earlier conversation, <from> to <to>] ...``. Treat any
    role other than ``"user"`` as the assistant's side, as ``build_messages``
    does (the framework wrappers get it that way).

    ``message`` is the new user message (same fields). ``group`` is True in a
    group or channel, where the history holds several people's messages:
    attribute them by ``user_name`` (``build_messages(..., group=True)`` writes
    ``[name] text``).

    Return the reply text. On a model failure (unreachable, refused, an empty
    answer) raise :class:`onethread.errors.ModelError`: the manager stores the
    user's message and answers with a short apology; any other exception is a
    bug and the bot tells the person the turn failed.

    Streaming (optional): a ``respond`` that also takes ``on_delta`` is given
    one when the reply can stream (a platform draft, the web chat); await it
    with each piece of text as the model writes it, in order, and still
    return the whole reply. Without that parameter the reply goes out whole.

    Concurrency: ``respond`` is called from many turns at once (one per person
    at a time), so it must keep no conversation state of its own between calls.
    The session context (``onethread.session.get_session_context()``) is set
    in the task that calls it.
    """

    async def respond(
        self, history: Sequence[HistoryEntry], message: HistoryEntry, *, group: bool = False
    ) -> str:
        """Return the reply to ``message`` given the earlier ``history``."""
        ...


# (module of a class in the object's __mro__, class name) -> wrapper "module:factory".
_FRAMEWORKS: dict[tuple[str, str], tuple[str, str]] = {
    ("praisonaiagents.agent.agent", "Agent"): ("praisonaiagents", "praisonai:PraisonAIResponder"),
    ("agents.agent", "Agent"): ("OpenAI Agents SDK", "openai_agents:OpenAIAgentsResponder"),
    ("pydantic_ai.agent.abstract", "AbstractAgent"): (
        "pydantic-ai",
        "pydantic_ai:PydanticAIResponder",
    ),
    ("langgraph.pregel.main", "Pregel"): ("LangGraph", "langgraph:LangGraphResponder"),
}

ACCEPTED = (
    "an onethread.Agent, an object with `async respond(history, message, *, group=False)` "
    "(onethread.agent.Responder), a praisonaiagents Agent, an OpenAI Agents SDK Agent, "
    "a pydantic-ai Agent, or a compiled LangGraph graph (StateGraph(...).compile())"
)
"""What ``agent=`` accepts, as the TypeError for anything else says it."""


def framework_of(obj: object) -> str | None:
    """The name of the framework ``obj`` is an agent of, or ``None``; imports nothing."""
    found = _match(obj)
    return found[0] if found else None


def _match(obj: object) -> tuple[str, str] | None:
    for cls in type(obj).__mro__:
        found = _FRAMEWORKS.get((cls.__module__, cls.__qualname__))
        if found is not None:
            return found
    return None


def as_responder(agent: object) -> Responder:
    """``agent`` as a :class:`Responder`: as it is, or wrapped if it is a framework's agent.

    Raises ``TypeError`` naming what was given and what is accepted for a
    string, a class instead of an instance, or an object of no known shape;
    a framework agent that cannot be served without leaking one person's
    conversation into another's is refused with the reason (``TypeError``).
    """
    found = _match(agent)
    if found is not None:
        module, _, factory = found[1].partition(":")
        wrapper = importlib.import_module(f".frameworks.{module}", __package__)
        responder: Responder = getattr(wrapper, factory)(agent)
        return responder
    if isinstance(agent, type):
        raise TypeError(
            f"agent= was given the class {_qualified(agent)}, not an instance of it: "
            f"create one first (e.g. agent={agent.__name__}(...)). Accepted: {ACCEPTED}"
        )
    if isinstance(agent, str | bytes):
        raise TypeError(
            f"agent= was given the string {agent!r}; pass an agent object, e.g. "
            f"agent=Agent(name={agent!r}) with `from onethread import Agent`. Accepted: {ACCEPTED}"
        )
    respond = getattr(agent, "respond", None)
    if callable(respond):
        return agent  # type: ignore[return-value]  # duck-typed: respond's shape is the contract
    raise TypeError(
        f"agent= was given {_describe(agent)}, which has no respond() method and is not "
        f"an agent of a framework onethread knows. Accepted: {ACCEPTED}"
    )


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe(obj: object) -> str:
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return f"the function {getattr(obj, '__qualname__', obj)!r}"
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"a {_qualified(type(obj))} ({text})"
