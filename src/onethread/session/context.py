"""Per-turn session context: who is talking, and where.

The context lives in a :class:`contextvars.ContextVar`, so concurrent turns in
one event loop never see each other's values: each turn runs in its own task,
and tasks copy the context they are created in. Tools read it with
:func:`get_session_context`; sync tools run in a worker thread with the context
copied (see ``onethread.agent.tools``).
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = [
    "SessionContext",
    "clear_session_context",
    "get_session_context",
    "set_session_context",
]


@dataclass(frozen=True, slots=True)
class SessionContext:
    """Who sent the message being answered, and where.

    All fields are strings and default to ``""``. ``unified_user_id`` is what the
    identity resolver returned for ``(platform, user_id)``: the person's id when
    the account is linked, ``"{platform}:{user_id}"`` when it is not.
    ``chat_type`` is ``"dm"``, ``"group"`` or ``"channel"`` (empty outside a turn).
    ``source`` is empty for a message from the person; for a turn a scheduled
    job runs (``prompt=True``) it is the job's label (``"cron"``), and
    ``platform``/``chat_id`` are where the reply will be delivered.
    """

    platform: str = ""
    chat_id: str = ""
    chat_name: str = ""
    thread_id: str = ""
    user_id: str = ""
    user_name: str = ""
    unified_user_id: str = ""
    message_id: str = ""
    chat_type: str = ""
    source: str = ""

    @property
    def is_empty(self) -> bool:
        """True outside a turn (no platform and no user)."""
        return not (self.platform or self.user_id or self.unified_user_id)


_EMPTY = SessionContext()
_FIELDS = frozenset(f.name for f in fields(SessionContext))
_current: ContextVar[SessionContext] = ContextVar("onethread_session_context", default=_EMPTY)


def get_session_context() -> SessionContext:
    """Return the current turn's context; an empty one outside a turn, never ``None``."""
    return _current.get()


def set_session_context(ctx: SessionContext | None = None, **fields_: Any) -> Token[SessionContext]:
    """Make ``ctx`` (updated with ``fields_``) the current context and return a reset token.

    With no ``ctx`` the fields are applied to an empty context. Reset with
    :func:`clear_session_context` in a ``finally`` in the same task::

        token = set_session_context(platform="telegram", user_id="42")
        try:
            ...
        finally:
            clear_session_context(token)

    Raises ``TypeError`` for a field name SessionContext does not have, and for
    a non-string value.
    """
    unknown = set(fields_) - _FIELDS
    if unknown:
        raise TypeError(
            f"unknown SessionContext field(s): {', '.join(sorted(unknown))}; "
            f"known fields: {', '.join(sorted(_FIELDS))}"
        )
    for name, value in fields_.items():
        if not isinstance(value, str):
            raise TypeError(f"SessionContext.{name} must be a str, got {type(value).__name__}")
    base = ctx if ctx is not None else _EMPTY
    return _current.set(replace(base, **fields_) if fields_ else base)


def clear_session_context(token: Token[SessionContext] | None = None) -> None:
    """Undo :func:`set_session_context`.

    With the token, restore exactly what was current before (the right thing in
    nested code). Without it, set the empty context.
    """
    if token is not None:
        _current.reset(token)
    else:
        _current.set(_EMPTY)
