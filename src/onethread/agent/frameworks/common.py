"""What the framework wrappers share: the turn as alternating chat messages, the session key."""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import ModelError
from ...session.context import SessionContext, get_session_context
from ...session.history.base import HistoryEntry
from ...session.keys import DM, session_key
from ..messages import build_messages
from ..models import OnDelta

__all__ = ["Relay", "chat_turns", "current_session_key", "model_error"]


def chat_turns(
    history: Sequence[HistoryEntry], message: HistoryEntry, *, group: bool = False
) -> tuple[list[tuple[str, str]], str]:
    """The earlier conversation as ``(role, text)`` pairs, and the new user text.

    Built by :func:`~onethread.agent.messages.build_messages` (without a
    system message), so roles alternate ``user``/``assistant``, the earlier
    part ends with ``assistant`` (or is empty), mirrored entries are labelled
    with their source and, in a group, each user text starts ``[name]``.
    """
    messages = build_messages("", history, message, group=group)
    turns = [(str(m["role"]), str(m["content"])) for m in messages]
    return turns[:-1], turns[-1][1]


def current_session_key(ctx: SessionContext | None = None) -> str:
    """The session key of the turn running now, from its :class:`SessionContext`.

    The same key the session manager stores the history under: a group's
    chat key, a linked person's ``user:`` key, else the account's legacy key.
    Raises ``RuntimeError`` outside a turn (an empty context).
    """
    ctx = ctx if ctx is not None else get_session_context()
    if ctx.is_empty:
        raise RuntimeError("no session context: this runs only inside a turn")
    return session_key(
        platform=ctx.platform,
        user_id=ctx.user_id,
        chat_type=ctx.chat_type or DM,
        chat_id=ctx.chat_id,
        thread_id=ctx.thread_id,
        unified_user_id=ctx.unified_user_id or None,
    )


def model_error(framework: str, exc: BaseException) -> ModelError:
    """A :class:`ModelError` for a failed framework run, keeping an HTTP status if there is one."""
    status = getattr(exc, "status_code", None)
    return ModelError(
        f"the {framework} run failed: {type(exc).__name__}: {exc}",
        status_code=status if isinstance(status, int) else None,
    )


class Relay:
    """Text a framework streams, passed on to ``on_delta``: empty pieces dropped, and a
    blank line before the text of each later model response (as ``Agent`` streams rounds).

    Call :meth:`next_response` when the framework starts another model response
    (after a tool call); the final reply stays the framework's own output.
    """

    __slots__ = ("_on_delta", "_new", "_tail")

    def __init__(self, on_delta: OnDelta) -> None:
        self._on_delta = on_delta
        self._new = False
        self._tail = ""  # the last two characters passed on

    def next_response(self) -> None:
        """The next text belongs to a new model response."""
        self._new = True

    async def feed(self, piece: str) -> None:
        """Pass ``piece`` on (nothing when it is empty)."""
        if not piece:
            return
        if self._new and self._tail and self._tail != "\n\n":
            piece = ("\n" if self._tail.endswith("\n") else "\n\n") + piece
        self._new = False
        self._tail = (self._tail + piece)[-2:]
        await self._on_delta(piece)
